//! Kafka in and out of fnmill, on librdkafka: a [`KafkaSource`] that consumes topics as a
//! consumer group and commits only what is finished, and a [`KafkaSink`] that produces with an
//! idempotent producer and confirms each record by its delivery report.
//!
//! # At-least-once, the librdkafka way
//!
//! The source runs with `enable.auto.offset.store=false` and `enable.auto.commit=false`: it
//! *stores* a partition's offset only once every event before it settled as done or
//! dead-lettered (the contiguous watermark), and its consumer thread commits what moved every
//! `auto.commit.interval.ms` (5 s by default), synchronously. Every commit is made from that
//! thread, one at a time: librdkafka sends a failed commit request again unchanged, and a
//! background commit sent again after a newer one succeeded would move the group's offset back.
//! On partition revoke and on shutdown it stops reading, waits (within a bound) for the
//! partitions' in-flight events, stores and commits synchronously, and only then lets go.
//! A `kill -9` at any moment loses nothing: the committed offset is never past an unfinished event.
//!
//! # Layout
//!
//! - [`source`]: [`KafkaSource`], the consumer thread, its per-partition watermarks and the
//!   rebalance handling.
//! - [`sink`]: [`KafkaSink`], one shared producer per cluster config, with a delivery callback
//!   that settles each `publish` call.
//! - [`reader`]: [`KafkaReader`], which reads offset ranges by assignment without joining a
//!   group (what `fnmill replay` reads topics with).
//! - `properties`: librdkafka properties from config, and the ones fnmill insists on.

use fnmill_connector_api::{Problem, SourceError};

mod properties;
pub mod reader;
pub mod sink;
pub mod source;

pub use properties::{PropertyValue, SecretProperty};
pub use rdkafka;
pub use reader::{
    KafkaReader, KafkaReaderConfig, OffsetRange, Polled, ReadRecord, THROWAWAY_GROUP_PREFIX,
    check_reachable,
};
pub use sink::{KafkaSink, KafkaSinkConfig, Located, is_unlocated};
pub use source::{ConsumerLag, KafkaSource, KafkaSourceConfig, PartitionLag};

/// What can go wrong building a Kafka source or sink.
#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    /// A config problem (what the config's `check` reports), naming the key.
    #[error("{0}")]
    Invalid(Problem),
    #[error(
        "`properties.\"{property}\"` cannot be `{value}`: fnmill sets it to `{required}` \
         because {reason}"
    )]
    Fixed {
        property: String,
        value: String,
        required: &'static str,
        reason: &'static str,
    },
    #[error("`properties.\"{property}\"` must be {expected}, not `{value}`")]
    BadProperty {
        property: String,
        value: String,
        expected: &'static str,
    },
    #[error("`secret_properties.\"{property}\"`: {message}")]
    Secret { property: String, message: String },
    #[error("cannot create the Kafka client: {0}")]
    Client(#[source] rdkafka::error::KafkaError),
    /// A request of a [`KafkaReader`] failed (metadata, watermarks, offsets, commit, a fetch).
    #[error("{what}: {source}")]
    Request {
        what: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// A [`KafkaReader`] was pointed at a topic the cluster does not have.
    #[error("topic `{0}` does not exist")]
    UnknownTopic(String),
}

pub type Result<T, E = KafkaError> = std::result::Result<T, E>;

impl From<KafkaError> for Problem {
    fn from(e: KafkaError) -> Self {
        match e {
            KafkaError::Invalid(p) => p,
            KafkaError::Fixed { ref property, .. }
            | KafkaError::BadProperty { ref property, .. } => {
                let key = format!("properties.\"{property}\"");
                let text = e.to_string();
                // The message starts with the key in backquotes; keep only what follows it.
                let message = text
                    .split_once("` ")
                    .map_or(text.as_str(), |(_, rest)| rest)
                    .to_string();
                Problem::new(key, message)
            }
            KafkaError::Secret { property, message } => {
                Problem::new(format!("secret_properties.\"{property}\""), message)
            }
            KafkaError::Client(e) => Problem::new("properties", e.to_string()),
            KafkaError::Request { .. } => Problem::new("brokers", e.to_string()),
            KafkaError::UnknownTopic(topic) => {
                Problem::new("topic", format!("`{topic}` does not exist"))
            }
        }
    }
}

impl From<KafkaError> for SourceError {
    fn from(err: KafkaError) -> Self {
        SourceError::Other(err.to_string())
    }
}
