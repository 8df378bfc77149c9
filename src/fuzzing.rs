//! The properties the `config_load` fuzz target checks, shared with the test that replays its
//! corpus on stable Rust (`tests/fuzz_corpus.rs`), so the two cannot drift. Not an API: hidden
//! from the docs and free to change.
//!
//! An input is TOML text. Its comment lines of the form `#env NAME=VALUE` are also an
//! environment for the `FNMILL__…` overrides, so one corpus file exercises both
//! [`config::from_toml`] and [`config::read`] with overrides, and stays a readable config.

use std::path::Path;

use crate::config::{self, ConfigError, ValidatedConfig};

/// The marker of an environment line in a `config_load` input.
pub const ENV_LINE: &str = "#env ";

/// The name of the config file [`check_config`] writes into its folder.
const CONFIG_FILE: &str = "fnmill.toml";

/// Fills `dir` with the files a config can name, so that fuzzed configs reach the checks behind
/// "the file exists": `f.wasm` (a function's `component` is only checked to be a file before
/// the host compiles it) and `in.jsonl` (a file source's input).
pub fn prepare_config_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::write(dir.join("f.wasm"), b"")?;
    std::fs::write(dir.join("in.jsonl"), b"{}\n")?;
    Ok(())
}

/// The environment lines of `text`, as (name, value) pairs.
pub fn env_of(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| l.strip_prefix(ENV_LINE))
        .map(|l| match l.split_once('=') {
            Some((name, value)) => (name.to_string(), value.to_string()),
            None => (l.to_string(), String::new()),
        })
        .collect()
}

/// Loads `input` (when it is UTF-8) as a config file in `dir` ([`prepare_config_dir`] made),
/// both inline ([`config::from_toml`]) and as a file with its environment lines as overrides
/// ([`config::read`], then validation). Each must give a config or an error, never panic; an
/// error must be one line per problem, each problem naming a key. Without environment lines the
/// two ways must agree. Returns what is wrong; panics only where the code under test panics.
pub fn check_config(input: &[u8], dir: &Path) -> Result<(), String> {
    let Ok(text) = std::str::from_utf8(input) else {
        return Ok(());
    };
    let inline = config::from_toml(text, dir);
    well_formed("from_toml", &inline)?;

    let path = dir.join(CONFIG_FILE);
    std::fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    let env = env_of(text);
    let no_env = env.is_empty();
    let from_file = config::read(&path, env).and_then(|c| c.validate());
    well_formed("read + validate", &from_file)?;

    if no_env {
        let (a, b) = (outcome(&inline), outcome(&from_file));
        if a != b {
            return Err(format!(
                "from_toml and read disagree without overrides:\n  from_toml: {a}\n  read: {b}"
            ));
        }
    }
    Ok(())
}

/// The checks on one load's result.
fn well_formed(way: &str, result: &config::Result<ValidatedConfig>) -> Result<(), String> {
    match result {
        Ok(config) => {
            for w in config.warnings() {
                if w.key.is_empty() {
                    return Err(format!("{way}: a warning names no key: {w}"));
                }
                one_line(way, "warning", &w.to_string())?;
            }
            Ok(())
        }
        Err(ConfigError::Read { .. }) => one_line(way, "read error", &result_text(result)),
        Err(ConfigError::Invalid(problems)) => {
            if problems.is_empty() {
                return Err(format!("{way}: an invalid config with no problem"));
            }
            if let Some(p) = problems.iter().find(|p| p.key.is_empty()) {
                return Err(format!("{way}: a problem names no key: {p:?}"));
            }
            let text = result_text(result);
            let lines = text.split('\n').collect::<Vec<_>>();
            if lines.len() != problems.len() {
                return Err(format!(
                    "{way}: {} problems printed on {} lines: {text:?}",
                    problems.len(),
                    lines.len()
                ));
            }
            for line in lines {
                one_line(way, "problem", line)?;
            }
            Ok(())
        }
    }
}

fn result_text(result: &config::Result<ValidatedConfig>) -> String {
    match result {
        Ok(_) => String::new(),
        Err(e) => e.to_string(),
    }
}

/// One line on a terminal or in a log: nothing that breaks it or moves the cursor (a tab is
/// fine), and not empty.
fn one_line(way: &str, what: &str, text: &str) -> Result<(), String> {
    if text.trim().is_empty() {
        return Err(format!("{way}: an empty {what}"));
    }
    match text.chars().find(|&c| c.is_control() && c != '\t') {
        Some(c) => Err(format!(
            "{way}: a {what} with the control character {c:?}: {text:?}"
        )),
        None => Ok(()),
    }
}

/// What a load gave, comparable between the inline and the file way (the path of a read error
/// differs between them; its reason must not).
fn outcome(result: &config::Result<ValidatedConfig>) -> String {
    match result {
        Ok(c) => format!("ok, warnings {:?}", c.warnings()),
        Err(ConfigError::Read { message, .. }) => format!("read error: {message}"),
        Err(ConfigError::Invalid(problems)) => format!("invalid: {problems:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Result<(), String> {
        let dir = tempfile::tempdir().unwrap();
        prepare_config_dir(dir.path()).unwrap();
        check_config(text.as_bytes(), dir.path())
    }

    #[test]
    fn env_lines_are_comments_and_overrides() {
        assert_eq!(
            env_of("a = 1\n#env FNMILL__RUNTIME__IO_THREADS=3\n#env X\n"),
            [
                ("FNMILL__RUNTIME__IO_THREADS".to_string(), "3".to_string()),
                ("X".to_string(), String::new())
            ]
        );
    }

    #[test]
    fn valid_invalid_and_unparsable_configs_pass_the_checks() {
        let valid = "[sources.in]\nkind = \"file\"\npath = \"in.jsonl\"\n[sinks.out]\nkind = \
                     \"file\"\npath = \"out.jsonl\"\n[functions.f]\ncomponent = \"f.wasm\"\n\
                     [[routes]]\nsource = \"in\"\nfunction = \"f\"\ndestinations = { out = \"out\" }\n";
        check(valid).unwrap();
        check(&format!("{valid}#env FNMILL__ROUTES__0__MAX_IN_FLIGHT=0\n")).unwrap();
        check("[runtime]\nio_threads = 0\ncompute_threads = 0\n").unwrap();
        check("[runtime\n").unwrap();
    }

    #[test]
    fn a_problem_over_two_lines_is_caught() {
        let err = one_line("w", "problem", "a: b\nc").unwrap_err();
        assert!(err.contains("control character"), "{err}");
    }
}
