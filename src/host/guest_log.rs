//! Guest stdout and stderr as log lines, tagged with the function and the event id.
//!
//! Each complete line the guest writes becomes one `tracing` event at INFO (stdout) or WARN
//! (stderr). A partial last line is emitted when the instance is dropped. Nothing is buffered
//! without bound: a line longer than [`MAX_LINE`] is emitted in pieces.

use std::sync::Arc;

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// Longest line kept before it is emitted in pieces.
const MAX_LINE: usize = 16 * 1024;

#[derive(Clone, Copy, Debug)]
pub(super) enum Stream {
    Stdout,
    Stderr,
}

/// Handed to WASI as the guest's stdout/stderr. Creating it costs two `Arc` clones; the line
/// buffer exists only once the guest actually writes.
pub(super) struct GuestLog {
    stream: Stream,
    function: Arc<str>,
    event: Arc<str>,
}

impl GuestLog {
    pub(super) fn new(stream: Stream, function: &Arc<str>, event: &Arc<str>) -> Self {
        Self {
            stream,
            function: function.clone(),
            event: event.clone(),
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
            event: self.event.clone(),
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
    event: Arc<str>,
    line: Vec<u8>,
}

impl LineWriter {
    fn emit(&mut self) {
        let text = String::from_utf8_lossy(&self.line);
        let text = text.trim_end_matches(['\n', '\r']);
        let (function, event) = (&*self.function, &*self.event);
        match self.stream {
            Stream::Stdout => tracing::info!(%function, %event, stream = "stdout", "{text}"),
            Stream::Stderr => tracing::warn!(%function, %event, stream = "stderr", "{text}"),
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
