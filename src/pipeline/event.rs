//! One event through the route: the function (retried in place while it fails retryably), its
//! outputs handed to their sinks or its dead letter to the dead-letter destination, and the
//! settlement when the sinks confirm.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::time::Instant;

use fnmill_connector_api::{Confirm, Event, Outcome, Record, Sink, SinkError, Unconfirmed};
use futures::FutureExt;
use futures::future::BoxFuture;
use opentelemetry::context::FutureExt as _;

use super::{DeadLetter, Destination, Lent, Route, dead_letter_record};
use crate::host::{CallStats, CallerScope, Failure, Output};
use crate::telemetry::EventObs;
use fnmill_connector_api::warn_throttled;

/// What the shard does with the event's lane once [`Route::process`] returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Next {
    /// Start the key's next event.
    Continue,
    /// The event was abandoned: abandon the key's queued events too, so none of them is
    /// published before it.
    AbandonLane,
}

/// Records for one sink.
type Batch = (Destination, Vec<Record>);

/// Why a hand-over did not happen.
enum NotHandedOver {
    /// Nothing was handed over and it never will be: the event fails with this. Boxed: the
    /// rare case should not make every hand-over's result larger.
    Failed(Box<Lent>, Failure),
    /// Shutdown came while waiting for a sink: the event was abandoned.
    Abandoned,
}

impl Route {
    /// Handles one event until its key's next event may start.
    pub(super) async fn process(self: Arc<Self>, mut lent: Lent, lane: u64) -> Next {
        let event = lent.event().clone();
        if let Some(error) = &event.decode_error {
            // Boxed, here and below: the rare path should not make every event's future larger
            // (each level of a nested future is moved when it is created).
            return Box::pin(self.fail(lent, Failure::Decode(error.clone()), 0, lane)).await;
        }
        let mut attempt = 1;
        loop {
            let failure = match self.call(&event, attempt, &lent.obs).await {
                Ok(outputs) => match self.records(outputs) {
                    Ok(batches) => match self
                        .hand_over(lent, batches, attempt, lane, Outcome::Done)
                        .await
                    {
                        Ok(()) => return Next::Continue,
                        Err(NotHandedOver::Abandoned) => return Next::AbandonLane,
                        Err(NotHandedOver::Failed(back, failure)) => {
                            lent = *back;
                            failure
                        }
                    },
                    Err(failure) => failure,
                },
                Err(failure) => failure,
            };
            if let Failure::Host(message) = &failure {
                tracing::error!(
                    route = %self.name,
                    event = %event.id,
                    attempt,
                    error = %message,
                    "Host fault while running the function (not the function's doing)"
                );
            }
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
                    lent.settle(Outcome::Abandoned);
                    return Next::AbandonLane;
                }
                attempt += 1;
                continue;
            }
            return Box::pin(self.fail(lent, failure, attempt, lane)).await;
        }
    }

    /// Runs the function. A panic in fnmill's own host code is caught here: it is a host fault,
    /// not the guest's, so the event is retried rather than dead-lettered.
    async fn call(
        &self,
        event: &Event,
        attempt: u32,
        obs: &EventObs,
    ) -> Result<Vec<Output>, Failure> {
        // telemetry: the call's span (tracing on) and its metrics.
        let started = self.stats.metrics.is_some().then(Instant::now);
        let scope = self.telemetry.start_call(obs, attempt);
        // The route and the event's trace context, which a remote data-source tier is told for
        // the function's calls (with tracing on, each call's own span replaces the latter).
        let caller = CallerScope {
            route: self.name.as_str().into(),
            traceparent: event
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("traceparent"))
                .and_then(|h| std::str::from_utf8(&h.value).ok())
                .map(Arc::from),
        };
        // Boxed once here: the call's future is the largest part of an event's, and unboxed it
        // is moved (copied) with every future that holds it, up to the shard's.
        let invoke = Box::pin(
            AssertUnwindSafe(caller.run(self.function.invoke_observed(
                event,
                attempt,
                scope.clone(),
            )))
            .catch_unwind(),
        );
        let called = match &scope {
            Some(scope) => invoke.with_context(scope.cx.clone()).await,
            None => invoke.await,
        };
        let (result, stats) = match called {
            Ok(called) => called,
            Err(panic) => (
                Err(Failure::Host(format!(
                    "the host panicked: {}",
                    panic_message(&panic)
                ))),
                CallStats::default(),
            ),
        };
        self.telemetry.end_call(
            &self.stats,
            scope,
            started.map(|s| s.elapsed()),
            &result,
            &stats,
        );
        result
    }

    /// Groups outputs by sink, in order. An output to a destination the route does not map is
    /// the function's bug, so the event fails as fatal (before anything is published).
    fn records(&self, outputs: Vec<Output>) -> Result<Vec<Batch>, Failure> {
        let mut batches: Vec<Batch> = Vec::new();
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
            if let Some(m) = &self.stats.metrics {
                m.output(&output.destination, crate::telemetry::output_size(&output));
            }
            let record = Record {
                target: dest.target.as_deref().map(str::to_owned),
                key: output.key,
                payload: output.payload,
                headers: output.headers,
            };
            match batches
                .iter_mut()
                .find(|(d, _)| Arc::ptr_eq(&d.sink, &dest.sink) && d.target == dest.target)
            {
                Some((_, records)) => records.push(record),
                None => batches.push((dest.clone(), vec![record])),
            }
        }
        Ok(batches)
    }

    /// Hands every batch to its sink, in order, and returns once they are all handed over; the
    /// event settles as `outcome` once they are all confirmed. The records are dropped here, on
    /// this thread, once handed over: a sink hands back what it could not confirm, so nothing
    /// keeps a copy for the confirmation's thread to free. A sink that refuses a hand-over
    /// retryably is tried again with backoff until shutdown. If the first hand-over fails for
    /// good, nothing went out and the event comes back with the failure; if a later one does,
    /// the event is dead-lettered once the earlier ones are confirmed.
    async fn hand_over(
        self: &Arc<Self>,
        lent: Lent,
        mut batches: Vec<Batch>,
        attempt: u32,
        lane: u64,
        outcome: Outcome,
    ) -> Result<(), NotHandedOver> {
        if batches.is_empty() {
            lent.settle(outcome);
            return Ok(());
        }
        // telemetry: producer spans and trace headers.
        let mut spans = self.telemetry.hand_over(
            lent.event(),
            &lent.obs,
            &mut batches,
            outcome != Outcome::Done,
        );
        let pending = Pending::new(self.clone(), lent, batches.len(), attempt, outcome);
        for (i, (dest, records)) in batches.iter().enumerate() {
            let mut tries = 1;
            loop {
                let span = spans.as_mut().and_then(|s| s[i].take());
                let confirm = pending.confirm(dest, span);
                match dest.sink.enqueue(records, lane, confirm).await {
                    Ok(()) => break,
                    Err(e) if e.is_retryable() => {
                        if !self.sink_backoff(dest, &e, tries).await {
                            pending.give_up(None, self.shutdown_failure());
                            return Err(NotHandedOver::Abandoned);
                        }
                        tries += 1;
                    }
                    Err(e) => {
                        let failure = sink_failure(&e, outcome);
                        if i == 0 {
                            return match pending.take_back() {
                                Some(lent) => Err(NotHandedOver::Failed(Box::new(lent), failure)),
                                None => Err(NotHandedOver::Abandoned),
                            };
                        }
                        pending.give_up(Some(e), failure);
                        return Ok(());
                    }
                }
            }
        }
        pending.handed_over();
        Ok(())
    }

    fn shutdown_failure(&self) -> Failure {
        Failure::Host("shutting down".into())
    }

    /// Sends a failed event where the route's [`DeadLetter`] says.
    async fn fail(
        self: Arc<Self>,
        mut lent: Lent,
        failure: Failure,
        attempts: u32,
        lane: u64,
    ) -> Next {
        lent.obs.failed(failure.kind());
        let event = lent.event().clone();
        match &self.dead_letter {
            DeadLetter::Destination(dest) => {
                warn_throttled!(
                    self.repeated_logs.dead_letter,
                    route = %self.name,
                    event = %event.id,
                    kind = failure.kind(),
                    error = %failure,
                    attempts,
                    sink = %dest.sink_name,
                    "Event failed; sending it to the dead-letter destination"
                );
                let record = dead_letter_record(
                    &event,
                    dest.target.as_deref().map(str::to_owned),
                    &failure,
                    self.function.name(),
                    &self.name,
                    attempts,
                );
                let batch = vec![(dest.clone(), vec![record])];
                match self
                    .hand_over(lent, batch, attempts, lane, Outcome::DeadLettered)
                    .await
                {
                    Ok(()) => Next::Continue,
                    Err(NotHandedOver::Abandoned) => Next::AbandonLane,
                    Err(NotHandedOver::Failed(lent, dl_failure)) => {
                        tracing::error!(
                            route = %self.name,
                            event = %event.id,
                            error = %dl_failure,
                            "Dead-lettering failed; the event is not acknowledged and its lane \
                             stops until shutdown"
                        );
                        self.shutdown.cancelled().await;
                        lent.settle(Outcome::Abandoned);
                        Next::AbandonLane
                    }
                }
            }
            DeadLetter::Source => {
                warn_throttled!(
                    self.repeated_logs.dead_letter,
                    route = %self.name,
                    event = %event.id,
                    kind = failure.kind(),
                    error = %failure,
                    attempts,
                    "Event failed; its source dead-letters it (broker dead-letter exchange)"
                );
                lent.settle(Outcome::Rejected);
                Next::Continue
            }
            DeadLetter::Hold => {
                tracing::error!(
                    route = %self.name,
                    event = %event.id,
                    kind = failure.kind(),
                    error = %failure,
                    attempts,
                    "Event failed and the route has no dead_letter: its lane stops until shutdown"
                );
                self.shutdown.cancelled().await;
                lent.settle(Outcome::Abandoned);
                Next::AbandonLane
            }
        }
    }

    /// Logs a retryable sink error and waits before the next try; false on shutdown.
    async fn sink_backoff(&self, dest: &Destination, error: &SinkError, attempt: u32) -> bool {
        let wait = self.backoff.delay(attempt);
        self.stats.sink_retries.fetch_add(1, Ordering::Relaxed);
        warn_throttled!(
            self.repeated_logs.sink_retry,
            route = %self.name,
            sink = %dest.sink_name,
            error = %error,
            wait_ms = wait.as_millis() as u64,
            "Sink failed; retrying"
        );
        self.sleep(wait).await
    }

    /// Waits `wait`, or returns false at once on shutdown. Boxed: waiting is the rare path
    /// (a retry), and inline its timer and shutdown futures made every event's future larger,
    /// which is copied as each level of it is created (an event's 1,384 bytes → 1,168, a
    /// hand-over's 848 → 632).
    fn sleep(&self, wait: Duration) -> BoxFuture<'_, bool> {
        Box::pin(async move {
            tokio::select! {
                _ = tokio::time::sleep(wait) => true,
                _ = self.shutdown.cancelled() => false,
            }
        })
    }

    /// Publishes `records` again until confirmed, a permanent error, or shutdown. Each try
    /// publishes only what the previous one left unconfirmed.
    async fn publish_again(
        &self,
        dest: &Destination,
        mut records: Vec<Record>,
    ) -> Result<(), SinkError> {
        let mut attempt = 1;
        loop {
            match publish_unconfirmed(&*dest.sink, records).await {
                Ok(()) => return Ok(()),
                Err(u) if u.error.is_retryable() => {
                    if !self.sink_backoff(dest, &u.error, attempt).await {
                        return Err(SinkError::Retryable("shutting down".into()));
                    }
                    records = u.records;
                    attempt += 1;
                }
                Err(u) => return Err(u.error),
            }
        }
    }

    /// Finishes an event whose confirmations did not all succeed: publishes again what failed
    /// retryably, then settles it — or dead-letters it if a sink refused its outputs for good.
    /// Runs on the IO runtime, off the hot path.
    async fn recover(
        self: Arc<Self>,
        lent: Lent,
        failed: Vec<Failed>,
        attempt: u32,
        outcome: Outcome,
    ) {
        let event = lent.event().clone();
        let mut permanent = None;
        for Failed {
            dest,
            records,
            error,
        } in failed
        {
            let result = match error {
                e if e.is_retryable() => {
                    self.stats.sink_retries.fetch_add(1, Ordering::Relaxed);
                    warn_throttled!(
                        self.repeated_logs.unconfirmed,
                        route = %self.name,
                        sink = %dest.sink_name,
                        event = %event.id,
                        error = %e,
                        "Outputs not confirmed; publishing them again"
                    );
                    self.publish_again(&dest, records).await
                }
                e => Err(e),
            };
            match result {
                Ok(()) => {}
                Err(SinkError::Gone(message)) => {
                    self.stop(format!("sink `{}` is gone: {message}", dest.sink_name));
                    lent.settle(Outcome::Abandoned);
                    return;
                }
                Err(_) if self.shutdown.is_cancelled() => {
                    lent.settle(Outcome::Abandoned);
                    return;
                }
                Err(e) => {
                    permanent.get_or_insert(e);
                }
            }
        }
        match (permanent, outcome) {
            (None, outcome) => lent.settle(outcome),
            (Some(e), Outcome::Done) => {
                // The lane moved on long ago: dead-letter it now, wherever the route says.
                let failure = sink_failure(&e, outcome);
                let lane = super::dispatcher::lane_of(event.id.as_bytes());
                let _ = self.clone().fail(lent, failure, attempt, lane).await;
            }
            (Some(e), _) => {
                tracing::error!(
                    route = %self.name,
                    event = %event.id,
                    error = %e,
                    "Dead-lettering failed; the event is not acknowledged"
                );
                lent.settle(Outcome::Abandoned);
            }
        }
    }
}

/// Publishes `records` and waits for their confirmation; on failure, the error and the records
/// that were not confirmed (all of them if none was handed over).
async fn publish_unconfirmed(sink: &dyn Sink, records: Vec<Record>) -> Result<(), Unconfirmed> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let confirm: Confirm = Box::new(move |result| {
        let _ = tx.send(result);
    });
    if let Err(error) = sink.enqueue(&records, 0, confirm).await {
        return Err(Unconfirmed::new(error, records));
    }
    rx.await.unwrap_or_else(|_| {
        Err(Unconfirmed::new(
            SinkError::Retryable("the sink dropped the confirmation".into()),
            records,
        ))
    })
}

/// How a sink's refusal fails the event: `fatal` for outputs; a refused dead letter keeps its
/// message.
fn sink_failure(e: &SinkError, outcome: Outcome) -> Failure {
    match outcome {
        Outcome::Done => Failure::Fatal(format!("publishing outputs failed: {e}")),
        _ => Failure::Fatal(format!("dead-lettering failed: {e}")),
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_string()
    }
}

/// A batch whose confirmation failed, with what its sink handed back to publish again.
struct Failed {
    dest: Destination,
    records: Vec<Record>,
    error: SinkError,
}

/// An event whose records were handed to sinks, waiting for their confirmations. The last
/// confirmation settles it, on whatever thread delivered it; only a failure goes to the IO
/// runtime to be recovered, with the records its sink handed back. It keeps no records itself.
struct Pending {
    route: Arc<Route>,
    state: Mutex<PendingState>,
    attempt: u32,
    /// How the event settles once everything is confirmed.
    outcome: Outcome,
}

struct PendingState {
    lent: Option<Lent>,
    /// Confirmations still expected, plus one held until every batch is handed over.
    remaining: usize,
    /// The batches whose confirmation failed: their destination, the error and what was not
    /// confirmed.
    failed: Vec<(Destination, Unconfirmed)>,
    /// Set when a later batch could not be handed over: the event then fails with it.
    gave_up: Option<Failure>,
}

impl Pending {
    fn new(
        route: Arc<Route>,
        lent: Lent,
        batches: usize,
        attempt: u32,
        outcome: Outcome,
    ) -> Arc<Self> {
        Arc::new(Self {
            route,
            state: Mutex::new(PendingState {
                lent: Some(lent),
                remaining: batches + 1,
                failed: Vec::new(),
                gave_up: None,
            }),
            attempt,
            outcome,
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, PendingState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The callback for the batch handed to `dest`; it ends the batch's producer spans.
    fn confirm(
        self: &Arc<Self>,
        dest: &Destination,
        spans: Option<crate::telemetry::ProducerSpans>,
    ) -> Confirm {
        let pending = self.clone();
        let dest = dest.clone();
        Box::new(move |result| {
            if let Some(spans) = spans {
                spans.end(match &result {
                    Ok(()) => Ok(()),
                    Err(u) => Err(&u.error),
                });
            }
            if let Err(unconfirmed) = result {
                pending.state().failed.push((dest, unconfirmed));
            }
            pending.one_done();
        })
    }

    /// Every batch is handed over: the guard confirmation goes.
    fn handed_over(self: &Arc<Self>) {
        self.one_done();
    }

    /// The first batch could not be handed over: nothing is outstanding, the event comes back.
    fn take_back(self: &Arc<Self>) -> Option<Lent> {
        self.state().lent.take()
    }

    /// A later batch could not be handed over (or shutdown came): once the earlier ones are
    /// confirmed, the event fails with `failure` (abandoned on shutdown).
    fn give_up(self: &Arc<Self>, error: Option<SinkError>, failure: Failure) {
        {
            let mut state = self.state();
            state.gave_up = Some(failure);
            if error.is_none() {
                // Shutdown: nothing to publish again.
                state.failed.clear();
            }
        }
        self.one_done();
    }

    fn one_done(self: &Arc<Self>) {
        let mut state = self.state();
        state.remaining -= 1;
        if state.remaining > 0 {
            return;
        }
        let Some(lent) = state.lent.take() else {
            return;
        };
        let failed: Vec<Failed> = std::mem::take(&mut state.failed)
            .into_iter()
            .map(|(dest, Unconfirmed { error, records })| Failed {
                dest,
                records,
                error,
            })
            .collect();
        let gave_up = state.gave_up.take();
        drop(state);
        let route = &self.route;
        match gave_up {
            Some(_) if route.shutdown.is_cancelled() => lent.settle(Outcome::Abandoned),
            Some(failure) => {
                let route = route.clone();
                let attempt = self.attempt;
                route.io.clone().spawn(async move {
                    let lane = super::dispatcher::lane_of(lent.event().id.as_bytes());
                    let _ = route.fail(lent, failure, attempt, lane).await;
                });
            }
            None if failed.is_empty() => lent.settle(self.outcome),
            None => {
                if let Some(gone) = failed.iter().find_map(|f| match &f.error {
                    SinkError::Gone(m) => Some(format!("sink `{}` is gone: {m}", f.dest.sink_name)),
                    _ => None,
                }) {
                    route.stop(gone);
                    lent.settle(Outcome::Abandoned);
                    return;
                }
                let route = route.clone();
                let (attempt, outcome) = (self.attempt, self.outcome);
                route
                    .io
                    .clone()
                    .spawn(route.recover(lent, failed, attempt, outcome));
            }
        }
    }
}
