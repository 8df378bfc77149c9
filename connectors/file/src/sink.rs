//! [`FileSink`]: appends records as JSON Lines to a file (or stdout).
//!
//! Every publish is queued to one writer thread, which takes whatever is queued, serializes it
//! into one buffer and appends it with one `write_all` (plus one fsync when configured), then
//! confirms every publisher of that batch. Concurrent publishers therefore share write calls, and
//! each publish's records land contiguous and in order. The writer is a plain thread because
//! every step is a blocking syscall; it also means the sink needs no particular async runtime.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read as _, Seek as _, SeekFrom, Write as _};
use std::path::PathBuf;

use fnmill_connector_api::{Record, Sink, SinkError};
use futures::future::BoxFuture;
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};
use tracing::{error, warn};

use crate::{FileError, STDIO_PATH, jsonl};

/// Publishes the writer takes into one write at most. Bounds the latency of the first publisher
/// in a batch and the size of the buffer; at a few records per publish, a batch is far past the
/// point where syscall cost matters.
const MAX_BATCH_PUBLISHES: usize = 4096;

/// Bytes after which a batch is written even if more publishes are queued, for the same reason.
const MAX_BATCH_BYTES: usize = 8 * 1024 * 1024;

/// Publishes that may wait for the writer before `publish` itself waits (backpressure): two full
/// batches, so one is queued while the other is written.
const QUEUE_CAPACITY: usize = 2 * MAX_BATCH_PUBLISHES;

/// `sinks.<name>` with `kind = "file"`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSinkConfig {
    /// The JSON Lines file records are appended to, one per line, or `"-"` for standard output.
    /// Created if missing, with its parent directories.
    pub path: PathBuf,
    /// `true`: fsync after every batch, before publishers are confirmed, so confirmed records
    /// survive a power loss. `false` (default): confirmed once written to the operating system,
    /// which already survives fnmill being killed (`kill -9`); only a machine crash can lose the
    /// last moments. Ignored for standard output.
    #[serde(default)]
    pub fsync: bool,
}

impl FileSinkConfig {
    /// A config for `path` with every other field at its default.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            fsync: false,
        }
    }
}

enum Command {
    Write {
        records: Vec<Record>,
        done: oneshot::Sender<Result<(), String>>,
    },
    /// Write everything queued before this, then stop.
    Close {
        done: oneshot::Sender<Result<(), String>>,
    },
}

/// Appends records to a JSON Lines file or stdout. See the module docs for batching.
#[derive(Debug)]
pub struct FileSink {
    commands: mpsc::Sender<Command>,
}

impl FileSink {
    /// Creates the file (and its parent directories) if missing, opens it for append and starts
    /// the writer thread. Needs no async runtime. The thread ends on [`Sink::close`] or when the
    /// sink is dropped.
    pub fn new(config: FileSinkConfig) -> Result<Self, FileError> {
        let output = if config.path.as_os_str() == STDIO_PATH {
            Output::Stdout
        } else {
            if let Some(parent) = config.path.parent()
                && !parent.as_os_str().is_empty()
            {
                fs::create_dir_all(parent).map_err(|err| {
                    FileError::io(format!("creating directory {}", parent.display()), err)
                })?;
            }
            let file = open_for_append(&config.path)
                .map_err(|err| FileError::io(format!("opening {}", config.path.display()), err))?;
            Output::File {
                path: config.path,
                file: Some(file),
                fsync: config.fsync,
            }
        };
        let (commands, queue) = mpsc::channel(QUEUE_CAPACITY);
        std::thread::Builder::new()
            .name("fnmill-file-sink".into())
            .spawn(move || write_loop(queue, output))
            .map_err(|err| FileError::io("starting the file sink writer thread", err))?;
        Ok(Self { commands })
    }
}

fn closed() -> SinkError {
    // Retryable, not permanent: the sink only closes on shutdown, and an event whose output
    // was not written must be abandoned (read again later), not dead-lettered.
    SinkError::Retryable("file sink is closed".into())
}

impl Sink for FileSink {
    fn publish(&self, records: Vec<Record>) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async move {
            if records.is_empty() {
                return Ok(());
            }
            let (done, confirmed) = oneshot::channel();
            self.commands
                .send(Command::Write { records, done })
                .await
                .map_err(|_| closed())?;
            confirmed
                .await
                .map_err(|_| closed())?
                .map_err(SinkError::Retryable)
        })
    }

    fn close(&self) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async move {
            let (done, closed) = oneshot::channel();
            if self.commands.send(Command::Close { done }).await.is_err() {
                // Already closed.
                return Ok(());
            }
            match closed.await {
                Ok(result) => result.map_err(SinkError::Retryable),
                Err(_) => Ok(()),
            }
        })
    }
}

enum Output {
    Stdout,
    File {
        path: PathBuf,
        /// `None` after a failed write: reopened for the next batch, in case the failure was the
        /// file being removed or its descriptor going bad.
        file: Option<File>,
        fsync: bool,
    },
}

impl Output {
    fn write(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Output::Stdout => {
                let mut out = io::stdout().lock();
                out.write_all(buf)?;
                out.flush()
            }
            Output::File { path, file, fsync } => {
                let f = match file {
                    Some(f) => f,
                    None => file.insert(open_for_append(path)?),
                };
                let result =
                    f.write_all(buf)
                        .and_then(|()| if *fsync { f.sync_data() } else { Ok(()) });
                if result.is_err() {
                    *file = None;
                }
                result
            }
        }
    }

    fn display(&self) -> String {
        match self {
            Output::Stdout => "stdout".into(),
            Output::File { path, .. } => path.display().to_string(),
        }
    }
}

/// Opens `path` for append, first ending a partial last line left by a writer killed mid-write,
/// so the next record starts on its own line instead of corrupting both.
fn open_for_append(path: &PathBuf) -> io::Result<File> {
    let mut file = OpenOptions::new().create(true).append(true).open(path)?;
    if ends_with_partial_line(path)? {
        warn!(file = %path.display(), "File ends with a partial line; ending it before appending");
        file.write_all(b"\n")?;
    }
    Ok(file)
}

fn ends_with_partial_line(path: &PathBuf) -> io::Result<bool> {
    let meta = fs::metadata(path)?;
    if !meta.is_file() || meta.len() == 0 {
        return Ok(false);
    }
    let mut file = File::open(path)?;
    file.seek(SeekFrom::End(-1))?;
    let mut last = [0u8];
    file.read_exact(&mut last)?;
    Ok(last[0] != b'\n')
}

/// The writer thread: batch, write, confirm, until closed or every sender is gone.
fn write_loop(mut queue: mpsc::Receiver<Command>, mut output: Output) {
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut waiters = Vec::new();
    while let Some(first) = queue.blocking_recv() {
        let mut close = None;
        let mut next = Some(first);
        while let Some(command) = next.take() {
            match command {
                Command::Write { records, done } => {
                    for record in &records {
                        jsonl::write_record(record, &mut buf);
                    }
                    waiters.push(done);
                }
                Command::Close { done } => {
                    close = Some(done);
                    break;
                }
            }
            if waiters.len() < MAX_BATCH_PUBLISHES && buf.len() < MAX_BATCH_BYTES {
                next = queue.try_recv().ok();
            }
        }

        let result = if buf.is_empty() {
            Ok(())
        } else {
            output.write(&buf).map_err(|err| {
                let message = format!("writing {}: {err}", output.display());
                error!(error = %message, "File sink write failed");
                message
            })
        };
        for done in waiters.drain(..) {
            // A publisher that stopped waiting does not need the answer.
            let _ = done.send(result.clone());
        }
        buf.clear();
        // Do not keep a buffer grown by one huge batch for the life of the sink.
        if buf.capacity() > MAX_BATCH_BYTES * 2 {
            buf.shrink_to(MAX_BATCH_BYTES);
        }

        if let Some(done) = close {
            let _ = done.send(result);
            return;
        }
    }
}
