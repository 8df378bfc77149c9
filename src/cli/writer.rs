//! [`Writer`]: hands records to one of fnmill's sinks one at a time and gives back, per record,
//! the future of its confirmation, so `publish` and `replay` count every record as sent or
//! failed, never a batch.
//!
//! Order per key is kept by the sinks themselves: records are handed over in input order with
//! their key's lane ([`Sink::enqueue`]), and each sink publishes a lane in the order it was
//! handed over (one producer queue, one file writer, one AMQP channel per lane) while the
//! confirmations come in concurrently.

use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result};
use bytes::Bytes;
use fnmill_connector_amqp::AmqpSink;
use fnmill_connector_api::{Record, Sink, SinkError, Unconfirmed};
use fnmill_connector_file::{FileSink, FileSinkConfig};
use fnmill_connector_kafka::{KafkaSink, Located, is_unlocated};
use futures::FutureExt;
use futures::future::BoxFuture;

use super::endpoint::Endpoint;

/// How many times a record Kafka reported delivered without an offset is sent again before its
/// failure counts (see [`is_unlocated`]).
const RESEND_LIMIT: u32 = 3;

/// Where a confirmed record was written; Kafka says where exactly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Written {
    Kafka { topic: String, at: Located },
    Confirmed,
}

/// Why a record was not written: the sink's error, as text (cheap to clone for key lanes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteError {
    pub retryable: bool,
    pub message: String,
}

impl From<SinkError> for WriteError {
    fn from(e: SinkError) -> Self {
        let retryable = e.is_retryable();
        let message = match e {
            SinkError::Retryable(m) | SinkError::Permanent(m) | SinkError::Gone(m) => m,
        };
        Self { retryable, message }
    }
}

impl WriteError {
    /// The kind a summary counts it under.
    pub fn kind(&self) -> &'static str {
        if self.message.starts_with("unroutable") {
            "unroutable"
        } else if self.retryable {
            "publish-retryable"
        } else {
            "publish-permanent"
        }
    }
}

pub type Confirm = BoxFuture<'static, Result<Written, WriteError>>;

enum Kind {
    Kafka {
        sink: Arc<KafkaSink>,
        /// The topic of records that name none.
        topic: Option<String>,
    },
    Amqp(Arc<AmqpSink>),
    File(Arc<FileSink>),
}

/// The lane of a key: keyless records spread over the sink's pipes.
fn lane_of(key: Option<&Bytes>) -> u64 {
    match key {
        Some(k) => foldhash::fast::FixedState::with_seed(7).hash_one(k.as_ref()),
        None => fastrand::u64(..),
    }
}

/// Hands `record` to `sink` on `lane` and returns the future of its confirmation.
async fn enqueue(sink: &dyn Sink, record: Record, lane: u64) -> Confirm {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let handed = sink
        .enqueue(
            std::slice::from_ref(&record),
            lane,
            Box::new(move |r: Result<(), Unconfirmed>| {
                let _ = tx.send(r.map_err(|u| u.error));
            }),
        )
        .await;
    match handed {
        Err(e) => Box::pin(std::future::ready(Err(e.into()))),
        Ok(()) => Box::pin(rx.map(|r| {
            r.unwrap_or_else(|_| {
                Err(SinkError::Retryable(
                    "the sink dropped the confirmation".into(),
                ))
            })
            .map(|()| Written::Confirmed)
            .map_err(WriteError::from)
        })),
    }
}

/// One sink, written record by record. See the module docs.
pub struct Writer {
    kind: Kind,
    /// What the records go to, for messages.
    pub description: String,
    /// Records sent again after Kafka reported them delivered without an offset.
    resent: Arc<AtomicU64>,
}

impl Writer {
    /// Builds the sink for `endpoint`. Must run inside the tokio runtime (sinks spawn tasks).
    pub fn new(endpoint: &Endpoint, name: &str) -> Result<Self> {
        let description = endpoint.describe();
        let kind = match endpoint {
            Endpoint::Kafka { connection, topic } => {
                let sink = KafkaSink::new(connection.sink_config(topic.clone()))
                    .with_context(|| format!("connecting to {description}"))?;
                Kind::Kafka {
                    sink: Arc::new(sink),
                    topic: topic.clone(),
                }
            }
            Endpoint::Amqp { sink, .. } => {
                let sink = AmqpSink::new(name, (**sink).clone())
                    .with_context(|| format!("connecting to {description}"))?;
                Kind::Amqp(Arc::new(sink))
            }
            Endpoint::File { path } => {
                let sink = FileSink::new(FileSinkConfig::new(path.clone()))
                    .with_context(|| format!("opening {}", path.display()))?;
                Kind::File(Arc::new(sink))
            }
        };
        Ok(Self {
            kind,
            description,
            resent: Arc::default(),
        })
    }

    /// How many records were sent again because Kafka reported them delivered without an
    /// offset: each may be in the topic twice.
    pub fn resent(&self) -> u64 {
        self.resent.load(Ordering::Relaxed)
    }

    /// Hands `record` over and returns the future of its confirmation. Records with the same
    /// `lane` (the key) are written in the order they were submitted.
    pub async fn submit(&self, record: Record, lane: Option<Bytes>) -> Confirm {
        match &self.kind {
            Kind::Kafka { sink, topic } => {
                let topic = record.target.clone().or_else(|| topic.clone());
                let mut confirm = sink.enqueue_located(&record).await;
                let (sink, resent) = (sink.clone(), self.resent.clone());
                Box::pin(async move {
                    let mut again = 0;
                    loop {
                        match confirm.await {
                            // Sent again on its own: a record the broker never stored would
                            // otherwise count as written (at worst it is written twice).
                            Err(e) if is_unlocated(&e) && again < RESEND_LIMIT => {
                                again += 1;
                                resent.fetch_add(1, Ordering::Relaxed);
                                confirm = sink.enqueue_located(&record).await;
                            }
                            result => {
                                return result
                                    .map(|at| Written::Kafka {
                                        topic: topic.unwrap_or_default(),
                                        at,
                                    })
                                    .map_err(WriteError::from);
                            }
                        }
                    }
                })
            }
            Kind::File(sink) => enqueue(sink.as_ref(), record, lane_of(lane.as_ref())).await,
            Kind::Amqp(sink) => enqueue(sink.as_ref(), record, lane_of(lane.as_ref())).await,
        }
    }

    /// Flushes and closes the sink.
    pub async fn close(&self) {
        let result = match &self.kind {
            Kind::Kafka { sink, .. } => sink.close().await,
            Kind::Amqp(sink) => sink.close().await,
            Kind::File(s) => s.close().await,
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "Closing {} failed", self.description);
        }
    }
}
