//! Batching shared by both sides of the IO tier: how many calls (or answers) one NATS message
//! carries, draining what is runnable into a batch ([`more`]), and holding a batch briefly for
//! company while others are in flight ([`Hold`]).

use std::pin::Pin;
use std::time::Duration;

use tokio::sync::mpsc;

/// Most calls (or answers) in one message. Past a few dozen a larger batch saves little (the
/// per-message cost is already shared) while one lost message would fail more calls at once.
pub const MAX_BATCH_CALLS: usize = 128;

/// A held batch leaves once it has this many calls, without waiting out the linger: enough to
/// share the per-message cost, measured in the `data_sources` bench (16 calls per message
/// instead of 2–4 took the IO tier from 0.57 to 0.65 of the in-process pool).
pub const HOLD_UNTIL: usize = 32;

/// A batch (of calls or answers) stops growing past this many bytes, far below NATS's default
/// `max_payload` (1 MiB), so a batch of ordinary calls is never refused for its size; a larger
/// call (or answer) goes alone.
pub const MAX_BATCH_BYTES: usize = 64 * 1024;

/// Adds to `taken` what the tasks that can run now queue, up to `cap`: yields first, so they run.
///
/// A task woken by another on the same worker runs right after it (tokio's LIFO slot), so
/// without the yield the task draining a queue would always find one item: the call that woke
/// it. The yield waits for nothing but the tasks already runnable; with none, it is back at
/// once, and a lone call or answer goes alone.
pub(crate) async fn more<T>(
    queue: &mut mpsc::UnboundedReceiver<T>,
    taken: &mut Vec<T>,
    cap: usize,
) {
    if taken.len() >= cap {
        return;
    }
    tokio::task::yield_now().await;
    while taken.len() < cap {
        match queue.try_recv() {
            Ok(item) => taken.push(item),
            Err(_) => break,
        }
    }
}

/// Holds calls (or answers) for company: up to `linger` from the first one held, while others
/// are in flight, until [`HOLD_UNTIL`] wait. Shared by the link and the IO tier's answer writer.
pub(crate) struct Hold {
    linger: Duration,
    deadline: Pin<Box<tokio::time::Sleep>>,
    armed: bool,
}

impl Hold {
    pub(crate) fn new(linger: Duration) -> Self {
        Self {
            linger,
            deadline: Box::pin(tokio::time::sleep(Duration::ZERO)),
            armed: false,
        }
    }

    /// Whether `held` items, with others in flight or not, are kept for company (arming the
    /// deadline at the first); if not, they leave now and the deadline is off.
    pub(crate) fn keeps(&mut self, held: usize, others_in_flight: bool) -> bool {
        let keep = others_in_flight && !self.linger.is_zero() && held < HOLD_UNTIL;
        if !keep {
            self.armed = false;
        } else if !self.armed {
            self.armed = true;
            let at = tokio::time::Instant::now() + self.linger;
            self.deadline.as_mut().reset(at);
        }
        keep
    }

    pub(crate) fn is_armed(&self) -> bool {
        self.armed
    }

    pub(crate) fn disarm(&mut self) {
        self.armed = false;
    }

    /// Ready once the armed deadline passed (poll only while armed).
    pub(crate) async fn expired(&mut self) {
        self.deadline.as_mut().await
    }
}
