//! Kafka → processor → Kafka, raced side by side on one Apache Kafka broker over one input
//! topic (same partitions, keys and records) in one run:
//!
//! - **native passthrough**: consume → produce in Rust, no function, no parsing (the floor);
//! - **fnmill**, one row per variant in [`FNMILL_VARIANTS`] (and `--fnmill-variant`): the
//!   `json-route` guest parses each payload with serde_json and echoes it to `out`, or fails
//!   `fatal` so the route dead-letters it;
//! - **Kafka Streams**: the same job as a Kafka user would write it
//!   (`benches/peers/kafka-streams`: Jackson, at_least_once, default commit interval, 2 stream
//!   threads), a JVM started per run.
//!
//! Workload: `--events` JSON records (default 500,000) on 100 keys over 4 partitions, 1 in
//! `--bad-every` (default 100) not JSON. `--bad-keys one` (default) gives every bad record the
//! same key, as when one upstream writer emits garbage; `spread` spreads them over the keys.
//!
//! Every processor reads the whole input with a consumer group of its own and writes to output
//! and dead-letter topics of its own, created with `message.timestamp.type = LogAppendTime`, so
//! all are timed by the broker's clock (Kafka Streams would copy the input timestamps instead).
//! Throughput counts from a processor's first output record to its last, so a JVM's start-up
//! and the group join are not held against it, and also from the moment it was started. CPU
//! and context switches per event come from `/proc`, by thread name (the bench process, whose
//! threads are fnmill's or the native loop's, plus the watcher's small Kafka client), for the
//! Kafka Streams JVM by thread name, and for the broker; the table is taken between the first
//! output and the last. Each run checks that every record landed where it belongs. Then
//! latency at a steady input rate (output append time − input time, p50/p99), once each
//! processor has answered a first record.
//!
//! `scripts/kafka.sh start && eval "$(scripts/kafka.sh env)" && cargo bench --bench kafka`
//!
//! Options after `--`: `--events N`, `--bad-every N` (0: every record is JSON),
//! `--bad-keys one|spread`, `--rounds R` (all processors R times, alternating, each round
//! starting one processor later; medians printed; default 3: rates on a shared 2-core machine
//! move ±40% from one round to the next, so one round decides nothing), `--warm N` (records each processor first
//! runs untimed, default 2,000), `--no-latency`, `--fnmill-variant 'LABEL=TOML'` (one more
//! fnmill row, TOML added to the function's section, e.g. `'fnmill reuse=isolation =
//! "reuse"'`; repeatable; the section is the file's last, so the TOML may open tables of its
//! own, e.g. `$'metrics=[admin]\nlisten = "127.0.0.1:0"'`), `--no-peers` (only the fnmill rows,
//! each against the first: telemetry on against off), `--profile LABEL` (only that processor's
//! throughput phase, e.g. under `perf record`).
//!
//! The first run after the broker starts is not comparable with later ones: the broker's JVM
//! is most likely still compiling its request paths, and charged the first fnmill row 8–11 µs
//! of CPU per event against 2.5–4.7 µs a run later, whatever the warm-up's size (tried up to
//! 300,000 records), once even 18 minutes and a test suite after the start. Run the bench twice
//! on a fresh broker and keep the second.

use fnmill_testkit::bench_args::{Args, Opt};
use fnmill_testkit::common;
use fnmill_testkit::cpu;
use fnmill_testkit::kafka_support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant, SystemTime};

use fnmill_connector_kafka::rdkafka;
use kafka_support::{count, read_topic, unique};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{
    BaseRecord, DefaultProducerContext, DeliveryResult, Producer, ProducerContext, ThreadedProducer,
};
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

const PARTITIONS: i32 = 4;
const KEYS: u64 = 100;
const LATENCY_EVENTS: u64 = 4_000;
const LATENCY_RATE: u64 = 2_000;
/// A processor that writes nothing for this long is taken as stuck, and the bench fails.
const STALL: Duration = Duration::from_secs(120);
/// How often the watcher counts the output topics (each count is a few broker requests).
const POLL: Duration = Duration::from_millis(50);

/// The fnmill rows of every run: label, TOML added to `[runtime]`, TOML added to the
/// function's section. `--fnmill-variant` adds rows from the command line.
const FNMILL_VARIANTS: &[(&str, &str, &str)] = &[
    // The default: a fresh instance per event.
    ("fnmill event", "", ""),
    // The opt-in reuse mode: an instance serves up to `max_reuse` (1,000) events in turn.
    ("fnmill reuse", "", r#"isolation = "reuse""#),
];

/// One fnmill configuration raced in the bench.
#[derive(Clone, Debug)]
struct Variant {
    label: String,
    runtime: String,
    function: String,
}

/// A processor of the race.
#[derive(Clone, Debug)]
enum Processor {
    Native,
    Fnmill(Variant),
    KafkaStreams,
}

impl Processor {
    fn label(&self) -> &str {
        match self {
            Processor::Native => "native passthrough",
            Processor::Fnmill(v) => &v.label,
            Processor::KafkaStreams => "kafka streams",
        }
    }

    /// Whether it routes bad records to the dead-letter topic (the native loop only copies).
    fn routes(&self) -> bool {
        !matches!(self, Processor::Native)
    }
}

/// The workload, from the command line.
#[derive(Clone, Copy, Debug)]
struct Workload {
    events: u64,
    /// 1 in this many records is not JSON; 0 for none.
    bad_every: u64,
    /// Every bad record on one key, or spread over the keys.
    bad_on_one_key: bool,
}

impl Workload {
    fn is_bad(&self, id: u64) -> bool {
        self.bad_every != 0 && id % self.bad_every == self.bad_every - 1
    }

    fn bad(&self) -> u64 {
        self.events.checked_div(self.bad_every).unwrap_or(0)
    }

    /// Record `id`'s key and payload. Good records are `{"id":…,"key":…,"seq":…}`; a bad one is
    /// the same text cut short, so it is not JSON to any parser.
    fn record(&self, id: u64) -> (String, String) {
        let key = if self.is_bad(id) && !self.bad_on_one_key {
            format!("k{}", (id / self.bad_every) % KEYS)
        } else if self.is_bad(id) {
            "k-bad".to_string()
        } else {
            format!("k{}", id % KEYS)
        };
        let mut payload = kafka_support::payload(id, &key, id / KEYS);
        if self.is_bad(id) {
            payload.truncate(payload.len() / 2);
        }
        (key, payload)
    }
}

/// The topics of one processor's run: the shared input, its own outputs.
#[derive(Clone)]
struct Topics {
    input: String,
    output: String,
    dead: String,
}

impl Topics {
    /// Fresh output and dead-letter topics, stamped with the broker's append time.
    fn new(brokers: &str, input: &str) -> Self {
        let (output, dead) = (unique("bench-out"), unique("bench-dead"));
        create_topic(brokers, &output, PARTITIONS, true);
        create_topic(brokers, &dead, PARTITIONS, true);
        Self {
            input: input.to_string(),
            output,
            dead,
        }
    }

    fn written(&self, brokers: &str) -> (i64, i64) {
        (count(brokers, &self.output), count(brokers, &self.dead))
    }
}

/// Counts the records on a run's output and dead-letter topics with one request for all their
/// partitions (`ListOffsets` at the latest offset; nothing is deleted, so that is the count).
/// The watcher counts every [`POLL`]; counting each topic's partitions one by one
/// (`kafka_support::count`: metadata, then both watermarks of each partition) cost the broker
/// about 1 µs of CPU per event of a 110k events/s run, charged to whichever processor ran.
struct Written {
    consumer: BaseConsumer,
    partitions: TopicPartitionList,
    output: String,
}

impl Written {
    fn new(brokers: &str, topics: &Topics) -> Self {
        let consumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .create()
            .expect("the watcher's client");
        let mut partitions = TopicPartitionList::new();
        for topic in [&topics.output, &topics.dead] {
            for p in 0..PARTITIONS {
                partitions
                    .add_partition_offset(topic, p, Offset::End)
                    .unwrap();
            }
        }
        Self {
            consumer,
            partitions,
            output: topics.output.clone(),
        }
    }

    /// Records on the output and the dead-letter topic; (0, 0) while the broker does not answer.
    fn get(&self) -> (i64, i64) {
        let Ok(ends) = self
            .consumer
            .offsets_for_times(self.partitions.clone(), Duration::from_secs(5))
        else {
            return (0, 0);
        };
        let (mut out, mut dead) = (0, 0);
        for e in ends.elements() {
            let Offset::Offset(end) = e.offset() else {
                continue;
            };
            if e.topic() == self.output {
                out += end;
            } else {
                dead += end;
            }
        }
        (out, dead)
    }
}

fn create_topic(brokers: &str, name: &str, partitions: i32, log_append_time: bool) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("admin client");
    let mut topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    if log_append_time {
        topic = topic.set("message.timestamp.type", "LogAppendTime");
    }
    let results = futures::executor::block_on(admin.create_topics(
        [&topic],
        &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
    ))
    .expect("create_topics");
    for r in results {
        r.unwrap_or_else(|(t, e)| panic!("creating topic {t}: {e}"));
    }
}

/// Produces the workload's records `ids` to `topic` and waits for their delivery.
fn produce(brokers: &str, topic: &str, work: &Workload, ids: std::ops::Range<u64>) {
    let p = kafka_support::producer(brokers);
    send_all(&p, topic, work, ids, None);
}

/// Sends records `ids` through `p`, at `rate` records/s if given, and waits for delivery.
fn send_all(
    p: &ThreadedProducer<DefaultProducerContext>,
    topic: &str,
    work: &Workload,
    ids: std::ops::Range<u64>,
    rate: Option<u64>,
) {
    let start = Instant::now();
    for (n, id) in ids.enumerate() {
        let (key, payload) = work.record(id);
        kafka_support::send(p, topic, &key, payload.as_bytes(), None);
        // Pacing is the latency scenario (a steady input rate), not a wait for a condition.
        if let Some(rate) = rate {
            let due = Duration::from_micros(n as u64 * 1_000_000 / rate);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
    p.flush(Duration::from_secs(60)).expect("flush");
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// This checkout's broker (started by `scripts/kafka.sh`) when it serves `brokers`; otherwise
/// every Apache Kafka broker on the machine, which may include other checkouts' brokers.
fn broker_processes(brokers: &str) -> Vec<(String, u32)> {
    let run = common::root().join("target").join("kafka");
    let ours = std::fs::read_to_string(run.join("bootstrap")).unwrap_or_default();
    if let Ok(pid) = std::fs::read_to_string(run.join("pid"))
        && ours.trim() == brokers
        && let Ok(pid) = pid.trim().parse::<u32>()
        && Path::new(&format!("/proc/{pid}")).exists()
    {
        return vec![(BROKER.to_string(), pid)];
    }
    let all = cpu::processes_matching(BROKER, "kafka.Kafka");
    if all.len() > 1 {
        eprintln!(
            "note: {} Kafka brokers run on this machine; the broker CPU counts all of them",
            all.len()
        );
    }
    all
}

/// The bench's fixed surroundings.
struct Bench {
    brokers: String,
    broker: Vec<(String, u32)>,
    dir: tempfile::TempDir,
    /// `benches/peers/kafka-streams/run.sh`; its jar is built before anything is timed.
    peer: PathBuf,
}

/// What one run of a processor measured.
struct Measured {
    /// When it was started, in ms since the epoch.
    started_ms: i64,
    /// CPU at its start, at the first output record seen, and once the last was written.
    cpu_start: cpu::CpuTimes,
    cpu_first: cpu::CpuTimes,
    cpu_end: cpu::CpuTimes,
    /// Output records (output + dead letters) already written at the `cpu_first` reading.
    written_at_first: i64,
}

/// What the watcher saw before the processor is told to stop.
struct Watched {
    cpu_first: cpu::CpuTimes,
    written_at_first: i64,
    cpu_end: cpu::CpuTimes,
}

/// Waits until `expect` records are on `topics`' output and dead-letter topics, taking CPU
/// readings at the first and the last; fails if the processor dies or stalls.
fn watch(
    brokers: &str,
    topics: &Topics,
    expect: i64,
    read: &dyn Fn() -> cpu::CpuTimes,
    alive: &mut dyn FnMut() -> bool,
) -> Result<Watched, String> {
    let mut first = None;
    let (mut last, mut progress) = (0, Instant::now());
    let counter = Written::new(brokers, topics);
    loop {
        let (out, dead) = counter.get();
        let written = out + dead;
        if first.is_none() && written > 0 {
            first = Some((read(), written));
        }
        if written >= expect {
            let (cpu_first, written_at_first) = first.unwrap();
            return Ok(Watched {
                cpu_first,
                written_at_first,
                cpu_end: read(),
            });
        }
        if written != last {
            (last, progress) = (written, Instant::now());
        } else if progress.elapsed() > STALL {
            return Err(format!(
                "no progress for {STALL:?} at {written} of {expect} records"
            ));
        }
        if !alive() {
            return Err(format!(
                "the processor exited at {written} of {expect} records"
            ));
        }
        std::thread::sleep(POLL);
    }
}

/// Runs `p` from `topics.input` until `expect` records are written, then stops it.
fn run(bench: &Bench, p: &Processor, topics: &Topics, expect: i64) -> Measured {
    let brokers = bench.brokers.as_str();
    let broker = bench.broker.clone();
    let started_ms = now_ms();
    let cpu_start = cpu::CpuTimes::now(&broker);
    let watched = match p {
        Processor::KafkaStreams => {
            let log = bench.dir.path().join(format!("{}.log", unique("peer")));
            let mut child = start_peer(bench, topics, &log);
            let split = [("streams ".to_string(), child.id())];
            let watched = watch(
                brokers,
                topics,
                expect,
                &|| cpu::CpuTimes::now_split(&broker, &split),
                &mut || child.try_wait().unwrap().is_none(),
            );
            stop_peer(&mut child);
            watched.unwrap_or_else(|e| {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(30).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                panic!("kafka streams: {e}; its log ends:\n{}", tail.join("\n"))
            })
        }
        Processor::Native | Processor::Fnmill(_) => {
            let stop = CancellationToken::new();
            let watcher = {
                let (stop, brokers) = (stop.clone(), brokers.to_string());
                let topics = topics.clone();
                let alive = stop.clone();
                std::thread::spawn(move || {
                    let watched = watch(
                        &brokers,
                        &topics,
                        expect,
                        &|| cpu::CpuTimes::now(&broker),
                        &mut || !alive.is_cancelled(),
                    );
                    stop.cancel();
                    watched
                })
            };
            match p {
                Processor::Fnmill(v) => run_fnmill(bench, v, topics, &stop),
                _ => native_passthrough(brokers, topics, &stop),
            }
            // The pipeline ending by itself (an error) ends the watch too.
            stop.cancel();
            watcher
                .join()
                .unwrap()
                .unwrap_or_else(|e| panic!("{}: {e}", p.label()))
        }
    };
    Measured {
        started_ms,
        cpu_start,
        cpu_first: watched.cpu_first,
        cpu_end: watched.cpu_end,
        written_at_first: watched.written_at_first,
    }
}

/// fnmill in this process, as `fnmill run` would run the config, until `stop`.
fn run_fnmill(bench: &Bench, v: &Variant, topics: &Topics, stop: &CancellationToken) {
    let text = format!(
        r#"
[runtime]
io_threads = 1
compute_threads = 2
{runtime}
[sources.in]
kind = "kafka"
brokers = "{brokers}"
group = "{group}"
topics = ["{input}"]
[sinks.out]
kind = "kafka"
brokers = "{brokers}"
topic = "{output}"
[sinks.dead]
kind = "kafka"
brokers = "{brokers}"
topic = "{dead}"
[[routes]]
source = "in"
function = "f"
destinations = {{ out = "out" }}
dead_letter = "dead"
[functions.f]
component = "{component}"
{function}
"#,
        runtime = v.runtime,
        function = v.function,
        brokers = bench.brokers,
        group = unique("bench"),
        input = topics.input,
        output = topics.output,
        dead = topics.dead,
        component = common::guest("json-route").display(),
    );
    let path = bench.dir.path().join("fnmill.toml");
    std::fs::write(&path, text).unwrap();
    let config = fnmill::config::load(&path)
        .unwrap_or_else(|e| panic!("{}: the config does not load: {e:#}", v.label));
    if let Err(e) = fnmill::app::run(config, stop.clone()) {
        eprintln!("{}: fnmill stopped with an error: {e:#}", v.label);
    }
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
fn native_passthrough(brokers: &str, topics: &Topics, stop: &CancellationToken) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique("native"))
        .set("auto.offset.reset", "earliest")
        .set("partition.assignment.strategy", "cooperative-sticky")
        // As fnmill's source sets it: librdkafka's default (1 s) stalls a consumer of small
        // records once 100,000 are queued, and the limit would then be librdkafka's pause.
        .set("fetch.queue.backoff.ms", "10")
        .create()
        .unwrap();
    consumer.subscribe(&[&topics.input]).unwrap();
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
        let mut record = BaseRecord::to(&topics.output).payload(m.payload().unwrap_or_default());
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

/// Starts the Kafka Streams peer on `topics`, its output in `log`.
fn start_peer(bench: &Bench, topics: &Topics, log: &Path) -> Child {
    let file = std::fs::File::create(log).unwrap();
    Command::new(&bench.peer)
        .args(["--bootstrap", &bench.brokers])
        .args(["--application-id", &unique("peer")])
        .args(["--input", &topics.input])
        .args(["--output", &topics.output])
        .args(["--dead-letter", &topics.dead])
        .args(["--threads", "2"])
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .stdin(Stdio::null())
        .spawn()
        .expect("starting benches/peers/kafka-streams/run.sh")
}

/// SIGTERM (Kafka Streams closes cleanly), then SIGKILL if it takes over 30 s.
fn stop_peer(child: &mut Child) {
    // SAFETY: kill(2) on our own child's pid; no memory is involved.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The broker's append times of the first and the last record written to `topics` (the
/// times of each partition's first and last record; append times only grow in a partition).
fn append_span(brokers: &str, topics: &[&str]) -> (i64, i64) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique("span"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("span reader");
    let (mut first, mut last) = (i64::MAX, i64::MIN);
    for topic in topics {
        for p in 0..PARTITIONS {
            let (low, high) = consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .expect("watermarks");
            if high <= low {
                continue;
            }
            for offset in [low, high - 1] {
                let t = record_time(&consumer, topic, p, offset);
                first = first.min(t);
                last = last.max(t);
            }
        }
    }
    assert!(first <= last, "no records on {topics:?}");
    (first, last)
}

fn record_time(consumer: &BaseConsumer, topic: &str, partition: i32, offset: i64) -> i64 {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(offset))
        .unwrap();
    consumer.assign(&tpl).expect("assign");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(
            Instant::now() < deadline,
            "reading {topic}/{partition}@{offset} timed out"
        );
        if let Some(m) = consumer.poll(Duration::from_millis(200)) {
            let m = m.expect("read");
            if m.offset() == offset {
                return m.timestamp().to_millis().expect("a record time");
            }
        }
    }
}

/// One throughput run of one processor, as printed.
struct Throughput {
    /// Events/s from the first output record to the last.
    rate: f64,
    /// Events/s from the processor's start to its last output record.
    rate_with_start: f64,
    /// From the processor's start to its first output record.
    first_output: Duration,
    /// CPU per event between the first output and the last, by thread (and the broker).
    cpu: Vec<cpu::PerEvent>,
    /// The same from the processor's start to its last output.
    cpu_with_start: Vec<cpu::PerEvent>,
}

/// A broker younger than this is likely still warming up its JIT.
const FRESH_BROKER: Duration = Duration::from_secs(600);

/// The broker's row in the CPU readings; every other row is the processor's (for fnmill and
/// the native loop that includes the watcher's small Kafka client).
const BROKER: &str = "kafka broker";

/// µs of CPU and context switches per event: the processor's, and the broker's.
fn split_cpu(rows: &[cpu::PerEvent]) -> (f64, f64, f64) {
    let (mut us, mut switches, mut broker) = (0.0, 0.0, 0.0);
    for row in rows {
        if row.name == BROKER {
            broker += row.us;
        } else {
            us += row.us;
            switches += row.switches;
        }
    }
    (us, switches, broker)
}

/// Runs `p` over the whole input and checks where every record went.
fn throughput(bench: &Bench, p: &Processor, input: &str, work: &Workload) -> Throughput {
    let n = work.events;
    let topics = Topics::new(&bench.brokers, input);
    let m = run(bench, p, &topics, n as i64);
    let (out, dead) = topics.written(&bench.brokers);
    let (want_out, want_dead) = if p.routes() {
        ((n - work.bad()) as i64, work.bad() as i64)
    } else {
        (n as i64, 0)
    };
    assert!(
        out >= want_out && dead >= want_dead,
        "{}: {out} outputs and {dead} dead letters; expected {want_out} and {want_dead}",
        p.label()
    );
    if out + dead > n as i64 {
        eprintln!(
            "note: {} wrote {} records more than it read (redelivered)",
            p.label(),
            out + dead - n as i64
        );
    }
    let (first, last) = append_span(&bench.brokers, &[&topics.output, &topics.dead]);
    let steady = (n as i64 - m.written_at_first).max(1) as usize;
    Throughput {
        rate: n as f64 / ((last - first).max(1) as f64 / 1000.0),
        rate_with_start: n as f64 / ((last - m.started_ms).max(1) as f64 / 1000.0),
        first_output: Duration::from_millis((first - m.started_ms).max(0) as u64),
        cpu: m.cpu_end.per_event_since(&m.cpu_first, steady),
        cpu_with_start: m.cpu_end.per_event_since(&m.cpu_start, n as usize),
    }
}

/// Latency (p50, p99 in ms) of `p` at a steady input rate, once it has answered a first
/// record (so start-up and group join are not counted).
fn latency(bench: &Bench, p: &Processor) -> (i64, i64) {
    let brokers = bench.brokers.as_str();
    let input = unique("lat-in");
    create_topic(brokers, &input, PARTITIONS, false);
    let topics = Topics::new(brokers, &input);
    // Only good records: the path of an event, not of a dead letter.
    let work = Workload {
        events: LATENCY_EVENTS + 1,
        bad_every: 0,
        bad_on_one_key: true,
    };
    let producer = {
        let (brokers, input, output) = (brokers.to_string(), input.clone(), topics.output.clone());
        std::thread::spawn(move || {
            // A first record, then the paced ones once it came out, through one producer
            // that is connected by then (so its start-up is not counted as latency).
            let p = kafka_support::producer(&brokers);
            send_all(&p, &input, &work, LATENCY_EVENTS..LATENCY_EVENTS + 1, None);
            common::wait_until(Duration::from_secs(120), "the first output record", || {
                count(&brokers, &output) > 0
            });
            send_all(&p, &input, &work, 0..LATENCY_EVENTS, Some(LATENCY_RATE));
        })
    };
    run(bench, p, &topics, LATENCY_EVENTS as i64 + 1);
    producer.join().unwrap();
    let sent = times(brokers, &input);
    let got = times(brokers, &topics.output);
    let mut lat: Vec<i64> = got
        .iter()
        .filter(|(id, _)| **id < LATENCY_EVENTS)
        .map(|(id, t)| t - sent[id])
        .collect();
    lat.sort_unstable();
    (percentile(&lat, 0.5), percentile(&lat, 0.99))
}

/// Record times by event id.
fn times(brokers: &str, topic: &str) -> HashMap<u64, i64> {
    read_topic(brokers, topic)
        .into_iter()
        .filter_map(|r| Some((r.json()["id"].as_u64()?, r.timestamp?)))
        .collect()
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// The middle value (the mean of the middle two for an even count).
fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n.is_multiple_of(2) {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    } else {
        values[n / 2]
    }
}

static ARGS: LazyLock<Args> = LazyLock::new(|| {
    Args::parse(
        "kafka",
        "cargo bench --bench kafka [-- --events N] [--bad-every N] [--bad-keys one|spread] \
         [--rounds R] [--warm N] [--no-latency] [--fnmill-variant 'LABEL=TOML']... \
         [--no-peers] [--profile LABEL]",
        &[
            Opt::Value("--events"),
            Opt::Value("--bad-every"),
            Opt::Value("--bad-keys"),
            Opt::Value("--rounds"),
            Opt::Value("--warm"),
            Opt::Switch("--no-latency"),
            Opt::Value("--fnmill-variant"),
            Opt::Switch("--no-peers"),
            Opt::Value("--profile"),
        ],
    )
});

/// A command-line mistake: one line naming the option, exit status 2.
fn usage(message: &str) -> ! {
    eprintln!("kafka bench: {message}");
    std::process::exit(2)
}

/// The processors of the race, in the order they run.
fn processors() -> Vec<Processor> {
    let mut variants: Vec<Variant> = FNMILL_VARIANTS
        .iter()
        .map(|(label, runtime, function)| Variant {
            label: label.to_string(),
            runtime: runtime.to_string(),
            function: function.to_string(),
        })
        .collect();
    for variant in ARGS.values("--fnmill-variant") {
        let (label, toml) = variant.split_once('=').unwrap_or_else(|| {
            usage(&format!(
                "--fnmill-variant takes LABEL=TOML, not {variant:?}"
            ))
        });
        variants.push(Variant {
            label: label.to_string(),
            runtime: String::new(),
            function: toml.to_string(),
        });
    }
    // `--no-peers`: only the fnmill rows, each against the first (e.g. telemetry on and off).
    if ARGS.switch("--no-peers") {
        return variants.into_iter().map(Processor::Fnmill).collect();
    }
    let mut all = vec![Processor::Native];
    all.extend(variants.into_iter().map(Processor::Fnmill));
    all.push(Processor::KafkaStreams);
    all
}

fn main() {
    let bad_keys = ARGS.value("--bad-keys").unwrap_or("one");
    let work = Workload {
        events: ARGS.number::<u64>("--events", 500_000),
        bad_every: ARGS.number::<u64>("--bad-every", 100),
        bad_on_one_key: match bad_keys {
            "one" => true,
            "spread" => false,
            other => usage(&format!("--bad-keys is one or spread, not {other:?}")),
        },
    };
    let rounds = ARGS.number::<u64>("--rounds", 3).max(1) as usize;
    let mut processors = processors();
    // `--profile LABEL`: only that processor's throughput phase, to run under a profiler.
    let profile = ARGS.value("--profile");
    if let Some(only) = profile {
        processors.retain(|p| p.label() == only);
        if processors.is_empty() {
            usage(&format!("--profile: no processor labelled {only:?}"));
        }
    }

    let brokers = kafka_support::bootstrap();
    eprintln!("kafka bench: building the Kafka Streams peer and the json-route guest (cached)");
    let peer_dir = common::root().join("benches/peers/kafka-streams");
    if processors
        .iter()
        .any(|p| matches!(p, Processor::KafkaStreams))
    {
        let built = Command::new(peer_dir.join("build.sh"))
            .stderr(Stdio::inherit())
            .output()
            .expect("running benches/peers/kafka-streams/build.sh");
        assert!(
            built.status.success(),
            "building the Kafka Streams peer failed"
        );
    }
    common::guest("json-route");
    let bench = Bench {
        broker: broker_processes(&brokers),
        brokers,
        dir: tempfile::tempdir().unwrap(),
        peer: peer_dir.join("run.sh"),
    };

    // A broker that started minutes ago is still compiling its request paths (see the doc
    // comment): say so, rather than let its warm-up pass for fnmill's cost.
    for (_, pid) in &bench.broker {
        if let Some(age) = cpu::process_age(*pid)
            && age < FRESH_BROKER
        {
            eprintln!(
                "note: the broker started {}s ago; its JIT charges the first processors more CPU \
                 per event than a later run sees (run the bench twice and keep the second)",
                age.as_secs()
            );
        }
    }

    // Warm up each processor on a small input: the compiled-component cache, the peer's jar
    // in the page cache, the broker.
    let warm_input = unique("bench-warm");
    create_topic(&bench.brokers, &warm_input, PARTITIONS, false);
    let warm = Workload {
        events: ARGS.number::<u64>("--warm", 2_000).max(1),
        ..work
    };
    produce(&bench.brokers, &warm_input, &warm, 0..warm.events);
    for p in &processors {
        eprintln!("kafka bench: warming up {}", p.label());
        throughput(&bench, p, &warm_input, &warm);
    }

    let input = unique("bench-in");
    create_topic(&bench.brokers, &input, PARTITIONS, false);
    eprintln!("kafka bench: producing {} input records", work.events);
    produce(&bench.brokers, &input, &work, 0..work.events);

    if let Some(only) = &profile {
        let p = &processors[0];
        eprintln!("profile: input ready, measuring {only}");
        let t = throughput(&bench, p, &input, &work);
        println!(
            "kafka {only}: {} events, {:.0} events/s",
            work.events, t.rate
        );
        cpu::print_per_event(only, &t.cpu);
        return;
    }

    // Rounds alternate the processors, so drift in the machine's load touches all of them, and
    // each round starts one processor later, so none always follows the same one.
    let mut results: Vec<Vec<Throughput>> = processors.iter().map(|_| Vec::new()).collect();
    for round in 1..=rounds {
        let n = processors.len();
        for i in (0..n).map(|i| (i + round - 1) % n) {
            let (p, runs) = (&processors[i], &mut results[i]);
            eprintln!("kafka bench: round {round}/{rounds}: {}", p.label());
            let t = throughput(&bench, p, &input, &work);
            let (us, _, broker) = split_cpu(&t.cpu);
            eprintln!(
                "  {:.0} events/s ({:.0} with start); CPU per event {us:.1} µs, broker {broker:.1} µs",
                t.rate, t.rate_with_start
            );
            runs.push(t);
        }
    }
    let with_latency = !ARGS.switch("--no-latency");
    let latencies: Vec<Option<(i64, i64)>> = processors
        .iter()
        .map(|p| {
            with_latency.then(|| {
                eprintln!("kafka bench: latency of {}", p.label());
                latency(&bench, p)
            })
        })
        .collect();

    report(&work, bad_keys, rounds, &processors, &results, &latencies);
}

fn report(
    work: &Workload,
    bad_keys: &str,
    rounds: usize,
    processors: &[Processor],
    results: &[Vec<Throughput>],
    latencies: &[Option<(i64, i64)>],
) {
    let bad = if work.bad_every == 0 {
        "every record JSON".to_string()
    } else {
        format!(
            "1 in {} not JSON ({} records, {})",
            work.bad_every,
            work.bad(),
            if bad_keys == "one" {
                "all on one key"
            } else {
                "spread over the keys"
            }
        )
    };
    println!(
        "kafka: {} events, {bad}; {PARTITIONS} partitions, {KEYS} keys; fnmill io_threads=1 compute_threads=2; {}",
        work.events,
        if rounds > 1 {
            format!("medians of {rounds} rounds")
        } else {
            "1 round".to_string()
        }
    );
    println!(
        "  {:<20} {:>9} {:>9} {:>7} {:>11} {:>9} {:>8} {:>9}",
        "", "events/s", "w/ start", "first", "CPU µs/ev", "w/ start", "switches", "broker µs"
    );
    let mut rates = Vec::new();
    for (p, runs) in processors.iter().zip(results) {
        let steady: Vec<(f64, f64, f64)> = runs.iter().map(|t| split_cpu(&t.cpu)).collect();
        let column =
            |f: &dyn Fn(&Throughput) -> f64| median(&mut runs.iter().map(f).collect::<Vec<f64>>());
        let of = |i: usize| {
            median(
                &mut steady
                    .iter()
                    .map(|t| [t.0, t.1, t.2][i])
                    .collect::<Vec<f64>>(),
            )
        };
        let rate = column(&|t| t.rate);
        rates.push(rate);
        println!(
            "  {:<20} {:>9.0} {:>9.0} {:>5.1} s {:>11.1} {:>9.1} {:>8.2} {:>9.1}",
            p.label(),
            rate,
            column(&|t| t.rate_with_start),
            column(&|t| t.first_output.as_secs_f64()),
            of(0),
            column(&|t| split_cpu(&t.cpu_with_start).0),
            of(1),
            of(2),
        );
        if rounds > 1 {
            let each: Vec<String> = runs.iter().map(|t| format!("{:.0}", t.rate)).collect();
            println!("  {:<20} rounds: {}", "", each.join(", "));
        }
    }
    println!(
        "  (events/s from the first output record to the last, and from the processor's start;\n   \
         first: start to first output; CPU and switches per event of the processor's threads\n   \
         from first output to last, and from start; broker: the broker's CPU per event)"
    );
    if !matches!(processors.first(), Some(Processor::Native)) {
        // `--no-peers`: each fnmill row against the first, per round.
        for (i, p) in processors.iter().enumerate().skip(1) {
            let mut vs_first: Vec<f64> = results[i]
                .iter()
                .zip(&results[0])
                .map(|(v, f)| v.rate / f.rate)
                .collect();
            println!(
                "  ratio {} / {}: {:.3} (per round: {})",
                p.label(),
                processors[0].label(),
                median(&mut vs_first.clone()),
                vs_first
                    .iter_mut()
                    .map(|r| format!("{r:.3}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        print_latencies(processors, latencies);
        print_threads(processors, results);
        return;
    }
    let native = rates[0];
    let streams = *rates.last().unwrap();
    for (i, p) in processors.iter().enumerate() {
        if let Processor::Fnmill(_) = p {
            // Per-round ratios, so a drifting machine does not pair a fast round with a slow.
            let mut vs_streams: Vec<f64> = results[i]
                .iter()
                .zip(results.last().unwrap())
                .map(|(f, k)| f.rate / k.rate)
                .collect();
            let mut vs_native: Vec<f64> = results[i]
                .iter()
                .zip(&results[0])
                .map(|(f, n)| f.rate / n.rate)
                .collect();
            println!(
                "  ratio {0} / kafka streams: {1:.2}   {0} / native: {2:.2}",
                p.label(),
                median(&mut vs_streams),
                median(&mut vs_native),
            );
        }
    }
    println!("  (medians: native {native:.0}, kafka streams {streams:.0} events/s)");
    print_latencies(processors, latencies);
    print_threads(processors, results);
}

/// Each processor's end-to-end latency at the steady rate, unless `--no-latency`.
fn print_latencies(processors: &[Processor], latencies: &[Option<(i64, i64)>]) {
    if latencies.iter().any(Option::is_some) {
        println!("  latency at {LATENCY_RATE} events/s (p50 / p99):");
        for (p, l) in processors.iter().zip(latencies) {
            if let Some((p50, p99)) = l {
                println!("    {:<20} {p50} ms / {p99} ms", p.label());
            }
        }
    }
}

/// CPU time and switches per event of each thread, first output to last, per processor (means
/// of the rounds).
fn print_threads(processors: &[Processor], results: &[Vec<Throughput>]) {
    for (p, runs) in processors.iter().zip(results) {
        let rows: Vec<Vec<cpu::PerEvent>> = runs.iter().map(|t| t.cpu.clone()).collect();
        cpu::print_per_event(
            &format!("{}, first output to last", p.label()),
            &cpu::mean(&rows),
        );
    }
}
