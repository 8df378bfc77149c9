//! RabbitMQ (AMQP 0.9.1) in and out of fnmill: an [`AmqpSource`] that consumes a queue and
//! acknowledges each message only once its delivery settled, and an [`AmqpSink`] that publishes
//! to an exchange with publisher confirms and `mandatory`, so an unroutable message is a failure.
//!
//! # Delivery contract
//!
//! - A message is `basic_ack`ed only after the pipeline settled its delivery as done (every output
//!   confirmed) or dead-lettered (the dead letter confirmed). Settlements arrive in any order (keys
//!   run concurrently); acks are per delivery tag, with one `multiple` ack covering the contiguous
//!   run of settled tags below the oldest unsettled one.
//! - An abandoned delivery (shutdown, a stopped lane, a dropped delivery) is `basic_nack`ed with
//!   requeue; one lost with its connection is requeued by the broker itself.
//! - With `dead_letter = "broker"` on the source, an event that failed for good is
//!   `basic_reject`ed with `requeue = false`, so the queue's own dead-letter exchange receives it.
//! - The sink publishes persistent messages (`delivery_mode = 2`) with `mandatory = true` on a
//!   channel in confirm mode; `publish` resolves when the broker confirmed every record. A record
//!   the broker returned as unroutable fails the call as [`SinkError::Permanent`] even though the
//!   broker also acks it.
//!
//! # Layout
//!
//! - [`config`]: the config structs of source and sink, and the topology they may declare.
//! - [`source`]: [`AmqpSource`], consuming with `basic_qos` prefetch, reconnecting with backoff.
//! - [`sink`]: [`AmqpSink`], publishing on pooled confirm channels (deadpool).
//! - `headers`: AMQP field tables to fnmill headers and back.
//!
//! [`SinkError::Permanent`]: fnmill_connector_api::SinkError::Permanent

use std::time::Duration;

use std::path::Path;

use lapin::tcp::OwnedTLSConfig;
use lapin::uri::{AMQPScheme, AMQPUri};
use lapin::{Connection, ConnectionProperties};

pub mod config;
mod headers;
pub mod sink;
pub mod source;

pub use config::{AmqpSinkConfig, AmqpSourceConfig, DeadLetterMode, OrderingKey, Topology};
pub use sink::AmqpSink;
pub use source::AmqpSource;

/// What can go wrong building or running an AMQP source or sink.
#[derive(Debug, thiserror::Error)]
pub enum AmqpError {
    /// `url` is not an AMQP URI. The URI itself is not repeated: it may hold a password.
    #[error("`url` is not a valid AMQP URI: {0}")]
    Url(String),
    #[error("`{key}` {message}")]
    Invalid { key: &'static str, message: String },
    #[error("{what}: {source}")]
    Broker {
        what: String,
        #[source]
        source: lapin::Error,
    },
    #[error("{what}: timed out after {after:?}")]
    Timeout { what: String, after: Duration },
}

impl From<fnmill_connector_api::secret::FieldError> for AmqpError {
    fn from(e: fnmill_connector_api::secret::FieldError) -> Self {
        AmqpError::Invalid {
            key: e.field,
            message: e.message,
        }
    }
}

impl AmqpError {
    pub(crate) fn broker(what: impl Into<String>) -> impl FnOnce(lapin::Error) -> Self {
        let what = what.into();
        move |source| AmqpError::Broker { what, source }
    }
}

pub type Result<T, E = AmqpError> = std::result::Result<T, E>;

/// How long opening a connection may take before it counts as failed (and is retried).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Parses `url` and sets the heartbeat interval, unless the URL sets its own.
pub(crate) fn parse_url(url: &str, heartbeat: Duration) -> Result<AMQPUri> {
    let mut uri: AMQPUri = url.parse().map_err(AmqpError::Url)?;
    if uri.query.heartbeat.is_none() {
        uri.query.heartbeat = Some(heartbeat.as_secs().clamp(1, u16::MAX as u64) as u16);
    }
    Ok(uri)
}

/// Where a source or sink connects: the parsed URI and, for `amqps://`, what to trust.
#[derive(Clone)]
pub(crate) struct Endpoint {
    uri: AMQPUri,
    tls: OwnedTLSConfig,
}

/// Host, port, vhost and whether TLS is on; never the user or password.
impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("host", &self.uri.authority.host)
            .field("port", &self.uri.authority.port)
            .field("vhost", &self.uri.vhost)
            .field("tls", &(self.uri.scheme == AMQPScheme::AMQPS))
            .finish()
    }
}

impl Endpoint {
    /// `url` with `heartbeat` (see [`parse_url`]). An `amqps://` URL connects over TLS and
    /// checks the broker's certificate and host name against the system's roots plus the PEM
    /// certificates in `tls_ca_file`, read here so that a bad file fails at start.
    pub(crate) fn new(url: &str, heartbeat: Duration, tls_ca_file: Option<&Path>) -> Result<Self> {
        let uri = parse_url(url, heartbeat)?;
        let mut tls = OwnedTLSConfig::default();
        if let Some(path) = tls_ca_file {
            if uri.scheme != AMQPScheme::AMQPS {
                return Err(AmqpError::Invalid {
                    key: "tls_ca_file",
                    message: "is set, but `url` is not amqps://".into(),
                });
            }
            let pem = std::fs::read_to_string(path).map_err(|e| AmqpError::Invalid {
                key: "tls_ca_file",
                message: format!("cannot be read: {}: {e}", path.display()),
            })?;
            if !pem.contains("-----BEGIN CERTIFICATE-----") {
                return Err(AmqpError::Invalid {
                    key: "tls_ca_file",
                    message: format!("{} holds no PEM certificate", path.display()),
                });
            }
            tls.cert_chain = Some(pem);
        }
        Ok(Self { uri, tls })
    }

    /// Opens one connection, named so that it can be found in the management UI.
    pub(crate) async fn connect(&self, name: &str) -> Result<Connection> {
        let props = ConnectionProperties::default().with_connection_name(name.into());
        let what = format!(
            "connecting to {}:{}",
            self.uri.authority.host, self.uri.authority.port
        );
        let runtime = lapin::runtime::default_runtime().map_err(AmqpError::broker(&what))?;
        let connect =
            Connection::connect_uri_with_config(self.uri.clone(), props, self.tls.clone(), runtime);
        match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
            Ok(result) => result.map_err(AmqpError::broker(what)),
            Err(_) => Err(AmqpError::Timeout {
                what,
                after: CONNECT_TIMEOUT,
            }),
        }
    }
}

/// Exponential backoff with jitter for reconnecting: from 100 ms (a broker restart or a cut
/// connection is usually over quickly) doubling to 5 s (a long outage costs one attempt per
/// 5 s, which a broker coming back up does not notice).
#[derive(Debug)]
pub(crate) struct Reconnect {
    next: Duration,
}

impl Reconnect {
    const INITIAL: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(5);

    pub(crate) fn new() -> Self {
        Self {
            next: Self::INITIAL,
        }
    }

    pub(crate) fn reset(&mut self) {
        self.next = Self::INITIAL;
    }

    /// The wait before the next attempt (±20% jitter, so replicas do not reconnect in lockstep).
    pub(crate) fn delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        base.mul_f64(0.8 + 0.4 * fastrand::f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_is_added_unless_the_url_sets_one() {
        let uri = parse_url(
            "amqp://guest:guest@127.0.0.1:5672/%2f",
            Duration::from_secs(7),
        )
        .unwrap();
        assert_eq!(uri.query.heartbeat, Some(7));
        let uri = parse_url(
            "amqp://127.0.0.1:5672/%2f?heartbeat=3",
            Duration::from_secs(7),
        )
        .unwrap();
        assert_eq!(uri.query.heartbeat, Some(3));
        assert!(parse_url("http://x", Duration::from_secs(1)).is_err());
    }

    #[test]
    fn tls_ca_file_needs_amqps_and_a_readable_pem_and_debug_hides_the_password() {
        let dir = std::env::temp_dir().join(format!("fnmill-amqp-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pem = dir.join("ca.pem");
        std::fs::write(
            &pem,
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let junk = dir.join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        let hb = Duration::from_secs(5);
        let err = |url: &str, ca: &Path| Endpoint::new(url, hb, Some(ca)).unwrap_err().to_string();

        let e = err("amqp://u:hunter2@h:5672/%2f", &pem);
        assert!(e.contains("not amqps://"), "{e}");
        let e = err("amqps://u:hunter2@h/%2f", &dir.join("missing.pem"));
        assert!(e.contains("cannot be read"), "{e}");
        let e = err("amqps://u:hunter2@h/%2f", &junk);
        assert!(e.contains("no PEM certificate"), "{e}");
        let ok = Endpoint::new("amqps://u:hunter2@h/%2f", hb, Some(&pem)).unwrap();
        let shown = format!("{ok:?}");
        assert!(
            shown.contains("tls: true") && shown.contains("port: 5671"),
            "{shown}"
        );
        assert!(!shown.contains("hunter2"), "{shown}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn reconnect_backoff_grows_and_caps() {
        let mut r = Reconnect::new();
        let first = r.delay();
        assert!(first >= Duration::from_millis(80) && first <= Duration::from_millis(120));
        for _ in 0..20 {
            assert!(r.delay() <= Duration::from_secs(6));
        }
        r.reset();
        assert!(r.delay() <= Duration::from_millis(120));
    }
}
