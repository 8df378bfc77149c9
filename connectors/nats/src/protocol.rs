//! The messages between a compute replica and the IO tier: one [`Request`] per capability call,
//! one [`Reply`] to it, each a NATS message body of one version byte ([`VERSION`]) followed by
//! the message in postcard (serde's data model, integers as varints, strings and byte strings
//! length-prefixed). A `sql` call with one parameter is a few dozen bytes plus its statement.
//!
//! Any change to these types that an older peer could not read takes a new [`VERSION`]: a peer
//! answers a request of another version with [`WireError::BadRequest`], which the caller treats
//! as `unavailable`, so during a rolling upgrade a call is retried until it reaches a replica
//! that speaks its version.

use fnmill_connector_api::capability::Caller;
use fnmill_connector_api::capability::kv::KvError;
use fnmill_connector_api::capability::sql::{Rows, SqlError, Value};
use serde::{Deserialize, Serialize};

/// The version byte that starts every message.
pub const VERSION: u8 = 1;

/// A capability call: who makes it, what it reaches, what it does.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// Who makes the call; the IO tier checks the grant against its own config.
    pub caller: WireCaller,
    /// The data source (`sql`) or bucket (`keyvalue`) the call names.
    pub target: String,
    pub op: Op,
}

/// A [`Request`] to encode, borrowing what the caller holds (same encoding).
#[derive(Serialize)]
pub struct RequestRef<'a> {
    pub caller: CallerRef<'a>,
    pub target: &'a str,
    pub op: &'a Op,
}

/// A [`WireCaller`] to encode, borrowed from a [`Caller`] (same encoding).
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct CallerRef<'a> {
    pub function: &'a str,
    pub route: Option<&'a str>,
    pub event: Option<&'a str>,
    pub traceparent: Option<&'a str>,
}

impl<'a> From<&'a Caller> for CallerRef<'a> {
    fn from(c: &'a Caller) -> Self {
        Self {
            function: &c.function,
            route: c.route.as_deref(),
            event: c.event.as_deref(),
            traceparent: c.traceparent.as_deref(),
        }
    }
}

/// [`Caller`] on the wire.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireCaller {
    pub function: String,
    pub route: Option<String>,
    pub event: Option<String>,
    /// W3C `traceparent` of the event, so the IO tier's work joins the event's trace.
    pub traceparent: Option<String>,
}

/// What a call does.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Op {
    /// `sql.query`.
    Query {
        statement: String,
        params: Vec<WireValue>,
    },
    /// `sql.execute`.
    Execute {
        statement: String,
        params: Vec<WireValue>,
    },
    /// `bucket.get`.
    Get { key: String },
    /// `bucket.set`.
    Set {
        key: String,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    /// `bucket.delete`.
    Delete { key: String },
    /// `bucket.exists`.
    Exists { key: String },
    /// `bucket.list-keys`.
    ListKeys { cursor: Option<u64> },
    /// `bucket.increment`.
    Increment { key: String, delta: i64 },
    /// Is anyone serving this subject? Answered without touching a data source or a grant.
    Ping,
}

impl Op {
    /// A short name for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Query { .. } => "query",
            Op::Execute { .. } => "execute",
            Op::Get { .. } => "get",
            Op::Set { .. } => "set",
            Op::Delete { .. } => "delete",
            Op::Exists { .. } => "exists",
            Op::ListKeys { .. } => "list-keys",
            Op::Increment { .. } => "increment",
            Op::Ping => "ping",
        }
    }

    /// Whether this is a `sql` call (its target is a data source) rather than a bucket's.
    pub fn is_sql(&self) -> bool {
        matches!(self, Op::Query { .. } | Op::Execute { .. })
    }
}

/// A SQL value ([`Value`]) on the wire.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum WireValue {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
    Bytes(#[serde(with = "serde_bytes")] Vec<u8>),
    Json(String),
    Timestamp(i64),
}

impl From<Value> for WireValue {
    fn from(v: Value) -> Self {
        match v {
            Value::Null => WireValue::Null,
            Value::Bool(b) => WireValue::Bool(b),
            Value::Int(i) => WireValue::Int(i),
            Value::Float(f) => WireValue::Float(f),
            Value::Text(s) => WireValue::Text(s),
            Value::Bytes(b) => WireValue::Bytes(b),
            Value::Json(s) => WireValue::Json(s),
            Value::Timestamp(t) => WireValue::Timestamp(t),
        }
    }
}

impl From<WireValue> for Value {
    fn from(v: WireValue) -> Self {
        match v {
            WireValue::Null => Value::Null,
            WireValue::Bool(b) => Value::Bool(b),
            WireValue::Int(i) => Value::Int(i),
            WireValue::Float(f) => Value::Float(f),
            WireValue::Text(s) => Value::Text(s),
            WireValue::Bytes(b) => Value::Bytes(b),
            WireValue::Json(s) => Value::Json(s),
            WireValue::Timestamp(t) => Value::Timestamp(t),
        }
    }
}

/// The answer to a [`Request`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Reply {
    /// To `Query`.
    Rows {
        columns: Vec<String>,
        rows: Vec<Vec<WireValue>>,
    },
    /// To `Execute`: rows affected.
    Affected(u64),
    /// To `Get`.
    Value(#[serde(with = "serde_bytes")] Option<Vec<u8>>),
    /// To `Set` and `Delete`.
    Done,
    /// To `Exists`.
    Exists(bool),
    /// To `ListKeys`.
    Keys {
        keys: Vec<String>,
        cursor: Option<u64>,
    },
    /// To `Increment`: the new value.
    Counter(i64),
    /// To `Ping`.
    Pong,
    /// The call failed, or was refused.
    Failed(WireError),
}

/// Why a call failed: the capability errors, plus what only a remote call can meet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WireError {
    /// [`SqlError::Database`].
    Database {
        sqlstate: String,
        message: String,
        retryable: bool,
    },
    /// The data source's pool could not serve the call (either capability).
    Unavailable(String),
    /// [`SqlError::Invalid`].
    Invalid(String),
    /// [`KvError::Other`].
    Other(String),
    /// The IO tier's config does not grant the caller the target.
    NotGranted(String),
    /// The request could not be read (another protocol version, a corrupt message).
    BadRequest(String),
}

impl From<SqlError> for WireError {
    fn from(e: SqlError) -> Self {
        match e {
            SqlError::Database {
                sqlstate,
                message,
                retryable,
            } => WireError::Database {
                sqlstate,
                message,
                retryable,
            },
            SqlError::Unavailable(m) => WireError::Unavailable(m),
            SqlError::Invalid(m) => WireError::Invalid(m),
            SqlError::NotGranted(m) => WireError::NotGranted(m),
        }
    }
}

impl From<KvError> for WireError {
    fn from(e: KvError) -> Self {
        match e {
            KvError::Unavailable(m) => WireError::Unavailable(m),
            KvError::Other(m) => WireError::Other(m),
            KvError::AccessDenied(m) => WireError::NotGranted(m),
        }
    }
}

impl WireError {
    /// The error a `sql` caller gets. A request the tier could not read is `unavailable`: another
    /// replica (of the caller's version) may read it.
    pub fn into_sql(self) -> SqlError {
        match self {
            WireError::Database {
                sqlstate,
                message,
                retryable,
            } => SqlError::Database {
                sqlstate,
                message,
                retryable,
            },
            WireError::Unavailable(m) => SqlError::Unavailable(m),
            WireError::Invalid(m) | WireError::Other(m) => SqlError::Invalid(m),
            WireError::NotGranted(m) => SqlError::NotGranted(m),
            WireError::BadRequest(m) => SqlError::Unavailable(format!("the IO tier: {m}")),
        }
    }

    /// The error a `keyvalue` caller gets; see [`WireError::into_sql`].
    pub fn into_kv(self) -> KvError {
        match self {
            WireError::Unavailable(m) => KvError::Unavailable(m),
            WireError::NotGranted(m) => KvError::AccessDenied(m),
            WireError::BadRequest(m) => KvError::Unavailable(format!("the IO tier: {m}")),
            WireError::Database { message, .. } => KvError::Other(message),
            WireError::Invalid(m) | WireError::Other(m) => KvError::Other(m),
        }
    }
}

impl From<Rows> for Reply {
    fn from(rows: Rows) -> Self {
        Reply::Rows {
            columns: rows.columns,
            rows: rows
                .rows
                .into_iter()
                .map(|r| r.into_iter().map(WireValue::from).collect())
                .collect(),
        }
    }
}

/// Why a message could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("empty message")]
    Empty,
    #[error("protocol version {0}; this fnmill speaks version {VERSION}")]
    Version(u8),
    #[error("malformed message: {0}")]
    Malformed(#[from] postcard::Error),
}

/// `message` as a NATS body: the version byte, then postcard.
pub fn encode<T: Serialize>(message: &T) -> bytes::Bytes {
    // Serializing these types into a Vec cannot fail: no map keys, no unsized sequences.
    let body = postcard::to_extend(message, vec![VERSION]).expect("encoding a protocol message");
    bytes::Bytes::from(body)
}

/// A message from a NATS body made by [`encode`].
pub fn decode<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, DecodeError> {
    match body.split_first() {
        None => Err(DecodeError::Empty),
        Some((&VERSION, rest)) => Ok(postcard::from_bytes(rest)?),
        Some((&v, _)) => Err(DecodeError::Version(v)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn value() -> impl Strategy<Value = WireValue> {
        prop_oneof![
            Just(WireValue::Null),
            any::<bool>().prop_map(WireValue::Bool),
            any::<i64>().prop_map(WireValue::Int),
            any::<f64>()
                .prop_filter("NaN is not equal to itself", |f| !f.is_nan())
                .prop_map(WireValue::Float),
            ".*".prop_map(WireValue::Text),
            proptest::collection::vec(any::<u8>(), 0..64).prop_map(WireValue::Bytes),
            ".*".prop_map(WireValue::Json),
            any::<i64>().prop_map(WireValue::Timestamp),
        ]
    }

    proptest! {
        #[test]
        fn requests_and_replies_round_trip(
            function in ".*",
            route in proptest::option::of(".*"),
            statement in ".*",
            params in proptest::collection::vec(value(), 0..8),
            key in ".*",
            bytes in proptest::collection::vec(any::<u8>(), 0..256),
            delta in any::<i64>(),
        ) {
            let caller = WireCaller { function, route, event: Some("e-1".into()), traceparent: None };
            for op in [
                Op::Query { statement: statement.clone(), params: params.clone() },
                Op::Execute { statement, params: params.clone() },
                Op::Set { key: key.clone(), value: bytes.clone() },
                Op::Increment { key, delta },
                Op::ListKeys { cursor: Some(7) },
                Op::Ping,
            ] {
                let request = Request { caller: caller.clone(), target: "db".into(), op };
                prop_assert_eq!(decode::<Request>(&encode(&request)).unwrap(), request);
            }
            for reply in [
                Reply::Rows { columns: vec!["a".into()], rows: vec![params] },
                Reply::Value(Some(bytes)),
                Reply::Value(None),
                Reply::Failed(WireError::Database { sqlstate: "40001".into(), message: "m".into(), retryable: true }),
            ] {
                prop_assert_eq!(decode::<Reply>(&encode(&reply)).unwrap(), reply);
            }
        }

        /// Whatever bytes arrive, decoding returns (an error) rather than panicking.
        #[test]
        fn garbage_is_an_error_not_a_panic(body in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = decode::<Request>(&body);
            let _ = decode::<Reply>(&body);
        }
    }

    #[test]
    fn a_borrowed_request_reads_back_as_an_owned_one() {
        let caller = Caller {
            function: "f".into(),
            route: Some("r".into()),
            event: None,
            traceparent: Some("00-abc-def-01".into()),
        };
        let op = Op::Get { key: "k".into() };
        let body = encode(&RequestRef {
            caller: CallerRef::from(&caller),
            target: "cache",
            op: &op,
        });
        let read: Request = decode(&body).unwrap();
        assert_eq!(read.caller.function, "f");
        assert_eq!(read.caller.route.as_deref(), Some("r"));
        assert_eq!(read.caller.traceparent.as_deref(), Some("00-abc-def-01"));
        assert_eq!((read.target.as_str(), read.op), ("cache", op));
    }

    #[test]
    fn another_version_is_named() {
        let mut body = encode(&Reply::Pong).to_vec();
        body[0] = 9;
        let e = decode::<Reply>(&body).unwrap_err();
        assert_eq!(
            e.to_string(),
            "protocol version 9; this fnmill speaks version 1"
        );
        assert!(matches!(decode::<Reply>(&[]), Err(DecodeError::Empty)));
    }

    #[test]
    fn a_query_is_small() {
        let request = Request {
            caller: WireCaller {
                function: "enrich".into(),
                route: Some("orders".into()),
                event: Some("orders/0/123".into()),
                traceparent: None,
            },
            target: "orders_db".into(),
            op: Op::Query {
                statement: "select name from customers where id = $1".into(),
                params: vec![WireValue::Int(42)],
            },
        };
        let body = encode(&request);
        // Version, 3 short strings with length bytes, the statement, one tagged varint.
        assert!(body.len() < 90, "{} bytes", body.len());
    }
}
