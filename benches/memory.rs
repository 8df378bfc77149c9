//! Resident memory with 10,000 events in flight: a file route whose function waits 2 s per
//! event, suspended on the WASI monotonic clock, as a function awaiting a slow database would be;
//! `max_in_flight = 10000`, `max_instances = 10000`, every event on its own key. Two guests with
//! the same contract, each measured in a process of its own (so neither inherits the other's
//! resident pages): `sleeper`, built for `wasm32-wasip2` (Rust's std and all of WASI), and
//! `idler`, built WASI-free as `fnmill build` builds a Rust function (it imports `config` and the
//! one clock interface). The bench samples the process's resident memory while the events wait
//! and prints the peak next to the baseline before the route started.
//!
//! `cargo bench --bench memory` (`-- --events N` for the backlog, default 20,000;
//! `-- --in-flight N`; `-- --guest sleeper|idler` for one guest in this process).

use fnmill_testkit::bench_args::{Args, Opt};
use fnmill_testkit::common;

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

fn args() -> Args {
    Args::parse(
        "memory",
        "cargo bench --bench memory [-- --events N] [--in-flight N] [--guest sleeper|idler]",
        &[
            Opt::Value("--events"),
            Opt::Value("--in-flight"),
            Opt::Value("--guest"),
        ],
    )
}

/// This process's resident set, from /proc.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// The guests measured, each with what it is built as.
const GUESTS: [(&str, &str); 2] = [
    ("sleeper", "wasm32-wasip2, Rust's std"),
    ("idler", "WASI-free, as `fnmill build` builds it"),
];

fn main() {
    let args = args();
    match args.value("--guest") {
        Some(guest) => match GUESTS.iter().find(|(name, _)| *name == guest) {
            Some(&(name, built)) => measure(&args, name, built),
            None => {
                eprintln!("memory bench: --guest: expected sleeper or idler, got {guest:?}");
                std::process::exit(2);
            }
        },
        // Each guest in a child process of its own: a process keeps the pages it touched (the
        // allocator's arena, the pooling allocator's kept-resident slots), which would count
        // against the guest measured second.
        None => {
            let exe = std::env::current_exe().unwrap();
            let passed: Vec<String> = std::env::args().skip(1).collect();
            for (name, _) in GUESTS {
                let status = std::process::Command::new(&exe)
                    .args(&passed)
                    .args(["--guest", name])
                    .status()
                    .unwrap_or_else(|e| panic!("running {}: {e}", exe.display()));
                assert!(status.success(), "measuring {name}: {status}");
            }
            println!("  goals: peak < 1 GiB (must), < 256 MiB (aim)");
        }
    }
}

fn measure(args: &Args, guest: &str, built: &str) {
    let events: usize = args.number("--events", 20_000);
    let in_flight: usize = args.number("--in-flight", 10_000);
    let dir = tempfile::tempdir().unwrap();
    let mut input =
        std::io::BufWriter::new(std::fs::File::create(dir.path().join("in.jsonl")).unwrap());
    for i in 0..events {
        writeln!(
            input,
            "{{\"id\":\"e{i}\",\"key\":\"k{i}\",\"payload\":{{\"i\":{i}}}}}"
        )
        .unwrap();
    }
    drop(input);
    let mut route = common::FileRoute::new(dir.path(), common::guest(guest));
    route.runtime_extra =
        format!("io_threads = 1\nmax_instances = {in_flight}\nmemory_budget = \"64GiB\"");
    route.function_extra =
        "memory = \"2MiB\"\ntimeout = \"30s\"\nconfig = { ms = \"2000\" }".into();
    route.route_extra = format!("max_in_flight = {in_flight}");
    let config = fnmill::config::load(&route.write()).unwrap();

    let baseline = rss_kib();
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut peak = 0;
            while !done.load(Ordering::Relaxed) {
                peak = peak.max(rss_kib());
                std::thread::sleep(Duration::from_millis(20));
            }
            peak
        })
    };
    let start = Instant::now();
    let summary = fnmill::app::run(config, CancellationToken::new()).unwrap();
    let elapsed = start.elapsed();
    done.store(true, Ordering::Relaxed);
    let peak = sampler.join().unwrap();
    let finished: u64 = summary
        .routes
        .values()
        .map(|s| s.done.load(Ordering::Relaxed))
        .sum();
    assert_eq!(finished as usize, events, "every event must be done");
    let mib = |kib: u64| kib as f64 / 1024.0;
    println!(
        "{events} events through the {guest} guest ({built}; 2 s each), max_in_flight = {in_flight}, memory = 2MiB"
    );
    println!(
        "  elapsed            : {:>8.1} s ({:.0} events/s)",
        elapsed.as_secs_f64(),
        events as f64 / elapsed.as_secs_f64()
    );
    println!("  resident, baseline : {:>8.1} MiB", mib(baseline));
    println!("  resident, peak     : {:>8.1} MiB", mib(peak));
    println!(
        "  per event in flight: {:>8.1} KiB",
        (peak.saturating_sub(baseline)) as f64 / in_flight as f64
    );
}
