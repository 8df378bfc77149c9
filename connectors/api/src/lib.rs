//! The vocabulary every fnmill connector speaks: the [`Event`], the [`Source`] that lends events
//! out as [`Delivery`]s, the [`Sink`] that publishes [`Record`]s and confirms them.
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
//! acknowledged by accident.

pub mod secret;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use futures::future::BoxFuture;
use tokio::sync::mpsc;
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
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Unique within the source: `topic/partition/offset`, an AMQP message id, a JSON `id`.
    pub id: String,
    /// The `sources.<name>` key of the source that produced it.
    pub source: String,
    /// Message key, if any.
    pub key: Option<Bytes>,
    pub payload: Bytes,
    pub headers: Vec<Header>,
    /// Production time in milliseconds since the Unix epoch, when the source knows it.
    pub timestamp_ms: Option<i64>,
    /// Where the event came from, as `(name, value)` pairs the dead-letter headers repeat
    /// (`topic`, `partition`, `offset`; `queue`, `delivery_tag`; `file`, `line`).
    pub origin: Vec<(&'static str, String)>,
}

/// How the pipeline finished with a delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The function succeeded and every output was confirmed by its sink.
    Done,
    /// The event was confirmed on its dead-letter destination — or, for a delivery whose
    /// [source dead-letters it](Delivery::source_dead_letters), failed for good and the source
    /// is to dead-letter it now.
    DeadLettered,
    /// The event was not handled (shutdown, a stopped lane, a dropped delivery). The source must
    /// not acknowledge it, so it is delivered again (AMQP: requeue; Kafka/file: the committed
    /// position stays before it).
    Abandoned,
}

impl Outcome {
    /// Whether the source may now acknowledge the event.
    pub fn is_acknowledged(self) -> bool {
        matches!(self, Outcome::Done | Outcome::DeadLettered)
    }
}

/// The source's side of a settlement: told the outcome of one delivery, exactly once.
pub trait Settle: Send + 'static {
    fn settle(self: Box<Self>, outcome: Outcome);
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
    /// Shared, so the pipeline hands it to the compute side without copying it.
    event: Arc<Event>,
    ordering_key: Option<Bytes>,
    /// See [`Delivery::source_dead_letters`].
    source_dead_letters: bool,
    settle: Option<Box<dyn Settle>>,
}

impl Delivery {
    /// `ordering_key`: events with equal keys are handled one after another, in delivery order;
    /// `None` means the event may run concurrently with any other.
    pub fn new(event: Event, ordering_key: Option<Bytes>, settle: impl Settle) -> Self {
        Self {
            event: Arc::new(event),
            ordering_key,
            source_dead_letters: false,
            settle: Some(Box::new(settle)),
        }
    }

    /// Marks the delivery as one its source dead-letters by itself (AMQP: `reject` without
    /// requeue, to the queue's dead-letter exchange). A route without a `dead_letter`
    /// destination then settles such an event that failed for good as
    /// [`Outcome::DeadLettered`] instead of stopping its lane.
    pub fn with_source_dead_letter(mut self) -> Self {
        self.source_dead_letters = true;
        self
    }

    /// Whether the source dead-letters this delivery itself on [`Outcome::DeadLettered`].
    pub fn source_dead_letters(&self) -> bool {
        self.source_dead_letters
    }

    pub fn event(&self) -> &Arc<Event> {
        &self.event
    }

    pub fn ordering_key(&self) -> Option<&Bytes> {
        self.ordering_key.as_ref()
    }

    /// Settles the delivery with `outcome`, consuming it.
    pub fn settle(mut self, outcome: Outcome) {
        if let Some(settle) = self.settle.take() {
            settle.settle(outcome);
        }
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        if let Some(settle) = self.settle.take() {
            settle.settle(Outcome::Abandoned);
        }
    }
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("event", &self.event.id)
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

/// What a source is given to run with.
pub struct SourceContext {
    /// Where deliveries go. Bounded: when the pipeline is saturated `send` waits, and the source
    /// stops pulling from its broker (that is the backpressure). Dropping it tells the pipeline
    /// that no more events come.
    pub out: mpsc::Sender<Delivery>,
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
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// May succeed if tried again (broker away, queue full, timeout).
    #[error("retryable sink error: {0}")]
    Retryable(String),
    /// Will never succeed (message too large, unroutable, unknown topic).
    #[error("permanent sink error: {0}")]
    Permanent(String),
}

impl SinkError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, SinkError::Retryable(_))
    }
}

/// Resolves once records handed over by [`Sink::enqueue`] are confirmed, or with the first
/// failure among them.
pub type Confirmation = BoxFuture<'static, Result<(), SinkError>>;

/// A destination for records: a Kafka producer, an AMQP channel, a JSON Lines file.
pub trait Sink: Send + Sync {
    /// Publishes `records` and resolves once every one of them is confirmed (written, delivery
    /// report received, publisher confirm received), or with the first failure. Implementations
    /// batch concurrent calls into as few broker round trips as they can.
    fn publish(&self, records: Vec<Record>) -> BoxFuture<'_, Result<(), SinkError>>;

    /// Hands `records` over for publishing and resolves once they are *ordered*: records of a
    /// later `enqueue` call are published after these (per topic partition or file), whatever
    /// happens to the confirmations. The returned [`Confirmation`] resolves like [`publish`]
    /// does. The pipeline uses it to start a key's next event while this one's records are still
    /// on their way, and settles the event only on the confirmation.
    ///
    /// The default publishes and waits for the confirmation, which is correct for every sink
    /// (its order is the confirmation order) and pipelines nothing. A sink overrides it when its
    /// transport keeps the order of what was handed over (one producer queue, one writer).
    ///
    /// [`publish`]: Sink::publish
    fn enqueue<'a>(
        &'a self,
        records: &'a [Record],
    ) -> BoxFuture<'a, Result<Confirmation, SinkError>> {
        Box::pin(async move {
            self.publish(records.to_vec()).await?;
            Ok(Box::pin(std::future::ready(Ok(()))) as Confirmation)
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

    fn event() -> Event {
        Event {
            id: "1".into(),
            source: "s".into(),
            key: None,
            payload: Bytes::from_static(b"{}"),
            headers: vec![],
            timestamp_ms: None,
            origin: vec![],
        }
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
    fn settled_delivery_settles_once() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        Delivery::new(event(), None, move |o| s.lock().unwrap().push(o)).settle(Outcome::Done);
        assert_eq!(*seen.lock().unwrap(), vec![Outcome::Done]);
    }
}
