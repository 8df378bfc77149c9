//! Contract: allocates and touches memory in 1 MiB chunks until allocation fails (abort → trap); with config `mib = N` it allocates only N MiB and then echoes to `out`.

// Linked for its allocator, which takes the initial memory before growing it.
use fnmill_sdk as _;

wit_bindgen::generate!({
    path: "../../../wit",
    world: "event-function",
});

use core::hint::black_box;
use exports::fnmill::function::handler::Guest;
use fnmill::function::config;
use fnmill::function::types::{Error, Event, Output};

const MIB: usize = 1024 * 1024;

struct Memhog;

/// One 1 MiB chunk filled with a non-zero byte, so every page of it is really written (a zeroed
/// allocation could be served by fresh, untouched `memory.grow` pages).
fn chunk() -> Vec<u8> {
    black_box(vec![0xA5u8; MIB])
}

impl Guest for Memhog {
    fn handle(event: Event) -> Result<Vec<Output>, Error> {
        let limit = config::get("mib").and_then(|v| v.trim().parse::<usize>().ok());
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        match limit {
            Some(n) => {
                for _ in 0..n {
                    hoard.push(chunk());
                }
                black_box(&hoard);
                Ok(vec![Output {
                    destination: "out".to_string(),
                    key: event.key,
                    payload: event.payload,
                    headers: event.headers,
                }])
            }
            None => loop {
                // Runs until the allocator cannot grow memory; the allocation failure aborts.
                hoard.push(chunk());
                black_box(&hoard);
            },
        }
    }
}

export!(Memhog);
