//! AMQP header tables ↔ fnmill headers.
//!
//! fnmill headers are `(name, bytes)` pairs; an AMQP header table maps names to typed values.
//! Byte and string values pass through unchanged; numbers, booleans and timestamps become their
//! decimal text (so `x-delivery-count = 2` reads as `"2"`); arrays and nested tables (`x-death`)
//! become JSON text. On the way out every header is written as a long string (bytes), so a
//! string header survives a round trip byte for byte; a typed one comes back as its text. A table
//! has one value per name: of repeated names the last wins.

use bytes::Bytes;
use fnmill_connector_api::Header;
use lapin::types::{AMQPValue, FieldTable};

pub(crate) fn from_table(table: Option<&FieldTable>) -> Vec<Header> {
    let Some(table) = table else {
        return Vec::new();
    };
    table
        .inner()
        .iter()
        .map(|(name, value)| Header::new(name.as_str(), value_bytes(value)))
        .collect()
}

pub(crate) fn to_table(headers: &[Header]) -> FieldTable {
    let mut table = FieldTable::default();
    for h in headers {
        table.insert(
            h.name.as_str().into(),
            AMQPValue::LongString(h.value.to_vec().into()),
        );
    }
    table
}

fn value_bytes(value: &AMQPValue) -> Bytes {
    match value {
        AMQPValue::LongString(s) => Bytes::copy_from_slice(s.as_bytes()),
        AMQPValue::ShortString(s) => Bytes::copy_from_slice(s.as_str().as_bytes()),
        AMQPValue::ByteArray(b) => Bytes::copy_from_slice(b.as_slice()),
        other => Bytes::from(json(other).to_string()),
    }
}

fn json(value: &AMQPValue) -> serde_json::Value {
    use serde_json::Value;
    match value {
        AMQPValue::Boolean(b) => Value::Bool(*b),
        AMQPValue::ShortShortInt(n) => (*n).into(),
        AMQPValue::ShortShortUInt(n) => (*n).into(),
        AMQPValue::ShortInt(n) => (*n).into(),
        AMQPValue::ShortUInt(n) => (*n).into(),
        AMQPValue::LongInt(n) => (*n).into(),
        AMQPValue::LongUInt(n) => (*n).into(),
        AMQPValue::LongLongInt(n) => (*n).into(),
        AMQPValue::Float(f) => (*f).into(),
        AMQPValue::Double(f) => (*f).into(),
        AMQPValue::DecimalValue(d) => Value::String(format!("{}e-{}", d.value, d.scale)),
        AMQPValue::ShortString(s) => Value::String(s.as_str().to_string()),
        AMQPValue::LongString(s) => Value::String(String::from_utf8_lossy(s.as_bytes()).into()),
        AMQPValue::FieldArray(a) => Value::Array(a.as_slice().iter().map(json).collect()),
        AMQPValue::Timestamp(t) => (*t).into(),
        AMQPValue::FieldTable(t) => Value::Object(
            t.inner()
                .iter()
                .map(|(k, v)| (k.as_str().to_string(), json(v)))
                .collect(),
        ),
        AMQPValue::ByteArray(b) => Value::String(String::from_utf8_lossy(b.as_slice()).into()),
        AMQPValue::Void => Value::Null,
    }
}

/// The header named `name`, if present.
pub(crate) fn find<'a>(headers: &'a [Header], name: &str) -> Option<&'a Bytes> {
    headers.iter().find(|h| h.name == name).map(|h| &h.value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_round_trip_and_typed_values_become_text() {
        let headers = vec![Header::new("a", "1"), Header::new("bin", vec![0u8, 0xff])];
        let table = to_table(&headers);
        assert_eq!(from_table(Some(&table)), headers);

        let mut table = FieldTable::default();
        table.insert("x-delivery-count".into(), AMQPValue::LongLongInt(2));
        table.insert("flag".into(), AMQPValue::Boolean(true));
        let back = from_table(Some(&table));
        assert_eq!(find(&back, "x-delivery-count").unwrap(), &Bytes::from("2"));
        assert_eq!(find(&back, "flag").unwrap(), &Bytes::from("true"));
    }
}
