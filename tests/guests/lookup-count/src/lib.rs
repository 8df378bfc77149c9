//! Contract: payload `{"customer": <int>}`; queries config `statement` (default `select name from customers where id = $1`) on data source config `source` (default `db`) with the customer id, then increments `seen:<event id>` by 1 in bucket config `bucket` (default `counts`); one output to `out` with `{"id": <event id>, "name": <first column of the first row, or null>, "count": <the incremented value>}`; `unavailable` → `retryable`; a refusal → `fatal("not-granted: ..." | "access-denied")`; any other error → `fatal`.

// Linked for its allocator, which takes the initial memory before growing it.
use fnmill_sdk as _;

wit_bindgen::generate!({
    path: "../../../wit",
    world: "event-function",
});

use exports::fnmill::function::handler::Guest;
use fnmill::function::config;
use fnmill::function::keyvalue::{self, Error as KvError};
use fnmill::function::sql::{self, SqlError, Value};
use fnmill::function::types::{Error, Event, Output};
use serde_json::{Value as Json, json};

struct LookupCount;

fn sql_failure(e: SqlError) -> Error {
    match e {
        SqlError::Unavailable(m) => Error::Retryable(format!("unavailable: {m}")),
        SqlError::Database(d) if d.retryable => Error::Retryable(format!("sqlstate={}", d.sqlstate)),
        SqlError::Database(d) => Error::Fatal(format!("sqlstate={}: {}", d.sqlstate, d.message)),
        SqlError::NotGranted(m) => Error::Fatal(format!("not-granted: {m}")),
        SqlError::Invalid(m) => Error::Fatal(format!("invalid: {m}")),
    }
}

fn kv_failure(e: KvError) -> Error {
    match e {
        KvError::Unavailable(m) => Error::Retryable(format!("unavailable: {m}")),
        KvError::NoSuchStore => Error::Fatal("no-such-store".into()),
        KvError::AccessDenied => Error::Fatal("access-denied".into()),
        KvError::Other(m) => Error::Fatal(format!("other: {m}")),
    }
}

impl Guest for LookupCount {
    fn handle(event: Event) -> Result<Vec<Output>, Error> {
        let payload: Json = serde_json::from_slice(&event.payload)
            .map_err(|e| Error::Fatal(format!("payload is not JSON: {e}")))?;
        let customer = payload["customer"]
            .as_i64()
            .ok_or_else(|| Error::Fatal("no integer `customer` in the payload".into()))?;
        let source = config::get("source").unwrap_or_else(|| "db".into());
        let statement = config::get("statement")
            .unwrap_or_else(|| "select name from customers where id = $1".into());
        let rows = sql::query(&source, &statement, &[Value::Int(customer)]).map_err(sql_failure)?;
        let name = match rows.rows.first().and_then(|r| r.first()) {
            Some(Value::Text(s)) => json!(s),
            _ => Json::Null,
        };
        let bucket_name = config::get("bucket").unwrap_or_else(|| "counts".into());
        let bucket = keyvalue::open(&bucket_name).map_err(kv_failure)?;
        let count = bucket
            .increment(&format!("seen:{}", event.id), 1)
            .map_err(kv_failure)?;
        let body = json!({ "id": event.id, "name": name, "count": count });
        Ok(vec![Output {
            destination: "out".into(),
            key: event.key,
            payload: body.to_string().into_bytes(),
            headers: vec![],
        }])
    }
}

export!(LookupCount);
