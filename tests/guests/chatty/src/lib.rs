//! Contract: writes `lines` lines (config, default 10000) of `size` bytes (config, default 100)
//! to stdout, one line with a forged log line and a terminal escape to stderr, and logs the same
//! through `logging.log`; then fails with `fatal` whose message is `error_bytes` bytes (config,
//! default 10 MiB) starting with `chatty error` and holding a newline and an escape code.

wit_bindgen::generate!({
    path: "../../../wit",
    world: "event-function",
});

use std::io::Write;

use exports::fnmill::function::handler::Guest;
use fnmill::function::config;
use fnmill::function::logging::{Level, log};
use fnmill::function::types::{Error, Event, Output};

struct Chatty;

fn config_usize(key: &str, default: usize) -> usize {
    config::get(key)
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

impl Guest for Chatty {
    fn handle(_event: Event) -> Result<Vec<Output>, Error> {
        let lines = config_usize("lines", 10_000);
        let size = config_usize("size", 100);
        let line = "x".repeat(size);
        let mut out = std::io::stdout();
        for i in 0..lines {
            let _ = writeln!(out, "{i} {line}");
        }
        let forged = "chatty stderr\n2026-01-01T00:00:00Z ERROR forged line \u{1b}[31mred";
        let _ = writeln!(std::io::stderr(), "{forged}");
        log(Level::Info, forged);
        let mut message = String::from("chatty error\nsecond line \u{1b}[2J");
        let error_bytes = config_usize("error_bytes", 10 * 1024 * 1024);
        while message.len() < error_bytes {
            message.push('e');
        }
        Err(Error::Fatal(message))
    }
}

export!(Chatty);
