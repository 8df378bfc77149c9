//! The admin endpoint of `fnmill run`: `/healthz`, `/readyz` (ready once the sources are
//! consuming) and `/metrics` (route counters in the Prometheus text format).

use fnmill_testkit::common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{FileRoute, count_lines, fnmill, guest, wait_until};

fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())?;
    Some((status, body))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn health_readiness_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut route = FileRoute::new(dir.path(), guest("echo"));
    route.runtime_extra = format!("[admin]\nlisten = \"127.0.0.1:{port}\"\n");
    let config = route.write();
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("path = \"in.jsonl\"", "path = \"in.jsonl\"\nfollow = true");
    std::fs::write(&config, text).unwrap();
    common::write_events(
        &route.input(),
        (0..10).map(|i| (format!("e{i}"), None, serde_json::json!({ "i": i }))),
    );
    let mut child = fnmill().args(["run", "-c"]).arg(&config).spawn().unwrap();

    wait_until(Duration::from_secs(60), "/healthz to answer", || {
        get(port, "/healthz").is_some_and(|(s, _)| s == 200)
    });
    wait_until(Duration::from_secs(30), "every event out", || {
        count_lines(&route.output()) == 10
    });
    let (status, body) = get(port, "/readyz").unwrap();
    assert_eq!((status, body.as_str()), (200, "ready\n"));
    let (status, metrics) = get(port, "/metrics").unwrap();
    assert_eq!(status, 200);
    assert!(
        metrics.contains("fnmill_events_done_total{route=\"in-f\"} 10"),
        "{metrics}"
    );
    assert!(
        metrics.contains("fnmill_source_ready{source=\"in\"} 1"),
        "{metrics}"
    );
    assert_eq!(get(port, "/nope").unwrap().0, 404);

    // SAFETY: SIGTERM to our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
}
