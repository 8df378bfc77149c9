//! Retries and dead letters through `fnmill run`: a retryable function succeeds on a later
//! attempt; fatal and trapping events land in the dead-letter file with headers that say why and
//! with their original bytes; a route without a dead-letter destination holds the event rather
//! than drop it.

use fnmill_testkit::common;

use std::time::Duration;

use common::{FileRoute, count_lines, fnmill, guest, headers, read_lines, run_to_end, wait_until};

/// The guest fails with `retryable` on attempts 1 and 2, and succeeds on attempt 3.
#[test]
fn retryable_succeeds_on_attempt_three() {
    let dir = tempfile::tempdir().unwrap();
    let mut route = FileRoute::new(dir.path(), guest("retryable"));
    route.function_extra = "config = { succeed_on_attempt = \"3\" }".into();
    route.route_extra = "retry = { max_attempts = 5, initial_backoff = \"10ms\" }\n".into();
    std::fs::write(
        route.input(),
        "{\"id\":\"r1\",\"key\":\"k\",\"payload\":{\"x\":1}}\n",
    )
    .unwrap();
    run_to_end(&route.write());
    let out = read_lines(&route.output());
    assert_eq!(out.len(), 1);
    assert_eq!(headers(&out[0])["attempt"], "3");
    assert!(read_lines(&route.dead()).is_empty());
}

/// When attempts run out, the event is dead-lettered as `retryable` with the attempt count.
#[test]
fn retries_exhausted_go_to_the_dead_letter_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut route = FileRoute::new(dir.path(), guest("retryable"));
    route.function_extra = "config = { succeed_on_attempt = \"9\" }".into();
    route.route_extra = "retry = { max_attempts = 3, initial_backoff = \"5ms\" }\n".into();
    std::fs::write(route.input(), "{\"id\":\"r1\",\"payload\":{\"x\":1}}\n").unwrap();
    run_to_end(&route.write());
    let dead = read_lines(&route.dead());
    assert_eq!(dead.len(), 1);
    let h = headers(&dead[0]);
    assert_eq!(h["fnmill.error.kind"], "retryable");
    assert_eq!(h["fnmill.error.attempts"], "3");
}

/// Fatal and trapping functions: the original event — payload bytes, key and headers untouched —
/// lands in the dead-letter file with `fnmill.error.*` headers; nothing reaches the output.
#[test]
fn fatal_and_trap_are_dead_lettered_with_the_original_bytes() {
    for (name, kind, message) in [
        ("fatal", "fatal", "always fatal"),
        ("trap", "trap", "unreachable"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let route = FileRoute::new(dir.path(), guest(name));
        // Odd spacing and a non-JSON payload: the bytes must come back exactly.
        let lines = concat!(
            "{\"id\":\"p1\",\"key\":\"k1\",\"payload\":{\"b\": [1, 2 ,3]},\"headers\":{\"traceparent\":\"00-abc-def-01\"}}\n",
            "{\"id\":\"p2\",\"payload_base64\":\"AAEC/w==\"}\n",
        );
        std::fs::write(route.input(), lines).unwrap();
        run_to_end(&route.write());
        assert!(read_lines(&route.output()).is_empty());
        let dead = read_lines(&route.dead());
        assert_eq!(dead.len(), 2, "{name}");
        let first = dead
            .iter()
            .find(|d| headers(d)["fnmill.error.event.id"] == "p1")
            .unwrap();
        let raw = std::fs::read_to_string(route.dead()).unwrap();
        assert!(
            raw.contains("\"payload\":{\"b\": [1, 2 ,3]}"),
            "original bytes kept: {raw}"
        );
        assert!(
            raw.contains("\"payload_base64\":\"AAEC/w==\""),
            "binary payload kept: {raw}"
        );
        assert_eq!(first["key"], "k1");
        let h = headers(first);
        assert_eq!(h["traceparent"], "00-abc-def-01");
        assert_eq!(h["fnmill.error.kind"], kind);
        assert!(h["fnmill.error.message"].contains(message), "{h:?}");
        assert_eq!(h["fnmill.error.function"], "f");
        assert_eq!(h["fnmill.error.route"], "in-f");
        assert_eq!(h["fnmill.error.attempts"], "1", "{kind} is not retried");
        assert_eq!(h["fnmill.error.source"], "in");
        assert_eq!(h["fnmill.error.origin.line"], "1");
        assert!(h["fnmill.error.origin.file"].ends_with("in.jsonl"));
    }
}

/// Without a dead-letter destination a failed event stops its lane: it is not acknowledged, so
/// after SIGTERM the checkpoint stays before it while other keys went on.
#[test]
fn without_dead_letter_the_lane_stops_and_nothing_is_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let mut route = FileRoute::new(dir.path(), guest("fatal"));
    route.dead_letter = false;
    std::fs::write(
        route.input(),
        "{\"id\":\"x\",\"key\":\"k\",\"payload\":1}\n",
    )
    .unwrap();
    let mut child = fnmill()
        .args(["run", "-c"])
        .arg(route.write())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The run does not end by itself: the failed event is held.
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let mut log = Vec::new();
    wait_until(Duration::from_secs(60), "the lane-stopped log line", || {
        while let Ok(l) = rx.try_recv() {
            log.push(l);
        }
        log.iter().any(|l| l.contains("its lane stops"))
    });
    assert!(
        child.try_wait().unwrap().is_none(),
        "fnmill must still be running"
    );
    // SAFETY: sending SIGTERM to our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    // A graceful stop that had to abandon the held event says so: exit status 3.
    assert_eq!(status.code(), Some(3), "graceful stop: {status}");
    assert_eq!(count_lines(&route.output()), 0);
    let checkpoint =
        std::fs::read_to_string(dir.path().join("in.jsonl.checkpoint")).unwrap_or_default();
    assert!(
        !checkpoint.contains("\"line\":1"),
        "the failed event must not be checkpointed: {checkpoint}"
    );
}

/// A flood of bad events does not flood the log: the dead-letter warning goes out at most once a
/// second per route, saying how many like lines it held back, and the held-back lines (each with
/// its event id) go out at `debug`. Every event is still dead-lettered.
#[test]
fn a_flood_of_dead_letters_is_logged_once_a_second() {
    const EVENTS: usize = 2_000;
    let dir = tempfile::tempdir().unwrap();
    let route = FileRoute::new(dir.path(), guest("fatal"));
    let lines: String = (0..EVENTS)
        .map(|i| {
            format!(
                "{{\"id\":\"bad-{i}\",\"key\":\"k{}\",\"payload\":{{}}}}\n",
                i % 7
            )
        })
        .collect();
    std::fs::write(route.input(), lines).unwrap();
    let started = std::time::Instant::now();
    let out = fnmill()
        .args(["run", "-c"])
        .arg(route.write())
        .env("RUST_LOG", "info,fnmill::pipeline::event=debug")
        .output()
        .expect("running fnmill");
    let seconds = started.elapsed().as_secs() as usize + 1;
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}\n{log}", out.status);
    assert_eq!(count_lines(&route.dead()), EVENTS);

    let line = "Event failed; sending it to the dead-letter destination";
    let at = |level: &str| {
        log.lines()
            .filter(|l| l.contains(line) && l.contains(level))
            .collect::<Vec<_>>()
    };
    let (warned, held) = (at(" WARN "), at(" DEBUG "));
    assert!(
        (1..=seconds).contains(&warned.len()),
        "{} warnings in {seconds} s:\n{log}",
        warned.len()
    );
    assert!(warned[0].contains("withheld=0"), "{}", warned[0]);
    assert_eq!(
        warned.len() + held.len(),
        EVENTS,
        "one line per event, at one level or the other"
    );
    // The warnings never claim more withheld lines than were held back (those held back after
    // the last warning are counted by no warning).
    let withheld: usize = warned
        .iter()
        .map(|l| {
            let n = l.split("withheld=").nth(1).unwrap();
            n.split(|c: char| !c.is_ascii_digit())
                .next()
                .unwrap()
                .parse::<usize>()
                .unwrap()
        })
        .sum();
    assert!(
        withheld <= held.len(),
        "{withheld} said withheld, {} held",
        held.len()
    );
    assert!(
        held.iter().all(|l| l.contains("event=bad-")),
        "held-back lines name their event"
    );
}

/// A file of garbage: every line is dead-lettered, and the warning about it goes out at most
/// once a second (counting the lines it withheld), not once per line.
#[test]
fn a_file_of_malformed_lines_warns_once_a_second_and_dead_letters_every_line() {
    const LINES: usize = 5_000;
    let dir = tempfile::tempdir().unwrap();
    let route = FileRoute::new(dir.path(), guest("echo"));
    let garbage: String = (0..LINES).map(|i| format!("not json {i}\n")).collect();
    std::fs::write(route.input(), garbage).unwrap();
    let started = std::time::Instant::now();
    let out = run_to_end(&route.write());
    let seconds = started.elapsed().as_secs() as usize;

    assert_eq!(read_lines(&route.dead()).len(), LINES);
    assert!(read_lines(&route.output()).is_empty());
    let log = String::from_utf8_lossy(&out.stderr);
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("Malformed line"))
        .collect();
    assert!(
        !warnings.is_empty() && warnings.len() <= seconds + 1,
        "{} warnings in {seconds} s:\n{log}",
        warnings.len()
    );
    assert!(warnings[0].contains("in.jsonl"), "{}", warnings[0]);
}
