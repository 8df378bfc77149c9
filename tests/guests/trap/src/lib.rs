//! Contract: panics with "guest panicked on purpose"; with `panic = "abort"` this is a WebAssembly trap.

// Linked for its allocator, which takes the initial memory before growing it.
use fnmill_sdk as _;

wit_bindgen::generate!({
    path: "../../../wit",
    world: "event-function",
});

use exports::fnmill::function::handler::Guest;
use fnmill::function::types::{Error, Event, Output};

struct Trap;

impl Guest for Trap {
    fn handle(_event: Event) -> Result<Vec<Output>, Error> {
        panic!("guest panicked on purpose");
    }
}

export!(Trap);
