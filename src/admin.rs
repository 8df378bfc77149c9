//! The admin HTTP endpoint: `/healthz` (the process is alive), `/readyz` (every source is
//! connected and consuming, and every data source served by an IO tier answers — what Kubernetes
//! should route and scale on) and `/metrics` (route counters and data-source calls in the
//! Prometheus text format).
//!
//! It must stay up whatever its clients do: at most [`MAX_CONNECTIONS`] connections at once
//! (more wait in the kernel's backlog), each given [`HEADER_TIMEOUT`] to send its request and
//! [`CONNECTION_LIFETIME`] in all, and an accept that fails (out of file descriptors) backs off
//! instead of spinning, with one warning per [`ACCEPT_WARN_EVERY`].

use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;
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

use crate::pipeline::RouteStats;
use crate::tier::measured::{BUCKETS, DataSourceStatus, Outcome};

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

/// A label value in the Prometheus text format: `\`, `"` and newlines escaped.
fn label(value: &str) -> String {
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

/// A route counter: metric name, help text, and how to read it.
type Counter = (&'static str, &'static str, fn(&RouteStats) -> u64);

/// What the endpoint reports on.
#[derive(Clone, Default)]
pub struct AdminState {
    /// Readiness of each source, by source name.
    pub sources: Vec<(String, Readiness)>,
    /// Counters of each route, by route name.
    pub routes: Vec<(String, Arc<RouteStats>)>,
    /// Calls and readiness of each data source.
    pub data_sources: Vec<DataSourceStatus>,
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
            .filter(|d| d.ready.as_ref().is_some_and(|r| !r.is_ready()))
            .map(|d| format!("data source {}", d.name));
        sources.chain(data_sources).collect()
    }

    /// Each data source's calls as a histogram per outcome, its readiness, an IO tier's
    /// refusals.
    fn data_source_metrics(&self, out: &mut String) {
        if self.data_sources.is_empty() {
            return;
        }
        let name = "fnmill_data_source_call_duration_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Data-source calls by outcome and how long they took, through this \
             process's pool (via=\"pool\") or its IO tier (via=\"io-tier\").\n# TYPE {name} histogram"
        );
        for d in &self.data_sources {
            for outcome in Outcome::ALL {
                let h = d.calls.snapshot(outcome);
                if outcome != Outcome::Ok && h.count() == 0 {
                    continue;
                }
                let labels = format!(
                    "data_source=\"{}\",via=\"{}\",outcome=\"{}\"",
                    label(&d.name),
                    d.via.label(),
                    outcome.label()
                );
                for (bound, count) in BUCKETS.iter().zip(&h.cumulative) {
                    let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {count}");
                }
                let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", h.count());
                let _ = writeln!(out, "{name}_sum{{{labels}}} {}", h.sum_seconds);
                let _ = writeln!(out, "{name}_count{{{labels}}} {}", h.count());
            }
        }
        let servers: Vec<_> = self
            .data_sources
            .iter()
            .filter_map(|d| d.server.as_ref().map(|s| (&d.name, s)))
            .collect();
        if !servers.is_empty() {
            let name = "fnmill_data_source_refused_total";
            let _ = writeln!(
                out,
                "# HELP {name} Requests this IO process refused: not granted by its config, or \
                 unreadable.\n# TYPE {name} counter"
            );
            for (ds, stats) in servers {
                for (reason, n) in [
                    ("not-granted", &stats.not_granted),
                    ("bad-request", &stats.bad_requests),
                ] {
                    let _ = writeln!(
                        out,
                        "{name}{{data_source=\"{}\",reason=\"{reason}\"}} {}",
                        label(ds),
                        n.load(Ordering::Relaxed)
                    );
                }
            }
        }
        let name = "fnmill_data_source_ready";
        let _ = writeln!(
            out,
            "# HELP {name} Whether the data source's IO tier answers (compute), or this IO \
             process serves it (io).\n# TYPE {name} gauge"
        );
        for d in &self.data_sources {
            if let Some(ready) = &d.ready {
                let _ = writeln!(
                    out,
                    "{name}{{data_source=\"{}\"}} {}",
                    label(&d.name),
                    u8::from(ready.is_ready())
                );
            }
        }
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
                let _ = writeln!(out, "{name}{{route=\"{}\"}} {}", label(route), get(stats));
            }
        }
        let _ = writeln!(
            out,
            "# HELP fnmill_source_ready Whether the source is connected and consuming.\n# TYPE fnmill_source_ready gauge"
        );
        for (source, ready) in &self.sources {
            let _ = writeln!(
                out,
                "fnmill_source_ready{{source=\"{}\"}} {}",
                label(source),
                u8::from(ready.is_ready())
            );
        }
        self.data_source_metrics(&mut out);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
