//! OTLP transport: the HTTP client the span exporter posts with, and the metrics exporter that
//! pushes the [`Registry`](super::metrics::Registry) every interval.
//!
//! Both run their requests on the IO runtime. The span exporter is driven by OpenTelemetry's
//! batch thread, which is not a tokio thread: [`IoHttpClient`] hands each request to the IO
//! runtime and waits for it there. Metrics are built as OTLP protobuf messages directly from
//! fnmill's own counters and histograms (cumulative, like `/metrics`): the SDK's instruments
//! would take a lock and hash the labels on every recording.
//!
//! An export that fails is logged once as a warning (and once more when exports work again),
//! never per attempt: an unreachable collector must not flood the log.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use opentelemetry_http::{HttpClient, HttpError, Request, Response};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint,
    ResourceMetrics, ScopeMetrics, Sum, metric, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

use super::metrics::{Family, Kind, Registry, Value};
use super::settings::{Otlp, Protocol, TelemetrySettings};
use fnmill_connector_api::metrics::DURATION_BOUNDS_NS;

/// Responses larger than this are cut: a collector answers with a small status message.
const MAX_RESPONSE: usize = 64 * 1024;

/// An HTTP client whose requests run on the IO runtime, whatever thread asks.
#[derive(Clone, Debug)]
pub struct IoHttpClient {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
    io: Handle,
    timeout: Duration,
}

impl IoHttpClient {
    pub fn new(io: Handle, timeout: Duration) -> anyhow::Result<Self> {
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()?
            .https_or_http()
            .enable_http1()
            .build();
        Ok(Self {
            client: Client::builder(TokioExecutor::new()).build(https),
            io,
            timeout,
        })
    }

    async fn send(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let client = self.client.clone();
        let timeout = self.timeout;
        let work = async move {
            let (parts, body) = request.into_parts();
            let response = client
                .request(Request::from_parts(parts, Full::new(body)))
                .await?;
            let (parts, body) = response.into_parts();
            let body = http_body_util::Limited::new(body, MAX_RESPONSE)
                .collect()
                .await?
                .to_bytes();
            Ok::<_, HttpError>(Response::from_parts(parts, body))
        };
        match self
            .io
            .spawn(async move { tokio::time::timeout(timeout, work).await })
            .await
        {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(format!("no answer within {timeout:?}").into()),
            Err(e) => Err(format!("the IO runtime is gone: {e}").into()),
        }
    }
}

#[async_trait::async_trait]
impl HttpClient for IoHttpClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        self.send(request).await
    }
}

/// Logs an export failure once, and the recovery once.
#[derive(Debug)]
pub struct FailureLog {
    what: &'static str,
    endpoint: String,
    failing: AtomicBool,
}

impl FailureLog {
    pub fn new(what: &'static str, endpoint: &str) -> Self {
        Self {
            what,
            endpoint: endpoint.to_string(),
            failing: AtomicBool::new(false),
        }
    }

    pub fn failed(&self, error: &dyn std::fmt::Display) {
        if !self.failing.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                endpoint = %self.endpoint,
                error = %error,
                "Cannot export {} over OTLP; they are dropped until the collector answers \
                 (events are not held up; logged once)",
                self.what
            );
        } else {
            tracing::debug!(endpoint = %self.endpoint, error = %error, "OTLP export failed again");
        }
    }

    pub fn succeeded(&self) {
        if self.failing.swap(false, Ordering::Relaxed) {
            tracing::info!(endpoint = %self.endpoint, "Exporting {} over OTLP again", self.what);
        }
    }
}

fn string_value(value: impl Into<String>) -> Option<AnyValue> {
    Some(AnyValue {
        value: Some(any_value::Value::StringValue(value.into())),
    })
}

fn attribute(key: &str, value: impl Into<String>) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: string_value(value),
        ..Default::default()
    }
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// One OTLP metrics request for `families`, cumulative since `start`.
pub fn metrics_request(
    settings: &TelemetrySettings,
    families: &[Family],
    start: SystemTime,
    now: SystemTime,
) -> ExportMetricsServiceRequest {
    let (start, now) = (unix_nanos(start), unix_nanos(now));
    let bounds: Vec<f64> = DURATION_BOUNDS_NS.iter().map(|b| *b as f64 / 1e9).collect();
    let metrics = families
        .iter()
        .filter(|f| !f.points.is_empty())
        .map(|f| {
            let attributes = |labels: &[(&'static str, String)]| {
                labels
                    .iter()
                    .map(|(k, v)| attribute(k, v.clone()))
                    .collect::<Vec<_>>()
            };
            let numbers = || {
                f.points
                    .iter()
                    .filter_map(|p| match &p.value {
                        Value::Int(v) => Some(NumberDataPoint {
                            attributes: attributes(&p.labels),
                            start_time_unix_nano: start,
                            time_unix_nano: now,
                            value: Some(number_data_point::Value::AsInt(*v)),
                            ..Default::default()
                        }),
                        Value::Histogram(_) => None,
                    })
                    .collect()
            };
            let data = match f.kind {
                Kind::Counter => metric::Data::Sum(Sum {
                    data_points: numbers(),
                    aggregation_temporality: AggregationTemporality::Cumulative as i32,
                    is_monotonic: true,
                }),
                Kind::Gauge => metric::Data::Gauge(Gauge {
                    data_points: numbers(),
                }),
                Kind::Histogram => metric::Data::Histogram(Histogram {
                    data_points: f
                        .points
                        .iter()
                        .filter_map(|p| match &p.value {
                            Value::Histogram(h) => Some(HistogramDataPoint {
                                attributes: attributes(&p.labels),
                                start_time_unix_nano: start,
                                time_unix_nano: now,
                                count: h.count(),
                                sum: Some(h.sum_ns as f64 / 1e9),
                                bucket_counts: h.counts.clone(),
                                explicit_bounds: bounds.clone(),
                                ..Default::default()
                            }),
                            Value::Int(_) => None,
                        })
                        .collect(),
                    aggregation_temporality: AggregationTemporality::Cumulative as i32,
                }),
            };
            Metric {
                name: f.otel.to_string(),
                description: f.help.to_string(),
                unit: f.unit.to_string(),
                data: Some(data),
                ..Default::default()
            }
        })
        .collect();
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: resource_attributes(settings),
                ..Default::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(InstrumentationScope {
                    name: "fnmill".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
                metrics,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn resource_attributes(settings: &TelemetrySettings) -> Vec<KeyValue> {
    let mut attributes = vec![
        attribute("service.name", settings.service_name.clone()),
        attribute("service.version", env!("CARGO_PKG_VERSION")),
    ];
    attributes.extend(
        settings
            .resource
            .iter()
            .filter(|(k, _)| k != "service.name")
            .map(|(k, v)| attribute(k, v.clone())),
    );
    attributes
}

/// Where pushed metrics go.
enum MetricsTransport {
    Grpc(
        MetricsServiceClient<tonic::transport::Channel>,
        tonic::metadata::MetadataMap,
    ),
    Http(IoHttpClient, Otlp),
}

impl MetricsTransport {
    /// Must run inside the IO runtime (the gRPC channel's connection task starts there).
    fn new(otlp: &Otlp, io: &Handle) -> anyhow::Result<Self> {
        Ok(match otlp.protocol {
            Protocol::Grpc => {
                let mut endpoint = tonic::transport::Endpoint::from_shared(otlp.endpoint.clone())?
                    .timeout(otlp.timeout);
                if otlp.endpoint.starts_with("https://") {
                    endpoint = endpoint
                        .tls_config(tonic::transport::ClientTlsConfig::new().with_native_roots())?;
                }
                let mut metadata = tonic::metadata::MetadataMap::new();
                for (k, v) in &otlp.headers {
                    if let (Ok(k), Ok(v)) = (
                        tonic::metadata::MetadataKey::from_bytes(k.to_ascii_lowercase().as_bytes()),
                        v.parse(),
                    ) {
                        metadata.insert(k, v);
                    }
                }
                MetricsTransport::Grpc(MetricsServiceClient::new(endpoint.connect_lazy()), metadata)
            }
            Protocol::HttpProtobuf => {
                MetricsTransport::Http(IoHttpClient::new(io.clone(), otlp.timeout)?, otlp.clone())
            }
        })
    }

    async fn send(&mut self, request: ExportMetricsServiceRequest) -> Result<(), String> {
        match self {
            MetricsTransport::Grpc(client, metadata) => {
                let mut request = tonic::Request::new(request);
                *request.metadata_mut() = metadata.clone();
                client
                    .export(request)
                    .await
                    .map(|_| ())
                    .map_err(|s| format!("{}: {}", s.code(), s.message()))
            }
            MetricsTransport::Http(client, otlp) => {
                let mut builder =
                    Request::post(&otlp.endpoint).header("content-type", "application/x-protobuf");
                for (k, v) in &otlp.headers {
                    builder = builder.header(k.as_str(), v.as_str());
                }
                let request = builder
                    .body(Bytes::from(request.encode_to_vec()))
                    .map_err(|e| e.to_string())?;
                let response = client.send(request).await.map_err(|e| e.to_string())?;
                if response.status().is_success() {
                    Ok(())
                } else {
                    Err(format!("HTTP {}", response.status()))
                }
            }
        }
    }
}

/// Pushes `registry` to `otlp` every `settings.metrics_interval`, and once more when `stop` is
/// cancelled. Runs on the IO runtime.
pub fn spawn_metrics_exporter(
    settings: TelemetrySettings,
    otlp: Otlp,
    registry: Arc<Registry>,
    io: &Handle,
    stop: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let _entered = io.enter();
    let mut transport = MetricsTransport::new(&otlp, io)?;
    let log = FailureLog::new("metrics", &otlp.endpoint);
    let start = SystemTime::now();
    tracing::info!(endpoint = %otlp.endpoint, protocol = %otlp.protocol, interval = ?settings.metrics_interval, "Pushing metrics over OTLP");
    Ok(io.spawn(async move {
        let mut tick = tokio::time::interval(settings.metrics_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            let last = tokio::select! {
                _ = tick.tick() => false,
                _ = stop.cancelled() => true,
            };
            let request = metrics_request(&settings, &registry.collect(), start, SystemTime::now());
            match transport.send(request).await {
                Ok(()) => log.succeeded(),
                Err(e) => log.failed(&e),
            }
            if last {
                return;
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::metrics::Point;
    use fnmill_connector_api::metrics::Histogram as Hist;

    #[test]
    fn histograms_and_counters_become_cumulative_otlp_points() {
        let h = Hist::default();
        h.observe(Duration::from_millis(3));
        let families = vec![
            Family {
                otel: "fnmill.events.done",
                prom: "fnmill_events_done_total",
                help: "Done.",
                unit: "{event}",
                kind: Kind::Counter,
                points: vec![Point {
                    labels: vec![("route", "r".into())],
                    value: Value::Int(7),
                }],
            },
            Family {
                otel: "fnmill.event.duration",
                prom: "fnmill_event_duration_seconds",
                help: "Duration.",
                unit: "s",
                kind: Kind::Histogram,
                points: vec![Point {
                    labels: vec![("route", "r".into())],
                    value: Value::Histogram(h.snapshot()),
                }],
            },
        ];
        let settings = TelemetrySettings::default();
        let t0 = UNIX_EPOCH + Duration::from_secs(10);
        let r = metrics_request(&settings, &families, t0, t0 + Duration::from_secs(5));
        let metrics = &r.resource_metrics[0].scope_metrics[0].metrics;
        assert_eq!(metrics.len(), 2);
        match metrics[0].data.as_ref().unwrap() {
            metric::Data::Sum(s) => {
                assert!(s.is_monotonic);
                assert_eq!(
                    s.aggregation_temporality,
                    AggregationTemporality::Cumulative as i32
                );
                assert_eq!(
                    s.data_points[0].value,
                    Some(number_data_point::Value::AsInt(7))
                );
                assert_eq!(s.data_points[0].start_time_unix_nano, 10_000_000_000);
            }
            other => panic!("{other:?}"),
        }
        match metrics[1].data.as_ref().unwrap() {
            metric::Data::Histogram(hist) => {
                let p = &hist.data_points[0];
                assert_eq!(p.count, 1);
                assert_eq!(p.bucket_counts.len(), p.explicit_bounds.len() + 1);
                assert_eq!(p.bucket_counts[8], 1); // (2.5 ms, 5 ms]
                assert_eq!(p.explicit_bounds[8], 0.005);
                assert_eq!(p.sum, Some(0.003));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(metrics[1].unit, "s");
        let resource = r.resource_metrics[0].resource.as_ref().unwrap();
        assert!(
            resource
                .attributes
                .iter()
                .any(|a| a.key == "service.name" && a.value == string_value("fnmill"))
        );
    }
}
