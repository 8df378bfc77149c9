//! Contract: probes filesystem, network, environment, args and stdio, logs the `greeting` config value, and reports each probe as JSON to `out` ("allowed" only if the operation succeeded).

wit_bindgen::generate!({
    path: "../../../wit",
    world: "event-function",
});

use exports::fnmill::function::handler::Guest;
use fnmill::function::config;
use fnmill::function::logging::{self, Level};
use fnmill::function::types::{Error, Event, Header, Output};

struct Capability;

/// "allowed" when the probe succeeded, "denied: <error>" otherwise.
fn verdict<T, E: std::fmt::Display>(result: Result<T, E>) -> String {
    match result {
        Ok(_) => "allowed".to_string(),
        Err(e) => format!("denied: {e}"),
    }
}

/// A JSON string literal (with quotes) for `s`.
fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json_opt(s: Option<&str>) -> String {
    s.map_or_else(|| "null".to_string(), json_str)
}

impl Guest for Capability {
    fn handle(event: Event) -> Result<Vec<Output>, Error> {
        // (a) filesystem
        let file = verdict(std::fs::read("/etc/hostname"));
        let dir = verdict(std::fs::read_dir("/"));
        // (b) network
        let socket = verdict(std::net::TcpStream::connect("127.0.0.1:5432"));
        // (c) environment and arguments
        let env_vars = std::env::vars().count();
        let home = std::env::var("HOME").ok();
        let args = std::env::args().count();
        // stdio
        println!("capability guest stdout line");
        eprintln!("capability guest stderr line");
        // host capabilities
        let greeting = config::get("greeting");
        logging::log(Level::Info, &format!("greeting={greeting:?}"));

        let body = format!(
            "{{\"file\":{},\"dir\":{},\"socket\":{},\"env_vars\":{},\"home\":{},\"args\":{},\"greeting\":{}}}",
            json_str(&file),
            json_str(&dir),
            json_str(&socket),
            env_vars,
            json_opt(home.as_deref()),
            args,
            json_opt(greeting.as_deref()),
        );
        Ok(vec![Output {
            destination: "out".to_string(),
            key: event.key,
            payload: body.into_bytes(),
            headers: vec![Header {
                name: "content-type".to_string(),
                value: b"application/json".to_vec(),
            }],
        }])
    }
}

export!(Capability);
