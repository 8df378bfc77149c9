//! [`AmqpSink`]: publishes records to an exchange, persistent and `mandatory`, and resolves once
//! the broker confirmed every one.
//!
//! # Channels
//!
//! Channels in confirm mode are pooled (deadpool) over one shared connection. A publish call
//! takes a channel for itself, publishes all its records without waiting, then awaits all their
//! confirms together, and only then returns the channel. Many calls (events) therefore have
//! publishes outstanding at once — one per pooled channel — which is what makes RabbitMQ fast
//! with confirms.
//!
//! A call keeps its channel until its confirms are in because of returns: the broker sends
//! `basic.return` for an unroutable message before its ack, and lapin pairs a pending return with
//! whichever confirm of that channel completes next (a `multiple` ack completes several in no
//! particular order). On a channel of its own a call gets exactly its own returns, so "one of my
//! records was unroutable" is always attributed to the right event.
//!
//! # Failures
//!
//! A returned (unroutable) record fails the call as [`SinkError::Permanent`]: the event is
//! dead-lettered, not acked as done. A nack, a lost connection or channel, or a confirm that
//! does not come within `confirm_timeout` is [`SinkError::Retryable`]; the pipeline retries the
//! call with backoff (so a publish may be repeated — at-least-once). A broken connection is
//! replaced on the next call.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use deadpool::managed::{self, Metrics, Object, Pool, RecycleError, RecycleResult};
use fnmill_connector_api::{Record, Sink, SinkError};
use futures::future::{BoxFuture, join_all};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Confirmation, Connection};
use tokio::sync::Mutex;
use tracing::{info, warn};

use crate::config::{AmqpSinkConfig, Topology};
use crate::{AmqpError, Result, headers};

/// AMQP `delivery_mode` 2: the broker writes the message to disk (for classic queues; quorum
/// queues always do).
const PERSISTENT: u8 = 2;

/// Creates confirm-mode channels on a shared connection, replacing the connection when it is
/// broken.
struct ChannelManager {
    endpoint: crate::Endpoint,
    name: String,
    declare: Topology,
    connection: Mutex<Option<Arc<Connection>>>,
}

impl ChannelManager {
    async fn connection(&self) -> Result<Arc<Connection>> {
        let mut current = self.connection.lock().await;
        if let Some(c) = current.as_ref()
            && c.status().connected()
        {
            return Ok(c.clone());
        }
        if current.take().is_some() {
            warn!(sink = %self.name, "Connection to the broker lost; reconnecting");
        }
        let connection = self
            .endpoint
            .connect(&format!("fnmill sink {}", self.name))
            .await?;
        if !self.declare.is_empty() {
            let channel = connection
                .create_channel()
                .await
                .map_err(AmqpError::broker("opening a channel"))?;
            self.declare.declare(&channel).await?;
            let _ = channel.close(200, "declared".into()).await;
        }
        info!(sink = %self.name, "Connected");
        let connection = Arc::new(connection);
        *current = Some(connection.clone());
        Ok(connection)
    }
}

impl managed::Manager for ChannelManager {
    type Type = Channel;
    type Error = AmqpError;

    async fn create(&self) -> Result<Channel> {
        let connection = self.connection().await?;
        let channel = connection
            .create_channel()
            .await
            .map_err(AmqpError::broker("opening a channel"))?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(AmqpError::broker("enabling publisher confirms"))?;
        Ok(channel)
    }

    async fn recycle(&self, channel: &mut Channel, _: &Metrics) -> RecycleResult<AmqpError> {
        if channel.status().connected() {
            Ok(())
        } else {
            Err(RecycleError::message("channel closed"))
        }
    }
}

/// Publishes to a RabbitMQ exchange with confirms. See the module docs.
pub struct AmqpSink {
    pool: Pool<ChannelManager>,
    exchange: String,
    routing_key: String,
    mandatory: bool,
    confirm_timeout: Duration,
}

impl std::fmt::Debug for AmqpSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpSink")
            .field("exchange", &self.exchange)
            .field("routing_key", &self.routing_key)
            .finish_non_exhaustive()
    }
}

impl AmqpSink {
    /// Checks the config; `name` (the `sinks.<name>` key) names the connection in the broker.
    /// Connects lazily, on the first publish, so fnmill starts while the broker is away.
    pub fn new(name: impl Into<String>, config: AmqpSinkConfig) -> Result<Self> {
        if config.channels == 0 {
            return Err(AmqpError::Invalid {
                key: "channels",
                message: "must be at least 1".into(),
            });
        }
        // A relative `url_file` was made absolute against the config file's directory.
        let url = config.broker_url(Path::new("."))?;
        let endpoint = crate::Endpoint::new(&url, config.heartbeat, config.tls_files())?;
        let manager = ChannelManager {
            endpoint,
            name: name.into(),
            declare: config.declare,
            connection: Mutex::new(None),
        };
        let pool = Pool::builder(manager)
            .max_size(config.channels)
            .build()
            .map_err(|e| AmqpError::Invalid {
                key: "channels",
                message: e.to_string(),
            })?;
        Ok(Self {
            pool,
            exchange: config.exchange,
            routing_key: config.routing_key,
            mandatory: config.mandatory,
            confirm_timeout: config.confirm_timeout,
        })
    }

    async fn publish_all(&self, records: Vec<Record>) -> Result<(), SinkError> {
        let channel = self
            .pool
            .get()
            .await
            .map_err(|e| SinkError::Retryable(format!("no channel to the broker: {e}")))?;
        let options = BasicPublishOptions {
            mandatory: self.mandatory,
            immediate: false,
        };
        let mut confirms = Vec::with_capacity(records.len());
        for record in &records {
            let routing_key = record.target.as_deref().unwrap_or(&self.routing_key);
            let properties = BasicProperties::default()
                .with_delivery_mode(PERSISTENT)
                .with_headers(headers::to_table(&record.headers));
            match channel
                .basic_publish(
                    self.exchange.as_str().into(),
                    routing_key.into(),
                    options,
                    &record.payload,
                    properties,
                )
                .await
            {
                Ok(confirm) => confirms.push(confirm),
                Err(e) => {
                    let _ = Object::take(channel);
                    return Err(SinkError::Retryable(format!("publishing: {e}")));
                }
            }
        }
        let Ok(results) = tokio::time::timeout(self.confirm_timeout, join_all(confirms)).await
        else {
            // The channel may still get those confirms later: do not reuse it.
            let _ = Object::take(channel);
            return Err(SinkError::Retryable(format!(
                "no publisher confirm within {:?}",
                self.confirm_timeout
            )));
        };
        drop(channel);
        let mut retryable = None;
        for result in results {
            match result {
                Ok(Confirmation::Ack(None)) | Ok(Confirmation::NotRequested) => {}
                Ok(Confirmation::Ack(Some(returned)) | Confirmation::Nack(Some(returned))) => {
                    return Err(SinkError::Permanent(format!(
                        "unroutable: exchange `{}` returned a message with routing key `{}` ({} {})",
                        self.exchange,
                        returned.delivery.routing_key,
                        returned.reply_code,
                        returned.reply_text
                    )));
                }
                Ok(Confirmation::Nack(None)) => {
                    retryable.get_or_insert_with(|| "the broker nacked a publish".to_string());
                }
                Err(e) => {
                    retryable
                        .get_or_insert_with(|| format!("waiting for a publisher confirm: {e}"));
                }
            }
        }
        match retryable {
            None => Ok(()),
            Some(message) => Err(SinkError::Retryable(message)),
        }
    }
}

impl Sink for AmqpSink {
    fn publish(&self, records: Vec<Record>) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async move {
            if records.is_empty() {
                return Ok(());
            }
            self.publish_all(records).await
        })
    }

    fn close(&self) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async move {
            self.pool.close();
            if let Some(connection) = self.pool.manager().connection.lock().await.take() {
                let _ = connection.close(200, "fnmill stopping".into()).await;
            }
            Ok(())
        })
    }
}
