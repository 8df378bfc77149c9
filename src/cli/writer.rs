//! [`Writer`]: hands records to one of fnmill's sinks one at a time and gives back, per record,
//! the future of its confirmation, so `publish` and `replay` count every record as sent or
//! failed, never a batch.
//!
//! Order per key is kept the way each sink allows: Kafka and files keep the order records are
//! handed over in (one producer queue, one writer), so records are handed over in input order
//! and confirmed concurrently. The AMQP sink publishes on pooled channels that keep no order
//! between them, so a record waits for the confirmation of the previous record with the same
//! key; records of different keys (and records without a key) are published concurrently.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use bytes::Bytes;
use fnmill_connector_amqp::AmqpSink;
use fnmill_connector_api::{Record, Sink, SinkError};
use fnmill_connector_file::{FileSink, FileSinkConfig};
use fnmill_connector_kafka::{KafkaSink, Located};
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};

use super::endpoint::Endpoint;

/// Lanes kept before finished ones are dropped: bounds the memory of a run with many keys.
const LANES_BEFORE_PRUNE: usize = 4096;

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
            SinkError::Retryable(m) | SinkError::Permanent(m) => m,
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

type Lane = Shared<BoxFuture<'static, ()>>;

enum Kind {
    Kafka {
        sink: Arc<KafkaSink>,
        /// The topic of records that name none.
        topic: Option<String>,
    },
    Amqp {
        sink: Arc<AmqpSink>,
        lanes: Mutex<HashMap<Bytes, Lane>>,
    },
    File(Arc<FileSink>),
}

/// One sink, written record by record. See the module docs.
pub struct Writer {
    kind: Kind,
    /// What the records go to, for messages.
    pub description: String,
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
                Kind::Amqp {
                    sink: Arc::new(sink),
                    lanes: Mutex::new(HashMap::new()),
                }
            }
            Endpoint::File { path } => {
                let sink = FileSink::new(FileSinkConfig::new(path.clone()))
                    .with_context(|| format!("opening {}", path.display()))?;
                Kind::File(Arc::new(sink))
            }
        };
        Ok(Self { kind, description })
    }

    /// Hands `record` over and returns the future of its confirmation. Records with the same
    /// `lane` (the key) are written in the order they were submitted.
    pub async fn submit(&self, record: Record, lane: Option<Bytes>) -> Confirm {
        match &self.kind {
            Kind::Kafka { sink, topic } => {
                let topic = record.target.clone().or_else(|| topic.clone());
                let confirm = sink.enqueue_located(&record).await;
                Box::pin(confirm.map(move |r| {
                    r.map(|at| Written::Kafka {
                        topic: topic.unwrap_or_default(),
                        at,
                    })
                    .map_err(WriteError::from)
                }))
            }
            Kind::File(sink) => match sink.enqueue(std::slice::from_ref(&record)).await {
                Ok(confirm) => Box::pin(
                    confirm.map(|r| r.map(|()| Written::Confirmed).map_err(WriteError::from)),
                ),
                Err(e) => Box::pin(std::future::ready(Err(e.into()))),
            },
            Kind::Amqp { sink, lanes } => {
                let previous = lane.as_ref().and_then(|k| {
                    lanes
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get(k)
                        .cloned()
                });
                let sink = sink.clone();
                let publish = async move {
                    if let Some(previous) = previous {
                        previous.await;
                    }
                    sink.publish(vec![record]).await
                };
                // Spawned, so the lane moves on whether or not anyone polls the confirmation.
                let task = tokio::spawn(publish);
                let result: BoxFuture<'static, Result<Written, WriteError>> =
                    Box::pin(async move {
                        match task.await {
                            Ok(Ok(())) => Ok(Written::Confirmed),
                            Ok(Err(e)) => Err(e.into()),
                            Err(e) => Err(WriteError {
                                retryable: true,
                                message: format!("the publishing task failed: {e}"),
                            }),
                        }
                    });
                let result = result.shared();
                if let Some(key) = lane {
                    let mut lanes = lanes.lock().unwrap_or_else(|p| p.into_inner());
                    if lanes.len() >= LANES_BEFORE_PRUNE {
                        lanes.retain(|_, l| l.peek().is_none());
                    }
                    let done: BoxFuture<'static, ()> = Box::pin(result.clone().map(drop));
                    lanes.insert(key, done.shared());
                }
                Box::pin(result)
            }
        }
    }

    /// Flushes and closes the sink.
    pub async fn close(&self) {
        let result = match &self.kind {
            Kind::Kafka { sink, .. } => sink.close().await,
            Kind::Amqp { sink, .. } => sink.close().await,
            Kind::File(s) => s.close().await,
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "Closing {} failed", self.description);
        }
    }
}
