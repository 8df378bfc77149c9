//! Helpers of the RabbitMQ tests and benchmark: random names, queues declared and deleted,
//! confirmed bulk publishing, collectors that read output queues, a TCP proxy that can cut
//! fnmill's connections, the fnmill config for an AMQP route, and the ok / lost / duplicated /
//! dead-lettered checker.

use std::collections::{BTreeMap, HashMap};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use serde_json::Value;

use crate::common::holds_within;
pub use crate::common::wait_for;

/// The broker under test: `FNMILL_TEST_AMQP_URL`, else the local RabbitMQ as guest.
pub fn amqp_url() -> String {
    std::env::var("FNMILL_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// A name no other test (or run) uses.
pub fn unique(prefix: &str) -> String {
    format!("fnmill-test-{prefix}-{:016x}", fastrand::u64(..))
}

/// How long one broker operation of a test may take: a broker that stops answering (a flow-control
/// block, a restart) fails the test naming the operation instead of hanging the suite.
pub const BROKER_OP: Duration = Duration::from_secs(60);

/// Awaits `operation`, panicking with `what` if it takes longer than [`BROKER_OP`].
pub async fn within<T>(what: &str, operation: impl Future<Output = T>) -> T {
    tokio::time::timeout(BROKER_OP, operation)
        .await
        .unwrap_or_else(|_| panic!("RabbitMQ did not answer within {BROKER_OP:?}: {what}"))
}

pub async fn connect() -> Connection {
    within(
        "connecting",
        Connection::connect(&amqp_url(), ConnectionProperties::default()),
    )
    .await
    .expect("connecting to RabbitMQ (is it running? scripts/services.sh rabbitmq)")
}

/// A test's broker handle: one connection, a confirm channel to publish with, and the queues it
/// declared, deleted again on [`Broker::cleanup`].
pub struct Broker {
    pub connection: Connection,
    pub channel: Channel,
    queues: Mutex<Vec<String>>,
}

impl Broker {
    pub async fn new() -> Self {
        let connection = connect().await;
        let channel = within("opening a channel", connection.create_channel())
            .await
            .unwrap();
        within(
            "confirm.select",
            channel.confirm_select(ConfirmSelectOptions::default()),
        )
        .await
        .unwrap();
        Self {
            connection,
            channel,
            queues: Mutex::new(Vec::new()),
        }
    }

    /// Declares a durable classic queue.
    pub async fn queue(&self, name: &str) {
        self.queue_with(name, FieldTable::default()).await
    }

    /// Declares a fresh input and output queue, `<prefix>-in-…` and `<prefix>-out-…`.
    pub async fn queue_pair(&self, prefix: &str) -> (String, String) {
        let (input, output) = (
            unique(&format!("{prefix}-in")),
            unique(&format!("{prefix}-out")),
        );
        self.queue(&input).await;
        self.queue(&output).await;
        (input, output)
    }

    pub async fn queue_with(&self, name: &str, args: FieldTable) {
        within(
            &format!("declaring {name}"),
            self.channel.queue_declare(
                name.into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                args,
            ),
        )
        .await
        .unwrap_or_else(|e| panic!("declaring {name}: {e}"));
        self.queues.lock().unwrap().push(name.to_string());
    }

    /// Messages ready in `queue` (not counting unacked ones).
    pub async fn ready(&self, queue: &str) -> u32 {
        within(&format!("counting {queue}"), self.counts_now(queue))
            .await
            .0
    }

    /// Messages ready in `queue` once no consumer is left on it, waiting up to `patience`. A
    /// consumer that went away (killed, its connection cut) has its unacked messages requeued by
    /// the queue in the same step that removes it, so the count then includes them; read any
    /// earlier, it may miss some.
    pub async fn ready_once_unconsumed(&self, queue: &str, patience: Duration) -> u32 {
        let deadline = std::time::Instant::now() + patience;
        loop {
            let (ready, consumers) =
                within(&format!("counting {queue}"), self.counts_now(queue)).await;
            if consumers == 0 {
                return ready;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{queue} still has {consumers} consumer(s) after {patience:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `queue`'s ready messages and consumers.
    async fn counts_now(&self, queue: &str) -> (u32, u32) {
        let channel = self.connection.create_channel().await.unwrap();
        let q = channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        let _ = channel.close(200, "ok".into()).await;
        (q.message_count(), q.consumer_count())
    }

    /// Publishes `messages` (payload, headers) to `queue` through the default exchange,
    /// persistent, with message ids, waiting for the broker's confirms every 1,000.
    pub async fn publish(&self, queue: &str, messages: impl IntoIterator<Item = Message>) {
        within(
            &format!("publishing to {queue}"),
            self.publish_now(queue, messages),
        )
        .await
    }

    async fn publish_now(&self, queue: &str, messages: impl IntoIterator<Item = Message>) {
        let mut outstanding = 0;
        for m in messages {
            let mut headers = FieldTable::default();
            for (k, v) in &m.headers {
                headers.insert(k.as_str().into(), AMQPValue::LongString(v.as_str().into()));
            }
            self.channel
                .basic_publish(
                    "".into(),
                    queue.into(),
                    BasicPublishOptions::default(),
                    &m.payload,
                    BasicProperties::default()
                        .with_message_id(m.id.as_str().into())
                        .with_delivery_mode(2)
                        .with_headers(headers),
                )
                .await
                .unwrap();
            outstanding += 1;
            if outstanding == 1000 {
                self.confirmed().await;
                outstanding = 0;
            }
        }
        self.confirmed().await;
    }

    async fn confirmed(&self) {
        let returned = self.channel.wait_for_confirms().await.unwrap();
        assert!(returned.is_empty());
    }

    pub async fn cleanup(self) {
        let queues = std::mem::take(&mut *self.queues.lock().unwrap());
        for q in queues {
            let _ = within(
                &format!("deleting {q}"),
                self.channel
                    .queue_delete(q.as_str().into(), QueueDeleteOptions::default()),
            )
            .await;
        }
        let _ = within("closing", self.connection.close(200, "done".into())).await;
    }
}

/// One input message.
pub struct Message {
    pub id: String,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, String)>,
}

/// `count` messages `m0…`, keyed round-robin over `keys` keys (header `k`), each payload
/// `{"id":..,"key":..,"seq":..}` where `seq` counts per key from 0.
pub fn keyed_messages(count: usize, keys: usize) -> Vec<Message> {
    (0..count)
        .map(|i| {
            let key = format!("k{}", i % keys);
            let seq = i / keys;
            let id = format!("m{i}");
            Message {
                payload: serde_json::json!({ "id": id, "key": key, "seq": seq })
                    .to_string()
                    .into_bytes(),
                headers: vec![("k".into(), key)],
                id,
            }
        })
        .collect()
}

/// A message as a collector received it.
#[derive(Clone, Debug)]
pub struct Received {
    pub payload: Vec<u8>,
    pub headers: BTreeMap<String, String>,
    pub message_id: Option<String>,
    pub redelivered: bool,
}

impl Received {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.payload).unwrap_or(Value::Null)
    }

    /// The `id` of the JSON payload.
    pub fn id(&self) -> String {
        self.json()["id"].as_str().unwrap_or_default().to_string()
    }
}

/// Reads a queue in the background (auto-ack) and keeps everything, in arrival order.
#[derive(Clone)]
pub struct Collector {
    pub messages: Arc<Mutex<Vec<Received>>>,
    /// Kept so the channel outlives its consumer: lapin (4.12) closes a channel when its last
    /// handle goes, and a channel closing while its connection closes (the consumer ends as the
    /// test deletes its queue and closes the connection) leaves that connection's close
    /// unanswered forever. Dropped with the collector, after the test's clean-up.
    _channel: Channel,
}

impl Collector {
    pub async fn start(connection: &Connection, queue: &str) -> Self {
        let channel = within("opening a channel", connection.create_channel())
            .await
            .unwrap();
        let mut consumer = within(
            &format!("consuming {queue}"),
            channel.basic_consume(
                queue.into(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            ),
        )
        .await
        .unwrap();
        let messages = Arc::new(Mutex::new(Vec::new()));
        let sink = messages.clone();
        tokio::spawn(async move {
            while let Some(Ok(d)) = consumer.next().await {
                let headers = d
                    .properties
                    .headers()
                    .as_ref()
                    .map(|t| {
                        t.inner()
                            .iter()
                            .map(|(k, v)| (k.as_str().to_string(), text(v)))
                            .collect()
                    })
                    .unwrap_or_default();
                sink.lock().unwrap().push(Received {
                    payload: d.data,
                    headers,
                    message_id: d.properties.message_id().as_ref().map(|m| m.to_string()),
                    redelivered: d.redelivered,
                });
            }
        });
        Self {
            messages,
            _channel: channel,
        }
    }

    /// Messages received so far.
    pub fn len(&self) -> usize {
        self.messages.lock().unwrap().len()
    }

    /// Whether nothing was received yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn snapshot(&self) -> Vec<Received> {
        self.messages.lock().unwrap().clone()
    }
}

fn text(v: &AMQPValue) -> String {
    match v {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into(),
        AMQPValue::ShortString(s) => s.to_string(),
        other => format!("{other:?}"),
    }
}

/// Every expected id classified by what the outputs and dead letters show.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub ok: usize,
    pub lost: Vec<String>,
    /// Extra copies beyond the first, over all ids.
    pub duplicates: usize,
    pub dead_lettered: usize,
    /// Ids that came out but were never sent.
    pub unexpected: usize,
}

/// Classifies each id of `expected`: `ok` (in `outputs` at least once), `dead_lettered` (in
/// `dead` and not in outputs), otherwise lost; copies beyond the first count as duplicates.
pub fn tally(expected: &[String], outputs: &[Received], dead: &[Received]) -> Tally {
    let mut out: HashMap<String, usize> = HashMap::new();
    for r in outputs {
        *out.entry(r.id()).or_default() += 1;
    }
    let mut dl: HashMap<String, usize> = HashMap::new();
    for r in dead {
        let id = r
            .headers
            .get("fnmill.error.event.id")
            .cloned()
            .or_else(|| r.message_id.clone())
            .unwrap_or_else(|| r.id());
        *dl.entry(id).or_default() += 1;
    }
    let mut t = Tally::default();
    for id in expected {
        match (out.get(id), dl.get(id)) {
            (Some(n), _) => {
                t.ok += 1;
                t.duplicates += n - 1;
            }
            (None, Some(n)) => {
                t.dead_lettered += 1;
                t.duplicates += n - 1;
            }
            (None, None) => t.lost.push(id.clone()),
        }
    }
    let known: std::collections::HashSet<&String> = expected.iter().collect();
    t.unexpected = out.keys().filter(|id| !known.contains(id)).count();
    t
}

/// A TCP proxy in front of the broker whose connections the test can cut at will.
pub struct Proxy {
    pub port: u16,
    inner: crate::proxy::TcpProxy,
}

impl Proxy {
    pub async fn start() -> Self {
        let uri: lapin::uri::AMQPUri = amqp_url().parse().unwrap();
        let inner =
            crate::proxy::TcpProxy::start(format!("{}:{}", uri.authority.host, uri.authority.port))
                .await;
        Self {
            port: inner.addr.port(),
            inner,
        }
    }

    /// The broker URL through the proxy.
    pub fn url(&self) -> String {
        let mut uri: lapin::uri::AMQPUri = amqp_url().parse().unwrap();
        uri.authority.host = "127.0.0.1".into();
        uri.authority.port = self.port;
        format!(
            "amqp://{}:{}@127.0.0.1:{}/{}",
            uri.authority.userinfo.username,
            uri.authority.userinfo.password,
            self.port,
            urlencode(&uri.vhost)
        )
    }

    /// Drops every proxied connection (both sides see the socket close). Returns how many.
    pub fn cut(&self) -> usize {
        self.inner.cut_connections()
    }

    /// Stops forwarding on every proxied connection, both ways, and keeps their sockets open: a
    /// network path that went silent without a reset. Connections opened afterwards pass.
    pub fn freeze(&self) {
        self.inner.freeze();
    }
}

fn urlencode(vhost: &str) -> String {
    vhost.replace('%', "%25").replace('/', "%2f")
}

/// What an AMQP route's `fnmill.toml` says.
pub struct AmqpRoute {
    pub url: String,
    /// When set, the `out` sink connects here instead of `url` (e.g. through its own proxy).
    pub sink_url: Option<String>,
    /// When set, every client reads its URL from this file (`url_file`) instead of `url`.
    pub url_file: Option<String>,
    pub input: String,
    pub output: String,
    pub dead: Option<String>,
    pub component: PathBuf,
    pub prefetch: u16,
    /// Extra TOML lines in the source section.
    pub source_extra: String,
    /// Extra TOML in the `out` sink section.
    pub out_sink_extra: String,
    pub route_extra: String,
}

impl AmqpRoute {
    pub fn new(input: &str, output: &str, dead: Option<&str>, component: PathBuf) -> Self {
        Self {
            url: amqp_url(),
            sink_url: None,
            url_file: None,
            input: input.into(),
            output: output.into(),
            dead: dead.map(str::to_string),
            component,
            prefetch: 100,
            source_extra: String::new(),
            out_sink_extra: String::new(),
            route_extra: String::new(),
        }
    }

    fn url_line(&self) -> String {
        match &self.url_file {
            Some(file) => format!("url_file = \"{file}\""),
            None => format!("url = \"{}\"", self.url),
        }
    }

    /// Writes `fnmill.toml` into `dir` and returns its path.
    pub fn write(&self, dir: &Path) -> PathBuf {
        let dead_sink = match &self.dead {
            Some(_) => format!("[sinks.dead]\nkind = \"amqp\"\n{}\n", self.url_line()),
            None => String::new(),
        };
        let dead_route = match &self.dead {
            Some(q) => format!("dead_letter = {{ sink = \"dead\", target = \"{q}\" }}\n"),
            None => String::new(),
        };
        let text = format!(
            r#"
[runtime]
compute_threads = 2
shutdown_grace = "15s"

[sources.in]
kind = "amqp"
{url}
queue = "{input}"
prefetch = {prefetch}
heartbeat = "5s"
drain_timeout = "10s"
ordering_key = {{ header = "k" }}
{source_extra}

[sinks.out]
kind = "amqp"
{sink_url}
{out_sink_extra}

{dead_sink}

[functions.f]
component = "{component}"

[[routes]]
source = "in"
function = "f"
destinations = {{ out = {{ sink = "out", target = "{output}" }} }}
{dead_route}{route_extra}
"#,
            url = self.url_line(),
            sink_url = match &self.sink_url {
                Some(url) => format!("url = \"{url}\""),
                None => self.url_line(),
            },
            input = self.input,
            output = self.output,
            prefetch = self.prefetch,
            source_extra = self.source_extra,
            out_sink_extra = self.out_sink_extra,
            component = self.component.display(),
            route_extra = self.route_extra,
        );
        let path = dir.join("fnmill.toml");
        std::fs::write(&path, text).unwrap();
        path
    }
}

/// A running `fnmill run` whose log lines are collected.
pub struct Running {
    pub child: Child,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Running {
    pub fn start(mut cmd: std::process::Command, config: &Path) -> Self {
        let mut child = cmd
            .args(["run", "-c"])
            .arg(config)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting fnmill");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                lines.lock().unwrap().push(line);
            }
        });
        Self { child, log }
    }

    pub fn logged(&self, needle: &str) -> bool {
        self.log.lock().unwrap().iter().any(|l| l.contains(needle))
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// [`wait_for`], with fnmill's log in the panic message when `condition` never holds: a
    /// timeout in CI then says what fnmill was doing.
    pub async fn wait_for(&self, timeout: Duration, what: &str, condition: impl FnMut() -> bool) {
        if !holds_within(timeout, condition).await {
            panic!(
                "timed out after {timeout:?} waiting for {what}; fnmill's log:\n{}",
                self.log_text()
            );
        }
    }

    pub fn kill9(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGKILL) };
        let status = self.child.wait().unwrap();
        assert!(
            !status.success(),
            "the kill must have ended fnmill: {status}"
        );
    }

    /// SIGTERM, then waits for a clean exit.
    pub fn stop(mut self) -> String {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().unwrap();
        let log = self.log_text();
        assert!(status.success(), "graceful stop failed: {status}\n{log}");
        log
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
