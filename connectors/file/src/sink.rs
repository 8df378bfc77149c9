//! [`FileSink`]: appends records as JSON Lines to a file (or stdout).
//!
//! Every publish is queued to one writer thread, which takes whatever is queued, serializes it
//! into one buffer and appends it with one `write_all` (plus one fsync when configured), then
//! confirms every publisher of that batch. Concurrent publishers therefore share write calls, and
//! each publish's records land contiguous and in order. Records are written in the order they
//! were queued, so the sink implements [`Sink::enqueue`]: the pipeline may start a key's next
//! event once this one's records are queued. The writer is a plain thread because
//! every step is a blocking syscall; it also means the sink needs no particular async runtime.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};

use fnmill_connector_api::{Confirm, Problem, Record, Sink, SinkError, Unconfirmed};
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

    /// Whether the sink writes standard output.
    pub fn is_stdout(&self) -> bool {
        self.path.as_os_str() == STDIO_PATH
    }

    /// Makes `path` absolute against `base_dir` (`-` stays standard output).
    pub fn resolve_paths(&mut self, base_dir: &Path) {
        if !self.is_stdout() && self.path.is_relative() && !self.path.as_os_str().is_empty() {
            self.path = base_dir.join(&self.path);
        }
    }

    /// Everything [`FileSink::new`] would refuse, each naming its key, checked without
    /// creating anything: the file must be writable, or creatable in a folder that exists or
    /// can be created.
    pub fn check(&self) -> Vec<Problem> {
        let path = &self.path;
        if path.as_os_str().is_empty() {
            return vec![Problem::new(
                "path",
                "must not be empty (use \"-\" for standard output)",
            )];
        }
        if self.is_stdout() {
            return Vec::new();
        }
        let problem = |message: String| vec![Problem::new("path", message)];
        match fs::metadata(path) {
            Ok(m) if m.is_dir() => return problem(format!("{} is a directory", path.display())),
            Ok(_) => {
                return match OpenOptions::new().append(true).open(path) {
                    Ok(_) => Vec::new(),
                    Err(e) => problem(format!("{} cannot be written: {e}", path.display())),
                };
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return problem(format!("{}: {e}", path.display())),
        }
        not_creatable(path).map(problem).unwrap_or_default()
    }
}

/// Why the missing file `path` could not be created, if it could not: the nearest folder that
/// exists must let this process create what is missing below it.
pub(crate) fn not_creatable(path: &Path) -> Option<String> {
    let mut folder = path.parent();
    while let Some(dir) = folder {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        match fs::metadata(dir) {
            Ok(m) if m.is_dir() => {
                return (!writable_dir(dir)).then(|| {
                    format!(
                        "{} cannot be created: folder {} is not writable",
                        path.display(),
                        dir.display()
                    )
                });
            }
            Ok(_) => {
                return Some(format!(
                    "{} cannot be created: {} is not a folder",
                    path.display(),
                    dir.display()
                ));
            }
            Err(_) => folder = dir.parent(),
        }
    }
    None
}

/// Whether this process may create files in `dir`.
#[cfg(unix)]
fn writable_dir(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: a NUL-terminated path; access(2) only reads it.
    unsafe { libc::access(path.as_ptr(), libc::W_OK | libc::X_OK) == 0 }
}

#[cfg(not(unix))]
fn writable_dir(dir: &Path) -> bool {
    !fs::metadata(dir).map_or(true, |m| m.permissions().readonly())
}

enum Command {
    Write {
        records: Vec<Record>,
        confirm: Confirm,
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
        if let Some(p) = config.check().into_iter().next() {
            return Err(FileError::Invalid(p));
        }
        let output = if config.is_stdout() {
            Output::Stdout { gone: false }
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
    /// One writer takes the queue in order, so what is queued first is written first, whatever
    /// the lane.
    fn enqueue<'a>(
        &'a self,
        records: &'a [Record],
        _lane: u64,
        confirm: Confirm,
    ) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            if records.is_empty() {
                confirm(Ok(()));
                return Ok(());
            }
            let records = records.to_vec();
            self.commands
                .send(Command::Write { records, confirm })
                .await
                .map_err(|_| closed())
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
    /// Standard output; `gone` once its reader went away (`EPIPE`): nothing can be written to
    /// it again.
    Stdout { gone: bool },
    File {
        path: PathBuf,
        /// `None` after a failed write: reopened for the next batch, in case the failure was the
        /// file being removed or its descriptor going bad.
        file: Option<File>,
        fsync: bool,
    },
}

impl Output {
    fn write(&mut self, buf: &[u8]) -> Result<(), SinkError> {
        let result = match self {
            Output::Stdout { gone: true } => {
                return Err(SinkError::Gone("standard output is closed".into()));
            }
            Output::Stdout { gone } => {
                let mut out = io::stdout().lock();
                let result = out.write_all(buf).and_then(|()| out.flush());
                if let Err(e) = &result
                    && e.kind() == io::ErrorKind::BrokenPipe
                {
                    // The reader went away (`fnmill run … | head`): retrying cannot help.
                    *gone = true;
                    return Err(SinkError::Gone(format!("writing standard output: {e}")));
                }
                result
            }
            Output::File { path, file, fsync } => {
                let f = match file {
                    Some(f) => f,
                    None => match open_for_append(path) {
                        Ok(f) => file.insert(f),
                        Err(e) => {
                            return Err(SinkError::Retryable(format!(
                                "opening {}: {e}",
                                path.display()
                            )));
                        }
                    },
                };
                let result = f
                    .write_all(buf)
                    .and_then(|()| if *fsync { f.sync_data() } else { Ok(()) });
                if result.is_err() {
                    *file = None;
                }
                result
            }
        };
        result.map_err(|err| {
            let message = format!("writing {}: {err}", self.display());
            error!(error = %message, "File sink write failed");
            SinkError::Retryable(message)
        })
    }

    fn display(&self) -> String {
        match self {
            Output::Stdout { .. } => "stdout".into(),
            Output::File { path, .. } => path.display().to_string(),
        }
    }
}

/// Opens `path` for append, first ending a partial last line left by a writer killed mid-write,
/// so the next record starts on its own line instead of corrupting both.
fn open_for_append(path: &Path) -> io::Result<File> {
    let mut file = OpenOptions::new().create(true).append(true).open(path)?;
    if ends_with_partial_line(path)? {
        warn!(file = %path.display(), "File ends with a partial line; ending it before appending");
        file.write_all(b"\n")?;
    }
    Ok(file)
}

fn ends_with_partial_line(path: &Path) -> io::Result<bool> {
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
                Command::Write { records, confirm } => {
                    for record in &records {
                        jsonl::write_record(record, &mut buf);
                    }
                    // Kept to hand back should the write fail.
                    waiters.push((confirm, records));
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
            output.write(&buf)
        };
        for (confirm, records) in waiters.drain(..) {
            confirm(match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(Unconfirmed::new(e.clone(), records)),
            });
        }
        buf.clear();
        // Do not keep a buffer grown by one huge batch for the life of the sink.
        if buf.capacity() > MAX_BATCH_BYTES * 2 {
            buf.shrink_to(MAX_BATCH_BYTES);
        }

        if let Some(done) = close {
            let _ = done.send(result.map_err(|e| e.to_string()));
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;

    use bytes::Bytes;
    use fnmill_connector_api::Header;

    use super::*;

    fn record(payload: String) -> Record {
        Record {
            target: None,
            key: None,
            payload: Bytes::from(payload),
            headers: vec![],
        }
    }

    fn read_lines(path: &Path) -> Vec<jsonl::EventLine> {
        fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| jsonl::parse_event(l.as_bytes()).unwrap_or_else(|e| panic!("{l}: {e}")))
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_publishes_are_written_once_each_contiguous_and_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        let sink = Arc::new(FileSink::new(FileSinkConfig::new(&path)).unwrap());

        let (tasks, calls) = (16u64, 200u64);
        let mut handles = Vec::new();
        for t in 0..tasks {
            let sink = sink.clone();
            handles.push(tokio::spawn(async move {
                for c in 0..calls {
                    let records = (0..1 + (t + c) % 4)
                        .map(|r| record(format!("{{\"t\":{t},\"c\":{c},\"r\":{r}}}")))
                        .collect();
                    sink.publish(records).await.unwrap();
                }
            }));
        }
        for h in handles {
            h.await.unwrap();
        }
        sink.close().await.unwrap();

        let lines = read_lines(&path);
        let expected: u64 = (0..tasks)
            .flat_map(|t| (0..calls).map(move |c| 1 + (t + c) % 4))
            .sum();
        assert_eq!(lines.len() as u64, expected);
        let mut seen: HashMap<(u64, u64), u64> = HashMap::new();
        let mut i = 0;
        while i < lines.len() {
            let v: serde_json::Value = serde_json::from_slice(&lines[i].payload).unwrap();
            let (t, c) = (v["t"].as_u64().unwrap(), v["c"].as_u64().unwrap());
            let n = 1 + (t + c) % 4;
            // The whole call, in order, right here.
            for r in 0..n {
                let v: serde_json::Value = serde_json::from_slice(&lines[i].payload).unwrap();
                assert_eq!(
                    (v["t"].as_u64(), v["c"].as_u64(), v["r"].as_u64()),
                    (Some(t), Some(c), Some(r))
                );
                i += 1;
            }
            *seen.entry((t, c)).or_default() += 1;
        }
        assert_eq!(seen.len() as u64, tasks * calls);
        assert!(seen.values().all(|&n| n == 1), "a call was written twice");
    }

    #[tokio::test]
    async fn close_writes_everything_queued_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/dir/out.jsonl");
        let sink = FileSink::new(FileSinkConfig {
            path: path.clone(),
            fsync: true,
        })
        .unwrap();

        // Queue publishes without waiting for their confirmation, then close.
        let mut pending = Vec::new();
        for i in 0..50 {
            let mut publish = sink.publish(vec![record(format!("{i}"))]);
            assert!(futures::poll!(&mut publish).is_pending());
            pending.push(publish);
        }
        sink.close().await.unwrap();
        let lines = read_lines(&path);
        let payloads: Vec<_> = lines.iter().map(|l| l.payload.clone()).collect();
        let want: Vec<_> = (0..50).map(|i| Bytes::from(format!("{i}"))).collect();
        assert_eq!(payloads, want);
        for publish in pending {
            publish.await.unwrap();
        }

        let err = sink.publish(vec![record("late".into())]).await.unwrap_err();
        assert!(err.is_retryable(), "{err}");
        sink.close().await.unwrap();
    }

    #[tokio::test]
    async fn records_read_back_byte_for_byte() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        let sink = FileSink::new(FileSinkConfig::new(&path)).unwrap();
        let r = Record {
            target: Some("dlq".into()),
            key: Some(Bytes::from_static(b"\xff\x00")),
            payload: Bytes::from_static(b"\x00\x01 binary"),
            headers: vec![Header::new("a", "1"), Header::new("a", vec![0xfeu8])],
        };
        sink.publish(vec![r.clone()]).await.unwrap();
        sink.close().await.unwrap();
        let back = read_lines(&path).pop().unwrap();
        assert_eq!(back.target, r.target);
        assert_eq!(back.key, r.key);
        assert_eq!(back.payload, r.payload);
        assert_eq!(back.headers, r.headers);
    }

    #[tokio::test]
    async fn a_partial_last_line_is_ended_before_appending() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        fs::write(&path, b"{\"payload\":1}\n{\"payl").unwrap();
        let sink = FileSink::new(FileSinkConfig::new(&path)).unwrap();
        sink.publish(vec![record("2".into())]).await.unwrap();
        sink.close().await.unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(text, "{\"payload\":1}\n{\"payl\n{\"payload\":2}\n");
    }

    #[test]
    fn config_rejects_unknown_fields() {
        let config: FileSinkConfig = serde_json::from_str(r#"{"path":"o.jsonl"}"#).unwrap();
        assert_eq!(config, FileSinkConfig::new("o.jsonl"));
        let err = serde_json::from_str::<FileSinkConfig>(r#"{"path":"o","fsnyc":true}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("fsnyc"), "{err}");
    }
}
