//! Helpers of the Kafka integration tests: the broker (Apache Kafka started by
//! `scripts/kafka.sh`, or `FNMILL_TEST_KAFKA_BOOTSTRAP`), topics with random names, a producer of
//! numbered events, a reader of whole topics, the checker that classifies every id, and
//! `fnmill run` configs and processes.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use fnmill_connector_kafka::rdkafka;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::common;

/// The Apache Kafka broker of this test run: `FNMILL_TEST_KAFKA_BOOTSTRAP`, or one started (once,
/// shared by every test binary) by `scripts/kafka.sh start`, which `scripts/test.sh` stops.
pub fn bootstrap() -> String {
    static BOOTSTRAP: OnceLock<String> = OnceLock::new();
    BOOTSTRAP
        .get_or_init(|| {
            if let Ok(b) = std::env::var("FNMILL_TEST_KAFKA_BOOTSTRAP")
                && !b.is_empty()
            {
                return b;
            }
            let root = common::root();
            let status = Command::new(root.join("scripts").join("kafka.sh"))
                .arg("start")
                .status()
                .expect("running scripts/kafka.sh");
            assert!(status.success(), "scripts/kafka.sh start failed");
            std::fs::read_to_string(root.join("target").join("kafka").join("bootstrap"))
                .expect("scripts/kafka.sh wrote no bootstrap address")
                .trim()
                .to_string()
        })
        .clone()
}

/// A name no other test (or earlier run) uses.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{:016x}", fastrand::u64(..))
}

pub fn create_topic(brokers: &str, name: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("admin client");
    let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    let results = futures::executor::block_on(admin.create_topics(
        [&topic],
        &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
    ))
    .expect("create_topics");
    for r in results {
        r.unwrap_or_else(|(t, e)| panic!("creating topic {t}: {e}"));
    }
}

/// One input event: a unique id, a key (which picks the partition) and its sequence within
/// the key, all in the JSON payload so the echo output carries them.
pub fn payload(id: u64, key: &str, seq: u64) -> String {
    format!(r#"{{"id":{id},"key":"{key}","seq":{seq}}}"#)
}

pub fn producer(brokers: &str) -> ThreadedProducer<DefaultProducerContext> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .expect("producer")
}

/// Sends one record, waiting while librdkafka's queue is full.
pub fn send(
    p: &ThreadedProducer<DefaultProducerContext>,
    topic: &str,
    key: &str,
    payload: &[u8],
    headers: Option<OwnedHeaders>,
) {
    let mut record = BaseRecord::to(topic).key(key).payload(payload);
    if let Some(h) = headers {
        record = record.headers(h);
    }
    loop {
        match p.send(record) {
            Ok(()) => return,
            Err((_, back)) => {
                record = back;
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

/// Produces events `ids` with keys `k0..k{keys}` and per-key sequence numbers, and waits for
/// their delivery.
pub fn produce_events(brokers: &str, topic: &str, ids: std::ops::Range<u64>, keys: u64) {
    produce_paced(brokers, topic, ids, keys, None, None);
}

/// [`produce_events`] at `rate` events per second (as fast as possible without one), storing
/// the number of events handed to the producer so far in `progress`.
pub fn produce_paced(
    brokers: &str,
    topic: &str,
    ids: std::ops::Range<u64>,
    keys: u64,
    rate: Option<u64>,
    progress: Option<&std::sync::atomic::AtomicU64>,
) {
    let p = producer(brokers);
    let start = std::time::Instant::now();
    for (n, id) in ids.enumerate() {
        let key = format!("k{}", id % keys);
        send(
            &p,
            topic,
            &key,
            payload(id, &key, id / keys).as_bytes(),
            None,
        );
        if let Some(progress) = progress {
            progress.store(n as u64 + 1, std::sync::atomic::Ordering::Relaxed);
        }
        // Pacing is the scenario (events keep arriving while fnmill is killed or stopped), not
        // a wait for a condition.
        if let Some(rate) = rate {
            let due = Duration::from_micros(n as u64 * 1_000_000 / rate);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
    p.flush(Duration::from_secs(60)).expect("flush");
}

/// A producer thread running [`produce_paced`] with 100 keys beside the scenario; the counter
/// tells how many events it has handed over so far.
pub fn spawn_paced_producer(
    brokers: &str,
    topic: &str,
    total: u64,
    rate: u64,
) -> (
    std::thread::JoinHandle<()>,
    Arc<std::sync::atomic::AtomicU64>,
) {
    let produced = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (brokers, topic, counter) = (brokers.to_string(), topic.to_string(), produced.clone());
    let thread = std::thread::spawn(move || {
        produce_paced(&brokers, &topic, 0..total, 100, Some(rate), Some(&counter));
    });
    (thread, produced)
}

/// A record read back from a topic.
#[derive(Clone, Debug)]
pub struct Read {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: BTreeMap<String, Vec<u8>>,
    /// Record time in milliseconds since the Unix epoch.
    pub timestamp: Option<i64>,
}

impl Read {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload).unwrap_or(serde_json::Value::Null)
    }
}

/// Reads a whole topic from the start to its current end.
pub fn read_topic(brokers: &str, topic: &str) -> Vec<Read> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique("reader"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
        .expect("reader");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let mut ends = BTreeMap::new();
    let mut tpl = TopicPartitionList::new();
    for p in metadata.topics()[0].partitions() {
        let (low, high) = consumer
            .fetch_watermarks(topic, p.id(), Duration::from_secs(10))
            .expect("watermarks");
        if high > low {
            ends.insert(p.id(), high);
            tpl.add_partition_offset(topic, p.id(), Offset::Offset(low))
                .unwrap();
        }
    }
    let mut out = Vec::new();
    if ends.is_empty() {
        return out;
    }
    consumer.assign(&tpl).expect("assign");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut done = BTreeMap::new();
    while done.len() < ends.len() {
        assert!(
            std::time::Instant::now() < deadline,
            "reading {topic} timed out"
        );
        let Some(m) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let m = m.expect("read");
        let headers = m
            .headers()
            .map(|hs| {
                hs.iter()
                    .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                    .collect()
            })
            .unwrap_or_default();
        if m.offset() + 1 >= ends[&m.partition()] {
            done.insert(m.partition(), ());
        }
        out.push(Read {
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().unwrap_or_default().to_vec(),
            headers,
            timestamp: m.timestamp().to_millis(),
        });
    }
    out
}

/// Messages in a topic: the sum of its partitions' high watermarks (no deletes in these tests).
/// One client per cluster: tests poll counts often.
pub fn count(brokers: &str, topic: &str) -> i64 {
    static CLIENTS: OnceLock<Mutex<HashMap<String, Arc<BaseConsumer>>>> = OnceLock::new();
    let consumer = CLIENTS
        .get_or_init(Default::default)
        .lock()
        .unwrap()
        .entry(brokers.to_string())
        .or_insert_with(|| {
            Arc::new(
                ClientConfig::new()
                    .set("bootstrap.servers", brokers)
                    .create()
                    .expect("counter"),
            )
        })
        .clone();
    let Ok(metadata) = consumer.fetch_metadata(Some(topic), Duration::from_secs(5)) else {
        return 0;
    };
    metadata.topics()[0]
        .partitions()
        .iter()
        .map(|p| {
            consumer
                .fetch_watermarks(topic, p.id(), Duration::from_secs(5))
                .map(|(l, h)| h - l)
                .unwrap_or(0)
        })
        .sum()
}

/// Committed offset and high watermark of every partition of `topic` for `group`.
pub fn committed(brokers: &str, group: &str, topic: &str) -> Vec<(i32, i64, i64)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .create()
        .expect("offsets reader");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let mut tpl = TopicPartitionList::new();
    for p in metadata.topics()[0].partitions() {
        tpl.add_partition(topic, p.id());
    }
    let offsets = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("committed offsets");
    offsets
        .elements()
        .iter()
        .map(|e| {
            let (_, high) = consumer
                .fetch_watermarks(topic, e.partition(), Duration::from_secs(10))
                .unwrap();
            let committed = match e.offset() {
                Offset::Offset(o) => o,
                _ => -1,
            };
            (e.partition(), committed, high)
        })
        .collect()
}

/// Every input id, classified.
#[derive(Debug, Default)]
pub struct Verdict {
    pub ok: usize,
    pub lost: Vec<u64>,
    /// Ids seen more than once on the output, with the number of extra copies.
    pub duplicated: BTreeMap<u64, usize>,
    pub dead_lettered: Vec<u64>,
}

impl Verdict {
    pub fn extra_copies(&self) -> usize {
        self.duplicated.values().sum()
    }
}

/// Classifies ids `0..total` by what the output and dead-letter topics hold.
pub fn check(total: u64, out: &[Read], dead: &[Read]) -> Verdict {
    let mut seen = vec![0usize; total as usize];
    for r in out {
        let id = r.json()["id"].as_u64().expect("output without id");
        seen[id as usize] += 1;
    }
    let mut dead_ids = std::collections::BTreeSet::new();
    for r in dead {
        if let Some(id) = r.json()["id"].as_u64() {
            dead_ids.insert(id);
        }
    }
    let mut v = Verdict::default();
    for (id, n) in seen.iter().enumerate() {
        let id = id as u64;
        match n {
            0 if dead_ids.contains(&id) => v.dead_lettered.push(id),
            0 => v.lost.push(id),
            1 => v.ok += 1,
            n => {
                v.ok += 1;
                v.duplicated.insert(id, n - 1);
            }
        }
    }
    v
}

/// Per-key order on the output: within each key, sequence numbers never go backwards (a
/// duplicate may repeat an earlier one only after a restart, so `allow_repeats` accepts a
/// sequence that restarts from an already seen number).
pub fn order_violations(out: &[Read]) -> usize {
    let mut by_partition: BTreeMap<i32, Vec<&Read>> = BTreeMap::new();
    for r in out {
        by_partition.entry(r.partition).or_default().push(r);
    }
    let mut violations = 0;
    for reads in by_partition.values_mut() {
        reads.sort_by_key(|r| r.offset);
        let mut last: BTreeMap<String, u64> = BTreeMap::new();
        for r in reads.iter() {
            let v = r.json();
            let key = v["key"].as_str().unwrap_or_default().to_string();
            let seq = v["seq"].as_u64().unwrap_or_default();
            if let Some(prev) = last.insert(key, seq)
                && seq <= prev
            {
                violations += 1;
            }
        }
    }
    violations
}

/// A Kafka route: `input` through `component` into `output`, dead letters into `dead`.
pub struct KafkaRoute {
    pub dir: PathBuf,
    pub brokers: String,
    pub group: String,
    pub input: String,
    pub output: String,
    pub dead: String,
    pub component: PathBuf,
    /// Extra librdkafka consumer properties, as TOML inline-table entries each preceded by `, `.
    pub source_properties: String,
    /// librdkafka producer properties of the output sink, as TOML inline-table entries.
    pub sink_properties: String,
    /// librdkafka properties of all three clients (source and both sinks), as TOML
    /// inline-table entries separated by `, `: settings every client needs, such as TLS.
    pub client_properties: String,
    /// Lines added to the source and to both sinks (e.g. `secret_properties = {...}`).
    pub client_extra: String,
    pub route_extra: String,
    pub runtime_extra: String,
}

impl KafkaRoute {
    pub fn new(dir: &Path, brokers: &str, component: PathBuf) -> Self {
        Self {
            dir: dir.to_path_buf(),
            brokers: brokers.to_string(),
            group: unique("group"),
            input: unique("in"),
            output: unique("out"),
            dead: unique("dead"),
            component,
            source_properties: String::new(),
            sink_properties: String::new(),
            client_properties: String::new(),
            client_extra: String::new(),
            route_extra: String::new(),
            runtime_extra: String::new(),
        }
    }

    pub fn write(&self, name: &str) -> PathBuf {
        let text = format!(
            r#"
[runtime]
compute_threads = 2
{runtime}

[sources.in]
kind = "kafka"
brokers = "{brokers}"
group = "{group}"
topics = ["{input}"]
properties = {{ "session.timeout.ms" = 6000, "heartbeat.interval.ms" = 500, "auto.commit.interval.ms" = 100{source_props}{source_client} }}
{client}

[sinks.out]
kind = "kafka"
brokers = "{brokers}"
topic = "{output}"
properties = {{ {sink_props} }}
{client}

[sinks.dead]
kind = "kafka"
brokers = "{brokers}"
topic = "{dead}"
properties = {{ {client_props} }}
{client}

[functions.f]
component = "{component}"

[[routes]]
source = "in"
function = "f"
destinations = {{ out = "out" }}
dead_letter = "dead"
{route}
"#,
            runtime = self.runtime_extra,
            brokers = self.brokers,
            group = self.group,
            input = self.input,
            output = self.output,
            dead = self.dead,
            component = self.component.display(),
            source_props = self.source_properties,
            source_client = if self.client_properties.is_empty() {
                String::new()
            } else {
                format!(", {}", self.client_properties)
            },
            sink_props = [self.sink_properties.as_str(), &self.client_properties]
                .into_iter()
                .filter(|p| !p.is_empty())
                .collect::<Vec<_>>()
                .join(", "),
            client_props = self.client_properties,
            client = self.client_extra,
            route = self.route_extra,
        );
        let path = self.dir.join(format!("{name}.toml"));
        std::fs::write(&path, text).unwrap();
        path
    }

    pub fn create_topics(&self, partitions: i32) {
        create_topic(&self.brokers, &self.input, partitions);
        create_topic(&self.brokers, &self.output, partitions);
        create_topic(&self.brokers, &self.dead, 1);
    }
}

/// A running `fnmill run`, its log in a file; killed (SIGKILL) if still running when dropped.
pub struct Running {
    pub child: Child,
    pub log: PathBuf,
}

impl Running {
    pub fn start(config: &Path, log: PathBuf) -> Self {
        Self::start_with_env(config, log, &[])
    }

    /// [`Running::start`] with extra environment variables for the child.
    pub fn start_with_env(config: &Path, log: PathBuf, env: &[(&str, &str)]) -> Self {
        let file = File::create(&log).unwrap();
        let child = common::fnmill()
            .args(["run", "-c"])
            .arg(config)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("starting fnmill");
        Self { child, log }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        unsafe {
            libc::kill(self.child.id() as i32, signal);
        }
    }

    pub fn kill9(&mut self) {
        self.signal(libc::SIGKILL);
        self.child.wait().unwrap();
    }

    /// SIGTERM, then waits up to `timeout` for the exit; returns how long it took.
    pub fn terminate(&mut self, timeout: Duration) -> Duration {
        let start = std::time::Instant::now();
        self.signal(libc::SIGTERM);
        common::wait_until(timeout, "fnmill to exit after SIGTERM", || {
            self.child.try_wait().unwrap().is_some()
        });
        start.elapsed()
    }

    /// CPU time (user + system) the process used so far.
    pub fn cpu_time(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
        let fields: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap()
            .split_whitespace()
            .collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        // SAFETY: sysconf reads a constant; no memory is involved.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
        Duration::from_millis(ticks * 1000 / hz)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.alive() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The raw HTTP answer of fnmill's admin `/readyz` at `admin`, or `None` while nothing answers.
pub fn readyz(admin: std::net::SocketAddr) -> Option<String> {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(admin).ok()?;
    s.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    Some(text)
}
