//! `sources.<name>` and `sinks.<name>` with `kind = "amqp"`, and the topology (exchanges, queues,
//! bindings) either may declare before it starts.

use std::collections::BTreeMap;
use std::time::Duration;

use fnmill_connector_api::Problem;
use fnmill_connector_api::connection::Connected;

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, ExchangeKind};
use serde::Deserialize;

use crate::{AmqpError, Result};

/// RabbitMQ's own default user on localhost, so a development broker needs no config.
const DEFAULT_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// RabbitMQ's measurements put the knee of the throughput curve at a prefetch of 100–200
/// (rabbitmq.com, 2024-08-21); 256 stays above it and below the pipeline's default
/// `max_in_flight` of 1000, so the broker, not fnmill, holds the backlog.
fn default_prefetch() -> u16 {
    256
}

/// Short enough that a dead broker or a silently cut connection is noticed within ~20 s (two
/// missed heartbeats), long enough to cost nothing.
fn default_heartbeat() -> Duration {
    Duration::from_secs(10)
}

/// Below the default 20 s `runtime.shutdown_grace` (itself below Kubernetes' 30 s between
/// SIGTERM and SIGKILL), so the drain ends, and acks go out, before the process gives up.
fn default_drain_timeout() -> Duration {
    Duration::from_secs(15)
}

/// Confirm channels of a sink, each keeping up to 1,024 publishes outstanding. Fewer are faster
/// (the `amqp` bench measured 2 channels at 1.11 of a native lapin loop, 128 at 0.77: RabbitMQ
/// confirms more per ack on each).
fn default_channels() -> usize {
    2
}

/// A broker that has not confirmed in this long is treated as gone; the publish is retried.
fn default_confirm_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_true() -> bool {
    true
}

fnmill_connector_api::connection_config! {
    /// `sources.<name>` with `kind = "amqp"`: consume one queue.
    #[derive(Clone, Debug, PartialEq, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct AmqpSourceConfig {
        url: "Broker address, `amqp://user:password@host:port/vhost` (vhost `/` is `%2f`; \
              `amqps://` for TLS). When none of `url`, `url_env`, `url_file` is given: \
              `amqp://guest:guest@127.0.0.1:5672/%2f`, RabbitMQ's local default.",
        /// The queue to consume.
        pub queue: String,
        /// Unacknowledged messages the broker may send ahead (`basic_qos`). This is the source's
        /// window: at most this many of its events are in the pipeline, and after a crash at most
        /// this many are delivered again. Default: 256.
        #[serde(default = "default_prefetch")]
        pub prefetch: u16,
        /// Which events must run one after another: `"none"` (default; every event may run
        /// concurrently), `"routing_key"`, or `{ header = "<name>" }` (events without that header
        /// run unordered). The key also becomes the event's `key`.
        #[serde(default)]
        pub ordering_key: OrderingKey,
        /// Where events that failed for good go: `"pipeline"` (default) — the route's
        /// `dead_letter` destination, with `fnmill.error.*` headers, then the message is acked;
        /// `"broker"` — the message is rejected without requeue, so the queue's own dead-letter
        /// exchange (`x-dead-letter-exchange`) gets it, with the broker's `x-death` header instead
        /// of fnmill's. With `"broker"` the route must not have its own `dead_letter`.
        #[serde(default)]
        pub dead_letter: DeadLetterMode,
        /// Heartbeat interval asked of the broker (a `heartbeat` in `url` wins). Default: `10s`.
        #[serde(default = "default_heartbeat", with = "humantime_serde")]
        pub heartbeat: Duration,
        /// On shutdown, how long to wait for events already handed to functions to settle (and be
        /// acked) before closing the connection anyway; the broker requeues what is left.
        /// Default: `15s` (below the default 20 s `runtime.shutdown_grace`).
        #[serde(default = "default_drain_timeout", with = "humantime_serde")]
        pub drain_timeout: Duration,
        /// Exchanges, queues and bindings to declare (idempotently) on every connect, before
        /// consuming.
        #[serde(default)]
        pub declare: Topology,
    }
}

fnmill_connector_api::connection_config! {
    /// `sinks.<name>` with `kind = "amqp"`: publish to one exchange.
    ///
    /// A route destination's `target` is the routing key; without one the sink's `routing_key` is
    /// used. So `destinations = { out = { sink = "rabbit", target = "orders.valid" } }` publishes
    /// to the sink's `exchange` with routing key `orders.valid`.
    #[derive(Clone, Debug, PartialEq, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct AmqpSinkConfig {
        url: "Broker address, `amqp://user:password@host:port/vhost` (vhost `/` is `%2f`; \
              `amqps://` for TLS). When none of `url`, `url_env`, `url_file` is given: \
              `amqp://guest:guest@127.0.0.1:5672/%2f`, RabbitMQ's local default.",
        /// The exchange to publish to. Default: `""`, the default exchange, which routes a
        /// message to the queue named by its routing key.
        #[serde(default)]
        pub exchange: String,
        /// Routing key for records whose destination has no `target`. Default: `""`.
        #[serde(default)]
        pub routing_key: String,
        /// `true` (default): publish with `mandatory`, so a message no queue receives comes back
        /// and fails the event (dead-lettered, not acked as done). `false`: an unroutable message
        /// is silently dropped by the broker and counts as published.
        #[serde(default = "default_true")]
        pub mandatory: bool,
        /// Confirm channels, each with up to 1,024 publishes awaiting their confirms. A key's
        /// outputs always go on the same channel, in order. Default: 2 (more spread the
        /// outstanding publishes thinner and RabbitMQ confirms fewer per ack; see
        /// docs/performance.md).
        #[serde(default = "default_channels")]
        pub channels: usize,
        /// How long a publish waits for the broker's confirms before it fails as retryable.
        /// Default: `30s`.
        #[serde(default = "default_confirm_timeout", with = "humantime_serde")]
        pub confirm_timeout: Duration,
        /// Heartbeat interval; see the source's `heartbeat`.
        #[serde(default = "default_heartbeat", with = "humantime_serde")]
        pub heartbeat: Duration,
        /// Exchanges, queues and bindings to declare on every connect, before publishing.
        #[serde(default)]
        pub declare: Topology,
    }
}

/// What a source's and a sink's config share: how to reach the broker.
pub(crate) trait Broker: Connected {
    fn heartbeat(&self) -> Duration;

    /// Where to connect, from the connection fields; the files are read and checked here.
    fn endpoint(&self) -> Result<crate::Endpoint> {
        let connection = self.connection();
        let url = connection.url(Some(DEFAULT_URL))?;
        let tls = connection.tls()?;
        crate::Endpoint::new(&url, self.heartbeat(), tls)
    }
}

impl Broker for AmqpSourceConfig {
    fn heartbeat(&self) -> Duration {
        self.heartbeat
    }
}

impl Broker for AmqpSinkConfig {
    fn heartbeat(&self) -> Duration {
        self.heartbeat
    }
}

impl AmqpSourceConfig {
    /// A config for `queue` with every other field at its default.
    pub fn new(queue: impl Into<String>) -> Self {
        Self {
            url: None,
            url_env: None,
            url_file: None,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            queue: queue.into(),
            prefetch: default_prefetch(),
            ordering_key: OrderingKey::None,
            dead_letter: DeadLetterMode::Pipeline,
            heartbeat: default_heartbeat(),
            drain_timeout: default_drain_timeout(),
            declare: Topology::default(),
        }
    }

    /// Everything [`AmqpSource::new`](crate::AmqpSource::new) would refuse, each naming its
    /// key: the URL wherever it is given and the TLS files (checked without a broker), an empty
    /// queue, a prefetch of 0, an empty ordering header, a zero drain. Messages never hold a
    /// secret.
    pub fn check(&self) -> Vec<Problem> {
        let mut problems: Vec<Problem> = self
            .endpoint()
            .err()
            .map(Problem::from)
            .into_iter()
            .collect();
        if self.queue.trim().is_empty() {
            problems.push(Problem::new("queue", "must not be empty"));
        }
        if self.prefetch == 0 {
            problems.push(Problem::new(
                "prefetch",
                "must be at least 1 (0 would mean unlimited)",
            ));
        }
        if let OrderingKey::Header(h) = &self.ordering_key
            && h.is_empty()
        {
            problems.push(Problem::new("ordering_key.header", "must not be empty"));
        }
        if self.drain_timeout.is_zero() {
            problems.push(Problem::new("drain_timeout", "must be greater than zero"));
        }
        problems
    }
}

impl AmqpSinkConfig {
    /// A config for `exchange` with every other field at its default.
    pub fn new(exchange: impl Into<String>) -> Self {
        Self {
            url: None,
            url_env: None,
            url_file: None,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            exchange: exchange.into(),
            routing_key: String::new(),
            mandatory: true,
            channels: default_channels(),
            confirm_timeout: default_confirm_timeout(),
            heartbeat: default_heartbeat(),
            declare: Topology::default(),
        }
    }

    /// Everything [`AmqpSink::new`](crate::AmqpSink::new) would refuse, each naming its key.
    pub fn check(&self) -> Vec<Problem> {
        let mut problems: Vec<Problem> = self
            .endpoint()
            .err()
            .map(Problem::from)
            .into_iter()
            .collect();
        if self.channels == 0 {
            problems.push(Problem::new("channels", "must be at least 1"));
        }
        if self.confirm_timeout.is_zero() {
            problems.push(Problem::new("confirm_timeout", "must be greater than zero"));
        }
        problems
    }
}

/// Where an AMQP source takes an event's ordering key from.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderingKey {
    #[default]
    None,
    RoutingKey,
    Header(String),
}

/// Where an AMQP source's failed events go. See [`AmqpSourceConfig::dead_letter`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeadLetterMode {
    #[default]
    Pipeline,
    Broker,
}

/// Broker objects to declare. Declaring is idempotent when the definitions match; a definition
/// that differs from an existing object (another type, other arguments) is refused by the broker
/// and reported.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    #[serde(default)]
    pub exchanges: Vec<ExchangeDecl>,
    #[serde(default)]
    pub queues: Vec<QueueDecl>,
    #[serde(default)]
    pub bindings: Vec<BindingDecl>,
}

/// `[[….declare.exchanges]]`
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExchangeDecl {
    pub name: String,
    /// `direct` (default), `fanout`, `topic`, `headers`, or a plugin's type.
    #[serde(default = "default_exchange_type", rename = "type")]
    pub kind: String,
    /// Survives a broker restart. Default: `true`.
    #[serde(default = "default_true")]
    pub durable: bool,
    /// Deleted when its last binding goes. Default: `false`.
    #[serde(default)]
    pub auto_delete: bool,
    /// `x-…` arguments, e.g. `{ "alternate-exchange" = "unrouted" }`.
    #[serde(default)]
    pub arguments: BTreeMap<String, ArgValue>,
}

fn default_exchange_type() -> String {
    "direct".into()
}

/// `[[….declare.queues]]`
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueDecl {
    pub name: String,
    /// `classic` (default), `quorum` (replicated, durable; supports `x-delivery-limit`) or
    /// `stream`. Sets `x-queue-type`.
    #[serde(default, rename = "type")]
    pub kind: QueueType,
    /// Survives a broker restart. Default: `true` (quorum queues are always durable).
    #[serde(default = "default_true")]
    pub durable: bool,
    /// Deleted when its last consumer goes. Default: `false`.
    #[serde(default)]
    pub auto_delete: bool,
    /// `x-…` arguments, e.g. `{ "x-dead-letter-exchange" = "dlx", "x-delivery-limit" = 5 }`.
    #[serde(default)]
    pub arguments: BTreeMap<String, ArgValue>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueType {
    #[default]
    Classic,
    Quorum,
    Stream,
}

/// `[[….declare.bindings]]`: route messages from `exchange` with a matching `routing_key` to
/// `queue`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BindingDecl {
    pub queue: String,
    pub exchange: String,
    /// Default: `""`.
    #[serde(default)]
    pub routing_key: String,
    #[serde(default)]
    pub arguments: BTreeMap<String, ArgValue>,
}

/// A declaration argument: TOML's boolean, integer, float or string.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum ArgValue {
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
}

fn field_table(args: &BTreeMap<String, ArgValue>) -> FieldTable {
    let mut table = FieldTable::default();
    for (k, v) in args {
        let value = match v {
            ArgValue::Bool(b) => AMQPValue::Boolean(*b),
            ArgValue::Int(i) => AMQPValue::LongLongInt(*i),
            ArgValue::Float(f) => AMQPValue::Double(*f),
            ArgValue::Text(s) => AMQPValue::LongString(s.as_str().into()),
        };
        table.insert(k.as_str().into(), value);
    }
    table
}

fn exchange_kind(kind: &str) -> ExchangeKind {
    match kind {
        "direct" => ExchangeKind::Direct,
        "fanout" => ExchangeKind::Fanout,
        "topic" => ExchangeKind::Topic,
        "headers" => ExchangeKind::Headers,
        other => ExchangeKind::Custom(other.to_string()),
    }
}

impl Topology {
    pub fn is_empty(&self) -> bool {
        self.exchanges.is_empty() && self.queues.is_empty() && self.bindings.is_empty()
    }

    /// Declares everything, exchanges first, then queues, then bindings.
    pub async fn declare(&self, channel: &Channel) -> Result<()> {
        for e in &self.exchanges {
            let options = ExchangeDeclareOptions {
                durable: e.durable,
                auto_delete: e.auto_delete,
                ..Default::default()
            };
            channel
                .exchange_declare(
                    e.name.as_str().into(),
                    exchange_kind(&e.kind),
                    options,
                    field_table(&e.arguments),
                )
                .await
                .map_err(AmqpError::broker(format!(
                    "declaring exchange `{}`",
                    e.name
                )))?;
        }
        for q in &self.queues {
            let mut args = field_table(&q.arguments);
            let durable = match q.kind {
                QueueType::Classic => q.durable,
                QueueType::Quorum | QueueType::Stream => true,
            };
            if q.kind != QueueType::Classic || q.arguments.contains_key("x-queue-type") {
                let kind = match q.kind {
                    QueueType::Classic => "classic",
                    QueueType::Quorum => "quorum",
                    QueueType::Stream => "stream",
                };
                args.insert("x-queue-type".into(), AMQPValue::LongString(kind.into()));
            }
            let options = QueueDeclareOptions {
                durable,
                auto_delete: q.auto_delete,
                ..Default::default()
            };
            channel
                .queue_declare(q.name.as_str().into(), options, args)
                .await
                .map_err(AmqpError::broker(format!("declaring queue `{}`", q.name)))?;
        }
        for b in &self.bindings {
            channel
                .queue_bind(
                    b.queue.as_str().into(),
                    b.exchange.as_str().into(),
                    b.routing_key.as_str().into(),
                    QueueBindOptions::default(),
                    field_table(&b.arguments),
                )
                .await
                .map_err(AmqpError::broker(format!(
                    "binding queue `{}` to exchange `{}`",
                    b.queue, b.exchange
                )))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_config_parses_with_topology_and_rejects_unknown_fields() {
        let c: AmqpSourceConfig = serde_json::from_value(serde_json::json!({
            "queue": "orders",
            "prefetch": 50,
            "ordering_key": { "header": "customer" },
            "dead_letter": "broker",
            "heartbeat": "5s",
            "declare": {
                "queues": [{ "name": "orders", "type": "quorum",
                             "arguments": { "x-delivery-limit": 3, "x-dead-letter-exchange": "dlx" } }],
                "exchanges": [{ "name": "in", "type": "topic" }],
                "bindings": [{ "queue": "orders", "exchange": "in", "routing_key": "#" }]
            }
        }))
        .unwrap();
        assert_eq!(c.ordering_key, OrderingKey::Header("customer".into()));
        assert_eq!(c.dead_letter, DeadLetterMode::Broker);
        assert_eq!(c.heartbeat, Duration::from_secs(5));
        assert_eq!(c.declare.queues[0].kind, QueueType::Quorum);
        assert_eq!(
            c.declare.queues[0].arguments["x-delivery-limit"],
            ArgValue::Int(3)
        );
        let c: AmqpSourceConfig = serde_json::from_value(
            serde_json::json!({ "queue": "q", "ordering_key": "routing_key" }),
        )
        .unwrap();
        assert_eq!(c.ordering_key, OrderingKey::RoutingKey);
        let err = serde_json::from_value::<AmqpSourceConfig>(
            serde_json::json!({ "queue": "q", "prefech": 1 }),
        )
        .unwrap_err();
        assert!(err.to_string().contains("prefech"), "{err}");
    }

    #[test]
    fn sink_config_defaults() {
        let c: AmqpSinkConfig =
            serde_json::from_value(serde_json::json!({ "exchange": "out" })).unwrap();
        assert_eq!(c, AmqpSinkConfig::new("out"));
        assert!(c.mandatory);
    }
}
