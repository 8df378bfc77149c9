//! Events per second through the whole file pipeline — JSON Lines source → key-ordered lanes →
//! echo guest (fresh instance per event) → JSON Lines sink, with checkpointing — measured
//! in-process through the public `app::run`, after a warm-up run that fills the component cache.
//!
//! `cargo bench --bench file_pipeline` (add `-- --events N` to change the count).

use fnmill_testkit::bench_args::{Args, Opt};
use fnmill_testkit::common;

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use tokio_util::sync::CancellationToken;

fn write_input(path: &Path, n: usize) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    for i in 0..n {
        writeln!(
            f,
            "{{\"id\":\"e{i}\",\"key\":\"k{}\",\"payload\":{{\"order_id\":\"o-{i}\",\"qty\":3,\"price\":12.5}}}}",
            i % 256
        )
        .unwrap();
    }
}

fn run_once(dir: &Path, component: &Path, n: usize) -> f64 {
    let _ = std::fs::remove_file(dir.join("out.jsonl"));
    let _ = std::fs::remove_file(dir.join("in.jsonl.checkpoint"));
    let mut route = common::FileRoute::new(dir, component.to_path_buf());
    route.runtime_extra = "io_threads = 1\n".into();
    let config = fnmill::config::load(&route.write()).unwrap();
    let start = Instant::now();
    let summary = fnmill::app::run(config, CancellationToken::new()).unwrap();
    let elapsed = start.elapsed().as_secs_f64();
    let done = summary
        .routes
        .values()
        .map(|s| s.done.load(std::sync::atomic::Ordering::Relaxed))
        .sum::<u64>();
    assert_eq!(done as usize, n, "every event must be done");
    assert_eq!(common::count_lines(&dir.join("out.jsonl")), n);
    n as f64 / elapsed
}

fn main() {
    let args = Args::parse(
        "file_pipeline",
        "cargo bench --bench file_pipeline [-- --events N]",
        &[Opt::Value("--events")],
    );
    let n: usize = args.number("--events", 200_000);
    let dir = tempfile::tempdir().unwrap();
    write_input(&dir.path().join("in.jsonl"), n);
    let echo = common::guest("echo");
    // Warm the compiled-component cache so start-up is a cache load, as in production.
    run_once(dir.path(), &echo, n);
    let rate = run_once(dir.path(), &echo, n);
    println!("file pipeline, echo guest, {n} events (256 keys), io_threads=1 compute_threads=2");
    println!(
        "  throughput : {rate:>10.0} events/s  ({:.2} µs/event)",
        1e6 / rate
    );
    println!("  goal       : ≥ 100000 events/s");
}
