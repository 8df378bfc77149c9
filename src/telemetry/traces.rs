//! Spans: one consumer span per event (from the route receiving it to its settlement), a span
//! per function call, per `sql`/`keyvalue` call, and a producer span per output and dead letter,
//! named and tagged after the OpenTelemetry semantic conventions for messaging and databases.
//! The event's span is a child of the `traceparent` the event carries; each output's and dead
//! letter's headers get the context of its producer span, so the trace continues downstream.
//! Under an event whose trace is not sampled nothing would be recorded, so no call or producer
//! span is made: its outputs carry the event's context, and no span's attributes are built.
//!
//! With tracing off ([`Tracing::start`] returns `None`) nothing here runs: no span is made and
//! no header is parsed; an incoming `traceparent` is only copied onto outputs that have none
//! ([`super::propagation::pass_through`]).
//!
//! Spans go to a batch processor (OpenTelemetry's, on a thread of its own) whose queue is
//! bounded: ending a span never waits, and when the collector is away the queue fills and spans
//! are dropped, never the events.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use fnmill_connector_api::{Event, Header, OriginValue, Outcome, Record, SinkError};
use fnmill_connector_nats::protocol::{Op, WireCaller, WireError};
use opentelemetry::trace::{
    Span as _, SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, InstrumentationScope, KeyValue};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider, SpanData, SpanExporter};
use tokio::runtime::Handle;

use super::otlp::{FailureLog, IoHttpClient};
use super::propagation::Propagator;
use super::settings::{Protocol, TelemetrySettings};
use crate::host::{CallStats, Failure};

/// Longest SQL text kept on a span: statements are parameterised (values never appear), but may
/// be long.
const MAX_QUERY_TEXT: usize = 2048;

/// The tracer provider of one run.
pub struct Tracing {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    propagator: Arc<Propagator>,
}

impl Tracing {
    /// Starts exporting spans where `settings` say, or returns `None` when tracing is off. The
    /// exporters' connections run on `io`.
    pub fn start(settings: &TelemetrySettings, io: &Handle) -> anyhow::Result<Option<Self>> {
        let Some(traces) = &settings.traces else {
            return Ok(None);
        };
        let otlp = &traces.otlp;
        let log = FailureLog::new("spans", &otlp.endpoint);
        let exporter = match otlp.protocol {
            Protocol::Grpc => {
                // The channel's connection task starts on the runtime entered here.
                let _entered = io.enter();
                let mut builder = opentelemetry_otlp::SpanExporter::builder()
                    .with_tonic()
                    .with_endpoint(otlp.endpoint.clone())
                    .with_timeout(otlp.timeout);
                if otlp.endpoint.starts_with("https://") {
                    builder = builder.with_tls_config(
                        tonic::transport::ClientTlsConfig::new().with_native_roots(),
                    );
                }
                builder.build()?
            }
            Protocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_endpoint(otlp.endpoint.clone())
                .with_timeout(otlp.timeout)
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_http_client(IoHttpClient::new(io.clone(), otlp.timeout)?)
                .build()?,
        };
        let resource = Resource::builder()
            .with_service_name(settings.service_name.clone())
            .with_attributes(
                settings
                    .resource
                    .iter()
                    .filter(|(k, _)| k != "service.name")
                    .map(|(k, v)| KeyValue::new(k.clone(), v.clone())),
            )
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .build();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(Reporting {
                inner: exporter,
                log,
            })
            // Parent-based, which the event path relies on (see `sampled`).
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                traces.sample_ratio,
            ))))
            .with_resource(resource)
            .build();
        let tracer = provider.tracer_with_scope(
            InstrumentationScope::builder("fnmill")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
        );
        tracing::info!(
            endpoint = %otlp.endpoint,
            protocol = %otlp.protocol,
            sample_ratio = traces.sample_ratio,
            "Exporting traces over OTLP"
        );
        Ok(Some(Self {
            provider,
            tracer,
            propagator: Arc::new(Propagator::default()),
        }))
    }

    /// The tracer of one route.
    pub fn route(&self, route: RouteInfo) -> RouteTracer {
        RouteTracer {
            tracer: self.tracer.clone(),
            propagator: self.propagator.clone(),
            info: Arc::new(route),
        }
    }

    /// The spans of the requests an IO process serves for a data source of `system`
    /// (`postgresql`, `redis`).
    pub fn io_tier(&self, system: &'static str) -> IoTierTracer {
        IoTierTracer {
            tracer: self.tracer.clone(),
            propagator: self.propagator.clone(),
            system,
        }
    }

    /// Exports what is still queued, waiting at most `timeout`. Must not be called on a thread
    /// of the IO runtime (the export runs there).
    pub fn shutdown(&self, timeout: Duration) {
        if let Err(e) = self.provider.shutdown_with_timeout(timeout) {
            tracing::debug!(error = %e, "Flushing spans at shutdown failed");
        }
    }
}

/// Logs export failures once (see [`FailureLog`]).
#[derive(Debug)]
struct Reporting<E> {
    inner: E,
    log: FailureLog,
}

impl<E: SpanExporter> SpanExporter for Reporting<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let result = self.inner.export(batch).await;
        match &result {
            Ok(()) => self.log.succeeded(),
            Err(e) => self.log.failed(e),
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// A source or sink as spans name it.
#[derive(Clone, Debug)]
pub struct Endpoint {
    /// `messaging.system`: `kafka`, `rabbitmq`, or `file` for JSON Lines.
    pub system: &'static str,
    /// `messaging.destination.name` when an event or record names none itself: the topics, the
    /// queue, the exchange or routing key, the file.
    pub destination: String,
    /// `messaging.consumer.group.name` (Kafka sources).
    pub group: Option<String>,
    /// The routing key of records whose destination has no target (AMQP sinks).
    pub routing_key: Option<String>,
}

/// What a route's spans say about it.
#[derive(Clone, Debug)]
pub struct RouteInfo {
    pub route: String,
    pub function: String,
    pub source_name: String,
    pub source: Endpoint,
    /// By sink name.
    pub sinks: BTreeMap<String, Endpoint>,
}

/// Makes a route's spans.
#[derive(Clone, Debug)]
pub struct RouteTracer {
    tracer: SdkTracer,
    propagator: Arc<Propagator>,
    info: Arc<RouteInfo>,
}

/// An event's consumer span, alive until the event settles.
#[derive(Debug)]
pub struct EventTrace {
    /// The span, in a context that also holds the incoming baggage.
    pub(crate) cx: Context,
}

impl EventTrace {
    /// Ends the span with how the event settled.
    pub fn end(self, outcome: Outcome, kind: Option<&'static str>) {
        if !sampled(&self.cx) {
            // Nothing to record; each call on the span would take its lock (on the thread that
            // settles the event, from the one that made it).
            return;
        }
        let span = self.cx.span();
        let outcome = match outcome {
            Outcome::Done => "done",
            Outcome::DeadLettered => "dead-lettered",
            Outcome::Rejected => "rejected",
            Outcome::Abandoned => "abandoned",
        };
        span.set_attribute(KeyValue::new("fnmill.outcome", outcome));
        if let Some(kind) = kind {
            span.set_attribute(KeyValue::new("error.type", kind));
        }
        match (outcome, kind) {
            ("done", _) => {}
            (_, Some(kind)) => span.set_status(Status::error(format!("{outcome}: {kind}"))),
            _ => span.set_status(Status::error(outcome)),
        }
        span.end();
    }
}

/// The origin pair named `name` of an event.
fn origin<'a>(event: &'a Event, name: &str) -> Option<&'a OriginValue> {
    event
        .origin
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v)
}

/// Whether spans under `cx` are recorded. fnmill's sampler is parent-based ([`Tracing::start`]),
/// so a child of a span that is not sampled never is: the event path makes no span at all
/// under one, and only passes its context on. It never records a span it does not sample
/// either, so a span that is not sampled needs no ending. Unlike asking the span whether it
/// records, this reads the span's immutable context and takes no lock.
fn sampled(cx: &Context) -> bool {
    cx.span().span_context().is_sampled()
}

/// Starts a span under `parent` and returns the context holding it; `attributes` runs only if
/// the span records. The sampler decides from the parent and the trace id alone (parent-based,
/// trace-id ratio: it never reads attributes), so a span that is not sampled costs no attribute
/// strings: with `sample_ratio = 0.01`, 99 events in 100 would otherwise build and drop a dozen
/// of them per span (measured: 0.73 of tracing off's rate at a ratio of 0, `event` isolation).
fn start_span(
    tracer: &SdkTracer,
    name: impl Into<Cow<'static, str>>,
    kind: SpanKind,
    parent: &Context,
    attributes: impl FnOnce() -> Vec<KeyValue>,
) -> Context {
    let mut span = tracer
        .span_builder(name)
        .with_kind(kind)
        .start_with_context(tracer, parent);
    if span.is_recording() {
        span.set_attributes(attributes());
    }
    parent.with_span(span)
}

impl RouteTracer {
    /// Starts the consumer span of `event`, as a child of the context its headers carry.
    pub fn start_event(&self, event: &Event) -> EventTrace {
        let parent = self.propagator.extract(&event.headers);
        let info = &self.info;
        let destination = origin(event, "topic")
            .or_else(|| origin(event, "queue"))
            .and_then(OriginValue::as_text)
            .unwrap_or(&info.source.destination);
        let cx = start_span(
            &self.tracer,
            format!("process {destination}"),
            SpanKind::Consumer,
            &parent,
            || self.event_attributes(event, destination, &parent),
        );
        EventTrace { cx }
    }

    /// The attributes of `event`'s consumer span.
    fn event_attributes(
        &self,
        event: &Event,
        destination: &str,
        parent: &Context,
    ) -> Vec<KeyValue> {
        let info = &self.info;
        let mut attributes = Vec::with_capacity(14);
        attributes.extend([
            KeyValue::new("messaging.system", info.source.system),
            KeyValue::new("messaging.operation.type", "process"),
            KeyValue::new("messaging.operation.name", "process"),
            KeyValue::new("messaging.destination.name", destination.to_string()),
            KeyValue::new("messaging.message.id", event.id.clone()),
            KeyValue::new("messaging.message.body.size", event.payload.len() as i64),
            KeyValue::new("fnmill.route", info.route.clone()),
            KeyValue::new("fnmill.function", info.function.clone()),
            KeyValue::new("fnmill.source", info.source_name.clone()),
        ]);
        if let Some(group) = &info.source.group {
            attributes.push(KeyValue::new(
                "messaging.consumer.group.name",
                group.clone(),
            ));
        }
        if let Some(p) = origin(event, "partition") {
            attributes.push(KeyValue::new(
                "messaging.destination.partition.id",
                p.to_string(),
            ));
        }
        if let Some(o) = origin(event, "offset").and_then(OriginValue::as_number) {
            attributes.push(KeyValue::new("messaging.kafka.offset", o));
        }
        if info.source.system == "kafka"
            && let Some(key) = event.key.as_ref().and_then(|k| std::str::from_utf8(k).ok())
        {
            attributes.push(KeyValue::new(
                "messaging.kafka.message.key",
                key.to_string(),
            ));
        }
        if let Some(tag) = origin(event, "delivery_tag").and_then(OriginValue::as_number) {
            attributes.push(KeyValue::new(
                "messaging.rabbitmq.message.delivery_tag",
                tag,
            ));
        }
        if let Some(line) = origin(event, "line").and_then(OriginValue::as_number) {
            attributes.push(KeyValue::new("fnmill.file.line", line));
        }
        if !parent.span().span_context().is_valid()
            && event
                .headers
                .iter()
                .any(|h| h.name.eq_ignore_ascii_case("traceparent"))
        {
            // Not a W3C traceparent: the trace starts here, and says why.
            attributes.push(KeyValue::new("fnmill.traceparent.invalid", true));
        }
        attributes
    }

    /// Starts the span of one function call, as a child of the event's span.
    pub fn start_call(&self, event: &Context, attempt: u32) -> CallScope {
        if !sampled(event) {
            // The call's span would be dropped: the call runs in the event's context, so its
            // data-source calls (and the IO tier) still see an unsampled trace.
            return CallScope {
                tracer: self.tracer.clone(),
                cx: event.clone(),
                own_span: false,
            };
        }
        let cx = start_span(
            &self.tracer,
            format!("call {}", self.info.function),
            SpanKind::Internal,
            event,
            || {
                vec![
                    KeyValue::new("fnmill.function", self.info.function.clone()),
                    KeyValue::new("fnmill.function.attempt", i64::from(attempt)),
                ]
            },
        );
        CallScope {
            tracer: self.tracer.clone(),
            cx,
            own_span: true,
        }
    }

    /// Starts a producer span for each record of a batch bound for `sink` (a dead letter's if
    /// `dead_letter`), and writes its context into the record's headers.
    pub fn send(
        &self,
        event: &Context,
        sink: &str,
        target: Option<&str>,
        records: &mut [Record],
        dead_letter: bool,
    ) -> ProducerSpans {
        if !sampled(event) {
            // The producer spans would be dropped: the records carry the event's (unsampled)
            // context downstream, and there is nothing to end on confirmation.
            for record in records {
                self.propagator.inject(event, &mut record.headers);
            }
            return ProducerSpans(Vec::new());
        }
        let endpoint = self.info.sinks.get(sink);
        let system = endpoint.map_or("unknown", |e| e.system);
        // On RabbitMQ the destination is the exchange and the target a routing key; elsewhere
        // the target is the topic or file.
        let routing_key = endpoint
            .and_then(|e| e.routing_key.as_deref())
            .map(|default| target.unwrap_or(default));
        let destination = match routing_key {
            Some(_) => endpoint.map(|e| e.destination.as_str()),
            None => target.or(endpoint.map(|e| e.destination.as_str())),
        }
        .filter(|d| !d.is_empty())
        .unwrap_or(sink);
        let spans = records
            .iter_mut()
            .map(|record| {
                let cx = start_span(
                    &self.tracer,
                    format!("send {destination}"),
                    SpanKind::Producer,
                    event,
                    || {
                        let mut attributes = vec![
                            KeyValue::new("messaging.system", system),
                            KeyValue::new("messaging.operation.type", "send"),
                            KeyValue::new("messaging.operation.name", "send"),
                            KeyValue::new("messaging.destination.name", destination.to_string()),
                            KeyValue::new(
                                "messaging.message.body.size",
                                record.payload.len() as i64,
                            ),
                            KeyValue::new("fnmill.sink", sink.to_string()),
                            KeyValue::new("fnmill.dead_letter", dead_letter),
                        ];
                        if system == "kafka"
                            && let Some(key) = record
                                .key
                                .as_ref()
                                .and_then(|k| std::str::from_utf8(k).ok())
                        {
                            attributes.push(KeyValue::new(
                                "messaging.kafka.message.key",
                                key.to_string(),
                            ));
                        }
                        if let Some(rk) = routing_key {
                            attributes.push(KeyValue::new(
                                "messaging.rabbitmq.destination.routing_key",
                                rk.to_string(),
                            ));
                        }
                        attributes
                    },
                );
                self.propagator.inject(&cx, &mut record.headers);
                cx
            })
            .collect();
        ProducerSpans(spans)
    }
}

/// The producer spans of one batch, ended when the sink confirms it.
#[derive(Debug)]
pub struct ProducerSpans(Vec<Context>);

impl ProducerSpans {
    /// Ends the spans with their batch's outcome: `Err` with the sink's error.
    pub fn end(self, result: Result<(), &SinkError>) {
        for cx in self.0 {
            let span = cx.span();
            if let Err(e) = result {
                span.set_attribute(KeyValue::new(
                    "error.type",
                    match e {
                        SinkError::Retryable(_) => "retryable",
                        SinkError::Permanent(_) => "permanent",
                        SinkError::Gone(_) => "gone",
                    },
                ));
                span.set_status(Status::error(e.to_string()));
            }
            span.end();
        }
    }
}

/// A function call's span, handed to the host so that `sql` and `keyvalue` calls become its
/// children.
#[derive(Clone, Debug)]
pub struct CallScope {
    tracer: SdkTracer,
    pub(crate) cx: Context,
    /// Whether `cx` holds a span of the call's own (to end with it), or is the event's context
    /// (the event is not sampled).
    own_span: bool,
}

impl CallScope {
    /// Ends the call's span with its outcome and what it cost.
    pub fn end(self, result: &Result<Vec<crate::host::Output>, Failure>, stats: &CallStats) {
        if !self.own_span {
            return;
        }
        let span = self.cx.span();
        match result {
            Ok(outputs) => {
                span.set_attribute(KeyValue::new("fnmill.function.outcome", "ok"));
                span.set_attribute(KeyValue::new(
                    "fnmill.function.outputs",
                    outputs.len() as i64,
                ));
            }
            Err(failure) => {
                span.set_attribute(KeyValue::new("fnmill.function.outcome", failure.kind()));
                span.set_attribute(KeyValue::new("error.type", failure.kind()));
                span.set_status(Status::error(failure.to_string()));
            }
        }
        match stats.instantiation {
            Some(d) => {
                span.set_attribute(KeyValue::new("fnmill.instance.reused", false));
                span.set_attribute(KeyValue::new(
                    "fnmill.instance.instantiation_us",
                    d.as_micros() as i64,
                ));
            }
            None => span.set_attribute(KeyValue::new("fnmill.instance.reused", true)),
        }
        if let Some(fuel) = stats.fuel {
            span.set_attribute(KeyValue::new("fnmill.function.fuel_used", fuel as i64));
        }
        span.set_attribute(KeyValue::new(
            "fnmill.instance.memory_bytes",
            stats.memory as i64,
        ));
        span.end();
    }

    /// Starts the client span of one data-source call: `system` is `postgresql` or `redis`,
    /// `operation` the SQL verb or the key-value operation, `name` the data source or bucket.
    pub fn data_call(
        &self,
        system: &'static str,
        operation: Cow<'static, str>,
        name: &str,
        query: Option<&str>,
    ) -> DataSpan {
        let cx = start_span(
            &self.tracer,
            format!("{operation} {name}"),
            SpanKind::Client,
            &self.cx,
            || {
                let mut attributes = vec![
                    KeyValue::new("db.system.name", system),
                    KeyValue::new("db.operation.name", operation.clone()),
                ];
                if system == "postgresql" {
                    attributes.push(KeyValue::new("fnmill.data_source", name.to_string()));
                } else {
                    attributes.push(KeyValue::new("fnmill.bucket", name.to_string()));
                }
                if let Some(q) = query {
                    let mut end = q.len().min(MAX_QUERY_TEXT);
                    while !q.is_char_boundary(end) {
                        end -= 1;
                    }
                    attributes.push(KeyValue::new("db.query.text", q[..end].to_string()));
                }
                attributes
            },
        );
        DataSpan(cx)
    }
}

/// The span of one `sql` or `keyvalue` call.
pub struct DataSpan(Context);

impl DataSpan {
    /// The span's W3C `traceparent`, for a request that carries it to another process (the IO
    /// tier), whose work then joins the trace under this span.
    pub fn traceparent(&self) -> String {
        let span = self.0.span();
        let sc = span.span_context();
        format!(
            "00-{}-{}-{:02x}",
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags().to_u8()
        )
    }

    /// Ends the span; `error` is the error's kind and message, when the call failed.
    pub fn end(self, error: Option<(&'static str, String)>) {
        if !sampled(&self.0) {
            return;
        }
        let span = self.0.span();
        if let Some((kind, message)) = error {
            span.set_attribute(KeyValue::new("error.type", kind));
            span.set_status(Status::error(message));
        }
        span.end();
    }
}

/// An IO process's spans: one server span per request it serves, a child of the `traceparent`
/// the request carries (the compute process's span of the `sql` or `keyvalue` call), so the
/// call's trace goes on through the IO tier.
pub struct IoTierTracer {
    tracer: SdkTracer,
    propagator: Arc<Propagator>,
    system: &'static str,
}

impl fnmill_connector_nats::Observer for IoTierTracer {
    fn start(
        &self,
        data_source: &str,
        caller: &WireCaller,
        target: &str,
        op: &Op,
    ) -> Box<dyn fnmill_connector_nats::ObservedCall> {
        let parent = match &caller.traceparent {
            Some(tp) => self
                .propagator
                .extract(&[Header::new("traceparent", tp.clone().into_bytes())]),
            None => Context::new(),
        };
        let cx = start_span(
            &self.tracer,
            format!("serve {} {target}", op.name()),
            SpanKind::Server,
            &parent,
            || {
                let mut attributes = vec![
                    KeyValue::new("db.system.name", self.system),
                    KeyValue::new("db.operation.name", op.name()),
                    KeyValue::new("fnmill.data_source", data_source.to_string()),
                    KeyValue::new("fnmill.function", caller.function.clone()),
                ];
                if !op.is_sql() {
                    attributes.push(KeyValue::new("fnmill.bucket", target.to_string()));
                }
                if let Some(route) = &caller.route {
                    attributes.push(KeyValue::new("fnmill.route", route.clone()));
                }
                if let Some(event) = &caller.event {
                    attributes.push(KeyValue::new("messaging.message.id", event.clone()));
                }
                attributes
            },
        );
        Box::new(ServedSpan(cx))
    }
}

/// The span of one request an IO process serves.
struct ServedSpan(Context);

impl fnmill_connector_nats::ObservedCall for ServedSpan {
    fn end(self: Box<Self>, error: Option<&WireError>) {
        let span = self.0.span();
        if let Some(e) = error {
            let kind = match e {
                WireError::Database { .. } => "database",
                WireError::Unavailable(_) => "unavailable",
                WireError::Invalid(_) | WireError::Other(_) => "invalid",
                WireError::NotGranted(_) => "not-granted",
                WireError::BadRequest(_) => "bad-request",
            };
            span.set_attribute(KeyValue::new("error.type", kind));
            span.set_status(Status::error(format!("{e:?}")));
        }
        span.end();
    }
}

/// The SQL verb of a statement (`SELECT`, `INSERT`, …), for `db.operation.name`.
pub fn sql_operation(statement: &str) -> Cow<'static, str> {
    let word = statement
        .trim_start()
        .split(|c: char| c.is_whitespace() || c == '(')
        .next()
        .unwrap_or_default();
    if word.is_empty() {
        Cow::Borrowed("SQL")
    } else {
        Cow::Owned(word.to_ascii_uppercase())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sql_verb_names_the_operation() {
        assert_eq!(sql_operation("  select * from t"), "SELECT");
        assert_eq!(
            sql_operation("WITH x AS (select 1) select * from x"),
            "WITH"
        );
        assert_eq!(sql_operation(""), "SQL");
    }

    #[test]
    fn attributes_are_built_only_for_a_span_that_records() {
        // fnmill's sampler: parent-based, trace-id ratio at the root.
        let tracer_sampling = |ratio| {
            SdkTracerProvider::builder()
                .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                    ratio,
                ))))
                .build()
                .tracer("test")
        };
        let built = std::cell::Cell::new(0);
        let attributes = || {
            built.set(built.get() + 1);
            vec![KeyValue::new("fnmill.route", "r")]
        };

        let root_of = |tracer: &SdkTracer| {
            start_span(
                tracer,
                "root",
                SpanKind::Consumer,
                &Context::new(),
                attributes,
            )
        };
        let child_of = |tracer: &SdkTracer, parent: &Context| {
            start_span(tracer, "child", SpanKind::Producer, parent, attributes)
        };

        let dropped = tracer_sampling(0.0);
        let root = root_of(&dropped);
        let child = child_of(&dropped, &root);
        assert!(!root.span().is_recording() && !child.span().is_recording());
        assert!(!sampled(&root) && !sampled(&child));
        assert_eq!(built.get(), 0, "no attributes for spans that are dropped");
        // Not recorded, still propagated: the child carries the root's trace, unsampled.
        assert!(child.span().span_context().is_valid());
        assert_eq!(
            child.span().span_context().trace_id(),
            root.span().span_context().trace_id()
        );
        assert!(!child.span().span_context().is_sampled());

        let kept = tracer_sampling(1.0);
        let root = root_of(&kept);
        let child = child_of(&kept, &root);
        assert!(root.span().is_recording() && child.span().is_recording());
        assert!(sampled(&root) && sampled(&child));
        assert_eq!(built.get(), 2, "attributes for every span that records");

        // An unsampled parent keeps its children unsampled, whatever the ratio.
        let child = child_of(&kept, &root_of(&dropped));
        assert!(!child.span().is_recording());
        assert_eq!(built.get(), 2);
    }
}
