//! [`AmqpSink`]: publishes records to an exchange, persistent and `mandatory`, and confirms each
//! hand-over once the broker confirmed every one of its records.
//!
//! # Channels and order
//!
//! The sink keeps `channels` *pipes*, each a task on the IO runtime that owns one channel in
//! confirm mode on a shared connection. A hand-over goes to the pipe its lane picks (`lane %
//! channels`), so all records of one key go out on one channel, in the order they were handed
//! over, and a key's next event need not wait for its predecessor's confirm. Each pipe keeps many
//! publishes outstanding — which is what makes RabbitMQ fast with confirms — and confirms the
//! hand-overs in order as the broker's acks come in.
//!
//! # Returns, attributed per message
//!
//! The broker sends `basic.return` for an unroutable `mandatory` message before its ack; lapin
//! hands a returned message to whichever confirm of the channel it completes next, and a
//! `multiple` ack completes several confirms in no particular order. So a pipe does not trust
//! which confirm carries a return: when the oldest outstanding confirm resolves, it first takes
//! lapin's acknowledgement lock once (a no-op `wait_for_confirms`, which returns as soon as it has
//! the lock), so that every confirm of the same ack has resolved, collects the returns they
//! carry, and gives each to the oldest outstanding record with the same routing key and payload
//! (returns come back in publish order). Only then does it confirm the hand-overs whose records
//! are all acknowledged.
//!
//! # Failures
//!
//! A returned (unroutable) record fails its hand-over as [`SinkError::Permanent`]: the event is
//! dead-lettered, not acked as done. A nack, a lost connection or channel, or a confirm that
//! does not come within `confirm_timeout` is [`SinkError::Retryable`]; the pipeline publishes
//! again with backoff (so a record may be published twice — at-least-once). A broken channel or
//! connection is replaced on the next hand-over, and so is a connection that looks up but on
//! which a channel does not open within `confirm_timeout` (nothing answers on it): waiting for
//! heartbeats to notice would hold every hand-over of the sink for minutes.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use fnmill_connector_api::{Confirm, Record, Sink, SinkError, Unconfirmed};
use futures::FutureExt;
use futures::future::BoxFuture;
use lapin::PublisherConfirm;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Confirmation, Connection};
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::config::{AmqpSinkConfig, Broker as _, Topology};
use crate::{
    ANSWER_TIMEOUT, AmqpError, Result, bounded, close_channel, close_in_order, headers, in_order,
};

/// AMQP `delivery_mode` 2: the broker writes the message to disk (for classic queues; quorum
/// queues always do).
const PERSISTENT: u8 = 2;

/// Hand-overs a pipe's queue holds before `enqueue` waits (backpressure towards the pipeline).
const PIPE_QUEUE: usize = 256;

/// How long closing a channel or the connection may take at shutdown.
const CLOSE_CONNECTION: Duration = Duration::from_secs(2);

/// Records a pipe keeps outstanding before it waits for confirms: RabbitMQ's throughput grows
/// with outstanding confirms up to a few hundred.
const MAX_OUTSTANDING: usize = 1024;

/// The shared connection, replaced when it is broken.
struct Connector {
    endpoint: crate::Endpoint,
    name: String,
    declare: Topology,
    connection: Mutex<Option<Arc<Connection>>>,
}

impl Connector {
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
            let declared = bounded("declaring the sink's topology", ANSWER_TIMEOUT, async {
                let channel = connection
                    .create_channel()
                    .await
                    .map_err(AmqpError::broker("opening a channel"))?;
                self.declare.declare(&channel).await?;
                let _ = channel.close(200, "declared".into()).await;
                Ok(())
            })
            .await;
            if let Err(e) = declared {
                close_in_order(&connection, None, 200, "setup failed", CLOSE_CONNECTION).await;
                return Err(e);
            }
        }
        info!(sink = %self.name, "Connected");
        let connection = Arc::new(connection);
        *current = Some(connection.clone());
        Ok(connection)
    }

    /// A channel with publisher confirms, opened within `within`: lapin awaits the broker's
    /// answers without a bound, and a pipe waiting here holds every hand-over queued on it
    /// with no error to retry on. A connection that took no channel in time is discarded, so the
    /// next attempt connects again instead of waiting on it once more.
    async fn channel(&self, within: Duration) -> Result<Channel> {
        let connection = self.connection().await?;
        let opened = bounded("opening a channel with publisher confirms", within, async {
            let channel = connection
                .create_channel()
                .await
                .map_err(AmqpError::broker("opening a channel"))?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(AmqpError::broker("enabling publisher confirms"))?;
            Ok(channel)
        })
        .await;
        if let Err(AmqpError::Timeout { .. }) = &opened {
            self.discard(&connection).await;
        }
        opened
    }

    /// Forgets `broken` if it is still the shared connection (another pipe may have replaced it
    /// already), and closes it in the background within a bound: its socket may be open while
    /// nothing answers on it. The pipes' channels on it stop counting as connected.
    async fn discard(&self, broken: &Arc<Connection>) {
        let mut current = self.connection.lock().await;
        if !current.as_ref().is_some_and(|c| Arc::ptr_eq(c, broken)) {
            return;
        }
        current.take();
        warn!(sink = %self.name, "The broker does not answer on this connection; reconnecting");
        let broken = broken.clone();
        tokio::spawn(async move {
            close_in_order(&broken, None, 320, "not answering", CLOSE_CONNECTION).await;
        });
    }
}

/// What every pipe shares.
struct Shared {
    connector: Connector,
    exchange: String,
    routing_key: String,
    mandatory: bool,
    confirm_timeout: Duration,
}

enum Command {
    Publish {
        records: Vec<Record>,
        confirm: Confirm,
    },
    /// Confirm everything outstanding, then stop.
    Close(oneshot::Sender<()>),
}

/// Publishes to a RabbitMQ exchange with confirms. See the module docs.
pub struct AmqpSink {
    shared: Arc<Shared>,
    pipes: Vec<mpsc::Sender<Command>>,
}

impl std::fmt::Debug for AmqpSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpSink")
            .field("exchange", &self.shared.exchange)
            .field("routing_key", &self.shared.routing_key)
            .field("pipes", &self.pipes.len())
            .finish_non_exhaustive()
    }
}

impl AmqpSink {
    /// Checks the config and starts the pipes on the current tokio runtime (the IO runtime);
    /// `name` (the `sinks.<name>` key) names the connection in the broker. Connects lazily, on
    /// the first hand-over, so fnmill starts while the broker is away.
    pub fn new(name: impl Into<String>, config: AmqpSinkConfig) -> Result<Self> {
        if let Some(p) = config.check().into_iter().next() {
            return Err(AmqpError::Problem(p));
        }
        let endpoint = config.endpoint()?;
        let shared = Arc::new(Shared {
            connector: Connector {
                endpoint,
                name: name.into(),
                declare: config.declare,
                connection: Mutex::new(None),
            },
            exchange: config.exchange,
            routing_key: config.routing_key,
            mandatory: config.mandatory,
            confirm_timeout: config.confirm_timeout,
        });
        let io = tokio::runtime::Handle::try_current().map_err(|_| AmqpError::Invalid {
            key: "channels",
            message: "the AMQP sink must be created inside a tokio runtime".into(),
        })?;
        let pipes = (0..config.channels)
            .map(|_| {
                let (tx, rx) = mpsc::channel(PIPE_QUEUE);
                io.spawn(Pipe::new(shared.clone()).run(rx));
                tx
            })
            .collect();
        Ok(Self { shared, pipes })
    }
}

impl Sink for AmqpSink {
    /// Queues the records on the lane's pipe: ordered once queued; confirmed when the broker
    /// acknowledged all of them.
    fn enqueue<'a>(
        &'a self,
        records: &'a [Record],
        lane: u64,
        confirm: Confirm,
    ) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            if records.is_empty() {
                confirm(Ok(()));
                return Ok(());
            }
            let records = records.to_vec();
            let pipe = &self.pipes[(lane % self.pipes.len() as u64) as usize];
            pipe.send(Command::Publish { records, confirm })
                .await
                .map_err(|_| SinkError::Retryable("the AMQP sink is closed".into()))
        })
    }

    /// Waits for the pipes to confirm what they hold, then closes the connection; bounded by
    /// `confirm_timeout` (plus a moment for the connection), so a broker that stops answering
    /// cannot hold the process at shutdown. What was not confirmed was not acknowledged at the
    /// source either: it is delivered and published again.
    fn close(&self) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async move {
            let pipes = async {
                let mut waits = Vec::new();
                for pipe in &self.pipes {
                    let (tx, rx) = oneshot::channel();
                    if pipe.send(Command::Close(tx)).await.is_ok() {
                        waits.push(rx);
                    }
                }
                for wait in waits {
                    let _ = wait.await;
                }
            };
            let bound = self.shared.confirm_timeout;
            let finished = tokio::time::timeout(bound, pipes).await.is_ok();
            if let Some(connection) = self.shared.connector.connection.lock().await.take() {
                close_in_order(&connection, None, 200, "fnmill stopping", CLOSE_CONNECTION).await;
            }
            if finished {
                Ok(())
            } else {
                Err(SinkError::Retryable(format!(
                    "publishes still unconfirmed after {bound:?}; their events were not \
                     acknowledged and will be delivered again"
                )))
            }
        })
    }
}

/// One record on its way: its confirm and what identifies it when it comes back.
struct Outstanding {
    confirm: Option<PublisherConfirm>,
    result: Option<std::result::Result<Confirmation, lapin::Error>>,
    /// The record as published, its routing key resolved into `target`: handed back should it
    /// not be confirmed.
    record: Record,
    /// Its place in its hand-over, so that what is handed back keeps the hand-over's order.
    index: usize,
    /// Set when a return was attributed to this record.
    returned: Option<String>,
    /// Returns lapin handed over with this record's confirm; they may belong to other records.
    carried: Vec<lapin::message::BasicReturnMessage>,
    /// The hand-over it belongs to, as an index into the pipe's hand-overs.
    handover: u64,
    deadline: Instant,
}

/// A hand-over whose records are outstanding.
struct Handover {
    id: u64,
    remaining: usize,
    error: Option<SinkError>,
    /// The records that failed, with their place in the hand-over.
    unconfirmed: Vec<(usize, Record)>,
    confirm: Option<Confirm>,
}

impl Handover {
    /// Record `index` of this hand-over failed with `error`. A permanent failure wins over a
    /// retryable one: publishing again cannot route an unroutable record.
    fn failed(&mut self, index: usize, record: Record, error: SinkError) {
        if !matches!(self.error, Some(SinkError::Permanent(_))) {
            self.error = Some(error);
        }
        self.unconfirmed.push((index, record));
    }
}

/// One channel and what is outstanding on it.
struct Pipe {
    shared: Arc<Shared>,
    channel: Option<Channel>,
    outstanding: VecDeque<Outstanding>,
    handovers: VecDeque<Handover>,
    next_handover: u64,
}

impl Pipe {
    fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            channel: None,
            outstanding: VecDeque::new(),
            handovers: VecDeque::new(),
            next_handover: 0,
        }
    }

    async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut closing: Option<oneshot::Sender<()>> = None;
        let mut batch = Vec::new();
        loop {
            if closing.is_some() && self.outstanding.is_empty() {
                break;
            }
            let deadline = self.outstanding.front().map(|o| o.deadline);
            tokio::select! {
                biased;
                () = HeadReady(&mut self.outstanding), if !self.outstanding.is_empty() => {
                    self.settle_ready();
                }
                () = sleep_until(deadline), if deadline.is_some() => {
                    self.fail_all(SinkError::Retryable(format!(
                        "no publisher confirm within {:?}",
                        self.shared.confirm_timeout
                    )));
                    // The channel may still get those confirms later: do not reuse it.
                    self.channel = None;
                }
                command = commands.recv(), if closing.is_none() && self.outstanding.len() < MAX_OUTSTANDING => {
                    let Some(command) = command else { break };
                    // What else is queued already goes out with it, up to the outstanding cap:
                    // one hand-off to lapin's IO loop, and one wake-up of this task, for the
                    // lot instead of one per record.
                    let mut room = MAX_OUTSTANDING - self.outstanding.len();
                    let mut next = Some(command);
                    while let Some(command) = next.take() {
                        match command {
                            Command::Publish { records, confirm } => {
                                room = room.saturating_sub(records.len());
                                batch.push((records, confirm));
                            }
                            Command::Close(done) => {
                                closing = Some(done);
                                break;
                            }
                        }
                        if room > 0 {
                            next = commands.try_recv().ok();
                        }
                    }
                    if !batch.is_empty() {
                        self.publish(&mut batch).await;
                    }
                }
            }
        }
        if let Some(done) = closing {
            // Closed here, before the sink closes the connection: see `close_in_order`.
            if let Some(channel) = self.channel.take() {
                close_channel(&channel, 200, "fnmill stopping", CLOSE_CONNECTION).await;
            }
            let _ = done.send(());
        }
    }

    /// Publishes the hand-overs of `batch` (and empties it) on the pipe's channel: every
    /// record's frames are queued, in order, before any publish is awaited.
    async fn publish(&mut self, batch: &mut Vec<(Vec<Record>, Confirm)>) {
        let channel = match &self.channel {
            Some(c) if c.status().connected() => c.clone(),
            _ => match self
                .shared
                .connector
                .channel(self.shared.confirm_timeout)
                .await
            {
                Ok(c) => {
                    self.channel = Some(c.clone());
                    c
                }
                Err(e) => {
                    for (records, confirm) in batch.drain(..) {
                        confirm(Err(Unconfirmed::new(
                            SinkError::Retryable(format!("no channel to the broker: {e}")),
                            records,
                        )));
                    }
                    return;
                }
            },
        };
        let options = BasicPublishOptions {
            mandatory: self.shared.mandatory,
            immediate: false,
        };
        let deadline = Instant::now() + self.shared.confirm_timeout;
        let mut sent = Vec::new();
        let mut publishes = Vec::new();
        for (records, confirm) in batch.drain(..) {
            let id = self.next_handover;
            self.next_handover += 1;
            self.handovers.push_back(Handover {
                id,
                remaining: 0,
                error: None,
                unconfirmed: Vec::new(),
                confirm: Some(confirm),
            });
            for (index, mut record) in records.into_iter().enumerate() {
                record
                    .target
                    .get_or_insert_with(|| self.shared.routing_key.clone());
                let properties = BasicProperties::default()
                    .with_delivery_mode(PERSISTENT)
                    .with_headers(headers::to_table(&record.headers));
                sent.push((id, index, record, properties));
            }
        }
        for (_, _, record, properties) in &sent {
            publishes.push(Box::pin(channel.basic_publish(
                self.shared.exchange.as_str().into(),
                routing_key(record).into(),
                options,
                &record.payload,
                properties.clone(),
            )));
        }
        // lapin resolves a publish once its IO loop wrote the frames; a connection the broker
        // blocked (a resource alarm) may hold them indefinitely, and this pipe with them.
        let Ok(results) =
            tokio::time::timeout(self.shared.confirm_timeout, in_order(publishes)).await
        else {
            self.channel = None;
            let why = format!(
                "the broker took no publish within {:?} (connection blocked?)",
                self.shared.confirm_timeout
            );
            for (handover, index, record, _) in sent {
                if let Some(h) = self.handovers.iter_mut().find(|h| h.id == handover) {
                    h.failed(index, record, SinkError::Retryable(why.clone()));
                }
            }
            self.confirm_finished();
            return;
        };
        for ((handover, index, record, _), result) in sent.into_iter().zip(results) {
            let h = self
                .handovers
                .iter_mut()
                .find(|h| h.id == handover)
                .expect("pushed above");
            match result {
                Ok(confirm) => {
                    h.remaining += 1;
                    self.outstanding.push_back(Outstanding {
                        confirm: Some(confirm),
                        result: None,
                        record,
                        index,
                        returned: None,
                        carried: Vec::new(),
                        handover,
                        deadline,
                    });
                }
                Err(e) => {
                    // The channel is broken: what is outstanding on it fails as its confirms
                    // are rejected; this hand-over fails now.
                    self.channel = None;
                    h.failed(
                        index,
                        record,
                        SinkError::Retryable(format!("publishing: {e}")),
                    );
                }
            }
        }
        self.confirm_finished();
    }

    /// The oldest confirm resolved: fence against lapin's ack processing, gather every resolved
    /// confirm and its return, attribute the returns, and confirm the hand-overs that are done.
    fn settle_ready(&mut self) {
        if let Some(channel) = &self.channel {
            // Takes and releases lapin's acknowledgement lock: every confirm of the ack that
            // resolved the oldest one has resolved once we hold it. Returns from confirms that
            // were dropped unresolved come back here too.
            if let Some(Ok(returns)) = channel.wait_for_confirms().now_or_never() {
                for r in returns {
                    self.attribute(&r);
                }
            }
        }
        let mut cx = Context::from_waker(Waker::noop());
        let mut returns = Vec::new();
        for o in self.outstanding.iter_mut() {
            returns.append(&mut o.carried);
            if let Some(confirm) = &mut o.confirm
                && let Poll::Ready(result) = Pin::new(confirm).poll(&mut cx)
            {
                o.confirm = None;
                let result = match result {
                    Ok(Confirmation::Ack(Some(r))) => {
                        returns.push(r);
                        Ok(Confirmation::Ack(None))
                    }
                    Ok(Confirmation::Nack(Some(r))) => {
                        returns.push(r);
                        Ok(Confirmation::Nack(None))
                    }
                    other => other,
                };
                o.result = Some(result);
            }
        }
        for r in &returns {
            self.attribute(r);
        }
        while let Some(front) = self.outstanding.front()
            && front.result.is_some()
        {
            let o = self.outstanding.pop_front().expect("checked");
            let error = match (o.result.expect("checked"), o.returned) {
                (_, Some(why)) => Some(SinkError::Permanent(why)),
                (Ok(Confirmation::Ack(_)) | Ok(Confirmation::NotRequested), None) => None,
                (Ok(Confirmation::Nack(_)), None) => {
                    Some(SinkError::Retryable("the broker nacked a publish".into()))
                }
                (Err(e), None) => Some(SinkError::Retryable(format!(
                    "waiting for a publisher confirm: {e}"
                ))),
            };
            if let Some(h) = self.handovers.iter_mut().find(|h| h.id == o.handover) {
                h.remaining -= 1;
                if let Some(e) = error {
                    h.failed(o.index, o.record, e);
                }
            }
        }
        self.confirm_finished();
    }

    /// Gives a returned message to the oldest outstanding record it matches.
    fn attribute(&mut self, r: &lapin::message::BasicReturnMessage) {
        let why = format!(
            "unroutable: exchange `{}` returned a message with routing key `{}` ({} {})",
            self.shared.exchange, r.delivery.routing_key, r.reply_code, r.reply_text
        );
        if let Some(o) = self.outstanding.iter_mut().find(|o| {
            o.returned.is_none()
                && routing_key(&o.record) == r.delivery.routing_key.as_str()
                && o.record.payload.as_ref() == r.delivery.data.as_slice()
        }) {
            o.returned = Some(why);
        }
    }

    /// Confirms, in order, the hand-overs with nothing outstanding.
    fn confirm_finished(&mut self) {
        while let Some(h) = self.handovers.front()
            && h.remaining == 0
        {
            let mut h = self.handovers.pop_front().expect("checked");
            if let Some(confirm) = h.confirm.take() {
                confirm(match h.error.take() {
                    None => Ok(()),
                    Some(e) => {
                        let mut failed = std::mem::take(&mut h.unconfirmed);
                        failed.sort_unstable_by_key(|(index, _)| *index);
                        Err(Unconfirmed::new(
                            e,
                            failed.into_iter().map(|(_, r)| r).collect(),
                        ))
                    }
                });
            }
        }
    }

    /// Fails everything outstanding (a confirm that never came).
    fn fail_all(&mut self, error: SinkError) {
        for o in self.outstanding.drain(..) {
            if let Some(h) = self.handovers.iter_mut().find(|h| h.id == o.handover) {
                h.remaining -= 1;
                h.failed(o.index, o.record, error.clone());
            }
        }
        self.confirm_finished();
    }
}

/// Resolves once the oldest outstanding confirm has resolved (without taking its result).
struct HeadReady<'a>(&'a mut VecDeque<Outstanding>);

impl Future for HeadReady<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let Some(head) = self.0.front_mut() else {
            return Poll::Pending;
        };
        if head.result.is_some() {
            return Poll::Ready(());
        }
        let confirm = head.confirm.as_mut().expect("unresolved");
        match Pin::new(confirm).poll(cx) {
            Poll::Ready(result) => {
                head.confirm = None;
                head.result = Some(match result {
                    Ok(Confirmation::Ack(Some(r))) => {
                        // Kept for attribution: stored as a return of its own.
                        head.returned_pending(r);
                        Ok(Confirmation::Ack(None))
                    }
                    Ok(Confirmation::Nack(Some(r))) => {
                        head.returned_pending(r);
                        Ok(Confirmation::Nack(None))
                    }
                    other => other,
                });
                Poll::Ready(())
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Outstanding {
    /// A return that came on this record's confirm, to attribute once everything of the same
    /// ack is in (it may belong to another record).
    fn returned_pending(&mut self, r: lapin::message::BasicReturnMessage) {
        self.carried.push(r);
    }
}

/// The routing key a record is published with: its `target`, resolved before publishing.
fn routing_key(record: &Record) -> &str {
    record.target.as_deref().unwrap_or_default()
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
