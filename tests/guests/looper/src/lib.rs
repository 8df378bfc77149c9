//! Contract: never returns; spins in an infinite loop that the optimiser cannot remove (tests epoch/fuel interruption).

// Linked for its allocator, which takes the initial memory before growing it.
use fnmill_sdk as _;

wit_bindgen::generate!({
    path: "../../../wit",
    world: "event-function",
});

use core::hint::black_box;
use exports::fnmill::function::handler::Guest;
use fnmill::function::types::{Error, Event, Output};

struct Looper;

impl Guest for Looper {
    fn handle(_event: Event) -> Result<Vec<Output>, Error> {
        let mut counter: u64 = 0;
        loop {
            counter = black_box(counter.wrapping_add(1));
        }
    }
}

export!(Looper);
