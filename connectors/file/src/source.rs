//! [`FileSource`]: lends out one event per line of a JSON Lines file (or stdin) and advances a
//! durable checkpoint over the contiguous prefix of lines settled as done or dead-lettered.
//!
//! Lines settle out of order (events with different keys run concurrently), so the source keeps
//! the unsettled lines in an [`OrderedWindow`] and moves the checkpoint only across a gap-free
//! run, the way a Kafka consumer stores offsets. An abandoned line pins the checkpoint before it
//! for the rest of the run; after a restart it and everything after it are read again.
//!
//! # Which file
//!
//! A followed file may be rotated (renamed, and a new one created under its name) or truncated
//! and rewritten. The source tells them apart by the file's device and inode and a hash of its
//! first bytes ([`FileIdentity`]), which the checkpoint records with the position:
//!
//! - **rotated**: at the end of the old file the source finishes it (a last line without a newline
//!   included: it will never be completed) and then reads the new file from its start;
//! - **truncated or rewritten in place**: it reads the file again from its start;
//! - **on restart**, a checkpoint of a file that is no longer under the path resumes that file
//!   where it stopped if it is still in the same folder (rotated, e.g. `in.jsonl.1`), then reads
//!   the new one from its start; a file that was rewritten is read from its start.
//!
//! Reading never starts in the middle of a line: a checkpoint that does not fall just after a
//! newline is not trusted. A last line without a newline is a line still being written: it is
//! left unread (the checkpoint stays before it) until its newline arrives, unless
//! `unterminated_last_line = "process"`.
//!
//! One task does the reading and the bookkeeping: the reader future and the settlement loop are
//! polled by one `select!`, settlements first, so the window is current before more lines are
//! read. A lock file next to the checkpoint keeps a second fnmill from reading the same input.

use std::collections::VecDeque;
use std::fs;
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use fnmill_connector_api::settlement::{self, OrderedWindow, Seq, Settled, Settler};
use fnmill_connector_api::throttle::Throttle;
use fnmill_connector_api::warn_throttled;
use fnmill_connector_api::{
    Event, OriginValue, Outbox, Problem, Readiness, Source, SourceContext, SourceError,
};
use futures::future::{BoxFuture, OptionFuture};
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncSeekExt, BufReader};
use tokio::sync::Semaphore;
use tokio::sync::mpsc::error::TrySendError;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tracing::{debug, error, info, warn};

use crate::checkpoint::{self, Checkpoint, FileIdentity, Lock};
use crate::{FileError, STDIO_PATH, jsonl};

/// How often a followed file is checked for appended data, rotation and truncation: fast enough
/// that a human does not notice the delay, slow enough that an idle source costs nothing
/// measurable.
const FOLLOW_POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Read buffer size: a 256 KiB read is one syscall (and one blocking-pool hop) per ~2,500
/// typical lines, which keeps the reader far above 100k lines/s.
const READ_BUFFER: usize = 256 * 1024;

/// Most lines read but not yet covered by the checkpoint. One slow event otherwise lets the
/// window grow with everything read after it; at 32 bytes a slot this caps it at 32 MiB, and the
/// reader waits for the slow event instead.
const MAX_WINDOW: usize = 1 << 20;

/// Settlements handled per loop turn, so a burst does not starve the reader and vice versa.
const SETTLE_BATCH: usize = 1024;

/// The UTF-8 byte-order mark some editors put at the start of a file; it is not part of the JSON.
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// Where `checkpoint_interval` comes from: often enough that a crash re-runs well under a second
/// of work, rarely enough that the fsync it costs is noise.
fn default_checkpoint_interval() -> Duration {
    Duration::from_millis(200)
}

/// Where `drain_timeout` comes from: below the default 20 s `runtime.shutdown_grace`, so the
/// drain ends, and the checkpoint is saved, before the process gives up on its tasks.
fn default_drain_timeout() -> Duration {
    Duration::from_secs(15)
}

/// What to do with a last line that has no newline when the input ends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnterminatedLastLine {
    /// Leave it unread, with the checkpoint before it: a writer is probably still writing it,
    /// and the next run reads it once it is complete. Logged.
    #[default]
    Leave,
    /// Treat it as a complete line (for files that simply lack a final newline).
    Process,
}

/// `sources.<name>` with `kind = "file"`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSourceConfig {
    /// The JSON Lines file to read, one event per line, or `"-"` for standard input.
    pub path: PathBuf,
    /// File that records how far the input is processed (and which file it was), so a restart
    /// resumes there instead of at the start. Default: `<path>.checkpoint`. A lock file
    /// `<checkpoint>.lock` next to it keeps a second fnmill from reading the same input. Not
    /// allowed with standard input, which cannot be read again.
    #[serde(default)]
    pub checkpoint: Option<PathBuf>,
    /// `false` (default): read to the end of the file, wait until every event is settled, save the
    /// checkpoint and stop, so `fnmill run` on a file ends by itself. `true`: keep watching the
    /// file for appended lines (every 100 ms) until shutdown; the file need not exist yet. A
    /// rotated file (renamed, a new one created) is finished, then the new one is read from its
    /// start; a truncated or rewritten file is read again from its start. Not allowed with
    /// standard input, which already waits for more input until it is closed.
    #[serde(default)]
    pub follow: bool,
    /// How often the checkpoint is saved while running, e.g. `"200ms"`. After a crash, at most
    /// the events in flight plus this much work are processed again. Default: `200ms`.
    #[serde(default = "default_checkpoint_interval", with = "humantime_serde")]
    pub checkpoint_interval: Duration,
    /// On shutdown, how long to wait for events already handed to functions to finish before
    /// saving the checkpoint and stopping anyway; unfinished events are read again after the
    /// restart. Default: `15s` (below the default 20 s `runtime.shutdown_grace`).
    #[serde(default = "default_drain_timeout", with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// A last line without a newline at the end of the input (without `follow`): `"leave"`
    /// (default) leaves it unread, with the checkpoint before it, as a line still being
    /// written; `"process"` reads it as a complete line.
    #[serde(default)]
    pub unterminated_last_line: UnterminatedLastLine,
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
            unterminated_last_line: UnterminatedLastLine::default(),
        }
    }

    /// Whether the source reads standard input.
    pub fn is_stdin(&self) -> bool {
        self.path.as_os_str() == STDIO_PATH
    }

    /// The checkpoint file, if any: the configured one or `<path>.checkpoint`.
    pub fn checkpoint_path(&self) -> Option<PathBuf> {
        if self.is_stdin() {
            return None;
        }
        Some(
            self.checkpoint
                .clone()
                .unwrap_or_else(|| default_checkpoint_path(&self.path)),
        )
    }

    /// Makes `path` and `checkpoint` absolute against `base_dir` (`-` stays standard input).
    pub fn resolve_paths(&mut self, base_dir: &Path) {
        if !self.is_stdin() && self.path.is_relative() && !self.path.as_os_str().is_empty() {
            self.path = base_dir.join(&self.path);
        }
        if let Some(cp) = &mut self.checkpoint
            && cp.is_relative()
            && !cp.as_os_str().is_empty()
        {
            *cp = base_dir.join(&*cp);
        }
    }

    /// Everything [`FileSource::new`] would refuse, each naming its key.
    pub fn check(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        let mut problem = |key: &str, message: String| problems.push(Problem::new(key, message));
        if self.path.as_os_str().is_empty() {
            problem(
                "path",
                "must not be empty (use \"-\" for standard input)".into(),
            );
        } else if self.is_stdin() {
            if self.checkpoint.is_some() {
                problem(
                    "checkpoint",
                    "cannot be used with `path = \"-\"` (standard input): standard input cannot \
                     be read again, so there is nothing to resume"
                        .into(),
                );
            }
            if self.follow {
                problem(
                    "follow",
                    "cannot be used with `path = \"-\"` (standard input): standard input is \
                     read until it is closed"
                        .into(),
                );
            }
        } else {
            match fs::metadata(&self.path) {
                Ok(m) if m.is_dir() => {
                    problem("path", format!("{} is a directory", self.path.display()))
                }
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    if !self.follow {
                        problem(
                            "path",
                            format!(
                                "{} does not exist (set `follow = true` to wait for it to be \
                                 created)",
                                self.path.display()
                            ),
                        );
                    }
                }
                Err(e) => problem("path", format!("{}: {e}", self.path.display())),
            }
            if let Some(cp) = &self.checkpoint {
                if cp.as_os_str().is_empty() {
                    problem("checkpoint", "must not be empty".into());
                } else if cp == &self.path {
                    problem("checkpoint", "must not be the input file itself".into());
                }
            }
            if let Some(cp) = self.checkpoint_path()
                && !cp.as_os_str().is_empty()
            {
                if cp.is_dir() {
                    problem("checkpoint", format!("{} is a directory", cp.display()));
                } else if let Some(why) = crate::sink::not_creatable(&cp) {
                    problem("checkpoint", why);
                }
            }
        }
        if self.checkpoint_interval.is_zero() {
            problem("checkpoint_interval", "must be greater than zero".into());
        }
        if self.drain_timeout.is_zero() {
            problem("drain_timeout", "must be greater than zero".into());
        }
        problems
    }
}

/// What is read.
#[derive(Debug)]
enum Input {
    Stdin,
    File {
        path: PathBuf,
        checkpoint: PathBuf,
        /// Held for as long as the source exists.
        _lock: Lock,
    },
}

/// Reads a JSON Lines file (or stdin) and lends each line out as a [`Delivery`].
///
/// [`Delivery`]: fnmill_connector_api::Delivery
#[derive(Debug)]
pub struct FileSource {
    name: String,
    input: Input,
    follow: bool,
    checkpoint_interval: Duration,
    drain_timeout: Duration,
    last_line: UnterminatedLastLine,
}

impl FileSource {
    /// Checks the config and locks the checkpoint; `name` becomes [`Event::source`]. Fails if
    /// another process holds the lock. Nothing is read yet.
    pub fn new(name: impl Into<String>, config: FileSourceConfig) -> Result<Self, FileError> {
        if let Some(p) = config.check().into_iter().next() {
            return Err(FileError::Invalid(p));
        }
        let input = match config.checkpoint_path() {
            None => Input::Stdin,
            Some(checkpoint) => Input::File {
                _lock: Lock::acquire(&checkpoint, &config.path)?,
                path: config.path,
                checkpoint,
            },
        };
        Ok(Self {
            name: name.into(),
            input,
            follow: config.follow,
            checkpoint_interval: config.checkpoint_interval,
            drain_timeout: config.drain_timeout,
            last_line: config.unterminated_last_line,
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

/// A position just past a line: in which of the run's files (`generation`, in reading order),
/// at which byte, after how many lines of that file. Ordered by generation first, so positions
/// keep increasing across a rotation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
struct Pos {
    generation: u32,
    offset: u64,
    line: u64,
}

/// A file read during this run.
#[derive(Debug)]
struct Generation {
    identity: FileIdentity,
    /// Kept to refresh a weak fingerprint when the file grew.
    file: Arc<fs::File>,
}

/// What the reader and the bookkeeping loop share (both in one task, so the lock is never
/// contended; it is a `Mutex` only because the task must be `Send`).
struct Shared {
    window: OrderedWindow<Pos>,
    /// Indexed by [`Pos::generation`]; `None` for stdin and for generations the checkpoint has
    /// moved past.
    generations: Vec<Option<Generation>>,
    /// Where reading started: nothing to save while the watermark is still there.
    start: Option<Pos>,
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
    fn label(&self) -> String {
        match &self.input {
            Input::Stdin => "stdin".to_owned(),
            Input::File { path, .. } => path.display().to_string(),
        }
    }

    async fn run_to_end(self, ctx: SourceContext) -> Result<(), FileError> {
        let label = self.label();
        let checkpoint_path = match &self.input {
            Input::Stdin => None,
            Input::File { checkpoint, .. } => Some(checkpoint.clone()),
        };
        let permits = Arc::new(Semaphore::new(MAX_WINDOW));
        let shared = Mutex::new(Shared {
            window: OrderedWindow::new(Pos::default()),
            generations: Vec::new(),
            start: None,
        });
        let (settler, mut settlements) = settlement::channel::<Seq>();
        let reader = LineReader {
            source: self.name.as_str().into(),
            label: label.clone(),
            follow: self.follow,
            last_line: self.last_line,
            shared: &shared,
            permits: permits.clone(),
            settler,
            shutdown: ctx.shutdown.clone(),
            ready: ctx.ready,
            malformed: Throttle::default(),
        };
        let mut reader = pin!(reader.run(&self.input, ctx.out));
        let mut shutdown = pin!(ctx.shutdown.clone().cancelled_owned());
        let mut drain_deadline = pin!(tokio::time::sleep(Duration::ZERO));
        let mut ticker = tokio::time::interval(self.checkpoint_interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);

        let mut persisted: Option<Checkpoint> = None;
        let mut writing: Option<JoinHandle<(Checkpoint, std::io::Result<()>)>> = None;
        let mut ended: Option<Result<ReadEnd, FileError>> = None;
        let mut draining = false;
        let mut settlements_open = true;
        let mut batch: Vec<Settled<Seq>> = Vec::with_capacity(SETTLE_BATCH);
        let apply = |batch: &mut Vec<Settled<Seq>>, draining: bool| {
            let mut s = lock(&shared);
            let mut released = 0;
            for Settled {
                ticket, outcome, ..
            } in batch.drain(..)
            {
                let change = s.window.settle(ticket, outcome);
                released += change.released;
                if change.stuck {
                    if draining {
                        debug!(file = %label, "Line abandoned during shutdown");
                    } else {
                        warn!(
                            file = %label,
                            "Line abandoned; the checkpoint stays before it until restart"
                        );
                    }
                }
            }
            permits.add_permits(released);
        };

        loop {
            if ended.is_some() {
                settlements.try_recv_many(&mut batch, usize::MAX);
                apply(&mut batch, draining);
                if lock(&shared).window.outstanding() == 0 {
                    break;
                }
            }
            tokio::select! {
                biased;
                n = settlements.recv_many(&mut batch, SETTLE_BATCH), if settlements_open => {
                    // Zero only once the reader and every delivery are gone.
                    settlements_open = n > 0;
                    apply(&mut batch, draining);
                }
                _ = &mut shutdown, if !draining => {
                    draining = true;
                    drain_deadline.as_mut().reset(Instant::now() + self.drain_timeout);
                    debug!(file = %label, outstanding = lock(&shared).window.outstanding(), "Shutdown: draining");
                }
                _ = &mut drain_deadline, if draining => {
                    settlements.try_recv_many(&mut batch, usize::MAX);
                    apply(&mut batch, draining);
                    let outstanding = lock(&shared).window.outstanding();
                    if outstanding > 0 {
                        warn!(
                            file = %label,
                            unsettled = outstanding,
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
                        drain_deadline.as_mut().reset(Instant::now() + self.drain_timeout);
                    }
                    ended = Some(end);
                }
                Some(done) = OptionFuture::from(writing.as_mut()), if writing.is_some() => {
                    writing = None;
                    match done {
                        Ok((checkpoint, Ok(()))) => persisted = Some(checkpoint),
                        Ok((_, Err(err))) => {
                            error!(file = %label, error = %err, "Could not save checkpoint; will retry");
                        }
                        Err(err) => error!(file = %label, error = %err, "Checkpoint writer failed"),
                    }
                }
                _ = ticker.tick(), if writing.is_none() && checkpoint_path.is_some() => {
                    if let Some(path) = &checkpoint_path
                        && let Some(next) = to_save(&shared, persisted.as_ref())
                    {
                        writing = Some(spawn_store(path.clone(), next));
                    }
                }
            }
        }

        // Final checkpoint: wait for a save in flight so saves stay in order, then save the
        // newest position.
        if let Some(handle) = writing.take()
            && let Ok((checkpoint, Ok(()))) = handle.await
        {
            persisted = Some(checkpoint);
        }
        if let Some(path) = &checkpoint_path
            && let Some(next) = to_save(&shared, persisted.as_ref())
        {
            let (_, result) = spawn_store(path.clone(), next).await.map_err(|err| {
                FileError::io(
                    format!("checkpoint {}", path.display()),
                    std::io::Error::other(err),
                )
            })?;
            result.map_err(|err| FileError::io(format!("checkpoint {}", path.display()), err))?;
        }
        let watermark = lock(&shared).window.watermark();
        info!(
            file = %label,
            line = watermark.line,
            offset = watermark.offset,
            "File source stopped"
        );
        match ended {
            Some(Err(err)) => Err(err),
            _ => Ok(()),
        }
    }
}

fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

/// The checkpoint for the current watermark, if it differs from the one saved. Generations the
/// watermark has moved past are let go of here.
fn to_save(shared: &Mutex<Shared>, persisted: Option<&Checkpoint>) -> Option<Checkpoint> {
    let mut s = lock(shared);
    let watermark = s.window.watermark();
    if persisted.is_none() && s.start == Some(watermark) {
        return None;
    }
    let generation = watermark.generation as usize;
    for old in s.generations.iter_mut().take(generation) {
        *old = None;
    }
    let current = s.generations.get_mut(generation)?.as_mut()?;
    if current.identity.is_weak() {
        // The file was short when it was opened: hash more of it now, for a stronger check.
        if let Ok(identity) = FileIdentity::of(&current.file)
            && identity.dev == current.identity.dev
            && identity.ino == current.identity.ino
        {
            current.identity = identity;
        }
    }
    let next = Checkpoint {
        offset: watermark.offset,
        line: watermark.line,
        file: Some(current.identity.clone()),
    };
    (persisted != Some(&next)).then_some(next)
}

fn spawn_store(
    path: PathBuf,
    position: Checkpoint,
) -> JoinHandle<(Checkpoint, std::io::Result<()>)> {
    // fsync takes milliseconds; keep it off the runtime's worker threads.
    tokio::task::spawn_blocking(move || {
        let result = checkpoint::store(&path, &position);
        (position, result)
    })
}

/// A file opened for reading, at a position.
struct Opened {
    lines: Lines,
    /// The same open file, for `fstat` and the identity checks; `None` for stdin.
    file: Option<Arc<fs::File>>,
    start: Pos,
    /// The file name, for ids of lines without one (`orders.jsonl:17`), and the origin.
    label: String,
}

type Lines = BufReader<Box<dyn AsyncRead + Send + Unpin>>;

/// What happened to a followed file, seen at its end.
#[derive(Debug, PartialEq, Eq)]
enum Change {
    None,
    /// A new file is under the path: finish this one, then read that one from its start.
    Rotated,
    /// The file is shorter than what was read, or its first bytes changed: read it again.
    Truncated,
}

/// The reading half: lines in, deliveries out.
struct LineReader<'a> {
    source: Arc<str>,
    label: String,
    follow: bool,
    last_line: UnterminatedLastLine,
    shared: &'a Mutex<Shared>,
    /// One permit per line held in the window, so it stays bounded.
    permits: Arc<Semaphore>,
    settler: Settler<Seq>,
    shutdown: CancellationToken,
    /// Set once the input is open.
    ready: Readiness,
    /// A file of garbage warns once a second, counting the lines it withheld.
    malformed: Throttle,
}

impl LineReader<'_> {
    /// Reads until end of input (not following), shutdown, or the pipeline going away. Takes
    /// `out` by value so it is dropped on return, which tells the pipeline no more events come.
    async fn run(self, input: &Input, out: Outbox) -> Result<ReadEnd, FileError> {
        let mut cancelled = pin!(self.shutdown.clone().cancelled_owned());
        let (path, checkpoint) = match input {
            Input::Stdin => {
                let stdin: Box<dyn AsyncRead + Send + Unpin> = Box::new(tokio::io::stdin());
                let opened = Opened {
                    lines: BufReader::with_capacity(READ_BUFFER, stdin),
                    file: None,
                    start: Pos::default(),
                    label: "stdin".into(),
                };
                lock(self.shared).generations.push(None);
                return self
                    .read(opened, VecDeque::new(), None, &out, cancelled.as_mut())
                    .await;
            }
            Input::File {
                path, checkpoint, ..
            } => (path, checkpoint),
        };
        let Some((current, queued)) = self
            .open_start(path, checkpoint, cancelled.as_mut())
            .await?
        else {
            return Ok(ReadEnd::Shutdown);
        };
        self.read(current, queued, Some(path), &out, cancelled.as_mut())
            .await
    }

    /// Opens the input where the checkpoint says; returns the file to read now and, when the
    /// checkpoint's file was rotated away, the file to read after it. In follow mode waits for
    /// the file to appear; `None` if shutdown came first.
    async fn open_start(
        &self,
        path: &Path,
        checkpoint: &Path,
        mut cancelled: std::pin::Pin<&mut WaitForCancellationFutureOwned>,
    ) -> Result<Option<(Opened, VecDeque<Opened>)>, FileError> {
        let saved = checkpoint::load(checkpoint, path)?;
        let file = loop {
            match fs::File::open(path) {
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
        let io = |what: &str| {
            let what = format!("{what} {}", path.display());
            move |e| FileError::io(what, e)
        };
        let len = file.metadata().map_err(io("reading metadata of"))?.len();
        let Some(saved) = saved else {
            return Ok(Some((
                self.open_at(path, file, 0, 0).await?,
                VecDeque::new(),
            )));
        };
        if saved.line > 0 {
            info!(file = %self.label, line = saved.line, offset = saved.offset, "Resuming from checkpoint");
        }
        let resume = |file: &fs::File| -> Result<bool, FileError> {
            let at_line = checkpoint::starts_a_line(file, saved.offset).map_err(io("reading"))?;
            if !at_line {
                warn!(
                    file = %self.label,
                    offset = saved.offset,
                    "The checkpoint does not fall at the start of a line; reading the file from its start"
                );
            }
            Ok(at_line)
        };
        match &saved.file {
            // A checkpoint from before identities were recorded: trust it as far as the file
            // is long.
            None => {
                if saved.offset > len {
                    return Err(FileError::CheckpointPastEnd {
                        checkpoint: checkpoint.to_owned(),
                        path: path.to_owned(),
                        offset: saved.offset,
                        len,
                    });
                }
                let (offset, line) = if resume(&file)? {
                    (saved.offset, saved.line)
                } else {
                    (0, 0)
                };
                Ok(Some((
                    self.open_at(path, file, offset, line).await?,
                    VecDeque::new(),
                )))
            }
            Some(identity) if identity.matches(&file).map_err(io("reading"))? => {
                let (offset, line) = if saved.offset <= len && resume(&file)? {
                    (saved.offset, saved.line)
                } else {
                    warn!(file = %self.label, "The file was truncated since the checkpoint; reading it from its start");
                    (0, 0)
                };
                Ok(Some((
                    self.open_at(path, file, offset, line).await?,
                    VecDeque::new(),
                )))
            }
            Some(identity) => match find_rotated(path, identity) {
                Some((old_path, old)) if saved.offset <= old.metadata().map_or(0, |m| m.len()) => {
                    info!(
                        file = %self.label,
                        rotated = %old_path.display(),
                        "The checkpointed file was rotated: finishing it, then reading the new one"
                    );
                    let (offset, line) = if resume(&old)? {
                        (saved.offset, saved.line)
                    } else {
                        (0, 0)
                    };
                    let first = self.open_at(&old_path, old, offset, line).await?;
                    let mut next = self.open_at(path, file, 0, 0).await?;
                    next.label = self.label.clone();
                    Ok(Some((first, VecDeque::from([next]))))
                }
                _ => {
                    warn!(
                        file = %self.label,
                        "The file is not the one checkpointed (replaced or rewritten); reading it from its start"
                    );
                    Ok(Some((
                        self.open_at(path, file, 0, 0).await?,
                        VecDeque::new(),
                    )))
                }
            },
        }
    }

    /// `file` (at `path`) positioned at `offset`, after `line` lines.
    async fn open_at(
        &self,
        path: &Path,
        file: fs::File,
        offset: u64,
        line: u64,
    ) -> Result<Opened, FileError> {
        let io = |what: &str| {
            let what = format!("{what} {}", path.display());
            move |e| FileError::io(what, e)
        };
        let reading = file.try_clone().map_err(io("opening"))?;
        let mut reading = tokio::fs::File::from_std(reading);
        if offset > 0 {
            reading
                .seek(std::io::SeekFrom::Start(offset))
                .await
                .map_err(io("seeking in"))?;
        }
        let reading: Box<dyn AsyncRead + Send + Unpin> = Box::new(reading);
        Ok(Opened {
            lines: BufReader::with_capacity(READ_BUFFER, reading),
            file: Some(Arc::new(file)),
            start: Pos {
                generation: 0,
                offset,
                line,
            },
            label: path.display().to_string(),
        })
    }

    /// Registers `opened` as the next generation and returns its start position.
    fn begin(&self, opened: &mut Opened) -> Result<Pos, FileError> {
        let mut s = lock(self.shared);
        let generation = s.generations.len() as u32;
        let entry = match &opened.file {
            None => None,
            Some(file) => Some(Generation {
                identity: FileIdentity::of(file)
                    .map_err(|e| FileError::io(format!("reading {}", opened.label), e))?,
                file: file.clone(),
            }),
        };
        s.generations.push(entry);
        opened.start.generation = generation;
        Ok(opened.start)
    }

    async fn read(
        &self,
        mut current: Opened,
        mut queued: VecDeque<Opened>,
        path: Option<&Path>,
        out: &Outbox,
        mut cancelled: std::pin::Pin<&mut WaitForCancellationFutureOwned>,
    ) -> Result<ReadEnd, FileError> {
        // A line that ended the reader (shutdown, the pipeline gone) ends it here too.
        macro_rules! lend {
            ($buf:expr, $position:expr, $label:expr) => {
                match self
                    .line($buf, $position, $label, out, &mut cancelled)
                    .await
                {
                    Ok(position) => position,
                    Err(ReadEndOr::End(end)) => return Ok(end),
                    Err(ReadEndOr::Error(e)) => return Err(e),
                }
            };
        }
        if current.file.is_some() {
            let start = self.begin(&mut current)?;
            // The first generation starts where the checkpoint left off.
            let mut s = lock(self.shared);
            s.window = OrderedWindow::new(start);
            s.start = Some(start);
        }
        self.ready.set(true);
        let mut position = current.start;
        let mut buf = Vec::with_capacity(1024);
        loop {
            let read = tokio::select! {
                biased;
                _ = &mut cancelled => return Ok(ReadEnd::Shutdown),
                read = current.lines.read_until(b'\n', &mut buf) => read,
            };
            read.map_err(|err| FileError::io(format!("reading {}", current.label), err))?;
            // `read_until` appends, so a partial line waiting for its rest stays in `buf`.
            if buf.last() != Some(&b'\n') {
                // The end of what the file holds now.
                if let Some(next) = queued.pop_front() {
                    // A rotated file being finished: its last line will never be completed.
                    if !buf.is_empty() {
                        lend!(&mut buf, position, &current.label);
                    }
                    current = next;
                    position = self.begin(&mut current)?;
                    continue;
                }
                if !self.follow {
                    if buf.is_empty() {
                        return Ok(ReadEnd::Eof);
                    }
                    match self.last_line {
                        UnterminatedLastLine::Process => {
                            lend!(&mut buf, position, &current.label);
                        }
                        UnterminatedLastLine::Leave => info!(
                            file = %current.label,
                            line = position.line + 1,
                            bytes = buf.len(),
                            "The last line has no newline (still being written?); left unread \
                             for the next run (set `unterminated_last_line = \"process\"` to read it)"
                        ),
                    }
                    return Ok(ReadEnd::Eof);
                }
                let change = match (path, &current.file) {
                    (Some(path), Some(file)) => {
                        let shared = self.shared;
                        let generation = position.generation as usize;
                        let identity = lock(shared).generations[generation]
                            .as_ref()
                            .map(|g| g.identity.clone());
                        let (path, file) = (path.to_owned(), file.clone());
                        let read_to = position.offset + buf.len() as u64;
                        tokio::task::spawn_blocking(move || {
                            what_changed(&path, &file, identity.as_ref(), read_to)
                        })
                        .await
                        .unwrap_or(Ok(Change::None))
                        .unwrap_or(Change::None)
                    }
                    _ => Change::None,
                };
                match change {
                    Change::None => {
                        tokio::select! {
                            biased;
                            _ = &mut cancelled => return Ok(ReadEnd::Shutdown),
                            _ = tokio::time::sleep(FOLLOW_POLL_INTERVAL) => continue,
                        }
                    }
                    Change::Rotated => {
                        let path = path.expect("checked");
                        // Anything appended to the old file before the new one appeared.
                        let read = tokio::select! {
                            biased;
                            _ = &mut cancelled => return Ok(ReadEnd::Shutdown),
                            read = current.lines.read_until(b'\n', &mut buf) => read,
                        };
                        read.map_err(|err| {
                            FileError::io(format!("reading {}", current.label), err)
                        })?;
                        if buf.last() == Some(&b'\n') {
                            // More complete lines: take them first.
                            position = lend!(&mut buf, position, &current.label);
                            continue;
                        }
                        if !buf.is_empty() {
                            position = lend!(&mut buf, position, &current.label);
                        }
                        info!(file = %self.label, "The file was rotated; reading the new one from its start");
                        let file = match fs::File::open(path) {
                            Ok(file) => file,
                            // Gone again between the check and the open: look again later.
                            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                            Err(e) => {
                                return Err(FileError::io(
                                    format!("opening {}", path.display()),
                                    e,
                                ));
                            }
                        };
                        current = self.open_at(path, file, 0, 0).await?;
                        position = self.begin(&mut current)?;
                    }
                    Change::Truncated => {
                        let path = path.expect("checked");
                        warn!(file = %self.label, "The file was truncated or rewritten; reading it from its start");
                        buf.clear();
                        let file = fs::File::open(path)
                            .map_err(|e| FileError::io(format!("opening {}", path.display()), e))?;
                        current = self.open_at(path, file, 0, 0).await?;
                        position = self.begin(&mut current)?;
                    }
                }
                continue;
            }
            position = lend!(&mut buf, position, &current.label);
        }
    }

    /// Lends out the line in `buf` (emptied) that follows `position`, and returns the position
    /// after it. A blank line is recorded but lends nothing.
    async fn line(
        &self,
        buf: &mut Vec<u8>,
        position: Pos,
        file: &str,
        out: &Outbox,
        cancelled: &mut std::pin::Pin<&mut WaitForCancellationFutureOwned>,
    ) -> Result<Pos, ReadEndOr> {
        let end = Pos {
            generation: position.generation,
            offset: position.offset + buf.len() as u64,
            line: position.line + 1,
        };
        // Keep the window bounded; permits come back as the watermark passes lines.
        tokio::select! {
            biased;
            _ = &mut *cancelled => return Err(ReadEndOr::End(ReadEnd::Shutdown)),
            permit = self.permits.acquire() => permit.expect("the window is never closed").forget(),
        }
        let event = self.event(buf, file, end.line);
        buf.clear();
        let Some(event) = event else {
            let released = lock(self.shared).window.skip(end).released;
            self.permits.add_permits(released);
            return Ok(end);
        };
        let seq = lock(self.shared).window.lend(end);
        let ordering_key = event.key.clone();
        let delivery = self.settler.delivery(event, ordering_key, seq);
        match out.try_send(delivery) {
            Ok(()) => {}
            Err(TrySendError::Full(delivery)) => {
                // A dropped delivery (here: the send cut short by shutdown) settles as
                // abandoned, so the line is read again after restart.
                tokio::select! {
                    biased;
                    _ = &mut *cancelled => return Err(ReadEndOr::End(ReadEnd::Shutdown)),
                    sent = out.send(delivery) => if sent.is_err() {
                        return Err(ReadEndOr::End(ReadEnd::Closed));
                    },
                }
            }
            Err(TrySendError::Closed(_)) => {
                return Err(ReadEndOr::End(ReadEnd::Closed));
            }
        }
        // `try_send` and a buffered read never yield; give the bookkeeping loop (same task)
        // and the rest of the runtime their turn.
        tokio::task::consume_budget().await;
        Ok(end)
    }

    /// The event for one line (with its `\n`, if any); `None` for a blank line. A line that is
    /// not a JSON Lines event becomes an event with its raw bytes and a decode error, which the
    /// pipeline dead-letters without running the function.
    fn event(&self, raw: &[u8], file: &str, line: u64) -> Option<Event> {
        let raw = raw.strip_prefix(BOM).unwrap_or(raw);
        if raw.iter().all(u8::is_ascii_whitespace) {
            return None;
        }
        let origin = vec![
            ("file", file.into()),
            (
                "line",
                OriginValue::Number(line.try_into().unwrap_or(i64::MAX)),
            ),
        ];
        let name = Path::new(file)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| file.to_owned());
        let default_id = || format!("{name}:{line}");
        Some(match jsonl::parse_event(raw) {
            Ok(parsed) => parsed.into_event(self.source.clone(), default_id, origin),
            Err(err) => {
                warn_throttled!(
                    self.malformed,
                    file = %file,
                    line,
                    error = %err,
                    "Malformed line; it goes to the dead-letter destination"
                );
                let text = raw.strip_suffix(b"\n").unwrap_or(raw);
                let text = text.strip_suffix(b"\r").unwrap_or(text);
                let mut event = Event::new(
                    default_id(),
                    self.source.clone(),
                    Bytes::copy_from_slice(text),
                );
                event.origin = origin;
                event.decode_error = Some(err.to_string());
                event
            }
        })
    }
}

/// How [`LineReader::line`] stops the reader: an end, or a file error.
#[derive(Debug)]
enum ReadEndOr {
    End(ReadEnd),
    Error(FileError),
}

impl From<FileError> for ReadEndOr {
    fn from(e: FileError) -> Self {
        ReadEndOr::Error(e)
    }
}

/// Looks at a followed file at its end: `file` is open, `read_to` bytes of it were read.
fn what_changed(
    path: &Path,
    file: &fs::File,
    identity: Option<&FileIdentity>,
    read_to: u64,
) -> std::io::Result<Change> {
    let len = file.metadata()?.len();
    if len < read_to {
        return Ok(Change::Truncated);
    }
    if let Some(identity) = identity
        && !identity.matches(file)?
    {
        // Same inode, other first bytes: rewritten in place.
        if same_file(&file.metadata()?, identity) {
            return Ok(Change::Truncated);
        }
    }
    match fs::metadata(path) {
        // Removed: maybe about to be created again; keep waiting on the open file.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Change::None),
        Err(e) => Err(e),
        Ok(at_path) if !same_inode(&at_path, &file.metadata()?) => Ok(Change::Rotated),
        Ok(_) => Ok(Change::None),
    }
}

#[cfg(unix)]
fn same_inode(a: &fs::Metadata, b: &fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    (a.dev(), a.ino()) == (b.dev(), b.ino())
}

#[cfg(not(unix))]
fn same_inode(_a: &fs::Metadata, _b: &fs::Metadata) -> bool {
    true
}

#[cfg(unix)]
fn same_file(meta: &fs::Metadata, identity: &FileIdentity) -> bool {
    use std::os::unix::fs::MetadataExt;
    (meta.dev(), meta.ino()) == (identity.dev, identity.ino)
}

#[cfg(not(unix))]
fn same_file(_meta: &fs::Metadata, _identity: &FileIdentity) -> bool {
    true
}

/// A file in `path`'s folder that is the checkpointed one (rotated under another name).
fn find_rotated(path: &Path, identity: &FileIdentity) -> Option<(PathBuf, fs::File)> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    for entry in fs::read_dir(dir).ok()?.flatten() {
        let candidate = entry.path();
        if candidate == path {
            continue;
        }
        let Ok(meta) = entry.metadata() else { continue };
        if !meta.is_file() || !same_file(&meta, identity) {
            continue;
        }
        if let Ok(file) = fs::File::open(&candidate)
            && identity.matches(&file).unwrap_or(false)
        {
            return Some((candidate, file));
        }
    }
    None
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

    use fnmill_connector_api::{Delivery, Outcome, Received, Source, SourceContext, SourceError};
    use tokio::task::JoinHandle;
    use tokio_util::sync::CancellationToken;

    use super::*;

    /// Generous: a deadline, not a wait; tests finish as soon as the condition holds.
    const DEADLINE: Duration = Duration::from_secs(10);

    struct Running {
        rx: Received,
        shutdown: CancellationToken,
        ready: Readiness,
        handle: JoinHandle<Result<(), SourceError>>,
    }

    impl Running {
        fn start(config: FileSourceConfig, capacity: usize) -> Self {
            let source = FileSource::new("files", config).unwrap();
            let (out, rx) = Outbox::channel(capacity);
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

    fn origin_line(d: &Delivery) -> i64 {
        d.event()
            .origin
            .iter()
            .find(|(k, _)| *k == "line")
            .and_then(|(_, v)| v.as_number())
            .unwrap()
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
        assert_eq!(&*first.source, "files");
        assert_eq!(first.key.as_deref(), Some(&b"k1"[..]));
        assert_eq!(all[0].ordering_key(), first.key.as_ref());
        assert_eq!(&first.payload[..], br#"{"i":1}"#);
        assert_eq!(
            first.origin,
            vec![
                ("file", path.display().to_string().into()),
                ("line", OriginValue::Number(1))
            ]
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
        assert_eq!(origin_line(&again[0]), 5);
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
            "{\"payload\":6}\n".into(),
        ];
        let path = write_input(dir.path(), &lines);
        // A checkpoint in the form written before file identities were recorded.
        checkpoint::store(
            &default_checkpoint_path(&path),
            &Checkpoint {
                offset: end_of(&lines, 3),
                line: 3,
                file: None,
            },
        )
        .unwrap();

        let mut run = Running::start(FileSourceConfig::new(&path), 16);
        let got = run.take(2).await;
        run.expect_closed().await;
        assert_eq!(got[0].event().id, "in.jsonl:5");
        assert_eq!(origin_line(&got[0]), 5);
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
            format!("\u{feff}{}", line(4)),
        ];
        let path = write_input(dir.path(), &lines);
        let mut run = Running::start(FileSourceConfig::new(&path), 16);
        let got = run.take(4).await;

        let good = got[0].event();
        assert_eq!(good.decode_error, None);
        let bad = got[1].event();
        assert_eq!(bad.id, "in.jsonl:2");
        assert_eq!(bad.key, None);
        assert_eq!(&bad.payload[..], b"not json at all");
        assert!(bad.headers.is_empty());
        assert!(bad.decode_error.as_deref().is_some_and(|e| !e.is_empty()));
        let unknown = got[2].event();
        assert_eq!(&unknown.payload[..], lines[2].trim_end().as_bytes());
        let error = unknown.decode_error.clone().unwrap();
        assert!(error.contains("bogus"), "{error}");
        // A byte-order mark is not part of the JSON.
        assert_eq!(got[3].event().id, "e4");
        assert_eq!(got[3].event().decode_error, None);

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
        assert_eq!(origin_line(&late), 3);
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
    async fn an_old_checkpoint_past_the_end_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_input(dir.path(), &[line(1)]);
        checkpoint::store(
            &default_checkpoint_path(&path),
            &Checkpoint {
                offset: 10_000,
                line: 7,
                file: None,
            },
        )
        .unwrap();
        let run = Running::start(FileSourceConfig::new(&path), 16);
        let err = run.finish().await.unwrap_err().to_string();
        assert!(err.contains("truncated"), "{err}");
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
    fn check_names_every_key_the_source_would_refuse() {
        let keys = |c: &FileSourceConfig| -> Vec<String> {
            c.check().into_iter().map(|p| p.key).collect()
        };
        let dir = tempfile::tempdir().unwrap();
        let missing = FileSourceConfig::new(dir.path().join("not-here.jsonl"));
        assert_eq!(keys(&missing), ["path"]);
        let mut follow = missing.clone();
        follow.follow = true;
        assert!(keys(&follow).is_empty());
        assert_eq!(
            keys(&FileSourceConfig::new(dir.path())),
            ["path"],
            "a directory"
        );
        assert_eq!(keys(&FileSourceConfig::new("")), ["path"]);

        let mut stdin = FileSourceConfig::new("-");
        assert!(keys(&stdin).is_empty());
        stdin.checkpoint = Some("x".into());
        stdin.follow = true;
        assert_eq!(keys(&stdin), ["checkpoint", "follow"]);
        let mut zero = FileSourceConfig::new("-");
        zero.checkpoint_interval = Duration::ZERO;
        zero.drain_timeout = Duration::ZERO;
        assert_eq!(keys(&zero), ["checkpoint_interval", "drain_timeout"]);
        let mut later = follow.clone();
        later.checkpoint = Some(dir.path().join("made-later").join("cp"));
        assert!(keys(&later).is_empty(), "a missing folder is created");
        let a_file = dir.path().join("a-file");
        fs::write(&a_file, b"").unwrap();
        let mut nowhere = follow;
        nowhere.checkpoint = Some(a_file.join("cp"));
        assert_eq!(keys(&nowhere), ["checkpoint"]);
        // The constructor refuses the same things.
        assert!(matches!(
            FileSource::new("s", missing),
            Err(FileError::Invalid(p)) if p.key == "path"
        ));
    }

    #[tokio::test]
    async fn a_second_source_on_the_same_input_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_input(dir.path(), &[line(1)]);
        let first = FileSource::new("a", FileSourceConfig::new(&path)).unwrap();
        let err = FileSource::new("b", FileSourceConfig::new(&path)).unwrap_err();
        assert!(matches!(err, FileError::Locked { .. }), "{err}");
        assert!(err.to_string().contains("another fnmill"), "{err}");
        drop(first);
        FileSource::new("b", FileSourceConfig::new(&path)).unwrap();
    }

    #[tokio::test]
    async fn an_unterminated_last_line_is_left_for_later_then_read_once_complete() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.jsonl");
        fs::write(&path, format!("{}{{\"id\":\"half\",", line(1))).unwrap();
        let mut run = Running::start(FileSourceConfig::new(&path), 16);
        let got = run.take(1).await;
        run.expect_closed().await;
        assert_eq!(got[0].event().id, "e1");
        got.into_iter().for_each(|d| d.settle(Outcome::Done));
        run.finish().await.unwrap();
        assert_eq!(checkpoint_of(&path), Some((line(1).len() as u64, 1)));

        // The writer finishes the line: the next run reads it whole, as one event.
        let mut file = fs::OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"\"payload\":7}\n").unwrap();
        let mut run = Running::start(FileSourceConfig::new(&path), 16);
        let got = run.take(1).await;
        run.expect_closed().await;
        assert_eq!(got[0].event().id, "half");
        assert_eq!(&got[0].event().payload[..], b"7");
        assert_eq!(got[0].event().decode_error, None);
        got.into_iter().for_each(|d| d.settle(Outcome::Done));
        run.finish().await.unwrap();
        assert_eq!(checkpoint_of(&path).map(|c| c.1), Some(2));
    }

    #[tokio::test]
    async fn an_unterminated_last_line_can_be_processed_on_request() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.jsonl");
        fs::write(&path, format!("{}{{\"payload\":6}}", line(1))).unwrap();
        let mut config = FileSourceConfig::new(&path);
        config.unterminated_last_line = UnterminatedLastLine::Process;
        let mut run = Running::start(config, 16);
        let got = run.take(2).await;
        run.expect_closed().await;
        assert_eq!(&got[1].event().payload[..], b"6");
        got.into_iter().for_each(|d| d.settle(Outcome::Done));
        run.finish().await.unwrap();
        assert_eq!(
            checkpoint_of(&path),
            Some((fs::metadata(&path).unwrap().len(), 2))
        );
    }

    /// Settles everything that arrives, until `n` events came; returns their ids.
    async fn settle_ids(run: &mut Running, n: usize) -> Vec<String> {
        let mut ids = Vec::new();
        while ids.len() < n {
            let d = run.next().await;
            ids.push(d.event().id.clone());
            assert_eq!(d.event().decode_error, None, "a fragment became an event");
            d.settle(Outcome::Done);
        }
        ids
    }

    fn numbered(from: usize, to: usize) -> String {
        (from..=to).map(line).collect()
    }

    fn ids(from: usize, to: usize) -> Vec<String> {
        (from..=to).map(|i| format!("e{i}")).collect()
    }

    #[tokio::test]
    async fn follow_reads_a_truncated_and_rewritten_file_from_its_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.jsonl");
        fs::write(&path, numbered(1, 50)).unwrap();
        let mut config = FileSourceConfig::new(&path);
        config.follow = true;
        let mut run = Running::start(config, 64);
        assert_eq!(settle_ids(&mut run, 50).await, ids(1, 50));

        // Truncated and written again, shorter than what was read: every new line, from the
        // first, and no fragment of an old offset.
        fs::write(&path, numbered(101, 110)).unwrap();
        assert_eq!(settle_ids(&mut run, 10).await, ids(101, 110));
        // Appends after that still arrive.
        let mut file = fs::OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(numbered(111, 112).as_bytes()).unwrap();
        assert_eq!(settle_ids(&mut run, 2).await, ids(111, 112));
        run.shutdown.cancel();
        run.finish().await.unwrap();
        assert_eq!(
            checkpoint_of(&path),
            Some((fs::metadata(&path).unwrap().len(), 12))
        );
    }

    #[tokio::test]
    async fn follow_finishes_a_rotated_file_then_reads_the_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.jsonl");
        fs::write(&path, numbered(1, 20)).unwrap();
        let mut config = FileSourceConfig::new(&path);
        config.follow = true;
        let mut run = Running::start(config, 64);
        assert_eq!(settle_ids(&mut run, 20).await, ids(1, 20));

        // The writer appends a last burst, then rotates: rename and start a new file, which
        // grows longer than the old one.
        let mut old = fs::OpenOptions::new().append(true).open(&path).unwrap();
        old.write_all(numbered(21, 25).as_bytes()).unwrap();
        fs::rename(&path, dir.path().join("in.jsonl.1")).unwrap();
        old.write_all(numbered(26, 27).as_bytes()).unwrap();
        drop(old);
        fs::write(&path, numbered(201, 260)).unwrap();

        let mut got = settle_ids(&mut run, 67).await;
        let new: Vec<String> = got.split_off(7);
        assert_eq!(got, ids(21, 27), "the old file is finished first");
        assert_eq!(new, ids(201, 260), "then the new one from its start");
        run.shutdown.cancel();
        run.finish().await.unwrap();
        assert_eq!(
            checkpoint_of(&path),
            Some((fs::metadata(&path).unwrap().len(), 60))
        );
    }

    #[tokio::test]
    async fn a_restart_finishes_a_file_rotated_away_since_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.jsonl");
        fs::write(&path, numbered(1, 10)).unwrap();
        let mut run = Running::start(FileSourceConfig::new(&path), 64);
        let got = run.take(10).await;
        // Only the first four are done when the process stops.
        for (i, d) in got.into_iter().enumerate() {
            if i < 4 {
                d.settle(Outcome::Done);
            }
        }
        run.finish().await.unwrap();
        assert_eq!(checkpoint_of(&path).map(|c| c.1), Some(4));

        fs::rename(&path, dir.path().join("in.jsonl.1")).unwrap();
        fs::write(&path, numbered(11, 13)).unwrap();
        let mut run = Running::start(FileSourceConfig::new(&path), 64);
        assert_eq!(
            settle_ids(&mut run, 9).await,
            [ids(5, 10), ids(11, 13)].concat()
        );
        run.expect_closed().await;
        run.finish().await.unwrap();
        assert_eq!(checkpoint_of(&path).map(|c| c.1), Some(3));
    }

    #[tokio::test]
    async fn a_restart_reads_a_rewritten_file_from_its_start_never_mid_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.jsonl");
        fs::write(&path, numbered(1, 10)).unwrap();
        let mut run = Running::start(FileSourceConfig::new(&path), 64);
        assert_eq!(settle_ids(&mut run, 10).await, ids(1, 10));
        run.finish().await.unwrap();

        // Rewritten in place with longer content: the old offset would fall mid-line.
        let f = fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(0).unwrap();
        drop(f);
        fs::write(&path, numbered(1001, 1030)).unwrap();
        let mut run = Running::start(FileSourceConfig::new(&path), 64);
        assert_eq!(settle_ids(&mut run, 30).await, ids(1001, 1030));
        run.expect_closed().await;
        run.finish().await.unwrap();
    }
}
