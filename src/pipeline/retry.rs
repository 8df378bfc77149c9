//! Exponential backoff with jitter.

use std::time::Duration;

use crate::config::RetryConfig;

/// Delay before retry `n` (1-based): `initial × multiplier^(n-1)`, capped at `max`, then spread
/// by ±`jitter` so that many events failing together do not retry in lockstep.
#[derive(Clone, Debug, PartialEq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    pub multiplier: f64,
    pub jitter: f64,
}

impl From<&RetryConfig> for Backoff {
    fn from(c: &RetryConfig) -> Self {
        Self {
            initial: c.initial_backoff,
            max: c.max_backoff,
            multiplier: c.multiplier,
            jitter: c.jitter,
        }
    }
}

impl Backoff {
    /// Never panics: every step saturates at [`Duration::MAX`] (the config refuses backoffs
    /// anywhere near it, but a backoff is no place to crash).
    pub fn delay(&self, retry: u32) -> Duration {
        let exp = self.multiplier.powi(retry.saturating_sub(1).min(64) as i32);
        let base = (self.initial.as_secs_f64() * exp).min(self.max.as_secs_f64());
        let spread = if self.jitter > 0.0 {
            1.0 + self.jitter * (fastrand::f64() * 2.0 - 1.0)
        } else {
            1.0
        };
        Duration::try_from_secs_f64((base * spread).max(0.0)).unwrap_or(Duration::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_then_caps() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
            multiplier: 2.0,
            jitter: 0.0,
        };
        assert_eq!(b.delay(1), Duration::from_millis(100));
        assert_eq!(b.delay(2), Duration::from_millis(200));
        assert_eq!(b.delay(4), Duration::from_millis(800));
        assert_eq!(b.delay(5), Duration::from_secs(1));
        assert_eq!(b.delay(500), Duration::from_secs(1));
    }

    #[test]
    fn jitter_stays_within_bounds() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(10),
            multiplier: 2.0,
            jitter: 0.2,
        };
        for _ in 0..1000 {
            let d = b.delay(1);
            assert!(
                d >= Duration::from_millis(80) && d <= Duration::from_millis(120),
                "{d:?}"
            );
        }
    }

    #[test]
    fn the_largest_durations_do_not_panic() {
        let b = Backoff {
            initial: Duration::MAX,
            max: Duration::MAX,
            multiplier: 10.0,
            jitter: 1.0,
        };
        for retry in [1, 2, 64, u32::MAX] {
            assert!(b.delay(retry) >= Duration::from_secs(1));
        }
    }
}
