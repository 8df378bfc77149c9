//! `fnmill replay`: reads a range of a Kafka topic (by offsets or by time), a dead-letter topic,
//! queue or file, or a JSON Lines file, and writes it to a topic, exchange, queue or file, back
//! to where dead letters came from, or through a function.
//!
//! Nothing is acknowledged before it is confirmed: an AMQP dead letter is acked only once its
//! re-published message was confirmed, and with `--group` a Kafka offset is committed only past
//! records that were written. Reading a topic joins no consumer group (see
//! [`fnmill_connector_kafka::KafkaReader`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use clap::Args;
use fnmill_connector_amqp::{QueueAcker, QueueReader};
use fnmill_connector_api::{Event, Header, Record};
use fnmill_connector_file::jsonl;
use fnmill_connector_kafka::{KafkaReader, OffsetRange, Polled};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use super::endpoint::{self, Endpoint};
use super::progress::{ErrorLines, Progress};
use super::through::{self, Through};
use super::writer::{Confirm, Writer};
use super::{Pending, Settled, Stats};

/// Records awaiting their confirmation at once; see `publish`.
const WINDOW: usize = 1000;

/// Records read ahead of the replay loop.
const READ_AHEAD: usize = 1024;

/// How long the Kafka reader waits for a record before it looks at the stop signal again.
const POLL: Duration = Duration::from_millis(100);

/// How often, with `--group`, the offsets written so far are committed.
const COMMIT_EVERY: Duration = Duration::from_secs(5);

/// Prefix of the headers a dead letter carries (`src/pipeline/dead_letter.rs`).
const ERROR_PREFIX: &str = "fnmill.error.";

/// Prefix of the headers a replayed dead letter gets.
const REPLAY_PREFIX: &str = "fnmill.replay.";

/// `fnmill replay` arguments. See `--help`.
#[derive(Args, Debug)]
#[command(after_long_help = REPLAY_AFTER_HELP)]
pub struct ReplayArgs {
    /// What to replay: `kafka://HOST:PORT/TOPIC`, `amqp[s]://USER:PASS@HOST:PORT/VHOST?queue=Q`,
    /// or a JSON Lines file (`-`: standard input). Or give --config with --source or --sink.
    #[arg(value_name = "FROM", required_unless_present_any = ["source", "sink"])]
    pub from: Option<String>,
    /// The config whose sources, sinks and functions the other options name.
    #[arg(short, long, env = "FNMILL_CONFIG")]
    pub config: Option<PathBuf>,
    /// Read what a source of the config reads (its topic, queue or file).
    #[arg(long, conflicts_with_all = ["from", "sink"], requires = "config")]
    pub source: Option<String>,
    /// Read what a sink of the config writes, e.g. the route's dead letters: its topic, or for
    /// AMQP the queue its routing key names on the default exchange.
    #[arg(long, conflicts_with = "from", requires = "config")]
    pub sink: Option<String>,
    /// With --source or --sink: the topic or queue to read instead of the configured one.
    #[arg(long)]
    pub target: Option<String>,

    /// Kafka: a partition to read; repeatable. Default: every partition.
    #[arg(long = "partition", value_name = "P", help_heading = "Kafka range")]
    pub partitions: Vec<i32>,
    /// Kafka: the first offset to read, for every partition (`N`) or one (`P:N`); repeatable.
    /// Default: each partition's first offset.
    #[arg(
        long,
        value_name = "N|P:N",
        conflicts_with = "since",
        help_heading = "Kafka range"
    )]
    pub from_offset: Vec<String>,
    /// Kafka: the last offset to read (inclusive), for every partition (`N`) or one (`P:N`);
    /// repeatable. Default: each partition's last offset when the replay starts.
    #[arg(
        long,
        value_name = "N|P:N",
        conflicts_with = "until",
        help_heading = "Kafka range"
    )]
    pub to_offset: Vec<String>,
    /// Kafka: from the first record at or after this time: RFC 3339
    /// (`2026-03-01T10:00:00Z`) or a duration ago (`90m`, `2h`, `1day`).
    #[arg(long, value_name = "TIME", help_heading = "Kafka range")]
    pub since: Option<String>,
    /// Kafka: up to the last record before this time (RFC 3339 or a duration ago).
    #[arg(long, value_name = "TIME", help_heading = "Kafka range")]
    pub until: Option<String>,
    /// Kafka: commit progress under this consumer group, and start where it left off when no
    /// --from-offset or --since is given. Without it no group is created and nothing committed.
    #[arg(long, help_heading = "Kafka range")]
    pub group: Option<String>,

    /// JSON Lines: start at this line (1 is the first).
    #[arg(long, value_name = "LINE")]
    pub from_line: Option<u64>,

    /// The records are dead letters: each goes back where it came from
    /// (`fnmill.error.origin.topic`, `…queue` or `…file`, unless --to says otherwise), without
    /// its `fnmill.error.*` headers and with `fnmill.replay.*` headers.
    #[arg(long, help_heading = "Dead letters")]
    pub dead_letters: bool,
    /// Only dead letters of this error kind (`fnmill.error.kind`: fatal, trap, timeout, ...);
    /// repeatable.
    #[arg(
        long = "kind",
        value_name = "KIND",
        requires = "dead_letters",
        help_heading = "Dead letters"
    )]
    pub kinds: Vec<String>,
    /// Only dead letters of this route (`fnmill.error.route`); repeatable.
    #[arg(
        long = "route",
        value_name = "ROUTE",
        requires = "dead_letters",
        help_heading = "Dead letters"
    )]
    pub routes: Vec<String>,
    /// Only dead letters of this function (`fnmill.error.function`); repeatable.
    #[arg(
        long = "function",
        value_name = "FUNCTION",
        requires = "dead_letters",
        help_heading = "Dead letters"
    )]
    pub functions: Vec<String>,

    /// Where to write: `kafka://…/TOPIC`, `amqp[s]://…?exchange=X[&routing_key=K]` or
    /// `…?queue=Q`, a JSON Lines file, `-` (standard output).
    #[arg(long, value_name = "TARGET", help_heading = "Destination")]
    pub to: Option<String>,
    /// Write through a sink of the config.
    #[arg(
        long,
        conflicts_with = "to",
        requires = "config",
        help_heading = "Destination"
    )]
    pub to_sink: Option<String>,
    /// With --to-sink: the topic (Kafka) or routing key (AMQP) instead of the sink's own.
    #[arg(long, requires = "to_sink", help_heading = "Destination")]
    pub to_target: Option<String>,
    /// Run each event through this function (of the config, or a `.wasm` component file)
    /// with its granted data sources; its outputs are printed as JSON Lines on standard output,
    /// or written to --to / --to-sink.
    #[arg(long, value_name = "FUNCTION", help_heading = "Destination")]
    pub through: Option<String>,
    /// Read, filter and count (and with --through, run the function and print its outputs),
    /// but write nothing and acknowledge nothing.
    #[arg(long, help_heading = "Destination")]
    pub dry_run: bool,

    /// Replay at most this many records (records skipped by a filter do not count).
    #[arg(long, value_name = "N")]
    pub limit: Option<u64>,
    /// At most this many records per second.
    #[arg(long, value_name = "RECORDS_PER_SECOND")]
    pub rate: Option<f64>,
    /// No progress and, when nothing failed, no summary.
    #[arg(short, long)]
    pub quiet: bool,
    /// Lines about failed events to print before only counting them: a number, or `all`. The
    /// summary counts every failure by kind either way.
    #[arg(long, value_name = "N|all", default_value = ErrorLines::DEFAULT)]
    pub error_lines: ErrorLines,
}

const REPLAY_AFTER_HELP: &str = "\
Examples:
  # offsets 100 to 200 of partition 0 into another topic
  fnmill replay kafka://127.0.0.1:9092/orders --partition 0 --from-offset 100 --to-offset 200 \\
      --to kafka://127.0.0.1:9092/orders.copy
  # the last hour of a topic, through a function, outputs printed, nothing written
  fnmill replay -c fnmill.toml --source orders --since 1h --through enrich_orders --dry-run
  # dead letters back where they came from, fatal ones of one route only
  fnmill replay -c fnmill.toml --sink dead --dead-letters --kind fatal --route orders
  fnmill replay 'amqp://guest:guest@127.0.0.1:5672/%2f?queue=orders.dead' --dead-letters

A replayed dead letter keeps its key, payload bytes and headers, loses its fnmill.error.*
headers and gains fnmill.replay.at (RFC 3339) and fnmill.replay.dead_letter.* (topic, partition
and offset; queue; or file and line: where the dead letter itself was). An AMQP dead letter is
acked only once its re-published message is confirmed; a crash mid-replay loses nothing.

Ctrl-C stops reading, waits for what is in flight, and prints the command that resumes. That
command passes over records that failed for good, but starts at the first one that failed with
an error that may pass if tried again (also printed after a replay that read everything).

Exit status: 0 everything read was written (or skipped by a filter); 1 a record failed (a
function failure, a publish not confirmed, a dead letter with no origin); 2 a usage or
configuration error; 130 interrupted (Ctrl-C) before the end.";

/// Where a record was read, to acknowledge it and to tell where a rerun starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum At {
    Kafka { partition: i32, offset: i64 },
    Queue { tag: u64 },
    Line(u64),
}

/// One record read.
#[derive(Debug)]
struct Item {
    /// The event id a function sees: the dead letter's original event id, a topic position,
    /// a message id, a line's `id`.
    id: String,
    key: Option<Bytes>,
    payload: Bytes,
    headers: Vec<Header>,
    timestamp_ms: Option<i64>,
    at: At,
}

/// Where a record goes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Dest {
    /// `--to` / `--to-sink`.
    Fixed,
    /// A dead letter's origin.
    Topic(String),
    Queue(String),
    File(PathBuf),
}

/// What the replay does with records.
enum Mode {
    /// Write them (to `--to`, or dead letters to their origins).
    Write,
    /// Print a function's outputs; write and acknowledge nothing.
    Print,
    /// Count; write and acknowledge nothing.
    Count,
}

pub fn run(args: ReplayArgs) -> Result<ExitCode> {
    if args.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
        bail!("--rate: must be a number of records per second above 0");
    }
    if args.limit == Some(0) {
        bail!("--limit: must be at least 1");
    }
    if args.from_line == Some(0) {
        bail!("--from-line: lines count from 1");
    }
    if args.target.is_some() && args.source.is_none() && args.sink.is_none() {
        bail!("--target: only with --source or --sink (a URL names its own topic or queue)");
    }
    let config = match &args.config {
        Some(path) => Some(fnmill::config::load(path).context("--config")?),
        None => None,
    };
    super::init_logging();
    let from = match (&args.from, &args.source, &args.sink, &config) {
        (Some(f), None, None, _) => endpoint::parse(f, "FROM")?,
        (None, Some(s), None, Some(c)) => {
            endpoint::from_source(c, s, args.target.as_deref(), "--source")?
        }
        (None, None, Some(s), Some(c)) => {
            endpoint::from_sink(c, s, args.target.as_deref(), "--sink")?
        }
        _ => bail!("give FROM, or --config with --source or --sink"),
    };
    let to = match (&args.to, &args.to_sink, &config) {
        (Some(t), None, _) => Some(endpoint::parse(t, "--to")?),
        (None, Some(s), Some(c)) => Some(endpoint::from_sink(
            c,
            s,
            args.to_target.as_deref(),
            "--to-sink",
        )?),
        _ => None,
    };
    if let Some(Endpoint::Kafka { topic: None, .. }) = &to {
        bail!("--to: no topic to write to (kafka://HOST:PORT/TOPIC, or --to-target)");
    }
    let mode = match (&to, args.dry_run, &args.through) {
        (_, true, Some(_)) => Mode::Print,
        (_, true, None) => Mode::Count,
        (Some(_), false, _) => Mode::Write,
        (None, false, Some(_)) => Mode::Print,
        (None, false, None) if args.dead_letters => Mode::Write,
        (None, false, None) => bail!(
            "--to: where should the records go? Give --to, --to-sink, --through, --dry-run, or \
             --dead-letters to send dead letters back where they came from"
        ),
    };
    let kafka_only = !args.partitions.is_empty()
        || !args.from_offset.is_empty()
        || !args.to_offset.is_empty()
        || args.since.is_some()
        || args.until.is_some()
        || args.group.is_some();
    let from_flag = if args.source.is_some() {
        "--source"
    } else if args.sink.is_some() {
        "--sink"
    } else {
        "FROM"
    };
    match &from {
        Endpoint::Kafka { topic: None, .. } => {
            bail!("{from_flag}: no topic to read (kafka://HOST:PORT/TOPIC)")
        }
        Endpoint::Amqp { queue: None, .. } => bail!(
            "{from_flag}: no queue to read; name it (amqp://…/VHOST?queue=Q, or --target with \
             --sink)"
        ),
        Endpoint::Kafka { .. } if args.from_line.is_some() => {
            bail!("--from-line: only for JSON Lines; a topic is read by --from-offset")
        }
        Endpoint::Kafka { .. } => {}
        _ if kafka_only => bail!(
            "{}: only a Kafka topic is read by partition, offset or time",
            first_kafka_flag(&args)
        ),
        Endpoint::Amqp { .. } if args.from_line.is_some() => {
            bail!("--from-line: only for JSON Lines")
        }
        _ => {}
    }
    if let (Some(to), Mode::Write) = (&to, &mode) {
        to.check_reachable(if args.to_sink.is_some() {
            "--to-sink"
        } else {
            "--to"
        })?;
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("fnmill-replay")
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let through = match &args.through {
        Some(f) => Some(through::load(f, config.as_ref(), rt.handle())?),
        None => None,
    };
    let plan = match &from {
        Endpoint::Kafka { connection, topic } => {
            let topic = topic.as_deref().expect("checked above");
            Some(plan_kafka(&args, connection, topic, from_flag)?)
        }
        _ => None,
    };
    let replay = Replay {
        args,
        from,
        to,
        mode,
        through,
    };
    rt.block_on(replay.run(plan))
}

fn first_kafka_flag(args: &ReplayArgs) -> &'static str {
    if !args.partitions.is_empty() {
        "--partition"
    } else if !args.from_offset.is_empty() {
        "--from-offset"
    } else if !args.to_offset.is_empty() {
        "--to-offset"
    } else if args.since.is_some() {
        "--since"
    } else if args.until.is_some() {
        "--until"
    } else {
        "--group"
    }
}

/// A time as milliseconds since the Unix epoch: RFC 3339, or a duration ago.
fn parse_time(text: &str, flag: &str) -> Result<i64> {
    use time::format_description::well_known::Rfc3339;
    if let Ok(t) = time::OffsetDateTime::parse(text, &Rfc3339) {
        return Ok((t.unix_timestamp_nanos() / 1_000_000) as i64);
    }
    if let Ok(t) = humantime::parse_rfc3339_weak(text) {
        return Ok(millis(t));
    }
    match humantime::parse_duration(text) {
        Ok(ago) => Ok(millis(SystemTime::now()) - ago.as_millis() as i64),
        Err(_) => bail!(
            "{flag}: `{text}` is neither a time (RFC 3339, e.g. 2026-03-01T10:00:00Z) nor a \
             duration ago (e.g. 90m, 2h)"
        ),
    }
}

fn millis(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// `N` for every partition or `P:N` for one, from a repeatable flag.
fn parse_offsets(values: &[String], flag: &str) -> Result<(Option<i64>, BTreeMap<i32, i64>)> {
    let mut all = None;
    let mut per = BTreeMap::new();
    for v in values {
        let bad = || anyhow!("{flag}: expected N or PARTITION:N (N at least 0), got `{v}`");
        match v.split_once(':') {
            Some((p, n)) => {
                let p: i32 = p.trim().parse().map_err(|_| bad())?;
                let n: i64 = n.trim().parse().map_err(|_| bad())?;
                if n < 0 || p < 0 {
                    return Err(bad());
                }
                per.insert(p, n);
            }
            None => {
                let n: i64 = v.trim().parse().map_err(|_| bad())?;
                if n < 0 {
                    return Err(bad());
                }
                all = Some(n);
            }
        }
    }
    Ok((all, per))
}

/// The Kafka reader and the ranges it reads.
struct KafkaPlan {
    reader: KafkaReader,
    ranges: BTreeMap<i32, OffsetRange>,
    topic: String,
}

/// Resolves the partitions and offset ranges to read, before reading anything.
fn plan_kafka(
    args: &ReplayArgs,
    connection: &endpoint::KafkaConnection,
    topic: &str,
    flag: &str,
) -> Result<KafkaPlan> {
    // The flags first: a typo is reported without waiting for a broker.
    let (from_all, from_per) = parse_offsets(&args.from_offset, "--from-offset")?;
    let (to_all, to_per) = parse_offsets(&args.to_offset, "--to-offset")?;
    let since_ms = args
        .since
        .as_deref()
        .map(|t| parse_time(t, "--since"))
        .transpose()?;
    let until_ms = args
        .until
        .as_deref()
        .map(|t| parse_time(t, "--until"))
        .transpose()?;
    let reader = KafkaReader::new(&connection.reader_config(args.group.clone()), topic)
        .with_context(|| format!("{flag}: reading topic `{topic}`"))?;
    let all = reader
        .partitions()
        .with_context(|| format!("{flag}: reading topic `{topic}`"))?;
    let partitions: Vec<i32> = if args.partitions.is_empty() {
        all.clone()
    } else {
        let mut chosen = BTreeSet::new();
        for p in &args.partitions {
            if !all.contains(p) {
                bail!(
                    "--partition: topic `{topic}` has no partition {p} (it has {} partitions)",
                    all.len()
                );
            }
            chosen.insert(*p);
        }
        chosen.into_iter().collect()
    };
    for (flag, per) in [("--from-offset", &from_per), ("--to-offset", &to_per)] {
        if let Some(p) = per.keys().find(|p| !partitions.contains(p)) {
            bail!("{flag}: partition {p} is not among the partitions read");
        }
    }
    let since = match since_ms {
        Some(ms) => Some(reader.offsets_for_time(&partitions, ms)?),
        None => None,
    };
    let until = match until_ms {
        Some(ms) => Some(reader.offsets_for_time(&partitions, ms)?),
        None => None,
    };
    let committed =
        if args.group.is_some() && from_all.is_none() && from_per.is_empty() && since.is_none() {
            reader.committed(&partitions)?
        } else {
            BTreeMap::new()
        };
    let mut ranges = BTreeMap::new();
    for &p in &partitions {
        let (low, high) = reader.watermarks(p)?;
        let start = from_per
            .get(&p)
            .copied()
            .or(from_all)
            .or_else(|| since.as_ref().map(|s| s[&p]))
            .or_else(|| committed.get(&p).copied().flatten())
            .unwrap_or(low)
            .max(low);
        let end = to_per
            .get(&p)
            .or(to_all.as_ref())
            .map(|last| last + 1)
            .or_else(|| until.as_ref().map(|u| u[&p]))
            .unwrap_or(high)
            .min(high);
        ranges.insert(p, OffsetRange { start, end });
    }
    Ok(KafkaPlan {
        reader,
        ranges,
        topic: topic.to_string(),
    })
}

/// Everything a replay needs once the flags are checked.
struct Replay {
    args: ReplayArgs,
    from: Endpoint,
    to: Option<Endpoint>,
    mode: Mode,
    through: Option<Through>,
}

/// The source being read.
enum Reader {
    /// A topic or a file, read on a thread of its own.
    Channel(mpsc::Receiver<Result<Item, String>>),
    Queue(Box<QueueReader>),
}

impl Reader {
    async fn next(&mut self) -> Result<Option<Item>, String> {
        match self {
            Reader::Channel(rx) => rx.recv().await.transpose(),
            Reader::Queue(reader) => match reader.next().await {
                Ok(Some(m)) => Ok(Some(Item {
                    id: m
                        .message_id
                        .clone()
                        .unwrap_or_else(|| format!("{}/{}", reader.queue(), m.tag)),
                    key: None,
                    payload: m.payload,
                    headers: m.headers,
                    timestamp_ms: m.timestamp_ms,
                    at: At::Queue { tag: m.tag },
                })),
                Ok(None) => Ok(None),
                Err(e) => Err(e.to_string()),
            },
        }
    }
}

/// What the replay reads, opened.
struct Opened {
    reader: Reader,
    /// Records to read, when known (for the progress bar).
    total: Option<u64>,
    /// Acknowledges a queue's messages once written.
    acker: Option<QueueAcker>,
    /// The Kafka reader, shared with its thread, for `--group` commits.
    kafka: Option<Arc<Mutex<KafkaReader>>>,
    /// The Kafka ranges read, for the resume command.
    ranges: BTreeMap<i32, OffsetRange>,
}

/// Per partition (or `-1` for lines), what was handed out and confirmed: where a rerun starts
/// and what `--group` commits.
type Progressed = Arc<Mutex<BTreeMap<i32, Pending>>>;

fn key_of(at: At) -> (i32, i64) {
    match at {
        At::Kafka { partition, offset } => (partition, offset),
        At::Line(l) => (-1, l as i64),
        At::Queue { tag } => (-2, tag as i64),
    }
}

/// The writers of a run: the fixed destination, or one per origin kind (and file).
struct Writers {
    fixed: Option<Arc<Writer>>,
    by_dest: HashMap<Dest, Arc<Writer>>,
}

impl Replay {
    /// The writer for `dest`, made on first use.
    fn writer(&self, writers: &mut Writers, dest: &Dest) -> Result<Arc<Writer>, String> {
        if let Dest::Fixed = dest {
            return writers
                .fixed
                .clone()
                .ok_or_else(|| "no destination".to_string());
        }
        // One writer per kind of origin: records name their topic or queue as their target.
        let slot = match dest {
            Dest::Topic(_) => Dest::Topic(String::new()),
            Dest::Queue(_) => Dest::Queue(String::new()),
            other => other.clone(),
        };
        if let Some(w) = writers.by_dest.get(&slot) {
            return Ok(w.clone());
        }
        let endpoint = match (dest, &self.from) {
            (Dest::Topic(_), Endpoint::Kafka { connection, .. }) => Endpoint::Kafka {
                connection: connection.clone(),
                topic: None,
            },
            (Dest::Queue(_), Endpoint::Amqp { sink, .. }) => {
                let mut sink = (**sink).clone();
                sink.exchange = String::new();
                sink.routing_key = String::new();
                sink.mandatory = true;
                Endpoint::Amqp {
                    sink: Box::new(sink),
                    queue: None,
                    fixed_routing_key: false,
                }
            }
            (Dest::File(path), _) => Endpoint::File { path: path.clone() },
            (Dest::Topic(t), _) => {
                return Err(format!(
                    "it came from Kafka topic `{t}`, and no Kafka connection is known here; give \
                     --to or --to-sink"
                ));
            }
            (Dest::Queue(q), _) => {
                return Err(format!(
                    "it came from RabbitMQ queue `{q}`, and no RabbitMQ connection is known \
                     here; give --to or --to-sink"
                ));
            }
            (Dest::Fixed, _) => unreachable!("handled above"),
        };
        let writer =
            Arc::new(Writer::new(&endpoint, "fnmill replay").map_err(|e| format!("{e:#}"))?);
        writers.by_dest.insert(slot, writer.clone());
        Ok(writer)
    }

    async fn run(self, plan: Option<KafkaPlan>) -> Result<ExitCode> {
        let started = Instant::now();
        let interrupt = super::interrupt_token();
        let stop = CancellationToken::new();
        let progressed: Progressed = Arc::default();
        let Opened {
            mut reader,
            total,
            acker,
            kafka: kafka_reader,
            ranges,
        } = self.open_reader(plan, &stop).await?;
        let mut writers = Writers {
            fixed: match (&self.to, &self.mode) {
                (Some(to), Mode::Write) => Some(Arc::new(Writer::new(to, "fnmill replay")?)),
                _ => None,
            },
            by_dest: HashMap::new(),
        };

        let verb = match self.mode {
            Mode::Write => "replayed",
            Mode::Print | Mode::Count => "read",
        };
        let progress = Progress::new(verb, total, self.args.quiet, self.args.error_lines);
        let stats = Arc::new(Mutex::new(Stats::default()));
        let destinations: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
        let window = Arc::new(Semaphore::new(WINDOW));
        let pacer_start = tokio::time::Instant::now();
        let committer = kafka_reader
            .clone()
            .filter(|_| self.args.group.is_some() && matches!(self.mode, Mode::Write))
            .map(|k| spawn_committer(k, progressed.clone(), stop.clone()));
        let mut interrupted = false;
        let mut limited = false;
        let mut read_error = None;
        let mut taken = 0u64;
        loop {
            if self.args.limit.is_some_and(|l| taken >= l) {
                limited = true;
                break;
            }
            let next = tokio::select! {
                biased;
                _ = interrupt.cancelled() => {
                    interrupted = true;
                    progress.println(super::INTERRUPTED);
                    break;
                }
                next = reader.next() => next,
            };
            let item = match next {
                Ok(Some(item)) => item,
                Ok(None) => break,
                Err(e) => {
                    read_error = Some(e);
                    break;
                }
            };
            stats.lock().unwrap().read += 1;
            let (slot, position) = key_of(item.at);
            if self.args.dead_letters && !self.wanted(&item.headers) {
                stats.lock().unwrap().skipped += 1;
                progressed
                    .lock()
                    .unwrap()
                    .entry(slot)
                    .or_default()
                    .pass(position);
                progress.inc();
                continue;
            }
            if let Some(rate) = self.args.rate {
                let due = pacer_start + Duration::from_secs_f64(taken as f64 / rate);
                tokio::select! {
                    biased;
                    _ = interrupt.cancelled() => {
                        interrupted = true;
                        progress.println(super::INTERRUPTED);
                        break;
                    }
                    _ = tokio::time::sleep_until(due) => {}
                }
            }
            taken += 1;
            progressed
                .lock()
                .unwrap()
                .entry(slot)
                .or_default()
                .start(position);
            let settle = {
                let (progressed, stats, progress) =
                    (progressed.clone(), stats.clone(), progress.clone());
                move |how: Settled, kind: Option<&str>| {
                    if let Some(kind) = kind {
                        stats.lock().unwrap().fail(kind);
                    }
                    progressed
                        .lock()
                        .unwrap()
                        .entry(slot)
                        .or_default()
                        .settle(position, how);
                    progress.inc();
                }
            };
            let describe = describe_at(&self.from, item.at);
            // What to send: the record as read, or a dead letter as it was before it failed.
            let (record, dest) = match self.prepare(&item) {
                Ok(prepared) => prepared,
                Err((kind, message)) => {
                    progress.error(format!("error: {describe}: {message}"));
                    settle(Settled::Failed, Some(kind));
                    continue;
                }
            };
            // Each with the destination name a function gave it (none without a function).
            let records = match self.run_through(&item, record).await {
                Ok(records) => records,
                Err(failure) => {
                    progress.error(format!(
                        "error: {describe} (event {}): {}: {}",
                        item.id,
                        failure.kind(),
                        failure.message()
                    ));
                    settle(
                        Settled::failed(failure.is_retryable()),
                        Some(failure.kind()),
                    );
                    continue;
                }
            };
            match self.mode {
                Mode::Count => {
                    let mut d = destinations.lock().unwrap();
                    for _ in &records {
                        *d.entry(self.dest_name(&dest)).or_default() += 1;
                    }
                    stats.lock().unwrap().written += records.len() as u64;
                    settle(Settled::Done, None);
                }
                Mode::Print => {
                    let mut out = Vec::new();
                    for (destination, r) in &records {
                        let r = Record {
                            target: None,
                            ..r.clone()
                        };
                        through::output_line(destination, &r, &mut out);
                    }
                    let mut stdout = std::io::stdout().lock();
                    stdout
                        .write_all(&out)
                        .and_then(|()| stdout.flush())
                        .context("writing to standard output")?;
                    stats.lock().unwrap().written += records.len() as u64;
                    settle(Settled::Done, None);
                }
                Mode::Write => {
                    let writer = match self.writer(&mut writers, &dest) {
                        Ok(w) => w,
                        Err(message) => {
                            progress.error(format!("error: {describe}: {message}"));
                            settle(Settled::Failed, Some("no-destination"));
                            continue;
                        }
                    };
                    let permit = window.clone().acquire_owned().await?;
                    let mut confirms: Vec<Confirm> = Vec::with_capacity(records.len());
                    for (_, mut r) in records {
                        let lane = r.key.clone();
                        if let Dest::Fixed = dest {
                            r.target = self
                                .to
                                .as_ref()
                                .and_then(|to| to.key_target(r.key.as_ref()));
                        }
                        confirms.push(writer.submit(r, lane).await);
                    }
                    let ack = match (&acker, item.at) {
                        (Some(acker), At::Queue { tag }) => Some((acker.clone(), tag)),
                        _ => None,
                    };
                    let counters = Counters {
                        stats: stats.clone(),
                        destinations: destinations.clone(),
                        progress: progress.clone(),
                    };
                    let name = self.dest_name(&dest);
                    confirm_later(confirms, name, ack, describe, counters, settle, permit);
                }
            }
        }
        stop.cancel();
        let drained =
            tokio::time::timeout(super::DRAIN_TIMEOUT, window.acquire_many(WINDOW as u32))
                .await
                .is_ok();
        for w in writers.fixed.iter().chain(writers.by_dest.values()) {
            w.close().await;
        }
        // Only now: a queue's unacked messages go back to it when its reader closes, and
        // the acks of what was just confirmed must get out first.
        reader_finish(reader).await;
        if let Some(committer) = committer {
            let _ = committer.await;
        }
        if let Some(kafka) = &kafka_reader
            && self.args.group.is_some()
            && matches!(self.mode, Mode::Write)
        {
            let next = commit_offsets(&progressed);
            let kafka = kafka.clone();
            let committed =
                tokio::task::spawn_blocking(move || kafka.lock().unwrap().commit(&next)).await;
            if let Ok(Err(e)) = committed {
                eprintln!("error: --group: committing the offsets written: {e}");
            }
        }
        progress.finish();

        let mut stats = stats.lock().unwrap();
        stats.resent = writers
            .fixed
            .iter()
            .chain(writers.by_dest.values())
            .map(|w| w.resent())
            .sum();
        let trouble = read_error.is_some() || !drained;
        self.print_summary(
            &stats,
            &destinations.lock().unwrap(),
            started,
            trouble || interrupted,
        );
        if let Some(e) = &read_error {
            eprintln!("error: reading {}: {e}", self.from.describe());
        }
        if !drained {
            eprintln!(
                "error: records were still unconfirmed after {:?}; they count as not written",
                super::DRAIN_TIMEOUT
            );
        }
        let retryable = progressed
            .lock()
            .unwrap()
            .values()
            .any(Pending::has_retryable);
        if interrupted || limited || retryable {
            let stop = if interrupted {
                Stop::Interrupted
            } else if limited {
                Stop::Limit
            } else {
                Stop::Retryable
            };
            self.print_resume(&progressed, &ranges, stop);
        }
        if !drained || read_error.is_some() {
            return Ok(ExitCode::from(super::EXIT_FAILED));
        }
        Ok(super::exit_code(&stats, interrupted))
    }

    /// Opens what the replay reads: the Kafka reader's thread, the queue, or the file's thread.
    async fn open_reader(
        &self,
        plan: Option<KafkaPlan>,
        stop: &CancellationToken,
    ) -> Result<Opened> {
        let mut acker = None;
        let mut kafka = None;
        let mut ranges = BTreeMap::new();
        let (reader, total) = match (&self.from, plan) {
            (Endpoint::Kafka { .. }, Some(plan)) => {
                let total: u64 = plan.ranges.values().map(OffsetRange::len).sum();
                ranges = plan.ranges.clone();
                let mut reader = plan.reader;
                reader
                    .assign(&plan.ranges)
                    .context("FROM: assigning the partitions")?;
                let shared = Arc::new(Mutex::new(reader));
                kafka = Some(shared.clone());
                let (tx, rx) = mpsc::channel(READ_AHEAD);
                let topic = plan.topic.clone();
                let stop = stop.clone();
                std::thread::Builder::new()
                    .name("fnmill-kafka-reader".into())
                    .spawn(move || read_kafka(shared, &topic, tx, stop))?;
                (Reader::Channel(rx), Some(total))
            }
            (Endpoint::Amqp { sink, queue, .. }, _) => {
                let queue = queue.as_deref().expect("checked above");
                let source = Endpoint::amqp_source(sink, queue);
                let reader = QueueReader::open("fnmill replay", &source)
                    .await
                    .with_context(|| format!("reading queue `{queue}`"))?;
                acker = Some(reader.acker());
                let total = reader.remaining() as u64;
                (Reader::Queue(Box::new(reader)), Some(total))
            }
            (Endpoint::File { path }, _) => {
                if path != Path::new("-") && !path.is_file() {
                    bail!("FROM: no file at {}", path.display());
                }
                let (tx, rx) = mpsc::channel(READ_AHEAD);
                let (path, from) = (path.clone(), self.args.from_line.unwrap_or(1));
                let total = count_lines(&path, from);
                std::thread::Builder::new()
                    .name("fnmill-input".into())
                    .spawn(move || read_file(&path, from, tx))?;
                (Reader::Channel(rx), total)
            }
            (Endpoint::Kafka { .. }, None) => unreachable!("a Kafka source has a plan"),
        };
        Ok(Opened {
            reader,
            total,
            acker,
            kafka,
            ranges,
        })
    }

    /// The records to write for `record`: itself, or with --through the function's outputs.
    /// Each comes with the destination name the function gave it (none without a function).
    async fn run_through(
        &self,
        item: &Item,
        record: Record,
    ) -> Result<Vec<(String, Record)>, fnmill::host::Failure> {
        let Some(through) = &self.through else {
            return Ok(vec![(String::new(), record)]);
        };
        let event = Event {
            id: item.id.clone(),
            source: "replay".into(),
            key: record.key.clone(),
            payload: record.payload.clone(),
            headers: record.headers.clone(),
            timestamp_ms: item.timestamp_ms,
            origin: vec![],
            decode_error: None,
        };
        let outputs = through.function.invoke(&event, 1).await?;
        Ok(outputs
            .into_iter()
            .map(|o| {
                let output = Record {
                    target: record.target.clone(),
                    key: o.key,
                    payload: o.payload,
                    headers: o.headers,
                };
                (o.destination, output)
            })
            .collect())
    }

    /// The summary: read, written, skipped, failed by kind, per destination, Kafka offsets.
    /// With --quiet only when something went wrong (`trouble`, or a failure).
    fn print_summary(
        &self,
        stats: &Stats,
        destinations: &BTreeMap<String, u64>,
        started: Instant,
        trouble: bool,
    ) {
        let failed = stats.failed_total();
        if self.args.quiet && failed == 0 && !trouble {
            return;
        }
        let (written, suffix) = match self.mode {
            Mode::Write => ("written", ""),
            Mode::Print => ("printed", " (nothing written or acknowledged)"),
            Mode::Count => (
                "would be written",
                " (dry run: nothing written or acknowledged)",
            ),
        };
        let mut line = format!(
            "replay: {} read, {} {written}, {} skipped, {failed} failed {}{suffix}",
            stats.read,
            stats.written,
            stats.skipped,
            super::timing(started, stats.read),
        );
        if failed > 0 {
            line.push_str(&format!(" — failed: {}", stats.failed_by_kind()));
        }
        eprintln!("{line}");
        for (dest, n) in destinations {
            eprintln!("  {n} to {dest}");
        }
        for l in stats.kafka_lines() {
            eprintln!("{l}");
        }
    }

    /// Whether a dead letter passes the filters.
    fn wanted(&self, headers: &[Header]) -> bool {
        let matches = |wanted: &[String], name: &str| {
            wanted.is_empty()
                || header(headers, &format!("{ERROR_PREFIX}{name}"))
                    .is_some_and(|v| wanted.iter().any(|w| w.as_bytes() == v.as_ref()))
        };
        matches(&self.args.kinds, "kind")
            && matches(&self.args.routes, "route")
            && matches(&self.args.functions, "function")
    }

    /// The record to send for `item` and where it goes; for a dead letter, the original event
    /// with replay headers, bound for its origin. An error is `(kind, message)`.
    fn prepare(&self, item: &Item) -> Result<(Record, Dest), (&'static str, String)> {
        // Printed outputs go nowhere else; otherwise a dead letter goes to its origin unless a
        // destination was given.
        let fixed = self.to.is_some() || matches!(self.mode, Mode::Print);
        if !self.args.dead_letters {
            let record = Record {
                target: None,
                key: item.key.clone(),
                payload: item.payload.clone(),
                headers: item.headers.clone(),
            };
            return Ok((record, Dest::Fixed));
        }
        let origin = |name: &str| {
            header(&item.headers, &format!("{ERROR_PREFIX}origin.{name}"))
                .map(|v| String::from_utf8_lossy(v).into_owned())
        };
        let dest = if fixed {
            Dest::Fixed
        } else if let Some(topic) = origin("topic") {
            Dest::Topic(topic)
        } else if let Some(queue) = origin("queue") {
            Dest::Queue(queue)
        } else if let Some(file) = origin("file") {
            Dest::File(PathBuf::from(file))
        } else if header(&item.headers, &format!("{ERROR_PREFIX}kind")).is_none() {
            return Err((
                "not-a-dead-letter",
                "it has no fnmill.error.* headers; without --dead-letters records are copied as \
                 they are"
                    .into(),
            ));
        } else {
            return Err((
                "no-origin",
                "its fnmill.error.origin.* headers name no topic, queue or file; give --to".into(),
            ));
        };
        let mut headers: Vec<Header> = item
            .headers
            .iter()
            .filter(|h| !h.name.starts_with(ERROR_PREFIX) && !h.name.starts_with(REPLAY_PREFIX))
            .cloned()
            .collect();
        let mut add = |name: &str, value: String| {
            headers.push(Header::new(format!("{REPLAY_PREFIX}{name}"), value));
        };
        add(
            "at",
            humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        );
        match (&self.from, item.at) {
            (Endpoint::Kafka { topic, .. }, At::Kafka { partition, offset }) => {
                add("dead_letter.topic", topic.clone().unwrap_or_default());
                add("dead_letter.partition", partition.to_string());
                add("dead_letter.offset", offset.to_string());
            }
            (Endpoint::Amqp { queue, .. }, _) => {
                add("dead_letter.queue", queue.clone().unwrap_or_default());
            }
            (Endpoint::File { path }, At::Line(line)) => {
                add("dead_letter.file", path.display().to_string());
                add("dead_letter.line", line.to_string());
            }
            _ => {}
        }
        let target = match &dest {
            Dest::Topic(t) => Some(t.clone()),
            Dest::Queue(q) => Some(q.clone()),
            Dest::Fixed | Dest::File(_) => None,
        };
        // A key that fnmill's AMQP source made from a header or routing key is not the
        // message's own: the dead letter carries it, and it goes back as the record's key.
        let record = Record {
            target,
            key: item.key.clone(),
            payload: item.payload.clone(),
            headers,
        };
        Ok((record, dest))
    }

    fn dest_name(&self, dest: &Dest) -> String {
        match dest {
            Dest::Fixed => match (&self.to, &self.mode) {
                (_, Mode::Print) => "standard output".into(),
                (Some(to), _) => to.describe(),
                (None, _) => "no destination (none given)".into(),
            },
            Dest::Topic(t) => format!("Kafka topic `{t}`"),
            Dest::Queue(q) => format!("RabbitMQ queue `{q}`"),
            Dest::File(p) => format!("file {}", p.display()),
        }
    }

    /// Prints where the replay stopped and the command that goes on from there: from the first
    /// record still in flight or failed with an error that may pass if tried again.
    fn print_resume(
        &self,
        progressed: &Progressed,
        ranges: &BTreeMap<i32, OffsetRange>,
        stop: Stop,
    ) {
        let why = stop.why();
        let (stopped_at, resume) = match stop {
            Stop::Retryable => ("the first at", "To try them again"),
            Stop::Interrupted | Stop::Limit => ("stopped at", "To resume"),
        };
        let progressed = progressed.lock().unwrap();
        if !matches!(stop, Stop::Retryable) && progressed.values().any(Pending::has_retryable) {
            eprintln!(
                "Some records failed with errors that may pass if tried again: the command \
                 below starts at the first of them, and writes again whatever was written after \
                 it."
            );
        }
        match &self.from {
            Endpoint::Kafka { .. } => {
                let mut words = super::command_without(&[
                    "--partition",
                    "--from-offset",
                    "--to-offset",
                    "--since",
                    "--until",
                    "--limit",
                ]);
                let mut left = Vec::new();
                for (&p, range) in ranges {
                    let next = progressed
                        .get(&p)
                        .and_then(Pending::resume_from)
                        .unwrap_or(range.start);
                    if next < range.end {
                        left.push((p, next, range.end));
                    }
                }
                if left.is_empty() {
                    eprintln!("{why}: every partition's range was read.");
                    return;
                }
                let at: Vec<String> = left
                    .iter()
                    .map(|(p, next, _)| format!("partition {p} at offset {next}"))
                    .collect();
                for (p, next, end) in &left {
                    words.extend([
                        "--partition".into(),
                        p.to_string(),
                        "--from-offset".into(),
                        format!("{p}:{next}"),
                        "--to-offset".into(),
                        format!("{p}:{}", end - 1),
                    ]);
                }
                eprintln!(
                    "{why}: {stopped_at} {}. {resume}:\n  {}",
                    at.join(", "),
                    super::shell_line(&words)
                );
            }
            Endpoint::Amqp { .. } => {
                let words = super::command_without(&["--limit"]);
                eprintln!(
                    "{why}: what was not acknowledged is back in the queue. {resume}:\n  {}",
                    super::shell_line(&words)
                );
            }
            Endpoint::File { path } => {
                let next = progressed.get(&-1).and_then(Pending::resume_from);
                match next {
                    Some(line) if path != Path::new("-") => {
                        let mut words = super::command_without(&["--from-line", "--limit"]);
                        words.extend(["--from-line".into(), line.to_string()]);
                        eprintln!(
                            "{why}: {stopped_at} line {line}. {resume}:\n  {}",
                            super::shell_line(&words)
                        );
                    }
                    Some(line) => {
                        eprintln!("{why}: {stopped_at} line {line} of standard input.")
                    }
                    None => eprintln!("{why}: nothing was read."),
                }
            }
        }
    }
}

/// Why a replay prints a command that goes on where it left off.
#[derive(Clone, Copy)]
enum Stop {
    /// Ctrl-C or SIGTERM.
    Interrupted,
    /// `--limit` records were read.
    Limit,
    /// It read everything, but records failed with errors that may pass if tried again.
    Retryable,
}

impl Stop {
    fn why(self) -> &'static str {
        match self {
            Stop::Interrupted => "Interrupted",
            Stop::Limit => "Stopped at --limit",
            Stop::Retryable => "Failed with errors that may pass if tried again",
        }
    }
}

/// What the tasks that wait for confirmations count into.
struct Counters {
    stats: Arc<Mutex<Stats>>,
    destinations: Arc<Mutex<BTreeMap<String, u64>>>,
    progress: Progress,
}

/// Waits, on a task of its own, for one item's records to be confirmed (`name`: where they
/// went); then counts them, acks the queue message the item was (`ack`) and settles the item.
/// The item's window `permit` is released only then.
fn confirm_later(
    confirms: Vec<Confirm>,
    name: String,
    ack: Option<(QueueAcker, u64)>,
    describe: String,
    counters: Counters,
    settle: impl FnOnce(Settled, Option<&str>) + Send + 'static,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    let Counters {
        stats,
        destinations,
        progress,
    } = counters;
    tokio::spawn(async move {
        let mut error = None;
        for result in futures::future::join_all(confirms).await {
            match result {
                Ok(written) => {
                    stats.lock().unwrap().written(&written);
                    *destinations
                        .lock()
                        .unwrap()
                        .entry(name.clone())
                        .or_default() += 1;
                }
                Err(e) => {
                    error.get_or_insert(e);
                }
            }
        }
        match error {
            None => {
                if let Some((acker, tag)) = ack
                    && let Err(e) = acker.ack(tag).await
                {
                    // The broker requeues it: a duplicate later, not a loss.
                    progress.println(format!(
                        "warning: {describe}: written, but the ack failed ({e}); it stays in \
                         the queue"
                    ));
                }
                settle(Settled::Done, None);
            }
            Some(e) => {
                progress.error(format!(
                    "error: {describe}: not written to {name}: {}",
                    e.message
                ));
                settle(Settled::failed(e.retryable), Some(e.kind()));
            }
        }
        drop(permit);
    });
}

/// `--group` commits: per partition, the first offset not written.
fn commit_offsets(progressed: &Progressed) -> BTreeMap<i32, i64> {
    progressed
        .lock()
        .unwrap()
        .iter()
        .filter(|(p, _)| **p >= 0)
        .filter_map(|(p, pending)| pending.commit_from().map(|o| (*p, o)))
        .collect()
}

/// Commits every [`COMMIT_EVERY`] until `stop`, so that a crash with `--group` repeats little.
fn spawn_committer(
    kafka: Arc<Mutex<KafkaReader>>,
    progressed: Progressed,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(COMMIT_EVERY) => {}
            }
            let next = commit_offsets(&progressed);
            let kafka = kafka.clone();
            let result =
                tokio::task::spawn_blocking(move || kafka.lock().unwrap().commit(&next)).await;
            if let Ok(Err(e)) = result {
                tracing::warn!(error = %e, "Committing the replay's progress failed; retrying");
            }
        }
    })
}

/// Ends reading: a queue reader closes its connection, which requeues what was not acked.
async fn reader_finish(reader: Reader) {
    match reader {
        Reader::Channel(rx) => drop(rx),
        Reader::Queue(q) => q.close().await,
    }
}

fn header<'a>(headers: &'a [Header], name: &str) -> Option<&'a Bytes> {
    headers
        .iter()
        .rev()
        .find(|h| h.name == name)
        .map(|h| &h.value)
}

fn describe_at(from: &Endpoint, at: At) -> String {
    match (from, at) {
        (Endpoint::Kafka { topic, .. }, At::Kafka { partition, offset }) => format!(
            "{} partition {partition} offset {offset}",
            topic.as_deref().unwrap_or_default()
        ),
        (Endpoint::Amqp { queue, .. }, At::Queue { tag }) => format!(
            "queue {} message {tag}",
            queue.as_deref().unwrap_or_default()
        ),
        (_, At::Line(line)) => format!("line {line}"),
        (_, at) => format!("{at:?}"),
    }
}

/// The Kafka reader's thread: reads the ranges into `tx` until they end or `stop`.
fn read_kafka(
    kafka: Arc<Mutex<KafkaReader>>,
    topic: &str,
    tx: mpsc::Sender<Result<Item, String>>,
    stop: CancellationToken,
) {
    loop {
        if stop.is_cancelled() {
            return;
        }
        let polled = kafka.lock().unwrap().poll(POLL);
        let item = match polled {
            Ok(Polled::Record(r)) => Ok(Item {
                id: header(&r.headers, &format!("{ERROR_PREFIX}event.id"))
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .unwrap_or_else(|| format!("{topic}/{}/{}", r.partition, r.offset)),
                key: r.key,
                payload: r.payload,
                headers: r.headers,
                timestamp_ms: r.timestamp_ms,
                at: At::Kafka {
                    partition: r.partition,
                    offset: r.offset,
                },
            }),
            Ok(Polled::Idle) => continue,
            Ok(Polled::Finished) => return,
            Err(e) => Err(e.to_string()),
        };
        let failed = item.is_err();
        if tx.blocking_send(item).is_err() || failed {
            return;
        }
    }
}

/// A JSON Lines file's reader thread. A malformed line is a failed record (its line number in
/// the message), not the end of the replay.
fn read_file(path: &Path, from: u64, tx: mpsc::Sender<Result<Item, String>>) {
    let reader: Box<dyn Read + Send> = if path == Path::new("-") {
        Box::new(std::io::stdin())
    } else {
        match std::fs::File::open(path) {
            Ok(f) => Box::new(f),
            Err(e) => {
                let _ = tx.blocking_send(Err(format!("{}: {e}", path.display())));
                return;
            }
        }
    };
    let mut reader = BufReader::with_capacity(256 * 1024, reader);
    let mut line = Vec::new();
    let mut number = 0u64;
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) => {
                let _ = tx.blocking_send(Err(format!("{}: {e}", path.display())));
                return;
            }
        }
        number += 1;
        if number < from || line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let item = match jsonl::parse_event(&line) {
            Ok(e) => Ok(Item {
                id: e
                    .id
                    .clone()
                    .or_else(|| {
                        header(&e.headers, &format!("{ERROR_PREFIX}event.id"))
                            .map(|v| String::from_utf8_lossy(v).into_owned())
                    })
                    .unwrap_or_else(|| format!("{}:{number}", path.display())),
                key: e.key,
                payload: e.payload,
                headers: e.headers,
                timestamp_ms: e.timestamp_ms,
                at: At::Line(number),
            }),
            Err(e) => Err(format!("line {number}: {e}")),
        };
        let failed = item.is_err();
        if tx.blocking_send(item).is_err() || failed {
            return;
        }
    }
}

fn count_lines(path: &Path, from: u64) -> Option<u64> {
    if path == Path::new("-") {
        return None;
    }
    let text = std::fs::read(path).ok()?;
    let lines = text.iter().filter(|&&b| b == b'\n').count() as u64;
    Some(lines.saturating_sub(from - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_are_all_or_per_partition() {
        let (all, per) =
            parse_offsets(&["5".into(), "2:7".into(), "0:0".into()], "--from-offset").unwrap();
        assert_eq!(all, Some(5));
        assert_eq!(per, BTreeMap::from([(0, 0), (2, 7)]));
        let err = parse_offsets(&["x".into()], "--to-offset")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("--to-offset: expected N or PARTITION:N"),
            "{err}"
        );
        assert!(parse_offsets(&["-1".into()], "--from-offset").is_err());
    }

    #[test]
    fn times_are_rfc3339_or_a_duration_ago() {
        assert_eq!(
            parse_time("2026-03-01T10:00:00Z", "--since").unwrap(),
            1_772_359_200_000
        );
        assert_eq!(
            parse_time("2026-03-01T12:00:00+02:00", "--since").unwrap(),
            1_772_359_200_000
        );
        let ago = parse_time("1h", "--since").unwrap();
        let now = millis(SystemTime::now());
        assert!((now - ago - 3_600_000).abs() < 5_000, "{}", now - ago);
        let err = parse_time("yesterday-ish", "--until")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("--until: `yesterday-ish` is neither"),
            "{err}"
        );
    }
}
