//! Metric cells a connector records into and fnmill reads at scrape time: a [`Histogram`] of
//! durations with atomic buckets, a [`Gauge`], and the [`PoolStatus`] of a connection pool.
//!
//! Recording is one or two relaxed atomic additions: no lock and no allocation, so a connector
//! may record on its hot path. The cells carry no names or labels; whoever registers them (the
//! fnmill binary's telemetry) names them once, when it renders `/metrics` or exports over OTLP.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the duration buckets, in nanoseconds: 10 µs to 60 s in 1-2.5-5 steps.
/// A fresh wasm instance takes tens of microseconds, a database round trip about a millisecond,
/// a broker confirmation a few; timeouts are seconds. One set for every duration keeps the
/// histograms comparable and the rendering simple.
pub const DURATION_BOUNDS_NS: [u64; 21] = [
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
    30_000_000_000,
    60_000_000_000,
];

/// Buckets: one per bound, plus the one above the last bound.
const BUCKETS: usize = DURATION_BOUNDS_NS.len() + 1;

/// A histogram of durations: per-bucket counts (not cumulative) and the sum, each an atomic.
#[derive(Debug)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS],
    sum_ns: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_ns: AtomicU64::new(0),
        }
    }
}

/// A histogram read at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HistogramSnapshot {
    /// Count per bucket, not cumulative: `counts[i]` observations were at most
    /// `DURATION_BOUNDS_NS[i]` and above the bound before it; the last one is above every bound.
    pub counts: Vec<u64>,
    /// The sum of every observation, in nanoseconds.
    pub sum_ns: u64,
}

impl HistogramSnapshot {
    /// Observations in all.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Cumulative counts, one per bound (`le`), the last one being the total (`+Inf`).
    pub fn cumulative(&self) -> Vec<u64> {
        self.counts
            .iter()
            .scan(0u64, |total, c| {
                *total += c;
                Some(*total)
            })
            .collect()
    }
}

impl Histogram {
    /// The bucket `nanos` falls into: the first bound it does not exceed.
    fn bucket(nanos: u64) -> usize {
        DURATION_BOUNDS_NS.partition_point(|bound| *bound < nanos)
    }

    pub fn observe(&self, duration: Duration) {
        let nanos = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        self.counts[Self::bucket(nanos)].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(nanos, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            counts: self
                .counts
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect(),
            sum_ns: self.sum_ns.load(Ordering::Relaxed),
        }
    }
}

/// A value that goes up and down (messages unacknowledged), shared between the connector that
/// sets it and the reader.
#[derive(Clone, Debug, Default)]
pub struct Gauge(Arc<AtomicI64>);

impl Gauge {
    pub fn set(&self, value: i64) {
        self.0.store(value, Ordering::Relaxed);
    }

    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The state of a connection pool, read when metrics are scraped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStatus {
    /// Connections open now.
    pub open: usize,
    /// Open connections not in use.
    pub idle: usize,
    /// The pool's limit.
    pub max: usize,
    /// Callers waiting for a connection.
    pub waiting: usize,
}

/// A connection pool whose state and wait times can be observed.
pub trait ObservedPool: Send + Sync + 'static {
    /// How many connections are open, idle and awaited, now.
    fn status(&self) -> PoolStatus;
    /// How long callers waited to get a connection (including opening one).
    fn wait_time(&self) -> &Histogram;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_first_bucket_they_do_not_exceed() {
        let h = Histogram::default();
        h.observe(Duration::ZERO);
        h.observe(Duration::from_micros(10)); // exactly the first bound: `le` is inclusive
        h.observe(Duration::from_nanos(10_001));
        h.observe(Duration::from_millis(1));
        h.observe(Duration::from_secs(3600)); // above every bound
        let s = h.snapshot();
        assert_eq!(s.counts.len(), DURATION_BOUNDS_NS.len() + 1);
        assert_eq!(s.counts[0], 2);
        assert_eq!(s.counts[1], 1);
        assert_eq!(s.counts[6], 1);
        assert_eq!(s.counts[BUCKETS - 1], 1);
        assert_eq!(s.count(), 5);
        assert_eq!(s.sum_ns, 10_000 + 10_001 + 1_000_000 + 3_600_000_000_000);
        let cumulative = s.cumulative();
        assert_eq!(cumulative[0], 2);
        assert_eq!(cumulative[1], 3);
        assert_eq!(cumulative[5], 3);
        assert_eq!(cumulative[6], 4);
        assert_eq!(*cumulative.last().unwrap(), 5);
        assert!(cumulative.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn bounds_are_increasing() {
        assert!(DURATION_BOUNDS_NS.windows(2).all(|w| w[0] < w[1]));
    }
}
