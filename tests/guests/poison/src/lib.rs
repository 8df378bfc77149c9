//! Contract: fails with `error::fatal` ("poison message") when the payload contains the bytes
//! `poison`; otherwise returns exactly one output to `out` with the event's key, payload and
//! headers unchanged, like `echo`.

// Linked for its allocator, which takes the initial memory before growing it.
use fnmill_sdk as _;

wit_bindgen::generate!({
    path: "../../../wit",
    world: "event-function",
});

use exports::fnmill::function::handler::Guest;
use fnmill::function::types::{Error, Event, Output};

struct Poison;

impl Guest for Poison {
    fn handle(event: Event) -> Result<Vec<Output>, Error> {
        if event.payload.windows(6).any(|w| w == b"poison") {
            return Err(Error::Fatal(format!("poison message (event {})", event.id)));
        }
        Ok(vec![Output {
            destination: "out".to_string(),
            key: event.key,
            payload: event.payload,
            headers: event.headers,
        }])
    }
}

export!(Poison);
