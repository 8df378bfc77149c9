//! Contract: always fails with `error::fatal` whose message contains "always fatal".

// Linked for its allocator, which takes the initial memory before growing it.
use fnmill_sdk as _;

wit_bindgen::generate!({
    path: "../../../wit",
    world: "event-function",
});

use exports::fnmill::function::handler::Guest;
use fnmill::function::types::{Error, Event, Output};

struct Fatal;

impl Guest for Fatal {
    fn handle(event: Event) -> Result<Vec<Output>, Error> {
        Err(Error::Fatal(format!("always fatal (event {})", event.id)))
    }
}

export!(Fatal);
