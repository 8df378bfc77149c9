//! The pipeline of one route: source deliveries → key-ordered lanes → function → sinks →
//! settlement.
//!
//! The dispatcher ([`Route::run`]) runs on the IO runtime. It keeps one lane per ordering key:
//! events with the same key run one after another, in delivery order; events with different keys
//! (or none) run concurrently, up to the route's `max_in_flight`. When that many events are
//! accepted but unsettled it stops receiving, the bounded channel from the source fills, and the
//! source stops pulling: backpressure all the way to the broker.
//!
//! Each event's function call is spawned onto the compute runtime, so wasm never occupies an IO
//! thread. A retryable failure is retried in place — its lane waits, so order holds — with
//! exponential backoff and jitter. A failure that is final sends the original event to the
//! dead-letter destination with headers saying why. Only then is the delivery settled: `Done`
//! once every output was confirmed, `DeadLettered` once the dead letter was confirmed.
//!
//! A key's next event starts as soon as this one's outputs are handed to their sinks
//! ([`Sink::enqueue`]): a sink that keeps the order of what it is handed (the Kafka producer)
//! lets a lane run at compute speed while confirmations arrive behind it; the event still
//! settles only on its confirmation, and a failed confirmation is published again or
//! dead-lettered then. Other sinks confirm before `enqueue` returns, so their lanes wait. A route
//! without a dead-letter destination holds a failed event (and so its lane) until shutdown, and
//! the event is delivered again after a restart.

mod dead_letter;
mod dispatcher;
mod retry;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use fnmill_connector_api::{Confirmation, Delivery, Event, Outcome, Record, Sink, SinkError};
use futures::future::{BoxFuture, join_all};
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

use crate::host::{Failure, Function, Output};
pub use dead_letter::{HEADER_PREFIX, dead_letter_record};
pub use retry::Backoff;

/// A resolved destination: a sink and an optional target inside it.
#[derive(Clone)]
pub struct Destination {
    pub sink_name: String,
    pub sink: Arc<dyn Sink>,
    pub target: Option<String>,
}

/// Counters of one route, for logs, tests and (later) metrics.
#[derive(Debug, Default)]
pub struct RouteStats {
    pub received: AtomicU64,
    pub done: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub retries: AtomicU64,
    pub abandoned: AtomicU64,
}

/// Everything one route needs to process events.
pub struct Route {
    pub name: String,
    pub function: Arc<Function>,
    pub destinations: BTreeMap<String, Destination>,
    pub dead_letter: Option<Destination>,
    pub backoff: Backoff,
    pub max_attempts: u32,
    pub max_in_flight: usize,
    /// Where function calls run.
    pub compute: Handle,
    /// Cancelled on shutdown: backoff waits and stopped lanes give up, settling as abandoned.
    pub shutdown: CancellationToken,
    pub stats: Arc<RouteStats>,
}

/// How a delivery ended inside the route.
enum Settled {
    Done,
    DeadLettered,
    /// The event could not be handled or dead-lettered; it is settled as abandoned.
    Abandoned,
}

/// Where an event stands when its lane may move on.
enum Progress {
    Settled(Settled),
    /// The function succeeded and its outputs are handed to their sinks in order; the event
    /// settles once they are confirmed. With the attempt that produced them.
    Enqueued(Vec<Pending>, u32),
}

/// Records handed to one sink, awaiting its confirmation. The records are kept to publish them
/// again if the confirmation fails retryably.
struct Pending {
    dest: Destination,
    records: Vec<Record>,
    confirmation: Confirmation,
}

/// What a started event leaves behind once its lane may move on: the rest of its work, if any
/// (waiting for its outputs to be confirmed, then settling).
pub(crate) type Settling = Option<BoxFuture<'static, ()>>;

impl Route {
    /// Handles one delivery until its key's next event may start; the returned future, if any,
    /// finishes and settles it.
    async fn process(self: Arc<Self>, delivery: Delivery) -> Settling {
        let sdl = delivery.source_dead_letters();
        match self.handle(delivery.event(), sdl).await {
            Progress::Settled(settled) => {
                self.settle(delivery, settled);
                None
            }
            Progress::Enqueued(pending, attempt) => Some(Box::pin(async move {
                let settled = self.confirm(delivery.event(), pending, attempt, sdl).await;
                self.settle(delivery, settled);
            })),
        }
    }

    fn settle(&self, delivery: Delivery, settled: Settled) {
        let (counter, outcome) = match settled {
            Settled::Done => (&self.stats.done, Outcome::Done),
            Settled::DeadLettered => (&self.stats.dead_lettered, Outcome::DeadLettered),
            Settled::Abandoned => (&self.stats.abandoned, Outcome::Abandoned),
        };
        counter.fetch_add(1, Ordering::Relaxed);
        delivery.settle(outcome);
    }

    /// Runs the function (retrying retryable failures in place) and hands its outputs to the
    /// sinks, or dead-letters the event.
    ///
    /// `source_dead_letters`: the source dead-letters this event itself (AMQP `reject` to the
    /// queue's DLX), so a route without a dead-letter destination settles it as dead-lettered.
    async fn handle(&self, event: &Arc<Event>, source_dead_letters: bool) -> Progress {
        let mut attempt = 1;
        loop {
            let failure = match self.call(event, attempt).await {
                Ok(outputs) => match self.records(outputs) {
                    Ok(batches) => match self.enqueue(batches).await {
                        Ok(pending) => return Progress::Enqueued(pending, attempt),
                        Err(_) if self.shutdown.is_cancelled() => {
                            return Progress::Settled(Settled::Abandoned);
                        }
                        Err(e) => Failure::Fatal(format!("publishing outputs failed: {e}")),
                    },
                    Err(failure) => failure,
                },
                Err(failure) => failure,
            };
            if failure.is_retryable() && attempt < self.max_attempts {
                self.stats.retries.fetch_add(1, Ordering::Relaxed);
                let wait = self.backoff.delay(attempt);
                tracing::debug!(
                    route = %self.name,
                    event = %event.id,
                    attempt,
                    error = %failure,
                    wait_ms = wait.as_millis() as u64,
                    "Retrying event"
                );
                if !self.sleep(wait).await {
                    return Progress::Settled(Settled::Abandoned);
                }
                attempt += 1;
                continue;
            }
            return Progress::Settled(
                self.dead_letter(event, &failure, attempt, source_dead_letters)
                    .await,
            );
        }
    }

    /// Waits for the confirmations of an event's outputs. A sink whose confirmation failed
    /// retryably gets its records again (with backoff, until shutdown); a permanent failure
    /// dead-letters the event. Records published again may land after a later event's records
    /// of the same key: that takes a delivery failing past the sink's own retries (for Kafka,
    /// `message.timeout.ms`), and is the price of not waiting for every confirmation in line.
    async fn confirm(
        &self,
        event: &Event,
        pending: Vec<Pending>,
        attempt: u32,
        source_dead_letters: bool,
    ) -> Settled {
        let results = join_all(pending.into_iter().map(|p| async move {
            match p.confirmation.await {
                Ok(()) => Ok(()),
                Err(e) if e.is_retryable() => {
                    tracing::warn!(
                        route = %self.name,
                        sink = %p.dest.sink_name,
                        event = %event.id,
                        error = %e,
                        "Outputs not confirmed; publishing them again"
                    );
                    self.publish_one(p.dest, p.records).await
                }
                Err(e) => Err(e),
            }
        }))
        .await;
        match results.into_iter().find_map(Result::err) {
            None => Settled::Done,
            Some(_) if self.shutdown.is_cancelled() => Settled::Abandoned,
            Some(e) => {
                let failure = Failure::Fatal(format!("publishing outputs failed: {e}"));
                self.dead_letter(event, &failure, attempt, source_dead_letters)
                    .await
            }
        }
    }

    async fn call(&self, event: &Arc<Event>, attempt: u32) -> Result<Vec<Output>, Failure> {
        let function = self.function.clone();
        let event = event.clone();
        let task = self
            .compute
            .spawn(async move { function.invoke(&event, attempt).await });
        match task.await {
            Ok(result) => result,
            Err(e) => Err(Failure::Trap {
                code: "host".into(),
                message: format!("the compute task failed: {e}"),
            }),
        }
    }

    /// Groups outputs by sink, in order. An output to a destination the route does not map is
    /// the function's bug, so the event fails as fatal (before anything is published).
    fn records(&self, outputs: Vec<Output>) -> Result<Vec<(Destination, Vec<Record>)>, Failure> {
        let mut batches: Vec<(Destination, Vec<Record>)> = Vec::new();
        for output in outputs {
            let Some(dest) = self.destinations.get(&output.destination) else {
                return Err(Failure::Fatal(format!(
                    "output to unknown destination `{}` (the route defines: {})",
                    output.destination,
                    self.destinations
                        .keys()
                        .map(String::as_str)
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            };
            let record = Record {
                target: dest.target.clone(),
                key: output.key,
                payload: output.payload,
                headers: output.headers,
            };
            match batches
                .iter_mut()
                .find(|(d, _)| Arc::ptr_eq(&d.sink, &dest.sink))
            {
                Some((_, records)) => records.push(record),
                None => batches.push((dest.clone(), vec![record])),
            }
        }
        Ok(batches)
    }

    /// Hands every batch to its sink, in order. A retryable error is retried with backoff
    /// until it succeeds or shutdown; a permanent one fails the event.
    async fn enqueue(
        &self,
        batches: Vec<(Destination, Vec<Record>)>,
    ) -> Result<Vec<Pending>, SinkError> {
        let mut pending = Vec::with_capacity(batches.len());
        for (dest, records) in batches {
            let mut attempt = 1;
            let confirmation = loop {
                match dest.sink.enqueue(&records).await {
                    Ok(confirmation) => break confirmation,
                    Err(e) if e.is_retryable() => {
                        if !self.sink_backoff(&dest, &e, attempt).await {
                            return Err(SinkError::Retryable("shutting down".into()));
                        }
                        attempt += 1;
                    }
                    Err(e) => return Err(e),
                }
            };
            pending.push(Pending {
                dest,
                records,
                confirmation,
            });
        }
        Ok(pending)
    }

    /// Logs a retryable sink error and waits before the next try; false on shutdown.
    async fn sink_backoff(&self, dest: &Destination, error: &SinkError, attempt: u32) -> bool {
        let wait = self.backoff.delay(attempt);
        tracing::warn!(
            route = %self.name,
            sink = %dest.sink_name,
            error = %error,
            wait_ms = wait.as_millis() as u64,
            "Sink failed; retrying"
        );
        self.sleep(wait).await
    }

    async fn publish_one(&self, dest: Destination, records: Vec<Record>) -> Result<(), SinkError> {
        let mut attempt = 1;
        loop {
            match dest.sink.publish(records.clone()).await {
                Ok(()) => return Ok(()),
                Err(e) if e.is_retryable() => {
                    if !self.sink_backoff(&dest, &e, attempt).await {
                        return Err(SinkError::Retryable("shutting down".into()));
                    }
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn dead_letter(
        &self,
        event: &Event,
        failure: &Failure,
        attempts: u32,
        source_dead_letters: bool,
    ) -> Settled {
        let Some(dest) = &self.dead_letter else {
            if source_dead_letters {
                tracing::warn!(
                    route = %self.name,
                    event = %event.id,
                    kind = failure.kind(),
                    error = %failure,
                    attempts,
                    "Event failed; its source dead-letters it (broker dead-letter exchange)"
                );
                return Settled::DeadLettered;
            }
            tracing::error!(
                route = %self.name,
                event = %event.id,
                error = %failure,
                attempts,
                "Event failed and the route has no dead_letter: its lane stops until shutdown"
            );
            self.shutdown.cancelled().await;
            return Settled::Abandoned;
        };
        tracing::warn!(
            route = %self.name,
            event = %event.id,
            kind = failure.kind(),
            error = %failure,
            attempts,
            sink = %dest.sink_name,
            "Event failed; sending it to the dead-letter destination"
        );
        let record = dead_letter_record(
            event,
            dest.target.clone(),
            failure,
            self.function.name(),
            &self.name,
            attempts,
        );
        match self.publish_one(dest.clone(), vec![record]).await {
            Ok(()) => Settled::DeadLettered,
            Err(e) => {
                tracing::error!(
                    route = %self.name,
                    event = %event.id,
                    error = %e,
                    "Dead-lettering failed; the event is not acknowledged and its lane stops"
                );
                self.shutdown.cancelled().await;
                Settled::Abandoned
            }
        }
    }

    /// Waits `wait`, or returns false at once on shutdown.
    async fn sleep(&self, wait: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(wait) => true,
            _ = self.shutdown.cancelled() => false,
        }
    }
}
