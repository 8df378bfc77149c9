//! Kafka → echo guest (fresh instance per event) → Kafka through `fnmill::app::run`, against a
//! native Rust passthrough (consume → produce, no wasm, same idempotent producer settings) on the
//! same Apache Kafka broker, topics and partitions, in the same run.
//!
//! Two phases per pipeline: throughput over a preloaded backlog (events/s between the first and
//! the last output record), and latency at a steady input rate (output record time − input
//! record time, p50/p99). The difference of the two pipelines' latencies is what the wasm stage
//! (and the dispatcher around it) adds.
//!
//! `scripts/kafka.sh start && eval "$(scripts/kafka.sh env)" && cargo bench --bench kafka`
//! (`-- --events N` changes the backlog size; `-- --profile wasm` runs only the wasm pipeline's
//! throughput phase, e.g. under `perf record`).

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/cpu.rs"]
mod cpu;
#[path = "../tests/kafka_support/mod.rs"]
mod kafka_support;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use fnmill_connector_kafka::rdkafka;
use kafka_support::{count, create_topic, read_topic, unique};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientConfig, ClientContext};
use tokio_util::sync::CancellationToken;

const PARTITIONS: i32 = 4;
const KEYS: u64 = 100;
const LATENCY_EVENTS: u64 = 4_000;
const LATENCY_RATE: u64 = 2_000;

/// Which pipeline runs.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Wasm,
    Native,
}

/// Runs one pipeline from `input` to `output` until `expect` records are on the output.
/// Returns the CPU times of this process's threads (and of `others`) taken just before the
/// pipeline is told to stop, while its threads are still alive to be read.
fn run_pipeline(
    kind: Kind,
    brokers: &str,
    input: &str,
    output: &str,
    expect: i64,
    dir: &std::path::Path,
    others: &[(String, u32)],
) -> cpu::CpuTimes {
    let stop = CancellationToken::new();
    let watcher = {
        let (stop, brokers, output) = (stop.clone(), brokers.to_string(), output.to_string());
        let others = others.to_vec();
        std::thread::spawn(move || {
            while count(&brokers, &output) < expect {
                std::thread::sleep(Duration::from_millis(100));
            }
            let times = cpu::CpuTimes::now(&others);
            stop.cancel();
            times
        })
    };
    match kind {
        Kind::Wasm => {
            let text = format!(
                r#"
[runtime]
io_threads = 1
compute_threads = 2
[sources.in]
kind = "kafka"
brokers = "{brokers}"
group = "{group}"
topics = ["{input}"]
[sinks.out]
kind = "kafka"
brokers = "{brokers}"
topic = "{output}"
[functions.f]
component = "{component}"
[[routes]]
source = "in"
function = "f"
destinations = {{ out = "out" }}
"#,
                group = unique("bench"),
                component = common::guest("echo").display(),
            );
            let path = dir.join("fnmill.toml");
            std::fs::write(&path, text).unwrap();
            let config = fnmill::config::load(&path).unwrap();
            fnmill::app::run(config, stop.clone()).unwrap();
        }
        Kind::Native => native_passthrough(brokers, input, output, &stop),
    }
    watcher.join().unwrap()
}

struct Counting(Arc<AtomicU64>);
impl ClientContext for Counting {}
impl ProducerContext for Counting {
    type DeliveryOpaque = ();
    fn delivery(&self, r: &DeliveryResult<'_>, _: ()) {
        if r.is_ok() {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Consume → produce with no function in between: the floor fnmill is measured against.
fn native_passthrough(brokers: &str, input: &str, output: &str, stop: &CancellationToken) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique("native"))
        .set("auto.offset.reset", "earliest")
        .set("partition.assignment.strategy", "cooperative-sticky")
        .create()
        .unwrap();
    consumer.subscribe(&[input]).unwrap();
    let delivered = Arc::new(AtomicU64::new(0));
    let producer: ThreadedProducer<Counting> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .create_with_context(Counting(delivered.clone()))
        .unwrap();
    while !stop.is_cancelled() {
        let Some(Ok(m)) = consumer.poll(Duration::from_millis(50)) else {
            continue;
        };
        let mut record = BaseRecord::to(output).payload(m.payload().unwrap_or_default());
        if let Some(k) = m.key() {
            record = record.key(k);
        }
        while let Err((_, back)) = producer.send(record) {
            record = back;
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    producer.flush(Duration::from_secs(10)).unwrap();
}

fn produce(brokers: &str, topic: &str, ids: std::ops::Range<u64>, rate: Option<u64>) {
    kafka_support::produce_paced(brokers, topic, ids, KEYS, rate, None);
}

/// Record timestamps by event id.
fn times(brokers: &str, topic: &str) -> HashMap<u64, i64> {
    read_topic(brokers, topic)
        .into_iter()
        .filter_map(|r| Some((r.json()["id"].as_u64()?, r.timestamp?)))
        .collect()
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

struct Result {
    rate: f64,
    p50: i64,
    p99: i64,
    /// µs of CPU per event in the throughput phase, by thread name (and the broker).
    cpu: Vec<cpu::PerEvent>,
}

fn measure(kind: Kind, brokers: &str, n: u64, dir: &std::path::Path) -> Result {
    let (rate, cpu) = throughput(kind, brokers, n, dir);
    let (p50, p99) = latency(kind, brokers, dir);
    Result {
        rate,
        p50,
        p99,
        cpu,
    }
}

/// Events/s over a preloaded backlog of `n` events, and the CPU each event took, by thread
/// name (from the pipeline's start to its stop, so group join and shutdown are included).
fn throughput(
    kind: Kind,
    brokers: &str,
    n: u64,
    dir: &std::path::Path,
) -> (f64, Vec<cpu::PerEvent>) {
    // Throughput over a backlog.
    let (input, output) = (unique("bench-in"), unique("bench-out"));
    create_topic(brokers, &input, PARTITIONS);
    create_topic(brokers, &output, PARTITIONS);
    produce(brokers, &input, 0..n, None);
    let broker = cpu::processes_matching("kafka broker", "kafka.Kafka");
    let before = cpu::CpuTimes::now(&broker);
    let used = run_pipeline(kind, brokers, &input, &output, n as i64, dir, &broker)
        .per_event_since(&before, n as usize);
    let out = times(brokers, &output);
    let (first, last) = (out.values().min().unwrap(), out.values().max().unwrap());
    (n as f64 / ((last - first).max(1) as f64 / 1000.0), used)
}

/// Latency (p50, p99 in ms) at a steady input rate, the pipeline already running.
fn latency(kind: Kind, brokers: &str, dir: &std::path::Path) -> (i64, i64) {
    let (input, output) = (unique("lat-in"), unique("lat-out"));
    create_topic(brokers, &input, PARTITIONS);
    create_topic(brokers, &output, PARTITIONS);
    let producer = {
        let (brokers, input) = (brokers.to_string(), input.clone());
        std::thread::spawn(move || {
            // Give the pipeline a moment to join its group, so latency is not start-up time.
            std::thread::sleep(Duration::from_secs(3));
            produce(&brokers, &input, 0..LATENCY_EVENTS, Some(LATENCY_RATE));
        })
    };
    run_pipeline(
        kind,
        brokers,
        &input,
        &output,
        LATENCY_EVENTS as i64,
        dir,
        &[],
    );
    producer.join().unwrap();
    let sent = times(brokers, &input);
    let got = times(brokers, &output);
    let mut lat: Vec<i64> = got.iter().map(|(id, t)| t - sent[id]).collect();
    lat.sort_unstable();
    (percentile(&lat, 0.5), percentile(&lat, 0.99))
}

fn main() {
    let n: u64 = std::env::args()
        .skip_while(|a| a != "--events")
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let brokers = kafka_support::bootstrap();
    let dir = tempfile::tempdir().unwrap();
    // `--profile wasm|native`: only that pipeline's throughput phase, to run under a profiler.
    if let Some(only) = std::env::args().skip_while(|a| a != "--profile").nth(1) {
        let kind = if only == "native" {
            Kind::Native
        } else {
            Kind::Wasm
        };
        throughput(Kind::Wasm, &brokers, 2_000, dir.path());
        eprintln!("profile: backlog ready, measuring {kind:?}");
        let (rate, cpu) = throughput(kind, &brokers, n, dir.path());
        println!("kafka {kind:?}: {n} events, {rate:.0} events/s");
        cpu::print_per_event(&format!("{kind:?}"), &cpu);
        return;
    }
    // Warm the compiled-component cache (and the broker) with a small run.
    measure(Kind::Wasm, &brokers, 2_000, dir.path());
    let native = measure(Kind::Native, &brokers, n, dir.path());
    let wasm = measure(Kind::Wasm, &brokers, n, dir.path());
    println!(
        "kafka: {n} events, {PARTITIONS} partitions, {KEYS} keys; fnmill io_threads=1 compute_threads=2"
    );
    println!(
        "  native passthrough : {:>9.0} events/s   latency p50 {} ms  p99 {} ms",
        native.rate, native.p50, native.p99
    );
    println!(
        "  fnmill + echo wasm : {:>9.0} events/s   latency p50 {} ms  p99 {} ms",
        wasm.rate, wasm.p50, wasm.p99
    );
    println!("  ratio wasm/native  : {:.2}", wasm.rate / native.rate);
    println!(
        "  latency added by the wasm stage (at {LATENCY_RATE}/s): p50 {} ms, p99 {} ms",
        wasm.p50 - native.p50,
        wasm.p99 - native.p99
    );
    cpu::print_per_event("native passthrough", &native.cpu);
    cpu::print_per_event("fnmill + echo wasm", &wasm.cpu);
}
