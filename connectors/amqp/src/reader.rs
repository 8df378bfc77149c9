//! [`QueueReader`]: takes the messages a queue holds when it opens, one at a time, and
//! acknowledges each only when its caller says so — what `fnmill replay` reads a dead-letter
//! queue with.
//!
//! A replay must not lose a message and must end. So the reader pulls with `basic_get`
//! (no prefetch window: a message the caller skips or has not finished stays unacked, as long
//! as needed, without stalling the rest), stops after the number of messages the queue held
//! when it opened (a replayed message that fails again and lands in the same queue is not
//! read again in the same run), and leaves every message it was not told to ack to the broker:
//! closing the channel, or the process dying, requeues them.

use bytes::Bytes;
use fnmill_connector_api::Header;
use lapin::options::{BasicAckOptions, BasicGetOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};

use crate::config::{AmqpSourceConfig, Broker as _};
use crate::{AmqpError, Result, headers};

/// One message taken from the queue, not yet acknowledged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueMessage {
    /// Delivery tag on the reader's channel; what [`QueueAcker`] acks or requeues.
    pub tag: u64,
    /// The exchange it was published to (`""`: the default exchange).
    pub exchange: String,
    pub routing_key: String,
    pub redelivered: bool,
    /// The `message_id` property.
    pub message_id: Option<String>,
    /// Headers as the source reads them (see the crate's header mapping).
    pub headers: Vec<Header>,
    pub payload: Bytes,
    /// The `timestamp` property, in milliseconds.
    pub timestamp_ms: Option<i64>,
}

/// Reads one queue with `basic_get`. See the module docs.
pub struct QueueReader {
    connection: Connection,
    channel: Channel,
    queue: String,
    /// Messages still to take: what the queue held when the reader opened, less those taken.
    remaining: u32,
}

impl std::fmt::Debug for QueueReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueReader")
            .field("queue", &self.queue)
            .field("remaining", &self.remaining)
            .finish_non_exhaustive()
    }
}

impl QueueReader {
    /// Connects with `config`'s URL and TLS settings (its relative files resolved already)
    /// and looks up how many messages `config.queue` holds. The queue must exist; nothing is
    /// declared. `name` names the connection in the broker.
    pub async fn open(name: &str, config: &AmqpSourceConfig) -> Result<Self> {
        if config.queue.is_empty() {
            return Err(AmqpError::Invalid {
                key: "queue",
                message: "must not be empty".into(),
            });
        }
        let endpoint = config.endpoint()?;
        let connection = endpoint.connect(name).await?;
        let channel = connection
            .create_channel()
            .await
            .map_err(AmqpError::broker("opening a channel"))?;
        let queue = channel
            .queue_declare(
                config.queue.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(AmqpError::broker(format!(
                "looking up queue `{}`",
                config.queue
            )))?;
        Ok(Self {
            connection,
            channel,
            queue: config.queue.clone(),
            remaining: queue.message_count(),
        })
    }

    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// Messages still to take.
    pub fn remaining(&self) -> u32 {
        self.remaining
    }

    /// The next message, unacknowledged; `None` once the messages the queue held at opening
    /// were taken, or the queue is empty.
    pub async fn next(&mut self) -> Result<Option<QueueMessage>> {
        if self.remaining == 0 {
            return Ok(None);
        }
        let got = self
            .channel
            .basic_get(
                self.queue.as_str().into(),
                BasicGetOptions { no_ack: false },
            )
            .await
            .map_err(AmqpError::broker(format!("reading queue `{}`", self.queue)))?;
        let Some(got) = got else {
            self.remaining = 0;
            return Ok(None);
        };
        self.remaining -= 1;
        let d = got.delivery;
        let properties = &d.properties;
        Ok(Some(QueueMessage {
            tag: d.delivery_tag,
            exchange: d.exchange.as_str().to_string(),
            routing_key: d.routing_key.as_str().to_string(),
            redelivered: d.redelivered,
            message_id: properties.message_id().as_ref().map(|m| m.to_string()),
            headers: headers::from_table(properties.headers().as_ref()),
            timestamp_ms: properties
                .timestamp()
                .map(|seconds| (seconds as i64).saturating_mul(1000)),
            payload: Bytes::from(d.data),
        }))
    }

    /// A handle to acknowledge taken messages from other tasks.
    pub fn acker(&self) -> QueueAcker {
        QueueAcker {
            channel: self.channel.clone(),
        }
    }

    /// Closes the connection; the broker requeues every message not acked.
    pub async fn close(self) {
        let _ = self.channel.close(200, "replay done".into()).await;
        let _ = self.connection.close(200, "replay done".into()).await;
    }
}

/// Acknowledges messages a [`QueueReader`] took. (Messages are never requeued one by one: a
/// requeued message would come back within the same run; closing the reader requeues them.)
#[derive(Clone)]
pub struct QueueAcker {
    channel: Channel,
}

impl QueueAcker {
    /// Removes the message from the queue for good.
    pub async fn ack(&self, tag: u64) -> Result<()> {
        self.channel
            .basic_ack(tag, BasicAckOptions::default())
            .await
            .map_err(AmqpError::broker("acknowledging a message"))
    }
}
