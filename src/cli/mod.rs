//! The commands beside `fnmill run`: `publish` and `replay` put events on a topic, an exchange
//! or a queue, and replay ranges of topics, dead letters and JSON Lines files, through the same
//! connectors, config and JSON Lines form as `fnmill run`; `new` and `build` help write functions.
//!
//! # Layout
//!
//! - [`endpoint`]: URLs (`kafka://`, `amqp[s]://`, paths) and config sources and sinks as one
//!   [`endpoint::Endpoint`].
//! - [`writer`]: writes records through fnmill's sinks one at a time, each with its own
//!   confirmation, keeping the order per key.
//! - [`progress`]: the progress bar, plain progress lines, or nothing.
//! - [`publish`], [`replay`]: the two commands.
//! - [`through`]: runs events through a function, wired as `fnmill invoke` wires it.
//! - [`new`], [`build`]: write a function project from a template, and build it into a component.

pub mod build;
pub mod endpoint;
pub mod new;
pub mod progress;
pub mod publish;
pub mod replay;
pub mod through;
pub mod writer;

use std::collections::{BTreeMap, BTreeSet};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use writer::Written;

/// Exit status when an event failed (not confirmed, a bad input line, a function failure).
pub const EXIT_FAILED: u8 = 1;
/// Exit status when a Ctrl-C or SIGTERM stopped the command before it finished (and nothing
/// failed), as shells report a process ended by SIGINT.
pub const EXIT_INTERRUPTED: u8 = 130;

/// Records confirmed, events failed, and where Kafka put what was written.
#[derive(Debug, Default)]
pub struct Stats {
    /// Events (input lines, records) read.
    pub read: u64,
    /// Records confirmed by the destination.
    pub written: u64,
    /// Events left out on purpose (a filter, a blank line).
    pub skipped: u64,
    /// Events that failed, by kind of failure.
    pub failed: BTreeMap<String, u64>,
    /// Per topic and partition, the lowest and highest offset written.
    pub kafka: BTreeMap<(String, i32), (i64, i64)>,
    /// Records sent again after Kafka reported them delivered without an offset
    /// ([`writer::Writer::resent`]).
    pub resent: u64,
}

impl Stats {
    pub fn failed_total(&self) -> u64 {
        self.failed.values().sum()
    }

    pub fn fail(&mut self, kind: &str) {
        *self.failed.entry(kind.to_string()).or_default() += 1;
    }

    pub fn written(&mut self, written: &Written) {
        self.written += 1;
        if let Written::Kafka { topic, at } = written {
            let range = self
                .kafka
                .entry((topic.clone(), at.partition))
                .or_insert((at.offset, at.offset));
            range.0 = range.0.min(at.offset);
            range.1 = range.1.max(at.offset);
        }
    }

    /// `fatal: 2, unroutable: 1`
    pub fn failed_by_kind(&self) -> String {
        self.failed
            .iter()
            .map(|(k, n)| format!("{k}: {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The lines under a summary that say where Kafka put the records, and which records it
    /// may hold twice.
    pub fn kafka_lines(&self) -> Vec<String> {
        let mut lines: Vec<String> = self
            .kafka
            .iter()
            .map(|((topic, partition), (first, last))| {
                let n = last - first + 1;
                let records = if n == 1 { "record" } else { "records" };
                format!("  {topic} partition {partition}: offsets {first}..={last} ({n} {records})")
            })
            .collect();
        if self.resent > 0 {
            lines.push(format!(
                "  warning: {} record(s) sent again after Kafka reported them delivered without \
                 an offset; any the broker did store are in the topic twice",
                self.resent
            ));
        }
        lines
    }
}

/// Elapsed time and rate for a summary: `in 1.2s (8333/s)`.
pub fn timing(started: Instant, count: u64) -> String {
    let secs = started.elapsed().as_secs_f64().max(0.001);
    format!("in {secs:.1}s ({:.0}/s)", count as f64 / secs)
}

/// The exit status a finished run earned.
pub fn exit_code(stats: &Stats, interrupted: bool) -> ExitCode {
    if stats.failed_total() > 0 {
        ExitCode::from(EXIT_FAILED)
    } else if interrupted {
        ExitCode::from(EXIT_INTERRUPTED)
    } else {
        ExitCode::SUCCESS
    }
}

/// What a command prints (above its progress bar) when the first interrupt stops it.
pub const INTERRUPTED: &str = "Interrupted: finishing what is in flight (Ctrl-C again to exit now)";

/// A token cancelled by the first Ctrl-C or SIGTERM; a second Ctrl-C exits at once. Must be
/// called inside the tokio runtime.
pub fn interrupt_token() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        else {
            return;
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        cancel.cancel();
        let _ = tokio::signal::ctrl_c().await;
        eprintln!("Second interrupt: exiting now");
        std::process::exit(EXIT_INTERRUPTED as i32);
    });
    token
}

/// How a position handed out ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settled {
    /// Written and confirmed (or counted, or printed).
    Done,
    /// Failed in a way a rerun would repeat (a trap, a malformed record, a permanent sink
    /// error): reported when it failed, and left behind by a resume.
    Failed,
    /// Failed in a way that may pass if tried again (a broker away, a timeout, a function's
    /// `retryable` error): a resume starts no later than here.
    Retryable,
}

impl Settled {
    /// A failure, retryable or for good.
    pub fn failed(retryable: bool) -> Self {
        if retryable {
            Settled::Retryable
        } else {
            Settled::Failed
        }
    }
}

/// Positions handed out (lines, offsets): where a rerun goes on from, and how far a consumer
/// group may commit.
#[derive(Debug, Default)]
pub struct Pending {
    open: BTreeSet<i64>,
    failed: BTreeSet<i64>,
    retryable: BTreeSet<i64>,
    /// The position after the last one handed out.
    next: Option<i64>,
}

impl Pending {
    pub fn start(&mut self, position: i64) {
        self.open.insert(position);
        self.next = Some(self.next.map_or(position + 1, |n| n.max(position + 1)));
    }

    /// A position read and left out on purpose: done as far as resuming goes.
    pub fn pass(&mut self, position: i64) {
        self.next = Some(self.next.map_or(position + 1, |n| n.max(position + 1)));
    }

    pub fn settle(&mut self, position: i64, how: Settled) {
        self.open.remove(&position);
        match how {
            Settled::Done => {}
            Settled::Failed => {
                self.failed.insert(position);
            }
            Settled::Retryable => {
                self.retryable.insert(position);
            }
        }
    }

    /// Where a rerun goes on from: the first position still in flight or failed in a way that
    /// may pass if tried again, else the next one not read. A position that failed for good is
    /// passed over: it was reported when it failed, and a rerun would only fail it again.
    /// `None` if nothing was handed out.
    pub fn resume_from(&self) -> Option<i64> {
        self.first_to_redo().or(self.next)
    }

    /// The first position still in flight or failed in a way that may pass if tried again.
    fn first_to_redo(&self) -> Option<i64> {
        let first_open = self.open.first().copied();
        let first_retryable = self.retryable.first().copied();
        first_open.into_iter().chain(first_retryable).min()
    }

    /// Whether a position failed in a way that may pass if tried again.
    pub fn has_retryable(&self) -> bool {
        !self.retryable.is_empty()
    }

    /// How far a consumer group may commit: to the first position not written, in flight or
    /// failed, so that a rerun with the group tries a failed record again (at-least-once).
    pub fn commit_from(&self) -> Option<i64> {
        let first_failed = self.failed.first().copied();
        self.first_to_redo()
            .into_iter()
            .chain(first_failed)
            .min()
            .or(self.next)
    }
}

/// The command line that was run, without the `flags` (each taking one value, as `--f v` or
/// `--f=v`), shell-quoted, for a resume hint.
pub fn command_without(flags: &[&str]) -> Vec<String> {
    let args: Vec<String> = std::env::args().collect();
    let mut out = Vec::new();
    let mut skip_next = false;
    for (i, arg) in args.iter().enumerate() {
        if skip_next {
            skip_next = false;
            continue;
        }
        if flags.contains(&arg.as_str()) {
            skip_next = true;
            continue;
        }
        if flags.iter().any(|f| arg.starts_with(&format!("{f}="))) {
            continue;
        }
        out.push(if i == 0 {
            "fnmill".to_string()
        } else {
            arg.clone()
        });
    }
    out
}

/// `words` as one shell command line.
pub fn shell_line(words: &[String]) -> String {
    words
        .iter()
        .map(|w| {
            let plain = !w.is_empty()
                && w.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_./:=,@%+".contains(&b));
            if plain {
                w.clone()
            } else {
                format!("'{}'", w.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Logging for `publish` and `replay`: their own output is the progress and the summary, so
/// only warnings and errors are logged (`RUST_LOG` overrides). Every failure that matters to a
/// publish or a replay comes back as a result and is reported by the command itself, so two
/// noisy sources are quieter: lapin, which logs the closing of its own channels at the end of
/// a run as errors, and the Kafka sink's "brokers unreachable" warning, which a service logs on
/// every retry (librdkafka's own errors, which it deduplicates, still show).
pub fn init_logging() {
    fnmill::telemetry::init(&fnmill::config::TelemetryConfig {
        log: "warn,lapin=off,fnmill_connector_kafka::sink=error".into(),
        log_format: fnmill::config::LogFormat::Text,
        ..Default::default()
    });
}

/// Longest wait, after the input ended or an interrupt, for what is in flight to be confirmed;
/// above the sinks' own timeouts (AMQP's 30 s confirm timeout), so they answer first.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_starts_at_the_first_unconfirmed_position() {
        let mut p = Pending::default();
        assert_eq!(p.resume_from(), None);
        for pos in 10..15 {
            p.start(pos);
        }
        p.settle(10, Settled::Done);
        p.settle(12, Settled::Done);
        assert_eq!(p.resume_from(), Some(11));
        p.settle(11, Settled::Done);
        p.settle(13, Settled::Failed);
        assert_eq!(p.resume_from(), Some(14));
        p.settle(14, Settled::Done);
        assert_eq!(
            p.resume_from(),
            Some(15),
            "a rerun goes on after a failure for good"
        );
        assert!(!p.has_retryable());
        assert_eq!(p.commit_from(), Some(13), "a group commits up to it");
        let mut q = Pending::default();
        q.start(3);
        q.settle(3, Settled::Done);
        q.pass(4);
        assert_eq!(q.resume_from(), Some(5));
    }

    #[test]
    fn resume_starts_at_the_first_failure_that_may_pass_if_tried_again() {
        let mut p = Pending::default();
        for pos in 0..6 {
            p.start(pos);
        }
        p.settle(0, Settled::Done);
        p.settle(1, Settled::Failed);
        p.settle(2, Settled::Retryable);
        p.settle(3, Settled::Done);
        p.settle(5, Settled::Done);
        assert_eq!(p.resume_from(), Some(2), "before the one still in flight");
        p.settle(4, Settled::Retryable);
        assert_eq!(p.resume_from(), Some(2));
        assert!(p.has_retryable());
        assert_eq!(p.commit_from(), Some(1));
    }

    #[test]
    fn shell_lines_quote_what_needs_it() {
        let words = vec![
            "fnmill".to_string(),
            "replay".into(),
            "amqp://guest:guest@127.0.0.1:5672/%2f?queue=dlq".into(),
            "--since".into(),
            "it's".into(),
        ];
        assert_eq!(
            shell_line(&words),
            "fnmill replay 'amqp://guest:guest@127.0.0.1:5672/%2f?queue=dlq' --since 'it'\\''s'"
        );
    }
}
