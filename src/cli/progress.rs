//! Progress of a long `publish` or `replay`: a bar on a terminal (count, rate and, when the
//! total is known, ETA), a plain line every few seconds when standard error is not a terminal
//! (a log, CI), nothing with `--quiet`. Messages about single events go through
//! [`Progress::println`] so that they do not tear the bar.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};

/// How often the plain form prints a line: often enough to show a run is alive, rarely enough
/// to keep a CI log readable.
const PLAIN_EVERY: Duration = Duration::from_secs(5);

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
}

impl Progress {
    /// `verb` says what a counted event went through ("sent", "replayed"); `total` is the
    /// number expected, when known.
    pub fn new(verb: &'static str, total: Option<u64>, quiet: bool) -> Self {
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

    /// Removes the bar (the summary follows).
    pub fn finish(&self) {
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
