//! The JSON Lines wire form of events and records: one JSON object per line.
//!
//! ```text
//! {"id":"evt-1","key":"c-7","payload":{"order_id":"o-1"},"headers":{"content-type":"application/json"},"timestamp_ms":1700000000000}
//! ```
//!
//! | field            | meaning                                                                 |
//! |------------------|-------------------------------------------------------------------------|
//! | `id`             | string; when absent the reader picks one (the file source: `file:line`) |
//! | `key`            | UTF-8 key                                                               |
//! | `key_base64`     | binary key, base64                                                      |
//! | `payload`        | any JSON value; the payload is its exact text as written in the line    |
//! | `payload_text`   | a string; the payload is its UTF-8 bytes                                |
//! | `payload_base64` | binary payload, base64                                                  |
//! | `headers`        | object, header name → UTF-8 value, in the order written                 |
//! | `headers_base64` | array of `[name, base64 value]` pairs (binary values, repeated names)   |
//! | `timestamp_ms`   | integer, milliseconds since the Unix epoch                              |
//! | `target`         | string, a record's [`Record::target`]; informational, ignored on read  |
//!
//! At most one of the key fields, one of the payload fields and one of the header fields may be
//! present; no payload field means an empty payload. Unknown fields are an error, so a misspelt
//! `paylaod` is reported instead of silently becoming an empty payload.
//!
//! The writers pick, per value, the most readable form that still reads back to the exact same
//! bytes: a payload that is itself JSON is written raw, so a JSON event looks natural in the file.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use bytes::Bytes;
use fnmill_connector_api::{Event, Header, OriginValue, Record};
use serde::Deserialize;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

/// Base64 as written: standard alphabet, padded. Reading also accepts it unpadded, because
/// hand-written files and other tools often drop the padding and nothing is ambiguous without it.
const WRITE_BASE64: GeneralPurpose = base64::engine::general_purpose::STANDARD;
const READ_BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Headers with more entries than this are checked for repeated names with a hash set; below it
/// the quadratic scan is cheaper than allocating one (a message usually has a handful).
const HEADER_SCAN_LIMIT: usize = 16;

/// Why a line is not an event.
#[derive(Debug, thiserror::Error)]
pub enum JsonlError {
    /// Not JSON, not an object, a field of the wrong type, or an unknown field.
    #[error("invalid JSON Lines event: {0}")]
    Json(#[from] serde_json::Error),
    /// A `*_base64` field that does not decode.
    #[error("invalid base64 in `{field}`: {source}")]
    Base64 {
        field: &'static str,
        #[source]
        source: base64::DecodeError,
    },
    /// A JSON array: serde would take it as the fields in order, which no one means.
    #[error("invalid JSON Lines event: a line must be a JSON object, not an array")]
    Array,
    /// Two fields that say the same thing (`payload` and `payload_text`, …).
    #[error("at most one of {fields} may be present")]
    Conflict { fields: &'static str },
}

/// One parsed line: the pieces of an [`Event`] (or of a written [`Record`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventLine {
    pub id: Option<String>,
    pub key: Option<Bytes>,
    pub payload: Bytes,
    pub headers: Vec<Header>,
    pub timestamp_ms: Option<i64>,
    /// The `target` a sink wrote for its record; not part of an event.
    pub target: Option<String>,
}

impl EventLine {
    /// Builds the event. `default_id` is called only when the line has no `id`.
    pub fn into_event(
        self,
        source: impl Into<Arc<str>>,
        default_id: impl FnOnce() -> String,
        origin: Vec<(&'static str, OriginValue)>,
    ) -> Event {
        Event {
            id: self.id.unwrap_or_else(default_id),
            source: source.into(),
            key: self.key,
            payload: self.payload,
            headers: self.headers,
            timestamp_ms: self.timestamp_ms,
            origin,
            decode_error: None,
        }
    }
}

/// The line as serde sees it, before the alternatives are resolved.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireLine<'a> {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    key_base64: Option<String>,
    /// Borrowed raw so the payload is the value's exact text; `payload: null` is the payload
    /// `null`, not an absent payload, hence the custom deserializer.
    #[serde(default, borrow, deserialize_with = "present_raw")]
    payload: Option<&'a RawValue>,
    #[serde(default)]
    payload_text: Option<String>,
    #[serde(default)]
    payload_base64: Option<String>,
    #[serde(default)]
    headers: Option<OrderedHeaders>,
    #[serde(default)]
    headers_base64: Option<Vec<(String, String)>>,
    #[serde(default)]
    timestamp_ms: Option<i64>,
    #[serde(default)]
    target: Option<String>,
}

fn present_raw<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// A JSON object of string values kept in the order written (a map type would reorder them and
/// fold repeated names).
struct OrderedHeaders(Vec<(String, String)>);

impl<'de> Deserialize<'de> for OrderedHeaders {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OrderedHeaders;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object of header name to string value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut headers = Vec::with_capacity(map.size_hint().unwrap_or(0));
                while let Some(entry) = map.next_entry::<String, String>()? {
                    headers.push(entry);
                }
                Ok(OrderedHeaders(headers))
            }
        }
        d.deserialize_map(V)
    }
}

fn decode(field: &'static str, text: &str) -> Result<Bytes, JsonlError> {
    READ_BASE64
        .decode(text)
        .map(Bytes::from)
        .map_err(|source| JsonlError::Base64 { field, source })
}

/// Parses one line (without or with its trailing newline).
pub fn parse_event(line: &[u8]) -> Result<EventLine, JsonlError> {
    if line.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
        return Err(JsonlError::Array);
    }
    let wire: WireLine<'_> = serde_json::from_slice(line)?;

    let key = match (wire.key, wire.key_base64) {
        (Some(_), Some(_)) => {
            return Err(JsonlError::Conflict {
                fields: "`key`, `key_base64`",
            });
        }
        (Some(text), None) => Some(Bytes::from(text)),
        (None, Some(b64)) => Some(decode("key_base64", &b64)?),
        (None, None) => None,
    };

    let payload = match (wire.payload, wire.payload_text, wire.payload_base64) {
        (Some(raw), None, None) => Bytes::copy_from_slice(raw.get().as_bytes()),
        (None, Some(text), None) => Bytes::from(text),
        (None, None, Some(b64)) => decode("payload_base64", &b64)?,
        (None, None, None) => Bytes::new(),
        _ => {
            return Err(JsonlError::Conflict {
                fields: "`payload`, `payload_text`, `payload_base64`",
            });
        }
    };

    let headers = match (wire.headers, wire.headers_base64) {
        (Some(_), Some(_)) => {
            return Err(JsonlError::Conflict {
                fields: "`headers`, `headers_base64`",
            });
        }
        (Some(OrderedHeaders(pairs)), None) => pairs
            .into_iter()
            .map(|(name, value)| Header::new(name, value))
            .collect(),
        (None, Some(pairs)) => pairs
            .into_iter()
            .map(|(name, b64)| Ok(Header::new(name, decode("headers_base64", &b64)?)))
            .collect::<Result<_, JsonlError>>()?,
        (None, None) => Vec::new(),
    };

    Ok(EventLine {
        id: wire.id,
        key,
        payload,
        headers,
        timestamp_ms: wire.timestamp_ms,
        target: wire.target,
    })
}

/// Appends `record` as one line (ending in `\n`) to `out`.
pub fn write_record(record: &Record, out: &mut Vec<u8>) {
    write_record_to(None, record, out);
}

/// Appends a function output as one line: a `destination` field (the output's destination
/// name), then `record` as [`write_record`] writes it.
pub fn write_output(destination: &str, record: &Record, out: &mut Vec<u8>) {
    write_record_to(Some(destination), record, out);
}

fn write_record_to(destination: Option<&str>, record: &Record, out: &mut Vec<u8>) {
    let mut w = ObjectWriter::begin(out);
    if let Some(destination) = destination {
        w.string("destination", destination);
    }
    w.key(record.key.as_ref());
    w.payload(&record.payload);
    w.headers(&record.headers);
    if let Some(target) = &record.target {
        w.string("target", target);
    }
    w.end();
}

/// Appends `event` as one line (ending in `\n`) to `out`. `source` and `origin` are not written:
/// they describe where fnmill got the event, not the event.
pub fn write_event(event: &Event, out: &mut Vec<u8>) {
    let mut w = ObjectWriter::begin(out);
    w.string("id", &event.id);
    w.key(event.key.as_ref());
    w.payload(&event.payload);
    w.headers(&event.headers);
    if let Some(ts) = event.timestamp_ms {
        w.field("timestamp_ms");
        w.out.extend_from_slice(ts.to_string().as_bytes());
    }
    w.end();
}

/// Writes one JSON object by hand: the raw `payload` cannot go through a serializer without being
/// parsed and re-emitted, which would not keep its bytes.
struct ObjectWriter<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
}

impl<'a> ObjectWriter<'a> {
    fn begin(out: &'a mut Vec<u8>) -> Self {
        out.push(b'{');
        Self { out, first: true }
    }

    fn end(self) {
        self.out.extend_from_slice(b"}\n");
    }

    fn field(&mut self, name: &str) {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        self.json_str(name);
        self.out.push(b':');
    }

    fn json_str(&mut self, s: &str) {
        // Serializing a `str` into a `Vec` has no failure path: no I/O, no non-string keys.
        serde_json::to_writer(&mut *self.out, s).expect("serializing a str into a Vec");
    }

    fn string(&mut self, name: &str, value: &str) {
        self.field(name);
        self.json_str(value);
    }

    fn base64(&mut self, name: &str, value: &[u8]) {
        self.field(name);
        self.out.push(b'"');
        push_base64(self.out, value);
        self.out.push(b'"');
    }

    fn key(&mut self, key: Option<&Bytes>) {
        match key.map(|k| (k, std::str::from_utf8(k))) {
            None => {}
            Some((_, Ok(text))) => self.string("key", text),
            Some((bytes, Err(_))) => self.base64("key_base64", bytes),
        }
    }

    fn payload(&mut self, payload: &[u8]) {
        if payload.is_empty() {
            // No payload field reads back as the empty payload.
        } else if is_exact_json(payload) {
            self.field("payload");
            self.out.extend_from_slice(payload);
        } else if let Ok(text) = std::str::from_utf8(payload) {
            self.string("payload_text", text);
        } else {
            self.base64("payload_base64", payload);
        }
    }

    fn headers(&mut self, headers: &[Header]) {
        if headers.is_empty() {
            return;
        }
        let texts: Option<Vec<&str>> = headers
            .iter()
            .map(|h| std::str::from_utf8(&h.value).ok())
            .collect();
        match texts {
            Some(values) if names_unique(headers) => {
                self.field("headers");
                self.out.push(b'{');
                for (i, (h, value)) in headers.iter().zip(values).enumerate() {
                    if i > 0 {
                        self.out.push(b',');
                    }
                    self.json_str(&h.name);
                    self.out.push(b':');
                    self.json_str(value);
                }
                self.out.push(b'}');
            }
            _ => {
                self.field("headers_base64");
                self.out.push(b'[');
                for (i, h) in headers.iter().enumerate() {
                    if i > 0 {
                        self.out.push(b',');
                    }
                    self.out.push(b'[');
                    self.json_str(&h.name);
                    self.out.extend_from_slice(b",\"");
                    push_base64(self.out, &h.value);
                    self.out.extend_from_slice(b"\"]");
                }
                self.out.push(b']');
            }
        }
    }
}

/// Appends `bytes` as base64, which needs no JSON escaping.
fn push_base64(out: &mut Vec<u8>, bytes: &[u8]) {
    let start = out.len();
    let len = base64::encoded_len(bytes.len(), true).expect("base64 length overflows usize");
    out.resize(start + len, 0);
    let written = WRITE_BASE64
        .encode_slice(bytes, &mut out[start..])
        .expect("buffer sized with encoded_len");
    debug_assert_eq!(written, len);
}

/// Whether `bytes` is one JSON value whose text is exactly `bytes` (no surrounding whitespace)
/// and can sit inside a line (JSON allows newlines only as whitespace between tokens).
fn is_exact_json(bytes: &[u8]) -> bool {
    if bytes.contains(&b'\n') {
        return false;
    }
    match serde_json::from_slice::<&RawValue>(bytes) {
        Ok(raw) => raw.get().len() == bytes.len(),
        Err(_) => false,
    }
}

fn names_unique(headers: &[Header]) -> bool {
    if headers.len() <= HEADER_SCAN_LIMIT {
        headers
            .iter()
            .enumerate()
            .all(|(i, h)| headers[..i].iter().all(|prev| prev.name != h.name))
    } else {
        let mut seen = HashSet::with_capacity(headers.len());
        headers.iter().all(|h| seen.insert(h.name.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(key: Option<&[u8]>, payload: &[u8], headers: Vec<Header>) -> Record {
        Record {
            target: None,
            key: key.map(Bytes::copy_from_slice),
            payload: Bytes::copy_from_slice(payload),
            headers,
        }
    }

    fn written(record: &Record) -> String {
        let mut out = Vec::new();
        write_record(record, &mut out);
        assert_eq!(out.last(), Some(&b'\n'));
        assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1, "one line");
        String::from_utf8(out).expect("a written line is UTF-8")
    }

    /// Writes `record`, reads it back, and checks every byte survived.
    fn round_trip(record: &Record) -> String {
        let line = written(record);
        let back = parse_event(line.as_bytes()).unwrap_or_else(|e| panic!("{line}: {e}"));
        assert_eq!(back.key, record.key, "{line}");
        assert_eq!(back.payload, record.payload, "{line}");
        assert_eq!(back.headers, record.headers, "{line}");
        assert_eq!(back.target, record.target, "{line}");
        line
    }

    #[test]
    fn parses_the_documented_example() {
        let line = br#"{"id":"evt-1","key":"c-7","payload":{"order_id":"o-1"},"headers":{"content-type":"application/json"},"timestamp_ms":1700000000000}"#;
        let e = parse_event(line).unwrap();
        assert_eq!(e.id.as_deref(), Some("evt-1"));
        assert_eq!(e.key.as_deref(), Some(&b"c-7"[..]));
        assert_eq!(&e.payload[..], br#"{"order_id":"o-1"}"#);
        assert_eq!(
            e.headers,
            vec![Header::new("content-type", "application/json")]
        );
        assert_eq!(e.timestamp_ms, Some(1_700_000_000_000));
        assert_eq!(e.target, None);
    }

    #[test]
    fn payload_is_the_raw_text_as_written() {
        let e = parse_event(b"{ \"payload\" :  { \"a\" : [1, 2.50 ,\"\\u00e9\"] } }\n").unwrap();
        assert_eq!(&e.payload[..], br#"{ "a" : [1, 2.50 ,"\u00e9"] }"#);
        assert_eq!(
            &parse_event(br#"{"payload":null}"#).unwrap().payload[..],
            b"null"
        );
        assert_eq!(
            &parse_event(br#"{"payload":"x"}"#).unwrap().payload[..],
            b"\"x\""
        );
        assert_eq!(
            &parse_event(br#"{"payload_text":"x\ny"}"#).unwrap().payload[..],
            b"x\ny"
        );
        assert_eq!(
            &parse_event(br#"{"payload_base64":"AP8"}"#).unwrap().payload[..],
            [0, 255]
        );
        assert!(parse_event(b"{}").unwrap().payload.is_empty());
    }

    #[test]
    fn headers_keep_their_written_order_and_repeats() {
        let e = parse_event(br#"{"headers":{"z":"1","a":"2","m":"3","a":"4"}}"#).unwrap();
        let names: Vec<_> = e.headers.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["z", "a", "m", "a"]);
        let e = parse_event(br#"{"headers_base64":[["b","AA=="],["b","/w=="]]}"#).unwrap();
        assert_eq!(
            e.headers,
            vec![Header::new("b", vec![0u8]), Header::new("b", vec![255u8])]
        );
    }

    #[test]
    fn rejects_conflicts_unknown_fields_and_bad_base64() {
        for (line, want) in [
            (&br#"{"payload":1,"payload_text":"1"}"#[..], "payload_text"),
            (br#"{"key":"a","key_base64":"YQ=="}"#, "key_base64"),
            (br#"{"headers":{},"headers_base64":[]}"#, "headers_base64"),
            (br#"{"paylaod":1}"#, "paylaod"),
            (br#"{"payload_base64":"!!"}"#, "payload_base64"),
            (br#"{"headers":{"a":1}}"#, "string"),
            (b"not json", "expected"),
            (b" [1]", "not an array"),
            (b"1", "expected struct"),
        ] {
            let err = parse_event(line).unwrap_err().to_string();
            assert!(
                err.contains(want),
                "{}: {err}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn json_payload_is_written_raw() {
        let line = round_trip(&record(Some(b"k"), br#"{"a":[1,2.50,"x"]}"#, vec![]));
        assert_eq!(line, "{\"key\":\"k\",\"payload\":{\"a\":[1,2.50,\"x\"]}}\n");
        let line = round_trip(&record(None, b"\"quoted\"", vec![]));
        assert_eq!(line, "{\"payload\":\"quoted\"}\n");
    }

    #[test]
    fn payload_with_surrounding_whitespace_or_newline_is_text() {
        let line = round_trip(&record(None, b" {\"a\":1}", vec![]));
        assert!(
            line.contains("\"payload_text\":\" {\\\"a\\\":1}\""),
            "{line}"
        );
        let line = round_trip(&record(None, b"{\"a\":1}\n", vec![]));
        assert!(line.contains("payload_text"), "{line}");
        let line = round_trip(&record(None, b"{\n\"a\":1}", vec![]));
        assert!(line.contains("payload_text"), "{line}");
        let line = round_trip(&record(None, b"plain text \xc3\xa9 \"q\" \\", vec![]));
        assert!(line.contains("payload_text"), "{line}");
    }

    #[test]
    fn binary_payload_is_base64() {
        let payload: Vec<u8> = (0..=255).collect();
        let line = round_trip(&record(None, &payload, vec![]));
        assert!(line.contains("payload_base64"), "{line}");
        round_trip(&record(None, b"\xff", vec![]));
        round_trip(&record(None, b"", vec![]));
    }

    #[test]
    fn non_utf8_key_is_base64() {
        let line = round_trip(&record(Some(b"\x00\xfe\xff"), b"{}", vec![]));
        assert!(line.contains("\"key_base64\":\"AP7/\""), "{line}");
        round_trip(&record(Some(b""), b"{}", vec![]));
    }

    #[test]
    fn repeated_or_binary_headers_are_base64_pairs() {
        let line = round_trip(&record(
            None,
            b"{}",
            vec![
                Header::new("a", "1"),
                Header::new("b", "2"),
                Header::new("a", "3"),
            ],
        ));
        assert!(line.contains("headers_base64"), "{line}");
        let line = round_trip(&record(
            None,
            b"{}",
            vec![Header::new("ok", "1"), Header::new("bin", vec![0xffu8, 0])],
        ));
        assert!(line.contains("headers_base64"), "{line}");
        let line = round_trip(&record(
            None,
            b"{}",
            vec![Header::new("z", "last\n"), Header::new("a", "")],
        ));
        assert!(
            line.contains(r#""headers":{"z":"last\n","a":""}"#),
            "{line}"
        );
        let many: Vec<_> = (0..40)
            .map(|i| Header::new(format!("h{}", i % 39), "v"))
            .collect();
        let line = round_trip(&record(None, b"{}", many));
        assert!(line.contains("headers_base64"), "{line}");
    }

    #[test]
    fn deep_json_payload_round_trips_raw() {
        let payload = format!("{}{}", "[".repeat(500), "]".repeat(500));
        let line = round_trip(&record(None, payload.as_bytes(), vec![]));
        assert!(line.starts_with("{\"payload\":[[["), "{line}");
    }

    #[test]
    fn target_is_written_and_read_back() {
        let mut r = record(None, b"1", vec![]);
        r.target = Some("out-topic".into());
        let line = round_trip(&r);
        assert!(line.contains("\"target\":\"out-topic\""), "{line}");
    }

    #[test]
    fn event_round_trips_with_id_and_timestamp() {
        let event = Event {
            id: "e-1".into(),
            source: "s".into(),
            key: Some(Bytes::from_static(b"\xff")),
            payload: Bytes::from_static(b"\x00binary"),
            headers: vec![Header::new("n", "v")],
            timestamp_ms: Some(-5),
            origin: vec![("file", "x".into())],
            decode_error: None,
        };
        let mut out = Vec::new();
        write_event(&event, &mut out);
        let back = parse_event(&out).unwrap();
        let rebuilt = back.into_event(
            "s",
            || unreachable!("the line has an id"),
            event.origin.clone(),
        );
        assert_eq!(rebuilt, event);
    }
}
