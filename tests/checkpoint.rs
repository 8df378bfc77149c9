//! The file source's durable checkpoint: `kill -9` of `fnmill run` in the middle of a stream,
//! then a restart, loses no event.

use fnmill_testkit::common;

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use common::{FileRoute, count_lines, fnmill, guest, read_lines, wait_until};

fn start(config: &Path) -> Child {
    fnmill()
        .args(["run", "-c"])
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// A writer appends 40,000 events while fnmill follows the file; fnmill is killed with SIGKILL
/// twice mid-stream and restarted; in the end every event is in the output.
#[test]
fn kill_9_mid_run_then_restart_loses_nothing() {
    const EVENTS: usize = 40_000;
    let dir = tempfile::tempdir().unwrap();
    let mut route = FileRoute::new(dir.path(), guest("echo"));
    route.route_extra = "max_in_flight = 200\n".into();
    let config = route.write();
    // Follow the file: the stream is still being written while fnmill runs.
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "path = \"in.jsonl\"",
        "path = \"in.jsonl\"\nfollow = true\ncheckpoint_interval = \"50ms\"",
    );
    std::fs::write(&config, text).unwrap();
    std::fs::write(route.input(), "").unwrap();

    let input = route.input();
    let writer = std::thread::spawn(move || {
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&input)
            .unwrap();
        for chunk in 0..EVENTS / 500 {
            let mut buf = String::new();
            for i in chunk * 500..(chunk + 1) * 500 {
                buf.push_str(&format!(
                    "{{\"id\":\"e{i}\",\"key\":\"k{}\",\"payload\":{{\"i\":{i}}}}}\n",
                    i % 64
                ));
            }
            file.write_all(buf.as_bytes()).unwrap();
            // Pace the producer so the stream outlives the kills; correctness does not
            // depend on this timing, only the proof that the kills land mid-stream does.
            std::thread::sleep(Duration::from_millis(40));
        }
    });

    let mut kills = 0;
    for threshold in [4_000, 14_000] {
        let mut child = start(&config);
        wait_until(
            Duration::from_secs(120),
            "output to pass the kill threshold",
            || count_lines(&route.output()) >= threshold,
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "fnmill must be running when killed"
        );
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let at_kill = count_lines(&route.output());
        assert!(
            at_kill < EVENTS,
            "the kill must land mid-stream ({at_kill} of {EVENTS} out)"
        );
        kills += 1;
    }
    assert_eq!(kills, 2);

    let mut child = start(&config);
    writer.join().unwrap();
    wait_until(
        Duration::from_secs(180),
        "every event in the output",
        || {
            count_lines(&route.output()) >= EVENTS && {
                let ids: std::collections::HashSet<String> = read_lines(&route.output())
                    .iter()
                    .map(|l| l["payload"]["i"].to_string())
                    .collect();
                ids.len() == EVENTS
            }
        },
    );
    // SAFETY: SIGTERM to our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());

    let mut counts: HashMap<i64, usize> = HashMap::new();
    for line in read_lines(&route.output()) {
        *counts
            .entry(line["payload"]["i"].as_i64().unwrap())
            .or_default() += 1;
    }
    let lost: Vec<_> = (0..EVENTS as i64)
        .filter(|i| !counts.contains_key(i))
        .collect();
    assert!(
        lost.is_empty(),
        "lost events: {:?}",
        &lost[..lost.len().min(20)]
    );
    let duplicates: usize = counts.values().map(|c| c - 1).sum();
    // At most what was in flight (200) plus one checkpoint interval's worth per kill.
    assert!(
        duplicates <= 2 * 2_000,
        "{duplicates} duplicates for 2 kills"
    );
    eprintln!("2 kills: 0 lost, {duplicates} duplicated");
}
