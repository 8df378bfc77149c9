//! The dead-letter record: the original event, bytes and headers untouched, plus headers that
//! say why it failed (modelled on Kafka Connect's `__connect.errors.*`).
//!
//! | header | value |
//! |---|---|
//! | `fnmill.error.kind` | `retryable`, `fatal`, `trap`, `timeout`, `fuel`, `memory`, `output-limit`, `instantiation` |
//! | `fnmill.error.message` | the error text |
//! | `fnmill.error.function` | the function's name |
//! | `fnmill.error.route` | the route's name |
//! | `fnmill.error.attempts` | attempts made, the first included |
//! | `fnmill.error.event.id` | the event id |
//! | `fnmill.error.source` | the source's name |
//! | `fnmill.error.origin.<name>` | where the event came from: `topic`/`partition`/`offset`, `queue`, `file`/`line` |

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
    let mut headers = event.headers.clone();
    let mut add = |name: &str, value: String| {
        headers.push(Header::new(format!("{HEADER_PREFIX}{name}"), value));
    };
    add("kind", failure.kind().to_string());
    add("message", failure.message());
    add("function", function.to_string());
    add("route", route.to_string());
    add("attempts", attempts.to_string());
    add("event.id", event.id.clone());
    add("source", event.source.clone());
    for (name, value) in &event.origin {
        add(&format!("origin.{name}"), value.clone());
    }
    Record {
        target,
        key: event.key.clone(),
        payload: event.payload.clone(),
        headers,
    }
}
