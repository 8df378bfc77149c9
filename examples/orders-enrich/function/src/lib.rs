//! Contract: an order `{"order_id", "customer_id", ...}`; an event id seen before (Redis bucket `dedup`, first attempt only) → no outputs; otherwise looks up the customer in data source `orders_db` and outputs the order with a `customer` object to `enriched`, or to `unknown_customer` if there is no such customer; malformed order or SQL error → `fatal`; database or Redis unavailable → `retryable`.

use serde_json::{Map, Value};

/// The customer fields the lookup returns, in column order.
pub const CUSTOMER_QUERY: &str =
    "select name, email, tier from customers where id = $1";

/// What to do with one order.
#[derive(Debug, PartialEq)]
pub enum Plan {
    /// Look up this customer id.
    Lookup { customer_id: i64, order: Map<String, Value> },
}

/// Parses an order and says which customer to look up.
pub fn plan(payload: &[u8]) -> Result<Plan, String> {
    let value: Value =
        serde_json::from_slice(payload).map_err(|e| format!("order is not JSON: {e}"))?;
    let Value::Object(order) = value else {
        return Err("order is not a JSON object".into());
    };
    let customer_id = order
        .get("customer_id")
        .and_then(Value::as_i64)
        .ok_or("order has no integer `customer_id`")?;
    Ok(Plan::Lookup { customer_id, order })
}

/// The order with its customer added.
pub fn enrich(mut order: Map<String, Value>, name: &str, email: &str, tier: &str) -> Vec<u8> {
    order.insert(
        "customer".into(),
        serde_json::json!({ "name": name, "email": email, "tier": tier }),
    );
    Value::Object(order).to_string().into_bytes()
}

#[cfg(target_arch = "wasm32")]
mod bindings {
    wit_bindgen::generate!({
        path: "../../../wit",
        world: "event-function",
    });

    use crate::Plan;
    use exports::fnmill::function::handler::Guest;
    use fnmill::function::keyvalue;
    use fnmill::function::logging::{self, Level};
    use fnmill::function::sql::{self, SqlError, Value};
    use fnmill::function::types::{Error, Event, Header, Output};

    struct OrdersEnrich;

    fn sql_failure(e: SqlError) -> Error {
        match e {
            SqlError::Database(d) if d.retryable => {
                Error::Retryable(format!("sqlstate={}: {}", d.sqlstate, d.message))
            }
            // A broken statement or schema does not heal by retrying: dead-letter the order
            // with the SQLSTATE in the message.
            SqlError::Database(d) => Error::Fatal(format!("sqlstate={}: {}", d.sqlstate, d.message)),
            SqlError::Unavailable(m) => Error::Retryable(format!("database unavailable: {m}")),
            SqlError::NotGranted(m) | SqlError::Invalid(m) => Error::Fatal(m),
        }
    }

    fn kv_failure(e: keyvalue::Error) -> Error {
        match e {
            keyvalue::Error::Unavailable(m) => Error::Retryable(format!("Redis unavailable: {m}")),
            other => Error::Fatal(format!("dedup bucket: {other:?}")),
        }
    }

    fn text(v: &Value) -> &str {
        match v {
            Value::Text(s) => s,
            _ => "",
        }
    }

    impl Guest for OrdersEnrich {
        fn handle(event: Event) -> Result<Vec<Output>, Error> {
            let Plan::Lookup { customer_id, order } =
                crate::plan(&event.payload).map_err(Error::Fatal)?;
            let dedup = keyvalue::open("dedup").map_err(kv_failure)?;
            // Seen before (a redelivery after a crash or a producer retry)? A retry of this
            // very event (attempt > 1) is not a duplicate: the earlier attempt failed.
            if event.attempt == 1 && dedup.exists(&event.id).map_err(kv_failure)? {
                logging::log(Level::Info, &format!("duplicate event {}; skipped", event.id));
                return Ok(vec![]);
            }
            let rows = sql::query("orders_db", crate::CUSTOMER_QUERY, &[Value::Int(customer_id)])
                .map_err(sql_failure)?;
            let (destination, body) = match rows.rows.first() {
                Some(row) => (
                    "enriched",
                    crate::enrich(order, text(&row[0]), text(&row[1]), text(&row[2])),
                ),
                None => ("unknown_customer", event.payload.clone()),
            };
            // Marked only once the work succeeded, so a failed attempt is never skipped.
            dedup.set(&event.id, b"1").map_err(kv_failure)?;
            Ok(vec![Output {
                destination: destination.into(),
                key: event.key,
                payload: body,
                headers: vec![Header {
                    name: "content-type".into(),
                    value: b"application/json".to_vec(),
                }],
            }])
        }
    }

    export!(OrdersEnrich);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_and_enriches() {
        let Plan::Lookup { customer_id, order } =
            plan(br#"{"order_id":"o1","customer_id":7}"#).unwrap();
        assert_eq!(customer_id, 7);
        let body: Value = serde_json::from_slice(&enrich(order, "Ada", "ada@example.com", "gold"))
            .unwrap();
        assert_eq!(body["customer"]["tier"], "gold");
        assert!(plan(b"{}").is_err());
        assert!(plan(b"nope").is_err());
    }
}
