//! What a careless or hostile user could break, each shown not to break: two runs on one input,
//! a stopped run that abandoned events, a closed standard output, a guest that floods the logs
//! and returns a huge forged error, memory-hungry events against the memory budget, a foreign
//! file in the compiled-component cache, and an admin endpoint under idle connections and at the
//! file-descriptor limit.

use fnmill_testkit::common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{
    FileRoute, count_lines, fnmill, guest, headers, read_lines, wait_until, write_events,
};
use serde_json::json;

const DEADLINE: Duration = Duration::from_secs(60);

/// A running `fnmill run` whose stderr is collected as it comes.
struct Running {
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Running {
    fn start(mut cmd: Command) -> Self {
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting fnmill");
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        Self { child, log }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    fn wait(&mut self) -> i32 {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            assert!(
                Instant::now() < deadline,
                "fnmill did not stop:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn term(&self) {
        // SAFETY: signalling a child process this test started and still owns.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
    }
}

fn run_cmd(config: &Path) -> Command {
    let mut cmd = fnmill();
    cmd.args(["run", "-c"]).arg(config);
    cmd
}

/// A second `fnmill run` on the input another one is reading refuses to start; every event is
/// output exactly once.
#[test]
fn a_second_run_on_the_same_input_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut route = FileRoute::new(dir.path(), guest("echo"));
    route.route_extra = "max_in_flight = 4".into();
    let events = 20_000;
    write_events(
        &route.input(),
        (0..events).map(|i| {
            (
                format!("e{i}"),
                Some(format!("k{}", i % 7)),
                json!({ "i": i }),
            )
        }),
    );
    let config = route.write();
    // Followed, so the first run is still there when the second starts.
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("path = \"in.jsonl\"", "path = \"in.jsonl\"\nfollow = true");
    std::fs::write(&config, text).unwrap();
    let mut first = Running::start(run_cmd(&config));
    wait_until(DEADLINE, "the first run to start", || {
        first.log().contains("Route started")
    });
    let second = fnmill().args(["run", "-c"]).arg(&config).output().unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("another fnmill is already reading"),
        "{stderr}"
    );
    assert!(!stderr.contains("Route started"), "{stderr}");
    wait_until(DEADLINE, "every event out", || {
        count_lines(&route.output()) >= events
    });
    first.term();
    assert_eq!(first.wait(), 0, "{}", first.log());
    let ids: Vec<String> = read_lines(&route.output())
        .iter()
        .map(|l| l["payload"]["i"].to_string())
        .collect();
    let unique: std::collections::BTreeSet<_> = ids.iter().collect();
    assert_eq!(ids.len(), events, "duplicates or losses");
    assert_eq!(unique.len(), events);
}

/// A run stopped by SIGTERM with events it could not finish exits 3 and counts them.
#[test]
fn a_run_cut_short_with_abandoned_events_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let mut route = FileRoute::new(dir.path(), guest("fatal"));
    // No dead-letter destination: the first event of the key holds its lane.
    route.dead_letter = false;
    route.runtime_extra = "shutdown_grace = \"2s\"".into();
    write_events(
        &route.input(),
        (0..5).map(|i| {
            (
                format!("e{i}"),
                Some("one-key".to_string()),
                json!({ "i": i }),
            )
        }),
    );
    let mut run = Running::start(run_cmd(&route.write()));
    wait_until(DEADLINE, "the lane to stop", || {
        run.log().contains("its lane stops until shutdown")
    });
    run.term();
    let code = run.wait();
    let log = run.log();
    assert_eq!(code, 3, "{log}");
    assert!(log.contains("abandoned=5"), "{log}");
    assert_eq!(count_lines(&route.output()), 0);
}

/// `fnmill run … | head -n 2`: once the reader is gone the run stops, non-zero, instead of
/// retrying forever, and the events it could not write are not checkpointed.
#[test]
fn a_closed_standard_output_stops_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let mut route = FileRoute::new(dir.path(), guest("echo"));
    route.route_extra = "max_in_flight = 8".into();
    write_events(
        &route.input(),
        (0..50_000).map(|i| (format!("e{i}"), None, json!({ "i": i }))),
    );
    let config = route.write();
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("path = \"out.jsonl\"", "path = \"-\"");
    std::fs::write(&config, text).unwrap();
    let mut child = run_cmd(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read two lines, then close the pipe, as `head -n 2` does.
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    for _ in 0..2 {
        line.clear();
        stdout.read_line(&mut line).unwrap();
        assert!(line.contains("payload"), "{line}");
    }
    drop(stdout);
    let deadline = Instant::now() + DEADLINE;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "fnmill kept running after EPIPE");
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("is gone"), "{stderr}");
    let checkpoint = dir.path().join("in.jsonl.checkpoint");
    let line: u64 = std::fs::read_to_string(&checkpoint)
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v["line"].as_u64())
        .unwrap_or(0);
    assert!(line < 50_000, "the whole input was checkpointed: {line}");
}

/// A guest that writes 10,000 lines, forges a log line with an escape code and fails with a
/// 10 MiB message: its log output stops at its limit (the rest counted in one warning), the
/// forged line stays on the guest's line, and the dead letter's message is cut and escaped.
#[test]
fn a_flooding_guest_is_held_to_its_log_budget_and_its_error_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let mut route = FileRoute::new(dir.path(), guest("chatty"));
    route.function_extra = "max_log_lines = 50\nmax_log_bytes = \"1MiB\"".into();
    write_events(&route.input(), [("e1".to_string(), None, json!({}))]);
    let out = common::run_to_end(&route.write());
    let log = String::from_utf8_lossy(&out.stderr);
    let guest_lines = log.lines().filter(|l| l.contains("function=f")).count();
    assert!(guest_lines <= 52, "{guest_lines} guest lines logged");
    assert!(
        log.contains("Guest log output over its limit") && log.contains("dropped_lines="),
        "{log}"
    );
    assert!(
        !log.lines()
            .any(|l| l.starts_with("2026-01-01T00:00:00Z ERROR forged")),
        "{log}"
    );
    assert!(!log.contains('\u{1b}'), "a raw escape code reached the log");
    assert!(log.len() < 1 << 20, "{} bytes of log", log.len());

    let dead = read_lines(&route.dead());
    assert_eq!(dead.len(), 1);
    let message = headers(&dead[0])["fnmill.error.message"].clone();
    assert!(
        message.starts_with("chatty error\\nsecond line \\u{1b}[2J"),
        "{}",
        &message[..80]
    );
    assert!(
        message.len() <= fnmill::host::MAX_MESSAGE + 64,
        "{}",
        message.len()
    );
    assert!(
        message.ends_with("more bytes)"),
        "{}",
        &message[message.len() - 40..]
    );
}

/// Peak resident memory of a finished child, from /proc before it is reaped.
fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// 2,000 memory-hungry events at `memory = "32MiB"` with a 256 MiB budget: all are handled (each
/// fails as `memory` and is dead-lettered), and the process never holds much more than the
/// budget; `check` warns that `max_instances` × `memory` exceeds the budget.
#[test]
fn memory_hungry_events_stay_within_the_memory_budget() {
    let dir = tempfile::tempdir().unwrap();
    let mut route = FileRoute::new(dir.path(), guest("memhog"));
    route.function_extra = "memory = \"32MiB\"".into();
    route.runtime_extra = "memory_budget = \"256MiB\"\nmax_instances = 200".into();
    let events = 2_000;
    write_events(
        &route.input(),
        (0..events).map(|i| (format!("e{i}"), None, json!({ "i": i }))),
    );
    let config = route.write();
    let check = fnmill()
        .args(["check", "-c"])
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&check.stderr);
    assert!(check.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning: runtime.max_instances") && stderr.contains("memory_budget"),
        "{stderr}"
    );

    let mut child = run_cmd(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut peak = 0;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        peak = peak.max(peak_rss_kib(pid));
        if child.try_wait().unwrap().is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "the run did not finish");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(count_lines(&route.dead()), events);
    // The budget plus the process's own memory (runtimes, compiled code, buffers).
    assert!(peak < 256 * 1024 + 300 * 1024, "peak resident {peak} KiB");
}

/// A compiled component in the cache that someone else could have written is not loaded.
#[test]
fn a_foreign_file_in_the_component_cache_is_not_loaded() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let route = FileRoute::new(dir.path(), guest("echo"));
    write_events(&route.input(), [("e1".to_string(), None, json!({}))]);
    let config = route.write();
    let with_cache = |cmd: &mut Command| {
        cmd.env("XDG_CACHE_HOME", &cache);
    };
    let mut check = fnmill();
    with_cache(&mut check);
    assert!(
        check
            .args(["check", "-c"])
            .arg(&config)
            .status()
            .unwrap()
            .success()
    );
    let fnmill_cache = cache.join("fnmill");
    let mode = std::fs::metadata(&fnmill_cache)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o700, "the cache folder is private");
    let compiled: Vec<_> = std::fs::read_dir(&fnmill_cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .collect();
    assert_eq!(compiled.len(), 1);
    // Anyone could have replaced it now.
    std::fs::set_permissions(&compiled[0], std::fs::Permissions::from_mode(0o666)).unwrap();
    let mut run = run_cmd(&config);
    with_cache(&mut run);
    let out = run.output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(
        log.contains("Not loading a compiled component from the cache")
            && log.contains("writable by others"),
        "{log}"
    );
    assert_eq!(count_lines(&route.output()), 1);
}

/// `fnmill invoke COMPONENT` on one event with `cache` as the cache; the `functions` and
/// `from_cache` of its "Compiled a component" line (logged at `debug` for a quick compile).
fn compiled_functions(component: &Path, cache: &Path) -> (u64, u64) {
    let event = cache.with_file_name("event.json");
    std::fs::write(&event, json!({"id": "e1", "payload": {"n": 1}}).to_string()).unwrap();
    let out = fnmill()
        .arg("invoke")
        .arg(component)
        .arg("--event")
        .arg(&event)
        .env("XDG_CACHE_HOME", cache)
        // A compile under a second is logged at `debug`.
        .env("RUST_LOG", "info,fnmill::host::function_cache=debug")
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    let line = log
        .lines()
        .find(|l| l.contains("Compiled a component"))
        .unwrap_or_else(|| panic!("no compile logged:\n{log}"));
    let field = |name: &str| -> u64 {
        let start = line.find(&format!(" {name}=")).unwrap() + name.len() + 2;
        let digits: String = line[start..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().unwrap()
    };
    (field("functions"), field("from_cache"))
}

/// A rebuilt component is a new file to the component cache, yet what it shares with an
/// earlier build is not compiled again: each of its functions comes from the per-function
/// cache. (Here the rebuild differs by a custom section only, so every function is shared;
/// wasmtime's translation of a few functions is not the same from one process to the next, so
/// those few are compiled again, and most come from the cache, not all.)
#[test]
fn a_rebuilt_component_compiles_only_functions_it_has_not_seen() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let original = guest("echo");
    let mut bytes = std::fs::read(&original).unwrap();
    let (name, payload) = (&b"fnmill-test"[..], &b"rebuilt"[..]);
    // A custom section (id 0): its size, then its name's, then the name and the payload.
    bytes.extend([0, (1 + name.len() + payload.len()) as u8, name.len() as u8]);
    bytes.extend(name);
    bytes.extend(payload);
    let rebuilt = dir.path().join("echo-rebuilt.wasm");
    std::fs::write(&rebuilt, bytes).unwrap();

    let (functions, from_cache) = compiled_functions(&original, &cache);
    assert!(
        functions > 0 && from_cache < functions,
        "{functions} {from_cache}"
    );
    let (again, again_from_cache) = compiled_functions(&rebuilt, &cache);
    assert_eq!(again, functions);
    assert!(
        again_from_cache > from_cache && again_from_cache * 2 >= functions,
        "{again_from_cache} of {functions} from the cache, {from_cache} the first time"
    );
    let entries = std::fs::read_dir(cache.join("fnmill").join("functions"))
        .unwrap()
        .count();
    assert!(entries > 0);
}

fn get(addr: &str, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(body)
}

/// Idle connections and a file-descriptor limit do not take the admin endpoint down: it keeps
/// answering, closes clients that send nothing, and backs off (with few warnings) when accept
/// fails.
#[test]
fn the_admin_endpoint_survives_idle_clients_and_the_descriptor_limit() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut route = FileRoute::new(dir.path(), guest("echo"));
    route.runtime_extra = format!("[admin]\nlisten = \"{addr}\"");
    // Followed, so the run keeps going until the test stops it.
    let config = route.write();
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("path = \"in.jsonl\"", "path = \"in.jsonl\"\nfollow = true");
    std::fs::write(&config, text).unwrap();
    std::fs::write(route.input(), "").unwrap();
    let mut cmd = run_cmd(&config);
    // SAFETY: setrlimit in the child between fork and exec, async-signal-safe.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: 128,
                rlim_max: 128,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut run = Running::start(cmd);
    wait_until(DEADLINE, "the admin endpoint", || {
        get(&addr, "/healthz").is_some_and(|b| b.contains("200 OK"))
    });

    // More idle connections than the process has descriptors left.
    let idle: Vec<TcpStream> = (0..200)
        .filter_map(|_| TcpStream::connect(&addr).ok())
        .collect();
    assert!(idle.len() > 100, "{} connections", idle.len());
    std::thread::sleep(Duration::from_secs(3)); // the scenario: three seconds of overload
    let log = run.log();
    let warnings = log.matches("cannot accept connections").count();
    assert!(warnings <= 3, "{warnings} accept warnings:\n{log}");
    assert!(log.len() < 200_000, "{} bytes of log", log.len());
    drop(idle);
    // Freed: it answers again (the idle ones it held are closed after the header timeout).
    wait_until(
        Duration::from_secs(30),
        "the endpoint to answer again",
        || get(&addr, "/healthz").is_some_and(|b| b.contains("200 OK")),
    );
    run.term();
    assert_eq!(run.wait(), 0, "{}", run.log());
}
