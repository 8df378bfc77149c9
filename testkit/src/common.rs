//! Shared helpers of the integration tests: building the test guests from source, writing
//! configs and event files, running the `fnmill` binary, waiting on conditions with deadlines.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

/// The repository's root (this crate lives in `testkit/`).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit/ is inside the repository")
        .to_path_buf()
}

/// The `fnmill` binary cargo built for this test or bench run: cargo builds a package's binaries
/// before its integration tests and benches, next to the `deps/` folder they run from.
pub fn fnmill_binary() -> PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY
        .get_or_init(|| {
            let exe = std::env::current_exe().expect("the test binary's path");
            let profile_dir = exe
                .parent()
                .and_then(Path::parent)
                .expect("tests and benches run from target/<profile>/deps");
            let binary = profile_dir.join(format!("fnmill{}", std::env::consts::EXE_SUFFIX));
            assert!(
                binary.is_file(),
                "no fnmill binary at {} (run through cargo test or cargo bench)",
                binary.display()
            );
            binary
        })
        .clone()
}

/// The `fnmill` binary cargo built for this test run.
pub fn fnmill() -> Command {
    let mut cmd = Command::new(fnmill_binary());
    // One compiled-component cache for the whole test run, so each component compiles once.
    cmd.env("XDG_CACHE_HOME", root().join("target").join("test-cache"));
    // `FNMILL_TEST_LOG` widens what a failing test prints of fnmill's log, e.g.
    // `info,lapin=debug` to chase a broker client's state.
    cmd.env(
        "RUST_LOG",
        std::env::var("FNMILL_TEST_LOG").unwrap_or_else(|_| "info".into()),
    );
    cmd
}

/// The command a run of fnmill printed on the line after the first one containing `marker`
/// (`To resume:`, `To try them again:`, …), trimmed; panics with the whole log if there is none.
pub fn printed_command(log: &str, marker: &str) -> String {
    log.lines()
        .skip_while(|l| !l.contains(marker))
        .nth(1)
        .unwrap_or_else(|| panic!("no command after `{marker}`:\n{log}"))
        .trim()
        .to_string()
}

/// How many records a `publish` or `replay` summary says it sent again after Kafka reported them
/// delivered without an offset: each may be in the topic twice.
pub fn resent(log: &str) -> u64 {
    const MARK: &str = " record(s) sent again";
    log.lines()
        .filter_map(|l| l.find(MARK).map(|at| &l[..at]))
        .filter_map(|head| head.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Runs, with `sh`, a command line fnmill printed (`fnmill …`), with the `fnmill` cargo built
/// for this run first on `PATH`.
pub fn run_printed(command: &str) -> Output {
    let bin_dir = fnmill_binary().parent().unwrap().to_path_buf();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    Command::new("sh")
        .args(["-c", command])
        .env("PATH", path)
        .output()
        .unwrap()
}

/// The test guests that exercise WASI itself (stdio, the WASI clocks, the filesystem and sockets
/// a function is denied): built for `wasm32-wasip2`. The others are built the way `fnmill build`
/// builds a Rust function: for `wasm32-unknown-unknown`, then made a component that imports only
/// the fnmill interfaces it calls.
const WASI_GUESTS: [&str; 3] = ["capability", "chatty", "sleeper"];

/// Runs `cargo build --release --target <target> <packages>` in the cargo workspace `dir` and
/// returns its release output directory. Once per test process per target (cargo's own lock
/// makes concurrent test binaries wait for each other).
fn build_workspace(dir: &Path, target: &str, packages: &[&str]) -> PathBuf {
    let status = Command::new(env!("CARGO"))
        .args(["build", "--release", "--quiet", "--target", target])
        .args(packages)
        .current_dir(dir)
        // Not the outer build's target dir and flags: these are separate workspaces.
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .status()
        .unwrap_or_else(|e| panic!("running cargo for {}: {e}", dir.display()));
    assert!(
        status.success(),
        "building the guests in {} for {target} failed",
        dir.display()
    );
    dir.join("target").join(target).join("release")
}

/// Makes a component of every core module in `modules` (what `fnmill build` does after cargo)
/// into `out`, redoing only those whose module changed. Written to a temporary file and renamed,
/// so a test binary running at the same time never reads half a component.
fn componentize_all(modules: &Path, out: &Path) {
    std::fs::create_dir_all(out).unwrap();
    for entry in std::fs::read_dir(modules).unwrap() {
        let module = entry.unwrap().path();
        if module.extension() != Some(std::ffi::OsStr::new("wasm")) {
            continue;
        }
        let component = out.join(module.file_name().unwrap());
        let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        if modified(&component) >= modified(&module) {
            continue;
        }
        let bytes = std::fs::read(&module).unwrap();
        let encoded = fnmill::build::componentize(&bytes)
            .unwrap_or_else(|e| panic!("making a component of {}: {e:#}", module.display()));
        let partial = out.join(format!(
            ".{}.{}",
            module.file_name().unwrap().to_string_lossy(),
            std::process::id()
        ));
        std::fs::write(&partial, encoded).unwrap();
        std::fs::rename(&partial, &component).unwrap();
    }
}

/// Path of a test guest component, built from `tests/guests/<name>` for this run.
pub fn guest(name: &str) -> PathBuf {
    static PLAIN: OnceLock<PathBuf> = OnceLock::new();
    let workspace = root().join("tests").join("guests");
    let dir = if WASI_GUESTS.contains(&name) {
        wasi_guests()
    } else {
        PLAIN.get_or_init(|| {
            let mut packages = vec!["--workspace"];
            packages.extend(WASI_GUESTS.iter().flat_map(|g| ["--exclude", g]));
            let modules = build_workspace(&workspace, "wasm32-unknown-unknown", &packages);
            let components = workspace.join("target").join("components");
            componentize_all(&modules, &components);
            components
        })
    };
    let path = dir.join(format!("{}.wasm", name.replace('-', "_")));
    assert!(path.is_file(), "no guest at {}", path.display());
    path
}

/// The `echo` guest built for `wasm32-wasip2` as well, for the `host` bench to compare.
const WASI_TOO: [&str; 1] = ["echo"];

/// Builds the `wasm32-wasip2` guests (once per process) and returns their directory.
fn wasi_guests() -> &'static Path {
    static WASI: OnceLock<PathBuf> = OnceLock::new();
    WASI.get_or_init(|| {
        let packages: Vec<&str> = WASI_GUESTS
            .iter()
            .chain(&WASI_TOO)
            .flat_map(|g| ["-p", g])
            .collect();
        build_workspace(
            &root().join("tests").join("guests"),
            "wasm32-wasip2",
            &packages,
        )
    })
}

/// A test guest as `fnmill build --wasi` would build it: for `wasm32-wasip2` (the WASI guests,
/// and `echo`).
pub fn wasi_guest(name: &str) -> PathBuf {
    assert!(
        WASI_GUESTS.contains(&name) || WASI_TOO.contains(&name),
        "guest {name} is not built for wasm32-wasip2"
    );
    let path = wasi_guests().join(format!("{}.wasm", name.replace('-', "_")));
    assert!(path.is_file(), "no guest at {}", path.display());
    path
}

/// A host for tests that load guests themselves: 16 instances of up to 32 MiB, fuel metering
/// as asked, and the test run's shared compiled-component cache.
pub fn test_host(fuel: bool) -> fnmill::host::Host {
    fnmill::host::Host::new(&fnmill::host::HostConfig {
        max_instances: 16,
        max_memory_bytes: 32 * 1024 * 1024,
        memory_budget: 1 << 30,
        fuel,
        cache_dir: Some(root().join("target").join("test-cache").join("fnmill")),
        perf_map: false,
    })
    .unwrap()
}

/// A test guest loaded on a host of its own, for up to `max_instances` concurrent events, with
/// limits generous enough for any test or bench that is not about limits.
pub fn load_guest(name: &str, max_instances: u32) -> fnmill::host::Function {
    load_guest_with(name, max_instances, fnmill::host::Isolation::Event)
}

/// [`load_guest`] with the given isolation.
pub fn load_guest_with(
    name: &str,
    max_instances: u32,
    isolation: fnmill::host::Isolation,
) -> fnmill::host::Function {
    use fnmill::host::{FunctionSpec, Host, HostConfig, Limits};
    let host = Host::new(&HostConfig {
        max_instances,
        max_memory_bytes: 32 << 20,
        memory_budget: u64::from(max_instances) * (32 << 20),
        fuel: false,
        cache_dir: None,
        perf_map: false,
    })
    .unwrap();
    host.load(FunctionSpec {
        name: name.into(),
        component: guest(name),
        limits: Limits {
            memory_bytes: 32 << 20,
            timeout: Duration::from_secs(10),
            fuel: None,
            max_outputs: 100,
            max_output_bytes: 1 << 20,
            max_log_bytes: 64 * 1024,
            max_log_lines: 200,
        },
        config: Default::default(),
        isolation,
    })
    .unwrap_or_else(|e| panic!("loading guest {name}: {e}"))
}

/// Path of the quickstart example's component, built for this run.
pub fn quickstart_component() -> PathBuf {
    examples_component("quickstart_orders")
}

/// Path of a Rust example function's component (`examples/`, built once per test process).
pub fn examples_component(name: &str) -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| build_workspace(&root().join("examples"), "wasm32-wasip2", &[]));
    dir.join(format!("{name}.wasm"))
}

/// `PATH` with the JavaScript/Python tools of `scripts/polyglot-tools.sh` first, which installs
/// them (once per process; it does nothing when they are already there).
pub fn polyglot_path() -> std::ffi::OsString {
    static PATH: OnceLock<std::ffi::OsString> = OnceLock::new();
    PATH.get_or_init(|| {
        let script = root().join("scripts").join("polyglot-tools.sh");
        let out = Command::new(&script)
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
        assert!(
            out.status.success(),
            "{} failed:\n{}{}",
            script.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let env = Command::new(&script).arg("env").output().unwrap();
        let line = String::from_utf8(env.stdout).unwrap();
        // `export PATH="<bin>:$PATH"`
        let bin = line
            .trim()
            .strip_prefix("export PATH=\"")
            .and_then(|l| l.strip_suffix(":$PATH\""))
            .unwrap_or_else(|| panic!("unexpected polyglot-tools.sh env output: {line}"));
        let mut paths = vec![PathBuf::from(bin)];
        paths.extend(std::env::split_paths(
            &std::env::var_os("PATH").unwrap_or_default(),
        ));
        std::env::join_paths(paths).unwrap()
    })
    .clone()
}

/// `fnmill build <dir> --out <out>` with the polyglot tools on `PATH`, holding a lock on the
/// project so that test processes building the same project wait for each other.
pub fn fnmill_build(dir: &Path, out: &Path) -> Output {
    use std::os::fd::AsRawFd;
    let project = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let lock_name = project.to_string_lossy().replace(['/', '.'], "_");
    let lock_path = root()
        .join("target")
        .join("fnmill-build-locks")
        .join(lock_name);
    std::fs::create_dir_all(lock_path.parent().unwrap()).unwrap();
    let lock = std::fs::File::create(&lock_path).unwrap();
    // SAFETY: flock on a file descriptor this function owns; released when `lock` is dropped.
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
    let output = fnmill()
        .arg("build")
        .arg(dir)
        .arg("--out")
        .arg(out)
        .env("PATH", polyglot_path())
        // Not the outer build's target dir and flags: function projects are their own workspaces.
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .output()
        .expect("running fnmill build");
    drop(lock);
    output
}

/// Path of a JavaScript or Python test guest component, built from `tests/polyglot-guests/<name>`
/// with `fnmill build` once per test process.
pub fn polyglot_guest(name: &str) -> PathBuf {
    static BUILT: OncePerName<PathBuf> = std::sync::Mutex::new(BTreeMap::new());
    once_per_name(&BUILT, name, || build_polyglot_guest(name))
}

/// Values made once per test process per name; each name's maker runs at most once, while
/// other names' run at the same time.
type OncePerName<T> = std::sync::Mutex<BTreeMap<String, std::sync::Arc<OnceLock<T>>>>;

fn once_per_name<T: Clone>(made: &OncePerName<T>, name: &str, make: impl FnOnce() -> T) -> T {
    let slot = made
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(name.to_string())
        .or_default()
        .clone();
    slot.get_or_init(make).clone()
}

/// Loads `language`'s (`"js"` or `"python"`) faults guest once per test process, before any
/// other component of that language: its runtime's functions are then compiled once into the
/// run's shared cache (see [`fnmill`]) and every later component of the language takes them
/// from there. Tests that start together would otherwise each compile the whole runtime.
pub fn warm_compile_cache(language: &str) {
    static WARM: OncePerName<()> = std::sync::Mutex::new(BTreeMap::new());
    once_per_name(&WARM, language, || {
        let guest = polyglot_guest(&format!("{language}-faults"));
        let event = root()
            .join("target")
            .join("polyglot-guests")
            .join(format!("warm-{language}.json"));
        std::fs::write(&event, r#"{"id": "warm", "payload_text": "ok"}"#).unwrap();
        let out = fnmill()
            .arg("invoke")
            .arg(&guest)
            .arg("--event")
            .arg(&event)
            .output()
            .expect("running fnmill invoke");
        assert!(
            out.status.success(),
            "fnmill invoke {} failed:\n{}",
            guest.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    });
}

fn build_polyglot_guest(name: &str) -> PathBuf {
    let out = root()
        .join("target")
        .join("polyglot-guests")
        .join(format!("{name}.wasm"));
    let dir = root().join("tests").join("polyglot-guests").join(name);
    let output = fnmill_build(&dir, &out);
    assert!(
        output.status.success(),
        "fnmill build {} failed:\n{}{}",
        dir.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    out
}

/// Polls `condition` every 20 ms until it holds; panics after `timeout`, naming `what`.
pub async fn wait_for(timeout: Duration, what: &str, condition: impl FnMut() -> bool) {
    assert!(
        holds_within(timeout, condition).await,
        "timed out after {timeout:?} waiting for {what}"
    );
}

/// Polls `condition` every 20 ms until it holds (true) or `timeout` passes (false).
pub(crate) async fn holds_within(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while !condition() {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

/// Polls `condition` every 20 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Writes events as JSON Lines: `(id, key, payload JSON)`.
pub fn write_events(
    path: &Path,
    events: impl IntoIterator<Item = (String, Option<String>, Value)>,
) {
    let mut text = String::new();
    for (id, key, payload) in events {
        let mut line = serde_json::json!({ "id": id, "payload": payload });
        if let Some(key) = key {
            line["key"] = Value::String(key);
        }
        text.push_str(&line.to_string());
        text.push('\n');
    }
    std::fs::write(path, text).unwrap();
}

/// Reads a JSON Lines file; a missing file reads as empty.
pub fn read_lines(path: &Path) -> Vec<Value> {
    match std::fs::read_to_string(path) {
        Ok(text) => text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad line {l:?}: {e}")))
            .collect(),
        Err(_) => vec![],
    }
}

/// Number of complete lines in a file; a missing file counts 0.
pub fn count_lines(path: &Path) -> usize {
    std::fs::read(path)
        .map(|b| b.iter().filter(|c| **c == b'\n').count())
        .unwrap_or(0)
}

/// Headers of a JSON Lines record as a map (the `headers` object form).
pub fn headers(line: &Value) -> BTreeMap<String, String> {
    line.get("headers")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// A file route config: `input` through `component` into `out.jsonl`, dead letters into
/// `dead.jsonl`, with extra TOML for the function section and the route.
pub struct FileRoute {
    pub dir: PathBuf,
    pub component: PathBuf,
    pub function_extra: String,
    pub route_extra: String,
    pub dead_letter: bool,
    pub runtime_extra: String,
}

impl FileRoute {
    pub fn new(dir: &Path, component: PathBuf) -> Self {
        Self {
            dir: dir.to_path_buf(),
            component,
            function_extra: String::new(),
            route_extra: String::new(),
            dead_letter: true,
            runtime_extra: String::new(),
        }
    }

    pub fn input(&self) -> PathBuf {
        self.dir.join("in.jsonl")
    }

    pub fn output(&self) -> PathBuf {
        self.dir.join("out.jsonl")
    }

    pub fn dead(&self) -> PathBuf {
        self.dir.join("dead.jsonl")
    }

    /// Writes `fnmill.toml` and returns its path.
    pub fn write(&self) -> PathBuf {
        let dead = if self.dead_letter {
            "dead_letter = \"dead\"\n"
        } else {
            ""
        };
        let text = format!(
            r#"
[runtime]
compute_threads = 2
{runtime}

[sources.in]
kind = "file"
path = "in.jsonl"

[sinks.out]
kind = "file"
path = "out.jsonl"

[sinks.dead]
kind = "file"
path = "dead.jsonl"

[functions.f]
component = "{component}"
{function}

[[routes]]
source = "in"
function = "f"
destinations = {{ out = "out" }}
{dead}{route}
"#,
            runtime = self.runtime_extra,
            component = self.component.display(),
            function = self.function_extra,
            route = self.route_extra,
        );
        let path = self.dir.join("fnmill.toml");
        std::fs::write(&path, text).unwrap();
        path
    }
}

/// Runs `fnmill run -c config` to completion (the file source ends at end of file).
pub fn run_to_end(config: &Path) -> Output {
    let out = fnmill()
        .args(["run", "-c"])
        .arg(config)
        .output()
        .expect("running fnmill");
    assert!(
        out.status.success(),
        "fnmill run failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}
