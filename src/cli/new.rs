//! `fnmill new <rust|js|ts|python> <name>`: writes a ready function project.
//!
//! Every project has the function (a greeter using JSON, config and a `fatal` error), its build
//! file, a unit test in the language's usual framework (cargo test, node:test, pytest), a sample
//! event (`event.json`), sample input (`events.jsonl`), an `fnmill.toml` that runs the function
//! on it, the contract (`wit/function.wit`) and fnmill's SDK for the language. The templates
//! and SDKs are embedded in the binary, so `fnmill new` works anywhere, offline.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};

/// A language fnmill builds functions from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Language {
    /// Rust, compiled for wasm32-wasip2 with cargo.
    Rust,
    /// JavaScript, componentized with componentize-js (SpiderMonkey).
    Js,
    /// TypeScript, type-checked with tsc, then as JavaScript.
    Ts,
    /// Python, componentized with componentize-py (CPython).
    Python,
}

impl fmt::Display for Language {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Language::Rust => "Rust",
            Language::Js => "JavaScript",
            Language::Ts => "TypeScript",
            Language::Python => "Python",
        })
    }
}

/// What `fnmill new` was asked for.
#[derive(Debug)]
pub struct NewArgs {
    /// The language of the function.
    pub language: Language,
    /// Project name: the package name and the component's file name.
    pub name: String,
    /// Where to write the project (default: `./<name>`).
    pub dir: Option<PathBuf>,
}

/// One file of a project: its path in the project and its text.
struct File {
    path: &'static str,
    text: &'static str,
    /// Whether `{{name}}`, `{{function}}` and `{{memory}}` are to be filled in; the contract and
    /// the SDKs are copied as they are.
    fill: bool,
}

/// A template file (placeholders filled in), from the repository root.
macro_rules! template {
    ($path:literal, $source:literal) => {
        File {
            path: $path,
            text: include_str!(concat!("../../", $source)),
            fill: true,
        }
    };
}

/// A file copied verbatim, from the repository root.
macro_rules! copy {
    ($path:literal, $source:literal) => {
        File {
            path: $path,
            text: include_str!(concat!("../../", $source)),
            fill: false,
        }
    };
}

/// What every project has.
const COMMON: &[File] = &[
    template!("fnmill.toml", "templates/common/fnmill.toml"),
    template!("event.json", "templates/common/event.json"),
    template!("events.jsonl", "templates/common/events.jsonl"),
    copy!("wit/function.wit", "wit/function.wit"),
];

const RUST: &[File] = &[
    template!("Cargo.toml", "templates/rust/Cargo.toml"),
    template!(".cargo/config.toml", "templates/rust/.cargo/config.toml"),
    template!("src/lib.rs", "templates/rust/src/lib.rs"),
    template!(".gitignore", "templates/rust/gitignore"),
    template!("README.md", "templates/rust/README.md"),
    copy!("fnmill-sdk/Cargo.toml", "sdk/rust/Cargo.toml"),
    copy!("fnmill-sdk/src/lib.rs", "sdk/rust/src/lib.rs"),
    copy!("fnmill-sdk/src/heap.rs", "sdk/rust/src/heap.rs"),
];

const JS: &[File] = &[
    template!("package.json", "templates/js/package.json"),
    template!("src/index.js", "templates/js/src/index.js"),
    copy!("src/fnmill.js", "sdk/js/fnmill.js"),
    template!("test/index.test.js", "templates/js/test/index.test.js"),
    copy!("test/fnmill-host.js", "sdk/js/fnmill-host.js"),
    template!(".gitignore", "templates/js/gitignore"),
    template!("README.md", "templates/js/README.md"),
];

const TS: &[File] = &[
    template!("package.json", "templates/ts/package.json"),
    template!("tsconfig.json", "templates/ts/tsconfig.json"),
    template!("tsconfig.test.json", "templates/ts/tsconfig.test.json"),
    template!("src/index.ts", "templates/ts/src/index.ts"),
    copy!("src/fnmill.ts", "sdk/js/fnmill.ts"),
    template!("test/index.test.ts", "templates/ts/test/index.test.ts"),
    copy!("test/fnmill-host.js", "sdk/js/fnmill-host.js"),
    copy!(
        "types/event-function.d.ts",
        "sdk/js/types/event-function.d.ts"
    ),
    copy!(
        "types/interfaces/fnmill-function-config.d.ts",
        "sdk/js/types/interfaces/fnmill-function-config.d.ts"
    ),
    copy!(
        "types/interfaces/fnmill-function-handler.d.ts",
        "sdk/js/types/interfaces/fnmill-function-handler.d.ts"
    ),
    copy!(
        "types/interfaces/fnmill-function-keyvalue.d.ts",
        "sdk/js/types/interfaces/fnmill-function-keyvalue.d.ts"
    ),
    copy!(
        "types/interfaces/fnmill-function-logging.d.ts",
        "sdk/js/types/interfaces/fnmill-function-logging.d.ts"
    ),
    copy!(
        "types/interfaces/fnmill-function-sql.d.ts",
        "sdk/js/types/interfaces/fnmill-function-sql.d.ts"
    ),
    copy!(
        "types/interfaces/fnmill-function-types.d.ts",
        "sdk/js/types/interfaces/fnmill-function-types.d.ts"
    ),
    template!(".gitignore", "templates/ts/gitignore"),
    template!("README.md", "templates/ts/README.md"),
];

const PYTHON: &[File] = &[
    template!("pyproject.toml", "templates/python/pyproject.toml"),
    template!("app.py", "templates/python/app.py"),
    copy!("fnmill_sdk.py", "sdk/python/fnmill_sdk.py"),
    template!("test_app.py", "templates/python/test_app.py"),
    template!("conftest.py", "templates/python/conftest.py"),
    template!(".gitignore", "templates/python/gitignore"),
    template!("README.md", "templates/python/README.md"),
];

/// The Rust SDK names the contract relative to its place in fnmill's repository; in a project
/// it sits one level down from `wit/`.
const SDK_WIT_PATH_IN_REPO: &str = r#"path: "../../wit","#;
const SDK_WIT_PATH_IN_PROJECT: &str = r#"path: "../wit","#;

/// Linear memory limit written into the project's `fnmill.toml`: a Rust guest needs little; the
/// interpreters' pre-initialised heaps are several MiB before the function allocates anything.
fn memory_limit(language: Language) -> &'static str {
    match language {
        Language::Rust => "32MiB",
        Language::Js | Language::Ts | Language::Python => "64MiB",
    }
}

/// Writes the project and prints what to do next.
pub fn run(args: NewArgs) -> Result<ExitCode> {
    check_name(&args.name)?;
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(&args.name));
    check_target(&dir)?;
    let files = render(args.language, &args.name);
    for (path, text) in &files {
        let path = dir.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    println!(
        "Created {} function `{}` in {}",
        args.language,
        args.name,
        dir.display()
    );
    println!();
    println!("  cd {}", dir.display());
    let steps = next_steps(args.language, &args.name);
    let width = steps.iter().map(|(c, _)| c.len()).max().unwrap_or(0);
    for (command, what) in steps {
        println!("  {command:<width$}  # {what}");
    }
    Ok(ExitCode::SUCCESS)
}

/// The project's files: (path relative to the project, contents).
fn render(language: Language, name: &str) -> Vec<(&'static str, String)> {
    let specific = match language {
        Language::Rust => RUST,
        Language::Js => JS,
        Language::Ts => TS,
        Language::Python => PYTHON,
    };
    let function = function_key(name);
    COMMON
        .iter()
        .chain(specific)
        .map(|f| {
            let text = if f.fill {
                f.text
                    .replace("{{name}}", name)
                    .replace("{{function}}", &function)
                    .replace("{{memory}}", memory_limit(language))
            } else if f.path == "fnmill-sdk/src/lib.rs" {
                f.text
                    .replacen(SDK_WIT_PATH_IN_REPO, SDK_WIT_PATH_IN_PROJECT, 1)
            } else {
                f.text.to_string()
            };
            (f.path, text)
        })
        .collect()
}

fn next_steps(language: Language, name: &str) -> Vec<(String, String)> {
    let function = function_key(name);
    let mut steps: Vec<(String, String)> = match language {
        Language::Rust => vec![("cargo test".into(), "unit tests, on this machine".into())],
        Language::Js => vec![
            (
                "npm install".into(),
                "componentize-js, jco, rolldown".into(),
            ),
            ("npm test".into(), "unit tests (node:test)".into()),
        ],
        Language::Ts => vec![
            (
                "npm install".into(),
                "componentize-js, jco, rolldown, typescript".into(),
            ),
            (
                "npm test".into(),
                "type-check and unit tests (node:test)".into(),
            ),
        ],
        Language::Python => vec![
            (
                "pip install componentize-py==0.25.1".into(),
                "the build tool (it also makes the test bindings)".into(),
            ),
            ("python3 -m pytest".into(), "unit tests (pytest)".into()),
        ],
    };
    steps.push(("fnmill build".into(), format!("→ dist/{name}.wasm")));
    steps.push((
        format!("fnmill invoke dist/{name}.wasm --event event.json"),
        "one event, outputs on stdout".into(),
    ));
    steps.push((
        format!("fnmill invoke {function} --event event.json"),
        "the same, with fnmill.toml's config".into(),
    ));
    steps.push(("fnmill run".into(), "events.jsonl → out/".into()));
    steps
}

/// The function's key in fnmill.toml (and so in `FNMILL__FUNCTIONS__<KEY>__...` variables).
fn function_key(name: &str) -> String {
    name.replace('-', "_")
}

/// A name that is a valid package name in every language and a plain file name.
fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !ok {
        bail!(
            "invalid name `{name}`: use lowercase letters, digits and `-`, starting with a letter \
             (at most 64 characters), e.g. `enrich-orders`"
        );
    }
    Ok(())
}

/// Refuses to write into a directory that has anything in it (or into a file).
fn check_target(dir: &Path) -> Result<()> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                bail!(
                    "{} already exists and is not empty; choose another name or --dir",
                    dir.display()
                );
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(_) if dir.exists() => bail!("{} already exists and is not a directory", dir.display()),
        Err(e) => Err(e).with_context(|| format!("reading {}", dir.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for good in ["a", "enrich-orders", "v2"] {
            check_name(good).unwrap();
        }
        for bad in [
            "",
            "Enrich",
            "2fast",
            "a_b",
            "a-",
            "a/b",
            "a.b",
            &"x".repeat(65),
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn placeholders_are_filled_but_sdks_are_copied_verbatim() {
        for language in [Language::Rust, Language::Js, Language::Ts, Language::Python] {
            let files = render(language, "my-fn");
            let specific = match language {
                Language::Rust => RUST,
                Language::Js => JS,
                Language::Ts => TS,
                Language::Python => PYTHON,
            };
            for f in COMMON.iter().chain(specific) {
                let (_, text) = files.iter().find(|(p, _)| *p == f.path).unwrap();
                if f.fill {
                    assert!(
                        !text.contains("{{"),
                        "{language} {} has a placeholder left",
                        f.path
                    );
                } else if f.path != "fnmill-sdk/src/lib.rs" {
                    assert_eq!(text, f.text, "{} is copied verbatim", f.path);
                }
            }
            let toml = &files.iter().find(|(p, _)| *p == "fnmill.toml").unwrap().1;
            assert!(toml.contains("[functions.my_fn]"), "{toml}");
            assert!(toml.contains(r#"component = "dist/my-fn.wasm""#), "{toml}");
            // The command stands on a line of its own, so no name shifts a comment beside it.
            assert!(
                toml.contains("\n#   fnmill invoke my_fn --event event.json\n"),
                "{toml}"
            );
        }
    }

    #[test]
    fn the_rust_sdk_finds_the_projects_contract() {
        let files = render(Language::Rust, "x");
        let sdk = &files
            .iter()
            .find(|(p, _)| *p == "fnmill-sdk/src/lib.rs")
            .unwrap()
            .1;
        assert!(sdk.contains(SDK_WIT_PATH_IN_PROJECT));
        assert!(!sdk.contains(SDK_WIT_PATH_IN_REPO));
    }

    #[test]
    fn refuses_a_non_empty_directory() {
        let dir = tempfile::tempdir().unwrap();
        check_target(dir.path()).unwrap();
        check_target(&dir.path().join("absent")).unwrap();
        std::fs::write(dir.path().join("f"), "x").unwrap();
        let err = check_target(dir.path()).unwrap_err().to_string();
        assert!(err.contains("not empty"), "{err}");
        assert!(check_target(&dir.path().join("f")).is_err());
    }
}
