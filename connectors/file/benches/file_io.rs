//! The file connector on its own, no pipeline: JSON Lines source → settle (lines/s, checkpoint
//! included) and concurrent sink publishes (records/s, each confirmed once written). The floors
//! the file pipeline bench (`benches/file_pipeline.rs`) runs on.
//!
//! `cargo bench -p fnmill-connector-file` (add `-- --lines N`).

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use fnmill_connector_api::{Outbox, Outcome, Readiness, Record, Sink, Source, SourceContext};
use fnmill_connector_file::{FileSink, FileSinkConfig, FileSource, FileSourceConfig};
use tokio_util::sync::CancellationToken;

const USAGE: &str = "cargo bench -p fnmill-connector-file [-- --lines N]";

/// `--lines N`, checked as fnmill's own benches check theirs (`testkit::bench_args`, which
/// this crate cannot depend on): anything else stops the bench, naming it, with status 2.
fn lines_arg() -> u64 {
    let mut lines = 1_000_000;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--bench" => {}
            "--help" | "-h" => {
                println!("{USAGE}");
                std::process::exit(0)
            }
            "--lines" => match args.next().map(|v| v.parse()) {
                Some(Ok(n)) => lines = n,
                _ => usage("`--lines` takes a whole number"),
            },
            other => usage(&format!("unknown option `{other}` (it takes: --lines)")),
        }
    }
    lines
}

fn usage(message: &str) -> ! {
    eprintln!("file_io bench: {message}\nusage: {USAGE}");
    std::process::exit(2)
}

/// Reads `n` lines and settles each as done; returns lines/s.
async fn source(dir: &std::path::Path, n: u64) -> f64 {
    let path = dir.join("in.jsonl");
    let text: String = (0..n)
        .map(|i| {
            format!(
                "{{\"id\":\"e{i}\",\"key\":\"k{}\",\"payload\":{{\"i\":{i}}}}}\n",
                i % 64
            )
        })
        .collect();
    std::fs::write(&path, text).unwrap();
    let source = FileSource::new("files", FileSourceConfig::new(&path)).unwrap();
    let (out, mut rx) = Outbox::channel(1024);
    let ctx = SourceContext {
        out,
        shutdown: CancellationToken::new(),
        ready: Readiness::default(),
    };
    let started = Instant::now();
    let run = tokio::spawn(Box::new(source).run(ctx));
    let mut count = 0;
    while let Some(d) = rx.recv().await {
        d.settle(Outcome::Done);
        count += 1;
    }
    run.await.unwrap().unwrap();
    assert_eq!(count, n, "every line delivered");
    n as f64 / started.elapsed().as_secs_f64()
}

/// 64 tasks publishing one record per call, as many events finishing at once do; records/s.
async fn sink(dir: &std::path::Path, n: u64) -> f64 {
    let sink = Arc::new(FileSink::new(FileSinkConfig::new(dir.join("out.jsonl"))).unwrap());
    let tasks = 64;
    let started = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let sink = sink.clone();
            tokio::spawn(async move {
                for c in 0..n / tasks {
                    let payload = format!("{{\"order_id\":\"o-{t}-{c}\",\"amount\":12.5}}");
                    let record = Record {
                        target: None,
                        key: None,
                        payload: Bytes::from(payload),
                        headers: vec![],
                    };
                    sink.publish(vec![record]).await.unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.await.unwrap();
    }
    sink.close().await.unwrap();
    (n / tasks * tasks) as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    let n = lines_arg();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (read, written) =
        rt.block_on(async { (source(dir.path(), n).await, sink(dir.path(), n).await) });
    println!("file connector, {n} lines/records, 2 threads");
    println!("  source (read, deliver, settle, checkpoint) : {read:>9.0} lines/s");
    println!("  sink (64 concurrent publishers, confirmed) : {written:>9.0} records/s");
}
