//! The admin HTTP endpoint: `/healthz` (the process is alive), `/readyz` (every source is
//! connected and consuming, and every data source served by an IO tier answers — what Kubernetes
//! should route and scale on) and `/metrics` (every metric of [`crate::telemetry::metrics`], in
//! the Prometheus text format).
//!
//! It must stay up whatever its clients do: at most [`MAX_CONNECTIONS`] connections at once
//! (more wait in the kernel's backlog), each given [`HEADER_TIMEOUT`] to send its request and
//! [`CONNECTION_LIFETIME`] in all, and an accept that fails (out of file descriptors) backs off
//! instead of spinning, with one warning per [`ACCEPT_WARN_EVERY`].

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fnmill_connector_api::Readiness;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::telemetry::Registry;

/// Connections served at once. Probes and a scraper need a handful; the cap keeps a flood of
/// clients from taking every file descriptor of the process.
pub const MAX_CONNECTIONS: usize = 64;

/// How long a client has to send its request's headers (a client that connects and stays
/// silent must not hold a slot).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// How long one connection may live, keep-alive included.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(30);

/// At most one warning this often about failing accepts.
const ACCEPT_WARN_EVERY: Duration = Duration::from_secs(10);

/// The longest back-off after a failed accept.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// What the endpoint reports on.
#[derive(Clone, Default)]
pub struct AdminState {
    /// Readiness of each source, by source name.
    pub sources: Vec<(String, Readiness)>,
    /// Readiness of each data source whose readiness is known (its IO tier answers, on a
    /// compute process; it is served, on an IO process), by data source name.
    pub data_sources: Vec<(String, Readiness)>,
    /// Every metric of the run (see [`crate::telemetry::metrics`]).
    pub metrics: Arc<Registry>,
}

impl AdminState {
    fn not_ready(&self) -> Vec<String> {
        let sources = self
            .sources
            .iter()
            .filter(|(_, r)| !r.is_ready())
            .map(|(n, _)| n.clone());
        let data_sources = self
            .data_sources
            .iter()
            .filter(|(_, r)| !r.is_ready())
            .map(|(n, _)| format!("data source {n}"));
        sources.chain(data_sources).collect()
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
            "/metrics" => (StatusCode::OK, self.metrics.prometheus()),
            _ => (StatusCode::NOT_FOUND, "not found\n".to_string()),
        };
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        if path == "/metrics" {
            response.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
        }
        response
    }
}

/// Serves on `listener` (bound by the caller before anything started, so a port in use is a
/// start-up error) until `shutdown`. Must be called inside a tokio runtime.
pub fn serve(
    listener: std::net::TcpListener,
    state: AdminState,
    shutdown: CancellationToken,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    listener.set_nonblocking(true)?;
    let listener = TcpListener::from_std(listener)?;
    tracing::info!(listen = %listener.local_addr()?, "Admin endpoint listening");
    let state = Arc::new(state);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    Ok(tokio::spawn(async move {
        let mut backoff = Duration::from_millis(10);
        let mut last_warning: Option<Instant> = None;
        let mut failed = 0u64;
        loop {
            // Wait for a free slot first: extra clients wait in the kernel's backlog.
            let slot = tokio::select! {
                slot = slots.clone().acquire_owned() => slot.expect("never closed"),
                _ = shutdown.cancelled() => return,
            };
            let (stream, _) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => {
                        backoff = Duration::from_millis(10);
                        a
                    }
                    Err(e) => {
                        // Out of file descriptors, most likely: retrying at once would spin.
                        failed += 1;
                        if last_warning.is_none_or(|t| t.elapsed() >= ACCEPT_WARN_EVERY) {
                            tracing::warn!(error = %e, failed, "Admin endpoint cannot accept connections; backing off");
                            last_warning = Some(Instant::now());
                            failed = 0;
                        }
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            _ = shutdown.cancelled() => return,
                        }
                        backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                        continue;
                    }
                },
                _ = shutdown.cancelled() => return,
            };
            let state = state.clone();
            tokio::spawn(async move {
                let _slot = slot;
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let response = state.respond(req.uri().path());
                    async move { Ok::<_, Infallible>(response) }
                });
                let connection = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service);
                let _ = tokio::time::timeout(CONNECTION_LIFETIME, connection).await;
            });
        }
    }))
}
