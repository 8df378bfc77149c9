//! Kafka through `fnmill run`, against Apache Kafka (started by `scripts/kafka.sh`): every event
//! of a keyed, partitioned topic reaches the output topic once and in per-key order; a poison
//! event goes to the dead-letter topic with its original bytes and the `fnmill.error.*` headers
//! while its partition keeps flowing; an unreachable broker at start is reported, not fatal.

use fnmill_testkit::common;
use fnmill_testkit::kafka_support;

use std::time::{Duration, Instant};

use common::{guest, wait_until};
use fnmill_connector_kafka::rdkafka::message::{Header, OwnedHeaders};
use fnmill_connector_kafka::rdkafka::producer::Producer;
use kafka_support::{
    KafkaRoute, Running, bootstrap, check, count, order_violations, produce_events, read_topic,
};

/// 20,000 events over 100 keys on 4 partitions → every id on the output exactly once, and
/// within each key the output keeps the input order.
#[test]
fn end_to_end_every_event_once_in_key_order() {
    const TOTAL: u64 = 20_000;
    let dir = tempfile::tempdir().unwrap();
    let route = KafkaRoute::new(dir.path(), &bootstrap(), guest("echo"));
    route.create_topics(4);
    produce_events(&route.brokers, &route.input, 0..TOTAL, 100);
    let mut run = Running::start(&route.write("fnmill"), dir.path().join("run.log"));
    wait_until(Duration::from_secs(120), "all outputs", || {
        assert!(run.alive(), "fnmill exited: {}", run.log_text());
        count(&route.brokers, &route.output) >= TOTAL as i64
    });
    run.terminate(Duration::from_secs(30));

    let out = read_topic(&route.brokers, &route.output);
    let verdict = check(TOTAL, &out, &[]);
    assert!(
        verdict.lost.is_empty(),
        "lost: {:?}",
        &verdict.lost[..10.min(verdict.lost.len())]
    );
    assert_eq!(
        verdict.duplicated.len(),
        0,
        "duplicates: {}",
        verdict.extra_copies()
    );
    assert_eq!(verdict.ok, TOTAL as usize);
    assert_eq!(order_violations(&out), 0, "per-key order broken");
    // Keys and payloads came through unchanged.
    let first = &out[0];
    assert_eq!(
        first.key.as_deref(),
        Some(first.json()["key"].as_str().unwrap().as_bytes())
    );
    // After the graceful stop, every input offset is committed.
    for (partition, committed, high) in
        kafka_support::committed(&route.brokers, &route.group, &route.input)
    {
        assert_eq!(committed, high, "partition {partition} not fully committed");
    }
}

/// A poison event — an output too large for the output sink (`message.max.bytes`), a
/// permanent produce error — goes to the dead-letter topic with its key, headers and exact
/// bytes plus the `fnmill.error.*` headers; the events after it on the same partition and key
/// still reach the output.
#[test]
fn poison_event_is_dead_lettered_and_its_partition_keeps_flowing() {
    let dir = tempfile::tempdir().unwrap();
    let mut route = KafkaRoute::new(dir.path(), &bootstrap(), guest("echo"));
    route.sink_properties = r#""message.max.bytes" = 10000"#.into();
    route.create_topics(1);
    let producer = kafka_support::producer(&route.brokers);
    for id in 0..50u64 {
        kafka_support::send(
            &producer,
            &route.input,
            "k",
            kafka_support::payload(id, "k", id).as_bytes(),
            None,
        );
    }
    // The poison: valid JSON with the next id, padded past the sink's limit, odd spacing kept.
    let poison = format!(
        r#"{{"id": 50,  "key":"k","seq":50,"pad":"{}"}}"#,
        "x".repeat(20_000)
    );
    let headers = OwnedHeaders::new().insert(Header {
        key: "traceparent",
        value: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
    });
    kafka_support::send(
        &producer,
        &route.input,
        "k",
        poison.as_bytes(),
        Some(headers),
    );
    for id in 51..100u64 {
        kafka_support::send(
            &producer,
            &route.input,
            "k",
            kafka_support::payload(id, "k", id).as_bytes(),
            None,
        );
    }
    producer.flush(Duration::from_secs(30)).unwrap();

    let mut run = Running::start(&route.write("fnmill"), dir.path().join("run.log"));
    wait_until(
        Duration::from_secs(60),
        "outputs and the dead letter",
        || {
            assert!(run.alive(), "fnmill exited: {}", run.log_text());
            count(&route.brokers, &route.output) >= 99 && count(&route.brokers, &route.dead) >= 1
        },
    );
    run.terminate(Duration::from_secs(30));

    let out = read_topic(&route.brokers, &route.output);
    let dead = read_topic(&route.brokers, &route.dead);
    let verdict = check(100, &out, &dead);
    assert_eq!(verdict.dead_lettered, vec![50]);
    assert!(verdict.lost.is_empty(), "lost {:?}", verdict.lost);
    assert!(verdict.duplicated.is_empty());
    assert_eq!(order_violations(&out), 0);

    assert_eq!(dead.len(), 1);
    let d = &dead[0];
    assert_eq!(d.payload, poison.as_bytes(), "original bytes");
    assert_eq!(d.key.as_deref(), Some(&b"k"[..]));
    let h = |name: &str| {
        String::from_utf8(
            d.headers
                .get(name)
                .unwrap_or_else(|| panic!("header {name} missing: {:?}", d.headers.keys()))
                .clone(),
        )
        .unwrap()
    };
    assert_eq!(
        h("traceparent"),
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    );
    assert_eq!(h("fnmill.error.kind"), "fatal");
    assert!(
        h("fnmill.error.message").contains("too large"),
        "{}",
        h("fnmill.error.message")
    );
    assert_eq!(h("fnmill.error.function"), "f");
    assert_eq!(h("fnmill.error.attempts"), "1");
    assert_eq!(h("fnmill.error.origin.topic"), route.input);
    assert_eq!(h("fnmill.error.origin.partition"), "0");
    assert_eq!(h("fnmill.error.origin.offset"), "50");
    assert_eq!(h("fnmill.error.event.id"), format!("{}/0/50", route.input));
}

/// Nothing listens at the broker address: `fnmill run` logs one clear line, reports not ready at
/// `/readyz`, keeps running and retrying, and does not spin the CPU while it waits.
#[test]
fn unreachable_broker_at_start_is_reported_and_retried() {
    let dir = tempfile::tempdir().unwrap();
    // A port that was free a moment ago: nothing answers there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let admin = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut route = KafkaRoute::new(dir.path(), &format!("127.0.0.1:{port}"), guest("echo"));
    route.runtime_extra = format!("\n[admin]\nlisten = \"{admin}\"\n");
    let config = route.write("fnmill");
    let mut run = Running::start(&config, dir.path().join("run.log"));
    wait_until(
        Duration::from_secs(30),
        "the unreachable-broker log line",
        || {
            assert!(run.alive(), "fnmill exited: {}", run.log_text());
            run.log_text().contains("Kafka brokers unreachable")
        },
    );
    let readyz = || kafka_support::readyz(admin);
    wait_until(Duration::from_secs(10), "/readyz to answer", || {
        readyz().is_some()
    });
    let answer = readyz().unwrap();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("in"), "{answer}");

    // Over a few seconds of retrying, the process stays up and nearly idle.
    let cpu_before = run.cpu_time();
    let start = Instant::now();
    wait_until(Duration::from_secs(10), "a measuring window", || {
        start.elapsed() >= Duration::from_secs(3)
    });
    assert!(run.alive(), "fnmill exited: {}", run.log_text());
    let cpu = run.cpu_time() - cpu_before;
    assert!(
        cpu < start.elapsed() / 5,
        "busy loop: {cpu:?} CPU in {:?}",
        start.elapsed()
    );
    let log = run.log_text();
    assert!(
        log.contains(&format!("127.0.0.1:{port}")),
        "the log line names the brokers: {log}"
    );
    assert!(!log.contains("panicked"), "{log}");
    run.terminate(Duration::from_secs(30));
}
