//! [`AmqpSource`]: consumes one queue and lends each message out as a [`Delivery`]; acks it once
//! the delivery settled as done or dead-lettered.
//!
//! One task owns the connection and does all the bookkeeping in one `select!`, settlements first
//! (so acks go out, and the prefetch window reopens, before more messages are taken). Settle
//! closures run on whatever thread finished the event and only send a message to that task.
//!
//! # Sessions
//!
//! Each connection is a *session*, numbered. Delivery tags are only meaningful on the channel
//! that received them, so a settlement carries its session number and one from an earlier
//! session is ignored: the broker already requeued that message when the old connection died
//! (it is delivered again — a duplicate, never a loss). On a lost connection or channel the
//! source marks itself not ready, reconnects with exponential backoff and jitter, redeclares its
//! topology, and consumes again.
//!
//! # Acks
//!
//! Settlements arrive in any order. After each batch of settlements the source sends one
//! `basic_ack` with `multiple = true` for the settled tags below the oldest unsettled one (that
//! covers exactly the tags settled since — every tag below the oldest unsettled one is settled,
//! and the earlier ones were acked, nacked or rejected already) and one plain `basic_ack` per
//! settled tag above it. Abandoned deliveries are `basic_nack`ed with requeue, and with
//! `dead_letter = "broker"` dead-lettered ones are `basic_reject`ed without requeue; those go out
//! before the acks of the same batch.

use std::collections::BTreeSet;
use std::path::Path;

use bytes::Bytes;
use fnmill_connector_api::{Delivery, Event, Outcome, Source, SourceContext, SourceError};
use futures::StreamExt;
use futures::future::BoxFuture;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
    BasicRejectOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, Consumer};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::config::{AmqpSourceConfig, DeadLetterMode, OrderingKey};
use crate::{AmqpError, Reconnect, Result, headers};

/// Settlements handled per loop turn: enough to batch acks under load, small enough that a
/// burst does not keep new messages waiting.
const SETTLE_BATCH: usize = 1024;

/// One settled delivery, from a settle closure to the source task.
#[derive(Debug)]
struct Settlement {
    session: u64,
    tag: u64,
    outcome: Outcome,
}

/// Consumes a RabbitMQ queue. See the module docs.
#[derive(Debug)]
pub struct AmqpSource {
    name: String,
    config: AmqpSourceConfig,
    endpoint: crate::Endpoint,
}

impl AmqpSource {
    /// Checks the config; `name` becomes [`Event::source`]. Nothing is connected yet.
    pub fn new(name: impl Into<String>, config: AmqpSourceConfig) -> Result<Self> {
        if config.prefetch == 0 {
            return Err(AmqpError::Invalid {
                key: "prefetch",
                message: "must be at least 1 (0 would mean unlimited)".into(),
            });
        }
        if config.queue.is_empty() {
            return Err(AmqpError::Invalid {
                key: "queue",
                message: "must not be empty".into(),
            });
        }
        if let OrderingKey::Header(h) = &config.ordering_key
            && h.is_empty()
        {
            return Err(AmqpError::Invalid {
                key: "ordering_key.header",
                message: "must not be empty".into(),
            });
        }
        // A relative `url_file` was made absolute against the config file's directory.
        let url = config.broker_url(Path::new("."))?;
        let endpoint = crate::Endpoint::new(&url, config.heartbeat, config.tls_files())?;
        Ok(Self {
            name: name.into(),
            config,
            endpoint,
        })
    }
}

impl Source for AmqpSource {
    fn run(self: Box<Self>, ctx: SourceContext) -> BoxFuture<'static, Result<(), SourceError>> {
        Box::pin(async move {
            let ready = ctx.ready.clone();
            self.run_sessions(ctx).await;
            ready.set(false);
            Ok(())
        })
    }
}

/// How a session ended.
enum End {
    /// Shutdown was asked for; the session drained and closed.
    Shutdown,
    /// The pipeline dropped its receiver: nothing more can be delivered.
    PipelineGone,
    /// The connection or channel failed; reconnect.
    Lost(AmqpError),
}

/// One connection's state.
struct Session {
    number: u64,
    connection: Connection,
    channel: Channel,
    /// Tags lent out on this session's channel and not yet settled.
    unsettled: BTreeSet<u64>,
}

impl AmqpSource {
    async fn run_sessions(self, ctx: SourceContext) {
        // Unbounded: settle closures cannot wait. Bounded in practice by the prefetch window of
        // this and earlier sessions.
        let (settled_tx, mut settled_rx) = mpsc::unbounded_channel();
        let mut reconnect = Reconnect::new();
        let mut number = 0;
        loop {
            if ctx.shutdown.is_cancelled() {
                return;
            }
            number += 1;
            let opened = tokio::select! {
                opened = self.open(number) => opened,
                _ = ctx.shutdown.cancelled() => return,
            };
            let (session, consumer) = match opened {
                Ok(opened) => opened,
                Err(e) => {
                    let wait = reconnect.delay();
                    warn!(source = %self.name, error = %e, wait_ms = wait.as_millis() as u64, "Cannot consume; retrying");
                    if !sleep(&ctx, wait).await {
                        return;
                    }
                    continue;
                }
            };
            info!(source = %self.name, queue = %self.config.queue, session = number, "Consuming");
            ctx.ready.set(true);
            let mut session = session;
            let end = self
                .consume(&ctx, &mut session, consumer, &settled_tx, &mut settled_rx)
                .await;
            ctx.ready.set(false);
            match end {
                End::Shutdown | End::PipelineGone => {
                    let _ = session
                        .connection
                        .close(200, "fnmill stopping".into())
                        .await;
                    info!(source = %self.name, "Stopped consuming");
                    return;
                }
                End::Lost(e) => {
                    // Unacked messages of this session go back to the queue with the connection.
                    let _ = session
                        .connection
                        .close(320, "fnmill reconnecting".into())
                        .await;
                    reconnect.reset();
                    let wait = reconnect.delay();
                    warn!(
                        source = %self.name,
                        error = %e,
                        in_flight = session.unsettled.len(),
                        wait_ms = wait.as_millis() as u64,
                        "Connection to the broker lost; reconnecting (unacked messages are redelivered)"
                    );
                    if !sleep(&ctx, wait).await {
                        return;
                    }
                }
            }
        }
    }

    /// Connects, declares the topology, sets the prefetch and starts consuming.
    async fn open(&self, number: u64) -> Result<(Session, Consumer)> {
        let connection = self
            .endpoint
            .connect(&format!("fnmill source {}", self.name))
            .await?;
        let result = async {
            if !self.config.declare.is_empty() {
                let channel = connection
                    .create_channel()
                    .await
                    .map_err(AmqpError::broker("opening a channel"))?;
                self.config.declare.declare(&channel).await?;
                let _ = channel.close(200, "declared".into()).await;
            }
            let channel = connection
                .create_channel()
                .await
                .map_err(AmqpError::broker("opening a channel"))?;
            channel
                .basic_qos(self.config.prefetch, BasicQosOptions::default())
                .await
                .map_err(AmqpError::broker("setting the prefetch (basic.qos)"))?;
            let consumer = channel
                .basic_consume(
                    self.config.queue.as_str().into(),
                    format!("fnmill-{}-{number}", self.name).into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(AmqpError::broker(format!(
                    "consuming queue `{}`",
                    self.config.queue
                )))?;
            Ok((channel, consumer))
        }
        .await;
        match result {
            Ok((channel, consumer)) => Ok((
                Session {
                    number,
                    connection,
                    channel,
                    unsettled: BTreeSet::new(),
                },
                consumer,
            )),
            Err(e) => {
                let _ = connection.close(200, "setup failed".into()).await;
                Err(e)
            }
        }
    }

    async fn consume(
        &self,
        ctx: &SourceContext,
        session: &mut Session,
        mut consumer: Consumer,
        settled_tx: &mpsc::UnboundedSender<Settlement>,
        settled_rx: &mut mpsc::UnboundedReceiver<Settlement>,
    ) -> End {
        // A message taken from the broker and waiting for room in the pipeline.
        let mut pending: Option<Delivery> = None;
        let mut batch = Vec::with_capacity(SETTLE_BATCH);
        loop {
            tokio::select! {
                biased;
                n = settled_rx.recv_many(&mut batch, SETTLE_BATCH) => {
                    debug_assert!(n > 0, "the source holds a sender");
                    if let Err(e) = self.settle(session, &mut batch).await {
                        return End::Lost(e);
                    }
                }
                _ = ctx.shutdown.cancelled() => {
                    drop(pending.take());
                    return self.drain(session, consumer, settled_rx).await;
                }
                permit = ctx.out.reserve(), if pending.is_some() => match permit {
                    Ok(permit) => permit.send(pending.take().expect("checked")),
                    Err(_) => return End::PipelineGone,
                },
                next = consumer.next(), if pending.is_none() => match next {
                    Some(Ok(message)) => {
                        session.unsettled.insert(message.delivery_tag);
                        pending = Some(self.delivery(session.number, message, settled_tx));
                    }
                    Some(Err(e)) => return End::Lost(AmqpError::Broker { what: "consuming".into(), source: e }),
                    None => return End::Lost(AmqpError::Invalid {
                        key: "queue",
                        message: format!("`{}`: the broker cancelled the consumer (queue deleted?)", self.config.queue),
                    }),
                },
            }
        }
    }

    /// Applies a batch of settlements to the broker: nacks and rejects first, then acks.
    async fn settle(&self, session: &mut Session, batch: &mut Vec<Settlement>) -> Result<()> {
        let mut acks = Vec::new();
        for s in batch.drain(..) {
            if s.session != session.number || !session.unsettled.remove(&s.tag) {
                // From an earlier connection: the broker requeued it already.
                continue;
            }
            let channel = &session.channel;
            match (s.outcome, self.config.dead_letter) {
                (Outcome::Done, _) | (Outcome::DeadLettered, DeadLetterMode::Pipeline) => {
                    acks.push(s.tag)
                }
                (Outcome::DeadLettered, DeadLetterMode::Broker) => channel
                    .basic_reject(s.tag, BasicRejectOptions { requeue: false })
                    .await
                    .map_err(AmqpError::broker("rejecting a message"))?,
                (Outcome::Abandoned, _) => channel
                    .basic_nack(
                        s.tag,
                        BasicNackOptions {
                            multiple: false,
                            requeue: true,
                        },
                    )
                    .await
                    .map_err(AmqpError::broker("requeueing a message"))?,
            }
        }
        let channel = &session.channel;
        for (tag, multiple) in ack_plan(acks, session.unsettled.first().copied()) {
            channel
                .basic_ack(tag, BasicAckOptions { multiple })
                .await
                .map_err(AmqpError::broker("acking messages"))?;
        }
        Ok(())
    }

    /// On shutdown: stop the consumer, wait (within `drain_timeout`) for what is in the pipeline
    /// to settle and be acked. What is still unacked when the connection closes is requeued by
    /// the broker.
    async fn drain(
        &self,
        session: &mut Session,
        consumer: Consumer,
        settled_rx: &mut mpsc::UnboundedReceiver<Settlement>,
    ) -> End {
        let _ = session
            .channel
            .basic_cancel(consumer.tag(), BasicCancelOptions::default())
            .await;
        drop(consumer);
        info!(source = %self.name, in_flight = session.unsettled.len(), "Draining");
        let deadline = Instant::now() + self.config.drain_timeout;
        let mut batch = Vec::with_capacity(SETTLE_BATCH);
        while !session.unsettled.is_empty() {
            match tokio::time::timeout_at(deadline, settled_rx.recv_many(&mut batch, SETTLE_BATCH))
                .await
            {
                Ok(_) => {
                    if let Err(e) = self.settle(session, &mut batch).await {
                        warn!(source = %self.name, error = %e, "Acking while draining failed");
                        break;
                    }
                }
                Err(_) => {
                    warn!(
                        source = %self.name,
                        left = session.unsettled.len(),
                        "Drain timeout; the broker requeues what is left"
                    );
                    break;
                }
            }
        }
        End::Shutdown
    }

    fn delivery(
        &self,
        session: u64,
        message: lapin::message::Delivery,
        settled: &mpsc::UnboundedSender<Settlement>,
    ) -> Delivery {
        let tag = message.delivery_tag;
        let properties = &message.properties;
        let headers = headers::from_table(properties.headers().as_ref());
        let ordering_key = match &self.config.ordering_key {
            OrderingKey::None => None,
            OrderingKey::RoutingKey => Some(Bytes::copy_from_slice(
                message.routing_key.as_str().as_bytes(),
            )),
            OrderingKey::Header(name) => headers::find(&headers, name).cloned(),
        };
        let mut origin = vec![
            ("queue", self.config.queue.clone()),
            ("delivery_tag", tag.to_string()),
            ("redelivered", message.redelivered.to_string()),
        ];
        if let Some(count) = headers::find(&headers, "x-delivery-count") {
            origin.push(("delivery_count", String::from_utf8_lossy(count).into()));
        }
        let id = match properties.message_id() {
            Some(id) => id.as_str().to_string(),
            None => format!("{}/{session}/{tag}", self.config.queue),
        };
        let event = Event {
            id,
            source: self.name.clone(),
            key: ordering_key.clone(),
            payload: Bytes::from(message.data),
            headers,
            timestamp_ms: properties
                .timestamp()
                .map(|seconds| (seconds as i64).saturating_mul(1000)),
            origin,
        };
        debug!(source = %self.name, event = %event.id, tag, redelivered = message.redelivered, "Received");
        let settled = settled.clone();
        let delivery = Delivery::new(event, ordering_key, move |outcome| {
            // The task is gone only after the source stopped; the broker requeues then.
            let _ = settled.send(Settlement {
                session,
                tag,
                outcome,
            });
        });
        match self.config.dead_letter {
            DeadLetterMode::Pipeline => delivery,
            DeadLetterMode::Broker => delivery.with_source_dead_letter(),
        }
    }
}

/// The `basic_ack`s, as `(tag, multiple)`, that acknowledge exactly `acks` when the oldest
/// tag still unsettled is `oldest_unsettled`: one `multiple` ack for the settled tags below it
/// (every other tag below it was acked, nacked or rejected before, so `multiple` covers exactly
/// these), and one plain ack per tag above it.
fn ack_plan(mut acks: Vec<u64>, oldest_unsettled: Option<u64>) -> Vec<(u64, bool)> {
    acks.sort_unstable();
    let floor = oldest_unsettled.unwrap_or(u64::MAX);
    let below = acks.partition_point(|t| *t < floor);
    let mut plan = Vec::with_capacity(acks.len() - below + 1);
    if below > 0 {
        plan.push((acks[below - 1], below > 1));
    }
    plan.extend(acks[below..].iter().map(|&t| (t, false)));
    plan
}

/// Waits `wait`, or returns false at once on shutdown.
async fn sleep(ctx: &SourceContext, wait: std::time::Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(wait) => true,
        _ = ctx.shutdown.cancelled() => false,
    }
}

#[cfg(test)]
mod tests {
    use super::ack_plan;

    #[test]
    fn contiguous_settled_tags_share_one_multiple_ack() {
        // 1..=5 settled in any order, nothing older unsettled: one multiple ack.
        assert_eq!(ack_plan(vec![3, 1, 5, 2, 4], None), vec![(5, true)]);
        // 7 is still running: 1..=5 go together, 9 and 12 on their own.
        assert_eq!(
            ack_plan(vec![12, 2, 9, 5], Some(7)),
            vec![(5, true), (9, false), (12, false)]
        );
        // One tag below the floor is a plain ack.
        assert_eq!(ack_plan(vec![4], Some(6)), vec![(4, false)]);
        // Everything above the oldest unsettled tag: individual acks only.
        assert_eq!(ack_plan(vec![8, 9], Some(3)), vec![(8, false), (9, false)]);
        assert!(ack_plan(vec![], Some(1)).is_empty());
    }
}
