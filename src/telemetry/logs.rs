//! Logging: `tracing` to stderr, as text or JSON. `RUST_LOG`, when set, overrides the
//! configured filter — except for the client libraries that log secrets at their most verbose
//! levels (lapin writes the AMQP login frame, password included, at trace level): those are
//! capped at [`SECRET_SAFE_LEVEL`] whatever the filter asks.
//!
//! A line logged while an event is being handled with tracing on carries the `trace_id` and
//! `span_id` of the span it belongs to (the event's, or the function call's): as `key=value`
//! fields at the end of a text line, as top-level fields of a JSON line.

use std::io::IsTerminal;

use opentelemetry::trace::TraceContextExt;
use tracing::{Level, Subscriber};
use tracing_subscriber::filter::{EnvFilter, filter_fn};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, fmt};

use crate::config::{LogFormat, TelemetryConfig};

/// The most verbose level the secret-logging libraries may log at.
pub const SECRET_SAFE_LEVEL: Level = Level::INFO;

/// Log targets (module paths) of libraries that log credentials below [`SECRET_SAFE_LEVEL`].
const SECRET_LOGGING_TARGETS: &[&str] = &[
    "lapin",
    "amq_protocol",
    "tokio_postgres",
    "redis",
    // Its debug lines print the server address with the URL's user and password.
    "async_nats",
];

/// Whether an event of `target` at `level` may be logged at all.
fn safe(target: &str, level: &Level) -> bool {
    let secret_logging = SECRET_LOGGING_TARGETS
        .iter()
        .any(|t| target == *t || target.starts_with(&format!("{t}::")));
    !secret_logging || *level <= SECRET_SAFE_LEVEL
}

/// Installs the global subscriber. Calling it twice is harmless (the second call is ignored),
/// which keeps tests that build several apps in one process simple.
pub fn init(config: &TelemetryConfig) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.log))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let secrets = filter_fn(|meta| safe(meta.target(), meta.level()));
    // Colour only for people: log files and test harnesses get plain `key=value` fields.
    let ansi = std::io::stderr().is_terminal();
    let layer = match config.log_format {
        LogFormat::Text => fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(ansi)
            .event_format(TraceIds {
                inner: fmt::format().with_ansi(ansi),
                json: false,
            })
            .boxed(),
        LogFormat::Json => fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .event_format(TraceIds {
                inner: fmt::format().json(),
                json: true,
            })
            .boxed(),
    };
    let _ = tracing_subscriber::registry()
        .with(layer.with_filter(secrets).with_filter(filter))
        .try_init();
}

/// An event format that adds the current OpenTelemetry span's ids to what `inner` writes.
struct TraceIds<F> {
    inner: F,
    json: bool,
}

impl<S, N, F> FormatEvent<S, N> for TraceIds<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let ids = opentelemetry::Context::map_current(|cx| {
            let span = cx.span();
            let sc = span.span_context();
            sc.is_valid().then(|| (sc.trace_id(), sc.span_id()))
        });
        let Some((trace_id, span_id)) = ids else {
            return self.inner.format_event(ctx, writer, event);
        };
        // The line is formatted aside (without colours) so that the ids go inside it.
        let mut line = String::new();
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        writer.write_str(&with_ids(
            &line,
            self.json,
            &trace_id.to_string(),
            &span_id.to_string(),
        ))
    }
}

/// `line` (ending in a newline) with the ids added: before the closing brace of a JSON object,
/// or at the end of a text line.
fn with_ids(line: &str, json: bool, trace_id: &str, span_id: &str) -> String {
    let body = line.strip_suffix('\n').unwrap_or(line);
    if json && let Some(open) = body.strip_suffix('}') {
        format!("{open},\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\"}}\n")
    } else {
        format!("{body} trace_id={trace_id} span_id={span_id}\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_logging_libraries_are_capped_whatever_the_filter() {
        assert!(!safe("lapin::io_loop", &Level::TRACE));
        assert!(!safe("lapin", &Level::DEBUG));
        assert!(safe("lapin", &Level::WARN));
        assert!(!safe("amq_protocol::frame", &Level::TRACE));
        assert!(safe("fnmill::pipeline", &Level::TRACE));
        assert!(safe("lapinx", &Level::TRACE));
    }

    #[test]
    fn ids_go_inside_the_line() {
        assert_eq!(
            with_ids("{\"level\":\"INFO\"}\n", true, "t", "s"),
            "{\"level\":\"INFO\",\"trace_id\":\"t\",\"span_id\":\"s\"}\n"
        );
        assert_eq!(
            with_ids("INFO x: hello a=1\n", false, "t", "s"),
            "INFO x: hello a=1 trace_id=t span_id=s\n"
        );
    }
}
