//! Contract: always fails with `error::fatal` whose message contains "always fatal".

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
