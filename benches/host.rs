//! Per-event cost of the wasm host: the echo guest in a fresh instance per event (fnmill's
//! default, `isolation = "event"`), against `isolation = "reuse"` (an instance serves many
//! events), and against a native Rust function doing the same work.
//! Then the same echo function written in each language (Rust, JavaScript with componentize-js,
//! Python with componentize-py): component size, fresh and reused µs/event. Prints µs/event and
//! the ratios, measured in the same run.
//!
//! `cargo bench --bench host` (add `-- --events N` to change the count for the Rust guest,
//! `--interpreter-events N` for the JavaScript and Python ones, `--only rust|javascript|python` for
//! one row of the per-language table, e.g. under a profiler). The JavaScript and Python
//! echo functions are built with `fnmill build`, after `scripts/polyglot-tools.sh` installed
//! the tools.

use fnmill_testkit::bench_args::{Args, Opt};
use fnmill_testkit::common;

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fnmill::host::{Function, FunctionSpec, Host, HostConfig, Isolation, Limits, Output};
use fnmill_connector_api::{Event, Header};

fn event(i: usize) -> Event {
    Event {
        id: format!("e{i}"),
        source: "bench".into(),
        key: Some(Bytes::from(format!("key-{}", i % 64))),
        payload: Bytes::from(format!(
            "{{\"order_id\":\"o-{i}\",\"qty\":3,\"price\":12.5}}"
        )),
        headers: vec![Header::new("content-type", "application/json")],
        timestamp_ms: Some(1_700_000_000_000),
        origin: vec![],
        decode_error: None,
    }
}

/// The same work natively: copy the event into one output.
fn native_echo(event: &Event) -> Vec<Output> {
    vec![Output {
        destination: "out".into(),
        key: event.key.as_ref().map(|k| Bytes::copy_from_slice(k)),
        payload: Bytes::copy_from_slice(&event.payload),
        headers: event.headers.clone(),
    }]
}

fn per_event(elapsed: Duration, n: usize) -> f64 {
    elapsed.as_secs_f64() * 1e6 / n as f64
}

/// CPU time this thread has used: on a shared machine, what an event cost regardless of how
/// long the thread waited for a core.
fn thread_cpu() -> Duration {
    // SAFETY: rusage is plain integers, for which all zeroes is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage fills the struct it is given.
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) };
    let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    Duration::from_micros(us(usage.ru_utime) + us(usage.ru_stime))
}

/// Reuse without a use limit, retiring only an instance past 64 MiB: the cheapest an instance
/// gets.
const REUSE: Isolation = Isolation::Reuse {
    max_uses: u32::MAX,
    max_memory: 64 << 20,
};

/// `n` events through `fresh` (`isolation = "event"`), then through `reusing` (`isolation =
/// "reuse"`): the wall-clock and CPU time of each, `((wall, cpu), (wall, cpu))`, after a
/// warm-up of either.
fn fresh_and_reused(
    rt: &tokio::runtime::Runtime,
    fresh: &Function,
    reusing: &Function,
    events: &[Event],
    n: usize,
) -> ((Duration, Duration), (Duration, Duration)) {
    let warm_up = (n / 10).clamp(1, 2000);
    let time = |function: &Function| {
        rt.block_on(async {
            // Warm up: pool slots, page tables, caches.
            for e in events.iter().cycle().take(warm_up) {
                function.invoke(e, 1).await.unwrap();
            }
            let (start, cpu) = (Instant::now(), thread_cpu());
            for i in 0..n {
                black_box(function.invoke(&events[i % events.len()], 1).await.unwrap());
            }
            (start.elapsed(), thread_cpu() - cpu)
        })
    };
    (time(fresh), time(reusing))
}

/// A component loaded on a host of its own (64 instances, 64 MiB each).
fn load(name: &str, component: PathBuf, isolation: Isolation) -> Function {
    let host = Host::new(&HostConfig {
        max_instances: 64,
        max_memory_bytes: 64 << 20,
        memory_budget: 64 * (64 << 20),
        fuel: false,
        cache_dir: Some(
            common::root()
                .join("target")
                .join("test-cache")
                .join("fnmill"),
        ),
        perf_map: false,
    })
    .unwrap();
    host.load(FunctionSpec {
        name: name.into(),
        component,
        limits: Limits {
            memory_bytes: 64 << 20,
            timeout: Duration::from_secs(10),
            fuel: None,
            max_outputs: 100,
            max_output_bytes: 1 << 20,
            max_log_bytes: 64 * 1024,
            max_log_lines: 200,
        },
        config: Default::default(),
        isolation,
    })
    .unwrap_or_else(|e| panic!("loading {name}: {e}"))
}

fn main() {
    let args = Args::parse(
        "host",
        "cargo bench --bench host [-- --events N] [--interpreter-events N] \
         [--only rust|javascript|python]",
        &[
            Opt::Value("--events"),
            Opt::Value("--interpreter-events"),
            Opt::Value("--only"),
        ],
    );
    let n: usize = args.number("--events", 50_000);
    let n_interpreted: usize = args.number("--interpreter-events", 2_000);
    let function = common::load_guest("echo", 64);
    let reusing = common::load_guest_with("echo", 64, REUSE);
    let events: Vec<Event> = (0..1024).map(event).collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    let ((fresh, _), (reused, _)) = fresh_and_reused(&rt, &function, &reusing, &events, n);

    let start = Instant::now();
    for i in 0..n {
        black_box(native_echo(black_box(&events[i % events.len()])));
    }
    let native = start.elapsed();

    let (f, r, nat) = (
        per_event(fresh, n),
        per_event(reused, n),
        per_event(native, n),
    );
    println!("echo guest, {n} events, one thread");
    println!(
        "  fresh instance per event : {f:>8.2} µs/event  ({:>9.0} events/s)",
        1e6 / f
    );
    println!(
        "  isolation = \"reuse\"      : {r:>8.2} µs/event  ({:>9.0} events/s)",
        1e6 / r
    );
    println!("  native Rust function     : {nat:>8.3} µs/event");
    println!("  fresh / reused           : {:>8.2}×", f / r);
    println!("  fresh / native           : {:>8.0}×", f / nat);
    println!("  goals: fresh ≤ 8 µs/event (aim ≤ 5), ≤ 3× reused");
    // `--only LANGUAGE`: that row of the table alone, e.g. to run under a profiler.
    let only = args.value("--only").map(str::to_lowercase);

    // The same echo function in each language.
    // Rust as `fnmill build` makes it (WASI-free), and as `fnmill build --wasi` does.
    let mut rows = vec![
        ("Rust", common::guest("echo"), n),
        ("Rust --wasi", common::wasi_guest("echo"), n),
    ];
    for (language, guest) in [("JavaScript", "js-echo"), ("Python", "python-echo")] {
        if only.as_deref().is_none_or(|l| l == language.to_lowercase()) {
            rows.push((language, common::polyglot_guest(guest), n_interpreted));
        }
    }
    rows.retain(|(language, ..)| {
        only.as_deref()
            .is_none_or(|l| language.to_lowercase().starts_with(l))
    });
    println!();
    println!("echo function per language, one thread");
    println!("  (µs per event: wall-clock, and CPU of the thread in brackets)");
    println!(
        "  {:<11} {:>10} {:>8} {:>24} {:>24} {:>13}",
        "language", "component", "events", "fresh instance", "reused instance", "fresh/reused"
    );
    for (language, component, n) in rows {
        let size = std::fs::metadata(&component).unwrap().len() as f64 / 1e6;
        let function = load(language, component.clone(), Isolation::Event);
        let reusing = load(language, component, REUSE);
        let ((fresh, fresh_cpu), (reused, reused_cpu)) =
            fresh_and_reused(&rt, &function, &reusing, &events, n);
        let (f, fc) = (per_event(fresh, n), per_event(fresh_cpu, n));
        let (r, rc) = (per_event(reused, n), per_event(reused_cpu, n));
        println!(
            "  {language:<11} {size:>7.2} MB {n:>8} {:>24} {:>24} {:>12.1}×",
            format!("{f:.1} ({fc:.1})"),
            format!("{r:.1} ({rc:.1})"),
            f / r
        );
    }
    println!("  goal: JavaScript and Python fresh ≤ 500 µs/event");
}
