//! `fnmill check` refuses every kind of invalid configuration before anything starts, with one
//! clear line naming the key; a valid configuration passes, environment overrides included.

mod common;

use std::path::Path;

use common::{fnmill, guest};

const VALID: &str = r#"
[sources.in]
kind = "file"
path = "in.jsonl"

[sinks.out]
kind = "file"
path = "out.jsonl"

[functions.f]
component = "COMPONENT"
timeout = "2s"
memory = "32MiB"

[[routes]]
source = "in"
function = "f"
destinations = { out = "out" }
dead_letter = "out"
"#;

fn check(dir: &Path, text: &str, env: &[(&str, &str)]) -> (i32, String, String) {
    std::fs::write(dir.join("in.jsonl"), "").unwrap();
    let text = text.replace("COMPONENT", &guest("echo").display().to_string());
    let path = dir.join("fnmill.toml");
    std::fs::write(&path, text).unwrap();
    let mut cmd = fnmill();
    cmd.arg("check").arg("-c").arg(&path);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_valid_config_passes() {
    let dir = tempfile::tempdir().unwrap();
    let (code, stdout, stderr) = check(dir.path(), VALID, &[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("ok: 1 source(s), 1 sink(s), 1 function(s), 1 route(s)"),
        "{stdout}"
    );
}

/// What is wrong, the config text, environment variables, and the expected error fragment.
type Case<'a> = (&'a str, String, Vec<(&'a str, &'a str)>, &'a str);

/// Each case: a change to the valid config, and the key its single error line must name.
#[test]
fn each_invalid_config_gets_one_line_naming_the_key() {
    let wrong_world = guest("wrong-world").display().to_string();
    let cases: Vec<Case> = vec![
        (
            "unknown key",
            VALID.replace("timeout = \"2s\"", "timeout = \"2s\"\ntimeot = \"1s\""),
            vec![],
            "functions.f.timeot: unknown field `timeot`",
        ),
        (
            "unknown section",
            format!("{VALID}\n[runtim]\nio_threads = 1\n"),
            vec![],
            "unknown field `runtim`",
        ),
        (
            "unknown source kind",
            VALID.replace(
                "kind = \"file\"\npath = \"in.jsonl\"",
                "kind = \"fil\"\npath = \"in.jsonl\"",
            ),
            vec![],
            "sources.in.kind: unknown variant `fil`",
        ),
        (
            "unknown connector field",
            VALID.replace("path = \"in.jsonl\"", "path = \"in.jsonl\"\nfolow = true"),
            vec![],
            "sources.in: unknown field `folow`",
        ),
        (
            "route to a missing function",
            VALID.replace("function = \"f\"", "function = \"g\""),
            vec![],
            "routes[0].function: no function named `g`",
        ),
        (
            "route to a missing sink",
            VALID.replace(
                "destinations = { out = \"out\" }",
                "destinations = { out = \"nowhere\" }",
            ),
            vec![],
            "routes[0].destinations.out: no sink named `nowhere`",
        ),
        (
            "dead letter to a missing sink",
            VALID.replace("dead_letter = \"out\"", "dead_letter = \"dlq\""),
            vec![],
            "routes[0].dead_letter: no sink named `dlq`",
        ),
        (
            "route from a missing source",
            VALID.replace("source = \"in\"", "source = \"inn\""),
            vec![],
            "routes[0].source: no source named `inn`",
        ),
        (
            "missing component file",
            VALID.replace("component = \"COMPONENT\"", "component = \"missing.wasm\""),
            vec![],
            "functions.f.component: no component file at",
        ),
        (
            "component of another world",
            VALID.replace("COMPONENT", &wrong_world),
            vec![],
            "functions.f.component:",
        ),
        (
            "not a component",
            VALID.replace("COMPONENT", "in.jsonl"),
            vec![],
            "functions.f.component:",
        ),
        (
            "bad duration",
            VALID.replace("timeout = \"2s\"", "timeout = \"2 parsecs\""),
            vec![],
            "functions.f.timeout: `2 parsecs` is not a duration",
        ),
        (
            "bad size",
            VALID.replace("memory = \"32MiB\"", "memory = \"lots\""),
            vec![],
            "functions.f.memory: `lots` is not a size",
        ),
        (
            "bad retry policy",
            format!("{VALID}retry = {{ max_attempts = 0 }}\n"),
            vec![],
            "routes[0].retry.max_attempts: must be at least 1",
        ),
        (
            "bad environment override",
            VALID.to_string(),
            vec![("FNMILL__RUNTIME__COMPUTE_THREADS", "many")],
            "runtime.compute_threads: invalid type",
        ),
        (
            "zero threads from the environment",
            VALID.to_string(),
            vec![("FNMILL__RUNTIME__COMPUTE_THREADS", "0")],
            "runtime.compute_threads: must be at least 1",
        ),
        (
            "malformed TOML",
            format!("{VALID}\n[functions.g\n"),
            vec![],
            "fnmill.toml",
        ),
    ];
    assert!(cases.len() >= 8);
    let mut wrong: Vec<String> = Vec::new();
    for (what, text, env, expected) in cases {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("missing.wasm.not"), "").unwrap();
        let (code, _, stderr) = check(dir.path(), &text, &env);
        let problems: Vec<&str> = stderr
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with("error: invalid configuration:"))
            .collect();
        if code != 2 || problems.len() != 1 || !problems[0].contains(expected) {
            wrong.push(format!(
                "{what}: status {code}, expected one line with {expected:?}, got {problems:#?}"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// Environment variables override file keys.
#[test]
fn environment_overrides_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = fnmill::config::load_with_env(
        &{
            std::fs::write(dir.path().join("in.jsonl"), "").unwrap();
            let p = dir.path().join("fnmill.toml");
            std::fs::write(
                &p,
                VALID.replace("COMPONENT", &guest("echo").display().to_string()),
            )
            .unwrap();
            p
        },
        [
            (
                "FNMILL__RUNTIME__COMPUTE_THREADS".to_string(),
                "7".to_string(),
            ),
            (
                "FNMILL__FUNCTIONS__F__TIMEOUT".to_string(),
                "750ms".to_string(),
            ),
        ],
    )
    .unwrap();
    assert_eq!(config.runtime.compute_threads, 7);
    assert_eq!(
        config.functions["f"].timeout,
        std::time::Duration::from_millis(750)
    );
}
