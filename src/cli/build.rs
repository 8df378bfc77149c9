//! `fnmill build [dir]`: builds a function project into a component with its language's tool.
//!
//! The language comes from the project's build file: `Cargo.toml` (Rust: cargo for
//! `wasm32-unknown-unknown`, then the module made a component that imports only fnmill's
//! interfaces; with `--wasi`, cargo for `wasm32-wasip2`), `package.json` (JavaScript, or
//! TypeScript when its entry is a `.ts` file: tsc type-checks, rolldown bundles, componentize-js
//! makes the component), `pyproject.toml`
//! (Python: componentize-py). The component is written to `dist/<name>.wasm`, `<name>` being the
//! package's name. Tools are looked up in the project first (`node_modules/.bin`, `.venv/bin`),
//! then on `PATH`; a missing one is a usage error (exit status 2) that says what to install. A
//! tool that fails (a compile error) exits 1 after its own output.
//!
//! The interpreter tools pre-initialise the component at build time (Wizer snapshots:
//! SpiderMonkey with the module evaluated, CPython with the module imported), so a fresh
//! instance per event starts from the snapshot instead of booting an interpreter.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};

use super::new::Language;

/// The contract, for projects that do not carry their own `wit/`.
const CONTRACT: &str = include_str!("../../wit/function.wit");

/// The world every function implements.
const WORLD: &str = "event-function";

/// Pinned tool versions, as the templates and scripts/polyglot-tools.sh install them.
const COMPONENTIZE_JS: &str = "@bytecodealliance/componentize-js@0.23.0";
const JCO: &str = "@bytecodealliance/jco@1.35.0";
const ROLLDOWN: &str = "rolldown@1.3.3";
const TYPESCRIPT: &str = "typescript@7.0.2";
const COMPONENTIZE_PY: &str = "componentize-py==0.25.1";

/// What `fnmill build` was asked for.
#[derive(Debug)]
pub struct BuildArgs {
    /// The project directory.
    pub dir: PathBuf,
    /// Where to write the component (default `<dir>/dist/<name>.wasm`).
    pub out: Option<PathBuf>,
    /// Rust: build for `wasm32-wasip2` (the standard library's clocks, randomness and stdio
    /// work, at ~3 µs more per fresh instance) instead of a WASI-free component.
    pub wasi: bool,
}

/// A project as found on disk.
#[derive(Debug)]
struct Project {
    dir: PathBuf,
    language: Language,
    /// Package name: the component's file name.
    name: String,
    /// JS/TS: the entry module. Python: the module defining `Handler`.
    entry: String,
    /// Python: extra module directories (`[tool.fnmill] python-path`), relative to `dir`.
    python_path: Vec<String>,
}

/// Builds the project and prints where the component went.
pub fn run(args: BuildArgs) -> Result<ExitCode> {
    let started = Instant::now();
    let project = detect(&args.dir)?;
    let out = match &args.out {
        Some(out) => out.clone(),
        None => project
            .dir
            .join("dist")
            .join(format!("{}.wasm", project.name)),
    };
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let out = absolute(&out)?;
    eprintln!(
        "Building {} function `{}` in {}",
        project.language,
        project.name,
        project.dir.display()
    );
    if args.wasi && project.language != Language::Rust {
        bail!(
            "--wasi is for Rust functions; a {} function's tool decides what it imports",
            project.language
        );
    }
    let built = match project.language {
        Language::Rust => build_rust(&project, &out, args.wasi)?,
        Language::Js | Language::Ts => build_js(&project, &out)?,
        Language::Python => build_python(&project, &out)?,
    };
    if !built {
        return Ok(ExitCode::FAILURE);
    }
    let size = std::fs::metadata(&out)
        .with_context(|| format!("reading {}", out.display()))?
        .len();
    println!(
        "built {} ({:.1} MB) in {:.1} s",
        out.display(),
        size as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

fn absolute(path: &Path) -> Result<PathBuf> {
    if path.is_absolute() {
        return Ok(path.to_path_buf());
    }
    Ok(std::env::current_dir()
        .context("reading the current directory")?
        .join(path))
}

/// Finds the project's language, name and entry point from its build file.
fn detect(dir: &Path) -> Result<Project> {
    if !dir.is_dir() {
        bail!("{} is not a directory", dir.display());
    }
    let dir = absolute(dir)?;
    if dir.join("Cargo.toml").is_file() {
        let manifest = read_toml(&dir.join("Cargo.toml"))?;
        let name = manifest
            .get("package")
            .and_then(|p| p.get("name"))
            .and_then(|n| n.as_str())
            .context("Cargo.toml has no [package] name")?
            .to_string();
        return Ok(Project {
            dir,
            language: Language::Rust,
            name,
            entry: String::new(),
            python_path: vec![],
        });
    }
    if dir.join("package.json").is_file() {
        let path = dir.join("package.json");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let manifest: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not valid JSON", path.display()))?;
        let name = manifest
            .get("name")
            .and_then(|n| n.as_str())
            .context("package.json has no \"name\"")?;
        // An npm scope (`@team/enrich`) is not part of a file name.
        let name = name.rsplit('/').next().unwrap_or(name).to_string();
        let entry = match manifest.get("main").and_then(|m| m.as_str()) {
            Some(main) => main.to_string(),
            None if dir.join("src/index.ts").is_file() => "src/index.ts".into(),
            None => "src/index.js".into(),
        };
        if !dir.join(&entry).is_file() {
            bail!(
                "the entry module {} does not exist (package.json \"main\")",
                dir.join(&entry).display()
            );
        }
        let language = if entry.ends_with(".ts") || entry.ends_with(".mts") {
            Language::Ts
        } else {
            Language::Js
        };
        return Ok(Project {
            dir,
            language,
            name,
            entry,
            python_path: vec![],
        });
    }
    if dir.join("pyproject.toml").is_file() {
        let manifest = read_toml(&dir.join("pyproject.toml"))?;
        let name = manifest
            .get("project")
            .and_then(|p| p.get("name"))
            .and_then(|n| n.as_str())
            .context("pyproject.toml has no [project] name")?
            .to_string();
        let tool = manifest.get("tool").and_then(|t| t.get("fnmill"));
        let entry = tool
            .and_then(|t| t.get("module"))
            .and_then(|m| m.as_str())
            .unwrap_or("app")
            .to_string();
        let python_path = tool
            .and_then(|t| t.get("python-path"))
            .and_then(|p| p.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        let top = entry.split('.').next().unwrap_or(&entry);
        if !dir.join(format!("{top}.py")).is_file() && !dir.join(top).is_dir() {
            bail!(
                "no module `{entry}` in {} ([tool.fnmill] module in pyproject.toml, default `app`)",
                dir.display()
            );
        }
        return Ok(Project {
            dir,
            language: Language::Python,
            name,
            entry,
            python_path,
        });
    }
    bail!(
        "{} is not a function project: it has no Cargo.toml (Rust), package.json \
         (JavaScript/TypeScript) or pyproject.toml (Python); `fnmill new` makes one",
        dir.display()
    )
}

fn read_toml(path: &Path) -> Result<toml::Table> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.parse::<toml::Table>()
        .with_context(|| format!("{} is not valid TOML", path.display()))
}

/// A command-line tool `fnmill build` needs.
struct Tool {
    /// The command's name.
    name: &'static str,
    /// What to run to install it.
    install: String,
}

impl Tool {
    /// The tool in the project (`node_modules/.bin`, `.venv/bin`) or on `PATH`.
    fn find(&self, project: &Path) -> Result<PathBuf> {
        for local in [
            project.join("node_modules").join(".bin").join(self.name),
            project.join(".venv").join("bin").join(self.name),
        ] {
            if local.is_file() {
                return Ok(local);
            }
        }
        if let Some(path) = std::env::var_os("PATH") {
            for dir in std::env::split_paths(&path) {
                let candidate = dir.join(self.name);
                if is_executable(&candidate) {
                    return Ok(candidate);
                }
            }
        }
        bail!(
            "{} not found (looked in {} and on PATH); install it: {}",
            self.name,
            project.display(),
            self.install
        )
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Runs a build step with its output on the terminal; `false` if it failed.
fn step(what: &str, command: &mut Command) -> Result<bool> {
    eprintln!("==> {what}");
    let program = command.get_program().to_string_lossy().into_owned();
    let status = command
        .stdin(Stdio::null())
        .status()
        .with_context(|| format!("running {program}"))?;
    if !status.success() {
        eprintln!("error: {what} failed ({status})");
    }
    Ok(status.success())
}

/// The contract the component is built against: the project's `wit/` if it has one (the
/// version it was written for), else the one this fnmill was built with.
fn contract(project: &Project, scratch: &Path) -> Result<PathBuf> {
    let own = project.dir.join("wit");
    if own.is_dir() {
        return Ok(own);
    }
    let dir = scratch.join("wit");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(dir.join("function.wit"), CONTRACT)
        .with_context(|| format!("writing {}", dir.display()))?;
    Ok(dir)
}

/// The project's scratch directory for intermediate files.
fn scratch(project: &Project) -> Result<PathBuf> {
    let dir = project.dir.join(".fnmill");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// The Rust target: WASI-free unless asked for WASI.
fn rust_target(wasi: bool) -> &'static str {
    if wasi {
        "wasm32-wasip2"
    } else {
        "wasm32-unknown-unknown"
    }
}

fn build_rust(project: &Project, out: &Path, wasi: bool) -> Result<bool> {
    let target = rust_target(wasi);
    let cargo = Tool {
        name: "cargo",
        install: format!("Rust with rustup (https://rustup.rs), then `rustup target add {target}`"),
    }
    .find(&project.dir)?;
    check_target(target)?;
    eprintln!("==> cargo build --release --target {target}");
    let mut child = Command::new(&cargo)
        .args([
            "build",
            "--release",
            "--target",
            target,
            "--message-format=json-render-diagnostics",
        ])
        .current_dir(&project.dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .context("running cargo")?;
    // Cargo names what it built on stdout, one JSON message per line; the diagnostics go to
    // stderr as usual.
    let stdout = child.stdout.take().expect("piped stdout");
    let mut wasm = Vec::new();
    for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
        let line = line.context("reading cargo's output")?;
        let Ok(message) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if message["reason"] != "compiler-artifact" {
            continue;
        }
        let cdylib = message["target"]["crate_types"]
            .as_array()
            .is_some_and(|t| t.iter().any(|k| k == "cdylib"));
        if !cdylib {
            continue;
        }
        for file in message["filenames"].as_array().into_iter().flatten() {
            if let Some(file) = file.as_str().filter(|f| f.ends_with(".wasm")) {
                wasm.push(PathBuf::from(file));
            }
        }
    }
    let status = child.wait().context("waiting for cargo")?;
    if !status.success() {
        eprintln!("error: cargo build failed ({status})");
        return Ok(false);
    }
    let built = match wasm.as_slice() {
        [one] => one,
        [] => bail!(
            "cargo built no .wasm library: the package needs `[lib] crate-type = [\"cdylib\"]`"
        ),
        many => {
            let lib = project.name.replace('-', "_");
            many.iter()
                .find(|p| p.file_stem() == Some(OsStr::new(&lib)))
                .with_context(|| format!("cargo built several .wasm files: {many:?}"))?
        }
    };
    if wasi {
        // wasm32-wasip2's linker already wrote a component.
        std::fs::copy(built, out)
            .with_context(|| format!("copying {} to {}", built.display(), out.display()))?;
        return Ok(true);
    }
    match sdk_copy(&project.dir)? {
        Sdk::Absent => eprintln!(
            "note: without fnmill-sdk this function has {STD_ALLOCATOR}; depend on fnmill-sdk \
             and add `use fnmill_sdk as _;` for its allocator, or build with --wasi"
        ),
        Sdk::WithoutHeap(dir) => eprintln!(
            "note: the fnmill-sdk in {} predates WASI-free builds (it has no src/heap.rs), so \
             this function has {STD_ALLOCATOR} and drops panic messages; replace it with the \
             fnmill-sdk/ of a new `fnmill new rust` project, or build with --wasi",
            dir.display()
        ),
        Sdk::Current => {}
    }
    eprintln!("==> component: the module with only the fnmill interfaces it calls as imports");
    let module = std::fs::read(built).with_context(|| format!("reading {}", built.display()))?;
    let component = fnmill::build::componentize(&module)
        .with_context(|| format!("making a component of {}", built.display()))?;
    std::fs::write(out, component).with_context(|| format!("writing {}", out.display()))?;
    Ok(true)
}

/// What a Rust function without the SDK's allocator runs on, for `fnmill build`'s notes.
const STD_ALLOCATOR: &str = "the standard library's allocator, which grows the memory of every \
                             fresh instance (about 5 µs per event)";

/// What the package at `dir` has of fnmill-sdk, which brings the allocator and panic hook a
/// WASI-free build needs.
enum Sdk {
    /// No dependency on it.
    Absent,
    /// A path dependency on a copy made before the SDK had them (no `src/heap.rs`).
    WithoutHeap(PathBuf),
    /// A current copy, or one cargo fetches (not checked).
    Current,
}

fn sdk_copy(dir: &Path) -> Result<Sdk> {
    let manifest = read_toml(&dir.join("Cargo.toml"))?;
    let Some(sdk) = manifest
        .get("dependencies")
        .and_then(|d| d.as_table())
        .and_then(|d| d.get("fnmill-sdk"))
    else {
        return Ok(Sdk::Absent);
    };
    let copy = sdk
        .get("path")
        .and_then(|p| p.as_str())
        .map(|p| dir.join(p));
    Ok(match copy {
        Some(copy) if !copy.join("src").join("heap.rs").is_file() => Sdk::WithoutHeap(copy),
        _ => Sdk::Current,
    })
}

/// Cargo's own error for a missing target is a page about `core`; say what to do instead.
fn check_target(target: &str) -> Result<()> {
    let Ok(output) = Command::new("rustc").args(["--print", "sysroot"]).output() else {
        bail!("rustc not found; install Rust with rustup (https://rustup.rs)");
    };
    let sysroot = String::from_utf8_lossy(&output.stdout).trim().to_string();
    if !Path::new(&sysroot)
        .join("lib/rustlib")
        .join(target)
        .is_dir()
    {
        bail!(
            "the {target} target is not installed for {sysroot}; install it: rustup target add \
             {target}"
        );
    }
    Ok(())
}

fn js_install_hint(ts: bool) -> String {
    let mut packages = format!("{COMPONENTIZE_JS} {JCO} {ROLLDOWN}");
    if ts {
        packages.push(' ');
        packages.push_str(TYPESCRIPT);
    }
    format!(
        "`npm install` in the project (its package.json lists them), or `npm install -g {packages}`"
    )
}

fn build_js(project: &Project, out: &Path) -> Result<bool> {
    let ts = project.language == Language::Ts;
    Tool {
        name: "node",
        install: "Node.js 20 or newer (e.g. `apt-get install nodejs npm`)".into(),
    }
    .find(&project.dir)?;
    let hint = js_install_hint(ts);
    let componentize = Tool {
        name: "componentize-js",
        install: hint.clone(),
    }
    .find(&project.dir)?;
    let rolldown = Tool {
        name: "rolldown",
        install: hint.clone(),
    }
    .find(&project.dir)?;
    let tsc = if ts {
        Some(
            Tool {
                name: "tsc",
                install: hint,
            }
            .find(&project.dir)?,
        )
    } else {
        None
    };

    let scratch = scratch(project)?;
    if let Some(tsc) = tsc {
        let mut command = Command::new(tsc);
        command.arg("--noEmit").current_dir(&project.dir);
        if project.dir.join("tsconfig.json").is_file() {
            command.args(["-p", "tsconfig.json"]);
        } else {
            command.args(["--strict", "--target", "es2022", "--module", "es2022"]);
            command.arg(&project.entry);
        }
        if !step("type-checking (tsc --noEmit)", &mut command)? {
            return Ok(false);
        }
    }

    // One ES module with the function, the SDK and any npm packages it imports; the host
    // interfaces stay imports for componentize-js to bind.
    let bundle = scratch.join(format!("{}.js", project.name));
    let config = scratch.join("rolldown.config.mjs");
    let config_text = format!(
        "export default {{\n  input: {input},\n  external: [/^fnmill:/, /^wasi:/],\n  platform: 'browser',\n  logLevel: 'warn',\n  output: {{ file: {file}, format: 'esm' }},\n}};\n",
        input = js_string(&project.dir.join(&project.entry)),
        file = js_string(&bundle),
    );
    std::fs::write(&config, config_text)
        .with_context(|| format!("writing {}", config.display()))?;
    let mut command = Command::new(rolldown);
    command
        .arg("-c")
        .arg(&config)
        .current_dir(&project.dir)
        .stdout(Stdio::null());
    if !step(
        &format!("bundling {} (rolldown)", project.entry),
        &mut command,
    )? {
        return Ok(false);
    }

    let wit = contract(project, &scratch)?;
    let mut command = Command::new(componentize);
    command
        .arg(bundle.file_name().expect("a file name"))
        .arg("--wit")
        .arg(&wit)
        .args(["--world-name", WORLD])
        // fnmill grants no HTTP: without these the engine imports wasi:http, which the host
        // does not provide.
        .args(["--disable", "http", "fetch-event"])
        .arg("--out")
        .arg(out)
        // componentize-js maps the working directory into the snapshot run; the bundle is all
        // it needs to see.
        .current_dir(&scratch);
    step(
        "componentize-js: SpiderMonkey + the bundle, pre-initialised (takes 20–60 s)",
        &mut command,
    )
}

/// A path as a JavaScript string literal.
fn js_string(path: &Path) -> String {
    serde_json::to_string(&path.to_string_lossy()).expect("a string serializes")
}

fn build_python(project: &Project, out: &Path) -> Result<bool> {
    let componentize = Tool {
        name: "componentize-py",
        install: format!(
            "`pip install {COMPONENTIZE_PY}` (or into a virtualenv: `python3 -m venv .venv && \
             .venv/bin/pip install {COMPONENTIZE_PY}`)"
        ),
    }
    .find(&project.dir)?;
    let scratch = scratch(project)?;
    let wit = contract(project, &scratch)?;
    let mut command = Command::new(componentize);
    command
        .arg("--wit-path")
        .arg(&wit)
        .args(["--world", WORLD, "componentize", &project.entry])
        .arg("--python-path")
        .arg(&project.dir);
    for extra in &project.python_path {
        command.arg("--python-path").arg(project.dir.join(extra));
    }
    command
        .arg("--output")
        .arg(out)
        .current_dir(&project.dir)
        .stdout(Stdio::null());
    step(
        &format!(
            "componentize-py: CPython + `{}`, pre-initialised (takes 15–40 s)",
            project.entry
        ),
        &mut command,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, path: &str, text: &str) {
        let path = dir.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn detects_each_language_from_its_build_file() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write(d, "rust/Cargo.toml", "[package]\nname = \"r-fn\"\n");
        write(
            d,
            "js/package.json",
            r#"{"name":"@team/j-fn","main":"src/main.js"}"#,
        );
        write(d, "js/src/main.js", "");
        write(d, "ts/package.json", r#"{"name":"t-fn"}"#);
        write(d, "ts/src/index.ts", "");
        write(
            d,
            "py/pyproject.toml",
            "[project]\nname = \"p-fn\"\n[tool.fnmill]\nmodule = \"handler\"\npython-path = [\"lib\"]\n",
        );
        write(d, "py/handler.py", "");

        let p = detect(&d.join("rust")).unwrap();
        assert_eq!((p.language, p.name.as_str()), (Language::Rust, "r-fn"));
        let p = detect(&d.join("js")).unwrap();
        assert_eq!(
            (p.language, p.name.as_str(), p.entry.as_str()),
            (Language::Js, "j-fn", "src/main.js")
        );
        let p = detect(&d.join("ts")).unwrap();
        assert_eq!(
            (p.language, p.entry.as_str()),
            (Language::Ts, "src/index.ts")
        );
        let p = detect(&d.join("py")).unwrap();
        assert_eq!(
            (p.language, p.entry.as_str(), p.python_path.clone()),
            (Language::Python, "handler", vec!["lib".to_string()])
        );
    }

    #[test]
    fn a_directory_without_a_build_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = detect(dir.path()).unwrap_err().to_string();
        assert!(err.contains("not a function project"), "{err}");
        write(dir.path(), "pyproject.toml", "[project]\nname = \"x\"\n");
        let err = detect(dir.path()).unwrap_err().to_string();
        assert!(err.contains("no module `app`"), "{err}");
    }

    #[test]
    fn a_missing_tool_says_what_to_install() {
        let dir = tempfile::tempdir().unwrap();
        let err = Tool {
            name: "surely-not-a-tool-fnmill-knows",
            install: "npm install it".into(),
        }
        .find(dir.path())
        .unwrap_err()
        .to_string();
        assert!(err.contains("not found"), "{err}");
        assert!(err.ends_with("install it: npm install it"), "{err}");
    }
}
