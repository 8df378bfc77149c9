//! `kill -9` of `fnmill run` in the middle of a Kafka stream loses nothing: five kills while
//! 50,000 events are still being produced, each proven to land mid-stream (input still growing,
//! output growing and the backlog committed since the restart), each followed by a restart; in
//! the end every id is on the output, and the extra copies per kill stay within what can be in
//! flight at a kill.

use fnmill_testkit::common;
use fnmill_testkit::kafka_support;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{guest, wait_until};
use kafka_support::{KafkaRoute, Running, bootstrap, check, count, read_topic};

const TOTAL: u64 = 50_000;
const KILLS: usize = 5;
/// The route's `max_in_flight` in this test.
const MAX_IN_FLIGHT: u64 = 200;
/// Input rate: slow enough that five kills and restarts fit inside the stream.
const RATE_PER_SECOND: u64 = 2_500;

#[test]
fn kill_nine_five_times_mid_stream_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut route = KafkaRoute::new(dir.path(), &bootstrap(), guest("echo"));
    route.route_extra = format!("max_in_flight = {MAX_IN_FLIGHT}\n");
    // Static membership: the restarted process takes over its partitions at once instead of
    // waiting out the killed member's session.
    route.source_properties = format!(
        r#", "group.instance.id" = "{}""#,
        kafka_support::unique("member")
    );
    route.create_topics(4);
    let config = route.write("fnmill");

    // The producer runs beside the kills, at a steady rate.
    let (producer, produced) =
        kafka_support::spawn_paced_producer(&route.brokers, &route.input, TOTAL, RATE_PER_SECOND);

    let mut kills = Vec::new();
    // What each kill can leave uncommitted (see the bound below).
    let mut bounds = Vec::new();
    for n in 0..KILLS {
        let mut run = Running::start(&config, dir.path().join(format!("run{n}.log")));
        let before = count(&route.brokers, &route.output);
        let input_at_start = count(&route.brokers, &route.input);
        let since = Instant::now();
        // Proof that this process is working on the stream: the output grew by some hundreds,
        // and it has committed past all the input there was when it started, so the kill lands
        // on the live stream rather than on the redelivered backlog of the kill before (which,
        // killed again before its first commit, would all be copied again).
        wait_until(
            Duration::from_secs(60),
            "output to grow and the backlog to be committed after the restart",
            || {
                assert!(run.alive(), "fnmill exited: {}", run.log_text());
                count(&route.brokers, &route.output) >= before + 500
                    && committed_in_all(&route) >= input_at_start
            },
        );
        let at_kill = produced.load(Ordering::Relaxed);
        // The pace since the restart: catching up on what was produced while no process ran,
        // it finishes events faster than the input rate.
        let pace =
            (count(&route.brokers, &route.output) - before) as f64 / since.elapsed().as_secs_f64();
        run.kill9();
        assert!(
            at_kill < TOTAL,
            "kill {n} landed after the input ended ({at_kill} produced)"
        );
        kills.push(at_kill);
        bounds.push(in_flight_at_kill(pace));
    }
    let mut last = Running::start(&config, dir.path().join("final.log"));
    producer.join().unwrap();
    wait_until(Duration::from_secs(120), "every id on the output", || {
        assert!(last.alive(), "fnmill exited: {}", last.log_text());
        let out = count(&route.brokers, &route.output);
        out >= TOTAL as i64
            && check(TOTAL, &read_topic(&route.brokers, &route.output), &[])
                .lost
                .is_empty()
    });
    last.terminate(Duration::from_secs(30));

    let out = read_topic(&route.brokers, &route.output);
    let verdict = check(TOTAL, &out, &[]);
    assert!(verdict.lost.is_empty(), "lost {} ids", verdict.lost.len());
    let bound: u64 = bounds.iter().sum();
    eprintln!(
        "kills at {kills:?}; {} extra copies over {KILLS} kills (bounds {bounds:?} per kill)",
        verdict.extra_copies()
    );
    assert!(
        verdict.extra_copies() as u64 <= bound,
        "{} duplicates exceed {bounds:?} in all ({bound})",
        verdict.extra_copies()
    );
}

/// The group's committed offsets over all partitions of the input (none committed counts as 0;
/// nothing is deleted, so offsets count events).
fn committed_in_all(route: &KafkaRoute) -> i64 {
    kafka_support::committed(&route.brokers, &route.group, &route.input)
        .iter()
        .map(|&(_, committed, _)| committed.max(0))
        .sum()
}

/// At a kill, what can be processed but not yet committed: the route's window, the source's
/// hand-over channel (at most the window), and what finishes in one auto-commit interval
/// (100 ms) at the pace the process was going, or at the input rate if that is faster.
fn in_flight_at_kill(pace_per_second: f64) -> u64 {
    let pace = (pace_per_second as u64).max(RATE_PER_SECOND);
    2 * MAX_IN_FLIGHT + pace / 10
}
