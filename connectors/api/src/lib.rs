//! The vocabulary every fnmill connector speaks: the [`Event`], the [`Source`] that lends events
//! out as [`Delivery`]s, the [`Sink`] that publishes [`Record`]s and confirms them, and the data
//! capabilities ([`capability`]) that pools serve to functions.
//!
//! This crate depends on nothing else of fnmill's. A connector (Kafka, AMQP, file) depends on
//! it and on nothing above it; it knows nothing about WebAssembly.
//!
//! # Settlement
//!
//! A source lends each event out inside a [`Delivery`]. The pipeline settles it exactly once with
//! an [`Outcome`]; only the source maps outcomes to broker calls (store a Kafka offset, send an
//! AMQP `basic_ack`, advance a file checkpoint). A delivery dropped without being settled — a
//! panic, a cancelled task, a bug — settles as [`Outcome::Abandoned`], so nothing is ever
//! acknowledged by accident. [`settlement`] holds the bookkeeping every source shares: the settle
//! channel, and the windows that turn settlements into "commit up to here" or "ack these tags".
//!
//! # Layout
//!
//! - [`settlement`]: the settle channel, [`settlement::OrderedWindow`] (Kafka offsets, file
//!   positions) and [`settlement::UnorderedWindow`] (AMQP delivery tags).
//! - [`connection`]: the connection fields every connector config shares (a secret URL, TLS
//!   files), their path resolution and redaction.
//! - [`secret`]: secrets from the environment or a file, never printed.
//! - [`capability`]: the `sql` and `keyvalue` capabilities a function can be granted, as the
//!   traits that data-source connectors implement and the wasm host holds.
//! - [`metrics`]: lock-free metric cells (duration histograms, gauges, pool status) that
//!   connectors record into and fnmill reads when it reports metrics.
//! - [`remote`]: a data source's `remote` table: the IO tier that serves it over NATS.
//! - [`Problem`]: one config problem naming its key, what every config's `check` returns.

pub mod capability;
pub mod connection;
pub mod metrics;
pub mod remote;
pub mod secret;
pub mod settlement;
pub mod throttle;

use std::fmt::{self, Write as _};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use futures::future::BoxFuture;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError, mpsc};
use tokio_util::sync::CancellationToken;

/// One message header. Values are bytes, as Kafka carries them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub name: String,
    pub value: Bytes,
}

impl Header {
    pub fn new(name: impl Into<String>, value: impl Into<Bytes>) -> Self {
        Self {
            name: name.into(),
            value: value.into(),
        }
    }
}

/// An event as a source delivered it. The payload and headers are never rewritten on the way
/// through fnmill, so a dead-lettered event carries the original bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Event {
    /// Unique within the source: `topic/partition/offset`, an AMQP message id, a JSON `id`.
    pub id: String,
    /// The `sources.<name>` key of the source that produced it (shared: one per source, not
    /// one per event).
    pub source: Arc<str>,
    /// Message key, if any.
    pub key: Option<Bytes>,
    pub payload: Bytes,
    pub headers: Vec<Header>,
    /// Production time in milliseconds since the Unix epoch, when the source knows it.
    pub timestamp_ms: Option<i64>,
    /// Where the event came from, as `(name, value)` pairs the dead-letter headers repeat
    /// (`topic`, `partition`, `offset`; `queue`, `delivery_tag`; `file`, `line`).
    pub origin: Vec<(&'static str, OriginValue)>,
    /// Set when the source could not decode what it received into an event (a line that is not
    /// JSON Lines): `payload` then holds the raw bytes, and the pipeline dead-letters the event
    /// (kind `decode`) without running the function.
    pub decode_error: Option<String>,
}

impl Event {
    /// An event with `id`, `source` and `payload`, and nothing else set.
    pub fn new(
        id: impl Into<String>,
        source: impl Into<Arc<str>>,
        payload: impl Into<Bytes>,
    ) -> Self {
        Self {
            id: id.into(),
            source: source.into(),
            payload: payload.into(),
            ..Self::default()
        }
    }
}

/// One value of an event's [`Event::origin`]: a shared text (a topic, a queue, a file name,
/// usually the same for many events) or a number (a partition, an offset, a line), so a source
/// builds an event's origin without formatting a string per value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OriginValue {
    Text(Arc<str>),
    Number(i64),
}

impl OriginValue {
    /// The text, for a text value.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            OriginValue::Text(t) => Some(t),
            OriginValue::Number(_) => None,
        }
    }

    /// The number, for a number value or a text that is one.
    pub fn as_number(&self) -> Option<i64> {
        match self {
            OriginValue::Text(t) => t.parse().ok(),
            OriginValue::Number(n) => Some(*n),
        }
    }
}

impl fmt::Display for OriginValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OriginValue::Text(t) => f.write_str(t),
            OriginValue::Number(n) => write!(f, "{n}"),
        }
    }
}

impl From<&str> for OriginValue {
    fn from(text: &str) -> Self {
        OriginValue::Text(text.into())
    }
}

impl From<String> for OriginValue {
    fn from(text: String) -> Self {
        OriginValue::Text(text.into())
    }
}

impl From<Arc<str>> for OriginValue {
    fn from(text: Arc<str>) -> Self {
        OriginValue::Text(text)
    }
}

impl From<i64> for OriginValue {
    fn from(n: i64) -> Self {
        OriginValue::Number(n)
    }
}

/// How the pipeline finished with a delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The function succeeded and every output was confirmed by its sink.
    Done,
    /// The event was confirmed on its dead-letter destination.
    DeadLettered,
    /// The event failed for good and the route hands it to its source's own dead-letter
    /// mechanism: RabbitMQ's dead-letter exchange, by rejecting the message without requeue
    /// (`dead_letter = "broker"` on an AMQP source). Sources without such a mechanism never get
    /// it (the config refuses it) and would treat it as [`Outcome::Abandoned`].
    Rejected,
    /// The event was not handled (shutdown, a stopped lane, a dropped delivery). The source must
    /// not acknowledge it, so it is delivered again (AMQP: requeue; Kafka/file: the committed
    /// position stays before it).
    Abandoned,
}

impl Outcome {
    /// Whether the source may now count the event as consumed and move past it. A rejected
    /// event is consumed too, but only a source that dead-letters by itself may do so, and it
    /// handles [`Outcome::Rejected`] on its own.
    pub fn is_acknowledged(self) -> bool {
        matches!(self, Outcome::Done | Outcome::DeadLettered)
    }
}

/// The source's side of a settlement: told the outcome of one delivery, exactly once.
pub trait Settle: Send + 'static {
    fn settle(self: Box<Self>, outcome: Outcome);

    /// [`Settle::settle`], handed what is left of the delivery as well. By default it is
    /// dropped here, on the thread that settles; a settler that sends the outcome to the
    /// source's thread sends `remains` along, so that the event is freed by the thread that
    /// allocated it (a block freed by another thread costs its allocator more, later, on both).
    fn settle_with(self: Box<Self>, outcome: Outcome, remains: Remains) {
        drop(remains);
        self.settle(outcome);
    }
}

/// What is left of a settled [`Delivery`]: its event and ordering key, to be dropped.
#[derive(Default)]
pub struct Remains {
    _event: Option<Arc<Event>>,
    _ordering_key: Option<Bytes>,
}

impl fmt::Debug for Remains {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Remains")
    }
}

impl<F: FnOnce(Outcome) + Send + 'static> Settle for F {
    fn settle(self: Box<Self>, outcome: Outcome) {
        (*self)(outcome)
    }
}

/// An event lent out by a source, to be settled exactly once.
///
/// Dropping a `Delivery` without calling [`Delivery::settle`] settles it as
/// [`Outcome::Abandoned`].
pub struct Delivery {
    /// Shared, so the pipeline hands it to the compute side without copying it. Taken only
    /// when the delivery settles (consuming or dropping it), so present whenever it can be read.
    event: Option<Arc<Event>>,
    ordering_key: Option<Bytes>,
    /// `None` once settled.
    settle: Option<Box<dyn Settle>>,
}

impl Delivery {
    /// `ordering_key`: events with equal keys are handled one after another, in delivery order;
    /// `None` means the event may run concurrently with any other.
    pub fn new(event: Event, ordering_key: Option<Bytes>, settle: impl Settle) -> Self {
        Self {
            event: Some(Arc::new(event)),
            ordering_key,
            settle: Some(Box::new(settle)),
        }
    }

    pub fn event(&self) -> &Arc<Event> {
        self.event
            .as_ref()
            .expect("a delivery holds its event until it settles")
    }

    pub fn ordering_key(&self) -> Option<&Bytes> {
        self.ordering_key.as_ref()
    }

    /// Settles the delivery with `outcome`, consuming it.
    pub fn settle(mut self, outcome: Outcome) {
        self.settle_once(outcome);
    }

    /// Hands the outcome and the event to the settler, once.
    fn settle_once(&mut self, outcome: Outcome) {
        if let Some(settle) = self.settle.take() {
            let remains = Remains {
                _event: self.event.take(),
                _ordering_key: self.ordering_key.take(),
            };
            settle.settle_with(outcome, remains);
        }
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        self.settle_once(Outcome::Abandoned);
    }
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("event", &self.event.as_ref().map(|e| &e.id))
            .field("ordering_key", &self.ordering_key)
            .field("settled", &self.settle.is_none())
            .finish()
    }
}

/// Whether a connector can do its job right now (connected, subscribed). Served at `/readyz`.
/// Starts not ready; the connector flips it as its connection comes and goes.
#[derive(Clone, Debug, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// One configuration problem: the key it is about (relative to the table being checked, e.g.
/// `prefetch` in a source's table; the caller prefixes `sources.<name>.`) and what is wrong.
///
/// Displayed as one line, `key: message`, with control characters escaped: both may quote the
/// config's own text (a quoted TOML key, a value that is not a duration), which can hold a
/// newline that would split the problem in two, or terminal escape codes.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}: {}", OneLine(key), OneLine(message))]
pub struct Problem {
    pub key: String,
    pub message: String,
}

impl Problem {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }

    /// The same problem with its key under `prefix` (`prefetch` → `sources.orders.prefetch`).
    pub fn under(mut self, prefix: &str) -> Self {
        self.key = if self.key.is_empty() {
            prefix.to_string()
        } else {
            format!("{prefix}.{}", self.key)
        };
        self
    }
}

/// Text shown on one line: control characters escaped as Rust writes them (`\n`, `\u{1b}`).
struct OneLine<'a>(&'a str);

impl fmt::Display for OneLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            if c.is_control() {
                write!(f, "{}", c.escape_default())?;
            } else {
                f.write_char(c)?;
            }
        }
        Ok(())
    }
}

impl From<secret::FieldError> for Problem {
    fn from(e: secret::FieldError) -> Self {
        Problem::new(e.field, e.message)
    }
}

/// Where a source hands its deliveries: the route it feeds. Bounded by the route's window of
/// events in flight: when that is full, [`Outbox::try_send`] says so and [`Outbox::send`]
/// waits, and the source stops pulling from its broker (that is the backpressure). Dropping every
/// clone tells the route that no more events come.
///
/// A sender that finds the window full waits until a chunk of it is free
/// ([`Outbox::REFILL_DIVISOR`]), not for each single place: a source behind a full window is
/// then woken once per chunk of settled events rather than once per event. The places of the
/// chunk beyond the first are kept for the next sends.
#[derive(Clone)]
pub struct Outbox {
    window: Arc<Semaphore>,
    deliver: Arc<Deliver>,
    /// Places taken from a full window and not yet used.
    spare: Arc<std::sync::Mutex<Option<OwnedSemaphorePermit>>>,
    /// How many places a sender that found the window full waits for.
    refill: u32,
}

/// How an [`Outbox`] hands over an admitted delivery; gives it back when the receiver is gone.
type Deliver = dyn Fn(Delivery, OwnedSemaphorePermit) -> Result<(), Delivery> + Send + Sync;

impl fmt::Debug for Outbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Outbox")
            .field("room", &self.window.available_permits())
            .field("refill", &self.refill)
            .finish()
    }
}

impl Outbox {
    /// A sender that finds the window full waits for this fraction of it (at most
    /// [`Outbox::MAX_REFILL`] places, at least one).
    pub const REFILL_DIVISOR: usize = 16;
    /// The largest chunk a sender waits for.
    pub const MAX_REFILL: usize = 64;

    /// An outbox with room for `window` deliveries at once. `deliver` receives each admitted
    /// delivery with its permit, which holds its place in the window until dropped (the
    /// pipeline drops it when the delivery settles); it gives the delivery back once the
    /// receiver is gone.
    pub fn new(
        window: usize,
        deliver: impl Fn(Delivery, OwnedSemaphorePermit) -> Result<(), Delivery> + Send + Sync + 'static,
    ) -> Self {
        Self {
            window: Arc::new(Semaphore::new(window)),
            deliver: Arc::new(deliver),
            spare: Arc::default(),
            refill: (window / Self::REFILL_DIVISOR).clamp(1, Self::MAX_REFILL) as u32,
        }
    }

    /// One place from the spare ones, if any are kept.
    fn spare(&self) -> Option<OwnedSemaphorePermit> {
        let mut spare = self.spare.lock().unwrap_or_else(|e| e.into_inner());
        let permits = spare.as_mut()?;
        if permits.num_permits() > 1 {
            permits.split(1)
        } else {
            spare.take()
        }
    }

    /// A place in the window: a spare one, a free one, or — the window being full — the first
    /// of a chunk of `refill` places once that many are free (the rest kept as spare).
    async fn place(&self) -> Result<OwnedSemaphorePermit, tokio::sync::AcquireError> {
        if let Some(permit) = self.spare() {
            return Ok(permit);
        }
        if let Ok(permit) = self.window.clone().try_acquire_owned() {
            return Ok(permit);
        }
        // Full (or closed, which the wait reports at once).
        let mut chunk = self.window.clone().acquire_many_owned(self.refill).await?;
        let Some(one) = chunk.split(1) else {
            return Ok(chunk);
        };
        if chunk.num_permits() > 0 {
            let mut spare = self.spare.lock().unwrap_or_else(|e| e.into_inner());
            match spare.as_mut() {
                Some(kept) => kept.merge(chunk),
                None => *spare = Some(chunk),
            }
        }
        Ok(one)
    }

    /// An outbox that feeds a plain channel of `capacity`, for consumers that take deliveries
    /// one by one (tests, tools): a delivery's place is freed when it is received.
    pub fn channel(capacity: usize) -> (Outbox, Received) {
        let (tx, rx) = mpsc::unbounded_channel::<(Delivery, OwnedSemaphorePermit)>();
        let outbox = Outbox::new(capacity, move |d, permit| {
            tx.send((d, permit)).map_err(|e| e.0.0)
        });
        let window = outbox.window.clone();
        (outbox, Received { rx, window })
    }

    /// Hands `delivery` over if the window has room.
    pub fn try_send(&self, delivery: Delivery) -> Result<(), TrySendError<Delivery>> {
        if let Some(permit) = self.spare() {
            return (self.deliver)(delivery, permit).map_err(TrySendError::Closed);
        }
        match self.window.clone().try_acquire_owned() {
            Ok(permit) => (self.deliver)(delivery, permit).map_err(TrySendError::Closed),
            Err(TryAcquireError::NoPermits) => Err(TrySendError::Full(delivery)),
            Err(TryAcquireError::Closed) => Err(TrySendError::Closed(delivery)),
        }
    }

    /// Hands `delivery` over, waiting for room. Gives it back once the receiver is gone.
    pub async fn send(&self, delivery: Delivery) -> Result<(), Delivery> {
        match self.place().await {
            Ok(permit) => (self.deliver)(delivery, permit),
            Err(_) => Err(delivery),
        }
    }

    /// Waits for room for one delivery and holds it.
    pub async fn reserve(&self) -> Result<Reserved<'_>, Closed> {
        match self.place().await {
            Ok(permit) => Ok(Reserved {
                outbox: self,
                permit,
            }),
            Err(_) => Err(Closed),
        }
    }

    /// Closes the window: senders waiting for room, and every later send, find it closed.
    pub fn close(&self) {
        self.window.close();
        self.spare.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    /// Whether [`Outbox::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.window.is_closed()
    }
}

/// Room for one delivery, held in an [`Outbox`].
pub struct Reserved<'a> {
    outbox: &'a Outbox,
    permit: OwnedSemaphorePermit,
}

impl Reserved<'_> {
    /// Hands `delivery` over. Gives it back once the receiver is gone.
    pub fn send(self, delivery: Delivery) -> Result<(), Delivery> {
        (self.outbox.deliver)(delivery, self.permit)
    }
}

/// The receiver is gone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the receiver is gone")]
pub struct Closed;

/// The receiving end of [`Outbox::channel`].
#[derive(Debug)]
pub struct Received {
    rx: mpsc::UnboundedReceiver<(Delivery, OwnedSemaphorePermit)>,
    window: Arc<Semaphore>,
}

impl Received {
    /// The next delivery; `None` once every [`Outbox`] clone is gone and everything was received.
    pub async fn recv(&mut self) -> Option<Delivery> {
        self.rx.recv().await.map(|(d, _permit)| d)
    }

    /// Deliveries waiting to be received.
    pub fn len(&self) -> usize {
        self.rx.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }
}

impl Drop for Received {
    fn drop(&mut self) {
        // Senders waiting for room learn that nobody receives any more.
        self.window.close();
    }
}

/// What a source is given to run with.
pub struct SourceContext {
    /// Where deliveries go. Bounded: when the pipeline is saturated sends wait, and the source
    /// stops pulling from its broker (that is the backpressure). Dropping it tells the pipeline
    /// that no more events come.
    pub out: Outbox,
    /// Cancelled on shutdown (SIGTERM): stop taking new events, drain, persist progress, return.
    pub shutdown: CancellationToken,
    /// Set true while the source is connected and consuming, false while it is not.
    pub ready: Readiness,
}

/// Errors a source may end with.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("I/O error on {what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Other(String),
}

/// A source of events: a Kafka consumer group, an AMQP queue, a JSON Lines file.
pub trait Source: Send {
    /// Runs until the source is exhausted or `ctx.shutdown` is cancelled. Before returning it
    /// waits, within its own bound, for lent-out deliveries to settle and persists its progress.
    fn run(self: Box<Self>, ctx: SourceContext) -> BoxFuture<'static, Result<(), SourceError>>;
}

/// A message to publish: one function output, or a dead letter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Topic, exchange or routing target inside the sink, from the route's destination config.
    /// `None` uses the sink's own default.
    pub target: Option<String>,
    pub key: Option<Bytes>,
    pub payload: Bytes,
    pub headers: Vec<Header>,
}

/// Why a sink could not confirm records.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SinkError {
    /// May succeed if tried again (broker away, queue full, timeout).
    #[error("retryable sink error: {0}")]
    Retryable(String),
    /// Will never succeed for these records (message too large, unroutable, unknown topic):
    /// the event is dead-lettered.
    #[error("permanent sink error: {0}")]
    Permanent(String),
    /// The destination itself is gone for good (standard output whose reader went away): no
    /// record can ever be written again, so the event is not acknowledged and fnmill stops.
    #[error("sink gone: {0}")]
    Gone(String),
}

impl SinkError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, SinkError::Retryable(_))
    }
}

/// The records of one [`Sink::enqueue`] call that a sink could not confirm, handed back with
/// the first error, so that the caller need not keep its own copy of everything it handed over.
#[derive(Debug, PartialEq, Eq)]
pub struct Unconfirmed {
    pub error: SinkError,
    /// What to publish again should `error` be retryable: every record of the call that was not
    /// confirmed, in the order they were handed over (per partition, channel or file, which is
    /// all the order a sink keeps), as they were handed over (a Kafka sink rebuilds them from
    /// its delivery reports: topic, key, payload and headers). Records that were confirmed are
    /// not in it, so publishing it again duplicates nothing.
    pub records: Vec<Record>,
}

impl Unconfirmed {
    pub fn new(error: SinkError, records: Vec<Record>) -> Self {
        Self { error, records }
    }
}

/// Told, exactly once, the outcome of the records handed over in one [`Sink::enqueue`] call: `Ok`
/// once every one of them is confirmed (written, delivery report received, publisher confirm
/// received), or the first failure with the records not confirmed. It runs on whatever thread
/// learned the outcome (a producer's delivery-report thread, the file writer, a channel's
/// confirm task), so it must be quick and must not block; the pipeline settles the event in it,
/// without waking any other task.
pub type Confirm = Box<dyn FnOnce(Result<(), Unconfirmed>) + Send>;

/// A destination for records: a Kafka producer, an AMQP channel, a JSON Lines file.
///
/// A sink may be called from any thread and any runtime: one whose transport lives on a
/// particular runtime (lapin's on the IO runtime) moves the work there itself.
pub trait Sink: Send + Sync {
    /// Hands `records` over for publishing and resolves once they are *ordered*: records of a
    /// later `enqueue` call with the same `lane` are published after these (per topic partition,
    /// per channel, per file), whatever happens to the confirmations. `confirm` is then called
    /// exactly once with their outcome. If this returns an error, nothing was handed over and
    /// `confirm` is dropped without being called.
    ///
    /// `lane` identifies the caller's ordering key (a hash); a sink with several independent
    /// pipes (AMQP channels) keeps one lane on one pipe. The pipeline starts a key's next event
    /// as soon as this resolves, and settles the event in `confirm`.
    ///
    /// `records` are lent, not given: a sink that copies them into its client's buffer anyway (a
    /// Kafka producer) does not have to clone them first, and the caller drops them as soon as
    /// this resolves, on its own thread. A sink that queues them for a task of its own clones
    /// them. Should the outcome be a failure, `confirm` hands back the records that were not
    /// confirmed ([`Unconfirmed`]): the caller publishes those again, and keeps no copy meanwhile.
    fn enqueue<'a>(
        &'a self,
        records: &'a [Record],
        lane: u64,
        confirm: Confirm,
    ) -> BoxFuture<'a, Result<(), SinkError>>;

    /// Publishes `records` and resolves once every one of them is confirmed, or with the first
    /// failure: [`Sink::enqueue`] and a wait for its confirmation.
    fn publish(&self, records: Vec<Record>) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async move {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let confirm: Confirm = Box::new(move |result: Result<(), Unconfirmed>| {
                let _ = tx.send(result.map_err(|u| u.error));
            });
            self.enqueue(&records, 0, confirm).await?;
            rx.await.unwrap_or_else(|_| {
                Err(SinkError::Retryable(
                    "the sink dropped the confirmation".into(),
                ))
            })
        })
    }

    /// Flushes and releases resources on shutdown.
    fn close(&self) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async { Ok(()) })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// An origin value reads the same in a dead-letter header whether a source kept it as a
    /// number or as text, and a number is one either way.
    #[test]
    fn origin_values_print_as_their_text() {
        assert_eq!(OriginValue::Number(-42).to_string(), "-42");
        assert_eq!(OriginValue::from("orders").to_string(), "orders");
        assert_eq!(OriginValue::from("17").as_number(), Some(17));
        assert_eq!(OriginValue::Number(17).as_number(), Some(17));
        assert_eq!(OriginValue::from("orders").as_number(), None);
        assert_eq!(OriginValue::Number(17).as_text(), None);
    }

    fn event() -> Event {
        Event::new("1", "s", Bytes::from_static(b"{}"))
    }

    /// A sender behind a full window is let through once a chunk of it is free, not at the
    /// first freed place; the chunk's other places serve the next sends without waiting, and
    /// the window never holds more than its size.
    #[tokio::test]
    async fn a_full_window_lets_a_sender_through_a_chunk_at_a_time() {
        const WINDOW: usize = 64; // a chunk of 4
        let held = Arc::new(Mutex::new(Vec::new()));
        let h = held.clone();
        let outbox = Outbox::new(WINDOW, move |_, permit| {
            h.lock().unwrap().push(permit);
            Ok(())
        });
        let delivery = || Delivery::new(event(), None, |_| {});
        for _ in 0..WINDOW {
            outbox.try_send(delivery()).unwrap();
        }
        assert!(matches!(
            outbox.try_send(delivery()),
            Err(TrySendError::Full(_))
        ));
        let waiting = tokio::spawn({
            let outbox = outbox.clone();
            async move {
                outbox
                    .send(Delivery::new(event(), None, |_| {}))
                    .await
                    .is_ok()
            }
        });
        // One runtime thread: the sender runs until it waits on the full window.
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        let settle = |n: usize| {
            let mut held = held.lock().unwrap();
            let at = held.len() - n;
            held.truncate(at);
        };
        for _ in 0..3 {
            settle(1);
            tokio::task::yield_now().await;
            assert!(
                !waiting.is_finished(),
                "let through before a chunk was free"
            );
        }
        settle(1);
        assert!(
            waiting.await.unwrap(),
            "the fourth freed place lets it through"
        );
        // Three places of the chunk are kept: three sends go through at once, the next does not.
        for _ in 0..3 {
            outbox.try_send(delivery()).unwrap();
        }
        assert!(matches!(
            outbox.try_send(delivery()),
            Err(TrySendError::Full(_))
        ));
        assert_eq!(held.lock().unwrap().len(), WINDOW);
    }

    #[test]
    fn dropped_delivery_settles_as_abandoned() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        drop(Delivery::new(event(), None, move |o| {
            s.lock().unwrap().push(o)
        }));
        assert_eq!(*seen.lock().unwrap(), vec![Outcome::Abandoned]);
    }

    #[test]
    fn a_problem_is_one_line_whatever_its_key_and_message_quote() {
        let p = Problem::new(
            "sources.a\nb.path",
            "`1\r\n2` is not a duration\u{1b}[31m\t",
        );
        assert_eq!(
            p.to_string(),
            "sources.a\\nb.path: `1\\r\\n2` is not a duration\\u{1b}[31m\\t"
        );
        assert_eq!(
            Problem::new("k", "caf\u{e9} \"q\" \\").to_string(),
            "k: caf\u{e9} \"q\" \\"
        );
    }

    #[test]
    fn settled_delivery_settles_once() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        Delivery::new(event(), None, move |o| s.lock().unwrap().push(o)).settle(Outcome::Done);
        assert_eq!(*seen.lock().unwrap(), vec![Outcome::Done]);
    }
}
