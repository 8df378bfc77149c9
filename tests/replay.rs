//! `fnmill replay` against the real Apache Kafka (`scripts/kafka.sh`), RabbitMQ and Redis:
//! offset and time ranges of a 3-partition topic into another topic, exactly, with no consumer
//! group created (and `--group` committing); dead letters of a Kafka route and of a RabbitMQ
//! route replayed after the function was fixed (the latter with a `kill -9` of the replay
//! halfway) so that every event comes out; `--through` a data-source function with `--dry-run`;
//! Ctrl-C and the printed resume command; usage errors.

use fnmill_testkit::amqp_common;
use fnmill_testkit::common;
use fnmill_testkit::kafka_support;

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Output, Stdio};
use std::time::{Duration, SystemTime};

use common::{fnmill, guest, wait_until};
use fnmill_connector_kafka::rdkafka;
use kafka_support::{KafkaRoute, Running, bootstrap, count, create_topic, read_topic, unique};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer};

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn rfc3339(ms: i64) -> String {
    humantime::format_rfc3339_millis(SystemTime::UNIX_EPOCH + Duration::from_millis(ms as u64))
        .to_string()
}

/// `(batch, partition, index)` of every record on `topic`, from its JSON payload.
fn positions(brokers: &str, topic: &str) -> BTreeSet<(u64, u64, u64)> {
    let read = read_topic(brokers, topic);
    let set: BTreeSet<_> = read
        .iter()
        .map(|r| {
            let v = r.json();
            (
                v["b"].as_u64().unwrap(),
                v["p"].as_u64().unwrap(),
                v["i"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(set.len(), read.len(), "a record came twice");
    set
}

/// Groups on the cluster that committed an offset of `topic`, or that a replay without a group
/// left behind (its reader's unused group id).
fn groups_with_offsets_on(brokers: &str, topic: &str, partitions: i32) -> Vec<String> {
    let admin: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let groups = admin
        .fetch_group_list(None, Duration::from_secs(10))
        .unwrap();
    let mut found = Vec::new();
    for g in groups.groups() {
        if g.name()
            .starts_with(fnmill_connector_kafka::THROWAWAY_GROUP_PREFIX)
        {
            found.push(g.name().to_string());
            continue;
        }
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", g.name())
            .create()
            .unwrap();
        let mut tpl = rdkafka::TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition(topic, p);
        }
        let committed = consumer
            .committed_offsets(tpl, Duration::from_secs(10))
            .unwrap();
        if committed
            .elements()
            .iter()
            .any(|e| matches!(e.offset(), rdkafka::Offset::Offset(o) if o >= 0))
        {
            found.push(g.name().to_string());
        }
    }
    found
}

/// Three batches of 20 records on each of 3 partitions, ten minutes apart in record time: an
/// offset range of one partition and a time range of all three, each replayed into a topic of
/// its own, give exactly their records; no consumer group ends up with an offset of the topic;
/// with `--group` the offsets are committed, and a rerun with that group replays nothing.
#[test]
fn offset_and_time_ranges_replay_exactly_and_create_no_group() {
    let brokers = bootstrap();
    let input = unique("replay-range");
    create_topic(&brokers, &input, 3);
    let base = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        - 3_600_000;
    let batch_start = |b: i64| base + b * 600_000;
    let producer = kafka_support::producer(&brokers);
    for b in 0..3 {
        for p in 0..3 {
            for i in 0..20 {
                let payload = format!(r#"{{"b":{b},"p":{p},"i":{i}}}"#);
                let key = format!("k{p}");
                let record = BaseRecord::to(&input)
                    .partition(p)
                    .timestamp(batch_start(b as i64) + i)
                    .key(&key)
                    .payload(&payload)
                    .headers(OwnedHeaders::new().insert(Header {
                        key: "trace",
                        value: Some(payload.as_bytes()),
                    }));
                producer.send(record).map_err(|(e, _)| e).unwrap();
            }
        }
    }
    producer.flush(Duration::from_secs(30)).unwrap();

    // Offsets 15..=24 of partition 1: the last 5 of batch 0 and the first 5 of batch 1.
    let by_offset = unique("replay-offsets");
    let out = fnmill()
        .args([
            "replay",
            &format!("kafka://{brokers}/{input}"),
            "--partition",
            "1",
            "--from-offset",
            "15",
            "--to-offset",
            "24",
            "--to",
            &format!("kafka://{brokers}/{by_offset}"),
        ])
        .output()
        .unwrap();
    let log = stderr(&out);
    assert!(out.status.success(), "{log}");
    assert!(
        log.contains("replay: 10 read, 10 written, 0 skipped, 0 failed"),
        "{log}"
    );
    let want: BTreeSet<_> = (15..20)
        .map(|i| (0, 1, i))
        .chain((0..5).map(|i| (1, 1, i)))
        .collect();
    assert_eq!(positions(&brokers, &by_offset), want);
    // Keys and headers travel with the records.
    for r in read_topic(&brokers, &by_offset) {
        assert_eq!(r.key.as_deref(), Some(&b"k1"[..]));
        assert_eq!(r.headers["trace"], r.payload);
    }

    // Batch 1's time span, on every partition.
    let by_time = unique("replay-times");
    let out = fnmill()
        .args([
            "replay",
            &format!("kafka://{brokers}/{input}"),
            "--since",
            &rfc3339(batch_start(1)),
            "--until",
            &rfc3339(batch_start(2)),
            "--to",
            &format!("kafka://{brokers}/{by_time}"),
            "--quiet",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let want: BTreeSet<_> = (0..3)
        .flat_map(|p| (0..20).map(move |i| (1, p, i)))
        .collect();
    assert_eq!(positions(&brokers, &by_time), want);

    assert_eq!(
        groups_with_offsets_on(&brokers, &input, 3),
        Vec::<String>::new(),
        "a replay without --group commits nothing"
    );

    // With a group: everything committed, and the next run starts where that one ended.
    let group = unique("replay-group");
    let copy = unique("replay-copy");
    let replay_with_group = || {
        fnmill()
            .args([
                "replay",
                &format!("kafka://{brokers}/{input}"),
                "--group",
                &group,
                "--to",
                &format!("kafka://{brokers}/{copy}"),
            ])
            .output()
            .unwrap()
    };
    let out = replay_with_group();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(positions(&brokers, &copy).len(), 180);
    let committed = kafka_support::committed(&brokers, &group, &input);
    assert!(
        committed
            .iter()
            .all(|(_, c, high)| c == high && *high == 60),
        "{committed:?}"
    );
    let out = replay_with_group();
    assert!(
        stderr(&out).contains("replay: 0 read, 0 written"),
        "{}",
        stderr(&out)
    );
    assert_eq!(count(&brokers, &copy), 180);
}

/// A route whose function dead-letters every tenth event; the function is fixed (the
/// component swapped for one that passes everything) and the dead letters are replayed back to
/// the input topic: every event is in the output topic exactly once, the dead-letter topic is
/// as it was, and the replayed records carry their key, payload and headers, no
/// `fnmill.error.*` headers and the `fnmill.replay.*` headers.
#[test]
fn kafka_dead_letters_replayed_after_the_fix_come_out_exactly_once() {
    const TOTAL: u64 = 300;
    let dir = tempfile::tempdir().unwrap();
    let mut route = KafkaRoute::new(dir.path(), &bootstrap(), guest("poison"));
    route.create_topics(3);
    let producer = kafka_support::producer(&route.brokers);
    for id in 0..TOTAL {
        let key = format!("k{}", id % 10);
        let mut payload = kafka_support::payload(id, &key, id / 10);
        if id % 10 == 3 {
            payload = payload.replace('}', r#","poison":true}"#);
        }
        let trace = format!("t{id}");
        let headers = OwnedHeaders::new().insert(Header {
            key: "trace",
            value: Some(trace.as_bytes()),
        });
        kafka_support::send(
            &producer,
            &route.input,
            &key,
            payload.as_bytes(),
            Some(headers),
        );
    }
    producer.flush(Duration::from_secs(30)).unwrap();

    let mut run = Running::start(&route.write("poison"), dir.path().join("poison.log"));
    wait_until(Duration::from_secs(120), "outputs and dead letters", || {
        assert!(run.alive(), "fnmill exited: {}", run.log_text());
        count(&route.brokers, &route.output) >= 270 && count(&route.brokers, &route.dead) >= 30
    });
    run.terminate(Duration::from_secs(30));

    // The fix, running: the same route and group with a function that passes everything.
    route.component = guest("echo");
    let fixed = route.write("fixed");
    let mut run = Running::start(&fixed, dir.path().join("fixed.log"));
    let dead_before = read_topic(&route.brokers, &route.dead);
    assert_eq!(dead_before.len(), 30);

    let out = fnmill()
        .args(["replay", "-c"])
        .arg(&fixed)
        .args(["--sink", "dead", "--dead-letters"])
        .output()
        .unwrap();
    let log = stderr(&out);
    assert!(out.status.success(), "{log}");
    assert!(
        log.contains("replay: 30 read, 30 written, 0 skipped, 0 failed"),
        "{log}"
    );
    assert!(
        log.contains(&format!("30 to Kafka topic `{}`", route.input)),
        "{log}"
    );

    wait_until(Duration::from_secs(120), "every event out", || {
        assert!(run.alive(), "fnmill exited: {}", run.log_text());
        count(&route.brokers, &route.output) >= TOTAL as i64
    });
    // Everything on the input, the replayed records included, is committed: nothing more comes.
    wait_until(
        Duration::from_secs(60),
        "the route to commit the input",
        || {
            kafka_support::committed(&route.brokers, &route.group, &route.input)
                .iter()
                .all(|(_, c, high)| c == high)
        },
    );
    run.terminate(Duration::from_secs(30));
    let output = read_topic(&route.brokers, &route.output);
    let verdict = kafka_support::check(TOTAL, &output, &[]);
    assert!(verdict.lost.is_empty(), "lost {:?}", verdict.lost);
    assert_eq!(verdict.extra_copies(), 0, "{:?}", verdict.duplicated);
    assert_eq!(verdict.ok as u64, TOTAL);

    let dead_after = read_topic(&route.brokers, &route.dead);
    let summary = |reads: &[kafka_support::Read]| -> Vec<(i32, i64, Vec<u8>)> {
        let mut v: Vec<_> = reads
            .iter()
            .map(|r| (r.partition, r.offset, r.payload.clone()))
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        summary(&dead_after),
        summary(&dead_before),
        "dead letters untouched"
    );

    let replayed: Vec<_> = read_topic(&route.brokers, &route.input)
        .into_iter()
        .filter(|r| r.headers.contains_key("fnmill.replay.at"))
        .collect();
    assert_eq!(replayed.len(), 30);
    for r in &replayed {
        let id = r.json()["id"].as_u64().unwrap();
        assert_eq!(id % 10, 3);
        assert!(
            !r.headers.keys().any(|h| h.starts_with("fnmill.error.")),
            "{:?}",
            r.headers.keys()
        );
        assert_eq!(r.headers["trace"], format!("t{id}").as_bytes());
        assert_eq!(r.key.as_deref(), Some(format!("k{}", id % 10).as_bytes()));
        let text = |name: &str| String::from_utf8(r.headers[name].clone()).unwrap();
        assert_eq!(text("fnmill.replay.dead_letter.topic"), route.dead);
        let (p, o): (i32, i64) = (
            text("fnmill.replay.dead_letter.partition").parse().unwrap(),
            text("fnmill.replay.dead_letter.offset").parse().unwrap(),
        );
        let dl = dead_before
            .iter()
            .find(|d| d.partition == p && d.offset == o)
            .expect("the dead letter it names");
        assert_eq!(dl.payload, r.payload, "payload bytes");
        assert!(text("fnmill.replay.at").ends_with('Z'));
    }
}

/// A RabbitMQ route dead-letters 600 of 1,000 messages; after the fix, a replay of the
/// dead-letter queue is killed with SIGKILL halfway and run again: every message comes out,
/// and the dead-letter queue ends empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_dead_letters_replayed_with_a_kill_9_halfway_lose_nothing() {
    const TOTAL: usize = 1000;
    let broker = amqp_common::Broker::new().await;
    let (input, output, dead) = (
        amqp_common::unique("rp-in"),
        amqp_common::unique("rp-out"),
        amqp_common::unique("rp-dead"),
    );
    for q in [&input, &output, &dead] {
        broker.queue(q).await;
    }
    let mut messages = amqp_common::keyed_messages(TOTAL, 20);
    for (i, m) in messages.iter_mut().enumerate() {
        if i % 5 < 3 {
            let mut v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
            v["poison"] = true.into();
            m.payload = v.to_string().into_bytes();
        }
    }
    let expected: Vec<String> = messages.iter().map(|m| m.id.clone()).collect();
    broker.publish(&input, messages).await;
    let out = amqp_common::Collector::start(&broker.connection, &output).await;

    let dir = tempfile::tempdir().unwrap();
    let mut route = amqp_common::AmqpRoute::new(&input, &output, Some(&dead), guest("poison"));
    let run = amqp_common::Running::start(fnmill(), &route.write(dir.path()));
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while !(out.len() >= 400 && broker.ready(&dead).await >= 600) {
        assert!(
            std::time::Instant::now() < deadline,
            "the route did not finish"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    run.stop();

    let fixed_dir = tempfile::tempdir().unwrap();
    route.component = guest("echo");
    let run = amqp_common::Running::start(fnmill(), &route.write(fixed_dir.path()));
    let url = format!("{}?queue={dead}", amqp_common::amqp_url());

    let mut first = fnmill()
        .args(["replay", &url, "--dead-letters", "--rate", "100"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    amqp_common::wait_for(Duration::from_secs(60), "half of the replay", || {
        out.len() >= 400 + 250
    })
    .await;
    // SAFETY: signalling our own child.
    unsafe { libc::kill(first.id() as i32, libc::SIGKILL) };
    let status = first.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL),
        "the kill must have ended the replay: {status}"
    );
    // The broker requeues what the killed replay took and did not ack, as it drops its consumer.
    let left = broker
        .ready_once_unconsumed(&dead, Duration::from_secs(30))
        .await;
    assert!(
        left > 0 && left < 600,
        "the kill must land halfway: {left} dead letters left"
    );

    let mut second = fnmill();
    second.args(["replay", &url, "--dead-letters"]);
    let done = tokio::task::spawn_blocking(move || second.output().unwrap())
        .await
        .unwrap();
    assert!(done.status.success(), "{}", stderr(&done));
    assert!(
        stderr(&done).contains(&format!("replay: {left} read, {left} written")),
        "{}",
        stderr(&done)
    );

    amqp_common::wait_for(Duration::from_secs(120), "every id out", || {
        amqp_common::tally(&expected, &out.snapshot(), &[])
            .lost
            .is_empty()
    })
    .await;
    run.stop();
    let t = amqp_common::tally(&expected, &out.snapshot(), &[]);
    assert_eq!((t.ok, t.lost.len(), t.unexpected), (TOTAL, 0, 0), "{t:?}");
    assert_eq!(
        broker.ready(&dead).await,
        0,
        "the dead-letter queue is drained"
    );
    broker.cleanup().await;
}

/// `--through` a function that uses a Redis bucket, with `--dry-run`: its outputs are printed
/// as JSON Lines, one per event, and nothing reaches the `--to` topic.
#[test]
fn through_a_data_source_function_with_dry_run_prints_and_produces_nothing() {
    let brokers = bootstrap();
    let input = unique("replay-through");
    let never = unique("replay-never");
    create_topic(&brokers, &input, 1);
    kafka_support::produce_events(&brokers, &input, 0..5, 5);
    let redis =
        std::env::var("FNMILL_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("fnmill.toml");
    std::fs::write(
        &config,
        format!(
            "[data_sources.kv]\nkind = \"redis\"\nurl = \"{redis}\"\n\
             buckets = {{ cache = {{ prefix = \"{}:\" }} }}\n\n\
             [functions.probe]\ncomponent = \"{}\"\nbuckets = [\"cache\"]\n",
            unique("fnmill-test-replay"),
            guest("kv-probe").display()
        ),
    )
    .unwrap();
    let out = fnmill()
        .args(["replay", &format!("kafka://{brokers}/{input}"), "-c"])
        .arg(&config)
        .args([
            "--through",
            "probe",
            "--dry-run",
            "--to",
            &format!("kafka://{brokers}/{never}"),
        ])
        .output()
        .unwrap();
    let log = stderr(&out);
    assert!(out.status.success(), "{log}");
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 5, "{lines:?}");
    for l in &lines {
        assert_eq!(l["destination"], "out");
        assert_eq!(
            l["payload"],
            serde_json::json!({"got_back": true, "exists": true, "counter": 4, "listed": true, "exists_after_delete": false})
        );
    }
    assert!(
        log.contains("5 printed") && log.contains("nothing written"),
        "{log}"
    );
    assert_eq!(count(&brokers, &never), 0, "nothing produced");
}

/// Ctrl-C in the middle of a replay: it stops, exits 130 and prints the command that resumes;
/// that command finishes the range, and the destination has every record exactly once.
#[test]
fn ctrl_c_prints_the_command_that_resumes() {
    let brokers = bootstrap();
    let (input, copy) = (unique("replay-int"), unique("replay-int-out"));
    create_topic(&brokers, &input, 2);
    kafka_support::produce_events(&brokers, &input, 0..200, 10);
    let child = fnmill()
        .args([
            "replay",
            &format!("kafka://{brokers}/{input}"),
            "--rate",
            "40",
            "--to",
            &format!("kafka://{brokers}/{copy}"),
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until(Duration::from_secs(60), "some records copied", || {
        count(&brokers, &copy) >= 40
    });
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    let log = stderr(&out);
    assert_eq!(out.status.code(), Some(130), "{log}");
    let copied = count(&brokers, &copy);
    assert!(
        copied < 200,
        "the interrupt must land mid-range: {copied}\n{log}"
    );
    let resume = common::printed_command(&log, "To resume:");
    assert!(resume.starts_with("fnmill replay "), "{resume}");
    assert!(resume.contains("--from-offset"), "{resume}");

    let rerun = common::run_printed(&resume);
    let rerun_log = stderr(&rerun);
    assert!(rerun.status.success(), "{rerun_log}");
    let read = read_topic(&brokers, &copy);
    let ids: BTreeMap<u64, usize> = read.iter().fold(BTreeMap::new(), |mut m, r| {
        *m.entry(r.json()["id"].as_u64().unwrap()).or_default() += 1;
        m
    });
    let missing: Vec<u64> = (0..200).filter(|id| !ids.contains_key(id)).collect();
    assert_eq!(
        ids.len(),
        200,
        "every record of the range; missing {missing:?}\n{log}\nthe resume:\n{rerun_log}"
    );
    // Twice only what a summary says it sent again (a record Kafka reported delivered without
    // an offset, which the broker may have stored after all).
    let twice: usize = ids.values().map(|n| n - 1).sum();
    let resent = common::resent(&log) + common::resent(&rerun_log);
    assert!(
        twice as u64 <= resent,
        "{twice} records twice, {resent} sent again\n{log}\nthe resume:\n{rerun_log}"
    );
}

/// Bad flags, unknown functions and sinks: one line naming the flag or key, exit 2.
#[test]
fn usage_errors_are_one_line_naming_the_flag_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("fnmill.toml");
    std::fs::write(
        &config,
        "[sinks.out]\nkind = \"file\"\npath = \"out.jsonl\"\n",
    )
    .unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, "{\"payload\":1}\n").unwrap();
    let c = config.to_str().unwrap();
    let i = input.to_str().unwrap();
    for (args, want) in [
        (
            vec!["replay", i, "-c", c, "--through", "nope", "--dry-run"],
            "--through: no function named `nope`",
        ),
        (
            vec!["replay", i, "--through", "f", "--dry-run"],
            "--through: `f` is not a component file",
        ),
        (
            vec!["replay", "-c", c, "--sink", "nope", "--dry-run"],
            "--sink: no sink named `nope`",
        ),
        (
            vec!["replay", "-c", c, "--source", "nope", "--dry-run"],
            "--source: no source named `nope`",
        ),
        (
            vec!["replay", i, "-c", c, "--to-sink", "gone"],
            "--to-sink: no sink named `gone`",
        ),
        (vec!["replay", i], "--to: where should the records go?"),
        (
            vec!["replay", i, "--partition", "1", "--dry-run"],
            "--partition: only a Kafka topic",
        ),
        (
            vec![
                "replay",
                "kafka://127.0.0.1:1/t",
                "--from-offset",
                "abc",
                "--dry-run",
            ],
            "--from-offset: expected N or PARTITION:N",
        ),
        (
            vec![
                "replay",
                "kafka://127.0.0.1:1/t",
                "--since",
                "soonish",
                "--dry-run",
            ],
            "--since: `soonish` is neither",
        ),
        (
            vec!["replay", "kafka://127.0.0.1:1", "--dry-run"],
            "FROM: no topic to read",
        ),
        (
            vec!["replay", "amqp://127.0.0.1/%2f?exchange=x", "--dry-run"],
            "FROM: no queue to read",
        ),
        (
            vec!["replay", i, "--to", "ftp://x", "--dry-run"],
            "--to: `ftp://` is not a target",
        ),
        (
            vec!["replay", i, "--limit", "0", "--dry-run"],
            "--limit: must be at least 1",
        ),
        (
            vec!["replay", i, "--target", "t", "--dry-run"],
            "--target: only with --source or --sink",
        ),
    ] {
        let out = fnmill().args(&args).output().unwrap();
        let log = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {log}");
        assert!(log.contains(want), "{args:?}: {log}");
        assert_eq!(log.trim().lines().count(), 1, "{args:?}: {log}");
    }
    // A flag of the wrong command is clap's error (with its usage hint), also exit 2.
    let out = fnmill()
        .args(["replay", i, "--kind", "fatal", "--dry-run"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--dead-letters"), "{}", stderr(&out));
}

/// A file route dead-letters its poison lines into a JSON Lines file. Replaying that file with
/// a filter that matches nothing skips every dead letter; with the right filters they go back
/// to the end of the input file, and after the fix the route's next run passes them all. The
/// same input replayed through a component file counts the poison lines as failed (exit 1)
/// and writes the rest to a file.
#[test]
fn json_lines_dead_letters_go_back_to_their_file_and_filters_choose() {
    let dir = tempfile::tempdir().unwrap();
    let mut route = common::FileRoute::new(dir.path(), guest("poison"));
    let events = (0..20).map(|i| {
        let payload = if i % 4 == 1 {
            serde_json::json!({ "id": i, "poison": true })
        } else {
            serde_json::json!({ "id": i })
        };
        (format!("e{i}"), Some(format!("k{}", i % 3)), payload)
    });
    common::write_events(&route.input(), events);
    common::run_to_end(&route.write());
    assert_eq!(common::count_lines(&route.output()), 15);
    assert_eq!(common::count_lines(&route.dead()), 5);
    let dead = route.dead();
    let dead = dead.to_str().unwrap();

    let out = fnmill()
        .args([
            "replay",
            dead,
            "--dead-letters",
            "--kind",
            "trap",
            "--kind",
            "timeout",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("replay: 5 read, 0 written, 5 skipped, 0 failed"),
        "{}",
        stderr(&out)
    );
    assert_eq!(common::count_lines(&route.input()), 20, "nothing went back");

    let out = fnmill()
        .args([
            "replay",
            dead,
            "--dead-letters",
            "--kind",
            "fatal",
            "--route",
            "in-f",
        ])
        .args(["--function", "f"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("replay: 5 read, 5 written, 0 skipped, 0 failed"),
        "{}",
        stderr(&out)
    );
    let input = common::read_lines(&route.input());
    assert_eq!(input.len(), 25);
    for line in &input[20..] {
        let headers = common::headers(line);
        assert!(
            headers.keys().all(|h| !h.starts_with("fnmill.error.")),
            "{line}"
        );
        assert_eq!(headers["fnmill.replay.dead_letter.file"], dead);
        assert!(line["payload"]["poison"].as_bool().unwrap());
        assert!(line["key"].as_str().unwrap().starts_with('k'));
    }

    // The fix: the route's next run reads the five lines appended after its checkpoint.
    route.component = guest("echo");
    common::run_to_end(&route.write());
    let ids: BTreeSet<u64> = common::read_lines(&route.output())
        .iter()
        .map(|l| l["payload"]["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, (0..20).collect());
    assert_eq!(common::count_lines(&route.output()), 20, "each once");

    // Through a component file into a file: the poison lines fail, the rest are written.
    let copy = dir.path().join("copy.jsonl");
    let (out, log) =
        replay_file_through(&route.input(), &guest("poison"), &copy, &["--limit", "20"]);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(
        log.contains("replay: 20 read, 15 written, 0 skipped, 5 failed"),
        "{log}"
    );
    assert!(log.contains("failed: fatal: 5"), "{log}");
    assert!(log.contains("(event e1): fatal: poison message"), "{log}");
    assert_eq!(common::count_lines(&copy), 15);
    assert!(
        log.contains("Stopped at --limit: stopped at line 21"),
        "{log}"
    );
}

/// `fnmill replay <input> --through <component> --to <to>`, with `more` flags: its output and
/// its standard error.
fn replay_file_through(
    input: &std::path::Path,
    component: &std::path::Path,
    to: &std::path::Path,
    more: &[&str],
) -> (Output, String) {
    let out = fnmill()
        .args(["replay", input.to_str().unwrap()])
        .args(["--through", component.to_str().unwrap()])
        .args(["--to", to.to_str().unwrap()])
        .args(more)
        .output()
        .unwrap();
    let log = stderr(&out);
    (out, log)
}

/// Records that fail with an error that may pass if tried again (here a function's `retryable`
/// error) are not passed over: the replay exits 1 and prints the command that tries again from
/// the first of them; once the cause is fixed (the component swapped for one that works), that
/// command writes every one of them.
#[test]
fn retryable_failures_print_the_command_that_tries_them_again() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    common::write_events(
        &input,
        (0..6).map(|i| (format!("e{i}"), None, serde_json::json!({ "id": i }))),
    );
    let function = dir.path().join("f.wasm");
    std::fs::copy(guest("retryable"), &function).unwrap();
    let copy = dir.path().join("copy.jsonl");
    let (out, log) = replay_file_through(&input, &function, &copy, &["--from-line", "3"]);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(
        log.contains("replay: 4 read, 0 written, 0 skipped, 4 failed"),
        "{log}"
    );
    assert!(log.contains("failed: retryable: 4"), "{log}");
    let again = common::printed_command(&log, "To try them again:");
    assert!(
        log.contains("Failed with errors that may pass if tried again: the first at line 3."),
        "{log}"
    );
    assert!(again.contains("--from-line 3"), "{again}");

    std::fs::copy(guest("echo"), &function).unwrap();
    let rerun = common::run_printed(&again);
    let rerun_log = stderr(&rerun);
    assert!(rerun.status.success(), "{rerun_log}");
    assert!(
        rerun_log.contains("replay: 4 read, 4 written, 0 skipped, 0 failed"),
        "{rerun_log}"
    );
    let ids: Vec<u64> = common::read_lines(&copy)
        .iter()
        .map(|l| l["payload"]["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, vec![2, 3, 4, 5]);
}
