//! `fnmill publish`: events from arguments or JSON Lines onto a Kafka topic, a RabbitMQ
//! exchange or queue, or a JSON Lines file, each confirmed (Kafka delivery report, AMQP
//! publisher confirm with `mandatory`) before it counts as sent.

use std::io::{BufRead, BufReader, IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::{Args, ValueEnum};
use fnmill_connector_api::{Header, Record};
use fnmill_connector_file::jsonl::{self, EventLine};
use tokio::sync::{Semaphore, mpsc};

use super::endpoint::{self, Endpoint};
use super::progress::{ErrorLines, Progress};
use super::writer::Writer;
use super::{Pending, Settled, Stats};

/// Records awaiting their confirmation at once: enough to keep a broker busy (librdkafka
/// batches them; the AMQP sink spreads them over its channels), few enough that an interrupt
/// drains quickly.
const WINDOW: usize = 1000;

/// Input lines read ahead of the publishing loop.
const READ_AHEAD: usize = 1024;

/// `fnmill publish` arguments. See `--help`.
#[derive(Args, Debug)]
#[command(after_long_help = PUBLISH_AFTER_HELP)]
pub struct PublishArgs {
    /// Where to publish: `kafka://HOST:PORT/TOPIC`,
    /// `amqp[s]://USER:PASS@HOST:PORT/VHOST?exchange=X[&routing_key=K]` or `…?queue=Q`, a
    /// JSON Lines file, or `-` (standard output). Or give --config and --sink instead.
    #[arg(value_name = "TARGET", required_unless_present = "sink")]
    pub destination: Option<String>,
    /// The config whose sink (--sink) to publish through: its TLS, SASL and secrets apply.
    #[arg(short, long, env = "FNMILL_CONFIG")]
    pub config: Option<PathBuf>,
    /// A sink of the config to publish through.
    #[arg(long, conflicts_with = "destination", requires = "config")]
    pub sink: Option<String>,
    /// With --sink: the topic (Kafka) or routing key (AMQP), instead of the sink's own.
    #[arg(long, requires = "sink")]
    pub target: Option<String>,
    /// One event from arguments: its payload, as text, or `@FILE` for a file's bytes
    /// (`@-`: standard input).
    #[arg(long, conflicts_with = "input")]
    pub payload: Option<String>,
    /// One event from arguments: its key. On AMQP, the routing key unless the target fixes one.
    #[arg(long, conflicts_with = "input")]
    pub key: Option<String>,
    /// One event from arguments: a header `NAME=VALUE`; repeatable.
    #[arg(long = "header", value_name = "NAME=VALUE", conflicts_with = "input")]
    pub headers: Vec<String>,
    /// Publish the argument event N times; `{{seq}}` (0 to N-1), `{{uuid}}` (one per event)
    /// and `{{now_ms}}` in its payload, key and header values are filled in per event.
    #[arg(long, value_name = "N", conflicts_with = "input")]
    pub count: Option<u64>,
    /// Events as JSON Lines (the form the file source reads: `id`, `key`/`key_base64`,
    /// `payload`/`payload_text`/`payload_base64`, `headers`/`headers_base64`), from a file or
    /// `-` (standard input, also the default when no argument event is given).
    #[arg(short, long, value_name = "FILE")]
    pub input: Option<PathBuf>,
    /// With --input: start at this line (1 is the first), e.g. to resume an interrupted run.
    #[arg(long, value_name = "LINE", requires = "input")]
    pub from_line: Option<u64>,
    /// At most this many events per second.
    #[arg(long, value_name = "EVENTS_PER_SECOND")]
    pub rate: Option<f64>,
    /// What a malformed input line does: `abort` stops reading there (what was read before it
    /// is still confirmed); `skip` reports it and goes on.
    #[arg(long, value_enum, default_value_t = OnError::Abort)]
    pub on_error: OnError,
    /// Lines about failed events to print before only counting them: a number, or `all`. The
    /// summary counts every failure by kind either way.
    #[arg(long, value_name = "N|all", default_value = ErrorLines::DEFAULT)]
    pub error_lines: ErrorLines,
    /// No progress and, when everything was sent, no summary.
    #[arg(short, long)]
    pub quiet: bool,
}

const PUBLISH_AFTER_HELP: &str = "\
Examples:
  fnmill publish kafka://127.0.0.1:9092/orders --key c-7 --payload '{\"order_id\":\"o-1\"}'
  fnmill publish 'amqp://guest:guest@127.0.0.1:5672/%2f?exchange=orders&routing_key=new' -i orders.jsonl
  fnmill publish -c fnmill.toml --sink out --target orders -i - < orders.jsonl
  fnmill publish kafka://127.0.0.1:9092/load --count 100000 --rate 5000 \\
      --key 'k{{seq}}' --payload '{\"id\":\"{{uuid}}\",\"at\":{{now_ms}}}'

Every event is confirmed before it counts as sent: a Kafka delivery report, an AMQP publisher
confirm (published persistent and `mandatory`, so a message no queue receives fails), a write to
the file. The summary on standard error gives sent and failed counts and, for Kafka, the offsets
written per partition. With --input, Ctrl-C prints the command that publishes the rest, and
events that failed with an error that may pass if tried again (a broker away, a timeout) print
the command that tries them again from the first of them.

Exit status: 0 every event was sent; 1 an event failed or an input line was malformed (also
with --on-error skip); 2 a usage or configuration error; 130 interrupted (Ctrl-C) before the end.";

/// What a malformed input line does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OnError {
    Abort,
    Skip,
}

/// One event to publish, or a line that is not one.
enum Input {
    Event {
        /// Line number, or the sequence number of an argument event.
        at: u64,
        event: EventLine,
    },
    Bad {
        at: u64,
        error: String,
    },
}

pub fn run(args: PublishArgs) -> Result<ExitCode> {
    if args.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
        bail!("--rate: must be a number of events per second above 0");
    }
    if args.count == Some(0) {
        bail!("--count: must be at least 1");
    }
    if args.from_line == Some(0) {
        bail!("--from-line: lines count from 1");
    }
    let config = match &args.config {
        Some(path) if args.sink.is_some() => Some(fnmill::config::load(path).context("--config")?),
        _ => None,
    };
    super::init_logging();
    let endpoint = match (&args.destination, &args.sink, &config) {
        (Some(d), None, _) => endpoint::parse(d, "TARGET")?,
        (None, Some(sink), Some(config)) => {
            endpoint::from_sink(config, sink, args.target.as_deref(), "--sink")?
        }
        _ => bail!("give a TARGET, or --config with --sink"),
    };
    let flag = if args.sink.is_some() {
        "--target"
    } else {
        "TARGET"
    };
    if let Endpoint::Kafka { topic: None, .. } = &endpoint {
        bail!("{flag}: no topic to publish to (kafka://HOST:PORT/TOPIC, or --target)");
    }
    let argument_event = args.payload.is_some()
        || args.key.is_some()
        || !args.headers.is_empty()
        || args.count.is_some();
    let source = if argument_event {
        Source::Arguments(template(&args)?, args.count.unwrap_or(1))
    } else {
        let input = args.input.clone().unwrap_or_else(|| PathBuf::from("-"));
        if input == Path::new("-") && std::io::stdin().is_terminal() {
            bail!(
                "nothing to publish: give --payload (one event), --input FILE (JSON Lines), or \
                 pipe JSON Lines to standard input"
            );
        }
        if input != Path::new("-") && !input.is_file() {
            bail!("--input: no file at {}", input.display());
        }
        Source::Lines(input, args.from_line.unwrap_or(1))
    };

    endpoint.check_reachable(flag)?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("fnmill-publish")
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(publish(args, endpoint, source))
}

enum Source {
    /// The argument event, `count` times.
    Arguments(Template, u64),
    /// JSON Lines from a file (`-`: stdin), from a line on.
    Lines(PathBuf, u64),
}

/// The argument event before `{{…}}` are filled in.
struct Template {
    key: Option<String>,
    payload: Bytes,
    headers: Vec<(String, String)>,
}

fn template(args: &PublishArgs) -> Result<Template> {
    let payload = match args.payload.as_deref() {
        None => Bytes::new(),
        Some("@-") => {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .context("--payload: reading standard input")?;
            Bytes::from(buf)
        }
        Some(p) if p.starts_with('@') => Bytes::from(
            std::fs::read(&p[1..]).with_context(|| format!("--payload: reading {}", &p[1..]))?,
        ),
        Some(p) => Bytes::from(p.to_string()),
    };
    let headers = args
        .headers
        .iter()
        .map(|h| match h.split_once('=') {
            Some((name, value)) if !name.is_empty() => Ok((name.to_string(), value.to_string())),
            _ => bail!("--header: expected NAME=VALUE, got `{h}`"),
        })
        .collect::<Result<_>>()?;
    Ok(Template {
        key: args.key.clone(),
        payload,
        headers,
    })
}

/// `text` with `{{seq}}`, `{{uuid}}` and `{{now_ms}}` filled in.
fn fill(text: &[u8], seq: u64, uuid: &str, now_ms: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = find(rest, b"{{") {
        out.extend_from_slice(&rest[..start]);
        let after = &rest[start + 2..];
        let value = [
            (&b"seq}}"[..], seq.to_string()),
            (b"uuid}}", uuid.to_string()),
            (b"now_ms}}", now_ms.to_string()),
        ]
        .into_iter()
        .find(|(name, _)| after.starts_with(name));
        match value {
            Some((name, value)) => {
                out.extend_from_slice(value.as_bytes());
                rest = &after[name.len()..];
            }
            None => {
                out.extend_from_slice(b"{{");
                rest = after;
            }
        }
    }
    out.extend_from_slice(rest);
    out
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

impl Template {
    fn event(&self, seq: u64) -> EventLine {
        let uuid = uuid::Uuid::new_v4().to_string();
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or_default()
            .to_string();
        let text = |s: &str| {
            String::from_utf8_lossy(&fill(s.as_bytes(), seq, &uuid, &now_ms)).into_owned()
        };
        EventLine {
            id: None,
            key: self.key.as_deref().map(|k| Bytes::from(text(k))),
            payload: Bytes::from(fill(&self.payload, seq, &uuid, &now_ms)),
            headers: self
                .headers
                .iter()
                .map(|(n, v)| Header::new(n.clone(), text(v)))
                .collect(),
            timestamp_ms: None,
            target: None,
        }
    }
}

/// Reads JSON Lines on a thread of its own (files and stdin block) into `tx`, from line
/// `from` on. Blank lines are skipped.
fn read_lines(path: PathBuf, from: u64, tx: mpsc::Sender<Input>) -> std::io::Result<()> {
    let reader: Box<dyn Read + Send> = if path == Path::new("-") {
        Box::new(std::io::stdin())
    } else {
        Box::new(std::fs::File::open(&path)?)
    };
    let mut reader = BufReader::with_capacity(256 * 1024, reader);
    let mut line = Vec::new();
    let mut number = 0;
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        number += 1;
        if number < from || line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let input = match jsonl::parse_event(&line) {
            Ok(event) => Input::Event { at: number, event },
            Err(e) => Input::Bad {
                at: number,
                error: e.to_string(),
            },
        };
        if tx.blocking_send(input).is_err() {
            return Ok(());
        }
    }
}

/// Lines in a file (for the progress bar's total), or `None` for stdin.
fn count_lines(path: &Path, from: u64) -> Option<u64> {
    if path == Path::new("-") {
        return None;
    }
    let mut reader = BufReader::with_capacity(256 * 1024, std::fs::File::open(path).ok()?);
    let mut lines = 0u64;
    loop {
        let buf = reader.fill_buf().ok()?;
        if buf.is_empty() {
            break;
        }
        lines += buf.iter().filter(|&&b| b == b'\n').count() as u64;
        let n = buf.len();
        reader.consume(n);
    }
    Some(lines.saturating_sub(from - 1))
}

/// Keeps a steady rate: event `n` is due `n / rate` seconds after the start.
struct Pacer {
    start: tokio::time::Instant,
    rate: Option<f64>,
}

impl Pacer {
    async fn wait(&self, n: u64) {
        if let Some(rate) = self.rate {
            let due = self.start + Duration::from_secs_f64(n as f64 / rate);
            tokio::time::sleep_until(due).await;
        }
    }
}

/// The record for `event` on `endpoint`.
fn record(event: EventLine, endpoint: &Endpoint) -> Record {
    Record {
        target: endpoint.key_target(event.key.as_ref()),
        key: event.key,
        payload: event.payload,
        headers: event.headers,
    }
}

async fn publish(args: PublishArgs, endpoint: Endpoint, source: Source) -> Result<ExitCode> {
    let started = Instant::now();
    let interrupt = super::interrupt_token();
    let (tx, mut rx) = mpsc::channel(READ_AHEAD);
    let (total, what) = match source {
        Source::Arguments(template, count) => {
            tokio::spawn(async move {
                for seq in 0..count {
                    let input = Input::Event {
                        at: seq,
                        event: template.event(seq),
                    };
                    if tx.send(input).await.is_err() {
                        return;
                    }
                }
            });
            (Some(count), "event")
        }
        Source::Lines(path, from) => {
            let total = count_lines(&path, from);
            let label = path.display().to_string();
            std::thread::Builder::new()
                .name("fnmill-input".into())
                .spawn(move || {
                    if let Err(e) = read_lines(path, from, tx) {
                        eprintln!("error: --input: reading {label}: {e}");
                    }
                })?;
            (total, "line")
        }
    };
    let writer = Writer::new(&endpoint, "fnmill publish")?;
    let progress = Progress::new("sent", total, args.quiet, args.error_lines);
    let stats = Arc::new(Mutex::new(Stats::default()));
    let pending = Arc::new(Mutex::new(Pending::default()));
    let window = Arc::new(Semaphore::new(WINDOW));
    let pacer = Pacer {
        start: tokio::time::Instant::now(),
        rate: args.rate,
    };
    let mut interrupted = false;
    let mut aborted_at = None;
    let mut n = 0u64;
    loop {
        let input = tokio::select! {
            biased;
            _ = interrupt.cancelled() => {
                interrupted = true;
                progress.println(super::INTERRUPTED);
                break;
            }
            input = rx.recv() => input,
        };
        let Some(input) = input else { break };
        let (at, event) = match input {
            Input::Event { at, event } => (at, event),
            Input::Bad { at, error } => {
                stats.lock().unwrap().fail("bad-input");
                progress.error(format!("error: {what} {at}: {error}"));
                // Done with, as far as the bar's count and ETA go.
                progress.inc();
                if args.on_error == OnError::Abort {
                    aborted_at = Some(at);
                    break;
                }
                pending.lock().unwrap().pass(at as i64);
                continue;
            }
        };
        tokio::select! {
            biased;
            _ = interrupt.cancelled() => {
                interrupted = true;
                progress.println(super::INTERRUPTED);
                break;
            }
            _ = pacer.wait(n) => {}
        }
        n += 1;
        stats.lock().unwrap().read += 1;
        let lane = event.key.clone();
        let record = record(event, &endpoint);
        let permit = window.clone().acquire_owned().await?;
        pending.lock().unwrap().start(at as i64);
        let confirm = writer.submit(record, lane).await;
        let (stats, pending, progress) = (stats.clone(), pending.clone(), progress.clone());
        tokio::spawn(async move {
            let how = match confirm.await {
                Ok(written) => {
                    stats.lock().unwrap().written(&written);
                    Settled::Done
                }
                Err(e) => {
                    stats.lock().unwrap().fail(e.kind());
                    progress.error(format!("error: {what} {at}: {}", e.message));
                    Settled::failed(e.retryable)
                }
            };
            pending.lock().unwrap().settle(at as i64, how);
            progress.inc();
            drop(permit);
        });
    }
    drop(rx);
    let drained = tokio::time::timeout(super::DRAIN_TIMEOUT, window.acquire_many(WINDOW as u32))
        .await
        .is_ok();
    writer.close().await;
    progress.finish();

    let mut stats = stats.lock().unwrap();
    stats.resent = writer.resent();
    let failed = stats.failed_total();
    if !drained {
        eprintln!(
            "error: {} events were still unconfirmed after {:?}; they count as not sent",
            stats.read - stats.written - failed,
            super::DRAIN_TIMEOUT
        );
    }
    if !args.quiet || failed > 0 || interrupted || !drained {
        let mut line = format!(
            "publish: {} sent, {failed} failed to {} {}",
            stats.written,
            writer.description,
            super::timing(started, stats.written)
        );
        if failed > 0 {
            line.push_str(&format!(" — failed: {}", stats.failed_by_kind()));
        }
        eprintln!("{line}");
        for l in stats.kafka_lines() {
            eprintln!("{l}");
        }
    }
    if let Some(at) = aborted_at {
        eprintln!(
            "error: stopped at malformed {what} {at} (--on-error abort); nothing after it was sent"
        );
    }
    let (resume, retryable) = {
        let pending = pending.lock().unwrap();
        (pending.resume_from(), pending.has_retryable())
    };
    if interrupted || retryable {
        match (&args.input, resume) {
            (Some(input), Some(line)) if input != Path::new("-") => {
                let mut words = super::command_without(&["--from-line"]);
                words.push("--from-line".into());
                words.push(line.to_string());
                let (what, to) = if interrupted {
                    ("Interrupted at", "To publish the rest")
                } else {
                    (
                        "Failed with errors that may pass if tried again: the first at",
                        "To try them again",
                    )
                };
                eprintln!(
                    "{what} line {line} of {}. {to}:\n  {}",
                    input.display(),
                    super::shell_line(&words)
                );
            }
            _ if interrupted => {
                eprintln!("Interrupted: {} of {} events sent", stats.written, n)
            }
            _ => {}
        }
    }
    if !drained {
        return Ok(ExitCode::from(super::EXIT_FAILED));
    }
    Ok(super::exit_code(&stats, interrupted))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_fill_seq_uuid_and_now() {
        let out = fill(b"k{{seq}}-{{uuid}}-{{now_ms}}-{{other}}-{{", 7, "U", "123");
        assert_eq!(out, b"k7-U-123-{{other}}-{{");
        let t = Template {
            key: Some("k{{seq}}".into()),
            payload: Bytes::from_static(b"{\"id\":\"{{uuid}}\",\"n\":{{seq}}}"),
            headers: vec![("h".into(), "{{uuid}}".into())],
        };
        let e = t.event(3);
        assert_eq!(e.key.as_deref(), Some(&b"k3"[..]));
        let payload: serde_json::Value = serde_json::from_slice(&e.payload).unwrap();
        assert_eq!(payload["n"], 3);
        let uuid = payload["id"].as_str().unwrap();
        assert_eq!(uuid.len(), 36);
        assert_eq!(
            e.headers[0].value,
            Bytes::from(uuid.to_string()),
            "one uuid per event"
        );
        assert_ne!(
            t.event(3).payload,
            e.payload,
            "a new uuid for the next event"
        );
    }

    #[test]
    fn an_amqp_key_is_the_routing_key_unless_the_target_fixes_one() {
        let event = || EventLine {
            key: Some(Bytes::from_static(b"c-7")),
            ..Default::default()
        };
        let open = endpoint::parse("amqp://h/%2f?exchange=x", "T").unwrap();
        assert_eq!(record(event(), &open).target.as_deref(), Some("c-7"));
        let fixed = endpoint::parse("amqp://h/%2f?exchange=x&routing_key=r", "T").unwrap();
        assert_eq!(record(event(), &fixed).target, None);
        let kafka = endpoint::parse("kafka://h:1/t", "T").unwrap();
        assert_eq!(record(event(), &kafka).target, None);
    }
}
