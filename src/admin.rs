//! The admin HTTP endpoint: `/healthz` (the process is alive), `/readyz` (every source is
//! connected and consuming — what Kubernetes should route and scale on) and `/metrics` (route
//! counters in the Prometheus text format).

use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use fnmill_connector_api::Readiness;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::pipeline::RouteStats;

/// A route counter: metric name, help text, and how to read it.
type Counter = (&'static str, &'static str, fn(&RouteStats) -> u64);

/// What the endpoint reports on.
#[derive(Clone, Default)]
pub struct AdminState {
    /// Readiness of each source, by source name.
    pub sources: Vec<(String, Readiness)>,
    /// Counters of each route, by route name.
    pub routes: Vec<(String, Arc<RouteStats>)>,
}

impl AdminState {
    fn not_ready(&self) -> Vec<&str> {
        self.sources
            .iter()
            .filter(|(_, r)| !r.is_ready())
            .map(|(n, _)| n.as_str())
            .collect()
    }

    fn metrics(&self) -> String {
        let mut out = String::new();
        let counters: [Counter; 5] = [
            (
                "fnmill_events_received_total",
                "Events accepted by the route's dispatcher.",
                |s| s.received.load(Ordering::Relaxed),
            ),
            (
                "fnmill_events_done_total",
                "Events whose outputs were all confirmed.",
                |s| s.done.load(Ordering::Relaxed),
            ),
            (
                "fnmill_events_dead_lettered_total",
                "Events confirmed on the dead-letter destination.",
                |s| s.dead_lettered.load(Ordering::Relaxed),
            ),
            (
                "fnmill_retries_total",
                "Retries of retryable failures.",
                |s| s.retries.load(Ordering::Relaxed),
            ),
            (
                "fnmill_events_abandoned_total",
                "Events settled as not done (to be delivered again).",
                |s| s.abandoned.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, get) in counters {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (route, stats) in &self.routes {
                let _ = writeln!(out, "{name}{{route=\"{route}\"}} {}", get(stats));
            }
        }
        let _ = writeln!(
            out,
            "# HELP fnmill_source_ready Whether the source is connected and consuming.\n# TYPE fnmill_source_ready gauge"
        );
        for (source, ready) in &self.sources {
            let _ = writeln!(
                out,
                "fnmill_source_ready{{source=\"{source}\"}} {}",
                u8::from(ready.is_ready())
            );
        }
        out
    }

    fn respond(&self, path: &str) -> Response<Full<Bytes>> {
        let (status, body) = match path {
            "/healthz" => (StatusCode::OK, "ok\n".to_string()),
            "/readyz" => match self.not_ready().as_slice() {
                [] => (StatusCode::OK, "ready\n".to_string()),
                names => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("not ready: {}\n", names.join(", ")),
                ),
            },
            "/metrics" => (StatusCode::OK, self.metrics()),
            _ => (StatusCode::NOT_FOUND, "not found\n".to_string()),
        };
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        response
    }
}

/// Binds `listen` and serves until `shutdown`. Binding happens before this returns, so a port
/// already in use is a start-up error, not a silent failure.
pub async fn serve(
    listen: SocketAddr,
    state: AdminState,
    shutdown: CancellationToken,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = TcpListener::bind(listen).await?;
    tracing::info!(listen = %listener.local_addr()?, "Admin endpoint listening");
    let state = Arc::new(state);
    Ok(tokio::spawn(async move {
        loop {
            let (stream, _) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "Admin endpoint accept failed");
                        continue;
                    }
                },
                _ = shutdown.cancelled() => return,
            };
            let state = state.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let response = state.respond(req.uri().path());
                    async move { Ok::<_, Infallible>(response) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    }))
}
