//! Contract: increments a global counter on every call and returns it as decimal text to `out` (always "1" with a fresh instance per event).

wit_bindgen::generate!({
    path: "../../../wit",
    world: "event-function",
});

use core::sync::atomic::{AtomicU64, Ordering};
use exports::fnmill::function::handler::Guest;
use fnmill::function::types::{Error, Event, Output};

static COUNTER: AtomicU64 = AtomicU64::new(0);

struct Counter;

impl Guest for Counter {
    fn handle(event: Event) -> Result<Vec<Output>, Error> {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst) + 1;
        Ok(vec![Output {
            destination: "out".to_string(),
            key: event.key,
            payload: n.to_string().into_bytes(),
            headers: Vec::new(),
        }])
    }
}

export!(Counter);
