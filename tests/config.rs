//! `fnmill check` refuses every kind of invalid configuration before anything starts, with one
//! clear line naming the key; a valid configuration passes, environment overrides included.

use fnmill_testkit::common;

use std::path::Path;
use std::process::Command;

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

/// `fnmill check` of `text` (with `COMPONENT` the echo guest) written to `dir`, with `env`.
fn check_command(dir: &Path, text: &str, env: &[(&str, &str)]) -> Command {
    std::fs::write(dir.join("in.jsonl"), "").unwrap();
    let text = text.replace("COMPONENT", &guest("echo").display().to_string());
    let path = dir.join("fnmill.toml");
    std::fs::write(&path, text).unwrap();
    let mut cmd = fnmill();
    cmd.arg("check").arg("-c").arg(&path);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

fn check(dir: &Path, text: &str, env: &[(&str, &str)]) -> (i32, String, String) {
    let out = check_command(dir, text, env).output().unwrap();
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

/// A valid config with a source, a sink and a route of each kind the case needs.
fn with(extra: &str) -> String {
    format!("{VALID}\n{extra}\n")
}

/// Every rule a connector or section enforces is found by `fnmill check` (one line naming the
/// key, exit 2) and by `fnmill run`, which exits 2 the same way before starting anything: no
/// output file, no checkpoint, no route.
#[test]
fn check_and_run_refuse_the_same_configs_before_anything_starts() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    let kafka_route =
        "[[routes]]\nsource = \"k\"\nfunction = \"f\"\ndestinations = { out = \"out\" }\n";
    let kafka = |props: &str| {
        format!(
            "[sources.k]\nkind = \"kafka\"\nbrokers = \"127.0.0.1:1\"\ngroup = \"g\"\ntopics = [\"t\"]\n{props}\n{kafka_route}"
        )
    };
    let amqp_route =
        "[[routes]]\nsource = \"q\"\nfunction = \"f\"\ndestinations = { out = \"out\" }\n";
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "an unsafe producer property",
            with(
                "[sinks.k]\nkind = \"kafka\"\nbrokers = \"127.0.0.1:1\"\ntopic = \"t\"\nproperties = { acks = 0 }\n",
            ),
            "sinks.k.properties.\"acks\": cannot be `0`",
        ),
        (
            "offsets stored by librdkafka",
            with(&kafka(
                "properties = { \"enable.auto.offset.store\" = true }",
            )),
            "sources.k.properties.\"enable.auto.offset.store\"",
        ),
        (
            "an unknown librdkafka property",
            with(&kafka("properties = { \"linger.msec\" = 5 }")),
            "sources.k.properties.\"linger.msec\"",
        ),
        (
            "a topic pattern that is not a regex",
            with(&kafka("").replace("topics = [\"t\"]", "topics = [\"^orders.(\"]")),
            "sources.k.topics[0]: `^orders.(` starts with ^ but is not a regular expression",
        ),
        (
            "empty brokers",
            with(&kafka("").replace("brokers = \"127.0.0.1:1\"", "brokers = \"\"")),
            "sources.k.brokers: must not be empty",
        ),
        (
            "an empty topic",
            with("[sinks.k]\nkind = \"kafka\"\nbrokers = \"127.0.0.1:1\"\ntopic = \"\"\n"),
            "sinks.k.topic: must not be empty",
        ),
        (
            "an empty queue",
            with(&format!(
                "[sources.q]\nkind = \"amqp\"\nqueue = \"\"\n{amqp_route}"
            )),
            "sources.q.queue: must not be empty",
        ),
        (
            "prefetch 0",
            with(&format!(
                "[sources.q]\nkind = \"amqp\"\nqueue = \"q\"\nprefetch = 0\n{amqp_route}"
            )),
            "sources.q.prefetch: must be at least 1",
        ),
        (
            "channels 0",
            with("[sinks.r]\nkind = \"amqp\"\nchannels = 0\n"),
            "sinks.r.channels: must be at least 1",
        ),
        (
            "an empty input path",
            VALID.replace("path = \"in.jsonl\"", "path = \"\""),
            "sources.in.path: must not be empty",
        ),
        (
            "an empty checkpoint",
            VALID.replace(
                "path = \"in.jsonl\"",
                "path = \"in.jsonl\"\ncheckpoint = \"\"",
            ),
            "sources.in.checkpoint: must not be empty",
        ),
        (
            "a checkpoint interval of zero",
            VALID.replace(
                "path = \"in.jsonl\"",
                "path = \"in.jsonl\"\ncheckpoint_interval = \"0s\"",
            ),
            "sources.in.checkpoint_interval: must be greater than zero",
        ),
        (
            "stdin with a checkpoint",
            VALID.replace("path = \"in.jsonl\"", "path = \"-\"\ncheckpoint = \"x\""),
            "sources.in.checkpoint: cannot be used with `path = \"-\"`",
        ),
        (
            "stdin followed",
            VALID.replace("path = \"in.jsonl\"", "path = \"-\"\nfollow = true"),
            "sources.in.follow: cannot be used with `path = \"-\"`",
        ),
        (
            "a missing input",
            VALID.replace("path = \"in.jsonl\"", "path = \"nowhere.jsonl\""),
            "sources.in.path: ",
        ),
        (
            "a directory as input",
            VALID.replace("path = \"in.jsonl\"", "path = \".\""),
            "sources.in.path: ",
        ),
        (
            "an output that cannot be created",
            VALID.replace("path = \"out.jsonl\"", "path = \"in.jsonl/out.jsonl\""),
            "sinks.out.path: ",
        ),
        (
            "an output that is the input",
            VALID.replace("path = \"out.jsonl\"", "path = \"./in.jsonl\""),
            "routes[0].destinations.out: sink `out` writes",
        ),
        (
            "an empty PostgreSQL url",
            with("[data_sources.db]\nkind = \"postgres\"\nurl = \"\"\n"),
            "data_sources.db.url: is empty",
        ),
        (
            "an invalid PostgreSQL url",
            with(
                "[data_sources.db]\nkind = \"postgres\"\nurl = \"postgres://u:hunter2@h:port/db\"\n",
            ),
            "data_sources.db.url: is not a valid PostgreSQL URL",
        ),
        (
            "an invalid Redis url",
            with("[data_sources.kv]\nkind = \"redis\"\nurl = \"mysql://u:hunter2@h/0\"\n"),
            "data_sources.kv.url: is not a valid Redis URL",
        ),
        (
            "a zero data-source timeout",
            with(
                "[data_sources.db]\nkind = \"postgres\"\nurl = \"postgres://127.0.0.1/db\"\nwait_timeout = \"0s\"\n",
            ),
            "data_sources.db.wait_timeout: must be greater than zero",
        ),
        (
            "an answer_timeout within statement_timeout",
            with(
                "[data_sources.db]\nkind = \"postgres\"\nurl = \"postgres://127.0.0.1/db\"\nstatement_timeout = \"30s\"\nanswer_timeout = \"10s\"\n",
            ),
            "data_sources.db.answer_timeout: must be longer than statement_timeout (30s)",
        ),
        (
            "an invalid log filter",
            with("[telemetry]\nlog = \"info,[=\"\n"),
            "telemetry.log: ",
        ),
        (
            "an admin port in use",
            with(&format!("[admin]\nlisten = \"{taken}\"\n")),
            "admin.listen: cannot listen on",
        ),
        (
            "a misspelt destination key",
            VALID.replace(
                "destinations = { out = \"out\" }",
                "destinations = { out = { sink = \"out\", tagret = \"x\" } }",
            ),
            "unknown field `tagret`",
        ),
        (
            "a backoff near the largest duration",
            format!(
                "{VALID}retry = {{ initial_backoff = \"500000000years\", max_backoff = \"500000000years\" }}\n"
            ),
            "routes[0].retry.initial_backoff: must be at most 24h",
        ),
        (
            "more memory than a wasm guest can address",
            VALID.replace("memory = \"32MiB\"", "memory = \"1TiB\""),
            "functions.f.memory: must be at most 4GiB",
        ),
    ];
    let mut wrong: Vec<String> = Vec::new();
    for (what, text, expected) in cases {
        let dir = tempfile::tempdir().unwrap();
        let (code, _, stderr) = check(dir.path(), &text, &[]);
        let problems: Vec<&str> = stderr
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with("error: invalid configuration:"))
            .collect();
        if code != 2 || !problems.iter().any(|p| p.contains(expected)) {
            wrong.push(format!(
                "check, {what}: status {code}, expected a line with {expected:?}, got {problems:#?}"
            ));
            continue;
        }
        assert!(!stderr.contains("hunter2"), "{what}: a secret in {stderr}");
        let out = fnmill()
            .arg("run")
            .arg("-c")
            .arg(dir.path().join("fnmill.toml"))
            .output()
            .unwrap();
        let run_err = String::from_utf8_lossy(&out.stderr);
        if out.status.code() != Some(2) || !run_err.contains(expected) {
            wrong.push(format!(
                "run, {what}: status {:?}, expected {expected:?} in {run_err}",
                out.status.code()
            ));
        }
        let started = dir.path().join("out.jsonl").exists()
            || dir.path().join("in.jsonl.checkpoint").exists()
            || run_err.contains("Route started");
        if started {
            wrong.push(format!("run, {what}: something started before the refusal"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// `-c` naming a folder says so, not "no such file".
#[test]
fn a_folder_as_the_config_is_named_as_one() {
    let dir = tempfile::tempdir().unwrap();
    let out = fnmill()
        .arg("check")
        .arg("-c")
        .arg(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr.contains("is a directory"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

/// `runtime.perf_map` (here from the environment, `FNMILL__RUNTIME__PERF_MAP=true`): loading the
/// function writes `/tmp/perf-<pid>.map`, a line per compiled wasm function, for `perf` to name
/// the guest's code; off by default, no file is written.
#[test]
fn perf_map_names_the_compiled_wasm_functions_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    for on in [true, false] {
        let env: &[(&str, &str)] = if on {
            &[("FNMILL__RUNTIME__PERF_MAP", "true")]
        } else {
            &[]
        };
        let child = check_command(dir.path(), VALID, env)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let map = std::path::PathBuf::from(format!("/tmp/perf-{}.map", child.id()));
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = std::fs::read_to_string(&map).ok();
        let _ = std::fs::remove_file(&map);
        if on {
            let text = text.expect("a perf map was written");
            let wasm: Vec<&str> = text.lines().filter(|l| l.contains(" wasm[0]::")).collect();
            assert!(!wasm.is_empty(), "no wasm function in the map:\n{text}");
            // `ADDRESS SIZE NAME`, as perf reads it.
            for line in wasm {
                let mut parts = line.splitn(3, ' ');
                let (address, size) = (parts.next().unwrap(), parts.next().unwrap());
                assert!(address.starts_with("0x"), "{line}");
                assert!(u64::from_str_radix(size, 16).unwrap() > 0, "{line}");
            }
        } else {
            assert!(text.is_none(), "a perf map was written with perf_map off");
        }
    }
}
