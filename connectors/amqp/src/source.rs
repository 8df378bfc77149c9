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
//! topology, and consumes again. A set-up step or a batch of acks the broker does not take within
//! 30 s counts as a lost connection too.
//!
//! # Acks
//!
//! Settlements arrive in any order. After each batch of settlements the source sends one
//! `basic_ack` with `multiple = true` for the settled tags below the oldest unsettled one (that
//! covers exactly the tags settled since — every tag below the oldest unsettled one is settled,
//! and the earlier ones were acked, nacked or rejected already) and one plain `basic_ack` per
//! settled tag above it. Abandoned deliveries are `basic_nack`ed with requeue, and rejected ones
//! (with `dead_letter = "broker"`, the route hands an event that failed for good back to the
//! queue's own dead-letter exchange) are `basic_reject`ed without requeue; those go out before the
//! acks of the same batch. The bookkeeping is `connectors/api`'s [`UnorderedWindow`].

use std::sync::Arc;

use bytes::Bytes;
use fnmill_connector_api::metrics::Gauge;
use fnmill_connector_api::settlement::{self, Settled, Settlements, Settler, UnorderedWindow};
use fnmill_connector_api::{Delivery, Event, OriginValue, Source, SourceContext, SourceError};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
    BasicRejectOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, Consumer};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::config::{AmqpSourceConfig, Broker as _, OrderingKey};
use crate::{
    ANSWER_TIMEOUT, AmqpError, Reconnect, Result, bounded, close_in_order, headers, in_order,
};

/// Settlements handled per loop turn: enough to batch acks under load, small enough that a
/// burst does not keep new messages waiting.
const SETTLE_BATCH: usize = 1024;

/// How long closing a channel or connection may take: a broker that does not answer holds neither
/// a reconnect nor the shutdown up longer.
const CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Which delivery a settlement is about: the connection it came on and its delivery tag there.
#[derive(Clone, Copy, Debug)]
struct Ticket {
    session: u64,
    tag: u64,
}

/// Consumes a RabbitMQ queue. See the module docs.
#[derive(Debug)]
pub struct AmqpSource {
    /// Shared with every event it delivers.
    name: Arc<str>,
    /// `config.queue`, shared with every event's origin.
    queue: Arc<str>,
    config: AmqpSourceConfig,
    endpoint: crate::Endpoint,
    /// Messages delivered to fnmill and not yet acked, nacked or rejected, when someone reads it.
    unacked: Option<Gauge>,
}

impl AmqpSource {
    /// Checks the config; `name` becomes [`Event::source`]. Nothing is connected yet.
    pub fn new(name: impl Into<Arc<str>>, config: AmqpSourceConfig) -> Result<Self> {
        if let Some(p) = config.check().into_iter().next() {
            return Err(AmqpError::Problem(p));
        }
        let endpoint = config.endpoint()?;
        Ok(Self {
            name: name.into(),
            queue: config.queue.as_str().into(),
            config,
            endpoint,
            unacked: None,
        })
    }

    /// Keeps `gauge` at the number of messages of the queue that fnmill holds unacknowledged.
    pub fn with_unacked(mut self, gauge: Gauge) -> Self {
        self.unacked = Some(gauge);
        self
    }

    /// The queue this source consumes.
    pub fn queue(&self) -> &str {
        &self.config.queue
    }

    fn report_unacked(&self, session: &Session) {
        if let Some(gauge) = &self.unacked {
            gauge.set(session.unsettled.outstanding() as i64);
        }
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
    unsettled: UnorderedWindow,
}

impl AmqpSource {
    async fn run_sessions(self, ctx: SourceContext) {
        // Unbounded: settle closures cannot wait. Bounded in practice by the prefetch window of
        // this and earlier sessions.
        let (settler, mut settlements) = settlement::channel::<Ticket>();
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
                .consume(&ctx, &mut session, consumer, &settler, &mut settlements)
                .await;
            ctx.ready.set(false);
            // Whatever this connection held is the broker's again.
            if let Some(gauge) = &self.unacked {
                gauge.set(0);
            }
            match end {
                End::Shutdown | End::PipelineGone => {
                    close_in_order(
                        &session.connection,
                        Some(&session.channel),
                        200,
                        "fnmill stopping",
                        CLOSE_TIMEOUT,
                    )
                    .await;
                    info!(source = %self.name, "Stopped consuming");
                    return;
                }
                End::Lost(e) => {
                    reconnect.reset();
                    let wait = reconnect.delay();
                    // Said as soon as it is known: closing what is left of the connection may
                    // take a while when the broker is unreachable.
                    warn!(
                        source = %self.name,
                        error = %e,
                        in_flight = session.unsettled.outstanding(),
                        wait_ms = wait.as_millis() as u64,
                        "Connection to the broker lost; reconnecting (unacked messages are redelivered)"
                    );
                    // Unacked messages of this session go back to the queue with the connection.
                    // A broker that does not answer the close does not hold the reconnect up.
                    close_in_order(
                        &session.connection,
                        Some(&session.channel),
                        320,
                        "fnmill reconnecting",
                        CLOSE_TIMEOUT,
                    )
                    .await;
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
        // Each step awaits the broker's answer; a connection that stops answering midway is
        // closed and opened again.
        let result = bounded("setting up the consumer", ANSWER_TIMEOUT, async {
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
        })
        .await;
        match result {
            Ok((channel, consumer)) => Ok((
                Session {
                    number,
                    connection,
                    channel,
                    unsettled: UnorderedWindow::new(),
                },
                consumer,
            )),
            Err(e) => {
                close_in_order(&connection, None, 200, "setup failed", CLOSE_TIMEOUT).await;
                Err(e)
            }
        }
    }

    async fn consume(
        &self,
        ctx: &SourceContext,
        session: &mut Session,
        mut consumer: Consumer,
        settler: &Settler<Ticket>,
        settlements: &mut Settlements<Ticket>,
    ) -> End {
        // A message taken from the broker and waiting for room in the pipeline.
        let mut pending: Option<Delivery> = None;
        let mut batch = Vec::with_capacity(SETTLE_BATCH);
        loop {
            tokio::select! {
                biased;
                n = settlements.recv_many(&mut batch, SETTLE_BATCH) => {
                    debug_assert!(n > 0, "the source holds a sender");
                    if let Err(e) = self.settle(session, &mut batch).await {
                        return End::Lost(e);
                    }
                    self.report_unacked(session);
                }
                _ = ctx.shutdown.cancelled() => {
                    drop(pending.take());
                    return self.drain(session, consumer, settlements).await;
                }
                permit = ctx.out.reserve(), if pending.is_some() => match permit {
                    Ok(permit) => if permit.send(pending.take().expect("checked")).is_err() {
                        return End::PipelineGone;
                    },
                    Err(_) => return End::PipelineGone,
                },
                next = consumer.next(), if pending.is_none() => match next {
                    Some(Ok(message)) => {
                        session.unsettled.lend(message.delivery_tag);
                        self.report_unacked(session);
                        pending = Some(self.delivery(session.number, message, settler));
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

    /// Applies a batch of settlements to the broker: requeues and rejects first, then acks.
    async fn settle(&self, session: &mut Session, batch: &mut Vec<Settled<Ticket>>) -> Result<()> {
        // Settlements from an earlier connection are skipped: the broker requeued those
        // messages when it closed.
        let number = session.number;
        let plan = session.unsettled.settle(
            batch
                .drain(..)
                .filter(|s| s.ticket.session == number)
                .map(|s| (s.ticket.tag, s.outcome)),
        );
        let channel = &session.channel;
        // Queued together, in this order (requeues and rejects before the acks), and written
        // by lapin's IO loop in one go.
        let requeues = plan.requeue.iter().map(|&tag| {
            channel
                .basic_nack(
                    tag,
                    BasicNackOptions {
                        multiple: false,
                        requeue: true,
                    },
                )
                .map(|r| r.map_err(AmqpError::broker("requeueing a message")))
                .boxed()
        });
        let rejects = plan.reject.iter().map(|&tag| {
            channel
                .basic_reject(tag, BasicRejectOptions { requeue: false })
                .map(|r| r.map_err(AmqpError::broker("rejecting a message")))
                .boxed()
        });
        let acks = plan.ack.iter().map(|&(tag, multiple)| {
            channel
                .basic_ack(tag, BasicAckOptions { multiple })
                .map(|r| r.map_err(AmqpError::broker("acking messages")))
                .boxed()
        });
        // lapin resolves each once its IO loop wrote it: a connection that takes none in this
        // long is treated as lost (its unacked messages go back to the queue when it closes).
        let written = in_order(requeues.chain(rejects).chain(acks).collect());
        bounded("acking messages", ANSWER_TIMEOUT, async {
            written.await.into_iter().collect()
        })
        .await
    }

    /// On shutdown: stop the consumer, wait (within `drain_timeout`) for what is in the pipeline
    /// to settle and be acked. What is still unacked when the connection closes is requeued by
    /// the broker.
    async fn drain(
        &self,
        session: &mut Session,
        consumer: Consumer,
        settlements: &mut Settlements<Ticket>,
    ) -> End {
        let _ = tokio::time::timeout(
            CLOSE_TIMEOUT,
            session
                .channel
                .basic_cancel(consumer.tag(), BasicCancelOptions::default()),
        )
        .await;
        drop(consumer);
        info!(source = %self.name, in_flight = session.unsettled.outstanding(), "Draining");
        let deadline = Instant::now() + self.config.drain_timeout;
        let mut batch = Vec::with_capacity(SETTLE_BATCH);
        while !session.unsettled.is_empty() {
            match tokio::time::timeout_at(deadline, settlements.recv_many(&mut batch, SETTLE_BATCH))
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
                        left = session.unsettled.outstanding(),
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
        settler: &Settler<Ticket>,
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
            ("queue", OriginValue::Text(self.queue.clone())),
            (
                "delivery_tag",
                match i64::try_from(tag) {
                    Ok(n) => OriginValue::Number(n),
                    Err(_) => tag.to_string().into(),
                },
            ),
            ("redelivered", message.redelivered.to_string().into()),
        ];
        if let Some(count) = headers::find(&headers, "x-delivery-count") {
            origin.push((
                "delivery_count",
                String::from_utf8_lossy(count).as_ref().into(),
            ));
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
            decode_error: None,
        };
        debug!(source = %self.name, event = %event.id, tag, redelivered = message.redelivered, "Received");
        settler.delivery(event, ordering_key, Ticket { session, tag })
    }
}

/// Waits `wait`, or returns false at once on shutdown.
async fn sleep(ctx: &SourceContext, wait: std::time::Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(wait) => true,
        _ = ctx.shutdown.cancelled() => false,
    }
}
