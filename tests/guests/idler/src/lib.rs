//! Contract: waits `ms` milliseconds (config, default 500) on the WASI monotonic clock, like
//! `sleeper`, then echoes the event to `out`; built WASI-free (`wasm32-unknown-unknown`), so its
//! component imports only `config` and `wasi:clocks/monotonic-clock` (and the pollable it returns).

// Linked for its allocator, which takes the initial memory before growing it.
use fnmill_sdk as _;

wit_bindgen::generate!({
    path: ["../../../wit", "wit"],
    world: "fnmill-test:idler/idler",
    generate_all,
});

use exports::fnmill::function::handler::Guest;
use fnmill::function::config;
use fnmill::function::types::{Error, Event, Output};
use wasi::clocks::monotonic_clock;

struct Idler;

impl Guest for Idler {
    fn handle(event: Event) -> Result<Vec<Output>, Error> {
        let ms: u64 = config::get("ms")
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(500);
        monotonic_clock::subscribe_duration(ms * 1_000_000).block();
        Ok(vec![Output {
            destination: "out".to_string(),
            key: event.key,
            payload: event.payload,
            headers: event.headers,
        }])
    }
}

export!(Idler);
