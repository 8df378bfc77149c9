//! [`FileSource`]: lends out one event per line of a JSON Lines file (or stdin) and advances a
//! durable checkpoint over the contiguous prefix of lines settled as done or dead-lettered.
//!
//! Lines settle out of order (events with different keys run concurrently), so the source keeps
//! the unsettled window in read order and moves the checkpoint only across a gap-free run, the
//! way a Kafka consumer stores offsets. An abandoned line pins the checkpoint before it for the
//! rest of the run; after a restart it and everything after it are read again.
//!
//! One task does the reading and the bookkeeping: the reader future and the settlement loop are
//! polled by one `select!`, settlements first, so the window is always current before more lines
//! are read. Settle closures, called on whatever thread finished the event, only send a message.

use std::path::{Path, PathBuf};
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fnmill_connector_api::{Delivery, Event, Header, Outcome, Source, SourceContext, SourceError};
use futures::future::{BoxFuture, OptionFuture};
use serde::Deserialize;
use std::collections::VecDeque;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncSeekExt, BufReader};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tracing::{debug, error, info, warn};

use crate::checkpoint::{self, Position};
use crate::{FileError, STDIO_PATH, jsonl};

/// Header set on the event made from a line that is not a valid JSON Lines event; its value is
/// the parse error. The payload is then the raw line, so nothing is lost on the way to the
/// dead-letter destination.
pub const DECODE_ERROR_HEADER: &str = "fnmill-decode-error";

/// How often a followed file is checked for appended data: fast enough that a human does not
/// notice the delay, slow enough that an idle source costs nothing measurable.
const FOLLOW_POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Read buffer size: a 256 KiB read is one syscall (and one blocking-pool hop) per ~2,500
/// typical lines, which keeps the reader far above 100k lines/s.
const READ_BUFFER: usize = 256 * 1024;

/// Most lines read but not yet covered by the checkpoint. One slow event otherwise lets the
/// window grow with everything read after it; at 16 bytes a slot this caps it at 16 MiB, and the
/// reader waits for the slow event instead.
const MAX_WINDOW: usize = 1 << 20;

/// Settlement messages handled per loop turn, so a burst does not starve the reader and vice
/// versa.
const PROGRESS_BATCH: usize = 1024;

/// Where `checkpoint_interval` comes from: often enough that a crash re-runs well under a second
/// of work, rarely enough that the fsync it costs is noise.
fn default_checkpoint_interval() -> Duration {
    Duration::from_millis(200)
}

/// Where `drain_timeout` comes from: the same 30 s Kubernetes gives a pod between SIGTERM and
/// SIGKILL, so the drain ends before the kill would.
fn default_drain_timeout() -> Duration {
    Duration::from_secs(30)
}

/// `sources.<name>` with `kind = "file"`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSourceConfig {
    /// The JSON Lines file to read, one event per line, or `"-"` for standard input.
    pub path: PathBuf,
    /// File that records how far the input is processed, so a restart resumes there instead of at
    /// the start. Default: `<path>.checkpoint`. Not allowed with standard input, which cannot be
    /// read again.
    #[serde(default)]
    pub checkpoint: Option<PathBuf>,
    /// `false` (default): read to the end of the file, wait until every event is settled, save the
    /// checkpoint and stop, so `fnmill run` on a file ends by itself. `true`: keep watching the
    /// file for appended lines (every 100 ms) until shutdown; the file need not exist yet. Only
    /// appends are noticed: a truncated or replaced file is not re-read. Not allowed with standard
    /// input, which already waits for more input until it is closed.
    #[serde(default)]
    pub follow: bool,
    /// How often the checkpoint is saved while running, e.g. `"200ms"`. After a crash, at most
    /// the events in flight plus this much work are processed again. Default: `200ms`.
    #[serde(default = "default_checkpoint_interval", with = "humantime_serde")]
    pub checkpoint_interval: Duration,
    /// On shutdown, how long to wait for events already handed to functions to finish before
    /// saving the checkpoint and stopping anyway; unfinished events are read again after the
    /// restart. Default: `30s`.
    #[serde(default = "default_drain_timeout", with = "humantime_serde")]
    pub drain_timeout: Duration,
}

impl FileSourceConfig {
    /// A config for `path` with every other field at its default.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            checkpoint: None,
            follow: false,
            checkpoint_interval: default_checkpoint_interval(),
            drain_timeout: default_drain_timeout(),
        }
    }
}

/// What is read.
#[derive(Debug)]
enum Input {
    Stdin,
    File { path: PathBuf, checkpoint: PathBuf },
}

/// Reads a JSON Lines file (or stdin) and lends each line out as a [`Delivery`].
#[derive(Debug)]
pub struct FileSource {
    name: String,
    input: Input,
    follow: bool,
    checkpoint_interval: Duration,
    drain_timeout: Duration,
}

impl FileSource {
    /// Checks the config; `name` becomes [`Event::source`]. Nothing is opened yet.
    pub fn new(name: impl Into<String>, config: FileSourceConfig) -> Result<Self, FileError> {
        if config.checkpoint_interval.is_zero() {
            return Err(FileError::ZeroDuration {
                key: "checkpoint_interval",
            });
        }
        let input = if config.path.as_os_str() == STDIO_PATH {
            if config.checkpoint.is_some() {
                return Err(FileError::Stdin {
                    key: "checkpoint",
                    reason: "standard input cannot be read again, so there is nothing to resume",
                });
            }
            if config.follow {
                return Err(FileError::Stdin {
                    key: "follow",
                    reason: "standard input is read until it is closed",
                });
            }
            Input::Stdin
        } else {
            if !config.follow && !config.path.exists() {
                return Err(FileError::NotFound { path: config.path });
            }
            let checkpoint = config
                .checkpoint
                .unwrap_or_else(|| default_checkpoint_path(&config.path));
            Input::File {
                path: config.path,
                checkpoint,
            }
        };
        Ok(Self {
            name: name.into(),
            input,
            follow: config.follow,
            checkpoint_interval: config.checkpoint_interval,
            drain_timeout: config.drain_timeout,
        })
    }
}

impl Source for FileSource {
    fn run(self: Box<Self>, ctx: SourceContext) -> BoxFuture<'static, Result<(), SourceError>> {
        Box::pin(async move { self.run_to_end(ctx).await.map_err(SourceError::from) })
    }
}

/// From the reader (a line was read) and the settle closures (a line was settled) to the
/// bookkeeping loop. One channel for both keeps them ordered: a line's `Read` is always queued
/// before its delivery exists, so before its `Settled`.
#[derive(Debug)]
enum Progress {
    Read { line: u64, end: u64, lent: bool },
    Settled { line: u64, outcome: Outcome },
}

/// Why the reader stopped.
#[derive(Debug, PartialEq, Eq)]
enum ReadEnd {
    /// End of input, not following.
    Eof,
    /// `shutdown` was cancelled.
    Shutdown,
    /// The pipeline dropped its receiver.
    Closed,
}

impl FileSource {
    async fn run_to_end(self, ctx: SourceContext) -> Result<(), FileError> {
        let (label, id_prefix, checkpoint_path) = match &self.input {
            Input::Stdin => ("stdin".to_owned(), "stdin".to_owned(), None),
            Input::File { path, checkpoint } => (
                path.display().to_string(),
                path.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| path.display().to_string()),
                Some(checkpoint.clone()),
            ),
        };
        let start = match &self.input {
            Input::Stdin => Position::default(),
            Input::File { path, checkpoint } => {
                checkpoint::load(checkpoint, path)?.unwrap_or_default()
            }
        };
        if start.line > 0 {
            info!(file = %label, line = start.line, offset = start.offset, "Resuming from checkpoint");
        }

        let window = Arc::new(Semaphore::new(MAX_WINDOW));
        let (progress_tx, mut progress_rx) = mpsc::unbounded_channel();
        let reader = LineReader {
            source: self.name.clone(),
            label: label.clone(),
            id_prefix,
            follow: self.follow,
            progress: progress_tx,
            window: window.clone(),
            shutdown: ctx.shutdown.clone(),
        };
        let mut reader = pin!(reader.run(&self.input, start, ctx.out));
        let mut shutdown = pin!(ctx.shutdown.clone().cancelled_owned());
        let mut drain_deadline = pin!(tokio::time::sleep(Duration::ZERO));
        let mut ticker = tokio::time::interval(self.checkpoint_interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);

        let mut tracker = Tracker::new(start, window, label.clone());
        let mut persisted = start;
        let mut writing: Option<JoinHandle<(Position, std::io::Result<()>)>> = None;
        let mut ended: Option<Result<ReadEnd, FileError>> = None;
        let mut draining = false;
        let mut progress_open = true;
        let mut batch = Vec::with_capacity(PROGRESS_BATCH);

        loop {
            if ended.is_some() {
                // The reader queued every `Read` before it returned; apply them before deciding
                // that nothing is outstanding.
                while let Ok(p) = progress_rx.try_recv() {
                    tracker.apply(p);
                }
                if tracker.outstanding == 0 {
                    break;
                }
            }
            tokio::select! {
                biased;
                n = progress_rx.recv_many(&mut batch, PROGRESS_BATCH), if progress_open => {
                    // Zero only once the reader and every settle closure are gone.
                    progress_open = n > 0;
                    for p in batch.drain(..) {
                        tracker.apply(p);
                    }
                }
                _ = &mut shutdown, if !draining => {
                    draining = true;
                    tracker.shutting_down = true;
                    drain_deadline.as_mut().reset(Instant::now() + self.drain_timeout);
                    debug!(file = %label, outstanding = tracker.outstanding, "Shutdown: draining");
                }
                _ = &mut drain_deadline, if draining => {
                    while let Ok(p) = progress_rx.try_recv() {
                        tracker.apply(p);
                    }
                    if tracker.outstanding > 0 {
                        warn!(
                            file = %label,
                            unsettled = tracker.outstanding,
                            timeout = ?self.drain_timeout,
                            "Drain timed out; unsettled lines will be read again after restart"
                        );
                    }
                    break;
                }
                end = &mut reader, if ended.is_none() => {
                    if !matches!(end, Ok(ReadEnd::Eof)) && !draining {
                        // The reader stopped without a shutdown (the pipeline went away or the
                        // file failed): drain as bounded as on shutdown.
                        draining = true;
                        tracker.shutting_down = true;
                        drain_deadline.as_mut().reset(Instant::now() + self.drain_timeout);
                    }
                    ended = Some(end);
                }
                Some(done) = OptionFuture::from(writing.as_mut()), if writing.is_some() => {
                    writing = None;
                    match done {
                        Ok((position, Ok(()))) => persisted = position,
                        Ok((_, Err(err))) => {
                            error!(file = %label, error = %err, "Could not save checkpoint; will retry");
                        }
                        Err(err) => error!(file = %label, error = %err, "Checkpoint writer failed"),
                    }
                }
                _ = ticker.tick(), if writing.is_none() && checkpoint_path.is_some() => {
                    if tracker.watermark != persisted
                        && let Some(path) = &checkpoint_path
                    {
                        writing = Some(spawn_store(path.clone(), tracker.watermark));
                    }
                }
            }
        }

        // Final checkpoint: wait for a save in flight so saves stay in order, then save the
        // newest position.
        if let Some(handle) = writing.take()
            && let Ok((position, Ok(()))) = handle.await
        {
            persisted = position;
        }
        if let Some(path) = &checkpoint_path
            && tracker.watermark != persisted
        {
            let (_, result) =
                spawn_store(path.clone(), tracker.watermark)
                    .await
                    .map_err(|err| {
                        FileError::io(
                            format!("checkpoint {}", path.display()),
                            std::io::Error::other(err),
                        )
                    })?;
            result.map_err(|err| FileError::io(format!("checkpoint {}", path.display()), err))?;
        }
        info!(
            file = %label,
            line = tracker.watermark.line,
            offset = tracker.watermark.offset,
            "File source stopped"
        );
        match ended {
            Some(Err(err)) => Err(err),
            _ => Ok(()),
        }
    }
}

fn spawn_store(path: PathBuf, position: Position) -> JoinHandle<(Position, std::io::Result<()>)> {
    // fsync takes milliseconds; keep it off the runtime's worker threads.
    tokio::task::spawn_blocking(move || (position, checkpoint::store(&path, position)))
}

/// One line read and not yet covered by the watermark.
#[derive(Clone, Copy, Debug)]
struct Slot {
    /// Offset just past the line.
    end: u64,
    done: bool,
}

/// The contiguous-prefix watermark over lines settled in any order.
struct Tracker {
    /// Everything up to here is acknowledged; this is what the checkpoint saves.
    watermark: Position,
    /// Lines after the watermark in read order: `slots[i]` is line `watermark.line + 1 + i`.
    slots: VecDeque<Slot>,
    /// The first abandoned line; once set the watermark stays where it is for this run.
    stuck_at: Option<u64>,
    /// Deliveries lent out and not yet settled: the drain waits for this to reach zero.
    outstanding: u64,
    /// Returns the reader's window permit for every slot that leaves `slots`.
    window: Arc<Semaphore>,
    /// Abandoned deliveries are expected during shutdown, so they are not warned about then.
    shutting_down: bool,
    label: String,
}

impl Tracker {
    fn new(start: Position, window: Arc<Semaphore>, label: String) -> Self {
        Self {
            watermark: start,
            slots: VecDeque::new(),
            stuck_at: None,
            outstanding: 0,
            window,
            shutting_down: false,
            label,
        }
    }

    fn apply(&mut self, progress: Progress) {
        match progress {
            Progress::Read { line, end, lent } => {
                if lent {
                    self.outstanding += 1;
                }
                if self.stuck_at.is_some() {
                    self.window.add_permits(1);
                    return;
                }
                debug_assert_eq!(line, self.watermark.line + 1 + self.slots.len() as u64);
                self.slots.push_back(Slot { end, done: !lent });
                self.advance();
            }
            Progress::Settled { line, outcome } => {
                self.outstanding -= 1;
                if self.stuck_at.is_some() {
                    return;
                }
                if outcome.is_acknowledged() {
                    let index = (line - self.watermark.line - 1) as usize;
                    self.slots[index].done = true;
                    self.advance();
                } else {
                    self.stuck_at = Some(line);
                    if self.shutting_down {
                        debug!(file = %self.label, line, "Line abandoned during shutdown");
                    } else {
                        warn!(
                            file = %self.label,
                            line,
                            "Line abandoned; the checkpoint stays before it until restart"
                        );
                    }
                    // No slot can move the watermark any more: free the window.
                    self.window.add_permits(self.slots.len());
                    self.slots = VecDeque::new();
                }
            }
        }
    }

    fn advance(&mut self) {
        let mut freed = 0;
        while let Some(slot) = self.slots.front()
            && slot.done
        {
            self.watermark = Position {
                offset: slot.end,
                line: self.watermark.line + 1,
            };
            self.slots.pop_front();
            freed += 1;
        }
        if freed > 0 {
            self.window.add_permits(freed);
        }
    }
}

/// The reading half: lines in, deliveries out.
struct LineReader {
    source: String,
    /// The path as shown in logs and in the `file` origin.
    label: String,
    /// The file name, for ids of lines without one (`orders.jsonl:17`).
    id_prefix: String,
    follow: bool,
    progress: mpsc::UnboundedSender<Progress>,
    window: Arc<Semaphore>,
    shutdown: CancellationToken,
}

type Lines = BufReader<Box<dyn AsyncRead + Send + Unpin>>;

impl LineReader {
    /// Reads until end of input (not following), shutdown, or the pipeline going away. Takes
    /// `out` by value so it is dropped on return, which tells the pipeline no more events come.
    async fn run(
        self,
        input: &Input,
        start: Position,
        out: mpsc::Sender<Delivery>,
    ) -> Result<ReadEnd, FileError> {
        let mut cancelled = pin!(self.shutdown.clone().cancelled_owned());
        let Some(mut lines) = self.open(input, start, cancelled.as_mut()).await? else {
            return Ok(ReadEnd::Shutdown);
        };
        let mut position = start;
        let mut buf = Vec::with_capacity(1024);
        loop {
            let read = tokio::select! {
                biased;
                _ = &mut cancelled => return Ok(ReadEnd::Shutdown),
                read = lines.read_until(b'\n', &mut buf) => read,
            };
            read.map_err(|err| FileError::io(format!("reading {}", self.label), err))?;
            // `read_until` appends, so a partial line waiting for its rest stays in `buf`.
            if buf.last() != Some(&b'\n') && (self.follow || buf.is_empty()) {
                if !self.follow {
                    return Ok(ReadEnd::Eof);
                }
                tokio::select! {
                    biased;
                    _ = &mut cancelled => return Ok(ReadEnd::Shutdown),
                    _ = tokio::time::sleep(FOLLOW_POLL_INTERVAL) => continue,
                }
            }
            position = Position {
                offset: position.offset + buf.len() as u64,
                line: position.line + 1,
            };
            // Keep the window bounded; permits come back as the watermark passes lines.
            tokio::select! {
                biased;
                _ = &mut cancelled => return Ok(ReadEnd::Shutdown),
                permit = self.window.acquire() => permit.expect("the window is never closed").forget(),
            }
            let event = self.event(&buf, position.line);
            // Queued before the delivery exists, so it precedes the line's `Settled`.
            let _ = self.progress.send(Progress::Read {
                line: position.line,
                end: position.offset,
                lent: event.is_some(),
            });
            buf.clear();
            let Some(event) = event else { continue };
            let ordering_key = event.key.clone();
            let progress = self.progress.clone();
            let line = position.line;
            let delivery = Delivery::new(event, ordering_key, move |outcome| {
                // The loop is gone only after its drain gave up; the outcome no longer matters.
                let _ = progress.send(Progress::Settled { line, outcome });
            });
            match out.try_send(delivery) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(delivery)) => {
                    // A dropped delivery (here: the send cut short by shutdown) settles as
                    // abandoned, so the line is read again after restart.
                    tokio::select! {
                        biased;
                        _ = &mut cancelled => return Ok(ReadEnd::Shutdown),
                        sent = out.send(delivery) => if sent.is_err() {
                            return Ok(ReadEnd::Closed);
                        },
                    }
                }
                Err(mpsc::error::TrySendError::Closed(_)) => return Ok(ReadEnd::Closed),
            }
            // `try_send` and a buffered read never yield; give the bookkeeping loop (same task)
            // and the rest of the runtime their turn.
            tokio::task::consume_budget().await;
        }
    }

    /// Opens the input at `start`. In follow mode waits for the file to appear; `None` if
    /// shutdown came first.
    async fn open(
        &self,
        input: &Input,
        start: Position,
        mut cancelled: std::pin::Pin<&mut WaitForCancellationFutureOwned>,
    ) -> Result<Option<Lines>, FileError> {
        let (path, checkpoint) = match input {
            Input::Stdin => {
                let stdin: Box<dyn AsyncRead + Send + Unpin> = Box::new(tokio::io::stdin());
                return Ok(Some(BufReader::with_capacity(READ_BUFFER, stdin)));
            }
            Input::File { path, checkpoint } => (path, checkpoint),
        };
        let mut file = loop {
            match tokio::fs::File::open(path).await {
                Ok(file) => break file,
                Err(err) if err.kind() == std::io::ErrorKind::NotFound && self.follow => {
                    tokio::select! {
                        biased;
                        _ = &mut cancelled => return Ok(None),
                        _ = tokio::time::sleep(FOLLOW_POLL_INTERVAL) => {}
                    }
                }
                Err(err) => return Err(FileError::io(format!("opening {}", path.display()), err)),
            }
        };
        if start.offset > 0 {
            let len = file
                .metadata()
                .await
                .map_err(|err| {
                    FileError::io(format!("reading metadata of {}", path.display()), err)
                })?
                .len();
            if start.offset > len {
                return Err(FileError::CheckpointPastEnd {
                    checkpoint: checkpoint.clone(),
                    path: path.clone(),
                    offset: start.offset,
                    len,
                });
            }
            file.seek(std::io::SeekFrom::Start(start.offset))
                .await
                .map_err(|err| FileError::io(format!("seeking in {}", path.display()), err))?;
        }
        let file: Box<dyn AsyncRead + Send + Unpin> = Box::new(file);
        Ok(Some(BufReader::with_capacity(READ_BUFFER, file)))
    }

    /// The event for one line (with its `\n`, if any); `None` for a blank line.
    fn event(&self, raw: &[u8], line: u64) -> Option<Event> {
        if raw.iter().all(u8::is_ascii_whitespace) {
            return None;
        }
        let origin = vec![("file", self.label.clone()), ("line", line.to_string())];
        let default_id = || format!("{}:{line}", self.id_prefix);
        Some(match jsonl::parse_event(raw) {
            Ok(parsed) => parsed.into_event(self.source.as_str(), default_id, origin),
            Err(err) => {
                warn!(file = %self.label, line, error = %err, "Malformed line; passing it on with a decode-error header");
                let text = raw.strip_suffix(b"\n").unwrap_or(raw);
                Event {
                    id: default_id(),
                    source: self.source.clone(),
                    key: None,
                    payload: Bytes::copy_from_slice(text),
                    headers: vec![Header::new(DECODE_ERROR_HEADER, err.to_string())],
                    timestamp_ms: None,
                    origin,
                }
            }
        })
    }
}

/// The checkpoint used when `checkpoint` is not set: `<path>.checkpoint`.
pub fn default_checkpoint_path(path: &Path) -> PathBuf {
    checkpoint::with_suffix(path, ".checkpoint")
}
