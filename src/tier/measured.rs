//! Requests, latency and errors of every data source, for `/metrics` and OTLP, on both sides of
//! the IO tier: a compute process measures each call through NATS ([`Via::IoTier`]), an IO
//! process (or a process of role `all`) each call served by its pool ([`Via::Pool`]).
//!
//! The measuring is a wrapper around whatever serves the capability ([`MeasuredSql`],
//! [`MeasuredBucket`]), put there only when metrics are on: one histogram of call durations per
//! outcome ([`DataSourceCalls`]), whose counts are the requests and the errors. The registry of
//! [`crate::telemetry::metrics`] names and renders them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fnmill_connector_api::Readiness;
use fnmill_connector_api::capability::Caller;
use fnmill_connector_api::capability::kv::{Bucket, KvError};
use fnmill_connector_api::capability::sql::{Rows, SqlError, SqlSource, Value};
use fnmill_connector_api::metrics::{Histogram, HistogramSnapshot};
use fnmill_connector_nats::ServerStats;
use futures::future::BoxFuture;

use crate::app::Pool;

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

/// The calls of one data source: a duration histogram per outcome.
#[derive(Debug, Default)]
pub struct DataSourceCalls {
    outcomes: [Histogram; Outcome::ALL.len()],
}

impl DataSourceCalls {
    pub fn record(&self, elapsed: Duration, outcome: Outcome) {
        self.outcomes[outcome as usize].observe(elapsed);
    }

    /// The histogram of `outcome` now.
    pub fn snapshot(&self, outcome: Outcome) -> HistogramSnapshot {
        self.outcomes[outcome as usize].snapshot()
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
    pub calls: Arc<DataSourceCalls>,
    /// An IO process's refusals.
    pub server: Option<Arc<ServerStats>>,
}

/// `pool` with every call measured into `calls`.
pub fn measured(pool: Pool, calls: &Arc<DataSourceCalls>) -> Pool {
    match pool {
        Pool::Sql(s) => Pool::Sql(MeasuredSql::wrap(s, calls)),
        Pool::Buckets(buckets) => Pool::Buckets(
            buckets
                .into_iter()
                .map(|(b, bucket)| (b, MeasuredBucket::wrap(bucket, calls)))
                .collect(),
        ),
    }
}

/// A SQL data source whose every call is measured.
pub struct MeasuredSql {
    inner: Arc<dyn SqlSource>,
    stats: Arc<DataSourceCalls>,
}

impl MeasuredSql {
    pub fn wrap(inner: Arc<dyn SqlSource>, stats: &Arc<DataSourceCalls>) -> Arc<dyn SqlSource> {
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
    stats: Arc<DataSourceCalls>,
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
    stats: Arc<DataSourceCalls>,
}

impl MeasuredBucket {
    pub fn wrap(inner: Arc<dyn Bucket>, stats: &Arc<DataSourceCalls>) -> Arc<dyn Bucket> {
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
    fn each_outcome_has_its_histogram() {
        let calls = DataSourceCalls::default();
        calls.record(Duration::from_micros(300), Outcome::Ok);
        calls.record(Duration::from_millis(3), Outcome::Ok);
        calls.record(Duration::from_millis(1), Outcome::Unavailable);
        assert_eq!(calls.snapshot(Outcome::Ok).count(), 2);
        assert_eq!(calls.snapshot(Outcome::Ok).sum_ns, 3_300_000);
        assert_eq!(calls.snapshot(Outcome::Unavailable).count(), 1);
        assert_eq!(calls.snapshot(Outcome::Database).count(), 0);
        assert!(
            Outcome::ALL
                .iter()
                .enumerate()
                .all(|(i, o)| *o as usize == i)
        );
    }
}
