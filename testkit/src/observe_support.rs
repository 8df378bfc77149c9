//! Helpers of the observability tests: the Jaeger of the test run (`scripts/jaeger.sh`, or
//! `FNMILL_TEST_JAEGER_*`), a producer's root span sent to it over OTLP, traces read back from
//! its query API, a plain HTTP client, and `/metrics` scraped and parsed as Prometheus does.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::common;

/// Where the test run's Jaeger listens.
#[derive(Clone, Debug)]
pub struct Jaeger {
    /// OTLP over gRPC, e.g. `http://127.0.0.1:4317`.
    pub grpc: String,
    /// OTLP over HTTP, e.g. `http://127.0.0.1:4318`.
    pub http: String,
    /// The query API, e.g. `http://127.0.0.1:16686`.
    pub query: String,
}

/// The Jaeger of this test run: the `FNMILL_TEST_JAEGER_*` variables (what `scripts/test.sh`
/// exports), or one started (once per test process) by `scripts/jaeger.sh start`, which leaves
/// a running one alone.
pub fn jaeger() -> &'static Jaeger {
    static JAEGER: OnceLock<Jaeger> = OnceLock::new();
    JAEGER.get_or_init(|| {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        if let (Some(grpc), Some(http), Some(query)) = (
            var("FNMILL_TEST_JAEGER_OTLP_GRPC_ENDPOINT"),
            var("FNMILL_TEST_JAEGER_OTLP_HTTP_ENDPOINT"),
            var("FNMILL_TEST_JAEGER_QUERY_URL"),
        ) {
            return Jaeger { grpc, http, query };
        }
        let script = common::root().join("scripts").join("jaeger.sh");
        let status = Command::new(&script)
            .arg("start")
            .status()
            .expect("running scripts/jaeger.sh");
        assert!(status.success(), "scripts/jaeger.sh start failed");
        let env = Command::new(&script).arg("env").output().unwrap();
        let mut vars = BTreeMap::new();
        for line in String::from_utf8_lossy(&env.stdout).lines() {
            if let Some((k, v)) = line.trim_start_matches("export ").split_once('=') {
                vars.insert(k.to_string(), v.to_string());
            }
        }
        Jaeger {
            grpc: vars["FNMILL_TEST_JAEGER_OTLP_GRPC_ENDPOINT"].clone(),
            http: vars["FNMILL_TEST_JAEGER_OTLP_HTTP_ENDPOINT"].clone(),
            query: vars["FNMILL_TEST_JAEGER_QUERY_URL"].clone(),
        }
    })
}

/// `len` random lower-case hex digits (never all zeros).
pub fn hex_id(len: usize) -> String {
    loop {
        let id: String = (0..len)
            .map(|_| char::from_digit(fastrand::u32(..16), 16).unwrap())
            .collect();
        if id.bytes().any(|b| b != b'0') {
            return id;
        }
    }
}

/// A W3C `traceparent` for a sampled span.
pub fn traceparent(trace_id: &str, span_id: &str) -> String {
    format!("00-{trace_id}-{span_id}-01")
}

/// `(trace id, span id)` of a `traceparent`.
pub fn parse_traceparent(value: &str) -> (String, String) {
    let parts: Vec<&str> = value.split('-').collect();
    assert_eq!(parts.len(), 4, "not a traceparent: {value:?}");
    assert_eq!(parts[0], "00", "{value}");
    (parts[1].to_string(), parts[2].to_string())
}

/// An HTTP/1.1 request; the status and the body (chunked bodies decoded), or `None` when
/// nothing answers.
pub fn http(method: &str, url: &str, content_type: &str, body: &[u8]) -> Option<(u16, Vec<u8>)> {
    let rest = url.strip_prefix("http://").expect("http:// URL");
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let mut stream = TcpStream::connect(host).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).ok()?;
    stream.write_all(body).ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).ok()?;
    let split = response.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&response[..split]).to_string();
    let mut body = response[split + 4..].to_vec();
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    Some((status, body))
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = data.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size = usize::from_str_radix(
            String::from_utf8_lossy(&data[..eol])
                .split(';')
                .next()
                .unwrap()
                .trim(),
            16,
        )
        .unwrap_or(0);
        if size == 0 {
            return out;
        }
        let start = eol + 2;
        out.extend_from_slice(&data[start..start + size]);
        data = &data[start + size + 2..];
    }
}

/// Sends the producer's root span of a trace to Jaeger over OTLP/HTTP (JSON), as the service
/// `service`: what an instrumented producer would report before publishing the event.
pub fn send_root_span(service: &str, trace_id: &str, span_id: &str) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let body = json!({"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": service}}]},
        "scopeSpans": [{"scope": {"name": "fnmill-tests"}, "spans": [{
            "traceId": trace_id, "spanId": span_id, "name": "publish orders", "kind": 4,
            "startTimeUnixNano": now.to_string(), "endTimeUnixNano": (now + 1_000_000).to_string()
        }]}]
    }]});
    let url = format!("{}/v1/traces", jaeger().http);
    let (status, _) = http(
        "POST",
        &url,
        "application/json",
        body.to_string().as_bytes(),
    )
    .expect("Jaeger's OTLP/HTTP receiver answers");
    assert_eq!(status, 200, "Jaeger refused the root span");
}

/// A span as Jaeger's query API returns it.
#[derive(Clone, Debug)]
pub struct Span {
    pub span_id: String,
    /// The span it is a child of (`None` for a root).
    pub parent: Option<String>,
    pub name: String,
    pub service: String,
    pub tags: BTreeMap<String, Value>,
}

impl Span {
    pub fn kind(&self) -> &str {
        self.tags
            .get("span.kind")
            .and_then(Value::as_str)
            .unwrap_or("internal")
    }

    pub fn tag(&self, key: &str) -> &Value {
        self.tags.get(key).unwrap_or(&Value::Null)
    }
}

/// The spans of trace `trace_id`, once Jaeger has at least `spans` of them (it stores what
/// arrives, so a trace fills up as batches come in).
pub fn trace(trace_id: &str, spans: usize) -> Vec<Span> {
    let url = format!("{}/api/traces/{trace_id}", jaeger().query);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let found = http("GET", &url, "application/json", b"")
            .filter(|(status, _)| *status == 200)
            .and_then(|(_, body)| serde_json::from_slice::<Value>(&body).ok())
            .map(|v| parse_trace(&v))
            .unwrap_or_default();
        if found.len() >= spans {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "Jaeger has {} of the {spans} spans of trace {trace_id} after 60 s: {found:#?}",
            found.len()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn parse_trace(v: &Value) -> Vec<Span> {
    let Some(trace) = v["data"].as_array().and_then(|d| d.first()) else {
        return Vec::new();
    };
    let processes = &trace["processes"];
    trace["spans"]
        .as_array()
        .map(|spans| {
            spans
                .iter()
                .map(|s| Span {
                    span_id: s["spanID"].as_str().unwrap_or_default().to_string(),
                    parent: s["references"].as_array().and_then(|r| {
                        r.iter()
                            .find(|r| r["refType"] == "CHILD_OF")
                            .and_then(|r| r["spanID"].as_str())
                            .map(str::to_string)
                    }),
                    name: s["operationName"].as_str().unwrap_or_default().to_string(),
                    service: processes[s["processID"].as_str().unwrap_or_default()]["serviceName"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    tags: s["tags"]
                        .as_array()
                        .map(|tags| {
                            tags.iter()
                                .map(|t| {
                                    (
                                        t["key"].as_str().unwrap_or_default().to_string(),
                                        t["value"].clone(),
                                    )
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The one span of `spans` that `pick` selects.
pub fn one<'a>(spans: &'a [Span], what: &str, pick: impl Fn(&Span) -> bool) -> &'a Span {
    let found: Vec<&Span> = spans.iter().filter(|s| pick(s)).collect();
    assert_eq!(found.len(), 1, "expected one {what} in {spans:#?}");
    found[0]
}

/// What the trace of one event through fnmill must hold, whatever the transport.
pub struct Expected<'a> {
    pub trace_id: &'a str,
    /// The producer's root span (the event's `traceparent`).
    pub root: &'a str,
    /// fnmill's `service.name`.
    pub service: &'a str,
    /// `messaging.system` of the source and of the output's sink.
    pub system: &'a str,
    /// `messaging.destination.name` of the consumer span.
    pub source_destination: &'a str,
    /// `messaging.destination.name` of the output's producer span.
    pub output_destination: &'a str,
    /// The SQL the function ran.
    pub statement: &'a str,
    /// The `traceparent` the output record carries.
    pub output_traceparent: &'a str,
}

/// Checks one trace: the producer's span as root; fnmill's consumer span beneath it; the
/// function's span, the SQL span under that, and the output's producer span, whose context is
/// the output's `traceparent`. Returns the spans for transport-specific checks.
pub fn check_event_trace(e: &Expected) -> Vec<Span> {
    // root, consumer, call, SQL, producer
    let spans = trace(e.trace_id, 5);
    let root = one(&spans, "root", |s| s.parent.is_none());
    assert_eq!(root.span_id, e.root, "the producer's span is the root");
    assert_ne!(root.service, e.service);
    let consumer = one(&spans, "consumer span", |s| s.kind() == "consumer");
    assert_eq!(consumer.parent.as_deref(), Some(e.root));
    assert_eq!(consumer.service, e.service);
    assert_eq!(consumer.name, format!("process {}", e.source_destination));
    assert_eq!(consumer.tag("messaging.system"), e.system);
    assert_eq!(consumer.tag("messaging.operation.type"), "process");
    assert_eq!(
        consumer.tag("messaging.destination.name"),
        e.source_destination
    );
    assert_eq!(consumer.tag("fnmill.outcome"), "done");
    assert_eq!(consumer.tag("fnmill.function"), "f");
    assert!(
        consumer.tag("messaging.message.id").is_string(),
        "{consumer:?}"
    );
    let call = one(&spans, "function span", |s| s.name == "call f");
    assert_eq!(call.parent.as_deref(), Some(consumer.span_id.as_str()));
    assert_eq!(call.tag("fnmill.function.attempt"), 1);
    assert_eq!(call.tag("fnmill.function.outcome"), "ok");
    assert_eq!(call.tag("fnmill.instance.reused"), false);
    assert!(
        call.tag("fnmill.instance.instantiation_us").is_number(),
        "{call:?}"
    );
    assert!(
        call.tag("fnmill.instance.memory_bytes")
            .as_i64()
            .unwrap_or(0)
            > 0,
        "{call:?}"
    );
    let sql = one(&spans, "SQL span", |s| s.kind() == "client");
    assert_eq!(sql.parent.as_deref(), Some(call.span_id.as_str()));
    assert_eq!(sql.name, "SELECT db");
    assert_eq!(sql.tag("db.system.name"), "postgresql");
    assert_eq!(sql.tag("db.operation.name"), "SELECT");
    assert_eq!(sql.tag("db.query.text"), e.statement);
    assert_eq!(sql.tag("fnmill.data_source"), "db");
    let producer = one(&spans, "producer span", |s| {
        s.kind() == "producer" && s.service == e.service
    });
    assert_eq!(producer.parent.as_deref(), Some(consumer.span_id.as_str()));
    assert_eq!(producer.tag("messaging.system"), e.system);
    assert_eq!(producer.tag("messaging.operation.type"), "send");
    assert_eq!(
        producer.tag("messaging.destination.name"),
        e.output_destination
    );
    assert_eq!(producer.tag("fnmill.dead_letter"), false);
    assert_eq!(
        e.output_traceparent,
        traceparent(e.trace_id, &producer.span_id),
        "the output carries its producer span's context"
    );
    spans
}

/// `GET /metrics` on `port`, parsed as Prometheus parses it (`None` while nothing answers).
pub fn scrape(port: u16) -> Option<prometheus_parse::Scrape> {
    let (status, body) = http(
        "GET",
        &format!("http://127.0.0.1:{port}/metrics"),
        "text/plain",
        b"",
    )?;
    assert_eq!(status, 200);
    let text = String::from_utf8(body).unwrap();
    let lines = text.lines().map(|l| Ok(l.to_string()));
    Some(prometheus_parse::Scrape::parse(lines).expect("/metrics is Prometheus text"))
}

/// The value of the sample `name` whose labels include `labels` (`None` if there is none).
pub fn value(
    scrape: &prometheus_parse::Scrape,
    name: &str,
    labels: &[(&str, &str)],
) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match &s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            prometheus_parse::Value::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
            prometheus_parse::Value::Summary(_) => f64::NAN,
        })
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Resident memory of process `pid`, in bytes.
pub fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS");
    kb * 1024
}
