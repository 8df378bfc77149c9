//! Contract: waits `ms` milliseconds (config, default 500) on the WASI monotonic clock — the
//! instance is suspended, not spinning — then echoes the event to `out` like `echo`.

wit_bindgen::generate!({
    path: "../../../wit",
    world: "event-function",
});

use exports::fnmill::function::handler::Guest;
use fnmill::function::config;
use fnmill::function::types::{Error, Event, Output};

struct Sleeper;

impl Guest for Sleeper {
    fn handle(event: Event) -> Result<Vec<Output>, Error> {
        let ms = config::get("ms")
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(500);
        std::thread::sleep(std::time::Duration::from_millis(ms));
        Ok(vec![Output {
            destination: "out".to_string(),
            key: event.key,
            payload: event.payload,
            headers: event.headers,
        }])
    }
}

export!(Sleeper);
