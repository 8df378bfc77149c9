//! Guest stdout and stderr as log lines, tagged with the function and the event id, within a
//! per-event budget.
//!
//! Each complete line the guest writes becomes one `tracing` event at INFO (stdout) or WARN
//! (stderr). A partial last line is emitted when the instance is dropped. Nothing is buffered
//! without bound: a line longer than [`MAX_LINE`] is emitted in pieces. A guest's text is
//! untrusted: control characters are escaped, so a newline cannot forge a log line nor an escape
//! sequence colour a terminal, and each event may log at most its function's `max_log_bytes` and
//! `max_log_lines` (stdout, stderr and `logging.log` together); what is over is dropped, counted,
//! and reported once when the event ends.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

use super::failure::push_escaped;

/// Longest line kept before it is emitted in pieces.
const MAX_LINE: usize = 16 * 1024;

#[derive(Clone, Copy, Debug)]
pub(super) enum Stream {
    Stdout,
    Stderr,
}

/// How much one event may log.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LogLimits {
    pub bytes: u64,
    pub lines: u32,
}

/// What one event may still log, and what it tried to log beyond that.
#[derive(Debug)]
pub(crate) struct LogBudget {
    limits: LogLimits,
    bytes: AtomicU64,
    lines: AtomicU64,
    dropped_bytes: AtomicU64,
    dropped_lines: AtomicU64,
}

impl LogBudget {
    pub(super) fn new(limits: LogLimits) -> Self {
        Self {
            limits,
            bytes: AtomicU64::new(0),
            lines: AtomicU64::new(0),
            dropped_bytes: AtomicU64::new(0),
            dropped_lines: AtomicU64::new(0),
        }
    }

    /// The line to log, escaped, if the budget still has room for it; counts it either way.
    pub(super) fn admit(&self, text: &str) -> Option<String> {
        let len = text.len() as u64;
        let lines = self.lines.fetch_add(1, Ordering::Relaxed) + 1;
        let bytes = self.bytes.fetch_add(len, Ordering::Relaxed) + len;
        if lines > u64::from(self.limits.lines) || bytes > self.limits.bytes {
            self.dropped_lines.fetch_add(1, Ordering::Relaxed);
            self.dropped_bytes.fetch_add(len, Ordering::Relaxed);
            return None;
        }
        let mut out = String::with_capacity(text.len());
        for c in text.chars() {
            push_escaped(&mut out, c);
        }
        Some(out)
    }

    /// Logs, once, how much of the event's output was dropped.
    pub(super) fn report(&self, function: &str, event: &str) {
        let lines = self.dropped_lines.load(Ordering::Relaxed);
        if lines > 0 {
            tracing::warn!(
                %function,
                %event,
                dropped_lines = lines,
                dropped_bytes = self.dropped_bytes.load(Ordering::Relaxed),
                max_log_lines = self.limits.lines,
                max_log_bytes = self.limits.bytes,
                "Guest log output over its limit for this event; the rest was dropped"
            );
        }
    }
}

/// The event an instance handles now, and its log budget; a reused instance gets a new one
/// per event.
pub(crate) struct Current {
    pub event: Arc<str>,
    pub budget: Arc<LogBudget>,
}

/// Handed to WASI as the guest's stdout/stderr. Creating it costs two `Arc` clones; the line
/// buffer exists only once the guest actually writes.
pub(super) struct GuestLog {
    stream: Stream,
    function: Arc<str>,
    current: Arc<Mutex<Current>>,
}

impl GuestLog {
    pub(super) fn new(stream: Stream, function: &Arc<str>, current: &Arc<Mutex<Current>>) -> Self {
        Self {
            stream,
            function: function.clone(),
            current: current.clone(),
        }
    }
}

impl IsTerminal for GuestLog {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestLog {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(LineWriter {
            stream: self.stream,
            function: self.function.clone(),
            current: self.current.clone(),
            line: Vec::new(),
        })
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        // Only WASIp3 guests ask for this; they get their output discarded rather than mixed
        // into fnmill's own stdout.
        Box::new(tokio::io::sink())
    }
}

struct LineWriter {
    stream: Stream,
    function: Arc<str>,
    current: Arc<Mutex<Current>>,
    line: Vec<u8>,
}

impl LineWriter {
    fn emit(&mut self) {
        let text = String::from_utf8_lossy(&self.line);
        let text = text.trim_end_matches(['\n', '\r']);
        let (event, budget) = {
            let current = self.current.lock().unwrap_or_else(|p| p.into_inner());
            (current.event.clone(), current.budget.clone())
        };
        if let Some(text) = budget.admit(text) {
            let (function, event) = (&*self.function, &*event);
            match self.stream {
                Stream::Stdout => tracing::info!(%function, %event, stream = "stdout", "{text}"),
                Stream::Stderr => tracing::warn!(%function, %event, stream = "stderr", "{text}"),
            }
        }
        self.line.clear();
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for LineWriter {
    async fn ready(&mut self) {}
}

impl OutputStream for LineWriter {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        for chunk in bytes.split_inclusive(|b| *b == b'\n') {
            self.line.extend_from_slice(chunk);
            if chunk.ends_with(b"\n") || self.line.len() >= MAX_LINE {
                self.emit();
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(MAX_LINE)
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        if !self.line.is_empty() {
            self.emit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_drops_and_counts_what_is_over_and_escapes_the_rest() {
        let budget = LogBudget::new(LogLimits {
            bytes: 10,
            lines: 2,
        });
        assert_eq!(budget.admit("a\u{1b}[2J").as_deref(), Some("a\\u{1b}[2J"));
        assert_eq!(budget.admit("0123456789"), None, "over the bytes");
        assert_eq!(budget.admit("x"), None, "over the lines");
        assert_eq!(budget.dropped_lines.load(Ordering::Relaxed), 2);
        assert_eq!(budget.dropped_bytes.load(Ordering::Relaxed), 11);
    }
}
