//! Observability: logs, OpenTelemetry traces and metrics.
//!
//! - Logs ([`logs`]): `tracing` to stderr as text or JSON, with the `trace_id` and `span_id`
//!   of the event being handled when tracing is on.
//! - Traces ([`traces`]): a consumer span per event as the child of the `traceparent` it carries
//!   ([`propagation`]), a span per function call and per `sql`/`keyvalue` call, a producer span
//!   per output and dead letter whose context goes into its headers; exported over OTLP (gRPC or
//!   HTTP/protobuf) in batches, off the event path. Off — and free — without an endpoint.
//! - Metrics ([`metrics`]): atomic counters and histograms bound once per route, gauges read on
//!   demand, served as Prometheus text on `/metrics` and pushed over OTLP ([`otlp`]) when an
//!   endpoint is set.
//! - [`settings`]: `[telemetry]` and the `OTEL_*` environment, resolved when the config is
//!   validated.
//!
//! The event path reaches all of this through a few calls: [`RouteTelemetry`] (spans, header
//! propagation) and [`metrics::EventObs`] (an event's metrics and span until it settles), both
//! held by the pipeline, and [`traces::CallScope`], handed to the host for a function call.

pub mod logs;
pub mod metrics;
pub mod otlp;
pub mod propagation;
pub mod settings;
pub mod traces;

use std::sync::Arc;
use std::time::{Duration, Instant};

use fnmill_connector_api::{Event, Record};
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

pub use logs::{SECRET_SAFE_LEVEL, init};
pub use metrics::{EventObs, Registry, RouteMetrics};
pub use traces::{CallScope, Endpoint, ProducerSpans, RouteInfo, RouteTracer, Tracing};

use crate::config::{SinkConfig, SourceConfig, ValidatedConfig};
use crate::host::{CallStats, Failure, Output};
use crate::pipeline::{Destination, RouteStats};

/// How long the last push of metrics and the flush of queued spans may take at shutdown.
const FLUSH_AT_SHUTDOWN: Duration = Duration::from_secs(5);

/// A route's tracing: what the event path asks when it starts an event, calls the function and
/// hands records over. The default is off.
#[derive(Clone, Debug, Default)]
pub struct RouteTelemetry {
    pub tracer: Option<RouteTracer>,
}

impl RouteTelemetry {
    /// Starts observing an event the route just received.
    pub fn start_event(&self, stats: &RouteStats, event: &Event) -> EventObs {
        EventObs::start(stats, self.tracer.as_ref(), event)
    }

    /// The span of a function call, child of the event's span (tracing on).
    pub fn start_call(&self, obs: &EventObs, attempt: u32) -> Option<CallScope> {
        let tracer = self.tracer.as_ref()?;
        Some(tracer.start_call(obs.context()?, attempt))
    }

    /// A function call ended after `took` (measured when metrics are on): its metrics and its
    /// span.
    pub fn end_call(
        &self,
        stats: &RouteStats,
        scope: Option<CallScope>,
        took: Option<Duration>,
        result: &Result<Vec<Output>, Failure>,
        call: &CallStats,
    ) {
        if let (Some(m), Some(took)) = (&stats.metrics, took) {
            m.call(took, call);
        }
        if let Some(scope) = scope {
            scope.end(result, call);
        }
    }

    /// Before `batches` are handed to their sinks: with tracing on, a producer span per record
    /// (returned per batch, to end on confirmation) whose context replaces the records' trace
    /// headers; with tracing off, the event's `traceparent` copied onto records without one.
    pub fn hand_over(
        &self,
        event: &Event,
        obs: &EventObs,
        batches: &mut [(Destination, Vec<Record>)],
        dead_letter: bool,
    ) -> Option<Vec<Option<ProducerSpans>>> {
        match (&self.tracer, obs.context()) {
            (Some(tracer), Some(cx)) => Some(
                batches
                    .iter_mut()
                    .map(|(dest, records)| {
                        Some(tracer.send(
                            cx,
                            &dest.sink_name,
                            dest.target.as_deref(),
                            records,
                            dead_letter,
                        ))
                    })
                    .collect(),
            ),
            _ => {
                // A dead letter carries the event's own headers already.
                if !dead_letter {
                    for (_, records) in batches.iter_mut() {
                        for r in records {
                            propagation::pass_through(&event.headers, &mut r.headers);
                        }
                    }
                }
                None
            }
        }
    }
}

/// The bytes of an output a sink is handed: payload, key and headers.
pub fn output_size(output: &Output) -> usize {
    output.payload.len()
        + output.key.as_ref().map_or(0, |k| k.len())
        + output
            .headers
            .iter()
            .map(|h| h.name.len() + h.value.len())
            .sum::<usize>()
}

/// The telemetry of one run: its tracer provider, and whether metrics are recorded.
pub struct Telemetry {
    settings: settings::TelemetrySettings,
    tracing: Option<Tracing>,
    /// Metrics are recorded only when something reads them.
    metrics: bool,
    stop: CancellationToken,
}

impl Telemetry {
    /// Starts the tracer provider (if tracing is on) for a run of `config`; exports run on `io`.
    pub fn start(config: &ValidatedConfig, io: &Handle) -> anyhow::Result<Self> {
        let settings = config.telemetry_settings().clone();
        let tracing = Tracing::start(&settings, io)?;
        let metrics = config.admin.listen.is_some() || settings.metrics.is_some();
        Ok(Self {
            settings,
            tracing,
            metrics,
            stop: CancellationToken::new(),
        })
    }

    /// Whether metrics are recorded (`admin.listen` or an OTLP metrics endpoint is set).
    pub fn metrics_on(&self) -> bool {
        self.metrics
    }

    /// The spans of an IO process's requests for a data source of `system` (tracing on).
    pub fn io_tier_tracer(
        &self,
        system: &'static str,
    ) -> Option<Arc<dyn fnmill_connector_nats::Observer>> {
        let tracing = self.tracing.as_ref()?;
        Some(Arc::new(tracing.io_tier(system)))
    }

    /// The counters of a new route whose function writes to `destinations`.
    pub fn route_stats(&self, destinations: impl IntoIterator<Item = String>) -> RouteStats {
        RouteStats {
            metrics: self.metrics.then(|| RouteMetrics::new(destinations)),
            ..RouteStats::default()
        }
    }

    /// The tracing of a route (off when tracing is).
    pub fn route(
        &self,
        config: &ValidatedConfig,
        route: &crate::config::RouteConfig,
    ) -> RouteTelemetry {
        let Some(tracing) = &self.tracing else {
            return RouteTelemetry::default();
        };
        let info = RouteInfo {
            route: route.name(),
            function: route.function.clone(),
            source_name: route.source.clone(),
            source: source_endpoint(config.source_of(route)),
            sinks: config
                .sinks
                .iter()
                .map(|(name, sink)| (name.clone(), sink_endpoint(sink)))
                .collect(),
        };
        RouteTelemetry {
            tracer: Some(tracing.route(info)),
        }
    }

    /// Starts pushing `registry` over OTLP, if an endpoint is set. Call inside the IO runtime.
    pub fn push_metrics(
        &self,
        registry: &Arc<Registry>,
    ) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
        let Some(otlp) = self.settings.metrics.clone() else {
            return Ok(None);
        };
        otlp::spawn_metrics_exporter(
            self.settings.clone(),
            otlp,
            registry.clone(),
            &Handle::current(),
            self.stop.clone(),
        )
        .map(Some)
    }

    /// Pushes metrics one last time (awaiting `pusher`, at most a few seconds).
    pub async fn stop_metrics(&self, pusher: Option<tokio::task::JoinHandle<()>>) {
        self.stop.cancel();
        if let Some(p) = pusher {
            let _ = tokio::time::timeout(FLUSH_AT_SHUTDOWN, p).await;
        }
    }

    /// Exports the spans still queued (at most a few seconds). Call outside the IO runtime's
    /// threads, before it shuts down.
    pub fn shutdown(&self) {
        if let Some(t) = &self.tracing {
            let started = Instant::now();
            t.shutdown(FLUSH_AT_SHUTDOWN);
            tracing::debug!(
                took_ms = started.elapsed().as_millis() as u64,
                "Spans flushed"
            );
        }
    }

    /// One line saying where traces and metrics go, for `fnmill check` and the start-up log.
    pub fn describe(config: &ValidatedConfig) -> String {
        let s = config.telemetry_settings();
        let traces = match &s.traces {
            Some(t) => format!("{} (sample ratio {})", t.otlp, t.sample_ratio),
            None => "off".into(),
        };
        let mut metrics = Vec::new();
        if let Some(listen) = config.admin.listen {
            metrics.push(format!("/metrics on {listen}"));
        }
        if let Some(m) = &s.metrics {
            metrics.push(format!("{m} every {:?}", s.metrics_interval));
        }
        let metrics = if metrics.is_empty() {
            "off".to_string()
        } else {
            metrics.join(", ")
        };
        format!(
            "service `{}`: traces {traces}; metrics {metrics}",
            s.service_name
        )
    }
}

fn source_endpoint(source: &SourceConfig) -> Endpoint {
    match source {
        SourceConfig::File(c) => Endpoint {
            system: "file",
            destination: c.path.display().to_string(),
            group: None,
            routing_key: None,
        },
        SourceConfig::Amqp(c) => Endpoint {
            system: "rabbitmq",
            destination: c.queue.clone(),
            group: None,
            routing_key: None,
        },
        SourceConfig::Kafka(c) => Endpoint {
            system: "kafka",
            destination: c.topics.join(","),
            group: Some(c.group.clone()),
            routing_key: None,
        },
    }
}

fn sink_endpoint(sink: &SinkConfig) -> Endpoint {
    match sink {
        SinkConfig::File(c) => Endpoint {
            system: "file",
            destination: c.path.display().to_string(),
            group: None,
            routing_key: None,
        },
        SinkConfig::Amqp(c) => Endpoint {
            system: "rabbitmq",
            // The semantic conventions' name for the default exchange.
            destination: if c.exchange.is_empty() {
                "amq.default".into()
            } else {
                c.exchange.clone()
            },
            group: None,
            routing_key: Some(c.routing_key.clone()),
        },
        SinkConfig::Kafka(c) => Endpoint {
            system: "kafka",
            destination: c.topic.clone().unwrap_or_default(),
            group: None,
            routing_key: None,
        },
    }
}
