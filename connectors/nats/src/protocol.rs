//! The messages between a compute replica and the IO tier, each a NATS message body of one
//! version byte ([`VERSION`]) followed by the message in postcard (serde's data model, integers
//! as varints, strings and byte strings length-prefixed). A `sql` call with one parameter is a
//! few dozen bytes plus its statement.
//!
//! Calls travel in batches: a compute replica sends the calls it has queued for one subject as
//! one [`Batch`] (a lone call is a batch of one, sent at once), each [`Call`] numbered; the IO
//! tier sends the [`Answers`] that are ready together to the batch's `answers_to` subject, each
//! naming its call's number, so answers to calls of several batches can share a message and no
//! call waits for a slower one. A batch that cannot be read is refused as a whole
//! ([`Answers::Refused`]) on the batch's own reply subject.
//!
//! Any change to these types that an older peer could not read takes a new [`VERSION`]: a peer
//! answers a message of another version with [`WireError::BadRequest`], which the caller treats
//! as `unavailable`, so during a rolling upgrade a call is retried until it reaches a replica
//! that speaks its version. Version 1 had one request per message; version 2 batches them.

use fnmill_connector_api::capability::Caller;
use fnmill_connector_api::capability::kv::KvError;
use fnmill_connector_api::capability::sql::{Rows, SqlError, Value};
use serde::{Deserialize, Serialize};

/// The version byte that starts every message.
pub const VERSION: u8 = 2;

/// A capability call: who makes it, what it reaches, what it does.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// Who makes the call; the IO tier checks the grant against its own config.
    pub caller: WireCaller,
    /// The data source (`sql`) or bucket (`keyvalue`) the call names.
    pub target: String,
    pub op: Op,
}

/// Calls to one subject, sent as one message.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    /// Where the answers go: a subject of the caller's own, shared by all its batches.
    pub answers_to: String,
    pub calls: Vec<Call>,
}

/// One call of a [`Batch`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Call {
    /// The caller's number for the call, unique among its calls in flight; its answer names it.
    pub id: u64,
    pub request: Request,
}

/// What the IO tier sends back.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Answers {
    /// Answers to calls, by call number, from one batch or several.
    Replies(Vec<(u64, Reply)>),
    /// The batch could not be read (another version, a corrupt message): every call in it
    /// fails. Sent to the batch's reply subject, since its `answers_to` is unknown.
    Refused(WireError),
}

/// Builds a [`Batch`] or [`Answers::Replies`] body from items encoded one at a time
/// ([`encode_request`], [`encode_reply`]), without decoding or copying them again: postcard
/// writes a struct or tuple as its fields one after another and a sequence as its length then
/// its items, so the concatenation is the whole message's encoding.
pub struct MessageWriter {
    /// What comes before the items: the version byte and the fields before the sequence.
    head: Vec<u8>,
    /// Each item as its call number then its encoding.
    items: Vec<u8>,
    count: u64,
}

impl MessageWriter {
    /// A [`Batch`] whose answers go to `answers_to`.
    pub fn batch(answers_to: &str) -> Self {
        let head = postcard::to_extend(&answers_to, vec![VERSION]).expect("encoding a string");
        Self::with_head(head)
    }

    /// An [`Answers::Replies`] (variant 0, a varint).
    pub fn answers() -> Self {
        Self::with_head(vec![VERSION, 0])
    }

    fn with_head(head: Vec<u8>) -> Self {
        Self {
            head,
            items: Vec::new(),
            count: 0,
        }
    }

    /// Adds call `id`'s request ([`encode_request`]) or reply ([`encode_reply`]).
    pub fn push(&mut self, id: u64, item: &[u8]) {
        self.items =
            postcard::to_extend(&id, std::mem::take(&mut self.items)).expect("encoding an integer");
        self.items.extend_from_slice(item);
        self.count += 1;
    }

    /// Items so far.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Bytes the message would have now, at most.
    pub fn size(&self) -> usize {
        self.head.len() + 10 + self.items.len()
    }

    /// The message body.
    pub fn finish(self) -> bytes::Bytes {
        let mut body = postcard::to_extend(&self.count, self.head).expect("encoding an integer");
        body.extend_from_slice(&self.items);
        bytes::Bytes::from(body)
    }
}

/// A request's encoding inside a [`Batch`] (no version byte: the batch has it).
pub fn encode_request(request: &RequestRef<'_>) -> Vec<u8> {
    postcard::to_stdvec(request).expect("encoding a protocol message")
}

/// A reply's encoding inside [`Answers::Replies`].
pub fn encode_reply(reply: &Reply) -> Vec<u8> {
    postcard::to_stdvec(reply).expect("encoding a protocol message")
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
            "protocol version 9; this fnmill speaks version 2"
        );
        assert!(matches!(decode::<Reply>(&[]), Err(DecodeError::Empty)));
    }

    fn request(function: &str, id: i64) -> Request {
        Request {
            caller: WireCaller {
                function: function.into(),
                route: Some("orders".into()),
                event: Some(format!("e{id}")),
                traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
            },
            target: "orders_db".into(),
            op: Op::Query {
                statement: "select name from customers where id = $1".into(),
                params: vec![WireValue::Int(id)],
            },
        }
    }

    fn borrowed(r: &Request) -> Vec<u8> {
        encode_request(&RequestRef {
            caller: CallerRef {
                function: &r.caller.function,
                route: r.caller.route.as_deref(),
                event: r.caller.event.as_deref(),
                traceparent: r.caller.traceparent.as_deref(),
            },
            target: &r.target,
            op: &r.op,
        })
    }

    /// A batch written call by call reads back as the [`Batch`] of those calls, each with its
    /// number and its own caller (trace context included).
    #[test]
    fn a_batch_reads_back_call_by_call() {
        let calls: Vec<Call> = (0..5)
            .map(|i| Call {
                id: 1_000 + i as u64 * 300,
                request: request(if i % 2 == 0 { "f" } else { "intruder" }, i),
            })
            .collect();
        let mut writer = MessageWriter::batch("_INBOX.abc.a");
        for c in &calls {
            writer.push(c.id, &borrowed(&c.request));
        }
        assert_eq!(writer.len(), 5);
        let size = writer.size();
        let body = writer.finish();
        assert!(body.len() <= size, "{} > {size}", body.len());
        let batch: Batch = decode(&body).unwrap();
        assert_eq!(
            batch,
            Batch {
                answers_to: "_INBOX.abc.a".into(),
                calls: calls.clone()
            }
        );
        assert_eq!(encode(&batch), body, "the same bytes as encoding it whole");
        // A batch of one is a batch too.
        let mut one = MessageWriter::batch("x");
        one.push(7, &borrowed(&calls[0].request));
        let read: Batch = decode(&one.finish()).unwrap();
        assert_eq!((read.calls.len(), read.calls[0].id), (1, 7));
    }

    #[test]
    fn answers_read_back_by_call_number() {
        let replies = vec![
            (
                3,
                Reply::Rows {
                    columns: vec!["name".into()],
                    rows: vec![vec![WireValue::Text("customer 3".into())]],
                },
            ),
            (u64::MAX, Reply::Failed(WireError::NotGranted("no".into()))),
            (0, Reply::Pong),
        ];
        let mut writer = MessageWriter::answers();
        for (id, reply) in &replies {
            writer.push(*id, &encode_reply(reply));
        }
        assert!(!writer.is_empty());
        let body = writer.finish();
        assert_eq!(
            decode::<Answers>(&body).unwrap(),
            Answers::Replies(replies.clone())
        );
        assert_eq!(encode(&Answers::Replies(replies)), body);
        let refused = Answers::Refused(WireError::BadRequest("version 9".into()));
        assert_eq!(decode::<Answers>(&encode(&refused)).unwrap(), refused);
        let empty = MessageWriter::answers();
        assert!(empty.is_empty());
        assert_eq!(
            decode::<Answers>(&empty.finish()).unwrap(),
            Answers::Replies(vec![])
        );
    }

    /// A version-1 request (one call per message) is not read as a batch, and a batch is not
    /// read by a peer of another version: both are named, so the peer can refuse it.
    #[test]
    fn a_batch_of_another_version_is_refused_by_name() {
        let mut body = encode(&request("f", 1)).to_vec();
        body[0] = 1;
        let e = decode::<Batch>(&body).unwrap_err();
        assert!(matches!(e, DecodeError::Version(1)), "{e}");
        let mut writer = MessageWriter::batch("a");
        writer.push(1, &borrowed(&request("f", 1)));
        let mut body = writer.finish().to_vec();
        body[0] = 3;
        assert!(matches!(
            decode::<Batch>(&body),
            Err(DecodeError::Version(3))
        ));
    }

    /// A batch cut short anywhere is an error, never a shorter batch read as if whole.
    #[test]
    fn a_truncated_batch_is_malformed() {
        let mut writer = MessageWriter::batch("_INBOX.abc.a");
        for i in 0..3 {
            writer.push(i, &borrowed(&request("f", i as i64)));
        }
        let body = writer.finish();
        for cut in 1..body.len() {
            let e = decode::<Batch>(&body[..cut]).unwrap_err();
            assert!(matches!(e, DecodeError::Malformed(_)), "cut at {cut}: {e}");
        }
        let mut answers = MessageWriter::answers();
        answers.push(1, &encode_reply(&Reply::Counter(5)));
        let body = answers.finish();
        for cut in 1..body.len() {
            assert!(decode::<Answers>(&body[..cut]).is_err(), "cut at {cut}");
        }
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
