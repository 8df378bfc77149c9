//! Progress of a long `publish` or `replay`: a bar on a terminal (count, rate and, when the
//! total is known, ETA), a plain line every few seconds when standard error is not a terminal
//! (a log, CI), nothing with `--quiet`. Messages about single events go through
//! [`Progress::println`] so that they do not tear the bar; errors about single events through
//! [`Progress::error`], which prints the first `--error-lines` of them and counts the rest (a
//! file of a million bad lines would otherwise flood the terminal and, redrawing the bar for
//! each, run six times slower).

use std::io::IsTerminal;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};

/// How often the plain form prints a line: often enough to show a run is alive, rarely enough
/// to keep a CI log readable.
const PLAIN_EVERY: Duration = Duration::from_secs(5);

/// How many lines about failed events (`--error-lines`) a run prints before it only counts
/// them; the summary counts every failure by kind either way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorLines {
    First(u64),
    All,
}

impl ErrorLines {
    /// `--error-lines`' default.
    pub const DEFAULT: &'static str = "20";
}

impl FromStr for ErrorLines {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s == "all" {
            return Ok(Self::All);
        }
        s.parse()
            .map(Self::First)
            .map_err(|_| format!("`{s}` is neither a number of lines nor `all`"))
    }
}

#[derive(Clone)]
pub struct Progress {
    inner: Arc<Inner>,
}

struct Inner {
    bar: Option<ProgressBar>,
    /// Events done, for the plain form.
    done: AtomicU64,
    total: Option<u64>,
    verb: &'static str,
    started: Instant,
    finished: AtomicBool,
    error_lines: ErrorLines,
    /// Lines about failed events so far, printed or not.
    errors: AtomicU64,
}

impl Progress {
    /// `verb` says what a counted event went through ("sent", "replayed"); `total` is the
    /// number expected, when known.
    /// `error_lines` caps the lines about failed events ([`Progress::error`]).
    pub fn new(
        verb: &'static str,
        total: Option<u64>,
        quiet: bool,
        error_lines: ErrorLines,
    ) -> Self {
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let template = match total {
                Some(_) => "{spinner} {bar:30} {human_pos}/{human_len} {msg} {rate} ETA {eta}",
                None => "{spinner} {human_pos} {msg} {rate} {elapsed}",
            };
            let style = ProgressStyle::with_template(template)
                .expect("the template is valid")
                .with_key(
                    "rate",
                    |state: &ProgressState, w: &mut dyn std::fmt::Write| {
                        let _ = write!(w, "{:.0}/s", state.per_sec());
                    },
                )
                .progress_chars("=> ");
            // Styled before it is first drawn, so no unstyled line is left behind.
            let bar = ProgressBar::with_draw_target(total, ProgressDrawTarget::stderr())
                .with_style(style)
                .with_message(verb);
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        let inner = Arc::new(Inner {
            bar,
            done: AtomicU64::new(0),
            total,
            verb,
            started: Instant::now(),
            finished: AtomicBool::new(false),
            error_lines,
            errors: AtomicU64::new(0),
        });
        if !quiet && inner.bar.is_none() {
            let weak = Arc::downgrade(&inner);
            std::thread::Builder::new()
                .name("fnmill-progress".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(PLAIN_EVERY);
                        let Some(inner) = weak.upgrade() else { return };
                        if inner.finished.load(Ordering::Relaxed) {
                            return;
                        }
                        inner.plain_line();
                    }
                })
                .ok();
        }
        Self { inner }
    }

    /// One more event done.
    pub fn inc(&self) {
        self.inner.done.fetch_add(1, Ordering::Relaxed);
        if let Some(bar) = &self.inner.bar {
            bar.inc(1);
        }
    }

    /// A line about one event (an error), printed above the bar; shown even with `--quiet`.
    pub fn println(&self, line: impl AsRef<str>) {
        match &self.inner.bar {
            Some(bar) => bar.suspend(|| eprintln!("{}", line.as_ref())),
            None => eprintln!("{}", line.as_ref()),
        }
    }

    /// A line about one failed event, printed like [`Progress::println`] while fewer than
    /// `--error-lines` were; past that it is only counted, and the first one withheld says so.
    pub fn error(&self, line: impl AsRef<str>) {
        let n = self.inner.errors.fetch_add(1, Ordering::Relaxed) + 1;
        match self.inner.error_lines {
            ErrorLines::First(limit) if n > limit => {
                if n == limit + 1 {
                    self.println(format!(
                        "error lines past the first {limit} are counted, not printed \
                         (--error-lines all prints every one)"
                    ));
                }
            }
            _ => self.println(line),
        }
    }

    /// Lines about failed events that [`Progress::error`] did not print.
    pub fn errors_withheld(&self) -> u64 {
        let n = self.inner.errors.load(Ordering::Relaxed);
        match self.inner.error_lines {
            ErrorLines::First(limit) => n.saturating_sub(limit),
            ErrorLines::All => 0,
        }
    }

    /// Removes the bar (the summary follows), after a line saying how many lines about failed
    /// events were withheld, if any were.
    pub fn finish(&self) {
        let withheld = self.errors_withheld();
        if withheld > 0 && !self.inner.finished.load(Ordering::Relaxed) {
            self.println(format!(
                "{withheld} more error lines not printed (--error-lines all prints every one)"
            ));
        }
        self.inner.finished.store(true, Ordering::Relaxed);
        if let Some(bar) = &self.inner.bar {
            bar.finish_and_clear();
        }
    }
}

impl Inner {
    fn plain_line(&self) {
        let done = self.done.load(Ordering::Relaxed);
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let rate = done as f64 / secs;
        let of = match self.total {
            Some(t) => format!("/{t}"),
            None => String::new(),
        };
        eprintln!(
            "{done}{of} {} ({rate:.0}/s, {:.0}s)",
            self.verb,
            secs.floor()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_lines_are_a_number_or_all() {
        assert_eq!("0".parse(), Ok(ErrorLines::First(0)));
        assert_eq!("20".parse(), Ok(ErrorLines::First(20)));
        assert_eq!("all".parse(), Ok(ErrorLines::All));
        let e = "some".parse::<ErrorLines>().unwrap_err();
        assert!(e.contains("`some`"), "{e}");
        assert_eq!(ErrorLines::DEFAULT.parse(), Ok(ErrorLines::First(20)));
    }

    #[test]
    fn errors_past_the_limit_are_counted_not_printed() {
        let progress = Progress::new("sent", None, true, ErrorLines::First(3));
        for i in 0..10 {
            progress.error(format!("error: line {i}"));
        }
        assert_eq!(progress.errors_withheld(), 7);
        let all = Progress::new("sent", None, true, ErrorLines::All);
        for i in 0..10 {
            all.error(format!("error: line {i}"));
        }
        assert_eq!(all.errors_withheld(), 0);
    }
}
