//! OpenTelemetry traces against a real Jaeger (v1.76.0, built by `scripts/jaeger.sh`): an event
//! published with a `traceparent` by a producer whose span is in Jaeger goes through fnmill —
//! from a JSON Lines file, Kafka and RabbitMQ — into a function that queries PostgreSQL, and the
//! trace read back from Jaeger's query API has the producer's span as root and fnmill's
//! consumer, function, SQL and producer spans beneath it; the output's `traceparent` belongs to
//! the same trace, and so does a dead letter's. `keyvalue` calls through Redis are spans that
//! name the operation and bucket, never the key or value. A malformed `traceparent` starts a
//! new trace and the event is processed normally; log lines carry the trace and span ids; a
//! collector that does not answer holds no event up, costs one warning and no memory growth.
//!
//! Needs PostgreSQL and Redis (`scripts/services.sh`), Kafka (`scripts/kafka.sh`), RabbitMQ and
//! Jaeger (`scripts/jaeger.sh`, started by the tests when `FNMILL_TEST_JAEGER_*` are not set).

use fnmill_testkit::amqp_common;
use fnmill_testkit::common;
use fnmill_testkit::kafka_support;
use fnmill_testkit::observe_support;

use std::path::Path;
use std::time::Duration;

use common::{count_lines, fnmill, guest, headers, read_lines, wait_until};
use fnmill_connector_kafka::rdkafka;
use observe_support::{
    Expected, check_event_trace, free_port, hex_id, jaeger, one, parse_traceparent, rss,
    send_root_span, trace, traceparent,
};
use rdkafka::message::{Header as KafkaHeader, OwnedHeaders};
use rdkafka::producer::Producer;
use serde_json::json;

const STATEMENT: &str = "select $1::bigint as n";

fn pg_url() -> String {
    std::env::var("FNMILL_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// The TOML of the function `f` (the `sql-query` guest running [`STATEMENT`] on data source
/// `db`) and of that data source.
fn sql_function() -> String {
    format!(
        r#"
[data_sources.db]
kind = "postgres"
url_env = "FNMILL_TEST_PG_URL"
pool_size = 2

[functions.f]
component = "{component}"
data_sources = ["db"]
config = {{ statement = "{STATEMENT}" }}
"#,
        component = guest("sql-query").display()
    )
}

/// `[telemetry]` exporting to the test Jaeger as `service` over `protocol`.
fn telemetry(service: &str, protocol: &str, log_format: &str) -> String {
    let endpoint = match protocol {
        "grpc" => &jaeger().grpc,
        _ => &jaeger().http,
    };
    format!(
        "[telemetry]\nservice_name = \"{service}\"\nlog_format = \"{log_format}\"\n\
         [telemetry.traces]\nendpoint = \"{endpoint}\"\nprotocol = \"{protocol}\"\n"
    )
}

fn run_file_route(dir: &Path, telemetry: &str, events: &[serde_json::Value]) -> String {
    let text: String = events.iter().map(|e| format!("{e}\n")).collect();
    std::fs::write(dir.join("in.jsonl"), text).unwrap();
    let config = dir.join("fnmill.toml");
    std::fs::write(
        &config,
        format!(
            r#"{telemetry}
[runtime]
compute_threads = 2

[sources.in]
kind = "file"
path = "in.jsonl"

[sinks.out]
kind = "file"
path = "out.jsonl"

[sinks.dead]
kind = "file"
path = "dead.jsonl"
{function}
[[routes]]
source = "in"
function = "f"
destinations = {{ out = "out" }}
dead_letter = "dead"
"#,
            function = sql_function()
        ),
    )
    .unwrap();
    let out = fnmill()
        .args(["run", "-c"])
        .arg(&config)
        .env("FNMILL_TEST_PG_URL", pg_url())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "fnmill run failed:\n{stderr}");
    stderr
}

/// JSON Lines → function with SQL → JSON Lines, spans over OTLP/HTTP: the whole trace of a
/// good event, the dead letter's place in its own trace, a new root for a malformed
/// `traceparent`, and JSON log lines with the trace ids.
#[test]
fn file_source_trace_through_function_sql_and_outputs() {
    let service = format!("fnmill-test-{}", hex_id(8));
    let (good, good_root) = (hex_id(32), hex_id(16));
    let (bad, bad_root) = (hex_id(32), hex_id(16));
    send_root_span("test-producer", &good, &good_root);
    send_root_span("test-producer", &bad, &bad_root);
    let dir = tempfile::tempdir().unwrap();
    let stderr = run_file_route(
        dir.path(),
        &telemetry(&service, "http/protobuf", "json"),
        &[
            json!({"id": "good", "key": "a", "payload": [7], "headers": {"traceparent": traceparent(&good, &good_root)}}),
            // Not a bigint: the function fails `fatal` and the event is dead-lettered.
            json!({"id": "bad", "key": "b", "payload": ["x"], "headers": {"traceparent": traceparent(&bad, &bad_root)}}),
            json!({"id": "malformed", "key": "c", "payload": [9], "headers": {"traceparent": "00-not-a-trace-01"}}),
        ],
    );

    let out = read_lines(&dir.path().join("out.jsonl"));
    assert_eq!(out.len(), 2, "{out:?}");
    let output_of = |n: i64| {
        out.iter()
            .find(|l| l["payload"]["rows"][0][0] == n)
            .unwrap_or_else(|| panic!("no output for {n}: {out:?}"))
    };
    let good_out = headers(output_of(7))["traceparent"].clone();
    check_event_trace(&Expected {
        trace_id: &good,
        root: &good_root,
        service: &service,
        system: "file",
        source_destination: &dir.path().join("in.jsonl").display().to_string(),
        output_destination: &dir.path().join("out.jsonl").display().to_string(),
        statement: STATEMENT,
        output_traceparent: &good_out,
    });

    // The dead letter continues its event's trace through a producer span of its own.
    let dead = read_lines(&dir.path().join("dead.jsonl"));
    assert_eq!(dead.len(), 1, "{dead:?}");
    let (dead_trace, dead_span) = parse_traceparent(&headers(&dead[0])["traceparent"]);
    assert_eq!(dead_trace, bad);
    // root, consumer, call, SQL, dead letter
    let spans = trace(&bad, 5);
    let consumer = one(&spans, "consumer span", |s| s.kind() == "consumer");
    assert_eq!(consumer.parent.as_deref(), Some(bad_root.as_str()));
    assert_eq!(consumer.tag("fnmill.outcome"), "dead-lettered");
    assert_eq!(consumer.tag("error.type"), "fatal");
    let call = one(&spans, "function span", |s| s.name == "call f");
    assert_eq!(call.tag("fnmill.function.outcome"), "fatal");
    let producer = one(&spans, "dead letter span", |s| {
        s.kind() == "producer" && s.service == service
    });
    assert_eq!(producer.span_id, dead_span);
    assert_eq!(producer.tag("fnmill.dead_letter"), true);
    assert_eq!(producer.parent.as_deref(), Some(consumer.span_id.as_str()));

    // A malformed traceparent: processed normally, in a trace that starts at fnmill.
    let (new_trace, _) = parse_traceparent(&headers(output_of(9))["traceparent"]);
    let spans = trace(&new_trace, 4);
    let consumer = one(&spans, "consumer span", |s| s.kind() == "consumer");
    assert_eq!(consumer.parent, None, "a new root: {spans:#?}");
    assert_eq!(consumer.tag("fnmill.traceparent.invalid"), true);
    assert_eq!(consumer.tag("fnmill.outcome"), "done");

    // Log lines of a traced event carry its ids, as top-level JSON fields.
    let failed: Vec<serde_json::Value> = stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| {
            l["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("Event failed"))
        })
        .collect();
    assert_eq!(failed.len(), 1, "{stderr}");
    assert_eq!(failed[0]["trace_id"], bad.as_str(), "{stderr}");
    assert_eq!(failed[0]["span_id"], consumer_span_of(&bad), "{stderr}");
}

/// `sample_ratio = 0`: an event whose trace is not sampled is processed as any other and passes
/// its trace on — its output's `traceparent` names the incoming trace, or a new one, flagged not
/// sampled — and nothing of it reaches Jaeger; an event arriving in a sampled trace is still
/// recorded whole (the sampler follows the parent).
#[test]
fn an_unsampled_trace_is_passed_on_and_not_recorded() {
    let service = format!("fnmill-test-{}", hex_id(8));
    let (sampled, sampled_root) = (hex_id(32), hex_id(16));
    let (unsampled, unsampled_root) = (hex_id(32), hex_id(16));
    send_root_span("test-producer", &sampled, &sampled_root);
    let dir = tempfile::tempdir().unwrap();
    let telemetry = format!(
        "{}sample_ratio = 0.0\n",
        telemetry(&service, "http/protobuf", "text")
    );
    run_file_route(
        dir.path(),
        &telemetry,
        &[
            json!({"id": "sampled", "key": "a", "payload": [1], "headers": {"traceparent": traceparent(&sampled, &sampled_root)}}),
            json!({"id": "unsampled", "key": "b", "payload": [2], "headers": {"traceparent": format!("00-{unsampled}-{unsampled_root}-00")}}),
            json!({"id": "no-trace", "key": "c", "payload": [3]}),
        ],
    );

    let out = read_lines(&dir.path().join("out.jsonl"));
    assert_eq!(out.len(), 3, "{out:?}");
    let traceparent_of = |n: i64| -> String {
        let line = out
            .iter()
            .find(|l| l["payload"]["rows"][0][0] == n)
            .unwrap_or_else(|| panic!("no output for {n}: {out:?}"));
        headers(line)
            .remove("traceparent")
            .unwrap_or_else(|| panic!("no traceparent on the output of {n}: {line}"))
    };
    let flags = |tp: &str| tp.rsplit('-').next().unwrap().to_string();
    // The sampled event is recorded whole: root, consumer, call, SQL, producer.
    let sampled_out = traceparent_of(1);
    assert_eq!(parse_traceparent(&sampled_out).0, sampled);
    assert_eq!(flags(&sampled_out), "01");
    let spans = trace(&sampled, 5);
    assert!(spans.iter().any(|s| s.name == "call f"), "{spans:#?}");

    // The unsampled ones pass their trace on, flagged so.
    let unsampled_out = traceparent_of(2);
    assert_eq!(parse_traceparent(&unsampled_out).0, unsampled);
    assert_eq!(flags(&unsampled_out), "00");
    let (new_trace, _) = parse_traceparent(&traceparent_of(3));
    assert_ne!(new_trace, "0".repeat(32));
    assert_eq!(flags(&traceparent_of(3)), "00");
    // fnmill flushed its spans before it exited and Jaeger has stored the sampled trace's, so
    // any span of the others would be there too.
    for id in [&unsampled, &new_trace] {
        let spans = trace(id, 0);
        assert!(spans.is_empty(), "trace {id} was not sampled: {spans:#?}");
    }
}

/// `keyvalue` calls through a Redis bucket, from a JSON Lines file with no `traceparent`: the
/// trace starts at fnmill; each call is a client span under the function's span, named after
/// the operation and the bucket, and no span of the call says the key or the value. With fuel
/// metering on, the function's span says how much it used.
#[test]
fn keyvalue_calls_are_spans_without_keys_or_values() {
    let service = format!("fnmill-test-{}", hex_id(8));
    let (id, payload) = (
        format!("kv-key-{}", hex_id(12)),
        format!("kv-value-{}", hex_id(12)),
    );
    let redis =
        std::env::var("FNMILL_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("in.jsonl"),
        format!("{}\n", json!({"id": id, "key": "k", "payload": payload})),
    )
    .unwrap();
    let config = dir.path().join("fnmill.toml");
    std::fs::write(
        &config,
        format!(
            r#"{telemetry}
[sources.in]
kind = "file"
path = "in.jsonl"

[sinks.out]
kind = "file"
path = "out.jsonl"

[data_sources.kv]
kind = "redis"
url = "{redis}"
buckets = {{ cache = {{ prefix = "fnmill-test-trace-{prefix}:" }} }}

[functions.f]
component = "{component}"
buckets = ["cache"]
fuel = 100000000

[[routes]]
source = "in"
function = "f"
destinations = {{ out = "out" }}
"#,
            telemetry = telemetry(&service, "grpc", "text"),
            prefix = hex_id(8),
            component = guest("kv-probe").display(),
        ),
    )
    .unwrap();
    let out = fnmill().args(["run", "-c"]).arg(&config).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "fnmill run failed:\n{stderr}");
    let out = read_lines(&dir.path().join("out.jsonl"));
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0]["payload"]["got_back"], true, "{out:?}");
    let (trace_id, _) = parse_traceparent(&headers(&out[0])["traceparent"]);

    // consumer, call, producer and at least ten keyvalue calls (see the guest's contract)
    let spans = trace(&trace_id, 13);
    let consumer = one(&spans, "consumer span", |s| s.kind() == "consumer");
    assert_eq!(
        consumer.parent, None,
        "the trace starts at fnmill: {spans:#?}"
    );
    let call = one(&spans, "function span", |s| s.name == "call f");
    assert!(
        call.tag("fnmill.function.fuel_used").as_i64().unwrap_or(0) > 0,
        "{call:?}"
    );
    let kv: Vec<_> = spans.iter().filter(|s| s.kind() == "client").collect();
    let operations: std::collections::BTreeSet<&str> = kv
        .iter()
        .map(|s| s.tag("db.operation.name").as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        operations,
        ["DEL", "EXISTS", "GET", "INCRBY", "SCAN", "SET"].into(),
        "{kv:#?}"
    );
    for span in &kv {
        assert_eq!(
            span.parent.as_deref(),
            Some(call.span_id.as_str()),
            "{span:?}"
        );
        assert_eq!(span.tag("db.system.name"), "redis", "{span:?}");
        assert_eq!(span.tag("fnmill.bucket"), "cache", "{span:?}");
        assert_eq!(
            span.name,
            format!("{} cache", span.tag("db.operation.name").as_str().unwrap()),
        );
    }
    // Neither the key (the event id) nor the value shows on the call or its children; the
    // consumer span names the event by its id, as the messaging conventions say.
    for span in kv.iter().copied().chain([call]) {
        let text = format!("{} {:?}", span.name, span.tags);
        assert!(!text.contains(&id) && !text.contains(&payload), "{span:?}");
    }
}

fn consumer_span_of(trace_id: &str) -> String {
    let spans = trace(trace_id, 1);
    one(&spans, "consumer span", |s| s.kind() == "consumer")
        .span_id
        .clone()
}

/// Kafka → function with SQL → Kafka, spans over OTLP/gRPC: the trace continues through the
/// record headers, with Kafka's attributes on the spans.
#[test]
fn kafka_trace_continues_through_fnmill() {
    let brokers = kafka_support::bootstrap();
    let service = format!("fnmill-test-{}", hex_id(8));
    let dir = tempfile::tempdir().unwrap();
    let route = kafka_support::KafkaRoute::new(dir.path(), &brokers, guest("sql-query"));
    route.create_topics(1);
    let (trace_id, root) = (hex_id(32), hex_id(16));
    send_root_span("test-producer", &trace_id, &root);
    let producer = kafka_support::producer(&brokers);
    kafka_support::send(
        &producer,
        &route.input,
        "k1",
        b"[42]",
        Some(OwnedHeaders::new().insert(KafkaHeader {
            key: "traceparent",
            value: Some(&traceparent(&trace_id, &root)),
        })),
    );
    producer.flush(Duration::from_secs(30)).unwrap();

    let config = route.write("fnmill");
    // The function and its data source replace the route's plain one.
    let text = std::fs::read_to_string(&config).unwrap().replace(
        &format!(
            "[functions.f]\ncomponent = \"{}\"\n",
            guest("sql-query").display()
        ),
        &sql_function(),
    );
    std::fs::write(
        &config,
        format!("{}\n{text}", telemetry(&service, "grpc", "text")),
    )
    .unwrap();
    let mut run = kafka_support::Running::start_with_env(
        &config,
        dir.path().join("fnmill.log"),
        &[("FNMILL_TEST_PG_URL", &pg_url())],
    );
    wait_until(Duration::from_secs(60), "the output record", || {
        kafka_support::count(&brokers, &route.output) >= 1
    });
    run.terminate(Duration::from_secs(30));
    let out = kafka_support::read_topic(&brokers, &route.output);
    assert_eq!(out.len(), 1);
    let out_traceparent = String::from_utf8(out[0].headers["traceparent"].clone()).unwrap();
    let spans = check_event_trace(&Expected {
        trace_id: &trace_id,
        root: &root,
        service: &service,
        system: "kafka",
        source_destination: &route.input,
        output_destination: &route.output,
        statement: STATEMENT,
        output_traceparent: &out_traceparent,
    });
    let consumer = one(&spans, "consumer span", |s| s.kind() == "consumer");
    assert_eq!(
        consumer.tag("messaging.consumer.group.name"),
        route.group.as_str()
    );
    assert_eq!(consumer.tag("messaging.destination.partition.id"), "0");
    assert_eq!(consumer.tag("messaging.kafka.offset"), 0);
    assert_eq!(consumer.tag("messaging.kafka.message.key"), "k1");
    assert_eq!(
        consumer.tag("messaging.message.id"),
        format!("{}/0/0", route.input).as_str()
    );
}

/// RabbitMQ → function with SQL → RabbitMQ, spans over OTLP/HTTP: the trace continues through
/// the AMQP headers, with RabbitMQ's attributes on the spans.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_trace_continues_through_fnmill() {
    let broker = amqp_common::Broker::new().await;
    let (input, output) = (
        amqp_common::unique("trace-in"),
        amqp_common::unique("trace-out"),
    );
    broker.queue(&input).await;
    broker.queue(&output).await;
    let service = format!("fnmill-test-{}", hex_id(8));
    let (trace_id, root) = (hex_id(32), hex_id(16));
    tokio::task::spawn_blocking({
        let (trace_id, root) = (trace_id.clone(), root.clone());
        move || send_root_span("test-producer", &trace_id, &root)
    })
    .await
    .unwrap();
    broker
        .publish(
            &input,
            [amqp_common::Message {
                id: "m1".into(),
                payload: b"[5]".to_vec(),
                headers: vec![
                    ("k".into(), "k1".into()),
                    ("traceparent".into(), traceparent(&trace_id, &root)),
                ],
            }],
        )
        .await;
    let collected = amqp_common::Collector::start(&broker.connection, &output).await;
    let dir = tempfile::tempdir().unwrap();
    let config =
        amqp_common::AmqpRoute::new(&input, &output, None, guest("sql-query")).write(dir.path());
    let text = std::fs::read_to_string(&config).unwrap().replace(
        &format!(
            "[functions.f]\ncomponent = \"{}\"\n",
            guest("sql-query").display()
        ),
        &sql_function(),
    );
    std::fs::write(
        &config,
        format!("{}\n{text}", telemetry(&service, "http/protobuf", "text")),
    )
    .unwrap();
    let mut cmd = fnmill();
    cmd.env("FNMILL_TEST_PG_URL", pg_url());
    let run = amqp_common::Running::start(cmd, &config);
    amqp_common::wait_for(Duration::from_secs(60), "the output message", || {
        !collected.is_empty()
    })
    .await;
    run.stop();
    let out = collected.snapshot();
    assert_eq!(out.len(), 1);
    let out_traceparent = out[0].headers["traceparent"].clone();
    let spans = tokio::task::spawn_blocking(move || {
        check_event_trace(&Expected {
            trace_id: &trace_id,
            root: &root,
            service: &service,
            system: "rabbitmq",
            source_destination: &input,
            output_destination: "amq.default",
            statement: STATEMENT,
            output_traceparent: &out_traceparent,
        })
    })
    .await
    .unwrap();
    let producer = one(&spans, "producer span", |s| {
        s.kind() == "producer" && s.tag("messaging.system") == "rabbitmq"
    });
    assert_eq!(
        producer.tag("messaging.rabbitmq.destination.routing_key"),
        output.as_str()
    );
    let consumer = one(&spans, "consumer span", |s| s.kind() == "consumer");
    assert_eq!(consumer.tag("messaging.message.id"), "m1");
    assert!(
        consumer
            .tag("messaging.rabbitmq.message.delivery_tag")
            .is_number()
    );
    broker.cleanup().await;
}

/// A collector that does not answer (a closed port), over each protocol: every event is still
/// processed, the log says so once, and the process does not grow while 40,000 traced events
/// go through (the span queue is bounded; what cannot be sent is dropped).
#[test]
fn unreachable_collector_holds_nothing_up() {
    for protocol in ["grpc", "http/protobuf"] {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let route = common::FileRoute::new(dir.path(), guest("echo"));
        let config = route.write();
        let text = std::fs::read_to_string(&config)
            .unwrap()
            .replace("path = \"in.jsonl\"", "path = \"in.jsonl\"\nfollow = true");
        std::fs::write(
            &config,
            format!(
                "[telemetry.traces]\nendpoint = \"http://127.0.0.1:{port}\"\nprotocol = \"{protocol}\"\n\
                 timeout = \"1s\"\n{text}"
            ),
        )
        .unwrap();
        let batch = |from: usize| -> String {
            (from..from + 20_000)
                .map(|i| {
                    format!(
                        "{}\n",
                        json!({"id": format!("e{i}"), "key": format!("k{}", i % 100), "payload": {"i": i},
                               "headers": {"traceparent": traceparent(&hex_id(32), &hex_id(16))}})
                    )
                })
                .collect()
        };
        std::fs::write(route.input(), batch(0)).unwrap();
        let log = dir.path().join("fnmill.log");
        let mut run = kafka_support::Running::start(&config, log.clone());
        wait_until(
            Duration::from_secs(120),
            "the first 20,000 events out",
            || count_lines(&route.output()) == 20_000,
        );
        let first = rss(run.child.id());
        let mut input = std::fs::OpenOptions::new()
            .append(true)
            .open(route.input())
            .unwrap();
        std::io::Write::write_all(&mut input, batch(20_000).as_bytes()).unwrap();
        wait_until(Duration::from_secs(120), "all 40,000 events out", || {
            count_lines(&route.output()) == 40_000
        });
        let second = rss(run.child.id());
        wait_until(Duration::from_secs(30), "the export warning", || {
            run.log_text().contains("Cannot export spans over OTLP")
        });
        run.terminate(Duration::from_secs(30));
        let text = run.log_text();
        assert_eq!(
            text.matches("Cannot export spans over OTLP").count(),
            1,
            "{protocol}: {text}"
        );
        // 80,000 more spans (two per event at least) would be tens of MiB if they were kept.
        assert!(
            second < first + 24 * 1024 * 1024,
            "{protocol}: resident memory grew from {first} to {second} bytes over 20,000 events"
        );
        assert_eq!(count_lines(&route.dead()), 0);
    }
}
