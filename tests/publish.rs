//! `fnmill publish` against the real Apache Kafka (`scripts/kafka.sh`) and RabbitMQ: 10,000
//! JSON Lines events with keys, headers and binary payloads come back exactly, in per-key
//! order, from a consumer in the test; an unroutable AMQP message counts as failed; a malformed
//! input line is reported by its number and stops the run or is skipped; templates fill
//! `{{seq}}` and `{{uuid}}`; bad flags and unknown sinks are one-line errors with exit 2.

use fnmill_testkit::amqp_common;
use fnmill_testkit::common;
use fnmill_testkit::kafka_support;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use base64::Engine as _;
use common::fnmill;
use futures::StreamExt;
use kafka_support::{bootstrap, create_topic, read_topic};
use lapin::options::{BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions};
use lapin::types::{AMQPValue, FieldTable};
use serde_json::json;

/// One expected event: what a consumer must read back.
struct Expected {
    key: Vec<u8>,
    payload: Vec<u8>,
    seq: u64,
    h: String,
}

/// Writes `total` events as JSON Lines: ids `e0…`, keys over `keys` keys (every 7th key
/// binary when `binary_keys`), per-key sequence numbers, two headers (`id`, `seq`) plus one of
/// UTF-8 text with a newline, and payloads that are JSON, text or random binary in turn.
fn write_input(path: &Path, total: u64, keys: u64, binary_keys: bool) -> HashMap<String, Expected> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut text = String::new();
    let mut expected = HashMap::new();
    let mut seqs: BTreeMap<u64, u64> = BTreeMap::new();
    for i in 0..total {
        let id = format!("e{i}");
        let k = i % keys;
        let seq = {
            let s = seqs.entry(k).or_default();
            *s += 1;
            *s - 1
        };
        let h = format!("v{i}\nsecond line é");
        let mut line = json!({
            "id": id,
            "headers": { "id": id, "seq": seq.to_string(), "h": h },
        });
        let key: Vec<u8> = if binary_keys && k.is_multiple_of(7) {
            let key = vec![0xff, 0x00, k as u8];
            line["key_base64"] = json!(b64.encode(&key));
            key
        } else {
            let key = format!("key-{k}");
            line["key"] = json!(key);
            key.into_bytes()
        };
        let payload: Vec<u8> = match i % 3 {
            0 => {
                let p = json!({ "id": id, "n": i });
                line["payload"] = p.clone();
                p.to_string().into_bytes()
            }
            1 => {
                let p = format!("text payload {i}\twith tab");
                line["payload_text"] = json!(p);
                p.into_bytes()
            }
            _ => {
                let p: Vec<u8> = (0..32).map(|_| fastrand::u8(..)).collect();
                line["payload_base64"] = json!(b64.encode(&p));
                p
            }
        };
        text.push_str(&line.to_string());
        text.push('\n');
        expected.insert(
            id,
            Expected {
                key,
                payload,
                seq,
                h,
            },
        );
    }
    std::fs::write(path, text).unwrap();
    expected
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// 10,000 JSON Lines events to a 3-partition topic: the consumer reads back exactly those ids,
/// with their keys (binary ones too), header values and payload bytes; within each key the
/// sequence numbers come in order; the summary's per-partition offset ranges add up.
#[test]
fn ten_thousand_events_to_kafka_come_back_exactly_in_key_order() {
    const TOTAL: u64 = 10_000;
    let brokers = bootstrap();
    let topic = kafka_support::unique("publish");
    create_topic(&brokers, &topic, 3);
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.jsonl");
    let expected = write_input(&input, TOTAL, 50, true);

    let out = fnmill()
        .args(["publish", &format!("kafka://{brokers}/{topic}"), "--input"])
        .arg(&input)
        .output()
        .unwrap();
    let log = stderr(&out);
    assert!(out.status.success(), "{}\n{log}", out.status);
    assert!(
        log.contains(&format!("publish: {TOTAL} sent, 0 failed")),
        "{log}"
    );

    let read = read_topic(&brokers, &topic);
    assert_eq!(read.len() as u64, TOTAL, "records on the topic");
    let mut seen = HashMap::new();
    let mut last_seq: HashMap<Vec<u8>, (i32, i64, u64)> = HashMap::new();
    let mut by_offset = read.clone();
    by_offset.sort_by_key(|r| (r.partition, r.offset));
    for r in &by_offset {
        let id = String::from_utf8(r.headers["id"].clone()).unwrap();
        let e = expected
            .get(&id)
            .unwrap_or_else(|| panic!("unexpected {id}"));
        assert_eq!(r.key.as_deref(), Some(&e.key[..]), "key of {id}");
        assert_eq!(r.payload, e.payload, "payload of {id}");
        assert_eq!(r.headers["h"], e.h.as_bytes(), "header of {id}");
        assert_eq!(r.headers["seq"], e.seq.to_string().as_bytes());
        *seen.entry(id.clone()).or_insert(0) += 1;
        if let Some((partition, _, prev)) =
            last_seq.insert(e.key.clone(), (r.partition, r.offset, e.seq))
        {
            assert_eq!(partition, r.partition, "one key, one partition");
            assert!(e.seq > prev, "key {:?}: seq {} after {prev}", e.key, e.seq);
        }
    }
    assert_eq!(seen.len() as u64, TOTAL);
    assert!(seen.values().all(|n| *n == 1), "an id came twice");

    // The summary: one line per partition, the offsets written, adding up to the total.
    let mut sum = 0;
    for p in 0..3 {
        let records: Vec<_> = read.iter().filter(|r| r.partition == p).collect();
        if records.is_empty() {
            continue;
        }
        let last = records.iter().map(|r| r.offset).max().unwrap();
        let line = format!(
            "{topic} partition {p}: offsets 0..={last} ({} records)",
            records.len()
        );
        assert!(log.contains(&line), "{line}\n{log}");
        sum += records.len();
    }
    assert_eq!(sum as u64, TOTAL);
}

/// A consumer of `queue` on its own connection: (routing key, headers, payload) in arrival order.
async fn consume_all(
    queue: &str,
    count: usize,
) -> Vec<(String, BTreeMap<String, Vec<u8>>, Vec<u8>)> {
    let connection = amqp_common::connect().await;
    let channel = connection.create_channel().await.unwrap();
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut out = Vec::new();
    while out.len() < count {
        let d = tokio::time::timeout(Duration::from_secs(60), consumer.next())
            .await
            .expect("messages stopped coming")
            .unwrap()
            .unwrap();
        let headers = d
            .properties
            .headers()
            .as_ref()
            .map(|t| {
                t.inner()
                    .iter()
                    .map(|(k, v)| {
                        let bytes = match v {
                            AMQPValue::LongString(s) => s.as_bytes().to_vec(),
                            other => format!("{other:?}").into_bytes(),
                        };
                        (k.as_str().to_string(), bytes)
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.push((d.routing_key.as_str().to_string(), headers, d.data));
    }
    let _ = connection.close(200, "done".into()).await;
    out
}

async fn declare_exchange(broker: &amqp_common::Broker, exchange: &str, kind: lapin::ExchangeKind) {
    broker
        .channel
        .exchange_declare(
            exchange.into(),
            kind,
            ExchangeDeclareOptions {
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
}

/// 10,000 JSON Lines events to a topic exchange whose queue is bound with `#`: every event's
/// key is its routing key, and the consumer reads back exactly those ids, keys, header values
/// and payload bytes, each key's events in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_events_to_an_amqp_exchange_come_back_exactly_in_key_order() {
    const TOTAL: u64 = 10_000;
    let broker = amqp_common::Broker::new().await;
    let (exchange, queue) = (amqp_common::unique("pub-x"), amqp_common::unique("pub-q"));
    declare_exchange(&broker, &exchange, lapin::ExchangeKind::Topic).await;
    broker.queue(&queue).await;
    broker
        .channel
        .queue_bind(
            queue.as_str().into(),
            exchange.as_str().into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.jsonl");
    let expected = write_input(&input, TOTAL, 50, false);

    let url = format!("{}?exchange={exchange}", amqp_common::amqp_url());
    let mut cmd = fnmill();
    cmd.args(["publish", &url, "--quiet", "--input"])
        .arg(&input)
        .env_remove("RUST_LOG");
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let log = stderr(&out);
    assert!(out.status.success(), "{}\n{log}", out.status);
    assert!(
        log.trim().is_empty(),
        "--quiet prints nothing on success: {log}"
    );

    let got = consume_all(&queue, TOTAL as usize).await;
    let mut seen = HashMap::new();
    let mut last_seq: HashMap<String, u64> = HashMap::new();
    for (routing_key, headers, payload) in &got {
        let id = String::from_utf8(headers["id"].clone()).unwrap();
        let e = &expected[&id];
        assert_eq!(routing_key.as_bytes(), &e.key[..], "routing key of {id}");
        assert_eq!(payload, &e.payload, "payload of {id}");
        assert_eq!(headers["h"], e.h.as_bytes(), "header of {id}");
        *seen.entry(id.clone()).or_insert(0) += 1;
        if let Some(prev) = last_seq.insert(routing_key.clone(), e.seq) {
            assert!(
                e.seq > prev,
                "key {routing_key}: seq {} after {prev}",
                e.seq
            );
        }
    }
    assert_eq!(seen.len() as u64, TOTAL);
    assert!(seen.values().all(|n| *n == 1), "an id came twice");
    assert_eq!(
        broker.ready(&queue).await,
        0,
        "nothing more than the events"
    );
    broker.cleanup().await;
}

/// An exchange with no binding: every event comes back unroutable (`mandatory`), counts as
/// failed, and the exit status says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unroutable_amqp_message_counts_as_failed() {
    let broker = amqp_common::Broker::new().await;
    let exchange = amqp_common::unique("pub-unbound");
    declare_exchange(&broker, &exchange, lapin::ExchangeKind::Direct).await;
    let url = format!(
        "{}?exchange={exchange}&routing_key=nowhere",
        amqp_common::amqp_url()
    );
    let mut cmd = fnmill();
    cmd.args(["publish", &url, "--count", "3", "--payload", "x{{seq}}"]);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let log = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(
        log.contains("publish: 0 sent, 3 failed") && log.contains("unroutable: 3"),
        "{log}"
    );
    assert!(log.contains("error: event 0: unroutable"), "{log}");
    broker.cleanup().await;
}

fn numbered_lines(path: &Path, bad_line: usize, total: usize) {
    let mut text = String::new();
    for i in 1..=total {
        if i == bad_line {
            text.push_str("{\"id\": \"broken\", \"payload\": \n");
        } else {
            text.push_str(&format!(
                "{{\"id\":\"l{i}\",\"payload\":{{\"line\":{i}}}}}\n"
            ));
        }
    }
    std::fs::write(path, text).unwrap();
}

fn lines_on(brokers: &str, topic: &str) -> Vec<u64> {
    let mut lines: Vec<u64> = read_topic(brokers, topic)
        .iter()
        .map(|r| r.json()["line"].as_u64().unwrap())
        .collect();
    lines.sort();
    lines
}

/// A malformed line 3 of 6: with `--on-error abort` (the default) the error names line 3, lines
/// 1 and 2 are published and nothing after; with `skip` every other line is published. Both
/// exit 1.
#[test]
fn a_malformed_line_is_named_and_aborts_or_is_skipped() {
    let brokers = bootstrap();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    numbered_lines(&input, 3, 6);

    for (mode, want) in [("abort", vec![1, 2]), ("skip", vec![1, 2, 4, 5, 6])] {
        let topic = kafka_support::unique("publish-bad");
        create_topic(&brokers, &topic, 1);
        let out = fnmill()
            .args([
                "publish",
                &format!("kafka://{brokers}/{topic}"),
                "--on-error",
                mode,
                "-i",
            ])
            .arg(&input)
            .output()
            .unwrap();
        let log = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{mode}: {log}");
        assert!(
            log.contains("error: line 3: invalid JSON Lines event"),
            "{mode}: {log}"
        );
        assert_eq!(lines_on(&brokers, &topic), want, "{mode}: {log}");
        assert_eq!(
            log.contains("stopped at malformed line 3"),
            mode == "abort",
            "{mode}: {log}"
        );
    }
}

/// A file of 300 lines, 120 of them malformed, published with `--on-error skip` to a JSON Lines
/// file: by default the first 20 bad lines are named and the other 100 only counted (one line
/// says so when the first is withheld, one at the end how many), `--error-lines all` names every
/// one, `--error-lines 0` none. Every good line is written and the summary counts all 120
/// failures either way; exit 1.
#[test]
fn error_lines_past_the_limit_are_counted_not_printed() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let mut text = String::new();
    for i in 1..=300 {
        if i % 5 < 2 {
            text.push_str(&format!("not json {i}\n"));
        } else {
            text.push_str(&format!("{{\"payload_text\":\"{i}\"}}\n"));
        }
    }
    std::fs::write(&input, text).unwrap();
    for (limit, named) in [(None, 20), (Some("all"), 120), (Some("0"), 0)] {
        let output = dir
            .path()
            .join(format!("out-{}.jsonl", limit.unwrap_or("default")));
        let mut command = fnmill();
        command
            .args(["publish", output.to_str().unwrap(), "--on-error", "skip"])
            .arg("-i")
            .arg(&input);
        if let Some(limit) = limit {
            command.args(["--error-lines", limit]);
        }
        let out = command.output().unwrap();
        let log = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{limit:?}: {log}");
        let errors: Vec<&str> = log
            .lines()
            .filter(|l| l.starts_with("error: line "))
            .collect();
        assert_eq!(errors.len(), named, "{limit:?}: {log}");
        assert!(
            errors
                .iter()
                .all(|l| l.contains("invalid JSON Lines event")),
            "{limit:?}: {log}"
        );
        let withheld = 120 - named;
        assert_eq!(
            log.contains(&format!(
                "error lines past the first {named} are counted, not printed"
            )),
            withheld > 0,
            "{limit:?}: {log}"
        );
        assert_eq!(
            log.contains(&format!("{withheld} more error lines not printed")),
            withheld > 0,
            "{limit:?}: {log}"
        );
        assert!(log.contains("180 sent, 120 failed"), "{limit:?}: {log}");
        assert!(log.contains("bad-input: 120"), "{limit:?}: {log}");
        let written = std::fs::read_to_string(&output).unwrap();
        assert_eq!(written.lines().count(), 180, "{limit:?}: {log}");
    }
}

/// `--count` with `{{seq}}` and `{{uuid}}` into a JSON Lines file: N events, numbered, each with
/// its own uuid, shared by the key and the payload of one event.
#[test]
fn count_fills_the_templates_per_event() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("out.jsonl");
    let out = fnmill()
        .args([
            "publish",
            file.to_str().unwrap(),
            "--count",
            "5",
            "--key",
            "{{uuid}}",
            "--header",
            "n={{seq}}",
            "--payload",
            r#"{"n":{{seq}},"id":"{{uuid}}","at":{{now_ms}}}"#,
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let lines = common::read_lines(&file);
    assert_eq!(lines.len(), 5);
    let mut uuids = std::collections::BTreeSet::new();
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l["payload"]["n"], i as u64);
        assert_eq!(l["headers"]["n"], i.to_string());
        assert_eq!(l["key"], l["payload"]["id"]);
        assert!(l["payload"]["at"].as_u64().unwrap() > 1_700_000_000_000);
        uuids.insert(l["key"].as_str().unwrap().to_string());
    }
    assert_eq!(uuids.len(), 5);
}

/// A sink of a config: `--sink` publishes through it (its topic, or `--target`).
#[test]
fn publishes_through_a_sink_of_a_config() {
    let brokers = bootstrap();
    let topic = kafka_support::unique("publish-sink");
    create_topic(&brokers, &topic, 1);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("fnmill.toml");
    std::fs::write(
        &config,
        format!(
            "[sinks.out]\nkind = \"kafka\"\nbrokers = \"{brokers}\"\ntopic = \"elsewhere\"\n\
             properties = {{ \"linger.ms\" = 1 }}\n"
        ),
    )
    .unwrap();
    let out = fnmill()
        .args(["publish", "-c"])
        .arg(&config)
        .args([
            "--sink",
            "out",
            "--target",
            &topic,
            "--key",
            "k",
            "--payload",
            "@-",
        ])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(b"\x00\x01bytes")?;
            child.wait_with_output()
        })
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let read = read_topic(&brokers, &topic);
    assert_eq!(read.len(), 1);
    assert_eq!(read[0].payload, b"\x00\x01bytes");
    assert_eq!(read[0].key.as_deref(), Some(&b"k"[..]));
}

/// Bad flags, an unknown sink, a target without a topic, a cluster that does not answer: one
/// line naming the flag or key, exit 2.
#[test]
fn usage_errors_are_one_line_naming_the_flag_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("fnmill.toml");
    std::fs::write(
        &config,
        "[sinks.out]\nkind = \"file\"\npath = \"out.jsonl\"\n",
    )
    .unwrap();
    let c = config.to_str().unwrap();
    for (args, want) in [
        (
            vec!["publish", "-c", c, "--sink", "nope", "--payload", "x"],
            "--sink: no sink named `nope`",
        ),
        (
            vec!["publish", "http://x/y", "--payload", "x"],
            "TARGET: `http://` is not a target",
        ),
        (
            vec!["publish", "kafka://127.0.0.1:1", "--payload", "x"],
            "TARGET: no topic",
        ),
        (
            vec!["publish", "kafka://127.0.0.1:1/t", "--header", "novalue"],
            "--header: expected NAME=VALUE",
        ),
        (
            vec![
                "publish",
                "kafka://127.0.0.1:1/t",
                "--payload",
                "x",
                "--rate",
                "0",
            ],
            "--rate: must be",
        ),
        (
            vec![
                "publish",
                "kafka://127.0.0.1:1/t",
                "--payload",
                "x",
                "-i",
                "f",
            ],
            "--input",
        ),
        (
            vec!["publish", "kafka://127.0.0.1:1/t", "-i", "/no/such/file"],
            "--input: no file at /no/such/file",
        ),
        (
            vec![
                "publish",
                "kafka://127.0.0.1:1/t",
                "--on-error",
                "maybe",
                "-i",
                "f",
            ],
            "--on-error",
        ),
        (
            vec![
                "publish",
                "kafka://127.0.0.1:1/t",
                "--error-lines",
                "some",
                "-i",
                "f",
            ],
            "--error-lines",
        ),
        (
            vec![
                "publish",
                "amqp://h/%2f?queue=q&exchange=x",
                "--payload",
                "x",
            ],
            "TARGET: give either",
        ),
        (vec!["publish", "-c", c, "--payload", "x"], "TARGET"),
        (
            vec![
                "publish",
                "-c",
                "/no/such/fnmill.toml",
                "--sink",
                "out",
                "--payload",
                "x",
            ],
            "--config: cannot read /no/such/fnmill.toml",
        ),
        (
            vec!["publish", "kafka://127.0.0.1:1/t", "--payload", "x"],
            "TARGET: Kafka at 127.0.0.1:1 did not answer within 10s",
        ),
    ] {
        let out = fnmill().args(&args).output().unwrap();
        let log = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {log}");
        assert!(log.contains(want), "{args:?}: {log}");
        let first = log.lines().next().unwrap_or_default();
        assert!(first.starts_with("error"), "{args:?}: {log}");
        if !want.starts_with("--input")
            && !want.starts_with("--on-error")
            && !want.starts_with("--error-lines")
            && want != "TARGET"
        {
            // fnmill's own errors are one line; clap adds a usage hint after its own.
            assert_eq!(log.trim().lines().count(), 1, "{args:?}: {log}");
        }
    }
}

/// Through a config over TLS, with the URL (and its password) in a file: `publish --sink`
/// puts 100 events on a queue over `amqps://`, trusting the test CA from `tls_ca_file`, and
/// `replay --source --dry-run` reads them and acks none, and `replay --source` reads them back
/// over TLS into a JSON Lines file, acking each once it is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_and_replay_through_a_config_over_tls() {
    let broker = amqp_common::Broker::new().await;
    let queue = amqp_common::unique("pub-tls");
    broker.queue(&queue).await;
    let url = std::env::var("FNMILL_TEST_AMQPS_URL")
        .unwrap_or_else(|_| "amqps://guest:guest@localhost:5671/%2f".into());
    let ca =
        std::env::var("FNMILL_TEST_AMQPS_CA").unwrap_or_else(|_| "/etc/rabbitmq/tls/ca.pem".into());
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("amqp-url"), &url).unwrap();
    let config = dir.path().join("fnmill.toml");
    std::fs::write(
        &config,
        format!(
            "[sources.q]\nkind = \"amqp\"\nurl_file = \"amqp-url\"\ntls_ca_file = \"{ca}\"\n\
             queue = \"{queue}\"\n\n\
             [sinks.tls]\nkind = \"amqp\"\nurl_file = \"amqp-url\"\ntls_ca_file = \"{ca}\"\n\n\
             [sinks.file]\nkind = \"file\"\npath = \"copy.jsonl\"\n\n\
             [functions.f]\ncomponent = \"{}\"\n\n\
             [[routes]]\nsource = \"q\"\nfunction = \"f\"\ndestinations = {{ out = \"file\" }}\n",
            common::guest("echo").display()
        ),
    )
    .unwrap();
    let mut publish = fnmill();
    publish
        .args(["publish", "-c"])
        .arg(&config)
        .args(["--sink", "tls", "--target", &queue, "--count", "100"])
        .args(["--payload", r#"{"n":{{seq}}}"#]);
    let out = tokio::task::spawn_blocking(move || publish.output().unwrap())
        .await
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(broker.ready(&queue).await, 100);

    // A dry run reads every message and acknowledges none.
    let mut dry = fnmill();
    dry.args(["replay", "-c"])
        .arg(&config)
        .args(["--source", "q", "--dry-run"]);
    let out = tokio::task::spawn_blocking(move || dry.output().unwrap())
        .await
        .unwrap();
    assert!(
        stderr(&out).contains("replay: 100 read, 100 would be written"),
        "{}",
        stderr(&out)
    );
    assert_eq!(broker.ready(&queue).await, 100, "a dry run acks nothing");

    let copy = dir.path().join("copy.jsonl");
    let mut replay = fnmill();
    replay
        .args(["replay", "-c"])
        .arg(&config)
        .args(["--source", "q", "--to-sink", "file"]);
    let out = tokio::task::spawn_blocking(move || replay.output().unwrap())
        .await
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let ns: std::collections::BTreeSet<u64> = common::read_lines(&copy)
        .iter()
        .map(|l| l["payload"]["n"].as_u64().unwrap())
        .collect();
    assert_eq!(ns, (0..100).collect());
    assert_eq!(broker.ready(&queue).await, 0, "acked once written");
    broker.cleanup().await;
}

/// Ctrl-C in the middle of a JSON Lines file: publish stops, exits 130 and prints the command
/// that publishes the rest (`--from-line`); running it leaves every line on the topic once.
#[test]
fn ctrl_c_prints_the_command_that_publishes_the_rest() {
    let brokers = bootstrap();
    let topic = kafka_support::unique("publish-int");
    create_topic(&brokers, &topic, 2);
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    numbered_lines(&input, 0, 300);
    let child = fnmill()
        .args([
            "publish",
            &format!("kafka://{brokers}/{topic}"),
            "--rate",
            "60",
            "-i",
        ])
        .arg(&input)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    common::wait_until(Duration::from_secs(60), "some lines published", || {
        kafka_support::count(&brokers, &topic) >= 60
    });
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    let log = stderr(&out);
    assert_eq!(out.status.code(), Some(130), "{log}");
    let sent = lines_on(&brokers, &topic).len();
    assert!(
        sent < 300,
        "the interrupt must land mid-file: {sent}\n{log}"
    );
    let resume = common::printed_command(&log, "To publish the rest:");
    assert!(
        resume.contains(&format!("--from-line {}", sent + 1)),
        "{resume}"
    );
    let rerun = common::run_printed(&resume);
    assert!(rerun.status.success(), "{}", stderr(&rerun));
    assert_eq!(lines_on(&brokers, &topic), (1..=300).collect::<Vec<u64>>());
}
