//! Contract: returns `count` outputs (config, default 1000) to `out`, each with a payload of `size` bytes (config, default 16).

// Linked for its allocator, which takes the initial memory before growing it.
use fnmill_sdk as _;

wit_bindgen::generate!({
    path: "../../../wit",
    world: "event-function",
});

use exports::fnmill::function::handler::Guest;
use fnmill::function::config;
use fnmill::function::types::{Error, Event, Output};

struct Flood;

fn config_usize(key: &str, default: usize) -> usize {
    config::get(key)
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

impl Guest for Flood {
    fn handle(event: Event) -> Result<Vec<Output>, Error> {
        let count = config_usize("count", 1000);
        let size = config_usize("size", 16);
        let outputs = (0..count)
            .map(|_| Output {
                destination: "out".to_string(),
                key: event.key.clone(),
                payload: vec![b'x'; size],
                headers: Vec::new(),
            })
            .collect();
        Ok(outputs)
    }
}

export!(Flood);
