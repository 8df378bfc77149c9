//! Functions in Rust, JavaScript, TypeScript and Python: every `fnmill new` template builds with
//! `fnmill build`, passes its own unit tests and answers its sample event under `fnmill invoke`
//! and `fnmill run`; the JavaScript and Python functions hit by a loop, unbounded allocation or
//! an exception fail exactly as Rust ones do (timeout, fuel, memory, trap) and leave the host
//! working; capabilities they are not granted are refused; a missing build tool is a usage error
//! that says what to install. The tools come from `scripts/polyglot-tools.sh`, run by the tests
//! themselves.

use fnmill_testkit::common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{FileRoute, fnmill, headers, polyglot_guest, polyglot_path, read_lines, root};
use serde_json::{Value, json};

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn assert_ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        stderr(out)
    );
}

/// A command in `dir` with the polyglot tools on PATH and none of the outer cargo's settings.
fn tool(program: &str, dir: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.current_dir(dir)
        .env("PATH", polyglot_path())
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS");
    cmd
}

/// `fnmill <args>` in `dir` with the polyglot tools on PATH.
fn fnmill_in(dir: &Path, args: &[&str]) -> Output {
    fnmill()
        .args(args)
        .current_dir(dir)
        .env("PATH", polyglot_path())
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .output()
        .expect("running fnmill")
}

/// The sample event's expected output, the same for every language.
fn expected_greeting() -> Value {
    json!({
        "destination": "out",
        "key": "user-1",
        "payload": {"message": "Hello, Ada!"},
        "headers": {"content-type": "application/json"},
    })
}

/// `fnmill new` → the template's unit tests → `fnmill build` → `fnmill invoke` (the component
/// file, then the function of fnmill.toml) → `fnmill run` on events.jsonl. Returns the work
/// directory and the project in it.
fn template_round_trip(language: &str, unit_tests: &[&[&str]]) -> (tempfile::TempDir, PathBuf) {
    let work = tempfile::tempdir().unwrap();
    let name = format!("hello-{language}");
    let out = fnmill_in(work.path(), &["new", language, &name]);
    assert_ok(&out, "fnmill new");
    let project = work.path().join(&name);

    // A second `new` into the same, now non-empty, directory is refused.
    let again = fnmill_in(work.path(), &["new", language, &name]);
    assert_eq!(again.status.code(), Some(2), "{}", stderr(&again));
    assert!(stderr(&again).contains("not empty"), "{}", stderr(&again));

    if language == "ts" {
        // What `npm install` would give the project: the pinned tools, typescript and
        // @types/node among them.
        let modules = Path::new(&polyglot_tools_dir())
            .join("js")
            .join("node_modules");
        std::os::unix::fs::symlink(modules, project.join("node_modules")).unwrap();
    }
    for command in unit_tests {
        let mut cmd = tool(command[0], &project);
        if language == "rust" {
            cmd.env("CARGO_TARGET_DIR", rust_template_target());
        }
        let out = cmd.args(&command[1..]).output().unwrap();
        assert_ok(&out, &format!("{command:?} in the {language} template"));
    }

    let out = if language == "rust" {
        build_rust_project(&project, &[])
    } else {
        fnmill_in(&project, &["build"])
    };
    assert_ok(&out, "fnmill build");
    assert!(
        !stderr(&out).contains("without fnmill-sdk"),
        "{}",
        stderr(&out)
    );
    let component = project.join("dist").join(format!("{name}.wasm"));
    assert!(component.is_file(), "no {}", component.display());
    match language {
        "js" | "ts" => common::warm_compile_cache("js"),
        "python" => common::warm_compile_cache("python"),
        _ => {}
    }
    if language == "rust" {
        // Built for wasm32-unknown-unknown: only the fnmill interfaces it calls, no WASI.
        let imports = component_imports(&component);
        assert!(
            imports.iter().all(|i| i.starts_with("fnmill:")),
            "{imports:?}"
        );
        assert!(
            imports
                .iter()
                .any(|i| i.starts_with("fnmill:function/config")),
            "{imports:?}"
        );
        // The SDK's allocator serves the event from the initial memory (two pages with the
        // template's 64 KiB stack): with the limit at exactly that, nothing may grow.
        let out = fnmill()
            .args([
                "invoke",
                &format!("dist/{name}.wasm"),
                "--event",
                "event.json",
            ])
            .args(["--memory", "128KiB"])
            .current_dir(&project)
            .output()
            .unwrap();
        assert_ok(&out, "fnmill invoke --memory 128KiB");
    }

    // The test run's shared cache (see `fnmill()`): a rebuilt JavaScript or Python component
    // then compiles only what its language runtime's earlier builds did not have.
    let invoke = |target: &str| {
        fnmill()
            .args(["invoke", target, "--event", "event.json"])
            .current_dir(&project)
            .output()
            .unwrap()
    };
    for target in [format!("dist/{name}.wasm"), name.replace('-', "_")] {
        let out = invoke(&target);
        assert_ok(&out, &format!("fnmill invoke {target}"));
        let line: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(line, expected_greeting(), "fnmill invoke {target}");
    }

    let out = fnmill().arg("run").current_dir(&project).output().unwrap();
    assert_ok(&out, "fnmill run");
    let mut greetings: Vec<String> = read_lines(&project.join("out/out.jsonl"))
        .iter()
        .map(|l| l["payload"]["message"].as_str().unwrap().to_string())
        .collect();
    greetings.sort();
    assert_eq!(greetings, ["Hello, Ada!", "Hello, Alan!"]);
    let dead = read_lines(&project.join("out/dead-letter.jsonl"));
    assert_eq!(dead.len(), 1);
    assert_eq!(headers(&dead[0])["fnmill.error.kind"], "fatal");
    assert_eq!(
        headers(&dead[0])["fnmill.error.message"],
        "payload has no string `name`"
    );
    (work, project)
}

/// A Rust function written with wit-bindgen alone (the quickstart's) builds too, WASI-free, and
/// `fnmill build` says that it runs on the standard library's allocator and what to do about it.
#[test]
fn a_rust_function_without_the_sdk_builds_with_a_note_about_its_allocator() {
    let work = tempfile::tempdir().unwrap();
    let component = work.path().join("quickstart.wasm");
    let out = fnmill()
        .arg("build")
        .arg(root().join("examples").join("quickstart").join("function"))
        .arg("--out")
        .arg(&component)
        .output()
        .unwrap();
    assert_ok(&out, "fnmill build examples/quickstart/function");
    assert!(
        stderr(&out).contains("without fnmill-sdk"),
        "{}",
        stderr(&out)
    );
    let imports = component_imports(&component);
    assert!(
        imports.iter().all(|i| i.starts_with("fnmill:")),
        "{imports:?}"
    );
    let event = json!({
        "id": "e1",
        "key": "c-7",
        "payload": {"order_id": "o-1", "customer_id": "c-7", "currency": "EUR",
                    "items": [{"sku": "BOOK-1", "qty": 2, "unit_price": 12.5}]},
    });
    std::fs::write(work.path().join("event.json"), event.to_string()).unwrap();
    let out = fnmill()
        .arg("invoke")
        .arg(&component)
        .args(["--event", "event.json"])
        .current_dir(work.path())
        .env("XDG_CACHE_HOME", work.path().join("cache"))
        .output()
        .unwrap();
    assert_ok(&out, "fnmill invoke");
    let line: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(line["payload"]["order_id"], "o-1", "{line}");

    // Why the note: the standard library's allocator grows the memory for its first allocation,
    // so with the limit at the module's initial memory (17 pages: this crate keeps the default
    // 1 MiB stack for wasm32-unknown-unknown) the event fails with a memory error (status 15).
    let out = fnmill()
        .arg("invoke")
        .arg(&component)
        .args(["--event", "event.json", "--memory", "1088KiB"])
        .current_dir(work.path())
        .env("XDG_CACHE_HOME", work.path().join("cache"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(15), "{}", stderr(&out));
}

/// The names a component imports.
fn component_imports(component: &Path) -> Vec<String> {
    let engine = wasmtime::Engine::default();
    let component = wasmtime::component::Component::from_file(&engine, component).unwrap();
    component
        .component_type()
        .imports(&engine)
        .map(|(name, _)| name.to_string())
        .collect()
}

/// Where `scripts/polyglot-tools.sh` installs (its default, unless `FNMILL_TOOLS_DIR` says).
fn polyglot_tools_dir() -> String {
    polyglot_path();
    std::env::var("FNMILL_TOOLS_DIR").unwrap_or_else(|_| {
        format!(
            "{}/.cache/fnmill-tools",
            std::env::var("HOME").expect("HOME is set")
        )
    })
}

/// `fnmill build ARGS` in the Rust `project`, with the template runs' shared target directory.
fn build_rust_project(project: &Path, args: &[&str]) -> Output {
    tool(env!("CARGO_BIN_EXE_fnmill"), project)
        .arg("build")
        .args(args)
        .env("CARGO_TARGET_DIR", rust_template_target())
        .output()
        .unwrap()
}

/// `fnmill invoke COMPONENT --event event.json` in `project`, with a cache under `work`.
fn invoke_in(project: &Path, work: &Path, component: &str) -> Output {
    fnmill()
        .args(["invoke", component, "--event", "event.json"])
        .current_dir(project)
        .env("XDG_CACHE_HOME", work.join("cache"))
        .output()
        .unwrap()
}

/// One cargo target directory for every Rust template run, so a rerun does not compile
/// wit-bindgen again.
fn rust_template_target() -> PathBuf {
    root().join("target").join("polyglot-rust-template")
}

#[test]
fn rust_template() {
    let (work, project) = template_round_trip("rust", &[&["cargo", "test", "--quiet"]]);

    // `--wasi`: the same function for wasm32-wasip2 imports WASI and answers the same.
    let out = build_rust_project(&project, &["--wasi", "--out", "dist/wasi.wasm"]);
    assert_ok(&out, "fnmill build --wasi");
    let imports = component_imports(&project.join("dist").join("wasi.wasm"));
    assert!(
        imports.iter().any(|i| i.starts_with("wasi:")),
        "{imports:?}"
    );
    let out = invoke_in(&project, work.path(), "dist/wasi.wasm");
    assert_ok(&out, "fnmill invoke dist/wasi.wasm");
    let line: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(line, expected_greeting());

    // A panic traps the instance, and its message reaches the log through `logging` (the
    // WASI-free component has no stderr).
    let lib = project.join("src").join("lib.rs");
    let source = std::fs::read_to_string(&lib).unwrap().replace(
        "let request: Value = event.json()?;",
        "let request: Value = event.json()?;\n        assert!(request.get(\"name\") != Some(&json!(\"Ada\")), \"no Ada here\");",
    );
    std::fs::write(&lib, source).unwrap();
    assert_ok(
        &build_rust_project(&project, &[]),
        "fnmill build (panicking)",
    );
    let out = invoke_in(&project, work.path(), "dist/hello-rust.wasm");
    assert!(!out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("no Ada here"), "{}", stderr(&out));
    assert!(stderr(&out).contains("trap"), "{}", stderr(&out));

    // A project made before WASI-free builds carries an SDK copy without the allocator:
    // `fnmill build` still builds it, and says what it costs and how to update it.
    let sdk = project.join("fnmill-sdk").join("src");
    std::fs::remove_file(sdk.join("heap.rs")).unwrap();
    let lib = std::fs::read_to_string(sdk.join("lib.rs")).unwrap();
    let old = lib.replace(
        "#[cfg(all(target_arch = \"wasm32\", target_os = \"unknown\"))]\npub mod heap;\n",
        "",
    );
    assert_ne!(
        old, lib,
        "the SDK's lib.rs no longer declares `heap` that way"
    );
    std::fs::write(sdk.join("lib.rs"), old).unwrap();
    let out = build_rust_project(&project, &[]);
    assert_ok(&out, "fnmill build (an old SDK copy)");
    assert!(
        stderr(&out).contains("predates WASI-free builds"),
        "{}",
        stderr(&out)
    );

    // --wasi is Rust's: elsewhere it is a usage error that says so.
    let js = work.path().join("js");
    assert_ok(
        &fnmill_in(work.path(), &["new", "js", "js"]),
        "fnmill new js",
    );
    let out = fnmill_in(&js, &["build", "--wasi"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("--wasi is for Rust"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn js_template() {
    template_round_trip("js", &[&["npm", "test", "--silent"]]);
}

#[test]
fn ts_template() {
    template_round_trip("ts", &[&["npm", "test", "--silent"]]);
}

#[test]
fn python_template() {
    template_round_trip("python", &[&["python3", "-m", "pytest", "-q"]]);
}

/// `fnmill invoke` of the faults guest with `payload` as text, extra arguments, and the exit
/// code and stderr that came back.
fn invoke_faults(component: &Path, payload: &str, args: &[&str]) -> (Option<i32>, String, Value) {
    let dir = tempfile::tempdir().unwrap();
    let event = dir.path().join("event.json");
    std::fs::write(
        &event,
        json!({"id": "e1", "key": "k", "payload_text": payload}).to_string(),
    )
    .unwrap();
    let out = fnmill()
        .arg("invoke")
        .arg(component)
        .arg("--event")
        .arg(&event)
        .args(args)
        .output()
        .unwrap();
    let stdout = if out.stdout.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&out.stdout).unwrap()
    };
    (out.status.code(), stderr(&out), stdout)
}

/// A loop is stopped by the timeout or by fuel, unbounded allocation by the memory limit, an
/// exception is a trap; fatal and retryable errors keep their class; each exits as `fnmill
/// invoke` documents it, the same codes as for Rust guests.
fn failures_are_classified_as_for_rust(guest: &str) {
    let component = polyglot_guest(guest);
    common::warm_compile_cache(guest.trim_end_matches("-faults"));
    let cases: [(&str, &[&str], i32, &str); 6] = [
        ("loop", &["--timeout", "300ms"], 13, "error: timeout"),
        ("loop", &["--fuel", "20000000"], 14, "error: fuel"),
        ("alloc", &["--memory", "48MiB"], 15, "error: memory"),
        ("throw", &[], 12, "error: trap"),
        ("fatal", &[], 11, "error: fatal: fatal on purpose"),
        (
            "retryable",
            &[],
            10,
            "error: retryable: retryable on purpose",
        ),
    ];
    for (payload, args, code, message) in cases {
        let (status, stderr, _) = invoke_faults(&component, payload, args);
        assert_eq!(status, Some(code), "{guest} {payload} {args:?}: {stderr}");
        assert!(
            stderr.contains(message),
            "{guest} {payload}: wanted {message:?} in {stderr}"
        );
    }
    // Within its limit the same allocation succeeds.
    let (status, stderr, out) = invoke_faults(&component, "alloc:8", &["--memory", "48MiB"]);
    assert_eq!(status, Some(0), "{stderr}");
    assert_eq!(out["payload_text"], "alloc:8", "{out}");
}

#[test]
fn js_failures_are_classified_as_for_rust() {
    failures_are_classified_as_for_rust("js-faults");
}

#[test]
fn python_failures_are_classified_as_for_rust() {
    failures_are_classified_as_for_rust("python-faults");
}

/// One `fnmill run` through the faults guest: each failing event is dead-lettered with its
/// class, events around them are answered, so the host survived all of it; capabilities the
/// function is not granted are refused; config reaches the guest; its log lines and its
/// stdout/stderr are tagged with the function and the event.
fn failures_leave_the_host_working(guest: &str) {
    let component = polyglot_guest(guest);
    common::warm_compile_cache(guest.trim_end_matches("-faults"));
    let dir = tempfile::tempdir().unwrap();
    let mut route = FileRoute::new(dir.path(), component);
    // The timeout only has to stop `loop`; `alloc` must reach the memory limit well inside it,
    // also on a machine busy with the rest of the suite (500 ms was too short for Python there).
    route.function_extra =
        "memory = \"48MiB\"\ntimeout = \"3s\"\nconfig = { greeting = \"hi\" }\n".into();
    route.route_extra = "retry = { max_attempts = 2, initial_backoff = \"10ms\" }\n".into();
    let commands = [
        "ok-1",
        "loop",
        "ok-2",
        "alloc",
        "ok-3",
        "throw",
        "ok-4",
        "fatal",
        "retryable",
        "sql",
        "kv",
        "log",
        "ok-5",
    ];
    let mut text = String::new();
    for (i, c) in commands.iter().enumerate() {
        // One key each: a failure holds no other event back.
        text.push_str(&json!({"id": format!("e{i}"), "key": c, "payload_text": c}).to_string());
        text.push('\n');
    }
    std::fs::write(route.input(), text).unwrap();
    let out = common::run_to_end(&route.write());
    let log = stderr(&out);

    let mut answered: Vec<String> = read_lines(&route.output())
        .iter()
        .map(|l| {
            assert_eq!(headers(l)["greeting"], "hi", "{l}");
            l["payload_text"].as_str().unwrap().to_string()
        })
        .collect();
    answered.sort();
    assert_eq!(answered, ["log", "ok-1", "ok-2", "ok-3", "ok-4", "ok-5"]);

    let dead: std::collections::BTreeMap<String, (String, String)> = read_lines(&route.dead())
        .iter()
        .map(|l| {
            let h = headers(l);
            (
                l["payload_text"].as_str().unwrap().to_string(),
                (
                    h["fnmill.error.kind"].clone(),
                    h["fnmill.error.message"].clone(),
                ),
            )
        })
        .collect();
    let kind = |c: &str| dead.get(c).map(|(k, _)| k.as_str()).unwrap_or("(none)");
    assert_eq!(kind("loop"), "timeout", "{dead:?}");
    assert_eq!(kind("alloc"), "memory", "{dead:?}");
    assert_eq!(kind("throw"), "trap", "{dead:?}");
    assert_eq!(kind("fatal"), "fatal", "{dead:?}");
    assert_eq!(kind("retryable"), "retryable", "{dead:?}");
    assert_eq!(kind("sql"), "fatal", "{dead:?}");
    assert!(dead["sql"].1.contains("not-granted"), "{dead:?}");
    assert_eq!(kind("kv"), "fatal", "{dead:?}");
    assert!(dead["kv"].1.contains("no-such-store"), "{dead:?}");
    assert_eq!(dead.len(), 7, "{dead:?}");

    for line in [
        "logged on purpose",
        "stdout on purpose",
        "stderr on purpose",
    ] {
        let found = log
            .lines()
            .any(|l| l.contains(line) && l.contains("function=f") && l.contains("event=e11"));
        assert!(
            found,
            "no log line {line:?} tagged with the event in:\n{log}"
        );
    }
}

#[test]
fn js_failures_leave_the_host_working() {
    failures_leave_the_host_working("js-faults");
}

#[test]
fn python_failures_leave_the_host_working() {
    failures_leave_the_host_working("python-faults");
}

/// A copy of a template-like project in a temporary directory, for the missing-tool tests.
fn project(language: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let out = fnmill()
        .args(["new", language, "p", "--dir"])
        .arg(dir.path().join("p"))
        .output()
        .unwrap();
    assert_ok(&out, "fnmill new");
    dir
}

/// `fnmill build` with `PATH` set to `path` only.
fn build_with_path(project: &Path, path: &Path) -> Output {
    fnmill()
        .arg("build")
        .arg(project)
        .env("PATH", path)
        .output()
        .unwrap()
}

/// A directory holding links to some commands of the real PATH, to be a whole PATH.
fn bin_with(commands: &[&str]) -> tempfile::TempDir {
    let bin = tempfile::tempdir().unwrap();
    let path = polyglot_path();
    for command in commands {
        let found = std::env::split_paths(&path)
            .map(|d| d.join(command))
            .find(|p| p.is_file())
            .unwrap_or_else(|| panic!("{command} is not on PATH"));
        std::os::unix::fs::symlink(found, bin.path().join(command)).unwrap();
    }
    bin
}

#[test]
fn a_missing_toolchain_says_what_to_install_and_exits_2() {
    let cases: [(&str, &[&str], &str, &str); 4] = [
        ("js", &[], "node not found", "Node.js 20"),
        (
            "ts",
            &["node"],
            "componentize-js not found",
            "@bytecodealliance/componentize-js@0.23.0",
        ),
        (
            "python",
            &[],
            "componentize-py not found",
            "pip install componentize-py==0.25.1",
        ),
        ("rust", &[], "cargo not found", "rustup"),
    ];
    for (language, commands, missing, install) in cases {
        let dir = project(language);
        let bin = bin_with(commands);
        let out = build_with_path(&dir.path().join("p"), bin.path());
        let text = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{language}: {text}");
        assert!(text.contains(missing), "{language}: {text}");
        assert!(text.contains(install), "{language}: {text}");
    }
}

#[test]
fn build_refuses_a_directory_that_is_not_a_project() {
    let dir = tempfile::tempdir().unwrap();
    let out = fnmill().arg("build").arg(dir.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("not a function project"),
        "{}",
        stderr(&out)
    );
}

/// Runs the quickstart config with `component` as its function; returns the output directory.
fn run_quickstart(work: &Path, label: &str, component: &Path) -> PathBuf {
    let dir = work.join(label);
    std::fs::create_dir_all(&dir).unwrap();
    let example = root().join("examples").join("quickstart");
    std::fs::copy(example.join("fnmill.toml"), dir.join("fnmill.toml")).unwrap();
    std::fs::copy(example.join("input.jsonl"), dir.join("input.jsonl")).unwrap();
    let out = fnmill()
        .args(["run", "-c"])
        .arg(dir.join("fnmill.toml"))
        .env("FNMILL__FUNCTIONS__ENRICH_ORDERS__COMPONENT", component)
        // The interpreters' heaps start at 10–13 MiB.
        .env("FNMILL__FUNCTIONS__ENRICH_ORDERS__MEMORY", "64MiB")
        .output()
        .unwrap();
    assert_ok(&out, &format!("the {label} quickstart"));
    dir.join("out")
}

/// The lines of a JSON Lines file, sorted: events of different keys finish in any order.
fn sorted_lines(path: &Path) -> Vec<String> {
    let mut lines: Vec<String> = std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect();
    lines.sort();
    lines
}

/// A dead letter without what differs between runs in different directories: the input file's
/// directory in `fnmill.error.origin.file`.
fn dead_letter(line: &str) -> Value {
    let mut v: Value = serde_json::from_str(line).unwrap();
    let file = v["headers"]["fnmill.error.origin.file"].as_str().unwrap();
    let name = Path::new(file).file_name().unwrap().to_string_lossy();
    v["headers"]["fnmill.error.origin.file"] = name.into_owned().into();
    v
}

/// The dead letters of a run (see `dead_letter`), sorted.
fn dead_letters(path: &Path) -> Vec<Value> {
    let mut v: Vec<Value> = sorted_lines(path).iter().map(|l| dead_letter(l)).collect();
    v.sort_by_key(|l| l.to_string());
    v
}

/// A dead letter with the parser's own words (which differ between serde_json, JSON.parse and
/// Python's json) taken out of its message.
fn without_parser_words(mut v: Value) -> Value {
    let message = v["headers"]["fnmill.error.message"].as_str().unwrap();
    assert!(message.starts_with("malformed order: "), "{message}");
    v["headers"]["fnmill.error.message"] = "malformed order: …".into();
    v
}

#[test]
fn quickstart_in_js_and_python_writes_the_same_files_as_rust() {
    let examples = root().join("examples").join("quickstart");
    let work = tempfile::tempdir().unwrap();
    let components = [
        ("rust", common::quickstart_component()),
        (
            "js",
            build_example(&examples.join("function-js"), "quickstart-js"),
        ),
        (
            "python",
            build_example(&examples.join("function-python"), "quickstart-python"),
        ),
    ];
    let outs: Vec<(&str, PathBuf)> = components
        .iter()
        .map(|(label, c)| (*label, run_quickstart(work.path(), label, c)))
        .collect();
    let (_, rust) = &outs[0];
    assert_eq!(sorted_lines(&rust.join("valid.jsonl")).len(), 8);
    assert_eq!(sorted_lines(&rust.join("invalid.jsonl")).len(), 2);
    for (label, out) in &outs[1..] {
        for file in ["valid.jsonl", "invalid.jsonl"] {
            assert_eq!(
                sorted_lines(&out.join(file)),
                sorted_lines(&rust.join(file)),
                "{label} {file} differs from Rust's"
            );
        }
        let dead = |dir: &Path| -> Vec<Value> {
            let mut v: Vec<Value> = dead_letters(&dir.join("dead-letter.jsonl"))
                .into_iter()
                .map(without_parser_words)
                .collect();
            v.sort_by_key(|l| l.to_string());
            v
        };
        assert_eq!(
            dead(out),
            dead(rust),
            "{label} dead letters differ from Rust's"
        );
        assert_eq!(dead(out).len(), 2);
    }
}

/// Builds an example's JS or Python function into `target/polyglot-examples/<label>.wasm`.
fn build_example(dir: &Path, label: &str) -> PathBuf {
    let out = root()
        .join("target")
        .join("polyglot-examples")
        .join(format!("{label}.wasm"));
    let built = common::fnmill_build(dir, &out);
    assert_ok(&built, &format!("fnmill build {}", dir.display()));
    let language = if dir.ends_with("function-js") {
        "js"
    } else {
        "python"
    };
    common::warm_compile_cache(language);
    out
}

fn pg_url() -> String {
    std::env::var("FNMILL_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

fn redis_url() -> String {
    std::env::var("FNMILL_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// Loads examples/orders-enrich/schema.sql (idempotent) into the test database.
fn load_orders_schema() {
    use fnmill_connector_postgres::tokio_postgres::{self, NoTls};
    let schema = std::fs::read_to_string(root().join("examples/orders-enrich/schema.sql")).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(&pg_url(), NoTls)
            .await
            .expect("connecting to the test PostgreSQL");
        tokio::spawn(conn);
        client.batch_execute(&schema).await.unwrap();
    });
}

/// Runs the orders-enrich example's config with `component`, a Redis key prefix of its own
/// (so a run never sees another's dedup marks), against the test PostgreSQL and Redis.
fn run_orders_enrich(work: &Path, label: &str, component: &Path) -> PathBuf {
    let dir = work.join(label);
    std::fs::create_dir_all(&dir).unwrap();
    let example = root().join("examples").join("orders-enrich");
    let prefix = format!(
        "orders-enrich-test:{label}:{}:{:08x}:",
        std::process::id(),
        fastrand::u32(..)
    );
    let config = std::fs::read_to_string(example.join("fnmill.toml"))
        .unwrap()
        .replace("orders-enrich:dedup:", &prefix);
    assert!(config.contains(&prefix), "the example's dedup prefix moved");
    std::fs::write(dir.join("fnmill.toml"), config).unwrap();
    std::fs::copy(example.join("input.jsonl"), dir.join("input.jsonl")).unwrap();
    let out = fnmill()
        .args(["run", "-c"])
        .arg(dir.join("fnmill.toml"))
        .env("ORDERS_DB_URL", pg_url())
        .env("FNMILL__DATA_SOURCES__CACHE__URL", redis_url())
        .env("FNMILL__FUNCTIONS__ENRICH__COMPONENT", component)
        .env("FNMILL__FUNCTIONS__ENRICH__MEMORY", "64MiB")
        .output()
        .unwrap();
    assert_ok(&out, &format!("the {label} orders-enrich example"));
    dir.join("out")
}

/// The orders-enrich example in Rust, JavaScript and Python against the real PostgreSQL and
/// Redis: customers looked up with `sql`, the repeated event skipped with a `keyvalue` bucket,
/// and the three write the same files.
#[test]
fn orders_enrich_in_js_and_python_matches_rust() {
    load_orders_schema();
    let examples = root().join("examples").join("orders-enrich");
    let work = tempfile::tempdir().unwrap();
    let rust = common::examples_component("orders_enrich");
    let runs = [
        ("rust", rust),
        (
            "js",
            build_example(&examples.join("function-js"), "orders-enrich-js"),
        ),
        (
            "python",
            build_example(&examples.join("function-python"), "orders-enrich-python"),
        ),
    ];
    let outs: Vec<(&str, PathBuf)> = runs
        .iter()
        .map(|(label, c)| (*label, run_orders_enrich(work.path(), label, c)))
        .collect();

    let (_, rust) = &outs[0];
    let enriched = read_lines(&rust.join("enriched.jsonl"));
    let mut ids: Vec<&str> = enriched
        .iter()
        .map(|l| l["payload"]["order_id"].as_str().unwrap())
        .collect();
    ids.sort();
    // evt-1 came twice: the second one was skipped as a duplicate.
    assert_eq!(ids, ["o-1", "o-2"]);
    let ada = enriched
        .iter()
        .find(|l| l["payload"]["order_id"] == "o-1")
        .unwrap();
    assert_eq!(ada["payload"]["customer"]["name"], "Ada Lovelace");
    assert_eq!(ada["payload"]["total"], 30.0);
    let unknown = read_lines(&rust.join("unknown-customer.jsonl"));
    assert_eq!(unknown.len(), 1);
    assert_eq!(unknown[0]["payload"]["customer_id"], 99);
    let dead = read_lines(&rust.join("dead-letter.jsonl"));
    assert_eq!(dead.len(), 1);
    assert_eq!(headers(&dead[0])["fnmill.error.kind"], "fatal");

    for (label, out) in &outs[1..] {
        for file in ["enriched.jsonl", "unknown-customer.jsonl"] {
            assert_eq!(
                sorted_lines(&out.join(file)),
                sorted_lines(&rust.join(file)),
                "{label} {file} differs from Rust's"
            );
        }
        assert_eq!(
            dead_letters(&out.join("dead-letter.jsonl")),
            dead_letters(&rust.join("dead-letter.jsonl")),
            "{label} dead letters differ from Rust's"
        );
    }
}

/// The committed JavaScript SDK and TypeScript declarations are what their generators make
/// today: fnmill.js is tsc's output for fnmill.ts, types/ is jco's for wit/function.wit.
#[test]
fn js_sdk_and_types_are_up_to_date() {
    let sdk = root().join("sdk").join("js");
    let out = tempfile::tempdir().unwrap();
    let tsc = tool("tsc", &sdk)
        .args(["-p", "tsconfig.json", "--outDir"])
        .arg(out.path())
        .output()
        .unwrap();
    assert_ok(&tsc, "tsc -p sdk/js");
    assert_eq!(
        std::fs::read_to_string(out.path().join("fnmill.js")).unwrap(),
        std::fs::read_to_string(sdk.join("fnmill.js")).unwrap(),
        "sdk/js/fnmill.js is stale: run `tsc -p sdk/js`"
    );

    let types = tempfile::tempdir().unwrap();
    let generated = tool("node", &sdk)
        .arg("generate-types.mjs")
        .arg(types.path())
        .output()
        .unwrap();
    assert_ok(&generated, "node sdk/js/generate-types.mjs");
    let mut files = 0;
    for entry in walk(&sdk.join("types")) {
        let relative = entry.strip_prefix(sdk.join("types")).unwrap();
        assert_eq!(
            std::fs::read_to_string(types.path().join(relative)).unwrap(),
            std::fs::read_to_string(&entry).unwrap(),
            "sdk/js/types/{} is stale: run `node sdk/js/generate-types.mjs`",
            relative.display()
        );
        files += 1;
    }
    assert_eq!(files, walk(types.path()).len());
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}
