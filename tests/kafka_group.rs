//! Two `fnmill run` processes in one consumer group share a topic; one is stopped with SIGTERM
//! halfway through. It drains its in-flight events, commits and leaves within 30 s; the other
//! takes over its partitions from the committed offsets: 0 lost, 0 duplicated, and after the
//! last graceful stop every input offset is committed.

use fnmill_testkit::common;
use fnmill_testkit::kafka_support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{guest, wait_until};
use kafka_support::{KafkaRoute, Running, bootstrap, check, count, read_topic};

const TOTAL: u64 = 20_000;
const RATE_PER_SECOND: u64 = 2_500;

#[test]
fn sigterm_of_one_member_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let route = KafkaRoute::new(dir.path(), &bootstrap(), guest("echo"));
    route.create_topics(4);
    let config = route.write("fnmill");

    let mut a = Running::start(&config, dir.path().join("a.log"));
    wait_until(Duration::from_secs(60), "a to get partitions", || {
        assert!(a.alive(), "a exited: {}", a.log_text());
        a.log_text().contains("Partitions assigned")
    });
    let mut b = Running::start(&config, dir.path().join("b.log"));
    // Cooperative-sticky: a gives up two partitions, b gets them.
    wait_until(
        Duration::from_secs(60),
        "the group to spread over a and b",
        || {
            assert!(b.alive(), "b exited: {}", b.log_text());
            b.log_text().contains("Partitions assigned")
                && a.log_text().contains("Partitions revoked")
        },
    );

    let (producer, produced) =
        kafka_support::spawn_paced_producer(&route.brokers, &route.input, TOTAL, RATE_PER_SECOND);

    // Halfway through the input, with the pipeline visibly working on it.
    wait_until(
        Duration::from_secs(60),
        "half of the input, and outputs",
        || {
            produced.load(Ordering::Relaxed) >= TOTAL / 2
                && count(&route.brokers, &route.output) >= 1_000
        },
    );
    let at_stop = produced.load(Ordering::Relaxed);
    let took = a.terminate(Duration::from_secs(30));
    assert!(at_stop < TOTAL, "the stop landed after the input ended");
    assert!(
        a.child.wait().unwrap().success(),
        "a failed: {}",
        a.log_text()
    );
    assert!(
        a.log_text().contains("offsets committed"),
        "a committed on the way out: {}",
        a.log_text()
    );
    eprintln!("a stopped in {took:?} with {at_stop} of {TOTAL} produced");

    producer.join().unwrap();
    wait_until(
        Duration::from_secs(120),
        "every event on the output",
        || {
            assert!(b.alive(), "b exited: {}", b.log_text());
            count(&route.brokers, &route.output) >= TOTAL as i64
        },
    );
    b.terminate(Duration::from_secs(30));

    let out = read_topic(&route.brokers, &route.output);
    let verdict = check(TOTAL, &out, &[]);
    assert!(verdict.lost.is_empty(), "lost {} ids", verdict.lost.len());
    assert!(
        verdict.duplicated.is_empty(),
        "{} duplicates: {:?}",
        verdict.extra_copies(),
        verdict.duplicated.iter().take(10).collect::<Vec<_>>()
    );
    for (partition, committed, high) in
        kafka_support::committed(&route.brokers, &route.group, &route.input)
    {
        assert_eq!(committed, high, "partition {partition} not fully committed");
    }
}
