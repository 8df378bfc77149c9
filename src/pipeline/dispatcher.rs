//! Shards and key-ordered lanes.
//!
//! A lane exists while its key has an event running; later events with the same key wait in the
//! lane's queue and start, in order, as the one before them lets go of the lane: it settled, or
//! it handed its outputs to its sinks (it settles later, on their confirmation, while the next
//! one already runs). Events without a key run at once. Everything accepted — running or queued
//! — holds a place in the route's window, so memory is bounded by `max_in_flight`, not by the
//! broker's backlog (the idea of Confluent's parallel consumer: concurrency per key, not per
//! partition).

use std::collections::VecDeque;
use std::collections::hash_map::Entry;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use fnmill_connector_api::{Delivery, Outbox};
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio_util::task::AbortOnDropHandle;

use super::event::Next;
use super::{Lent, Route};

/// Deliveries a shard takes from its inbox at once: enough to start a batch of events back to
/// back, few enough that lanes keep moving in between.
const INBOX_BATCH: usize = 128;

/// What a shard receives: a delivery, its place in the route's window, and the lane of its
/// ordering key (`None`: the event has no key).
type Inbound = (Delivery, OwnedSemaphorePermit, Option<u64>);

/// The hash of an ordering key: picks the shard, names the key's lane in the shard, and is the
/// lane a sink keeps in order. Computed once per event, when the outbox takes it. Two keys
/// whose hashes collide share a lane: their events run one after another in delivery order,
/// which is more order than asked for, never less. Fixed seed: only this process compares them.
pub(super) fn lane_of(key: &[u8]) -> u64 {
    foldhash::fast::FixedState::with_seed(0x6e6d_696c_6c5f_6c6e).hash_one(key)
}

impl Route {
    /// Starts the route's shards on the compute runtime. Returns the outbox its source feeds and
    /// a future that ends once the source dropped the outbox and every accepted event let go of
    /// its lane (confirmations may still be on their way; they settle the events by themselves).
    pub fn start(self: Arc<Self>) -> (Outbox, impl Future<Output = ()> + Send + 'static) {
        let n = self.shards.max(1);
        let mut senders = Vec::with_capacity(n);
        let mut shards = Vec::with_capacity(n);
        for _ in 0..n {
            let (tx, rx) = mpsc::unbounded_channel::<Inbound>();
            senders.push(tx);
            // Aborted with the route's task (a shutdown whose grace ran out).
            shards.push(AbortOnDropHandle::new(
                self.compute.spawn(self.clone().shard(rx)),
            ));
        }
        let next = AtomicUsize::new(0);
        let outbox = Outbox::new(self.max_in_flight, move |delivery, permit| {
            let lane = delivery.ordering_key().map(|key| lane_of(key));
            let shard = match lane {
                Some(lane) => (lane % n as u64) as usize,
                // Unordered events spread over the shards.
                None => next.fetch_add(1, Ordering::Relaxed) % n,
            };
            senders[shard]
                .send((delivery, permit, lane))
                .map_err(|e| e.0.0)
        });
        let done = async move {
            for shard in shards {
                let _ = shard.await;
            }
        };
        (outbox, done)
    }

    /// One shard: its lanes and running events, until its inbox closed and every event let go
    /// of its lane.
    async fn shard(self: Arc<Self>, mut inbox: mpsc::UnboundedReceiver<Inbound>) {
        // Queued events per busy lane (the hash of a key). A lane is present exactly while one
        // of its events runs.
        let mut lanes: foldhash::HashMap<u64, VecDeque<Lent>> = Default::default();
        // Each running event resolves to its lane, so the lane can move on.
        let mut running: FuturesUnordered<BoxFuture<'static, (Option<u64>, Next)>> =
            FuturesUnordered::new();
        let mut batch = Vec::with_capacity(INBOX_BATCH);
        let mut open = true;
        loop {
            tokio::select! {
                // Let lanes move before taking more: keeps memory bounded and order cheap.
                biased;
                Some((keyed, next)) = running.next(), if !running.is_empty() => {
                    let Some(key) = keyed else { continue };
                    let Entry::Occupied(mut lane) = lanes.entry(key) else { continue };
                    match next {
                        Next::Continue => match lane.get_mut().pop_front() {
                            Some(lent) => running.push(self.clone().run(lent, keyed)),
                            None => {
                                lane.remove();
                            }
                        },
                        Next::AbandonLane => {
                            let queued = lane.remove();
                            if !queued.is_empty() {
                                tracing::debug!(
                                    route = %self.name,
                                    abandoned = queued.len(),
                                    "Abandoning the events queued behind an abandoned one"
                                );
                            }
                            // Dropped: each settles as abandoned, to be delivered again.
                            drop(queued);
                        }
                    }
                }
                n = inbox.recv_many(&mut batch, INBOX_BATCH), if open => {
                    if n == 0 {
                        open = false;
                        continue;
                    }
                    for (delivery, permit, keyed) in batch.drain(..) {
                        let lent =
                            Lent::new(delivery, permit, self.stats.clone(), &self.telemetry);
                        match keyed {
                            None => running.push(self.clone().run(lent, None)),
                            Some(key) => match lanes.entry(key) {
                                Entry::Occupied(mut lane) => lane.get_mut().push_back(lent),
                                Entry::Vacant(lane) => {
                                    lane.insert(VecDeque::new());
                                    running.push(self.clone().run(lent, keyed));
                                }
                            },
                        }
                    }
                }
                else => break,
            }
        }
        debug_assert!(lanes.is_empty());
    }

    /// One event, resolving to its lane (`keyed`, `None` for an event without a key) once the
    /// key's next event may start. Not an `async` block around [`Route::process`], which would
    /// hold (and copy) its future once more.
    fn run(
        self: Arc<Self>,
        lent: Lent,
        keyed: Option<u64>,
    ) -> BoxFuture<'static, (Option<u64>, Next)> {
        // Keyless events have no order to keep: spread them over the sinks' pipes.
        let lane = keyed.unwrap_or_else(|| lane_of(lent.event().id.as_bytes()));
        // Tracing on: log lines of the event carry its trace and span ids.
        let cx = lent.obs.context().cloned();
        let process = self.process(lent, lane).map(move |next| (keyed, next));
        match cx {
            Some(cx) => {
                use opentelemetry::context::FutureExt as _;
                Box::pin(process.with_context(cx))
            }
            None => Box::pin(process),
        }
    }
}
