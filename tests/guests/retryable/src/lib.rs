//! Contract: fails with `error::retryable` while `attempt < succeed_on_attempt` (config, default 3), then echoes to `out` with header `attempt`.

// Linked for its allocator, which takes the initial memory before growing it.
use fnmill_sdk as _;

wit_bindgen::generate!({
    path: "../../../wit",
    world: "event-function",
});

use exports::fnmill::function::handler::Guest;
use fnmill::function::config;
use fnmill::function::types::{Error, Event, Header, Output};

const DEFAULT_SUCCEED_ON_ATTEMPT: u32 = 3;

struct Retryable;

impl Guest for Retryable {
    fn handle(event: Event) -> Result<Vec<Output>, Error> {
        let n = config::get("succeed_on_attempt")
            .and_then(|v| v.trim().parse::<u32>().ok())
            .unwrap_or(DEFAULT_SUCCEED_ON_ATTEMPT);
        let a = event.attempt;
        if a < n {
            return Err(Error::Retryable(format!("attempt {a} of {n}")));
        }
        let mut headers = event.headers;
        headers.push(Header {
            name: "attempt".to_string(),
            value: a.to_string().into_bytes(),
        });
        Ok(vec![Output {
            destination: "out".to_string(),
            key: event.key,
            payload: event.payload,
            headers,
        }])
    }
}

export!(Retryable);
