//! Every way handling an event can go wrong, named: [`Failure`] is what the pipeline retries,
//! dead-letters or holds, and what the dead letter's `fnmill.error.kind` header says.

use std::path::PathBuf;
use std::time::Duration;

/// Longest failure message kept (a dead-letter header, a log line): a guest's error text is
/// untrusted and may be megabytes long.
pub const MAX_MESSAGE: usize = 4096;

/// Why handling an event failed. Every way a call can go wrong lands in exactly one of these.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// The function returned `error::retryable`.
    #[error("retryable: {0}")]
    Retryable(String),
    /// The function returned `error::fatal`.
    #[error("fatal: {0}")]
    Fatal(String),
    /// The guest trapped (a panic, `unreachable`, out-of-bounds access, stack overflow...).
    #[error("trap ({code}): {message}")]
    Trap { code: String, message: String },
    /// The call ran longer than the function's `timeout`.
    #[error("timeout: the call ran longer than {0:?}")]
    Timeout(Duration),
    /// The call used up its fuel.
    #[error("fuel: the call used more than {0} units of fuel")]
    Fuel(u64),
    /// The guest tried to grow its memory past the function's `memory` limit and then failed.
    #[error("memory: the guest needed more than its limit of {0} bytes")]
    Memory(u64),
    /// The function returned too many outputs or too many bytes.
    #[error("output limit: {0}")]
    OutputLimit(String),
    /// The instance could not be created.
    #[error("instantiation: {0}")]
    Instantiation(String),
    /// The source could not decode what it received into an event (a line that is not JSON
    /// Lines); the function never ran.
    #[error("decode: {0}")]
    Decode(String),
    /// fnmill's own host code failed (a panic, an internal error) — not the guest's doing, so
    /// the event is retried, not dead-lettered as if the function had failed on it.
    #[error("host fault: {0}")]
    Host(String),
}

impl Failure {
    /// A stable, short name for metrics, headers and exit messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Failure::Retryable(_) => "retryable",
            Failure::Fatal(_) => "fatal",
            Failure::Trap { .. } => "trap",
            Failure::Timeout(_) => "timeout",
            Failure::Fuel(_) => "fuel",
            Failure::Memory(_) => "memory",
            Failure::OutputLimit(_) => "output-limit",
            Failure::Instantiation(_) => "instantiation",
            Failure::Decode(_) => "decode",
            Failure::Host(_) => "host",
        }
    }

    /// Whether trying the same event again may succeed. Traps, timeouts, fuel and memory
    /// exhaustion are treated as deterministic: retrying a guest that loops or panics on an
    /// event only burns compute and holds its key's lane.
    pub fn is_retryable(&self) -> bool {
        match self {
            Failure::Retryable(_) | Failure::Instantiation(_) | Failure::Host(_) => true,
            Failure::Fatal(_)
            | Failure::Trap { .. }
            | Failure::Timeout(_)
            | Failure::Fuel(_)
            | Failure::Memory(_)
            | Failure::OutputLimit(_)
            | Failure::Decode(_) => false,
        }
    }

    /// The failure's message without its kind.
    pub fn message(&self) -> String {
        match self {
            Failure::Retryable(m)
            | Failure::Fatal(m)
            | Failure::OutputLimit(m)
            | Failure::Instantiation(m)
            | Failure::Decode(m)
            | Failure::Host(m) => m.clone(),
            Failure::Trap { code, message } => format!("{code}: {message}"),
            Failure::Timeout(limit) => format!("the call ran longer than {limit:?}"),
            Failure::Fuel(fuel) => format!("the call used more than {fuel} units of fuel"),
            Failure::Memory(bytes) => {
                format!("the guest needed more than its limit of {bytes} bytes")
            }
        }
    }
}

/// Where in a call a wasmtime error came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stage {
    /// Creating the instance.
    Instantiation,
    /// Running the handler.
    Call,
}

/// `text` cut to at most [`MAX_MESSAGE`] bytes (at a character boundary), saying how much was
/// cut, and with control characters escaped so that it cannot forge a log line or carry
/// terminal escape codes.
pub fn sanitize(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(MAX_MESSAGE) + 32);
    let mut taken = 0;
    for (i, c) in text.char_indices() {
        if out.len() >= MAX_MESSAGE {
            out.push_str(&format!(" … ({} more bytes)", text.len() - i));
            return out;
        }
        taken = i + c.len_utf8();
        push_escaped(&mut out, c);
    }
    debug_assert_eq!(taken, text.len());
    out
}

/// Pushes `c`, escaping control characters (`\n`, `\r`, `\t`, ESC and the rest) as Rust does.
pub fn push_escaped(out: &mut String, c: char) {
    if c.is_control() {
        out.extend(c.escape_default());
    } else {
        out.push(c);
    }
}

/// Errors loading a function.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read component {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not a valid WebAssembly component: {message}", path.display())]
    Compile { path: PathBuf, message: String },
    #[error("{} does not implement the fnmill:function/event-function world: {message}", path.display())]
    World { path: PathBuf, message: String },
    /// A grant names a data source or bucket that is not there.
    #[error("{0}")]
    Grant(String),
}

/// Errors creating the host.
#[derive(Debug, thiserror::Error)]
#[error("cannot create the wasm engine: {0}")]
pub struct EngineError(pub(crate) String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_capped_and_escaped() {
        let forged = "bad\n2026-01-01T00:00:00Z INFO forged line \u{1b}[31mred";
        assert_eq!(
            sanitize(forged),
            "bad\\n2026-01-01T00:00:00Z INFO forged line \\u{1b}[31mred"
        );
        let huge = "x".repeat(10 * 1024 * 1024);
        let cut = sanitize(&huge);
        assert!(cut.len() < MAX_MESSAGE + 64, "{}", cut.len());
        assert!(cut.ends_with(&format!("({} more bytes)", huge.len() - MAX_MESSAGE)));
        let multibyte = "é".repeat(MAX_MESSAGE);
        assert!(sanitize(&multibyte).is_char_boundary(MAX_MESSAGE));
    }

    #[test]
    fn a_host_fault_is_retried_and_a_decode_failure_is_not() {
        assert!(Failure::Host("panic".into()).is_retryable());
        assert!(!Failure::Decode("bad".into()).is_retryable());
        assert_eq!(
            Failure::Timeout(Duration::from_secs(1)).message(),
            "the call ran longer than 1s"
        );
    }
}
