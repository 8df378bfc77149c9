//! Logging: `tracing` to stderr, as text or JSON. `RUST_LOG`, when set, overrides the
//! configured filter — except for the client libraries that log secrets at their most verbose
//! levels (lapin writes the AMQP login frame, password included, at trace level): those are
//! capped at [`SECRET_SAFE_LEVEL`] whatever the filter asks.

use std::io::IsTerminal;

use tracing::Level;
use tracing_subscriber::filter::{EnvFilter, filter_fn};
use tracing_subscriber::layer::SubscriberExt;
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
            .boxed(),
        LogFormat::Json => fmt::layer().json().with_writer(std::io::stderr).boxed(),
    };
    let _ = tracing_subscriber::registry()
        .with(layer.with_filter(secrets).with_filter(filter))
        .try_init();
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
}
