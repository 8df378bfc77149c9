//! The `sql` and `keyvalue` capabilities: grants checked in the host, work done on the IO side.
//!
//! [`DataSources`] holds what serves each capability by name — anything implementing
//! [`SqlSource`] or [`Bucket`] from `connectors/api`: an in-process pool or a remote tier; the
//! host never names a database — and a handle to the IO runtime their work runs on. A function
//! sees only the subset its config grants ([`Grants`]), resolved once at load into
//! [`FunctionData`]. A guest call naming anything else is refused right here, with an error to
//! the guest and a log line, before anything is touched.
//!
//! A granted call is spawned onto the IO runtime and its `JoinHandle` awaited: the guest's fiber
//! is suspended and the compute thread runs other instances meanwhile. How many connections
//! exist is the pools' business, independent of how many instances wait for them.
//!
//! Each call is made for a [`Caller`]: the function, the event, the route (when the pipeline runs
//! the function inside [`CallerScope::run`]) and the trace context (the call's span with tracing
//! on, else the event's `traceparent`). A pool in this process ignores it; a remote IO tier
//! names it in the request, checks the grant again and continues the trace.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use fnmill_connector_api::capability::Caller;
use fnmill_connector_api::capability::kv::{Bucket, KvError};
use fnmill_connector_api::capability::sql::{SqlError, SqlSource, Value};
use tokio::runtime::Handle;
use wasmtime::component::Resource;

use super::bindings::{keyvalue, sql};
use super::context::Ctx;
use crate::telemetry::traces::{DataSpan, sql_operation};

/// What serves every data source and bucket of the config, by name, and the IO runtime the work
/// runs on.
pub struct DataSources {
    io: Handle,
    sql: BTreeMap<String, Arc<dyn SqlSource>>,
    buckets: BTreeMap<String, Arc<dyn Bucket>>,
}

impl DataSources {
    /// No data sources yet; their work will run on `io`.
    pub fn new(io: Handle) -> Self {
        Self {
            io,
            sql: BTreeMap::new(),
            buckets: BTreeMap::new(),
        }
    }

    /// Adds a SQL data source that functions can name in `sql` calls.
    pub fn add_sql(&mut self, name: impl Into<String>, source: Arc<dyn SqlSource>) {
        self.sql.insert(name.into(), source);
    }

    /// Adds a key-value bucket that functions can open by name.
    pub fn add_bucket(&mut self, name: impl Into<String>, bucket: Arc<dyn Bucket>) {
        self.buckets.insert(name.into(), bucket);
    }

    /// What a function with `grants` may use. Fails naming the first granted name that does
    /// not exist (the config validation reports these before anything starts).
    pub(super) fn resolve(&self, grants: &Grants) -> Result<FunctionData, String> {
        let mut data = FunctionData {
            io: Some(self.io.clone()),
            ..FunctionData::default()
        };
        for name in &grants.data_sources {
            let source = self
                .sql
                .get(name)
                .ok_or_else(|| format!("granted data source `{name}` is not a SQL data source"))?;
            data.sql.insert(name.clone(), source.clone());
        }
        for name in &grants.buckets {
            let bucket = self
                .buckets
                .get(name)
                .ok_or_else(|| format!("granted bucket `{name}` does not exist"))?;
            data.buckets.insert(name.clone(), bucket.clone());
        }
        data.other_buckets = self
            .buckets
            .keys()
            .filter(|b| !grants.buckets.contains(*b))
            .cloned()
            .collect();
        Ok(data)
    }
}

/// The data sources and buckets a function may use, by name.
#[derive(Clone, Debug, Default)]
pub struct Grants {
    /// `functions.<name>.data_sources`: SQL data sources.
    pub data_sources: BTreeSet<String>,
    /// `functions.<name>.buckets`: key-value buckets.
    pub buckets: BTreeSet<String>,
}

/// What one function may reach, resolved at load.
#[derive(Default)]
pub(crate) struct FunctionData {
    /// Where granted calls run; `None` when the host has no data sources at all.
    io: Option<Handle>,
    sql: BTreeMap<String, Arc<dyn SqlSource>>,
    buckets: BTreeMap<String, Arc<dyn Bucket>>,
    /// Buckets that exist but are not granted: opening one is `access-denied` rather than
    /// `no-such-store`.
    other_buckets: BTreeSet<String>,
}

/// What the pipeline knows about a function call beyond the event: the route it runs for and
/// the event's trace context. Set around a call with [`CallerScope::run`]; the data capabilities
/// read it when they make a call for the instance (it is a task-local, so nothing between the
/// pipeline and the host call has to carry it).
#[derive(Clone, Debug)]
pub struct CallerScope {
    /// The route's name.
    pub route: Arc<str>,
    /// The event's W3C `traceparent` header, when it has one.
    pub traceparent: Option<Arc<str>>,
}

tokio::task_local! {
    static SCOPE: CallerScope;
}

impl CallerScope {
    /// Runs `call` (a function's invocation) inside this scope. A plain function, not an
    /// `async fn`: one of those would hold `call` twice (as its argument and as the future it
    /// awaits), and a function call's future is large.
    pub fn run<F: Future>(self, call: F) -> impl Future<Output = F::Output> {
        SCOPE.scope(self, call)
    }
}

/// An open bucket, as kept in the store's resource table.
pub struct KvBucket {
    bucket: Arc<dyn Bucket>,
    /// Its name, for spans.
    name: String,
}

impl Ctx {
    fn io(&self) -> Option<Handle> {
        self.function.data.io.clone()
    }

    /// Who makes this instance's calls: the function, the event, and the route of the
    /// pipeline's [`CallerScope`] when there is one. The trace context is the call's own span
    /// (`span`, with tracing on), so the IO tier's work becomes its child; else the event's.
    fn caller(&self, span: Option<&DataSpan>) -> Caller {
        let (route, event_trace) = SCOPE
            .try_with(|s| (Some(s.route.clone()), s.traceparent.clone()))
            .unwrap_or_default();
        let traceparent = match span {
            Some(span) => Some(span.traceparent().into()),
            None => event_trace,
        };
        Caller {
            function: self.function.name.clone(),
            route,
            event: Some(self.event_id.clone()),
            traceparent,
        }
    }

    fn refuse(&self, what: &str, name: &str) {
        tracing::warn!(
            function = %self.function.name,
            event = %self.event_id,
            name,
            "The function used {what} `{name}` it is not granted; refused"
        );
    }

    /// The source named `source` as the call with `span` reaches it, or the `not-granted` error
    /// (logged).
    fn sql_source(
        &self,
        source: &str,
        span: Option<&DataSpan>,
    ) -> Result<(Handle, Arc<dyn SqlSource>), sql::SqlError> {
        match (self.io(), self.function.data.sql.get(source)) {
            (Some(io), Some(s)) => {
                let s = s
                    .for_caller(&self.caller(span))
                    .unwrap_or_else(|| s.clone());
                Ok((io, s))
            }
            _ => {
                self.refuse("data source", source);
                Err(sql::SqlError::NotGranted(format!(
                    "the function is not granted data source `{source}` \
                     (grant it in functions.{}.data_sources)",
                    self.function.name
                )))
            }
        }
    }
}

/// Runs `work` on the IO runtime and awaits it from the compute side. `None` when the IO runtime
/// is shutting down.
async fn on_io<T: Send + 'static>(
    io: &Handle,
    work: impl Future<Output = T> + Send + 'static,
) -> Option<T> {
    io.spawn(work).await.ok()
}

fn to_value(v: sql::Value) -> Value {
    match v {
        sql::Value::Null => Value::Null,
        sql::Value::Boolean(b) => Value::Bool(b),
        sql::Value::Int(i) => Value::Int(i),
        sql::Value::Float(f) => Value::Float(f),
        sql::Value::Text(s) => Value::Text(s),
        sql::Value::Bytes(b) => Value::Bytes(b),
        sql::Value::Json(s) => Value::Json(s),
        sql::Value::Timestamp(t) => Value::Timestamp(t),
    }
}

fn from_value(v: Value) -> sql::Value {
    match v {
        Value::Null => sql::Value::Null,
        Value::Bool(b) => sql::Value::Boolean(b),
        Value::Int(i) => sql::Value::Int(i),
        Value::Float(f) => sql::Value::Float(f),
        Value::Text(s) => sql::Value::Text(s),
        Value::Bytes(b) => sql::Value::Bytes(b),
        Value::Json(s) => sql::Value::Json(s),
        Value::Timestamp(t) => sql::Value::Timestamp(t),
    }
}

fn from_sql_error(e: SqlError) -> sql::SqlError {
    match e {
        SqlError::Database {
            sqlstate,
            message,
            retryable,
        } => sql::SqlError::Database(sql::DatabaseError {
            sqlstate,
            message,
            retryable,
        }),
        SqlError::Unavailable(m) => sql::SqlError::Unavailable(m),
        SqlError::Invalid(m) => sql::SqlError::Invalid(m),
        SqlError::NotGranted(m) => sql::SqlError::NotGranted(m),
    }
}

fn io_gone() -> String {
    "the IO runtime is shutting down".into()
}

impl Ctx {
    /// The span of a `sql` call, with tracing on.
    fn sql_span(&self, source: &str, statement: &str) -> Option<DataSpan> {
        let trace = self.trace.as_ref()?;
        Some(trace.data_call(
            "postgresql",
            sql_operation(statement),
            source,
            Some(statement),
        ))
    }
}

/// Ends a data call's span with the error's kind and message, if it failed.
fn end_sql_span<T>(span: Option<DataSpan>, result: &Result<T, sql::SqlError>) {
    let Some(span) = span else { return };
    span.end(result.as_ref().err().map(|e| match e {
        sql::SqlError::NotGranted(m) => ("not-granted", m.clone()),
        sql::SqlError::Database(d) => (
            "database",
            format!("SQLSTATE {}: {}", d.sqlstate, d.message),
        ),
        sql::SqlError::Unavailable(m) => ("unavailable", m.clone()),
        sql::SqlError::Invalid(m) => ("invalid", m.clone()),
    }));
}

/// Runs a query on the IO runtime.
async fn query_on(
    io: Handle,
    source: Arc<dyn SqlSource>,
    statement: String,
    params: Vec<sql::Value>,
) -> Result<sql::Rows, sql::SqlError> {
    let params: Vec<Value> = params.into_iter().map(to_value).collect();
    let rows = on_io(&io, source.query(statement, params))
        .await
        .ok_or_else(|| sql::SqlError::Unavailable(io_gone()))?
        .map_err(from_sql_error)?;
    Ok(sql::Rows {
        columns: rows.columns,
        rows: rows
            .rows
            .into_iter()
            .map(|r| r.into_iter().map(from_value).collect())
            .collect(),
    })
}

impl sql::Host for Ctx {
    async fn query(
        &mut self,
        source: String,
        statement: String,
        params: Vec<sql::Value>,
    ) -> Result<sql::Rows, sql::SqlError> {
        let span = self.sql_span(&source, &statement);
        let result = match self.sql_source(&source, span.as_ref()) {
            Ok((io, s)) => query_on(io, s, statement, params).await,
            Err(e) => Err(e),
        };
        end_sql_span(span, &result);
        result
    }

    async fn execute(
        &mut self,
        source: String,
        statement: String,
        params: Vec<sql::Value>,
    ) -> Result<u64, sql::SqlError> {
        let span = self.sql_span(&source, &statement);
        let result = match self.sql_source(&source, span.as_ref()) {
            Ok((io, s)) => {
                let params: Vec<Value> = params.into_iter().map(to_value).collect();
                on_io(&io, s.execute(statement, params))
                    .await
                    .ok_or_else(|| sql::SqlError::Unavailable(io_gone()))
                    .and_then(|r| r.map_err(from_sql_error))
            }
            Err(e) => Err(e),
        };
        end_sql_span(span, &result);
        result
    }
}

fn from_kv_error(e: KvError) -> keyvalue::Error {
    match e {
        KvError::Unavailable(m) => keyvalue::Error::Unavailable(m),
        KvError::Other(m) => keyvalue::Error::Other(m),
        // The guest's error has no text; whatever refused the call logged why.
        KvError::AccessDenied(_) => keyvalue::Error::AccessDenied,
    }
}

type KvResult<T> = wasmtime::Result<Result<T, keyvalue::Error>>;

impl Ctx {
    /// Runs one operation (`operation` names it in its span) on an open bucket on the IO
    /// runtime.
    async fn kv<T, F, Fut>(
        &mut self,
        handle: &Resource<KvBucket>,
        operation: &'static str,
        op: F,
    ) -> KvResult<T>
    where
        T: Send + 'static,
        F: FnOnce(Arc<dyn Bucket>) -> Fut,
        Fut: Future<Output = Result<T, KvError>> + Send + 'static,
    {
        let open = self.table.get(handle)?;
        let bucket = open.bucket.clone();
        let span = self
            .trace
            .as_ref()
            .map(|t| t.data_call("redis", operation.into(), &open.name, None));
        let bucket = bucket
            .for_caller(&self.caller(span.as_ref()))
            .unwrap_or(bucket);
        let Some(io) = self.io() else {
            return Ok(Err(keyvalue::Error::AccessDenied));
        };
        let result = match on_io(&io, op(bucket)).await {
            Some(result) => result.map_err(from_kv_error),
            None => Err(keyvalue::Error::Unavailable(io_gone())),
        };
        if let Some(span) = span {
            span.end(result.as_ref().err().map(|e| match e {
                keyvalue::Error::Unavailable(m) => ("unavailable", m.clone()),
                keyvalue::Error::Other(m) => ("other", m.clone()),
                other => ("refused", format!("{other:?}")),
            }));
        }
        Ok(result)
    }
}

impl keyvalue::Host for Ctx {
    async fn open(&mut self, identifier: String) -> KvResult<Resource<KvBucket>> {
        let data = &self.function.data;
        if let Some(bucket) = data.buckets.get(&identifier) {
            let bucket = KvBucket {
                bucket: bucket.clone(),
                name: identifier.clone(),
            };
            return Ok(Ok(self.table.push(bucket)?));
        }
        self.refuse("bucket", &identifier);
        if data.other_buckets.contains(&identifier) {
            Ok(Err(keyvalue::Error::AccessDenied))
        } else {
            Ok(Err(keyvalue::Error::NoSuchStore))
        }
    }
}

impl keyvalue::HostBucket for Ctx {
    async fn get(&mut self, this: Resource<KvBucket>, key: String) -> KvResult<Option<Vec<u8>>> {
        self.kv(&this, "GET", |b| b.get(key)).await
    }

    async fn set(&mut self, this: Resource<KvBucket>, key: String, value: Vec<u8>) -> KvResult<()> {
        self.kv(&this, "SET", |b| b.set(key, value)).await
    }

    async fn delete(&mut self, this: Resource<KvBucket>, key: String) -> KvResult<()> {
        self.kv(&this, "DEL", |b| b.delete(key)).await
    }

    async fn exists(&mut self, this: Resource<KvBucket>, key: String) -> KvResult<bool> {
        self.kv(&this, "EXISTS", |b| b.exists(key)).await
    }

    async fn list_keys(
        &mut self,
        this: Resource<KvBucket>,
        cursor: Option<u64>,
    ) -> KvResult<keyvalue::KeyResponse> {
        self.kv(&this, "SCAN", |b| {
            let list = b.list_keys(cursor);
            async move {
                let (keys, cursor) = list.await?;
                Ok(keyvalue::KeyResponse { keys, cursor })
            }
        })
        .await
    }

    async fn increment(
        &mut self,
        this: Resource<KvBucket>,
        key: String,
        delta: i64,
    ) -> KvResult<i64> {
        self.kv(&this, "INCRBY", |b| b.increment(key, delta)).await
    }

    async fn drop(&mut self, this: Resource<KvBucket>) -> wasmtime::Result<()> {
        self.table.delete(this)?;
        Ok(())
    }
}
