//! Metrics: what the event path records (atomic counters and histograms bound once per route,
//! see [`RouteMetrics`]), what is read when asked (gauges of functions, sources and pools), and
//! the [`Registry`] that names all of it and renders it in the Prometheus text format for
//! `/metrics` and as OTLP metrics ([`super::otlp`]).
//!
//! Names and units follow the OpenTelemetry conventions: `db.client.connection.*` where the
//! semantic conventions define a metric, `fnmill.*` for fnmill's own. Each [`Family`] carries its
//! OpenTelemetry name and unit (for OTLP) and its Prometheus name (the OpenTelemetry name with
//! `_` for `.`, the unit as a suffix, `_total` on counters) — the five counters fnmill served
//! before keep their names.
//!
//! Recording costs one or two relaxed atomic additions per metric and nothing else: no lock, no
//! allocation, no label lookup. Metrics are recorded only when something reads them
//! (`admin.listen` or an OTLP metrics endpoint).

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fnmill_connector_api::metrics::{
    DURATION_BOUNDS_NS, Gauge, Histogram, HistogramSnapshot, ObservedPool,
};
use fnmill_connector_api::{Outcome, Readiness};
use fnmill_connector_kafka::ConsumerLag;

use crate::host::{CallStats, Function};
use crate::pipeline::RouteStats;
use crate::tier::measured::{self, DataSourceStatus};

/// Every `fnmill.error.kind` a dead letter can have, in a fixed order: one counter each.
pub const ERROR_KINDS: [&str; 10] = [
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
];

fn kind_index(kind: &str) -> Option<usize> {
    ERROR_KINDS.iter().position(|k| *k == kind)
}

/// Counters of one destination of a route.
#[derive(Debug)]
struct OutputCounters {
    destination: String,
    records: AtomicU64,
    bytes: AtomicU64,
}

/// What one route records per event, bound at route start. Read through [`RouteStats`].
#[derive(Debug)]
pub struct RouteMetrics {
    dead_lettered: [AtomicU64; ERROR_KINDS.len()],
    /// Received by the route → settled.
    event_duration: Histogram,
    /// The event's source timestamp → settled (events with a timestamp).
    event_latency: Histogram,
    /// One call of the function: admission, instantiation, the call.
    function_duration: Histogram,
    instantiation: Histogram,
    fuel: AtomicU64,
    /// Sorted by destination name.
    outputs: Vec<OutputCounters>,
}

impl RouteMetrics {
    /// Metrics for a route whose function writes to `destinations` (its names).
    pub fn new(destinations: impl IntoIterator<Item = String>) -> Self {
        let mut outputs: Vec<OutputCounters> = destinations
            .into_iter()
            .map(|destination| OutputCounters {
                destination,
                records: AtomicU64::new(0),
                bytes: AtomicU64::new(0),
            })
            .collect();
        outputs.sort_by(|a, b| a.destination.cmp(&b.destination));
        Self {
            dead_lettered: Default::default(),
            event_duration: Histogram::default(),
            event_latency: Histogram::default(),
            function_duration: Histogram::default(),
            instantiation: Histogram::default(),
            fuel: AtomicU64::new(0),
            outputs,
        }
    }

    /// One call of the function, `took` in all.
    pub fn call(&self, took: Duration, stats: &CallStats) {
        self.function_duration.observe(took);
        if let Some(instantiation) = stats.instantiation {
            self.instantiation.observe(instantiation);
        }
        if let Some(fuel) = stats.fuel {
            self.fuel.fetch_add(fuel, Ordering::Relaxed);
        }
    }

    /// One output of `bytes` (payload, key and headers) to `destination`.
    pub fn output(&self, destination: &str, bytes: usize) {
        if let Ok(i) = self
            .outputs
            .binary_search_by(|o| o.destination.as_str().cmp(destination))
        {
            let o = &self.outputs[i];
            o.records.fetch_add(1, Ordering::Relaxed);
            o.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        }
    }

    /// An event settled: how long it took, and the dead letter's kind.
    fn settled(&self, obs: &EventMetrics, outcome: Outcome, kind: Option<&str>) {
        let now = Instant::now();
        self.event_duration.observe(now - obs.received);
        if let Some(ts) = obs.timestamp_ms {
            let since_epoch = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            // A producer's clock ahead of ours counts as no latency, not as a huge one.
            let latency = since_epoch.saturating_sub(Duration::from_millis(ts.max(0) as u64));
            self.event_latency.observe(latency);
        }
        if matches!(outcome, Outcome::DeadLettered | Outcome::Rejected)
            && let Some(i) = kind.and_then(kind_index)
        {
            self.dead_lettered[i].fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// What an event's settlement needs to record its metrics.
#[derive(Debug)]
struct EventMetrics {
    received: Instant,
    timestamp_ms: Option<i64>,
}

/// An event's telemetry while the route holds it: its metrics, its consumer span (with
/// tracing on), and the kind of failure that sent it to the dead letters.
#[derive(Debug, Default)]
pub struct EventObs {
    metrics: Option<EventMetrics>,
    pub(crate) trace: Option<super::traces::EventTrace>,
    kind: Option<&'static str>,
}

impl EventObs {
    /// Starts observing `event`, received now by a route with `stats` and `tracer`.
    pub fn start(
        stats: &RouteStats,
        tracer: Option<&super::traces::RouteTracer>,
        event: &fnmill_connector_api::Event,
    ) -> Self {
        Self {
            metrics: stats.metrics.as_ref().map(|_| EventMetrics {
                received: Instant::now(),
                timestamp_ms: event.timestamp_ms,
            }),
            trace: tracer.map(|t| t.start_event(event)),
            kind: None,
        }
    }

    /// The event failed for good with `kind` (a [`crate::host::Failure::kind`]).
    pub fn failed(&mut self, kind: &'static str) {
        self.kind = Some(kind);
    }

    /// The trace context of the event's span, with tracing on.
    pub fn context(&self) -> Option<&opentelemetry::Context> {
        self.trace.as_ref().map(|t| &t.cx)
    }

    /// The event settled: records its metrics and ends its span. Idempotent.
    pub fn settled(&mut self, stats: &RouteStats, outcome: Outcome) {
        if let (Some(m), Some(obs)) = (&stats.metrics, self.metrics.take()) {
            m.settled(&obs, outcome, self.kind);
        }
        if let Some(trace) = self.trace.take() {
            trace.end(outcome, self.kind);
        }
    }
}

/// How a metric adds up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (from the start of the process).
    Counter,
    /// A value now.
    Gauge,
    /// A duration distribution, in seconds.
    Histogram,
}

/// A metric's value for one set of labels.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Int(i64),
    Histogram(HistogramSnapshot),
}

/// One series: its labels (OpenTelemetry attribute names) and value.
#[derive(Clone, Debug, PartialEq)]
pub struct Point {
    pub labels: Vec<(&'static str, String)>,
    pub value: Value,
}

/// One metric and its series.
#[derive(Clone, Debug)]
pub struct Family {
    /// The OpenTelemetry name (OTLP).
    pub otel: &'static str,
    /// The Prometheus name (`/metrics`).
    pub prom: &'static str,
    pub help: &'static str,
    /// UCUM unit, as OTLP carries it.
    pub unit: &'static str,
    pub kind: Kind,
    pub points: Vec<Point>,
}

struct RouteEntry {
    name: String,
    function: String,
    stats: Arc<RouteStats>,
}

struct SourceEntry {
    name: String,
    ready: Readiness,
    lag: Option<Arc<ConsumerLag>>,
    unacked: Option<(String, Gauge)>,
}

struct PoolEntry {
    name: String,
    system: &'static str,
    pool: Arc<dyn ObservedPool>,
}

/// Everything a run reports on, registered while it is wired, read on every scrape or push.
#[derive(Default)]
pub struct Registry {
    routes: Vec<RouteEntry>,
    functions: Vec<(String, Arc<Function>)>,
    sources: Vec<SourceEntry>,
    pools: Vec<PoolEntry>,
    data_sources: Vec<DataSourceStatus>,
}

impl Registry {
    pub fn route(&mut self, name: &str, function: &str, stats: Arc<RouteStats>) {
        self.routes.push(RouteEntry {
            name: name.into(),
            function: function.into(),
            stats,
        });
    }

    pub fn function(&mut self, name: &str, function: Arc<Function>) {
        if !self.functions.iter().any(|(n, _)| n == name) {
            self.functions.push((name.into(), function));
        }
    }

    /// A source, with its Kafka consumer lag or AMQP unacked count when it has one.
    pub fn source(
        &mut self,
        name: &str,
        ready: Readiness,
        lag: Option<Arc<ConsumerLag>>,
        unacked: Option<(String, Gauge)>,
    ) {
        self.sources.push(SourceEntry {
            name: name.into(),
            ready,
            lag,
            unacked,
        });
    }

    /// A connection pool of a data source; `system` is `postgresql` or `redis`.
    pub fn pool(&mut self, name: &str, system: &'static str, pool: Arc<dyn ObservedPool>) {
        self.pools.push(PoolEntry {
            name: name.into(),
            system,
            pool,
        });
    }

    /// A data source's calls (through a pool of this process or its IO tier), its readiness
    /// and an IO process's refusals.
    pub fn data_source(&mut self, status: DataSourceStatus) {
        self.data_sources.push(status);
    }

    /// Every metric, now.
    pub fn collect(&self) -> Vec<Family> {
        let mut families = Vec::new();
        let route_counter = |otel, prom, help, get: fn(&RouteStats) -> u64| Family {
            otel,
            prom,
            help,
            unit: "{event}",
            kind: Kind::Counter,
            points: self
                .routes
                .iter()
                .map(|r| Point {
                    labels: vec![("route", r.name.clone())],
                    value: Value::Int(get(&r.stats) as i64),
                })
                .collect(),
        };
        families.push(route_counter(
            "fnmill.events.received",
            "fnmill_events_received_total",
            "Events accepted by the route from its source.",
            |s| s.received.load(Ordering::Relaxed),
        ));
        families.push(route_counter(
            "fnmill.events.done",
            "fnmill_events_done_total",
            "Events whose outputs were all confirmed by their sinks.",
            |s| s.done.load(Ordering::Relaxed),
        ));
        families.push(Family {
            otel: "fnmill.events.dead_lettered",
            prom: "fnmill_events_dead_lettered_total",
            help: "Events confirmed on the dead-letter destination (or handed to the broker's), \
                   by the kind of failure (the fnmill.error.kind header).",
            unit: "{event}",
            kind: Kind::Counter,
            points: self
                .routes
                .iter()
                .filter_map(|r| Some((r, r.stats.metrics.as_ref()?)))
                .flat_map(|(r, m)| {
                    ERROR_KINDS.iter().enumerate().map(|(i, kind)| Point {
                        labels: vec![("route", r.name.clone()), ("error.type", kind.to_string())],
                        value: Value::Int(m.dead_lettered[i].load(Ordering::Relaxed) as i64),
                    })
                })
                .collect(),
        });
        families.push(route_counter(
            "fnmill.events.retried",
            "fnmill_retries_total",
            "Retries of events whose function failed retryably.",
            |s| s.retries.load(Ordering::Relaxed),
        ));
        families.push(route_counter(
            "fnmill.sink.retries",
            "fnmill_sink_retries_total",
            "Publishes of outputs tried again after a sink failed retryably (an outage logs a \
             throttled warning; this counts every one).",
            |s| s.sink_retries.load(Ordering::Relaxed),
        ));
        families.push(route_counter(
            "fnmill.events.abandoned",
            "fnmill_events_abandoned_total",
            "Events settled as not done, to be delivered again (shutdown, a held lane).",
            |s| s.abandoned.load(Ordering::Relaxed),
        ));
        let mut in_flight = route_counter(
            "fnmill.events.in_flight",
            "fnmill_events_in_flight",
            "Events accepted by the route and not settled yet.",
            |s| s.in_flight(),
        );
        in_flight.kind = Kind::Gauge;
        families.push(in_flight);

        let route_histogram =
            |otel, prom, help, function: bool, get: fn(&RouteMetrics) -> &Histogram| Family {
                otel,
                prom,
                help,
                unit: "s",
                kind: Kind::Histogram,
                points: self
                    .routes
                    .iter()
                    .filter_map(|r| Some((r, r.stats.metrics.as_ref()?)))
                    .map(|(r, m)| {
                        let mut labels = vec![("route", r.name.clone())];
                        if function {
                            labels.push(("function", r.function.clone()));
                        }
                        Point {
                            labels,
                            value: Value::Histogram(get(m).snapshot()),
                        }
                    })
                    .collect(),
            };
        families.push(route_histogram(
            "fnmill.event.duration",
            "fnmill_event_duration_seconds",
            "From the route receiving an event to its settlement (outputs or dead letter confirmed).",
            false,
            |m| &m.event_duration,
        ));
        families.push(route_histogram(
            "fnmill.event.latency",
            "fnmill_event_latency_seconds",
            "From the event's source timestamp (Kafka record time, AMQP timestamp, JSON Lines \
             timestamp_ms) to its settlement; events without a timestamp are not counted.",
            false,
            |m| &m.event_latency,
        ));
        families.push(route_histogram(
            "fnmill.function.duration",
            "fnmill_function_duration_seconds",
            "One call of the function: waiting for an instance slot, instantiation and the call.",
            true,
            |m| &m.function_duration,
        ));
        families.push(route_histogram(
            "fnmill.function.instantiation.duration",
            "fnmill_function_instantiation_duration_seconds",
            "Creating a fresh instance for a call (calls served by a reused instance are not counted).",
            true,
            |m| &m.instantiation,
        ));
        families.push(Family {
            otel: "fnmill.function.fuel.consumed",
            prom: "fnmill_function_fuel_consumed_total",
            help: "Fuel the function's calls used (only while some function sets `fuel`).",
            unit: "{fuel}",
            kind: Kind::Counter,
            points: self
                .routes
                .iter()
                .filter_map(|r| Some((r, r.stats.metrics.as_ref()?)))
                .map(|(r, m)| Point {
                    labels: vec![("route", r.name.clone()), ("function", r.function.clone())],
                    value: Value::Int(m.fuel.load(Ordering::Relaxed) as i64),
                })
                .collect(),
        });
        let outputs = |otel, prom, help, unit, bytes: bool| Family {
            otel,
            prom,
            help,
            unit,
            kind: Kind::Counter,
            points: self
                .routes
                .iter()
                .filter_map(|r| Some((r, r.stats.metrics.as_ref()?)))
                .flat_map(|(r, m)| {
                    m.outputs.iter().map(move |o| Point {
                        labels: vec![
                            ("route", r.name.clone()),
                            ("destination", o.destination.clone()),
                        ],
                        value: Value::Int(
                            if bytes { &o.bytes } else { &o.records }.load(Ordering::Relaxed)
                                as i64,
                        ),
                    })
                })
                .collect(),
        };
        families.push(outputs(
            "fnmill.outputs",
            "fnmill_outputs_total",
            "Outputs handed to their sinks, by the function's destination name.",
            "{record}",
            false,
        ));
        families.push(outputs(
            "fnmill.output.size",
            "fnmill_output_bytes_total",
            "Bytes of outputs (payload, key and headers) handed to their sinks.",
            "By",
            true,
        ));

        families.push(Family {
            otel: "fnmill.function.instances",
            prom: "fnmill_function_instances",
            help: "Live instances of the function (running, or kept for reuse).",
            unit: "{instance}",
            kind: Kind::Gauge,
            points: self
                .functions
                .iter()
                .map(|(n, f)| Point {
                    labels: vec![("function", n.clone())],
                    value: Value::Int(f.live_instances()),
                })
                .collect(),
        });
        families.push(Family {
            otel: "fnmill.function.memory.peak",
            prom: "fnmill_function_memory_peak_bytes",
            help: "The largest linear memory any instance of the function grew to.",
            unit: "By",
            kind: Kind::Gauge,
            points: self
                .functions
                .iter()
                .map(|(n, f)| Point {
                    labels: vec![("function", n.clone())],
                    value: Value::Int(f.memory_peak() as i64),
                })
                .collect(),
        });

        families.push(Family {
            otel: "fnmill.source.ready",
            prom: "fnmill_source_ready",
            help: "Whether the source is connected and consuming (1) or not (0).",
            unit: "1",
            kind: Kind::Gauge,
            points: self
                .sources
                .iter()
                .map(|s| Point {
                    labels: vec![("source", s.name.clone())],
                    value: Value::Int(i64::from(s.ready.is_ready())),
                })
                .collect(),
        });
        families.push(Family {
            otel: "fnmill.kafka.consumer.lag",
            prom: "fnmill_kafka_consumer_lag",
            help: "Records of an assigned partition not yet settled: the partition's end offset \
                   minus the offset fnmill stored (librdkafka statistics).",
            unit: "{message}",
            kind: Kind::Gauge,
            points: self
                .sources
                .iter()
                .filter_map(|s| Some((s, s.lag.as_ref()?)))
                .flat_map(|(s, lag)| {
                    lag.snapshot().into_iter().map(|p| Point {
                        labels: vec![
                            ("source", s.name.clone()),
                            ("topic", p.topic),
                            ("partition", p.partition.to_string()),
                        ],
                        value: Value::Int(p.lag),
                    })
                })
                .collect(),
        });
        families.push(Family {
            otel: "fnmill.amqp.unacked",
            prom: "fnmill_amqp_unacked_messages",
            help: "Messages of the queue delivered to fnmill and not acknowledged yet.",
            unit: "{message}",
            kind: Kind::Gauge,
            points: self
                .sources
                .iter()
                .filter_map(|s| Some((s, s.unacked.as_ref()?)))
                .map(|(s, (queue, gauge))| Point {
                    labels: vec![("source", s.name.clone()), ("queue", queue.clone())],
                    value: Value::Int(gauge.get()),
                })
                .collect(),
        });

        let pool_labels = |p: &PoolEntry| {
            vec![
                ("db.client.connection.pool.name", p.name.clone()),
                ("db.system.name", p.system.to_string()),
            ]
        };
        let statuses: Vec<_> = self.pools.iter().map(|p| (p, p.pool.status())).collect();
        families.push(Family {
            otel: "db.client.connection.count",
            prom: "db_client_connection_count",
            help: "Open connections of a data source's pool, idle or used.",
            unit: "{connection}",
            kind: Kind::Gauge,
            points: statuses
                .iter()
                .flat_map(|(p, s)| {
                    [("idle", s.idle), ("used", s.open.saturating_sub(s.idle))].map(|(state, n)| {
                        let mut labels = pool_labels(p);
                        labels.push(("db.client.connection.state", state.to_string()));
                        Point {
                            labels,
                            value: Value::Int(n as i64),
                        }
                    })
                })
                .collect(),
        });
        families.push(Family {
            otel: "db.client.connection.max",
            prom: "db_client_connection_max",
            help: "Connections a data source's pool may open (pool_size).",
            unit: "{connection}",
            kind: Kind::Gauge,
            points: statuses
                .iter()
                .map(|(p, s)| Point {
                    labels: pool_labels(p),
                    value: Value::Int(s.max as i64),
                })
                .collect(),
        });
        families.push(Family {
            otel: "db.client.connection.pending_requests",
            prom: "db_client_connection_pending_requests",
            help: "Calls waiting for a connection of a data source's pool.",
            unit: "{request}",
            kind: Kind::Gauge,
            points: statuses
                .iter()
                .map(|(p, s)| Point {
                    labels: pool_labels(p),
                    value: Value::Int(s.waiting as i64),
                })
                .collect(),
        });
        families.push(Family {
            otel: "db.client.connection.wait_time",
            prom: "db_client_connection_wait_time_seconds",
            help: "Time a call waited to get a connection of a data source's pool (opening one included).",
            unit: "s",
            kind: Kind::Histogram,
            points: self
                .pools
                .iter()
                .map(|p| Point {
                    labels: pool_labels(p),
                    value: Value::Histogram(p.pool.wait_time().snapshot()),
                })
                .collect(),
        });
        self.collect_data_sources(&mut families);
        families
    }

    /// The data sources' calls, readiness and refusals.
    fn collect_data_sources(&self, families: &mut Vec<Family>) {
        families.push(Family {
            otel: "fnmill.data_source.call.duration",
            prom: "fnmill_data_source_call_duration_seconds",
            help: "sql and keyvalue calls by outcome and how long they took: through a pool of \
                   this process (via=\"pool\") or the data source's IO tier over NATS \
                   (via=\"io-tier\").",
            unit: "s",
            kind: Kind::Histogram,
            points: self
                .data_sources
                .iter()
                .flat_map(|d| {
                    measured::Outcome::ALL.iter().map(|outcome| Point {
                        labels: vec![
                            ("data_source", d.name.clone()),
                            ("via", d.via.label().to_string()),
                            ("outcome", outcome.label().to_string()),
                        ],
                        value: Value::Histogram(d.calls.snapshot(*outcome)),
                    })
                })
                .collect(),
        });
        families.push(Family {
            otel: "fnmill.data_source.ready",
            prom: "fnmill_data_source_ready",
            help: "Whether the data source's IO tier answers (compute), or this IO process \
                   serves it (io): 1 or 0.",
            unit: "1",
            kind: Kind::Gauge,
            points: self
                .data_sources
                .iter()
                .filter_map(|d| {
                    Some(Point {
                        labels: vec![("data_source", d.name.clone())],
                        value: Value::Int(i64::from(d.ready.as_ref()?.is_ready())),
                    })
                })
                .collect(),
        });
        families.push(Family {
            otel: "fnmill.data_source.refused",
            prom: "fnmill_data_source_refused_total",
            help: "Requests this IO process refused: not granted by its own config, or \
                   unreadable (another protocol version).",
            unit: "{request}",
            kind: Kind::Counter,
            points: self
                .data_sources
                .iter()
                .filter_map(|d| Some((d, d.server.as_ref()?)))
                .flat_map(|(d, stats)| {
                    [
                        ("not-granted", &stats.not_granted),
                        ("bad-request", &stats.bad_requests),
                    ]
                    .map(|(reason, n)| Point {
                        labels: vec![
                            ("data_source", d.name.clone()),
                            ("reason", reason.to_string()),
                        ],
                        value: Value::Int(n.load(Ordering::Relaxed) as i64),
                    })
                })
                .collect(),
        });
    }

    /// Every metric in the Prometheus text format (version 0.0.4).
    pub fn prometheus(&self) -> String {
        render_prometheus(&self.collect())
    }
}

/// A label name in Prometheus: the attribute name with `_` for `.`.
fn prom_label(name: &str) -> String {
    name.replace('.', "_")
}

/// A label value in the Prometheus text format: `\`, `"` and newlines escaped.
pub fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

fn labels(pairs: &[(&'static str, String)], extra: Option<(&str, &str)>) -> String {
    let mut parts: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{}=\"{}\"", prom_label(k), escape_label(v)))
        .collect();
    if let Some((k, v)) = extra {
        parts.push(format!("{k}=\"{v}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

fn seconds(nanos: u64) -> f64 {
    nanos as f64 / 1e9
}

/// Renders `families` in the Prometheus text format. A family without series is left out.
pub fn render_prometheus(families: &[Family]) -> String {
    let mut out = String::new();
    for f in families.iter().filter(|f| !f.points.is_empty()) {
        let kind = match f.kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        };
        let _ = writeln!(out, "# HELP {} {}", f.prom, f.help);
        let _ = writeln!(out, "# TYPE {} {kind}", f.prom);
        for p in &f.points {
            match &p.value {
                Value::Int(v) => {
                    let _ = writeln!(out, "{}{} {v}", f.prom, labels(&p.labels, None));
                }
                Value::Histogram(h) => {
                    let cumulative = h.cumulative();
                    for (i, bound) in DURATION_BOUNDS_NS.iter().enumerate() {
                        let le = seconds(*bound).to_string();
                        let _ = writeln!(
                            out,
                            "{}_bucket{} {}",
                            f.prom,
                            labels(&p.labels, Some(("le", &le))),
                            cumulative[i]
                        );
                    }
                    let total = h.count();
                    let _ = writeln!(
                        out,
                        "{}_bucket{} {total}",
                        f.prom,
                        labels(&p.labels, Some(("le", "+Inf")))
                    );
                    let _ = writeln!(
                        out,
                        "{}_sum{} {}",
                        f.prom,
                        labels(&p.labels, None),
                        seconds(h.sum_ns)
                    );
                    let _ = writeln!(out, "{}_count{} {total}", f.prom, labels(&p.labels, None));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn every_error_kind_of_the_host_has_a_counter() {
        use crate::host::Failure;
        for f in [
            Failure::Retryable(String::new()),
            Failure::Fatal(String::new()),
            Failure::Trap {
                code: String::new(),
                message: String::new(),
            },
            Failure::Timeout(Duration::ZERO),
            Failure::Fuel(0),
            Failure::Memory(0),
            Failure::OutputLimit(String::new()),
            Failure::Instantiation(String::new()),
            Failure::Decode(String::new()),
            Failure::Host(String::new()),
        ] {
            assert!(kind_index(f.kind()).is_some(), "{}", f.kind());
        }
    }

    #[test]
    fn prometheus_text_has_types_labels_and_cumulative_buckets() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(20));
        h.observe(Duration::from_millis(2));
        let families = vec![
            Family {
                otel: "x.count",
                prom: "x_total",
                help: "Things.",
                unit: "1",
                kind: Kind::Counter,
                points: vec![Point {
                    labels: vec![("route", "a\"b".into()), ("error.type", "fatal".into())],
                    value: Value::Int(3),
                }],
            },
            Family {
                otel: "x.empty",
                prom: "x_empty",
                help: "Nothing.",
                unit: "1",
                kind: Kind::Gauge,
                points: vec![],
            },
            Family {
                otel: "x.duration",
                prom: "x_duration_seconds",
                help: "Durations.",
                unit: "s",
                kind: Kind::Histogram,
                points: vec![Point {
                    labels: vec![("route", "r".into())],
                    value: Value::Histogram(h.snapshot()),
                }],
            },
        ];
        let text = render_prometheus(&families);
        assert!(text.contains("# TYPE x_total counter\n"), "{text}");
        assert!(
            text.contains("x_total{route=\"a\\\"b\",error_type=\"fatal\"} 3\n"),
            "{text}"
        );
        assert!(!text.contains("x_empty"), "{text}");
        assert!(
            text.contains("# TYPE x_duration_seconds histogram\n"),
            "{text}"
        );
        assert!(
            text.contains("x_duration_seconds_bucket{route=\"r\",le=\"0.00001\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("x_duration_seconds_bucket{route=\"r\",le=\"0.000025\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("x_duration_seconds_bucket{route=\"r\",le=\"0.0025\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("x_duration_seconds_bucket{route=\"r\",le=\"+Inf\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("x_duration_seconds_count{route=\"r\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("x_duration_seconds_sum{route=\"r\"} 0.00202\n"),
            "{text}"
        );
    }
}
