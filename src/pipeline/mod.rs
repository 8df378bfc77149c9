//! The pipeline of one route: source deliveries → key-ordered lanes → function → sinks →
//! settlement.
//!
//! # Where the work runs
//!
//! A route runs as a few *shards* on the compute runtime, one per compute thread. The source
//! hands each delivery to the shard its ordering key hashes to ([`Route::start`] gives it the
//! [`Outbox`] that does this), so all events of one key meet in one shard, in order, and no
//! other task or thread is woken to pass an event along. A shard keeps the lanes of its keys and
//! runs their events back to back in one task: the function call itself (a fresh instance per
//! event), and the hand-over of the outputs to the sinks. Only what needs the IO runtime goes
//! there: a data-source call a function makes, a sink whose transport lives there (AMQP), and
//! the rare recovery of a failed confirmation.
//!
//! Backpressure: the route's window is `max_in_flight` events accepted but not settled. When it
//! is full the outbox refuses more, and the source stops pulling from its broker.
//!
//! # Order and settlement
//!
//! Events with the same key run one after another, in delivery order; events with different keys
//! (or none) run concurrently. A key's next event starts as soon as this one's outputs — or its
//! dead letter — are *handed* to their sinks in order ([`Sink::enqueue`]); the event settles
//! later, when the sinks confirm them, in the sink's own callback (a producer's delivery-report
//! thread, the file writer), which wakes nobody. A failed confirmation is published again (with
//! backoff, if retryable) or dead-letters the event; records published again may land after a
//! later event's records of the same key — that takes a delivery failing past the sink's own
//! retries, and is the price of not waiting for every confirmation in line.
//!
//! A retryable failure is retried in place — its lane waits, so order holds — with exponential
//! backoff and jitter. A failure that is final goes where the route's [`DeadLetter`] says: a
//! dead-letter destination (the original event with headers saying why), the source's own
//! dead-letter mechanism, or nowhere — then the event holds its lane until shutdown, is not
//! acknowledged, and the events queued behind it are abandoned with it, so no later event of the
//! key is published before it.

mod dead_letter;
mod dispatcher;
mod event;
mod retry;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use fnmill_connector_api::{Delivery, Event, Outcome, Sink};
use tokio::runtime::Handle;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;

use crate::host::Function;
pub use dead_letter::{HEADER_PREFIX, dead_letter_record};
pub use retry::Backoff;

/// A resolved destination: a sink and an optional target inside it. Cheap to clone (the
/// pipeline does, per output).
#[derive(Clone)]
pub struct Destination {
    pub sink_name: Arc<str>,
    pub sink: Arc<dyn Sink>,
    pub target: Option<Arc<str>>,
}

/// Where an event that failed for good goes.
#[derive(Clone)]
pub enum DeadLetter {
    /// To this destination, with `fnmill.error.*` headers; settled once confirmed there.
    Destination(Destination),
    /// Back to the source, which hands it to its own dead-letter mechanism (RabbitMQ's
    /// dead-letter exchange, for an AMQP source with `dead_letter = "broker"`): settled as
    /// [`Outcome::Rejected`].
    Source,
    /// Nowhere: the event holds its lane until shutdown and is not acknowledged, so it is
    /// delivered again after a restart; the events queued behind it are abandoned with it.
    Hold,
}

/// Counters of one route, for logs, tests and `/metrics`.
#[derive(Debug, Default)]
pub struct RouteStats {
    /// Events the route accepted from its source.
    pub received: AtomicU64,
    /// Events whose outputs were all confirmed.
    pub done: AtomicU64,
    /// Events confirmed on the dead-letter destination, or handed to the source's own.
    pub dead_lettered: AtomicU64,
    /// Retries of retryable failures.
    pub retries: AtomicU64,
    /// Publishes of an event's outputs tried again after a sink failed retryably (a refused
    /// hand-over, a missing confirm).
    pub sink_retries: AtomicU64,
    /// Events settled as not done, to be delivered again: shutdown, a held lane, a drop.
    pub abandoned: AtomicU64,
    /// Histograms and per-kind counters, when metrics are on (see [`crate::telemetry`]).
    pub metrics: Option<crate::telemetry::RouteMetrics>,
}

impl RouteStats {
    /// Events accepted and not settled yet.
    pub fn in_flight(&self) -> u64 {
        let settled = self.done.load(Ordering::Relaxed)
            + self.dead_lettered.load(Ordering::Relaxed)
            + self.abandoned.load(Ordering::Relaxed);
        self.received
            .load(Ordering::Relaxed)
            .saturating_sub(settled)
    }
}

/// Everything one route needs to process events.
pub struct Route {
    pub name: String,
    pub function: Arc<Function>,
    pub destinations: BTreeMap<String, Destination>,
    pub dead_letter: DeadLetter,
    pub backoff: Backoff,
    pub max_attempts: u32,
    /// Events accepted but not settled at most: the window the outbox enforces.
    pub max_in_flight: usize,
    /// Shards the route runs as (one per compute thread).
    pub shards: usize,
    /// Where the shards, and so the function calls, run.
    pub compute: Handle,
    /// Where recoveries of failed confirmations run.
    pub io: Handle,
    /// Cancelled on shutdown: backoff waits and held lanes give up, settling as abandoned.
    pub shutdown: CancellationToken,
    pub stats: Arc<RouteStats>,
    /// Spans and trace-header propagation (off by default).
    pub telemetry: crate::telemetry::RouteTelemetry,
    /// Set when the route cannot go on (a sink is gone for good); the process stops with it.
    pub fatal: OnceLock<String>,
    /// Throttles the warnings that repeat for every event in flight (a sink outage) or every
    /// bad event (a flood of dead letters).
    pub repeated_logs: RepeatedLogs,
}

/// The warnings that repeat once per event: in a sink outage per event in flight and retry, in
/// a flood of bad input per dead letter. Each is let through once a second (with how many were
/// withheld); the rest go out at `debug`, with their event ids.
#[derive(Debug, Default)]
pub struct RepeatedLogs {
    /// `Sink failed; retrying`.
    pub sink_retry: fnmill_connector_api::throttle::Throttle,
    /// `Outputs not confirmed; publishing them again`.
    pub unconfirmed: fnmill_connector_api::throttle::Throttle,
    /// `Event failed; sending it to the dead-letter destination` and its `broker` twin.
    pub dead_letter: fnmill_connector_api::throttle::Throttle,
}

impl Route {
    /// Stops the process because of `error`: records it (the first one wins) and starts the
    /// shutdown.
    fn stop(&self, error: String) {
        tracing::error!(route = %self.name, error = %error, "Stopping");
        let _ = self.fatal.set(error);
        self.shutdown.cancel();
    }
}

/// A delivery inside the route: holds its place in the route's window until it settles, and
/// counts how it settled. Dropped unsettled, it settles as abandoned (and is counted so).
pub(crate) struct Lent {
    delivery: Option<Delivery>,
    _permit: OwnedSemaphorePermit,
    stats: Arc<RouteStats>,
    /// The event's metrics and span until it settles.
    obs: crate::telemetry::EventObs,
}

impl Lent {
    fn new(
        delivery: Delivery,
        permit: OwnedSemaphorePermit,
        stats: Arc<RouteStats>,
        telemetry: &crate::telemetry::RouteTelemetry,
    ) -> Self {
        stats.received.fetch_add(1, Ordering::Relaxed);
        let obs = telemetry.start_event(&stats, delivery.event());
        Self {
            delivery: Some(delivery),
            _permit: permit,
            stats,
            obs,
        }
    }

    fn event(&self) -> &Arc<Event> {
        self.delivery.as_ref().expect("unsettled").event()
    }

    fn settle(mut self, outcome: Outcome) {
        let counter = match outcome {
            Outcome::Done => &self.stats.done,
            Outcome::DeadLettered | Outcome::Rejected => &self.stats.dead_lettered,
            Outcome::Abandoned => &self.stats.abandoned,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.obs.settled(&self.stats, outcome);
        if let Some(delivery) = self.delivery.take() {
            delivery.settle(outcome);
        }
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        if self.delivery.is_some() {
            self.stats.abandoned.fetch_add(1, Ordering::Relaxed);
            self.obs.settled(&self.stats, Outcome::Abandoned);
            // The delivery's own drop settles it as abandoned.
        }
    }
}
