//! Metrics of `fnmill run`, read as Prometheus reads them: `/metrics` parsed with a Prometheus
//! text-format parser has every documented metric with its type and labels, and counts what the
//! test sent (events done, dead letters by kind, outputs, calls, pool waits); the Kafka consumer
//! lag grows while records wait and returns to 0; the AMQP unacked count follows what fnmill
//! holds; the same metrics are pushed over OTLP/HTTP to a collector; bad telemetry settings are
//! refused naming the key or variable.
//!
//! Needs PostgreSQL, RabbitMQ (`scripts/services.sh`) and Kafka (`scripts/kafka.sh`).

use fnmill_testkit::amqp_common;
use fnmill_testkit::common;
use fnmill_testkit::kafka_support;
use fnmill_testkit::observe_support;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{count_lines, fnmill, guest, wait_until};
use observe_support::{free_port, scrape, value};
use prometheus_parse::Value;
use serde_json::json;

fn pg_url() -> String {
    std::env::var("FNMILL_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// Every metric the README documents: name, type, and the labels each series has.
const DOCUMENTED: &[(&str, &str, &[&str])] = &[
    ("fnmill_events_received_total", "counter", &["route"]),
    ("fnmill_events_done_total", "counter", &["route"]),
    (
        "fnmill_events_dead_lettered_total",
        "counter",
        &["route", "error_type"],
    ),
    ("fnmill_retries_total", "counter", &["route"]),
    ("fnmill_sink_retries_total", "counter", &["route"]),
    ("fnmill_events_abandoned_total", "counter", &["route"]),
    ("fnmill_events_in_flight", "gauge", &["route"]),
    ("fnmill_event_duration_seconds", "histogram", &["route"]),
    ("fnmill_event_latency_seconds", "histogram", &["route"]),
    (
        "fnmill_function_duration_seconds",
        "histogram",
        &["route", "function"],
    ),
    (
        "fnmill_function_instantiation_duration_seconds",
        "histogram",
        &["route", "function"],
    ),
    (
        "fnmill_function_fuel_consumed_total",
        "counter",
        &["route", "function"],
    ),
    ("fnmill_outputs_total", "counter", &["route", "destination"]),
    (
        "fnmill_output_bytes_total",
        "counter",
        &["route", "destination"],
    ),
    ("fnmill_function_instances", "gauge", &["function"]),
    ("fnmill_function_memory_peak_bytes", "gauge", &["function"]),
    ("fnmill_source_ready", "gauge", &["source"]),
    (
        "db_client_connection_count",
        "gauge",
        &[
            "db_client_connection_pool_name",
            "db_system_name",
            "db_client_connection_state",
        ],
    ),
    (
        "db_client_connection_max",
        "gauge",
        &["db_client_connection_pool_name", "db_system_name"],
    ),
    (
        "db_client_connection_pending_requests",
        "gauge",
        &["db_client_connection_pool_name", "db_system_name"],
    ),
    (
        "db_client_connection_wait_time_seconds",
        "histogram",
        &["db_client_connection_pool_name", "db_system_name"],
    ),
    (
        "fnmill_data_source_call_duration_seconds",
        "histogram",
        &["data_source", "via", "outcome"],
    ),
];

/// The metrics the README's table lists (the first name of each row of the table under
/// "### Metrics").
fn readme_metrics() -> BTreeSet<String> {
    let readme = std::fs::read_to_string(common::root().join("README.md")).unwrap();
    let section = readme
        .split("### Metrics")
        .nth(1)
        .expect("README has a Metrics section");
    let table = section.split("**Example alerts**").next().unwrap();
    table
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .map(str::to_string)
        .collect()
}

#[test]
fn the_readme_documents_exactly_these_metrics() {
    let documented: BTreeSet<String> = DOCUMENTED.iter().map(|(n, _, _)| n.to_string()).collect();
    let mut tested = documented.clone();
    // Need a Kafka or an AMQP source; tested in their own tests below.
    tested.insert("fnmill_kafka_consumer_lag".into());
    tested.insert("fnmill_amqp_unacked_messages".into());
    // Need an IO tier (`fnmill run --role compute|io`); tested in tests/iotier.rs.
    tested.insert("fnmill_data_source_ready".into());
    tested.insert("fnmill_data_source_refused_total".into());
    assert_eq!(readme_metrics(), tested);
}

fn type_of(v: &Value) -> &'static str {
    match v {
        Value::Counter(_) => "counter",
        Value::Gauge(_) => "gauge",
        Value::Histogram(_) => "histogram",
        Value::Summary(_) => "summary",
        Value::Untyped(_) => "untyped",
    }
}

/// A JSON Lines route through the `sql-query` guest (with fuel metering) with an admin port:
/// good events, events whose parameter PostgreSQL refuses (`fatal`) and lines that are not
/// events (`decode`). Every documented metric is there with its type and labels, and the
/// counts are what was sent.
#[test]
fn metrics_have_their_types_labels_and_counts() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut route = common::FileRoute::new(dir.path(), guest("sql-query"));
    route.runtime_extra = format!("[admin]\nlisten = \"127.0.0.1:{port}\"\n");
    route.function_extra =
        "data_sources = [\"db\"]\nfuel = 100000000\nconfig = { statement = \"select $1::bigint as n\" }\n"
            .into();
    route.route_extra =
        "\n[data_sources.db]\nkind = \"postgres\"\nurl_env = \"FNMILL_TEST_PG_URL\"\npool_size = 3\n".into();
    let config = route.write();
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("path = \"in.jsonl\"", "path = \"in.jsonl\"\nfollow = true");
    std::fs::write(&config, text).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let mut lines = String::new();
    for i in 0..10 {
        lines.push_str(&format!(
            "{}\n",
            json!({"id": format!("good{i}"), "key": format!("k{i}"), "payload": [i], "timestamp_ms": now})
        ));
    }
    for i in 0..3 {
        lines.push_str(&format!(
            "{}\n",
            json!({"id": format!("bad{i}"), "key": format!("b{i}"), "payload": ["x"], "timestamp_ms": now})
        ));
    }
    lines.push_str("not an event\n{\"id\": 5, \"payload\": 1}\n");
    std::fs::write(route.input(), lines).unwrap();
    let mut run = kafka_support::Running::start_with_env(
        &config,
        dir.path().join("fnmill.log"),
        &[("FNMILL_TEST_PG_URL", &pg_url())],
    );
    wait_until(Duration::from_secs(60), "every event settled", || {
        count_lines(&route.output()) == 10 && count_lines(&route.dead()) == 5
    });
    let mut metrics = None;
    wait_until(
        Duration::from_secs(30),
        "the settled events counted",
        || {
            metrics = scrape(port);
            metrics
                .as_ref()
                .and_then(|m| value(m, "fnmill_events_done_total", &[]))
                == Some(10.0)
        },
    );
    let m = metrics.unwrap();
    run.terminate(Duration::from_secs(30));

    for (name, kind, labels) in DOCUMENTED {
        let samples: Vec<_> = m.samples.iter().filter(|s| s.metric == *name).collect();
        assert!(!samples.is_empty(), "{name} is missing:\n{:#?}", m.samples);
        for s in samples {
            assert_eq!(type_of(&s.value), *kind, "{name}");
            let have: BTreeSet<&str> = s.labels.keys().map(String::as_str).collect();
            let want: BTreeSet<&str> = labels.iter().copied().collect();
            assert_eq!(have, want, "{name}: labels");
        }
        assert!(m.docs.contains_key(*name), "{name} has no HELP");
    }

    let route_l = [("route", "in-f")];
    let fnl = [("route", "in-f"), ("function", "f")];
    assert_eq!(
        value(&m, "fnmill_events_received_total", &route_l),
        Some(15.0)
    );
    assert_eq!(value(&m, "fnmill_events_done_total", &route_l), Some(10.0));
    assert_eq!(value(&m, "fnmill_retries_total", &route_l), Some(0.0));
    assert_eq!(value(&m, "fnmill_sink_retries_total", &route_l), Some(0.0));
    assert_eq!(
        value(&m, "fnmill_events_abandoned_total", &route_l),
        Some(0.0)
    );
    assert_eq!(value(&m, "fnmill_events_in_flight", &route_l), Some(0.0));
    for kind in [
        "retryable",
        "fatal",
        "trap",
        "timeout",
        "fuel",
        "memory",
        "output-limit",
        "instantiation",
        "decode",
        "host",
    ] {
        let expected = match kind {
            "fatal" => 3.0,
            "decode" => 2.0,
            _ => 0.0,
        };
        assert_eq!(
            value(
                &m,
                "fnmill_events_dead_lettered_total",
                &[("route", "in-f"), ("error_type", kind)]
            ),
            Some(expected),
            "dead letters of kind {kind}"
        );
    }
    // Histograms count what went through them: every event settled; 13 calls (the lines that
    // are not events never reach the function); one connection wait per statement.
    assert_eq!(
        value(&m, "fnmill_event_duration_seconds", &route_l),
        Some(15.0)
    );
    assert_eq!(
        value(&m, "fnmill_event_duration_seconds_count", &route_l),
        Some(15.0)
    );
    assert_eq!(
        value(&m, "fnmill_event_latency_seconds", &route_l),
        Some(13.0)
    );
    assert_eq!(
        value(&m, "fnmill_function_duration_seconds", &fnl),
        Some(13.0)
    );
    assert_eq!(
        value(&m, "fnmill_function_instantiation_duration_seconds", &fnl),
        Some(13.0)
    );
    assert!(value(&m, "fnmill_function_duration_seconds_sum", &fnl).unwrap() > 0.0);
    assert!(value(&m, "fnmill_function_fuel_consumed_total", &fnl).unwrap() > 0.0);
    let wait = [("db_client_connection_pool_name", "db")];
    assert_eq!(
        value(&m, "db_client_connection_wait_time_seconds", &wait),
        Some(13.0)
    );
    assert_eq!(value(&m, "db_client_connection_max", &wait), Some(3.0));
    assert_eq!(
        value(&m, "db_client_connection_pending_requests", &wait),
        Some(0.0)
    );
    let open = value(
        &m,
        "db_client_connection_count",
        &[
            ("db_client_connection_pool_name", "db"),
            ("db_client_connection_state", "idle"),
        ],
    )
    .unwrap()
        + value(
            &m,
            "db_client_connection_count",
            &[
                ("db_client_connection_pool_name", "db"),
                ("db_client_connection_state", "used"),
            ],
        )
        .unwrap();
    assert!((1.0..=3.0).contains(&open), "{open} connections open");
    // Every statement's call through the in-process pool, by outcome: the good ones, and the
    // three whose parameter does not fit.
    let calls = |outcome| {
        value(
            &m,
            "fnmill_data_source_call_duration_seconds",
            &[("data_source", "db"), ("via", "pool"), ("outcome", outcome)],
        )
        .unwrap()
    };
    assert_eq!(calls("ok"), 10.0);
    let failed: f64 = ["unavailable", "database", "invalid", "not-granted"]
        .into_iter()
        .map(calls)
        .sum();
    assert_eq!(failed, 3.0);
    let out = [("route", "in-f"), ("destination", "out")];
    assert_eq!(value(&m, "fnmill_outputs_total", &out), Some(10.0));
    let bytes = value(&m, "fnmill_output_bytes_total", &out).unwrap();
    assert!(
        bytes >= 10.0 * "{\"columns\":[\"n\"],\"rows\":[[0]]}".len() as f64,
        "{bytes}"
    );
    assert_eq!(
        value(&m, "fnmill_function_instances", &[("function", "f")]),
        Some(0.0)
    );
    assert!(
        value(
            &m,
            "fnmill_function_memory_peak_bytes",
            &[("function", "f")]
        )
        .unwrap()
            >= 65536.0
    );
    assert_eq!(
        value(&m, "fnmill_source_ready", &[("source", "in")]),
        Some(1.0)
    );
    // Buckets are cumulative and end with every observation.
    let hist = m
        .samples
        .iter()
        .find(|s| s.metric == "fnmill_event_duration_seconds")
        .unwrap();
    let Value::Histogram(buckets) = &hist.value else {
        unreachable!()
    };
    assert!(
        buckets
            .windows(2)
            .all(|w| w[0].count <= w[1].count && w[0].less_than < w[1].less_than)
    );
    assert_eq!(buckets.last().unwrap().count, 15.0);
}

/// The Kafka consumer lag: 0 once fnmill caught up; growing while records arrive faster than a
/// slow function with a small window takes them (the source has paused its partition, its
/// pipeline full); back to 0 once the backlog is worked off. Each round adds 40 records and
/// expects the lag 20 higher: at 250 ms per event, two at a time, writing a round may take up to
/// 2.5 s (a fresh producer on a loaded machine) before the route works off the other 20.
#[test]
fn kafka_consumer_lag_grows_while_the_route_is_paused_and_returns_to_zero() {
    let brokers = kafka_support::bootstrap();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut route = kafka_support::KafkaRoute::new(dir.path(), &brokers, guest("sleeper"));
    route.create_topics(1);
    route.runtime_extra = format!("[admin]\nlisten = \"127.0.0.1:{port}\"\n");
    route.source_properties = ", \"statistics.interval.ms\" = 200".into();
    route.route_extra = "max_in_flight = 2".into();
    let config = route.write("fnmill");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("[[routes]]", "config = { ms = \"250\" }\n\n[[routes]]");
    std::fs::write(&config, text).unwrap();
    let lag = || {
        scrape(port).and_then(|m| {
            value(
                &m,
                "fnmill_kafka_consumer_lag",
                &[
                    ("source", "in"),
                    ("topic", route.input.as_str()),
                    ("partition", "0"),
                ],
            )
        })
    };

    let mut run = kafka_support::Running::start(&config, dir.path().join("fnmill.log"));
    kafka_support::produce_events(&brokers, &route.input, 0..10, 10);
    wait_until(Duration::from_secs(60), "the lag reported as 0", || {
        lag() == Some(0.0)
    });

    let mut peak = 0.0;
    for round in 1..=3u64 {
        kafka_support::produce_events(&brokers, &route.input, round * 40 - 30..round * 40 + 10, 40);
        wait_until(
            Duration::from_secs(30),
            &format!("the lag to grow past {peak} (round {round})"),
            || lag().is_some_and(|l| l >= peak + 20.0),
        );
        peak = lag().unwrap_or(peak).max(peak);
    }
    let mut seen = Vec::new();
    wait_until(Duration::from_secs(60), "the lag back to 0", || {
        let l = lag();
        seen.extend(l);
        l == Some(0.0)
    });
    run.terminate(Duration::from_secs(30));
    assert_eq!(kafka_support::count(&brokers, &route.output), 130);
    // It went down as the backlog was worked off, not in one jump.
    assert!(
        seen.iter().any(|l| *l > 0.0 && *l < peak),
        "lag samples: {seen:?}"
    );
}

/// The AMQP unacked gauge: as many as the prefetch window while a slow function holds them,
/// 0 once everything was acked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_unacked_follows_what_fnmill_holds() {
    let broker = amqp_common::Broker::new().await;
    let (input, output) = (
        amqp_common::unique("unacked-in"),
        amqp_common::unique("unacked-out"),
    );
    broker.queue(&input).await;
    broker.queue(&output).await;
    broker
        .publish(&input, amqp_common::keyed_messages(60, 60))
        .await;
    let collected = amqp_common::Collector::start(&broker.connection, &output).await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut route = amqp_common::AmqpRoute::new(&input, &output, None, guest("sleeper"));
    route.prefetch = 10;
    let config = route.write(dir.path());
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("[[routes]]", "config = { ms = \"200\" }\n\n[[routes]]");
    std::fs::write(
        &config,
        format!("[admin]\nlisten = \"127.0.0.1:{port}\"\n{text}"),
    )
    .unwrap();
    let run = amqp_common::Running::start(fnmill(), &config);
    let unacked = move || {
        scrape(port).and_then(|m| {
            value(
                &m,
                "fnmill_amqp_unacked_messages",
                &[("source", "in"), ("queue", input.as_str())],
            )
        })
    };
    let seen = Arc::new(Mutex::new(Vec::new()));
    {
        let seen = seen.clone();
        let unacked = unacked.clone();
        amqp_common::wait_for(
            Duration::from_secs(60),
            "a full prefetch window unacked",
            move || {
                let v = unacked();
                seen.lock().unwrap().extend(v);
                v == Some(10.0)
            },
        )
        .await;
    }
    amqp_common::wait_for(Duration::from_secs(60), "every message out", || {
        collected.len() == 60
    })
    .await;
    let unacked2 = unacked.clone();
    amqp_common::wait_for(Duration::from_secs(30), "nothing unacked", move || {
        unacked2() == Some(0.0)
    })
    .await;
    run.stop();
    assert!(
        seen.lock().unwrap().iter().all(|v| *v <= 10.0),
        "{:?}",
        seen.lock().unwrap()
    );
    broker.cleanup().await;
}

/// What a fake OTLP collector received: the metric names and the value of
/// `fnmill.events.done` in each request.
#[derive(Default)]
struct Pushed {
    requests: usize,
    names: BTreeSet<String>,
    done: Vec<i64>,
}

impl Pushed {
    fn record(&mut self, body: &[u8]) {
        use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
        use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point};
        use prost::Message;
        let request = ExportMetricsServiceRequest::decode(body).expect("an OTLP metrics request");
        self.requests += 1;
        for m in request
            .resource_metrics
            .iter()
            .flat_map(|r| &r.scope_metrics)
            .flat_map(|s| &s.metrics)
        {
            self.names.insert(m.name.clone());
            if m.name == "fnmill.events.done"
                && let Some(metric::Data::Sum(sum)) = &m.data
                && let Some(number_data_point::Value::AsInt(v)) =
                    sum.data_points.first().and_then(|d| d.value)
            {
                self.done.push(v);
            }
        }
    }
}

/// Serves OTLP/HTTP: `POST /v1/metrics` with a protobuf body, answered 200.
fn http_collector(pushed: Arc<Mutex<Pushed>>) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut data = Vec::new();
            let mut buf = [0u8; 65536];
            // Headers, then exactly Content-Length bytes of body.
            let (head_end, length) = loop {
                let n = stream.read(&mut buf).unwrap_or(0);
                if n == 0 {
                    break (None, 0);
                }
                data.extend_from_slice(&buf[..n]);
                if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&data[..i]).to_ascii_lowercase();
                    assert!(head.starts_with("post /v1/metrics "), "{head}");
                    assert!(
                        head.contains("content-type: application/x-protobuf"),
                        "{head}"
                    );
                    let length = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    break (Some(i + 4), length);
                }
            };
            let Some(start) = head_end else { continue };
            while data.len() < start + length {
                let n = stream.read(&mut buf).unwrap_or(0);
                if n == 0 {
                    break;
                }
                data.extend_from_slice(&buf[..n]);
            }
            pushed.lock().unwrap().record(&data[start..start + length]);
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    port
}

/// Serves OTLP/gRPC's `MetricsService/Export` over HTTP/2, as a collector does: the request is
/// a length-prefixed protobuf message, the answer an empty response and `grpc-status: 0`.
async fn grpc_collector(pushed: Arc<Mutex<Pushed>>) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let pushed = pushed.clone();
            tokio::spawn(async move {
                let Ok(mut connection) = h2::server::handshake(socket).await else {
                    return;
                };
                while let Some(Ok((request, mut respond))) = connection.accept().await {
                    let pushed = pushed.clone();
                    tokio::spawn(async move {
                        assert_eq!(
                            request.uri().path(),
                            "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export"
                        );
                        let mut body = request.into_body();
                        let mut data = Vec::new();
                        while let Some(Ok(chunk)) = body.data().await {
                            let _ = body.flow_control().release_capacity(chunk.len());
                            data.extend_from_slice(&chunk);
                        }
                        // One uncompressed message: a zero flag, its length, the message.
                        assert_eq!(data[0], 0);
                        let length = u32::from_be_bytes(data[1..5].try_into().unwrap()) as usize;
                        pushed.lock().unwrap().record(&data[5..5 + length]);
                        let response = http::Response::builder()
                            .status(200)
                            .header("content-type", "application/grpc")
                            .body(())
                            .unwrap();
                        let mut send = respond.send_response(response, false).unwrap();
                        // An empty ExportMetricsServiceResponse.
                        send.send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]), false)
                            .unwrap();
                        let mut trailers = http::HeaderMap::new();
                        trailers.insert("grpc-status", "0".parse().unwrap());
                        send.send_trailers(trailers).unwrap();
                    });
                }
            });
        }
    });
    port
}

/// `[telemetry.metrics]` pushes the same metrics over OTLP — HTTP/protobuf and gRPC — every
/// interval, and once more at shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_pushed_over_otlp() {
    for protocol in ["http/protobuf", "grpc"] {
        let pushed = Arc::new(Mutex::new(Pushed::default()));
        let port = match protocol {
            "grpc" => grpc_collector(pushed.clone()).await,
            _ => http_collector(pushed.clone()),
        };
        let dir = tempfile::tempdir().unwrap();
        let route = common::FileRoute::new(dir.path(), guest("echo"));
        let config = route.write();
        let text = std::fs::read_to_string(&config).unwrap();
        std::fs::write(
            &config,
            format!(
                "[telemetry.metrics]\nendpoint = \"http://127.0.0.1:{port}\"\nprotocol = \"{protocol}\"\n\
                 interval = \"200ms\"\n{text}"
            ),
        )
        .unwrap();
        common::write_events(
            &route.input(),
            (0..25).map(|i| (format!("e{i}"), None, json!({"i": i}))),
        );
        tokio::task::spawn_blocking(move || common::run_to_end(&config))
            .await
            .unwrap();
        let p = pushed.lock().unwrap();
        assert!(p.requests >= 1, "{protocol}: nothing was pushed");
        assert_eq!(p.done.last(), Some(&25), "{protocol}: {:?}", p.done);
        for name in [
            "fnmill.events.received",
            "fnmill.events.dead_lettered",
            "fnmill.event.duration",
            "fnmill.function.duration",
            "fnmill.output.size",
            "fnmill.function.instances",
            "fnmill.source.ready",
        ] {
            assert!(
                p.names.contains(name),
                "{protocol}: {name} not pushed: {:?}",
                p.names
            );
        }
    }
}

/// `fnmill check` refuses bad telemetry settings, each naming its config key or `OTEL_*`
/// variable (exit 2), and says where traces and metrics go when they are right.
#[test]
fn check_names_bad_telemetry_settings() {
    let dir = tempfile::tempdir().unwrap();
    let route = common::FileRoute::new(dir.path(), guest("echo"));
    let config = route.write();
    let base = std::fs::read_to_string(&config).unwrap();
    std::fs::write(route.input(), "").unwrap();
    let check = |extra: &str, env: &[(&str, &str)]| {
        std::fs::write(&config, format!("{extra}\n{base}")).unwrap();
        fnmill()
            .args(["check", "-c"])
            .arg(&config)
            .envs(env.iter().copied())
            .output()
            .unwrap()
    };
    let out = check(
        "[telemetry.traces]\nendpoint = \"collector:4317\"\nsample_ratio = 2.0\n",
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("telemetry.traces.endpoint: `collector:4317` is not"),
        "{stderr}"
    );
    assert!(stderr.contains("telemetry.traces.sample_ratio"), "{stderr}");

    let out = check(
        "",
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("OTEL_EXPORTER_OTLP_PROTOCOL: `http/json` is not supported"),
        "{stderr}"
    );

    let out = check(
        "[telemetry.traces]\nendpoint = \"http://collector:4317\"\nprotocol = \"grpc\"\nsample_ratio = 0.5\n",
        &[(
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
            "http://collector:4318/v1/metrics",
        )],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(
            "telemetry: service `fnmill`: traces OTLP grpc to http://collector:4317 (sample ratio 0.5); \
             metrics OTLP http/protobuf to http://collector:4318/v1/metrics every 60s"
        ),
        "{stdout}"
    );
}
