//! Where `publish` writes and `replay` reads or writes: a Kafka topic, a RabbitMQ exchange or
//! queue, or a JSON Lines file, named by a URL for the quick case or by a source or sink of a
//! config, so that TLS, SASL and secrets come from the same place as for `fnmill run`.
//!
//! | form | meaning |
//! |---|---|
//! | `kafka://host:9092[,host2:9092]/topic[?property=value&…]` | a topic; the query holds librdkafka properties |
//! | `amqp[s]://user:pass@host:5672/vhost?exchange=x[&routing_key=k]` | an exchange (for writing) |
//! | `amqp[s]://user:pass@host:5672/vhost?queue=q` | a queue (read it, or write to it through the default exchange) |
//! | `file:path`, a path, `-` | a JSON Lines file; `-` is standard input or output |

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Result, anyhow, bail};
use fnmill::config::{Config, SinkConfig, SourceConfig};
use fnmill_connector_amqp::{AmqpSinkConfig, AmqpSourceConfig};
use fnmill_connector_api::secret::Secret;
use fnmill_connector_kafka::{KafkaReaderConfig, KafkaSinkConfig, PropertyValue, SecretProperty};

/// How to reach a Kafka cluster: brokers and client properties, secrets by reference.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KafkaConnection {
    pub brokers: String,
    pub properties: BTreeMap<String, PropertyValue>,
    pub secret_properties: BTreeMap<String, SecretProperty>,
    /// Whether `properties` came from a producer (a sink's) config; a consumer (reader) then
    /// keeps only the connection properties, and the other way round.
    pub producer: bool,
}

/// librdkafka properties that say how to connect and authenticate, which a producer and a
/// consumer of one cluster share. Everything else in a config's properties is tuned for one
/// role (a sink's `linger.ms`, a source's `session.timeout.ms`) and is not carried to the other.
fn is_connection_property(name: &str) -> bool {
    const PREFIXES: &[&str] = &[
        "security.",
        "ssl.",
        "ssl_",
        "sasl.",
        "socket.",
        "broker.",
        "client.",
        "api.version",
        "metadata.",
        "reconnect.",
        "enable.ssl",
        "connections.",
    ];
    PREFIXES.iter().any(|p| name.starts_with(p))
}

/// Properties a reader sets itself or must not have (it joins no group).
const READER_OWNED: &[&str] = &[
    "group.id",
    "group.instance.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "enable.partition.eof",
];

impl KafkaConnection {
    /// Properties for a client of the other role keep only the connection ones.
    fn for_role(&self, producer: bool) -> BTreeMap<String, PropertyValue> {
        self.properties
            .iter()
            .filter(|(k, _)| self.producer == producer || is_connection_property(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    fn secrets_for_role(&self, producer: bool) -> BTreeMap<String, SecretProperty> {
        self.secret_properties
            .iter()
            .filter(|(k, _)| self.producer == producer || is_connection_property(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    pub fn sink_config(&self, topic: Option<String>) -> KafkaSinkConfig {
        let mut c = KafkaSinkConfig::new(self.brokers.clone(), topic);
        c.properties = self.for_role(true);
        c.secret_properties = self.secrets_for_role(true);
        c
    }

    pub fn reader_config(&self, group: Option<String>) -> KafkaReaderConfig {
        let mut properties = self.for_role(false);
        properties.retain(|k, _| !READER_OWNED.contains(&k.as_str()));
        KafkaReaderConfig {
            brokers: self.brokers.clone(),
            properties,
            secret_properties: self.secrets_for_role(false),
            group,
        }
    }
}

/// A topic, exchange, queue or file.
#[derive(Clone, Debug)]
pub enum Endpoint {
    Kafka {
        connection: KafkaConnection,
        /// The topic; `None` when the config names none (a sink with only per-destination
        /// targets).
        topic: Option<String>,
    },
    Amqp {
        /// The connection settings (URL, TLS files), with `exchange` and `routing_key` as given.
        sink: Box<AmqpSinkConfig>,
        /// A queue: what `replay` reads, or where `publish` writes through the default exchange.
        queue: Option<String>,
        /// Whether the routing key was fixed (by the URL, `--target`, or a sink's non-empty
        /// `routing_key`); if not, an event's key is its routing key.
        fixed_routing_key: bool,
    },
    File {
        /// `-` for standard input or output.
        path: PathBuf,
    },
}

impl Endpoint {
    /// A short description for messages, never with a password.
    pub fn describe(&self) -> String {
        match self {
            Endpoint::Kafka { connection, topic } => format!(
                "Kafka topic `{}` at {}",
                topic.as_deref().unwrap_or("?"),
                connection.brokers
            ),
            Endpoint::Amqp { sink, queue, .. } => match queue {
                Some(q) => format!("RabbitMQ queue `{q}`"),
                None if sink.exchange.is_empty() => "RabbitMQ default exchange".to_string(),
                None => format!("RabbitMQ exchange `{}`", sink.exchange),
            },
            Endpoint::File { path } if path == Path::new("-") => "standard output".into(),
            Endpoint::File { path } => format!("file {}", path.display()),
        }
    }

    /// The record target for an event with `key`: on AMQP without a fixed routing key, the
    /// key is the routing key; everywhere else the endpoint's own topic or routing key applies.
    pub fn key_target(&self, key: Option<&bytes::Bytes>) -> Option<String> {
        match self {
            Endpoint::Amqp {
                fixed_routing_key: false,
                ..
            } => key.map(|k| String::from_utf8_lossy(k).into_owned()),
            _ => None,
        }
    }

    /// The AMQP source config that reads `queue` with this endpoint's connection.
    pub fn amqp_source(sink: &AmqpSinkConfig, queue: &str) -> AmqpSourceConfig {
        let mut c = AmqpSourceConfig::new(queue);
        c.url = sink.url.clone();
        c.url_env = sink.url_env.clone();
        c.url_file = sink.url_file.clone();
        c.tls_ca_file = sink.tls_ca_file.clone();
        c.tls_cert_file = sink.tls_cert_file.clone();
        c.tls_key_file = sink.tls_key_file.clone();
        c.heartbeat = sink.heartbeat;
        c
    }
}

/// Parses a URL or path (see the module docs). `flag` names the argument in errors.
pub fn parse(text: &str, flag: &str) -> Result<Endpoint> {
    if let Some(rest) = text.strip_prefix("kafka://") {
        return parse_kafka(rest).map_err(|e| anyhow!("{flag}: {e}"));
    }
    if text.starts_with("amqp://") || text.starts_with("amqps://") {
        return parse_amqp(text).map_err(|e| anyhow!("{flag}: {e}"));
    }
    if let Some((scheme, _)) = text.split_once("://") {
        bail!(
            "{flag}: `{scheme}://` is not a target fnmill knows (kafka://, amqp://, amqps://, \
             file: or a path)"
        );
    }
    let path = text.strip_prefix("file:").unwrap_or(text);
    if path.is_empty() {
        bail!("{flag}: the file path is empty");
    }
    Ok(Endpoint::File {
        path: PathBuf::from(path),
    })
}

fn parse_kafka(rest: &str) -> Result<Endpoint> {
    let (location, query) = match rest.split_once('?') {
        Some((l, q)) => (l, Some(q)),
        None => (rest, None),
    };
    let (brokers, topic) = match location.split_once('/') {
        Some((b, t)) => (b, t),
        None => (location, ""),
    };
    if brokers.is_empty() {
        bail!("a kafka:// URL needs brokers: kafka://host:9092/topic");
    }
    let topic = percent_decode(topic);
    let mut properties = BTreeMap::new();
    for (k, v) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        properties.insert(k.into_owned(), PropertyValue::Text(v.into_owned()));
    }
    // librdkafka retries an undeliverable record for 5 minutes by default; a command run by
    // hand should say it failed sooner. A config's sink keeps its own setting.
    properties
        .entry("message.timeout.ms".into())
        .or_insert(PropertyValue::Integer(URL_MESSAGE_TIMEOUT_MS));
    Ok(Endpoint::Kafka {
        connection: KafkaConnection {
            brokers: brokers.to_string(),
            properties,
            secret_properties: BTreeMap::new(),
            producer: true,
        },
        topic: (!topic.is_empty()).then_some(topic),
    })
}

fn percent_decode(text: &str) -> String {
    url::form_urlencoded::parse(format!("x={}", text.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// `message.timeout.ms` of a `kafka://` URL target, unless the URL sets it.
const URL_MESSAGE_TIMEOUT_MS: i64 = 30_000;

/// How long a Kafka cluster may take to answer before a command reports it unreachable.
const REACHABLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

impl Endpoint {
    /// For Kafka, checks the cluster answers (see [`fnmill_connector_kafka::check_reachable`]);
    /// `flag` names the argument in the error.
    pub fn check_reachable(&self, flag: &str) -> Result<()> {
        if let Endpoint::Kafka { connection, .. } = self {
            fnmill_connector_kafka::check_reachable(
                &connection.reader_config(None),
                REACHABLE_TIMEOUT,
            )
            .map_err(|e| {
                anyhow!(
                    "{flag}: Kafka at {} did not answer within {REACHABLE_TIMEOUT:?} ({e})",
                    connection.brokers
                )
            })?;
        }
        Ok(())
    }
}

/// The query parameters that are fnmill's; the rest (`heartbeat`, `frame_max`, ...) are
/// lapin's and stay in the URL.
const AMQP_PARAMS: &[&str] = &["exchange", "routing_key", "queue"];

fn parse_amqp(text: &str) -> Result<Endpoint> {
    let mut url = url::Url::parse(text).map_err(|e| anyhow!("not a valid AMQP URL ({e})"))?;
    let mut ours = BTreeMap::new();
    let mut theirs = Vec::new();
    for (k, v) in url.query_pairs() {
        if AMQP_PARAMS.contains(&k.as_ref()) {
            ours.insert(k.into_owned(), v.into_owned());
        } else {
            theirs.push((k.into_owned(), v.into_owned()));
        }
    }
    if theirs.is_empty() {
        url.set_query(None);
    } else {
        url.query_pairs_mut().clear().extend_pairs(theirs);
    }
    let queue = ours.remove("queue");
    let exchange = ours.remove("exchange");
    let routing_key = ours.remove("routing_key");
    if queue.is_some() && (exchange.is_some() || routing_key.is_some()) {
        bail!("give either `queue=` or `exchange=` (with `routing_key=`), not both");
    }
    let mut sink = AmqpSinkConfig::new(exchange.unwrap_or_default());
    sink.url = Some(Secret(url.to_string()));
    let fixed_routing_key = routing_key.is_some() || queue.is_some();
    sink.routing_key = routing_key.or_else(|| queue.clone()).unwrap_or_default();
    // Checks the URL and TLS settings now, naming no secret.
    if let Some(p) = sink.check().into_iter().next() {
        bail!("{}", p.to_string().replace("url: ", "the URL "));
    }
    Ok(Endpoint::Amqp {
        sink: Box::new(sink),
        queue,
        fixed_routing_key,
    })
}

/// A sink of the config, as an endpoint: `--sink NAME [--target T]`. For Kafka the target is
/// the topic; for AMQP the routing key (or, for reading, the queue); files ignore it.
pub fn from_sink(
    config: &Config,
    name: &str,
    target: Option<&str>,
    flag: &str,
) -> Result<Endpoint> {
    let Some(sink) = config.sinks.get(name) else {
        bail!(
            "{flag}: no sink named `{name}` in the config{}",
            known(config.sinks.keys())
        );
    };
    Ok(match sink {
        SinkConfig::Kafka(c) => Endpoint::Kafka {
            connection: KafkaConnection {
                brokers: c.brokers.clone(),
                properties: c.properties.clone(),
                secret_properties: resolved(&c.secret_properties, config),
                producer: true,
            },
            topic: target.map(str::to_string).or_else(|| c.topic.clone()),
        },
        SinkConfig::Amqp(c) => {
            // Its paths were resolved when the config was validated.
            let mut sink = (**c).clone();
            let fixed_routing_key = target.is_some() || !sink.routing_key.is_empty();
            if let Some(t) = target {
                sink.routing_key = t.to_string();
            }
            // Through the default exchange the routing key is the queue.
            let queue = sink
                .exchange
                .is_empty()
                .then(|| sink.routing_key.clone())
                .filter(|q| !q.is_empty());
            Endpoint::Amqp {
                sink: Box::new(sink),
                queue,
                fixed_routing_key,
            }
        }
        SinkConfig::File(c) => Endpoint::File {
            path: io_path(config, &c.path),
        },
    })
}

/// A source of the config, as an endpoint: `--source NAME [--target T]`; the target picks a
/// topic of a Kafka source that reads several, or another queue.
pub fn from_source(
    config: &Config,
    name: &str,
    target: Option<&str>,
    flag: &str,
) -> Result<Endpoint> {
    let Some(source) = config.sources.get(name) else {
        bail!(
            "{flag}: no source named `{name}` in the config{}",
            known(config.sources.keys())
        );
    };
    Ok(match source {
        SourceConfig::Kafka(c) => {
            let topic = match (target, c.topics.as_slice()) {
                (Some(t), _) => t.to_string(),
                (None, [one]) if !one.starts_with('^') => one.clone(),
                _ => bail!(
                    "{flag}: source `{name}` reads {}; name the topic with --target",
                    c.topics.join(", ")
                ),
            };
            Endpoint::Kafka {
                connection: KafkaConnection {
                    brokers: c.brokers.clone(),
                    properties: c.properties.clone(),
                    secret_properties: resolved(&c.secret_properties, config),
                    producer: false,
                },
                topic: Some(topic),
            }
        }
        SourceConfig::Amqp(c) => {
            let mut s = AmqpSinkConfig::new("");
            s.url = c.url.clone();
            s.url_env = c.url_env.clone();
            s.url_file = c.url_file.clone();
            s.tls_ca_file = c.tls_ca_file.clone();
            s.tls_cert_file = c.tls_cert_file.clone();
            s.tls_key_file = c.tls_key_file.clone();
            s.heartbeat = c.heartbeat;
            let queue = target.unwrap_or(&c.queue).to_string();
            s.routing_key = queue.clone();
            Endpoint::Amqp {
                sink: Box::new(s),
                queue: Some(queue),
                fixed_routing_key: true,
            }
        }
        SourceConfig::File(c) => Endpoint::File {
            path: io_path(config, &c.path),
        },
    })
}

fn resolved(
    secrets: &BTreeMap<String, SecretProperty>,
    config: &Config,
) -> BTreeMap<String, SecretProperty> {
    let mut secrets = secrets.clone();
    for s in secrets.values_mut() {
        s.resolve_path(&config.base_dir);
    }
    secrets
}

fn io_path(config: &Config, path: &Path) -> PathBuf {
    if path == Path::new("-") {
        path.to_path_buf()
    } else {
        config.resolve(path)
    }
}

pub fn known<'a>(names: impl Iterator<Item = &'a String>) -> String {
    let names: Vec<_> = names.map(|n| format!("`{n}`")).collect();
    if names.is_empty() {
        " (none are defined)".into()
    } else {
        format!(" (defined: {})", names.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kafka_urls_name_brokers_topic_and_properties() {
        let Endpoint::Kafka { connection, topic } = parse(
            "kafka://a:9092,b:9092/orders.in?security.protocol=ssl&ssl.ca.location=%2Fca.pem",
            "TARGET",
        )
        .unwrap() else {
            panic!("not kafka")
        };
        assert_eq!(connection.brokers, "a:9092,b:9092");
        assert_eq!(topic.as_deref(), Some("orders.in"));
        assert_eq!(
            connection.properties["ssl.ca.location"],
            PropertyValue::Text("/ca.pem".into())
        );
        let Endpoint::Kafka { topic, .. } = parse("kafka://a:9092", "TARGET").unwrap() else {
            panic!("not kafka")
        };
        assert_eq!(topic, None);
        let err = parse("kafka:///t", "TARGET").unwrap_err().to_string();
        assert!(
            err.starts_with("TARGET: a kafka:// URL needs brokers"),
            "{err}"
        );
    }

    #[test]
    fn amqp_urls_keep_lapins_parameters_and_take_fnmills() {
        let Endpoint::Amqp {
            sink,
            queue,
            fixed_routing_key,
        } = parse(
            "amqp://guest:guest@127.0.0.1:5672/%2f?exchange=orders&routing_key=k&heartbeat=5",
            "TARGET",
        )
        .unwrap()
        else {
            panic!("not amqp")
        };
        assert_eq!(sink.exchange, "orders");
        assert_eq!(sink.routing_key, "k");
        assert!(fixed_routing_key);
        assert_eq!(queue, None);
        assert_eq!(
            sink.url.as_ref().unwrap().0,
            "amqp://guest:guest@127.0.0.1:5672/%2f?heartbeat=5"
        );
        let Endpoint::Amqp {
            sink,
            queue,
            fixed_routing_key,
        } = parse("amqp://h/%2f?queue=dlq", "X").unwrap()
        else {
            panic!("not amqp")
        };
        assert_eq!(queue.as_deref(), Some("dlq"));
        assert_eq!(sink.exchange, "");
        assert_eq!(sink.routing_key, "dlq");
        assert!(fixed_routing_key);
        let Endpoint::Amqp {
            fixed_routing_key, ..
        } = parse("amqp://h/%2f?exchange=x", "X").unwrap()
        else {
            panic!("not amqp")
        };
        assert!(!fixed_routing_key);
        let err = parse("amqp://h/%2f?queue=a&exchange=b", "--to")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("--to: give either"), "{err}");
    }

    #[test]
    fn paths_and_unknown_schemes() {
        assert!(
            matches!(parse("out.jsonl", "T").unwrap(), Endpoint::File { path } if path == Path::new("out.jsonl"))
        );
        assert!(
            matches!(parse("file:-", "T").unwrap(), Endpoint::File { path } if path == Path::new("-"))
        );
        let err = parse("http://x/y", "TARGET").unwrap_err().to_string();
        assert!(
            err.starts_with("TARGET: `http://` is not a target"),
            "{err}"
        );
    }

    #[test]
    fn a_reader_from_a_sink_config_keeps_only_connection_properties() {
        let connection = KafkaConnection {
            brokers: "b:1".into(),
            properties: BTreeMap::from([
                ("linger.ms".into(), PropertyValue::Integer(5)),
                (
                    "security.protocol".into(),
                    PropertyValue::Text("ssl".into()),
                ),
                ("group.id".into(), PropertyValue::Text("g".into())),
            ]),
            secret_properties: BTreeMap::new(),
            producer: true,
        };
        let reader = connection.reader_config(None);
        assert_eq!(reader.properties.len(), 1, "{:?}", reader.properties);
        assert!(reader.properties.contains_key("security.protocol"));
        let sink = connection.sink_config(Some("t".into()));
        assert_eq!(sink.properties.len(), 3);
    }
}
