//! Repeated warnings, one a second: [`Throttle`] and [`warn_throttled!`](crate::warn_throttled).

use std::sync::atomic::{AtomicU64, Ordering};

#[doc(hidden)]
pub use tracing as __tracing;

/// Lets one line of a burst of like lines through per interval and counts the rest: an outage
/// that fails every event in flight (thousands, each retried with backoff) logs a line a
/// second, saying how many it withheld, instead of a line per event per retry. The withheld
/// lines go out at `debug`, with their event, for whoever turns that on.
#[derive(Debug)]
pub struct Throttle {
    interval_ms: u64,
    start: std::time::Instant,
    /// Milliseconds since `start` before which lines are withheld.
    next_ms: AtomicU64,
    withheld: AtomicU64,
}

impl Throttle {
    pub fn new(interval: std::time::Duration) -> Self {
        Self {
            interval_ms: interval.as_millis() as u64,
            start: std::time::Instant::now(),
            next_ms: AtomicU64::new(0),
            withheld: AtomicU64::new(0),
        }
    }

    /// `Some(n)`: log this line, saying `n` were withheld since the last one logged; `None`:
    /// withhold it (counted).
    pub fn admit(&self) -> Option<u64> {
        self.admit_at(self.start.elapsed().as_millis() as u64)
    }

    fn admit_at(&self, now_ms: u64) -> Option<u64> {
        let next = self.next_ms.load(Ordering::Relaxed);
        if now_ms >= next
            && self
                .next_ms
                .compare_exchange(
                    next,
                    now_ms + self.interval_ms,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            Some(self.withheld.swap(0, Ordering::Relaxed))
        } else {
            self.withheld.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

impl Default for Throttle {
    /// One line a second.
    fn default() -> Self {
        Self::new(std::time::Duration::from_secs(1))
    }
}

/// `warn!` through a [`Throttle`]: the line goes out at `warn` with a `withheld` count when the
/// throttle lets it through, at `debug` otherwise. Takes the throttle, then `warn!`'s fields and
/// message.
#[macro_export]
macro_rules! warn_throttled {
    ($throttle:expr, $($line:tt)*) => {
        match $throttle.admit() {
            Some(withheld) => $crate::throttle::__tracing::warn!(withheld, $($line)*),
            None => $crate::throttle::__tracing::debug!($($line)*),
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_throttle_lets_one_line_through_per_interval_and_counts_the_rest() {
        let t = Throttle::new(std::time::Duration::from_millis(1_000));
        assert_eq!(t.admit_at(0), Some(0), "the first line goes out");
        assert_eq!(t.admit_at(10), None);
        assert_eq!(t.admit_at(999), None);
        assert_eq!(
            t.admit_at(1_000),
            Some(2),
            "then one, with the count withheld"
        );
        assert_eq!(t.admit_at(1_500), None);
        assert_eq!(t.admit_at(5_000), Some(1));
        assert_eq!(
            t.admit_at(5_000),
            None,
            "the next interval starts at the line let through"
        );
    }
}
