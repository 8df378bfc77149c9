//! Key-ordered lanes.
//!
//! A lane exists while its key has an event running; later events with the same key wait in the
//! lane's queue and start, in order, as the one before them finishes: settles, or hands its
//! outputs to sinks that keep the order of what they are handed (then it settles later, once
//! they are confirmed, while the next event already runs). Events without a key run at
//! once. Everything accepted — running or queued — counts against `max_in_flight`, so memory is
//! bounded by the route's window, not by the broker's backlog (the idea of Confluent's parallel
//! consumer: concurrency per key, not per partition).

use std::collections::VecDeque;
use std::collections::hash_map::Entry;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use fnmill_connector_api::Delivery;
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use tokio::sync::mpsc;

use super::{Route, Settling};

impl Route {
    /// Runs the route until the source closes its channel and every accepted event settled.
    pub async fn run(self: Arc<Self>, mut deliveries: mpsc::Receiver<Delivery>) {
        // Queued events per busy key. A key is present exactly while one of its events runs.
        let mut lanes: foldhash::HashMap<Bytes, VecDeque<Delivery>> = Default::default();
        // Each running event resolves to its ordering key, so its lane can move on, and to
        // what is left of it: waiting for its outputs' confirmations.
        let mut running: FuturesUnordered<BoxFuture<'static, (Option<Bytes>, Settling)>> =
            FuturesUnordered::new();
        // Events whose lane moved on, waiting for confirmation before they settle.
        let mut settling: FuturesUnordered<BoxFuture<'static, ()>> = FuturesUnordered::new();
        let mut in_flight = 0usize;
        let mut source_open = true;

        loop {
            tokio::select! {
                // Settle before taking more: keeps memory bounded and lanes moving.
                biased;
                Some(()) = settling.next(), if !settling.is_empty() => in_flight -= 1,
                Some((key, rest)) = running.next(), if !running.is_empty() => {
                    match rest {
                        Some(rest) => settling.push(rest),
                        None => in_flight -= 1,
                    }
                    if let Some(key) = key
                        && let Entry::Occupied(mut lane) = lanes.entry(key)
                    {
                        match lane.get_mut().pop_front() {
                            Some(next) => running.push(self.clone().start(next)),
                            None => {
                                lane.remove();
                            }
                        }
                    }
                }
                next = deliveries.recv(), if source_open && in_flight < self.max_in_flight => {
                    let Some(delivery) = next else {
                        source_open = false;
                        continue;
                    };
                    in_flight += 1;
                    self.stats.received.fetch_add(1, Ordering::Relaxed);
                    match delivery.ordering_key().cloned() {
                        None => running.push(self.clone().start(delivery)),
                        Some(key) => match lanes.entry(key) {
                            Entry::Occupied(mut lane) => lane.get_mut().push_back(delivery),
                            Entry::Vacant(lane) => {
                                lane.insert(VecDeque::new());
                                running.push(self.clone().start(delivery));
                            }
                        },
                    }
                }
                else => break,
            }
        }
        debug_assert!(lanes.is_empty() && in_flight == 0);
    }

    fn start(self: Arc<Self>, delivery: Delivery) -> BoxFuture<'static, (Option<Bytes>, Settling)> {
        Box::pin(async move {
            let key = delivery.ordering_key().cloned();
            (key, self.process(delivery).await)
        })
    }
}
