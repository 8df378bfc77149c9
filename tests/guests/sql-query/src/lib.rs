//! Contract: runs config `statement` (`mode` = `query` | `execute`, default query) on data source config `source` (default `db`) with params from the payload (a JSON array: null/bool/int/float/string); one output to `out` with `{"columns":[..],"rows":[[..]]}` or `{"affected":n}`; `unavailable` or a retryable database error → `retryable`; any other error → `fatal("sqlstate=<code>: ..." | "not-granted: ..." | "invalid: ...")`.

// Linked for its allocator, which takes the initial memory before growing it.
use fnmill_sdk as _;

wit_bindgen::generate!({
    path: "../../../wit",
    world: "event-function",
});

use exports::fnmill::function::handler::Guest;
use fnmill::function::config;
use fnmill::function::sql::{self, SqlError, Value};
use fnmill::function::types::{Error, Event, Output};
use serde_json::{Value as Json, json};

struct SqlQuery;

fn param(v: &Json) -> Value {
    match v {
        Json::Null => Value::Null,
        Json::Bool(b) => Value::Boolean(*b),
        Json::Number(n) => match n.as_i64() {
            Some(i) => Value::Int(i),
            None => Value::Float(n.as_f64().unwrap_or(0.0)),
        },
        Json::String(s) => Value::Text(s.clone()),
        other => Value::Json(other.to_string()),
    }
}

fn to_json(v: &Value) -> Json {
    match v {
        Value::Null => Json::Null,
        Value::Boolean(b) => json!(b),
        Value::Int(i) => json!(i),
        Value::Float(f) => json!(f),
        Value::Text(s) => json!(s),
        Value::Bytes(b) => json!(b),
        Value::Json(s) => serde_json::from_str(s).unwrap_or(Json::Null),
        Value::Timestamp(t) => json!({ "timestamp": t }),
    }
}

fn failure(e: SqlError) -> Error {
    match e {
        SqlError::Database(d) if d.retryable => {
            Error::Retryable(format!("sqlstate={}: {}", d.sqlstate, d.message))
        }
        SqlError::Database(d) => Error::Fatal(format!("sqlstate={}: {}", d.sqlstate, d.message)),
        SqlError::Unavailable(m) => Error::Retryable(format!("unavailable: {m}")),
        SqlError::NotGranted(m) => Error::Fatal(format!("not-granted: {m}")),
        SqlError::Invalid(m) => Error::Fatal(format!("invalid: {m}")),
    }
}

impl Guest for SqlQuery {
    fn handle(event: Event) -> Result<Vec<Output>, Error> {
        let source = config::get("source").unwrap_or_else(|| "db".into());
        let statement =
            config::get("statement").ok_or_else(|| Error::Fatal("no `statement`".into()))?;
        let params: Vec<Value> = match serde_json::from_slice::<Json>(&event.payload) {
            Ok(Json::Array(items)) => items.iter().map(param).collect(),
            _ => vec![],
        };
        let body = if config::get("mode").as_deref() == Some("execute") {
            let n = sql::execute(&source, &statement, &params).map_err(failure)?;
            json!({ "affected": n })
        } else {
            let rows = sql::query(&source, &statement, &params).map_err(failure)?;
            json!({
                "columns": rows.columns,
                "rows": rows.rows.iter().map(|r| r.iter().map(to_json).collect::<Vec<_>>()).collect::<Vec<_>>(),
            })
        };
        Ok(vec![Output {
            destination: "out".into(),
            key: event.key,
            payload: body.to_string().into_bytes(),
            headers: vec![],
        }])
    }
}

export!(SqlQuery);
