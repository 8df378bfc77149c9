//! The dead-letter record: the original event, bytes and headers untouched, plus headers that
//! say why it failed (modelled on Kafka Connect's `__connect.errors.*`).
//!
//! | header | value |
//! |---|---|
//! | `fnmill.error.kind` | `retryable`, `fatal`, `trap`, `timeout`, `fuel`, `memory`, `output-limit`, `instantiation`, `decode`, `host` |
//! | `fnmill.error.message` | the error text (at most 4 KiB, control characters escaped) |
//! | `fnmill.error.function` | the function's name |
//! | `fnmill.error.route` | the route's name |
//! | `fnmill.error.attempts` | attempts made, the first included (0 for `decode`: the function never ran) |
//! | `fnmill.error.event.id` | the event id |
//! | `fnmill.error.source` | the source's name |
//! | `fnmill.error.origin.<name>` | where the event came from: `topic`/`partition`/`offset`, `queue`, `file`/`line` |
//!
//! Headers of the incoming event that already start with `fnmill.error.` are dropped first: an
//! event cannot bring its own (spoofed, or stale from an earlier failure) reasons along.

use fnmill_connector_api::{Event, Header, Record};

use crate::host::Failure;

/// Prefix of every header fnmill adds to a dead letter.
pub const HEADER_PREFIX: &str = "fnmill.error.";

pub fn dead_letter_record(
    event: &Event,
    target: Option<String>,
    failure: &Failure,
    function: &str,
    route: &str,
    attempts: u32,
) -> Record {
    let mut headers: Vec<Header> = event
        .headers
        .iter()
        .filter(|h| !h.name.starts_with(HEADER_PREFIX))
        .cloned()
        .collect();
    let mut add = |name: &str, value: String| {
        headers.push(Header::new(format!("{HEADER_PREFIX}{name}"), value));
    };
    add("kind", failure.kind().to_string());
    add("message", crate::host::sanitize(&failure.message()));
    add("function", function.to_string());
    add("route", route.to_string());
    add("attempts", attempts.to_string());
    add("event.id", event.id.clone());
    add("source", event.source.to_string());
    for (name, value) in &event.origin {
        add(&format!("origin.{name}"), value.to_string());
    }
    Record {
        target,
        key: event.key.clone(),
        payload: event.payload.clone(),
        headers,
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    #[test]
    fn incoming_error_headers_are_dropped_before_the_real_ones_are_added() {
        let mut event = Event::new("e1", "in", Bytes::from_static(b"{}"));
        event.headers = vec![
            Header::new("fnmill.error.kind", "forged"),
            Header::new("trace", "t1"),
            Header::new("fnmill.error.route", "elsewhere"),
        ];
        event.origin = vec![("file", "in.jsonl".into()), ("line", "3".into())];
        let record = dead_letter_record(&event, None, &Failure::Fatal("bad".into()), "f", "r", 1);
        let kinds: Vec<_> = record
            .headers
            .iter()
            .filter(|h| h.name == "fnmill.error.kind")
            .map(|h| h.value.clone())
            .collect();
        assert_eq!(kinds, vec![Bytes::from_static(b"fatal")]);
        assert_eq!(record.headers[0], Header::new("trace", "t1"));
        assert!(
            record
                .headers
                .iter()
                .any(|h| h.name == "fnmill.error.origin.line" && h.value == "3")
        );
        assert!(
            !record
                .headers
                .iter()
                .any(|h| h.value == "elsewhere" || h.value == "forged")
        );
    }
}
