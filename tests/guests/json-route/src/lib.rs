//! Contract: parses the payload as one JSON document (`serde_json::Value`); if it parses,
//! returns exactly one output to `out` with the event's key, payload and headers unchanged,
//! like `echo`; otherwise fails with `error::fatal` ("not JSON: …"), so the event is
//! dead-lettered. The Kafka benchmark's fnmill side of the job its Kafka Streams peer does.

// Linked for its allocator, which takes the initial memory before growing it.
use fnmill_sdk as _;

wit_bindgen::generate!({
    path: "../../../wit",
    world: "event-function",
});

use exports::fnmill::function::handler::Guest;
use fnmill::function::types::{Error, Event, Output};

struct JsonRoute;

impl Guest for JsonRoute {
    fn handle(event: Event) -> Result<Vec<Output>, Error> {
        // The whole document is parsed (not only checked), as a real function would before
        // looking at its fields; the Kafka Streams peer builds a Jackson tree the same way.
        if let Err(e) = serde_json::from_slice::<serde_json::Value>(&event.payload) {
            return Err(Error::Fatal(format!("not JSON: {e}")));
        }
        Ok(vec![Output {
            destination: "out".to_string(),
            key: event.key,
            payload: event.payload,
            headers: event.headers,
        }])
    }
}

export!(JsonRoute);
