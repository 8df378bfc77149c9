//! Contract: inserts one row of every value type (and one row of nulls) into config `table` (columns id text, b bool, i8 int8, i4 int4, i2 int2, f8 float8, f4 float4, t text, v varchar, by bytea, j json, jb jsonb, ts timestamp, tz timestamptz) on data source `db`, reads both back and compares (JSON by value); checks a text param for an int8 and 70000 for an int2 are `invalid`; one output to `out` with `{"checked":n}`, or `fatal("mismatch: ...")`.

// Linked for its allocator, which takes the initial memory before growing it.
use fnmill_sdk as _;

wit_bindgen::generate!({
    path: "../../../wit",
    world: "event-function",
    additional_derives: [PartialEq],
});

use exports::fnmill::function::handler::Guest;
use fnmill::function::config;
use fnmill::function::sql::{self, SqlError, Value};
use fnmill::function::types::{Error, Event, Output};

struct SqlTypes;

const COLUMNS: &str = "b, i8, i4, i2, f8, f4, t, v, by, j, jb, ts, tz";

fn values() -> Vec<Value> {
    vec![
        Value::Boolean(true),
        Value::Int(i64::MIN),
        Value::Int(i32::MIN as i64),
        Value::Int(i16::MAX as i64),
        Value::Float(std::f64::consts::PI),
        Value::Float(0.5),
        Value::Text("héllo 🌍 \"quoted\"\n\ttab".into()),
        Value::Text("short".into()),
        Value::Bytes(vec![0, 1, 255, 0, 7]),
        Value::Json(r#"{"a": [1, 2.5, null], "s": "x"}"#.into()),
        Value::Json(r#"{"b": [true, null], "a": {"n": -3}}"#.into()),
        Value::Timestamp(1_700_000_000_123_456),
        Value::Timestamp(-1_000_001),
    ]
}

fn same(sent: &Value, got: &Value) -> bool {
    match (sent, got) {
        (Value::Json(a), Value::Json(b)) => {
            serde_json::from_str::<serde_json::Value>(a).ok()
                == serde_json::from_str::<serde_json::Value>(b).ok()
        }
        _ => sent == got,
    }
}

fn fatal(e: SqlError) -> Error {
    Error::Fatal(format!("{e:?}"))
}

fn read_back(table: &str, id: &str) -> Result<Vec<Value>, Error> {
    let rows = sql::query(
        "db",
        &format!("select {COLUMNS} from {table} where id = $1"),
        &[Value::Text(id.into())],
    )
    .map_err(fatal)?;
    rows.rows
        .into_iter()
        .next()
        .ok_or_else(|| Error::Fatal(format!("mismatch: row {id} not found")))
}

impl Guest for SqlTypes {
    fn handle(event: Event) -> Result<Vec<Output>, Error> {
        let table = config::get("table").ok_or_else(|| Error::Fatal("no `table`".into()))?;
        let insert = format!(
            "insert into {table} (id, {COLUMNS}) values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
        );
        let mut checked = 0;

        let sent = values();
        let mut params = vec![Value::Text(event.id.clone())];
        params.extend(sent.iter().cloned());
        let n = sql::execute("db", &insert, &params).map_err(fatal)?;
        if n != 1 {
            return Err(Error::Fatal(format!("mismatch: inserted {n} rows")));
        }
        let got = read_back(&table, &event.id)?;
        for (i, (s, g)) in sent.iter().zip(&got).enumerate() {
            if !same(s, g) {
                return Err(Error::Fatal(format!("mismatch: column {i}: sent {s:?}, got {g:?}")));
            }
            checked += 1;
        }

        let null_id = format!("{}-null", event.id);
        let mut params = vec![Value::Text(null_id.clone())];
        params.extend(sent.iter().map(|_| Value::Null));
        sql::execute("db", &insert, &params).map_err(fatal)?;
        for (i, g) in read_back(&table, &null_id)?.iter().enumerate() {
            if *g != Value::Null {
                return Err(Error::Fatal(format!("mismatch: null column {i}: got {g:?}")));
            }
            checked += 1;
        }

        // Parameters only: a value that does not fit is refused before it reaches the server.
        for (statement, value) in [
            ("select $1::int8 as x", Value::Text("1".into())),
            ("select $1::int2 as x", Value::Int(70_000)),
        ] {
            match sql::query("db", statement, &[value]) {
                Err(SqlError::Invalid(_)) => checked += 1,
                other => {
                    return Err(Error::Fatal(format!("mismatch: {statement}: {other:?}")));
                }
            }
        }

        Ok(vec![Output {
            destination: "out".into(),
            key: event.key,
            payload: format!("{{\"checked\":{checked}}}").into_bytes(),
            headers: vec![],
        }])
    }
}

export!(SqlTypes);
