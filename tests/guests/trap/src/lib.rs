//! Contract: panics with "guest panicked on purpose"; with `panic = "abort"` this is a WebAssembly trap.

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
