//! Order validation and enrichment: pure logic, independent of the WIT bindings.

use serde::Deserialize;
use serde_json::{Map, Value};
use std::fmt;

/// Currencies this shop accepts.
pub const CURRENCIES: [&str; 3] = ["EUR", "USD", "GBP"];

/// Tax rate used when the `tax_rate` config key is absent.
pub const DEFAULT_TAX_RATE: &str = "0.20";

/// Value of `processed_by` on enriched orders.
pub const PROCESSED_BY: &str = "quickstart-orders";

/// The fields an order must have, with their types. Other fields are allowed and kept.
#[derive(Debug, Deserialize)]
pub struct Order {
    pub order_id: String,
    pub customer_id: String,
    pub currency: String,
    pub items: Vec<Item>,
}

#[derive(Debug, Deserialize)]
pub struct Item {
    pub sku: String,
    pub qty: i64,
    pub unit_price: f64,
}

/// Amounts computed for a valid order, rounded to 2 decimals.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Totals {
    pub item_count: i64,
    pub subtotal: f64,
    pub tax: f64,
    pub total: f64,
}

/// What to publish for a well-formed order. `body` is the JSON payload of the output.
#[derive(Debug)]
pub enum Outcome {
    /// Publish `body` (the order plus totals) to `valid`.
    Valid {
        order_id: String,
        total: f64,
        body: Vec<u8>,
    },
    /// Publish `body` (the order plus `reasons`) to `invalid`.
    Invalid {
        order_id: String,
        reasons: Vec<String>,
        body: Vec<u8>,
    },
}

/// Why an event cannot be processed at all.
#[derive(Debug, Clone, PartialEq)]
pub enum ProcessError {
    /// The payload is not JSON, or lacks a required field of the right type.
    Malformed(String),
    /// The `tax_rate` config value is not a non-negative decimal number.
    BadConfig(String),
}

impl fmt::Display for ProcessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProcessError::Malformed(e) => write!(f, "malformed order: {e}"),
            ProcessError::BadConfig(e) => write!(f, "bad config: {e}"),
        }
    }
}

/// Validates and, if valid, enriches one order payload. `tax_rate` is the raw config value.
pub fn process(payload: &[u8], tax_rate: Option<&str>) -> Result<Outcome, ProcessError> {
    let order: Order =
        serde_json::from_slice(payload).map_err(|e| ProcessError::Malformed(e.to_string()))?;
    // The same bytes again, untyped, so the output keeps every field of the original order.
    let mut fields: Map<String, Value> =
        serde_json::from_slice(payload).map_err(|e| ProcessError::Malformed(e.to_string()))?;

    let reasons = validate(&order);
    if !reasons.is_empty() {
        fields.insert(
            "reasons".into(),
            Value::Array(reasons.iter().cloned().map(Value::String).collect()),
        );
        return Ok(Outcome::Invalid {
            order_id: order.order_id,
            reasons,
            body: to_json(&fields),
        });
    }

    let rate = parse_tax_rate(tax_rate)?;
    let t = totals(&order, rate);
    fields.insert("item_count".into(), t.item_count.into());
    fields.insert("subtotal".into(), t.subtotal.into());
    fields.insert("tax".into(), t.tax.into());
    fields.insert("total".into(), t.total.into());
    fields.insert("processed_by".into(), PROCESSED_BY.into());
    Ok(Outcome::Valid {
        order_id: order.order_id,
        total: t.total,
        body: to_json(&fields),
    })
}

/// Business rules; returns every violated rule, empty if the order is valid.
pub fn validate(order: &Order) -> Vec<String> {
    let mut reasons = Vec::new();
    if !CURRENCIES.contains(&order.currency.as_str()) {
        reasons.push(format!(
            "unknown currency {:?} (allowed: {})",
            order.currency,
            CURRENCIES.join(", ")
        ));
    }
    if order.items.is_empty() {
        reasons.push("order has no items".to_string());
    }
    for (i, item) in order.items.iter().enumerate() {
        if item.qty <= 0 {
            reasons.push(format!(
                "item {i} ({}): qty must be positive, got {}",
                item.sku, item.qty
            ));
        }
        if item.unit_price < 0.0 {
            reasons.push(format!(
                "item {i} ({}): unit_price must not be negative, got {}",
                item.sku, item.unit_price
            ));
        }
    }
    reasons
}

/// Totals of a valid order at `tax_rate` (0.20 = 20 %), each rounded to 2 decimals.
pub fn totals(order: &Order, tax_rate: f64) -> Totals {
    let item_count = order.items.iter().map(|i| i.qty).sum();
    let subtotal = round2(
        order
            .items
            .iter()
            .map(|i| i.qty as f64 * i.unit_price)
            .sum(),
    );
    let tax = round2(subtotal * tax_rate);
    let total = round2(subtotal + tax);
    Totals {
        item_count,
        subtotal,
        tax,
        total,
    }
}

/// Parses the `tax_rate` config value (default [`DEFAULT_TAX_RATE`]).
pub fn parse_tax_rate(raw: Option<&str>) -> Result<f64, ProcessError> {
    let raw = raw.unwrap_or(DEFAULT_TAX_RATE);
    match raw.trim().parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate >= 0.0 => Ok(rate),
        _ => Err(ProcessError::BadConfig(format!(
            "tax_rate must be a non-negative decimal number such as \"0.20\", got {raw:?}"
        ))),
    }
}

/// Rounds to 2 decimals, half away from zero.
pub fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn to_json(fields: &Map<String, Value>) -> Vec<u8> {
    // Serialising a map of JSON values cannot fail.
    serde_json::to_vec(fields).expect("JSON map serialises")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(outcome: &Outcome) -> Value {
        let body = match outcome {
            Outcome::Valid { body, .. } | Outcome::Invalid { body, .. } => body,
        };
        serde_json::from_slice(body).unwrap()
    }

    const GOOD: &str = r#"{"order_id":"o-1001","customer_id":"c-7","currency":"EUR","items":[{"sku":"BOOK-1","qty":2,"unit_price":12.5},{"sku":"PEN-3","qty":3,"unit_price":1.99}],"note":"gift"}"#;

    #[test]
    fn valid_order_is_enriched_with_default_tax() {
        let out = process(GOOD.as_bytes(), None).unwrap();
        let Outcome::Valid {
            order_id, total, ..
        } = &out
        else {
            panic!("expected valid, got {out:?}")
        };
        assert_eq!(order_id, "o-1001");
        let v = json(&out);
        assert_eq!(v["item_count"], 5);
        assert_eq!(v["subtotal"], 30.97);
        assert_eq!(v["tax"], 6.19); // 6.194
        assert_eq!(v["total"], 37.16);
        assert_eq!(*total, 37.16);
        assert_eq!(v["processed_by"], "quickstart-orders");
        // The original fields are kept, in their order, including unknown ones.
        assert_eq!(v["note"], "gift");
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(
            &keys[..5],
            ["order_id", "customer_id", "currency", "items", "note"]
        );
    }

    #[test]
    fn tax_rate_comes_from_config() {
        let v = json(&process(GOOD.as_bytes(), Some("0.07")).unwrap());
        assert_eq!(v["tax"], 2.17); // 2.1679
        assert_eq!(v["total"], 33.14);
        let v = json(&process(GOOD.as_bytes(), Some(" 0 ")).unwrap());
        assert_eq!(v["tax"], 0.0);
        assert_eq!(v["total"], 30.97);
    }

    #[test]
    fn bad_tax_rate_is_a_config_error() {
        for bad in ["twenty", "-0.1", "", "NaN", "inf"] {
            let err = process(GOOD.as_bytes(), Some(bad)).unwrap_err();
            assert!(
                matches!(err, ProcessError::BadConfig(_)),
                "{bad:?} → {err:?}"
            );
        }
    }

    #[test]
    fn business_rule_violations_are_all_reported() {
        let payload = r#"{"order_id":"o-9","customer_id":"c-1","currency":"JPY","items":[{"sku":"A","qty":0,"unit_price":1.0},{"sku":"B","qty":1,"unit_price":-2.5}]}"#;
        let out = process(payload.as_bytes(), Some("not used for invalid orders")).unwrap();
        let Outcome::Invalid { reasons, .. } = &out else {
            panic!("expected invalid, got {out:?}")
        };
        assert_eq!(reasons.len(), 3, "{reasons:?}");
        assert!(reasons[0].contains("unknown currency \"JPY\""));
        assert!(reasons[1].contains("qty must be positive"));
        assert!(reasons[2].contains("unit_price must not be negative"));
        let v = json(&out);
        assert_eq!(v["reasons"].as_array().unwrap().len(), 3);
        assert_eq!(v["order_id"], "o-9");
        assert!(v.get("total").is_none());
    }

    #[test]
    fn empty_order_is_invalid() {
        let payload = r#"{"order_id":"o-2","customer_id":"c-1","currency":"USD","items":[]}"#;
        let out = process(payload.as_bytes(), None).unwrap();
        assert!(
            matches!(&out, Outcome::Invalid { reasons, .. } if reasons == &["order has no items"])
        );
    }

    #[test]
    fn malformed_payloads_are_rejected() {
        for payload in [
            r#"{"order_id": oops"#,
            r#"[1,2,3]"#,
            r#"{"order_id":"o-3","customer_id":"c-1","currency":"EUR"}"#,
            r#"{"order_id":"o-3","customer_id":"c-1","currency":"EUR","items":[{"sku":"A","qty":"2","unit_price":1}]}"#,
            r#"{"order_id":"o-3","customer_id":"c-1","currency":"EUR","items":[{"sku":"A","qty":1.5,"unit_price":1}]}"#,
        ] {
            let err = process(payload.as_bytes(), None).unwrap_err();
            assert!(
                matches!(err, ProcessError::Malformed(_)),
                "{payload} → {err:?}"
            );
            assert!(err.to_string().starts_with("malformed order: "));
        }
    }

    #[test]
    fn rounding() {
        assert_eq!(round2(0.1 + 0.2), 0.3);
        assert_eq!(round2(2.675_000_1), 2.68);
        assert_eq!(round2(10.0), 10.0);
    }

    /// The quickstart's sample events classify as its README promises: 8 valid, 2 invalid, 2 malformed.
    #[test]
    fn quickstart_input_classifies() {
        let (mut valid, mut invalid, mut malformed) = (0, 0, 0);
        for line in include_str!("../../input.jsonl").lines() {
            let rec: Value = serde_json::from_str(line).unwrap();
            let payload = match (rec.get("payload"), rec.get("payload_text")) {
                (Some(v), None) => serde_json::to_vec(v).unwrap(),
                (None, Some(Value::String(t))) => t.clone().into_bytes(),
                _ => panic!("bad line {line}"),
            };
            match process(&payload, None) {
                Ok(Outcome::Valid { .. }) => valid += 1,
                Ok(Outcome::Invalid { .. }) => invalid += 1,
                Err(ProcessError::Malformed(_)) => malformed += 1,
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!((valid, invalid, malformed), (8, 2, 2));
    }
}
