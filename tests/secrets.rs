//! No connector's password reaches the log, even with `RUST_LOG=trace` (the libraries' most
//! verbose level): events flow through RabbitMQ (a user with a password of its own, made by
//! `scripts/services.sh`), PostgreSQL (a password in the URL) and Redis (a server of the test's
//! own that requires one), and the password is nowhere in what fnmill wrote. (Kafka's SASL
//! password is checked the same way in `kafka_tls.rs`.)

use fnmill_testkit::amqp_common;
use fnmill_testkit::common;

use std::process::{Command, Stdio};
use std::time::Duration;

use amqp_common::{AmqpRoute, Broker, Collector, keyed_messages, unique, wait_for};
use common::{FileRoute, count_lines, fnmill, guest, write_events};
use serde_json::json;

/// Runs `fnmill run -c config` at trace level to its end and returns its log.
fn run_traced(config: &std::path::Path) -> String {
    let out = fnmill()
        .args(["run", "-c"])
        .arg(config)
        .env("RUST_LOG", "trace")
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "fnmill failed: {}", tail(&log));
    assert!(log.contains("TRACE"), "trace logging was not on");
    log
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

fn assert_absent(log: &str, secret: &str) {
    if let Some(line) = log.lines().find(|l| l.contains(secret)) {
        panic!("the password is in the log: {line}");
    }
}

const AMQP_PASSWORD: &str = "fnmill-secret-pw-4Zq81x";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_amqp_password_stays_out_of_a_trace_log() {
    let url = std::env::var("FNMILL_TEST_AMQP_SECRET_URL")
        .unwrap_or_else(|_| format!("amqp://fnmill-secret:{AMQP_PASSWORD}@127.0.0.1:5672/%2f"));
    let password = url
        .split_once("://")
        .and_then(|(_, rest)| rest.split_once('@'))
        .and_then(|(userinfo, _)| userinfo.split_once(':'))
        .map(|(_, p)| p.to_string())
        .unwrap();
    let broker = Broker::new().await;
    let (input, output) = (unique("secret-in"), unique("secret-out"));
    broker.queue(&input).await;
    broker.queue(&output).await;
    broker.publish(&input, keyed_messages(200, 5)).await;
    let out = Collector::start(&broker.connection, &output).await;
    let dir = tempfile::tempdir().unwrap();
    let mut route = AmqpRoute::new(&input, &output, None, guest("echo"));
    route.url = url;
    let config = route.write(dir.path());
    let mut child = fnmill()
        .args(["run", "-c"])
        .arg(&config)
        .env("RUST_LOG", "trace")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut log = String::new();
        std::io::Read::read_to_string(&mut std::io::BufReader::new(stderr), &mut log).ok();
        log
    });
    wait_for(Duration::from_secs(60), "200 outputs", || out.len() >= 200).await;
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
    let log = reader.join().unwrap();
    assert!(log.contains("TRACE"), "trace logging was not on");
    assert_absent(&log, &password);
    broker.cleanup().await;
}

#[test]
fn the_postgres_password_stays_out_of_a_trace_log() {
    let password = "fnmill-pg-secret-pw-77Yq";
    let base = std::env::var("FNMILL_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    // The suite's PostgreSQL trusts loopback, so the password is carried but not needed.
    let url = base.replacen("postgres@", &format!("postgres:{password}@"), 1);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("db-url"), &url).unwrap();
    let mut route = FileRoute::new(dir.path(), guest("sql-query"));
    route.function_extra =
        "data_sources = [\"db\"]\nconfig = { statement = \"select 1::int8 as one\" }".into();
    route.runtime_extra = "[data_sources.db]\nkind = \"postgres\"\nurl_file = \"db-url\"".into();
    write_events(
        &route.input(),
        (0..20).map(|i| (format!("e{i}"), None, json!([]))),
    );
    let log = run_traced(&route.write());
    assert_eq!(count_lines(&route.output()), 20, "{}", tail(&log));
    assert_absent(&log, password);
    assert_absent(&log, &url);
}

#[test]
fn the_redis_password_stays_out_of_a_trace_log() {
    let password = "fnmill-redis-secret-pw-31Kd";
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut server = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--requirepass", password])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .spawn()
        .expect("starting redis-server");
    common::wait_until(Duration::from_secs(20), "redis-server", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let dir = tempfile::tempdir().unwrap();
    let mut route = FileRoute::new(dir.path(), guest("kv-probe"));
    route.function_extra = "buckets = [\"cache\"]".into();
    route.runtime_extra = format!(
        "[data_sources.kv]\nkind = \"redis\"\nurl = \"redis://:{password}@127.0.0.1:{port}\"\nbuckets = {{ cache = {{ prefix = \"secret-test:\" }} }}"
    );
    write_events(
        &route.input(),
        (0..20).map(|i| (format!("e{i}"), None, json!({ "i": i }))),
    );
    let config = route.write();
    let log = run_traced(&config);
    let _ = server.kill();
    let _ = server.wait();
    assert!(
        count_lines(&route.output()) + count_lines(&route.dead()) == 20,
        "{}",
        tail(&log)
    );
    assert_eq!(count_lines(&route.dead()), 0, "{}", tail(&log));
    assert_absent(&log, password);
}
