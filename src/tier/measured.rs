//! Requests, latency and errors of every data source, for `/metrics`, on both sides of the IO
//! tier: a compute process measures each call through NATS ([`Via::IoTier`]), an IO process (or
//! a process of role `all`) each call served by its pool ([`Via::Pool`]).
//!
//! The measuring is a wrapper around whatever serves the capability ([`MeasuredSql`],
//! [`MeasuredBucket`]): one histogram of call durations per outcome, whose counts are the
//! requests and the errors.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fnmill_connector_api::Readiness;
use fnmill_connector_api::capability::Caller;
use fnmill_connector_api::capability::kv::{Bucket, KvError};
use fnmill_connector_api::capability::sql::{Rows, SqlError, SqlSource, Value};
use fnmill_connector_nats::ServerStats;
use futures::future::BoxFuture;

/// Upper bounds of the duration buckets, in seconds: from a cached statement on a warm
/// connection (well under a millisecond) to a call that waited out a pool's timeout.
pub const BUCKETS: [f64; 13] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
];

/// How a call ended, as a metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// No connection or no answer: retryable.
    Unavailable,
    /// The database refused or failed the statement.
    Database,
    /// The caller's mistake (a parameter that does not fit, a value that is not a counter).
    Invalid,
    /// Refused by whatever serves it (the IO tier's grants).
    NotGranted,
}

impl Outcome {
    pub const ALL: [Outcome; 5] = [
        Outcome::Ok,
        Outcome::Unavailable,
        Outcome::Database,
        Outcome::Invalid,
        Outcome::NotGranted,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Unavailable => "unavailable",
            Outcome::Database => "database",
            Outcome::Invalid => "invalid",
            Outcome::NotGranted => "not-granted",
        }
    }

    fn of_sql<T>(result: &Result<T, SqlError>) -> Self {
        match result {
            Ok(_) => Outcome::Ok,
            Err(SqlError::Unavailable(_)) => Outcome::Unavailable,
            Err(SqlError::Database { .. }) => Outcome::Database,
            Err(SqlError::Invalid(_)) => Outcome::Invalid,
            Err(SqlError::NotGranted(_)) => Outcome::NotGranted,
        }
    }

    fn of_kv<T>(result: &Result<T, KvError>) -> Self {
        match result {
            Ok(_) => Outcome::Ok,
            Err(KvError::Unavailable(_)) => Outcome::Unavailable,
            Err(KvError::Other(_)) => Outcome::Invalid,
            Err(KvError::AccessDenied(_)) => Outcome::NotGranted,
        }
    }
}

/// A duration histogram per outcome.
#[derive(Debug, Default)]
pub struct CallStats {
    outcomes: [Histogram; 5],
}

/// Counts per bucket (the last one is +Inf), and the sum.
#[derive(Debug, Default)]
struct Histogram {
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

/// A histogram as read at one moment: cumulative counts per bucket (+Inf last), the sum.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HistogramSnapshot {
    pub cumulative: Vec<u64>,
    pub sum_seconds: f64,
}

impl HistogramSnapshot {
    /// The number of calls.
    pub fn count(&self) -> u64 {
        self.cumulative.last().copied().unwrap_or(0)
    }
}

impl CallStats {
    pub fn record(&self, elapsed: Duration, outcome: Outcome) {
        let h = &self.outcomes[outcome as usize];
        let secs = elapsed.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BUCKETS.len());
        h.buckets[i].fetch_add(1, Ordering::Relaxed);
        h.sum_micros
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
    }

    /// The histogram of `outcome` now.
    pub fn snapshot(&self, outcome: Outcome) -> HistogramSnapshot {
        let h = &self.outcomes[outcome as usize];
        let mut total = 0;
        let cumulative = h
            .buckets
            .iter()
            .map(|b| {
                total += b.load(Ordering::Relaxed);
                total
            })
            .collect();
        HistogramSnapshot {
            cumulative,
            sum_seconds: h.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
        }
    }
}

/// Where a process's calls to a data source go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// A pool of this process (role `all`, `io`, or a data source without `remote`).
    Pool,
    /// The data source's IO tier, over NATS (role `compute`).
    IoTier,
}

impl Via {
    pub fn label(self) -> &'static str {
        match self {
            Via::Pool => "pool",
            Via::IoTier => "io-tier",
        }
    }
}

/// What `/readyz` and `/metrics` report about one data source.
#[derive(Clone)]
pub struct DataSourceStatus {
    pub name: String,
    pub via: Via,
    /// Whether it can serve calls now, where that is known: a compute process's IO tier
    /// answers; an IO process is subscribed with NATS connected. A local pool connects on
    /// demand and has none.
    pub ready: Option<Readiness>,
    pub calls: Arc<CallStats>,
    /// An IO process's refusals.
    pub server: Option<Arc<ServerStats>>,
}

/// A SQL data source whose every call is measured.
pub struct MeasuredSql {
    inner: Arc<dyn SqlSource>,
    stats: Arc<CallStats>,
}

impl MeasuredSql {
    pub fn wrap(inner: Arc<dyn SqlSource>, stats: &Arc<CallStats>) -> Arc<dyn SqlSource> {
        Arc::new(Self {
            inner,
            stats: stats.clone(),
        })
    }
}

/// `call` timed from its first poll (on the IO runtime, so the hand-off from the compute side is
/// not counted) to its end.
fn timed<T: Send + 'static, E>(
    call: BoxFuture<'static, Result<T, E>>,
    stats: Arc<CallStats>,
    outcome: fn(&Result<T, E>) -> Outcome,
) -> BoxFuture<'static, Result<T, E>>
where
    E: Send + 'static,
{
    Box::pin(async move {
        let start = Instant::now();
        let result = call.await;
        stats.record(start.elapsed(), outcome(&result));
        result
    })
}

impl SqlSource for MeasuredSql {
    fn query(
        &self,
        statement: String,
        params: Vec<Value>,
    ) -> BoxFuture<'static, Result<Rows, SqlError>> {
        timed(
            self.inner.query(statement, params),
            self.stats.clone(),
            Outcome::of_sql,
        )
    }

    fn execute(
        &self,
        statement: String,
        params: Vec<Value>,
    ) -> BoxFuture<'static, Result<u64, SqlError>> {
        timed(
            self.inner.execute(statement, params),
            self.stats.clone(),
            Outcome::of_sql,
        )
    }

    fn for_caller(&self, caller: &Caller) -> Option<Arc<dyn SqlSource>> {
        let bound = self.inner.for_caller(caller)?;
        Some(MeasuredSql::wrap(bound, &self.stats))
    }
}

/// A bucket whose every call is measured.
pub struct MeasuredBucket {
    inner: Arc<dyn Bucket>,
    stats: Arc<CallStats>,
}

impl MeasuredBucket {
    pub fn wrap(inner: Arc<dyn Bucket>, stats: &Arc<CallStats>) -> Arc<dyn Bucket> {
        Arc::new(Self {
            inner,
            stats: stats.clone(),
        })
    }
}

impl Bucket for MeasuredBucket {
    fn get(&self, key: String) -> BoxFuture<'static, Result<Option<Vec<u8>>, KvError>> {
        timed(self.inner.get(key), self.stats.clone(), Outcome::of_kv)
    }

    fn set(&self, key: String, value: Vec<u8>) -> BoxFuture<'static, Result<(), KvError>> {
        timed(
            self.inner.set(key, value),
            self.stats.clone(),
            Outcome::of_kv,
        )
    }

    fn delete(&self, key: String) -> BoxFuture<'static, Result<(), KvError>> {
        timed(self.inner.delete(key), self.stats.clone(), Outcome::of_kv)
    }

    fn exists(&self, key: String) -> BoxFuture<'static, Result<bool, KvError>> {
        timed(self.inner.exists(key), self.stats.clone(), Outcome::of_kv)
    }

    fn list_keys(
        &self,
        cursor: Option<u64>,
    ) -> BoxFuture<'static, Result<(Vec<String>, Option<u64>), KvError>> {
        timed(
            self.inner.list_keys(cursor),
            self.stats.clone(),
            Outcome::of_kv,
        )
    }

    fn increment(&self, key: String, delta: i64) -> BoxFuture<'static, Result<i64, KvError>> {
        timed(
            self.inner.increment(key, delta),
            self.stats.clone(),
            Outcome::of_kv,
        )
    }

    fn for_caller(&self, caller: &Caller) -> Option<Arc<dyn Bucket>> {
        let bound = self.inner.for_caller(caller)?;
        Some(MeasuredBucket::wrap(bound, &self.stats))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_land_in_their_bucket_and_counts_are_cumulative() {
        let stats = CallStats::default();
        stats.record(Duration::from_micros(300), Outcome::Ok);
        stats.record(Duration::from_millis(3), Outcome::Ok);
        stats.record(Duration::from_secs(9), Outcome::Ok);
        stats.record(Duration::from_millis(1), Outcome::Unavailable);
        let ok = stats.snapshot(Outcome::Ok);
        assert_eq!(ok.cumulative.len(), BUCKETS.len() + 1);
        assert_eq!(ok.cumulative[0], 1); // <= 0.5 ms
        assert_eq!(ok.cumulative[3], 2); // <= 5 ms
        assert_eq!(ok.cumulative[BUCKETS.len() - 1], 2); // <= 5 s
        assert_eq!(ok.count(), 3);
        assert!((ok.sum_seconds - 9.0033).abs() < 1e-9, "{}", ok.sum_seconds);
        let unavailable = stats.snapshot(Outcome::Unavailable);
        assert_eq!(unavailable.cumulative[1], 1); // exactly 1 ms: <= 1 ms
        assert_eq!(stats.snapshot(Outcome::Database).count(), 0);
    }
}
