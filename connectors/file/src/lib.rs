//! JSON Lines in and out of fnmill: a [`FileSource`] that reads events from a file (or stdin)
//! and keeps a durable checkpoint, and a [`FileSink`] that appends records to a file (or stdout).
//!
//! Files make fnmill usable without a broker: replay a captured stream, run a batch, collect
//! outputs and dead letters next to the input. The source gives the same at-least-once promise
//! as the Kafka one: a line counts as consumed only once its delivery settled as done or
//! dead-lettered, and everything after the checkpoint is read again after a crash.
//!
//! # Layout
//!
//! - [`jsonl`]: the wire form, one JSON object per line, shared with the CLI's `invoke`.
//! - [`source`]: [`FileSource`], which lends each line out and advances its checkpoint over the
//!   contiguous prefix of settled lines.
//! - [`sink`]: [`FileSink`], which batches concurrent publishes into one append each.
//! - `checkpoint`: the checkpoint file (position and file identity), replaced atomically, and
//!   the lock that keeps two processes off one input.

use std::path::PathBuf;

use fnmill_connector_api::{Problem, SourceError};

mod checkpoint;
#[doc(hidden)]
pub mod fuzzing;
pub mod jsonl;
pub mod sink;
pub mod source;

pub use sink::{FileSink, FileSinkConfig};
pub use source::{FileSource, FileSourceConfig};

/// The path that means standard input (source) or standard output (sink).
pub const STDIO_PATH: &str = "-";

/// What can go wrong building or running a file source or sink.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// A config problem (what the config's `check` reports), naming the key.
    #[error("{0}")]
    Invalid(Problem),
    /// Another process reads the same input with the same checkpoint.
    #[error(
        "another fnmill is already reading {} (it holds the lock {}); stop it, or give this \
         source its own `checkpoint`",
        path.display(),
        lock.display()
    )]
    Locked { path: PathBuf, lock: PathBuf },
    #[error("I/O error on {what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "checkpoint {} is corrupt ({source}); fix it, or delete it to read {} again from the start",
        checkpoint.display(),
        path.display()
    )]
    CorruptCheckpoint {
        checkpoint: PathBuf,
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "checkpoint {} is at byte {offset} but {} has only {len} bytes: the file was truncated \
         or replaced; delete the checkpoint to read it from the start",
        checkpoint.display(),
        path.display()
    )]
    CheckpointPastEnd {
        checkpoint: PathBuf,
        path: PathBuf,
        offset: u64,
        len: u64,
    },
}

impl FileError {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            what: what.into(),
            source,
        }
    }
}

pub type Result<T, E = FileError> = std::result::Result<T, E>;

impl From<FileError> for SourceError {
    fn from(err: FileError) -> Self {
        match err {
            FileError::Io { what, source } => SourceError::Io { what, source },
            other => SourceError::Other(other.to_string()),
        }
    }
}
