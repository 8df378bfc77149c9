//! The delivery contract's bookkeeping, written once for every source.
//!
//! A source lends events out as [`Delivery`]s and learns, in whatever order the pipeline finishes
//! them, how each one settled. Two broker shapes turn those settlements into acknowledgements:
//!
//! - **In order** ([`OrderedWindow`]): Kafka offsets and file positions. Only a *contiguous*
//!   prefix of settled deliveries may be committed ("everything up to here"), so the window keeps
//!   lent deliveries in lend order and moves a watermark across the acknowledged prefix. An
//!   abandoned delivery pins the watermark before it for the rest of the window's life: it and
//!   everything after it are delivered again later.
//! - **In any order** ([`UnorderedWindow`]): AMQP delivery tags. Each settlement is acknowledged on
//!   its own; the window keeps the unsettled tags so that one `multiple` ack can cover the
//!   contiguous settled run below the oldest unsettled tag ([`AckPlan`]).
//!
//! Settlements reach the source through one channel ([`channel`]): a [`Settler`] makes deliveries
//! whose settle callback sends `(ticket, outcome)` on it, and the source drains the
//! [`Settlements`] in batches, on its own task or thread, and applies them to its window. The
//! callback runs on whatever thread finished the event and only sends a message, so it never
//! blocks and never touches the window itself. The message carries the delivery's event too, so
//! the source's thread, which allocated it, is the one that frees it. (Vector's `OrderedFinalizer` /
//! `UnorderedFinalizer` do the same job with a future per entry; one channel and a window are
//! cheaper per event.)

use std::collections::{BTreeSet, VecDeque};

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::{Delivery, Event, Outcome, Remains, Settle};

/// One settled delivery: the source's ticket for it and how it ended.
#[derive(Debug)]
pub struct Settled<T> {
    pub ticket: T,
    pub outcome: Outcome,
    /// The delivery's event, freed where the source drops this settlement: on the thread that
    /// allocated it, not on the one that happened to settle it.
    pub remains: Remains,
}

/// A settle channel: the [`Settler`] makes deliveries, the [`Settlements`] receive their outcomes.
///
/// Unbounded, because a settle callback must never wait; it is bounded in practice by what the
/// source lends out (its window, a prefetch, `max_in_flight`).
pub fn channel<T: Send + 'static>() -> (Settler<T>, Settlements<T>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (Settler { tx }, Settlements { rx })
}

/// Makes deliveries that report their outcome on the channel. Cheap to clone.
#[derive(Debug)]
pub struct Settler<T> {
    tx: mpsc::UnboundedSender<Settled<T>>,
}

impl<T> Clone for Settler<T> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
        }
    }
}

impl<T: Send + 'static> Settler<T> {
    /// Lends `event` out; its outcome arrives on the channel with `ticket`. Dropped unsettled, it
    /// arrives as [`Outcome::Abandoned`] (see [`Delivery`]).
    pub fn delivery(&self, event: Event, ordering_key: Option<Bytes>, ticket: T) -> Delivery {
        Delivery::new(
            event,
            ordering_key,
            ToChannel {
                tx: self.tx.clone(),
                ticket,
            },
        )
    }
}

/// A delivery's settle callback: sends the outcome, with the event, to the source.
struct ToChannel<T> {
    tx: mpsc::UnboundedSender<Settled<T>>,
    ticket: T,
}

impl<T: Send + 'static> Settle for ToChannel<T> {
    fn settle(self: Box<Self>, outcome: Outcome) {
        self.settle_with(outcome, Remains::default());
    }

    fn settle_with(self: Box<Self>, outcome: Outcome, remains: Remains) {
        let ToChannel { tx, ticket } = *self;
        // The receiver is gone only once the source stopped caring (its drain ended): the
        // broker redelivers whatever was not acknowledged.
        let _ = tx.send(Settled {
            ticket,
            outcome,
            remains,
        });
    }
}

/// The receiving end of a settle channel.
#[derive(Debug)]
pub struct Settlements<T> {
    rx: mpsc::UnboundedReceiver<Settled<T>>,
}

impl<T> Settlements<T> {
    /// Waits for at least one settlement and appends up to `limit` to `batch`. Returns 0 only
    /// once every [`Settler`] and every delivery it made are gone.
    pub async fn recv_many(&mut self, batch: &mut Vec<Settled<T>>, limit: usize) -> usize {
        self.rx.recv_many(batch, limit).await
    }

    /// The next settlement queued now, without waiting.
    pub fn try_recv(&mut self) -> Option<Settled<T>> {
        self.rx.try_recv().ok()
    }

    /// Appends what is queued now, up to `limit`, without waiting. Returns how many.
    pub fn try_recv_many(&mut self, batch: &mut Vec<Settled<T>>, limit: usize) -> usize {
        let mut n = 0;
        while n < limit
            && let Some(s) = self.try_recv()
        {
            batch.push(s);
            n += 1;
        }
        n
    }
}

/// Where a lent delivery stands in an [`OrderedWindow`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    Lent,
    Acknowledged,
}

/// Identifies one delivery lent from an [`OrderedWindow`]: its place in lend order.
pub type Seq = u64;

/// Deliveries lent out in order and settled in any order, turned into "commit up to here".
///
/// `P` is a position *just past* an entry — what to commit once that entry and everything before
/// it is acknowledged: the next Kafka offset to consume, a file's byte offset and line number
/// after a line. Positions must not decrease from one entry to the next.
#[derive(Debug)]
pub struct OrderedWindow<P> {
    /// Everything up to here is acknowledged: what the source may commit.
    watermark: P,
    /// The position just past the newest entry (lent or skipped), or the watermark.
    newest: P,
    /// Sequence number of `slots[0]`; the slots' numbers are contiguous from it.
    base: Seq,
    /// Sequence number of the next entry lent or skipped.
    next: Seq,
    /// Entries after the watermark, in lend order, with the position just past each.
    slots: VecDeque<(P, Slot)>,
    /// The earliest abandoned entry: the watermark never passes it.
    stuck_at: Option<Seq>,
    /// Lent and not yet settled, whether or not still in `slots`.
    outstanding: usize,
}

/// What an operation on an [`OrderedWindow`] changed, for the source's bookkeeping.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[must_use]
pub struct Change {
    /// Whether the watermark moved.
    pub advanced: bool,
    /// Entries that left the window (committed past, or dropped behind an abandoned one). A
    /// source that bounds its window with permits returns this many.
    pub released: usize,
    /// Whether this settlement was the first abandoned one, which pins the watermark.
    pub stuck: bool,
}

impl<P: Copy + Ord> OrderedWindow<P> {
    /// An empty window whose watermark is `start` (e.g. the committed position).
    pub fn new(start: P) -> Self {
        Self {
            watermark: start,
            newest: start,
            base: 0,
            next: 0,
            slots: VecDeque::new(),
            stuck_at: None,
            outstanding: 0,
        }
    }

    /// Lends the entry that ends at `end`; its settlement must come back with the returned
    /// [`Seq`]. Once the window is stuck the entry is counted but not kept: nothing after the
    /// abandoned entry can be committed anyway.
    pub fn lend(&mut self, end: P) -> Seq {
        debug_assert!(end >= self.newest, "positions must not decrease");
        let seq = self.next;
        self.next += 1;
        self.newest = end;
        self.outstanding += 1;
        if self.stuck_at.is_none() {
            self.slots.push_back((end, Slot::Lent));
        }
        seq
    }

    /// Records an entry that ends at `end` and needs no settlement (a blank line): acknowledged
    /// as soon as everything before it is.
    pub fn skip(&mut self, end: P) -> Change {
        debug_assert!(end >= self.newest, "positions must not decrease");
        self.newest = end;
        self.next += 1;
        if self.stuck_at.is_some() {
            return Change {
                released: 1,
                ..Change::default()
            };
        }
        self.slots.push_back((end, Slot::Acknowledged));
        self.advance()
    }

    /// Applies the settlement of entry `seq`. Each lent entry is settled exactly once (a
    /// [`Delivery`] guarantees it); a `seq` this window never lent is a bug and panics in debug
    /// builds, and is ignored otherwise.
    pub fn settle(&mut self, seq: Seq, outcome: Outcome) -> Change {
        debug_assert!(self.outstanding > 0, "settled more than lent");
        self.outstanding = self.outstanding.saturating_sub(1);
        if self.stuck_at.is_some_and(|stuck| seq >= stuck) {
            return Change::default();
        }
        let Some(index) = seq.checked_sub(self.base).map(|i| i as usize) else {
            debug_assert!(false, "entry {seq} settled twice");
            return Change::default();
        };
        if index >= self.slots.len() {
            debug_assert!(false, "entry {seq} was never lent");
            return Change::default();
        }
        if outcome.is_acknowledged() {
            self.slots[index].1 = Slot::Acknowledged;
            return self.advance();
        }
        // Entries before it may still move the watermark up to it; from it on, none can.
        self.stuck_at = Some(seq);
        let dropped = self.slots.len() - index;
        self.slots.truncate(index);
        Change {
            released: dropped,
            stuck: true,
            ..self.advance()
        }
    }

    fn advance(&mut self) -> Change {
        let mut released = 0;
        while let Some(&(end, Slot::Acknowledged)) = self.slots.front() {
            self.slots.pop_front();
            self.watermark = end;
            self.base += 1;
            released += 1;
        }
        Change {
            advanced: released > 0,
            released,
            stuck: false,
        }
    }

    /// What may be committed: the position after the contiguous acknowledged prefix.
    pub fn watermark(&self) -> P {
        self.watermark
    }

    /// The position just past the newest entry lent or skipped.
    pub fn newest(&self) -> P {
        self.newest
    }

    /// Deliveries lent and not yet settled. A drain waits for this to reach zero.
    pub fn outstanding(&self) -> usize {
        self.outstanding
    }

    /// Whether an abandoned entry pins the watermark.
    pub fn is_stuck(&self) -> bool {
        self.stuck_at.is_some()
    }

    /// Entries held between the watermark and the newest entry.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

/// Deliveries identified by broker tags (AMQP delivery tags: increasing per channel), lent out
/// and settled in any order, each acknowledged on its own.
#[derive(Debug, Default)]
pub struct UnorderedWindow {
    unsettled: BTreeSet<u64>,
}

/// The broker calls that acknowledge a batch of settlements, in the order to send them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AckPlan {
    /// Give back to the broker for redelivery (AMQP `basic_nack` with `requeue`).
    pub requeue: Vec<u64>,
    /// Hand to the broker's own dead-letter mechanism (AMQP `basic_reject` without requeue), for
    /// [`Outcome::Rejected`].
    pub reject: Vec<u64>,
    /// Acknowledge: `(tag, multiple)`. A `multiple` ack covers every unacknowledged tag up to
    /// `tag`, which by construction are exactly this batch's settled tags below the oldest
    /// unsettled one.
    pub ack: Vec<(u64, bool)>,
}

impl UnorderedWindow {
    pub fn new() -> Self {
        Self::default()
    }

    /// Lends the delivery with `tag`.
    pub fn lend(&mut self, tag: u64) {
        self.unsettled.insert(tag);
    }

    /// Settles a batch and returns the calls that acknowledge it. Tags this window does not
    /// hold (from an earlier connection, whose messages the broker already took back) are
    /// skipped.
    pub fn settle(&mut self, batch: impl IntoIterator<Item = (u64, Outcome)>) -> AckPlan {
        let mut plan = AckPlan::default();
        let mut acks = Vec::new();
        for (tag, outcome) in batch {
            if !self.unsettled.remove(&tag) {
                continue;
            }
            match outcome {
                Outcome::Done | Outcome::DeadLettered => acks.push(tag),
                Outcome::Abandoned => plan.requeue.push(tag),
                Outcome::Rejected => plan.reject.push(tag),
            }
        }
        // Requeues and rejects go first: a `multiple` ack must not cover them.
        plan.ack = ack_plan(acks, self.unsettled.first().copied());
        plan
    }

    /// Deliveries lent and not yet settled.
    pub fn outstanding(&self) -> usize {
        self.unsettled.len()
    }

    pub fn is_empty(&self) -> bool {
        self.unsettled.is_empty()
    }
}

/// One `multiple` ack for the settled tags below the oldest unsettled one (every other tag below
/// it was acked, requeued or rejected before, so `multiple` covers exactly these), and one plain
/// ack per tag above it.
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use proptest::prelude::*;

    use super::*;

    fn event(id: u64) -> Event {
        Event::new(id.to_string(), "s", Bytes::new())
    }

    #[test]
    fn the_watermark_moves_over_the_contiguous_acknowledged_prefix_only() {
        let mut w = OrderedWindow::new(10i64);
        let a = w.lend(11);
        let b = w.lend(12);
        let c = w.lend(14); // offsets need not be contiguous (compaction, markers)
        assert_eq!(w.settle(c, Outcome::Done), Change::default());
        assert_eq!(w.watermark(), 10);
        let change = w.settle(a, Outcome::Done);
        assert_eq!((change.advanced, change.released), (true, 1));
        assert_eq!(w.watermark(), 11);
        assert_eq!(w.settle(b, Outcome::DeadLettered).released, 2);
        assert_eq!(w.watermark(), 14);
        assert!(w.is_empty());
        assert_eq!(w.outstanding(), 0);
    }

    #[test]
    fn an_abandoned_entry_pins_the_watermark_but_not_what_precedes_it() {
        let mut w = OrderedWindow::new(0u64);
        let seqs: Vec<_> = (1..=4).map(|end| w.lend(end)).collect();
        let change = w.settle(seqs[1], Outcome::Abandoned);
        assert!(change.stuck);
        assert_eq!(change.released, 3, "entries 2..=4 dropped");
        assert_eq!(w.settle(seqs[3], Outcome::Done), Change::default());
        assert_eq!(w.settle(seqs[0], Outcome::Done).released, 1);
        assert_eq!(w.watermark(), 1);
        let later = w.lend(5);
        assert_eq!(w.settle(later, Outcome::Done), Change::default());
        assert_eq!(w.watermark(), 1);
        assert_eq!(w.outstanding(), 1, "entry 3 is still out");
    }

    #[test]
    fn skipped_entries_need_no_settlement() {
        let mut w = OrderedWindow::new(0u64);
        let a = w.lend(1);
        assert!(!w.skip(2).advanced);
        assert_eq!(w.settle(a, Outcome::Done).released, 2);
        assert_eq!(w.watermark(), 2);
        assert!(w.skip(3).advanced);
        assert_eq!(w.watermark(), 3);
    }

    #[test]
    fn contiguous_settled_tags_share_one_multiple_ack() {
        assert_eq!(ack_plan(vec![3, 1, 5, 2, 4], None), vec![(5, true)]);
        assert_eq!(
            ack_plan(vec![12, 2, 9, 5], Some(7)),
            vec![(5, true), (9, false), (12, false)]
        );
        assert_eq!(ack_plan(vec![4], Some(6)), vec![(4, false)]);
        assert_eq!(ack_plan(vec![8, 9], Some(3)), vec![(8, false), (9, false)]);
        assert!(ack_plan(vec![], Some(1)).is_empty());
    }

    #[tokio::test]
    async fn a_dropped_delivery_reaches_the_channel_as_abandoned() {
        let (settler, mut settlements) = channel::<u64>();
        settler.delivery(event(1), None, 1).settle(Outcome::Done);
        drop(settler.delivery(event(2), None, 2));
        drop(settler);
        let mut batch = Vec::new();
        while settlements.recv_many(&mut batch, 16).await > 0 {}
        let settled: Vec<_> = batch.iter().map(|s| (s.ticket, s.outcome)).collect();
        assert_eq!(settled, vec![(1, Outcome::Done), (2, Outcome::Abandoned)]);
    }

    #[tokio::test]
    async fn the_event_is_freed_where_its_settlement_is_dropped() {
        let (settler, mut settlements) = channel::<u64>();
        let settled = settler.delivery(event(1), Some(Bytes::from_static(b"k")), 1);
        let abandoned = settler.delivery(event(2), None, 2);
        let events = [
            Arc::downgrade(settled.event()),
            Arc::downgrade(abandoned.event()),
        ];
        // Settled on another thread, as a sink's delivery report does.
        std::thread::spawn(move || {
            settled.settle(Outcome::Done);
            drop(abandoned);
        })
        .join()
        .unwrap();
        assert!(
            events.iter().all(|e| e.upgrade().is_some()),
            "the settling thread freed an event"
        );
        let mut batch = Vec::new();
        settlements.try_recv_many(&mut batch, 16);
        assert_eq!(batch.len(), 2);
        drop(batch);
        assert!(events.iter().all(|e| e.upgrade().is_none()));
    }

    /// How each lent entry ends in a property test.
    #[derive(Clone, Copy, Debug)]
    enum End {
        Settle(Outcome),
        /// Dropped without being settled (a panic, a cancelled task).
        Drop,
    }

    fn end() -> impl Strategy<Value = End> {
        prop_oneof![
            6 => Just(End::Settle(Outcome::Done)),
            2 => Just(End::Settle(Outcome::DeadLettered)),
            1 => Just(End::Settle(Outcome::Abandoned)),
            1 => Just(End::Settle(Outcome::Rejected)),
            1 => Just(End::Drop),
        ]
    }

    /// Entries (gap before the entry, skipped?, how it ends) and a settle order.
    fn scenario() -> impl Strategy<Value = (Vec<(u64, bool, End)>, Vec<usize>)> {
        prop::collection::vec((0u64..3, prop::bool::weighted(0.1), end()), 0..60).prop_flat_map(
            |entries| {
                let n = entries.len();
                (
                    Just(entries),
                    Just((0..n).collect::<Vec<_>>()).prop_shuffle(),
                )
            },
        )
    }

    proptest! {
        /// Through real deliveries and the channel, in a random settle order: the watermark is
        /// the end of the longest prefix of acknowledged (or skipped) entries that stops at the
        /// first entry not acknowledged, whatever the order; nothing is outstanding at the end;
        /// every entry left the window once.
        #[test]
        fn ordered_window_commits_exactly_the_acknowledged_prefix((entries, order) in scenario()) {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let (settler, mut settlements) = channel::<Seq>();
            let mut w = OrderedWindow::new(0u64);
            let mut end = 0u64;
            let mut deliveries = BTreeMap::new();
            let mut released = 0;
            for (i, (gap, skipped, _)) in entries.iter().enumerate() {
                end += gap + 1;
                if *skipped {
                    released += w.skip(end).released;
                } else {
                    let seq = w.lend(end);
                    deliveries.insert(i, settler.delivery(event(i as u64), None, seq));
                }
            }
            drop(settler);
            for i in &order {
                if let Some(d) = deliveries.remove(i) {
                    match entries[*i].2 {
                        End::Settle(outcome) => d.settle(outcome),
                        End::Drop => drop(d),
                    }
                }
            }
            let mut batch = Vec::new();
            rt.block_on(async { while settlements.recv_many(&mut batch, 7).await > 0 {} });
            for s in batch {
                released += w.settle(s.ticket, s.outcome).released;
            }
            // The expected watermark, from the entries in lend order.
            let mut expected = 0u64;
            let mut position = 0u64;
            for (gap, skipped, how) in &entries {
                position += gap + 1;
                let acked = *skipped
                    || matches!(how, End::Settle(o) if o.is_acknowledged());
                if !acked {
                    break;
                }
                expected = position;
            }
            prop_assert_eq!(w.watermark(), expected);
            prop_assert_eq!(w.outstanding(), 0);
            prop_assert_eq!(released + w.len(), entries.len());
            prop_assert!(w.is_empty() || w.is_stuck());
        }

        /// Applying the plans to a model broker (which acks every tag up to a `multiple` ack's
        /// tag that it still holds) acknowledges exactly the acknowledged settlements, requeues
        /// exactly the abandoned ones, rejects exactly the rejected ones, each once.
        #[test]
        fn unordered_window_acknowledges_each_tag_exactly_once(
            (entries, order) in scenario(),
            batch_size in 1usize..8,
        ) {
            let mut w = UnorderedWindow::new();
            let tags: Vec<u64> = (1..=entries.len() as u64).collect();
            for t in &tags {
                w.lend(*t);
            }
            let mut broker: BTreeSet<u64> = tags.iter().copied().collect();
            let mut outcome_of = BTreeMap::new();
            let settled: Vec<(u64, Outcome)> = order
                .iter()
                .map(|&i| {
                    let outcome = match entries[i].2 {
                        End::Settle(o) => o,
                        End::Drop => Outcome::Abandoned,
                    };
                    outcome_of.insert(tags[i], outcome);
                    (tags[i], outcome)
                })
                .collect();
            let (mut acked, mut requeued, mut rejected) = (Vec::new(), Vec::new(), Vec::new());
            for chunk in settled.chunks(batch_size) {
                let plan = w.settle(chunk.iter().copied());
                for t in plan.requeue {
                    prop_assert!(broker.remove(&t));
                    requeued.push(t);
                }
                for t in plan.reject {
                    prop_assert!(broker.remove(&t));
                    rejected.push(t);
                }
                for (t, multiple) in plan.ack {
                    if multiple {
                        let covered: Vec<u64> = broker.range(..=t).copied().collect();
                        prop_assert!(!covered.is_empty());
                        for c in covered {
                            broker.remove(&c);
                            acked.push(c);
                        }
                    } else {
                        prop_assert!(broker.remove(&t));
                        acked.push(t);
                    }
                }
            }
            prop_assert!(broker.is_empty());
            prop_assert!(w.is_empty());
            for t in acked {
                prop_assert!(outcome_of[&t].is_acknowledged());
            }
            for t in requeued {
                prop_assert_eq!(outcome_of[&t], Outcome::Abandoned);
            }
            for t in rejected {
                prop_assert_eq!(outcome_of[&t], Outcome::Rejected);
            }
        }
    }
}
