//! The data capabilities a function can be granted — `sql` and `keyvalue` — as traits.
//!
//! The wasm host holds a granted capability as an `Arc<dyn SqlSource>` or `Arc<dyn Bucket>` and
//! knows nothing about what serves it: an in-process pool (the PostgreSQL and Redis connector
//! crates implement these traits) or a remote data-source tier. The wiring builds the
//! implementations from config and hands them to the host by name. The values and errors here
//! are the host's side of the WIT interfaces `fnmill:function/sql` and `keyvalue`.
//!
//! Every method takes owned arguments and returns a `'static` future, so the host can run it on
//! the IO runtime while the calling instance waits on the compute side.
//!
//! A call is made on behalf of a [`Caller`] (the function, its route, the event). An in-process
//! pool serves every caller alike; a remote tier names the caller in each request, so the tier
//! can check the grant again against its own config ([`sql::SqlSource::for_caller`]).

use std::sync::Arc;

use futures::future::BoxFuture;

/// Who makes a capability call, as the host knows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Caller {
    /// The function (`functions.<name>`) whose instance makes the call.
    pub function: Arc<str>,
    /// The route the event came through; `None` outside a route (`fnmill invoke`).
    pub route: Option<Arc<str>>,
    /// The event's id.
    pub event: Option<Arc<str>>,
    /// The event's W3C trace context (its `traceparent` header), when it carried one.
    pub traceparent: Option<Arc<str>>,
}

/// SQL: statements with typed parameters, rows of typed values.
pub mod sql {
    use std::sync::Arc;

    use super::{BoxFuture, Caller};

    /// A value of a parameter or a column.
    #[derive(Clone, Debug, PartialEq)]
    pub enum Value {
        /// SQL `NULL`, of any type.
        Null,
        /// `boolean`.
        Bool(bool),
        /// `smallint`, `integer`, `bigint` (checked for range on the way in), `oid`.
        Int(i64),
        /// `real`, `double precision`.
        Float(f64),
        /// `text`, `varchar`, `char(n)`, `name`, and parameters of unknown type.
        Text(String),
        /// `bytea`.
        Bytes(Vec<u8>),
        /// `json` or `jsonb`, as JSON text.
        Json(String),
        /// `timestamp` or `timestamptz`, in microseconds since the Unix epoch (UTC). A
        /// `timestamp` without time zone is read and written as if it were UTC.
        Timestamp(i64),
    }

    impl Value {
        /// The name of the value's kind, for error messages.
        pub fn kind(&self) -> &'static str {
            match self {
                Value::Null => "null",
                Value::Bool(_) => "bool",
                Value::Int(_) => "int",
                Value::Float(_) => "float",
                Value::Text(_) => "text",
                Value::Bytes(_) => "bytes",
                Value::Json(_) => "json",
                Value::Timestamp(_) => "timestamp",
            }
        }
    }

    /// The result of a query: column names, and rows of values in column order.
    #[derive(Clone, Debug, Default, PartialEq)]
    pub struct Rows {
        pub columns: Vec<String>,
        pub rows: Vec<Vec<Value>>,
    }

    /// Why a statement did not run or did not complete.
    #[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
    pub enum SqlError {
        /// The database refused or failed the statement.
        #[error("SQLSTATE {sqlstate}: {message}")]
        Database {
            /// The five-character SQLSTATE code, e.g. `42P01` (undefined table).
            sqlstate: String,
            /// The server's message, with its detail and hint when there are any.
            message: String,
            /// Whether the same statement may succeed later: serialization failures and
            /// deadlocks (class 40), connection exceptions (08), operator intervention such as
            /// `pg_terminate_backend` (57P01..57P03), insufficient resources (53).
            retryable: bool,
        },
        /// No connection could be had or kept: the pool was exhausted for its wait timeout, the
        /// database refused or dropped the connection, or it did not answer in time. Transient.
        #[error("unavailable: {0}")]
        Unavailable(String),
        /// A parameter did not fit its statement's parameter type, or a column could not be
        /// converted. The caller's mistake: retrying will not help.
        #[error("invalid: {0}")]
        Invalid(String),
        /// Whatever serves the source refused the caller: a remote tier whose own config does
        /// not grant the function this source. Retrying will not help.
        #[error("not granted: {0}")]
        NotGranted(String),
    }

    impl SqlError {
        /// Whether trying the same work again later may succeed.
        pub fn is_retryable(&self) -> bool {
            match self {
                SqlError::Database { retryable, .. } => *retryable,
                SqlError::Unavailable(_) => true,
                SqlError::Invalid(_) | SqlError::NotGranted(_) => false,
            }
        }
    }

    /// A SQL data source: what `sql.query` and `sql.execute` reach.
    pub trait SqlSource: Send + Sync + 'static {
        /// Runs a statement that returns rows.
        fn query(
            &self,
            statement: String,
            params: Vec<Value>,
        ) -> BoxFuture<'static, Result<Rows, SqlError>>;

        /// Runs a statement and returns the number of rows it affected.
        fn execute(
            &self,
            statement: String,
            params: Vec<Value>,
        ) -> BoxFuture<'static, Result<u64, SqlError>>;

        /// This source as `caller` reaches it: `None` (the default) when it serves every caller
        /// alike, as an in-process pool does; a remote tier returns a handle that names the
        /// caller in each request.
        fn for_caller(&self, caller: &Caller) -> Option<Arc<dyn SqlSource>> {
            let _ = caller;
            None
        }
    }
}

/// Key-value buckets: string keys, byte values, an atomic increment.
pub mod kv {
    use std::sync::Arc;

    use super::{BoxFuture, Caller};

    /// Why a key-value operation failed.
    #[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
    pub enum KvError {
        /// The store could not be reached, did not answer in time, or its pool was exhausted.
        /// Transient.
        #[error("unavailable: {0}")]
        Unavailable(String),
        /// Anything else, e.g. incrementing a value that is not an integer.
        #[error("{0}")]
        Other(String),
        /// Whatever serves the bucket refused the caller: a remote tier whose own config does
        /// not grant the function this bucket. Retrying will not help.
        #[error("access denied: {0}")]
        AccessDenied(String),
    }

    impl KvError {
        pub fn is_retryable(&self) -> bool {
            matches!(self, KvError::Unavailable(_))
        }
    }

    /// A bucket: what `keyvalue.open(name)` gives a function.
    pub trait Bucket: Send + Sync + 'static {
        /// The value of `key`, if it exists.
        fn get(&self, key: String) -> BoxFuture<'static, Result<Option<Vec<u8>>, KvError>>;
        /// Sets `key` to `value`, replacing any value it had.
        fn set(&self, key: String, value: Vec<u8>) -> BoxFuture<'static, Result<(), KvError>>;
        /// Deletes `key`; deleting a missing key is not an error.
        fn delete(&self, key: String) -> BoxFuture<'static, Result<(), KvError>>;
        /// Whether `key` exists.
        fn exists(&self, key: String) -> BoxFuture<'static, Result<bool, KvError>>;
        /// One page of keys and the cursor of the next page (`None` at the end); start with
        /// `None`. No key present throughout a listing is missed.
        #[allow(clippy::type_complexity)]
        fn list_keys(
            &self,
            cursor: Option<u64>,
        ) -> BoxFuture<'static, Result<(Vec<String>, Option<u64>), KvError>>;
        /// Adds `delta` to the integer at `key` (a missing key counts as 0), atomically, and
        /// returns the new value.
        fn increment(&self, key: String, delta: i64) -> BoxFuture<'static, Result<i64, KvError>>;

        /// This bucket as `caller` reaches it; see [`SqlSource::for_caller`](super::sql::SqlSource::for_caller).
        fn for_caller(&self, caller: &Caller) -> Option<Arc<dyn Bucket>> {
            let _ = caller;
            None
        }
    }
}
