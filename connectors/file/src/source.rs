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
use fnmill_connector_api::{
    Delivery, Event, Header, Outcome, Readiness, Source, SourceContext, SourceError,
};
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
        Box::pin(async move {
            // The reader sets it once the input is open (a followed file may not exist yet).
            let ready = ctx.ready.clone();
            let result = self.run_to_end(ctx).await.map_err(SourceError::from);
            ready.set(false);
            result
        })
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
            ready: ctx.ready,
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
    /// The earliest abandoned line: the watermark never passes it in this run.
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
                if self.stuck_at.is_some_and(|stuck| line >= stuck) {
                    return;
                }
                let index = (line - self.watermark.line - 1) as usize;
                if outcome.is_acknowledged() {
                    self.slots[index].done = true;
                    self.advance();
                    return;
                }
                if self.stuck_at.is_none() {
                    if self.shutting_down {
                        debug!(file = %self.label, line, "Line abandoned during shutdown");
                    } else {
                        warn!(
                            file = %self.label,
                            line,
                            "Line abandoned; the checkpoint stays before it until restart"
                        );
                    }
                }
                self.stuck_at = Some(line);
                // Lines before it can still move the watermark up to it; from it on, none can.
                self.window.add_permits(self.slots.len() - index);
                self.slots.truncate(index);
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
    /// Set once the input is open.
    ready: Readiness,
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
        self.ready.set(true);
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

#[cfg(test)]
mod tests {
    use std::fs;
    use std::io::Write as _;
    use std::time::Duration;

    use fnmill_connector_api::{Delivery, Outcome, Source, SourceContext, SourceError};
    use tokio::sync::mpsc;
    use tokio::task::JoinHandle;
    use tokio_util::sync::CancellationToken;

    use super::*;

    /// Generous: a deadline, not a wait; tests finish as soon as the condition holds.
    const DEADLINE: Duration = Duration::from_secs(10);

    struct Running {
        rx: mpsc::Receiver<Delivery>,
        shutdown: CancellationToken,
        ready: Readiness,
        handle: JoinHandle<Result<(), SourceError>>,
    }

    impl Running {
        fn start(config: FileSourceConfig, capacity: usize) -> Self {
            let source = FileSource::new("files", config).unwrap();
            let (out, rx) = mpsc::channel(capacity);
            let shutdown = CancellationToken::new();
            let ready = Readiness::default();
            let ctx = SourceContext {
                out,
                shutdown: shutdown.clone(),
                ready: ready.clone(),
            };
            let handle = tokio::spawn(Box::new(source).run(ctx));
            Self {
                rx,
                shutdown,
                ready,
                handle,
            }
        }

        async fn next(&mut self) -> Delivery {
            tokio::time::timeout(DEADLINE, self.rx.recv())
                .await
                .expect("no delivery before the deadline")
                .expect("channel closed")
        }

        async fn take(&mut self, n: usize) -> Vec<Delivery> {
            let mut all = Vec::with_capacity(n);
            for _ in 0..n {
                all.push(self.next().await);
            }
            all
        }

        /// Waits for the pipeline side of the channel to be told no more events come.
        async fn expect_closed(&mut self) {
            let next = tokio::time::timeout(DEADLINE, self.rx.recv()).await;
            assert!(matches!(next, Ok(None)), "expected the channel to close");
        }

        async fn finish(self) -> Result<(), SourceError> {
            tokio::time::timeout(DEADLINE, self.handle)
                .await
                .expect("source did not stop before the deadline")
                .expect("source task panicked")
        }
    }

    fn line(i: usize) -> String {
        format!(
            "{{\"id\":\"e{i}\",\"key\":\"k{}\",\"payload\":{{\"i\":{i}}}}}\n",
            i % 3
        )
    }

    fn write_input(dir: &Path, lines: &[String]) -> PathBuf {
        let path = dir.join("in.jsonl");
        fs::write(&path, lines.concat()).unwrap();
        path
    }

    /// Offset just past line `n` (1-based) of `lines`.
    fn end_of(lines: &[String], n: usize) -> u64 {
        lines[..n].iter().map(|l| l.len() as u64).sum()
    }

    fn checkpoint_of(path: &Path) -> Option<(u64, u64)> {
        let text = fs::read(default_checkpoint_path(path)).ok()?;
        let v: serde_json::Value = serde_json::from_slice(&text).unwrap();
        Some((v["offset"].as_u64().unwrap(), v["line"].as_u64().unwrap()))
    }

    async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + DEADLINE;
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn origin_line(d: &Delivery) -> &str {
        &d.event()
            .origin
            .iter()
            .find(|(k, _)| *k == "line")
            .unwrap()
            .1
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn out_of_order_settlements_checkpoint_the_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let lines: Vec<_> = (1..=500).map(line).collect();
        let path = write_input(dir.path(), &lines);
        let mut run = Running::start(FileSourceConfig::new(&path), 64);

        let mut all = Vec::new();
        while all.len() < lines.len() {
            all.push(run.next().await);
        }
        let first = all[0].event();
        assert_eq!(first.id, "e1");
        assert_eq!(first.source, "files");
        assert_eq!(first.key.as_deref(), Some(&b"k1"[..]));
        assert_eq!(all[0].ordering_key(), first.key.as_ref());
        assert_eq!(&first.payload[..], br#"{"i":1}"#);
        assert_eq!(
            first.origin,
            vec![("file", path.display().to_string()), ("line", "1".into())]
        );
        run.expect_closed().await;

        // Last first; dead-lettered counts as acknowledged too.
        for (i, d) in all.into_iter().enumerate().rev() {
            d.settle(if i % 7 == 0 {
                Outcome::DeadLettered
            } else {
                Outcome::Done
            });
        }
        run.finish().await.unwrap();
        assert_eq!(checkpoint_of(&path), Some((end_of(&lines, 500), 500)));
    }

    #[tokio::test]
    async fn abandoned_line_holds_the_checkpoint_and_is_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let lines: Vec<_> = (1..=10).map(line).collect();
        let path = write_input(dir.path(), &lines);

        let mut run = Running::start(FileSourceConfig::new(&path), 16);
        let all = run.take(10).await;
        for d in all.into_iter().rev() {
            if d.event().id == "e5" {
                drop(d); // abandoned
            } else {
                d.settle(Outcome::Done);
            }
        }
        run.finish().await.unwrap();
        assert_eq!(checkpoint_of(&path), Some((end_of(&lines, 4), 4)));

        // The restart resumes at line 5, numbering lines as in the file.
        let mut run = Running::start(FileSourceConfig::new(&path), 16);
        let again = run.take(6).await;
        let ids: Vec<_> = again.iter().map(|d| d.event().id.clone()).collect();
        assert_eq!(ids, ["e5", "e6", "e7", "e8", "e9", "e10"]);
        assert_eq!(origin_line(&again[0]), "5");
        run.expect_closed().await;
        again.into_iter().for_each(|d| d.settle(Outcome::Done));
        run.finish().await.unwrap();
        assert_eq!(checkpoint_of(&path), Some((end_of(&lines, 10), 10)));
    }

    #[tokio::test]
    async fn resumes_from_a_checkpoint_with_the_right_line_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let lines: Vec<String> = vec![
            "{\"payload\":1}\n".into(),
            "\n".into(),
            "{\"payload\":3}\n".into(),
            "   \n".into(),
            "{\"payload\":5}\n".into(),
            "{\"payload\":6}".into(), // no final newline: still a line when not following
        ];
        let path = write_input(dir.path(), &lines);
        checkpoint::store(
            &default_checkpoint_path(&path),
            Position {
                offset: end_of(&lines, 3),
                line: 3,
            },
        )
        .unwrap();

        let mut run = Running::start(FileSourceConfig::new(&path), 16);
        let got = run.take(2).await;
        run.expect_closed().await;
        assert_eq!(got[0].event().id, "in.jsonl:5");
        assert_eq!(origin_line(&got[0]), "5");
        assert_eq!(&got[0].event().payload[..], b"5");
        assert_eq!(got[1].event().id, "in.jsonl:6");
        assert_eq!(&got[1].event().payload[..], b"6");
        got.into_iter().for_each(|d| d.settle(Outcome::Done));
        run.finish().await.unwrap();
        assert_eq!(checkpoint_of(&path), Some((end_of(&lines, 6), 6)));
    }

    #[tokio::test]
    async fn malformed_line_becomes_an_event_with_a_decode_error() {
        let dir = tempfile::tempdir().unwrap();
        let lines: Vec<String> = vec![
            line(1),
            "not json at all\n".into(),
            "{\"payload\":1,\"bogus\":true}\n".into(),
            line(4),
        ];
        let path = write_input(dir.path(), &lines);
        let mut run = Running::start(FileSourceConfig::new(&path), 16);
        let got = run.take(4).await;

        let bad = got[1].event();
        assert_eq!(bad.id, "in.jsonl:2");
        assert_eq!(bad.key, None);
        assert_eq!(&bad.payload[..], b"not json at all");
        assert_eq!(bad.headers.len(), 1);
        assert_eq!(bad.headers[0].name, DECODE_ERROR_HEADER);
        assert!(!bad.headers[0].value.is_empty());
        let unknown = got[2].event();
        assert_eq!(&unknown.payload[..], lines[2].trim_end().as_bytes());
        let error = String::from_utf8_lossy(&unknown.headers[0].value).into_owned();
        assert!(error.contains("bogus"), "{error}");
        assert_eq!(got[3].event().id, "e4");

        got.into_iter()
            .for_each(|d| d.settle(Outcome::DeadLettered));
        run.finish().await.unwrap();
        assert_eq!(checkpoint_of(&path), Some((end_of(&lines, 4), 4)));
    }

    #[tokio::test]
    async fn without_follow_ends_only_after_every_delivery_settled() {
        let dir = tempfile::tempdir().unwrap();
        let lines: Vec<_> = (1..=3).map(line).collect();
        let path = write_input(dir.path(), &lines);
        let mut run = Running::start(FileSourceConfig::new(&path), 16);
        let mut got = run.take(3).await;
        run.expect_closed().await;

        got.pop().unwrap().settle(Outcome::Done);
        // Two still out: the source must be waiting for them.
        let early = tokio::time::timeout(Duration::from_millis(100), &mut run.handle).await;
        assert!(early.is_err(), "source ended with deliveries unsettled");
        assert_eq!(checkpoint_of(&path), None);

        got.into_iter().for_each(|d| d.settle(Outcome::Done));
        run.finish().await.unwrap();
        assert_eq!(checkpoint_of(&path), Some((end_of(&lines, 3), 3)));
    }

    #[tokio::test]
    async fn follow_picks_up_appended_lines_and_checkpoints_while_running() {
        let dir = tempfile::tempdir().unwrap();
        let lines: Vec<_> = (1..=2).map(line).collect();
        let path = write_input(dir.path(), &lines);
        let mut config = FileSourceConfig::new(&path);
        config.follow = true;
        config.checkpoint_interval = Duration::from_millis(20);
        let mut run = Running::start(config, 16);

        for d in run.take(2).await {
            d.settle(Outcome::Done);
        }
        eventually("the running checkpoint", || {
            checkpoint_of(&path) == Some((end_of(&lines, 2), 2))
        })
        .await;

        // Half a line is not an event yet; the rest of it makes one.
        let mut file = fs::OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"{\"id\":\"late\",").unwrap();
        file.flush().unwrap();
        let early = tokio::time::timeout(Duration::from_millis(300), run.rx.recv()).await;
        assert!(early.is_err(), "a partial line was delivered");
        file.write_all(b"\"payload\":[3]}\n").unwrap();
        let late = run.next().await;
        assert_eq!(late.event().id, "late");
        assert_eq!(&late.event().payload[..], b"[3]");
        assert_eq!(origin_line(&late), "3");
        late.settle(Outcome::Done);

        let len = fs::metadata(&path).unwrap().len();
        eventually("the checkpoint past the appended line", || {
            checkpoint_of(&path) == Some((len, 3))
        })
        .await;
        run.shutdown.cancel();
        run.finish().await.unwrap();
    }

    #[tokio::test]
    async fn follow_waits_for_the_file_to_appear() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("later.jsonl");
        let mut config = FileSourceConfig::new(&path);
        config.follow = true;
        let mut run = Running::start(config, 16);
        assert!(!run.ready.is_ready());
        fs::write(&path, line(1)).unwrap();
        let d = run.next().await;
        assert_eq!(d.event().id, "e1");
        assert!(run.ready.is_ready());
        d.settle(Outcome::Done);
        run.shutdown.cancel();
        let ready = run.ready.clone();
        run.finish().await.unwrap();
        assert!(!ready.is_ready());
        assert_eq!(checkpoint_of(&path), Some((line(1).len() as u64, 1)));
    }

    #[tokio::test]
    async fn shutdown_with_a_full_channel_returns_within_the_drain_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let lines: Vec<_> = (1..=10).map(line).collect();
        let path = write_input(dir.path(), &lines);
        let mut config = FileSourceConfig::new(&path);
        config.drain_timeout = Duration::from_millis(300);
        let run = Running::start(config, 1);

        // The first delivery fills the channel; the source is now blocked sending the second.
        eventually("a full channel", || run.rx.len() == 1).await;
        let started = Instant::now();
        run.shutdown.cancel();
        let Running { rx, handle, .. } = run;
        tokio::time::timeout(DEADLINE, handle)
            .await
            .expect("source did not stop")
            .unwrap()
            .unwrap();
        let took = started.elapsed();
        // It waited for the delivery still in the channel, but no longer than the drain timeout.
        assert!(took >= Duration::from_millis(250), "{took:?}");
        assert!(took < Duration::from_secs(3), "{took:?}");
        assert_eq!(checkpoint_of(&path), None);
        drop(rx);
    }

    #[tokio::test]
    async fn shutdown_drains_settled_work_into_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let lines: Vec<_> = (1..=5).map(line).collect();
        let path = write_input(dir.path(), &lines);
        let mut config = FileSourceConfig::new(&path);
        config.follow = true;
        let mut run = Running::start(config, 16);
        let got = run.take(5).await;
        run.shutdown.cancel();
        // Settled after shutdown began but within the drain: still checkpointed.
        for d in got {
            d.settle(Outcome::Done);
        }
        run.finish().await.unwrap();
        assert_eq!(checkpoint_of(&path), Some((end_of(&lines, 5), 5)));
    }

    #[tokio::test]
    async fn corrupt_checkpoint_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_input(dir.path(), &[line(1)]);
        let cp = default_checkpoint_path(&path);
        fs::write(&cp, b"garbage").unwrap();
        let run = Running::start(FileSourceConfig::new(&path), 16);
        let err = run.finish().await.unwrap_err().to_string();
        assert!(err.contains(&cp.display().to_string()), "{err}");
    }

    #[tokio::test]
    async fn checkpoint_past_the_end_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_input(dir.path(), &[line(1)]);
        checkpoint::store(
            &default_checkpoint_path(&path),
            Position {
                offset: 10_000,
                line: 7,
            },
        )
        .unwrap();
        let run = Running::start(FileSourceConfig::new(&path), 16);
        let err = run.finish().await.unwrap_err().to_string();
        assert!(err.contains("truncated"), "{err}");
    }

    #[test]
    fn tracker_advances_over_contiguous_settlements_only() {
        let window = Arc::new(Semaphore::new(0));
        let mut t = Tracker::new(Position::default(), window.clone(), "t".into());
        let read = |line, lent| Progress::Read {
            line,
            end: line * 10,
            lent,
        };
        let settled = |line, outcome| Progress::Settled { line, outcome };
        for line in 1..=8 {
            // Line 3 is blank: nothing lent, already done.
            t.apply(read(line, line != 3));
        }
        assert_eq!(t.outstanding, 7);
        t.apply(settled(2, Outcome::Done));
        assert_eq!(t.watermark, Position::default());
        t.apply(settled(1, Outcome::Done));
        assert_eq!(
            t.watermark,
            Position {
                offset: 30,
                line: 3
            }
        );
        t.apply(settled(6, Outcome::Abandoned));
        t.apply(settled(7, Outcome::Done));
        t.apply(settled(5, Outcome::DeadLettered));
        assert_eq!(
            t.watermark,
            Position {
                offset: 30,
                line: 3
            }
        );
        t.apply(settled(4, Outcome::Done));
        assert_eq!(
            t.watermark,
            Position {
                offset: 50,
                line: 5
            }
        );
        t.apply(read(9, true));
        t.apply(settled(9, Outcome::Done));
        t.apply(settled(8, Outcome::Done));
        assert_eq!(
            t.watermark,
            Position {
                offset: 50,
                line: 5
            }
        );
        assert_eq!(t.outstanding, 0);
        // Every slot taken was given back to the reader's window.
        assert_eq!(window.available_permits(), 9);
    }

    #[test]
    fn config_parses_durations_and_rejects_unknown_fields() {
        let config: FileSourceConfig = serde_json::from_str(
            r#"{"path":"a.jsonl","follow":true,"checkpoint_interval":"1s 500ms","drain_timeout":"2m"}"#,
        )
        .unwrap();
        assert_eq!(config.checkpoint_interval, Duration::from_millis(1500));
        assert_eq!(config.drain_timeout, Duration::from_secs(120));
        assert!(config.follow);
        let config: FileSourceConfig = serde_json::from_str(r#"{"path":"a.jsonl"}"#).unwrap();
        assert_eq!(config, FileSourceConfig::new("a.jsonl"));
        let err = serde_json::from_str::<FileSourceConfig>(r#"{"path":"a","folow":true}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("folow"), "{err}");
    }

    #[test]
    fn constructor_checks_the_config() {
        let missing = FileSourceConfig::new("/definitely/not/here.jsonl");
        assert!(matches!(
            FileSource::new("s", missing.clone()),
            Err(FileError::NotFound { .. })
        ));
        let mut follow = missing;
        follow.follow = true;
        FileSource::new("s", follow).unwrap();

        let mut stdin = FileSourceConfig::new("-");
        FileSource::new("s", stdin.clone()).unwrap();
        stdin.checkpoint = Some("x".into());
        assert!(matches!(
            FileSource::new("s", stdin),
            Err(FileError::Stdin {
                key: "checkpoint",
                ..
            })
        ));
        let mut zero = FileSourceConfig::new("-");
        zero.checkpoint_interval = Duration::ZERO;
        assert!(matches!(
            FileSource::new("s", zero),
            Err(FileError::ZeroDuration { .. })
        ));
    }
}
