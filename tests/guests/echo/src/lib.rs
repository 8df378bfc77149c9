//! Contract: returns exactly one output to `out` with the event's key, payload and headers unchanged (no config, no logging).

// Linked for its allocator, which takes the initial memory before growing it.
use fnmill_sdk as _;

wit_bindgen::generate!({
    path: "../../../wit",
    world: "event-function",
});

use exports::fnmill::function::handler::Guest;
use fnmill::function::types::{Error, Event, Output};

struct Echo;

impl Guest for Echo {
    fn handle(event: Event) -> Result<Vec<Output>, Error> {
        Ok(vec![Output {
            destination: "out".to_string(),
            key: event.key,
            payload: event.payload,
            headers: event.headers,
        }])
    }
}

export!(Echo);
