//! The IO tier: compute processes (`fnmill run --role compute`) reach PostgreSQL and Redis only
//! through IO processes (`--role io`) over NATS, so PostgreSQL sees at most the IO processes
//! times `pool_size` connections however many compute processes run; an IO process killed or
//! missing, a grant the IO tier does not give, NATS unreachable or restarted: each is retried,
//! refused or logged as it should be, and no event is lost.
//!
//! Real NATS (nats-server, built by `scripts/nats.sh build` or `FNMILL_TEST_NATS_SERVER`; the
//! tests that do not stop it use `FNMILL_TEST_NATS_URL` when set), PostgreSQL, Redis and
//! RabbitMQ (`scripts/services.sh`), Jaeger for the trace through both tiers
//! (`scripts/jaeger.sh`, or `FNMILL_TEST_JAEGER_*`), and the `lookup-count` guest (a `sql` lookup
//! and a `keyvalue` increment per event).

use fnmill_testkit::amqp_common;
use fnmill_testkit::common;
use fnmill_testkit::observe_support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, Read, Write};
use std::net::TcpStream;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use amqp_common::{Broker, Collector, Message, amqp_url, unique, wait_for};
use common::{fnmill, guest, read_lines, root};
use fnmill_connector_api::capability::Caller;
use fnmill_connector_api::capability::sql::{SqlError, SqlSource, Value};
use fnmill_connector_api::remote::RemoteConfig;
use fnmill_connector_nats::client::{HOLD_UNTIL, MAX_BATCH_CALLS};
use fnmill_connector_nats::{Endpoint, Nats, Remote};
use fnmill_connector_postgres::tokio_postgres::{self, NoTls};
use serde_json::json;

fn pg_url() -> String {
    std::env::var("FNMILL_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

fn redis_url() -> String {
    std::env::var("FNMILL_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// The heavy tests (several fnmill processes each, thousands of events) one at a time: on two
/// shared cores, side by side they would only slow each other past their deadlines.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A free loopback port.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The nats-server binary: `FNMILL_TEST_NATS_SERVER`, else the one `scripts/nats.sh build`
/// builds (once, cached) and prints.
fn nats_server_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("FNMILL_TEST_NATS_SERVER") {
            return PathBuf::from(bin);
        }
        let out = std::process::Command::new(root().join("scripts/nats.sh"))
            .arg("build")
            .stderr(Stdio::inherit())
            .output()
            .expect("running scripts/nats.sh build");
        assert!(out.status.success(), "scripts/nats.sh build failed");
        let text = String::from_utf8(out.stdout).unwrap();
        PathBuf::from(
            text.lines()
                .last()
                .expect("nats.sh build printed no path")
                .trim(),
        )
    })
    .clone()
}

/// A nats-server of the test's own, which the test can stop and start again on the same port.
struct NatsServer {
    port: u16,
    child: Option<Child>,
}

impl NatsServer {
    /// A server on a free port, not started: nothing listens there yet.
    fn unstarted() -> Self {
        Self {
            port: free_port(),
            child: None,
        }
    }

    fn started() -> Self {
        let mut s = Self::unstarted();
        s.start(&[]);
        s
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts it (with `args`, e.g. a user and password) and waits until it greets clients.
    fn start(&mut self, args: &[&str]) {
        assert!(self.child.is_none(), "already running");
        let child = std::process::Command::new(nats_server_binary())
            .args(["--addr", "127.0.0.1", "--port", &self.port.to_string()])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting nats-server");
        self.child = Some(child);
        let port = self.port;
        common::wait_until(Duration::from_secs(30), "nats-server to listen", || {
            let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
                return false;
            };
            let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
            let mut greeting = [0u8; 4];
            s.read_exact(&mut greeting).is_ok() && &greeting == b"INFO"
        });
    }

    /// Kills it (no lame-duck goodbye: as a crash or a pod eviction looks to clients).
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// NATS for a test that never stops it: `FNMILL_TEST_NATS_URL` when set, else a server of its
/// own (kept alive by the returned guard).
fn shared_nats() -> (String, Option<NatsServer>) {
    match std::env::var("FNMILL_TEST_NATS_URL") {
        Ok(url) if !url.is_empty() => (url, None),
        _ => {
            let server = NatsServer::started();
            (server.url(), Some(server))
        }
    }
}

/// GET `path` on the admin port: status and body.
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut response = String::new();
    s.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

/// The sum of the samples of metric `name` (the whole name, e.g. `…_count`) whose labels
/// contain every one of `labels` (`key="value"`).
fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            (n == name && labels.iter().all(|lb| rest.contains(lb)))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

/// A running `fnmill run --role …` with its log collected and its admin port.
struct Proc {
    name: String,
    child: Child,
    port: u16,
    log: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    fn start(name: &str, role: &str, config: &Path, env: &[(&str, String)]) -> Self {
        let port = free_port();
        let mut cmd = fnmill();
        cmd.args(["run", "--role", role, "-c"])
            .arg(config)
            .env("FNMILL__ADMIN__LISTEN", format!("127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("starting fnmill");
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
        Self {
            name: name.to_string(),
            child,
            port,
            log,
        }
    }

    fn logged(&self, needle: &str) -> bool {
        self.log.lock().unwrap().iter().any(|l| l.contains(needle))
    }

    fn count_logged(&self, needle: &str) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    fn log_text(&self) -> String {
        let log = self.log.lock().unwrap();
        log[log.len().saturating_sub(60)..].join("\n")
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    fn metrics(&self) -> String {
        http_get(self.port, "/metrics")
            .map(|(_, body)| body)
            .unwrap_or_default()
    }

    fn readyz(&self) -> Option<(u16, String)> {
        http_get(self.port, "/readyz")
    }

    /// Waits until `/readyz` answers 200.
    async fn ready(&self, timeout: Duration) {
        let what = format!("{} to be ready", self.name);
        wait_for(timeout, &what, || matches!(self.readyz(), Some((200, _)))).await;
    }

    /// SIGSTOP: the process keeps its connections but answers nothing.
    fn freeze(&self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGSTOP) };
    }

    /// SIGKILL; proves the kill is what ended it.
    fn kill9(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGKILL) };
        let status = self.child.wait().unwrap();
        assert_eq!(
            status.signal(),
            Some(libc::SIGKILL),
            "{} ended by something else: {status}",
            self.name
        );
    }

    /// SIGTERM; waits for a clean exit and returns the log.
    fn stop(mut self) -> String {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().unwrap();
        let log = self.log_text();
        assert!(
            status.success(),
            "{} did not stop cleanly: {status}\n{log}",
            self.name
        );
        log
    }

    /// Waits for the process to end by itself (a file source at its end); its exit status.
    async fn finished(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not finish within {timeout:?}:\n{}",
                self.name,
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What one test's data sources are: a customers table of its own, a Redis prefix of its own,
/// subjects of its own.
struct Data {
    table: String,
    app: String,
    prefix: String,
    subject: String,
    nats: String,
    client: tokio_postgres::Client,
}

const CUSTOMERS: i64 = 1000;

impl Data {
    async fn new(nats: &str) -> Self {
        let id = unique("io").replace('-', "_");
        let (client, conn) = tokio_postgres::connect(&pg_url(), NoTls)
            .await
            .expect("connecting to the test PostgreSQL");
        tokio::spawn(conn);
        let table = format!("{id}_customers");
        client
            .batch_execute(&format!(
                "create table {table} (id int8 primary key, name text not null);
                 insert into {table} select i, 'customer ' || i from generate_series(1, {CUSTOMERS}) i;"
            ))
            .await
            .unwrap();
        Self {
            app: format!("fnmill-{id}"),
            prefix: format!("{id}:"),
            subject: format!("fnmill.test.{id}"),
            nats: nats.to_string(),
            table,
            client,
        }
    }

    /// `[data_sources]` and `[functions]`: `db` (PostgreSQL) and `cache` (Redis, bucket
    /// `counts`), both served by the IO tier; function `f` (lookup-count) granted both, with
    /// `f_grants` replacing its grants when given.
    fn toml(&self, f_grants: Option<&str>) -> String {
        let grants = f_grants.unwrap_or("data_sources = [\"db\"]\nbuckets = [\"counts\"]");
        format!(
            r#"
[data_sources.db]
kind = "postgres"
url_env = "IOT_DB_URL"
pool_size = 4
wait_timeout = "2s"
application_name = "{app}"
remote = {{ nats = "{nats}", subject = "{subject}.db" }}

[data_sources.cache]
kind = "redis"
url_env = "IOT_REDIS_URL"
pool_size = 4
buckets = {{ counts = {{ prefix = "{prefix}" }} }}
remote = {{ url = "{nats}", subject = "{subject}.cache" }}

[functions.f]
component = "{component}"
{grants}
config = {{ statement = "select name from {table} where id = $1" }}
"#,
            app = self.app,
            nats = self.nats,
            subject = self.subject,
            prefix = self.prefix,
            component = guest("lookup-count").display(),
            table = self.table,
        )
    }

    /// What an IO process needs and a compute process does not get: the database URLs.
    fn secrets() -> Vec<(&'static str, String)> {
        vec![("IOT_DB_URL", pg_url()), ("IOT_REDIS_URL", redis_url())]
    }

    /// Connections PostgreSQL has open for this test's pools.
    async fn connections(&self) -> i64 {
        self.client
            .query_one(
                "select count(*) from pg_stat_activity where application_name = $1",
                &[&self.app],
            )
            .await
            .unwrap()
            .get(0)
    }

    /// Samples [`Data::connections`] every 20 ms in the background; the most seen so far.
    fn watch_connections(self: &Arc<Self>) -> Arc<AtomicI64> {
        let most = Arc::new(AtomicI64::new(0));
        let (data, seen) = (Arc::downgrade(self), most.clone());
        tokio::spawn(async move {
            while let Some(data) = data.upgrade() {
                let n = data.connections().await;
                seen.fetch_max(n, Ordering::Relaxed);
                drop(data);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        most
    }

    async fn drop_table(&self) {
        let _ = self
            .client
            .batch_execute(&format!("drop table if exists {}", self.table))
            .await;
    }
}

/// The customer an event `i` looks up.
fn customer(i: usize) -> i64 {
    (i as i64 % CUSTOMERS) + 1
}

/// `n` messages `m{from}`… with payload `{"customer": …}`, keyed over 200 keys.
fn messages(from: usize, n: usize) -> Vec<Message> {
    (from..from + n)
        .map(|i| Message {
            id: format!("m{i}"),
            payload: json!({ "customer": customer(i) }).to_string().into_bytes(),
            headers: vec![("k".into(), format!("k{}", i % 200))],
        })
        .collect()
}

/// Calls through the IO tier that failed as `unavailable`, over `compute`'s processes.
fn unavailable(compute: &[Proc]) -> f64 {
    compute
        .iter()
        .map(|p| {
            metric(
                &p.metrics(),
                "fnmill_data_source_call_duration_seconds_count",
                &["via=\"io-tier\"", "outcome=\"unavailable\""],
            )
        })
        .sum()
}

/// A compute config reading RabbitMQ queue `input`, writing to queue `output`, dead letters to
/// queue `dead`, with `data`'s data sources.
fn amqp_config(dir: &Path, data: &Data, input: &str, output: &str, dead: &str) -> PathBuf {
    let url = amqp_url();
    let text = format!(
        r#"
[runtime]
compute_threads = 2
shutdown_grace = "15s"

[sources.in]
kind = "amqp"
url = "{url}"
queue = "{input}"
prefetch = 200
ordering_key = {{ header = "k" }}

[sinks.out]
kind = "amqp"
url = "{url}"

{data}

[[routes]]
source = "in"
function = "f"
destinations = {{ out = {{ sink = "out", target = "{output}" }} }}
dead_letter = {{ sink = "out", target = "{dead}" }}
retry = {{ max_attempts = 1000, initial_backoff = "50ms", max_backoff = "500ms" }}
"#,
        data = data.toml(None),
    );
    let path = dir.join("fnmill.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A config reading `in.jsonl` (following it when `follow`) into `out.jsonl`, dead letters into
/// `dead.jsonl`, with `data`'s data sources and `f`'s grants.
fn file_config(dir: &Path, data: &Data, follow: bool, f_grants: Option<&str>) -> PathBuf {
    let text = format!(
        r#"
[runtime]
compute_threads = 2
shutdown_grace = "10s"

[sources.in]
kind = "file"
path = "in.jsonl"
follow = {follow}

[sinks.out]
kind = "file"
path = "out.jsonl"

[sinks.dead]
kind = "file"
path = "dead.jsonl"

{data}

[[routes]]
source = "in"
function = "f"
destinations = {{ out = "out" }}
dead_letter = "dead"
retry = {{ max_attempts = 1000, initial_backoff = "50ms", max_backoff = "500ms" }}
"#,
        data = data.toml(f_grants),
    );
    let path = dir.join(if follow { "follow.toml" } else { "fnmill.toml" });
    std::fs::write(&path, text).unwrap();
    path
}

/// Rewrites the config at `path` with timeouts no slow machine reaches: the function's (5 s by
/// default) and each IO-tier call's (the pool's wait plus the statement or command timeout,
/// 2–3 s). A call that times out may still have run at the IO process, so its retried event
/// increments its counter again; a test of "every event once" must not depend on the machine's
/// speed to keep every call inside those defaults.
fn beyond_a_slow_machine(path: &Path) {
    let text = std::fs::read_to_string(path).unwrap();
    let slow = text
        .replace("[functions.f]\n", "[functions.f]\ntimeout = \"120s\"\n")
        .replace(
            "remote = { nats = ",
            "remote = { timeout = \"60s\", nats = ",
        )
        .replace("remote = { url = ", "remote = { timeout = \"60s\", url = ")
        .replace("buckets = {", "command_timeout = \"30s\"\nbuckets = {");
    assert_eq!(slow.matches("\"60s\"").count(), 2, "{slow}");
    assert_eq!(slow.matches("\"120s\"").count(), 1, "{slow}");
    assert_eq!(slow.matches("\"30s\"").count(), 1, "{slow}");
    std::fs::write(path, slow).unwrap();
}

/// Appends events `e{from}`… (payload `{"customer": …}`) to `path`.
fn append_events(path: &Path, from: usize, n: usize) {
    let mut text = String::new();
    for i in from..from + n {
        let line = json!({ "id": format!("e{i}"), "key": format!("k{}", i % 50),
                           "payload": { "customer": customer(i) } });
        text.push_str(&line.to_string());
        text.push('\n');
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

/// The outputs of a file route: event id → (customer name, counter) of each output.
fn file_outputs(path: &Path) -> BTreeMap<String, Vec<(String, i64)>> {
    let mut out: BTreeMap<String, Vec<(String, i64)>> = BTreeMap::new();
    for line in read_lines(path) {
        let p = &line["payload"];
        out.entry(p["id"].as_str().unwrap().to_string())
            .or_default()
            .push((
                p["name"].as_str().unwrap_or_default().to_string(),
                p["count"].as_i64().unwrap(),
            ));
    }
    out
}

/// 3 compute processes and 2 IO processes (`pool_size = 4`) on one route: 20,000 events, each a
/// `sql` lookup and a `keyvalue` increment, all done exactly once by id (every counter 1), the
/// work spread over every process, and PostgreSQL never above 2 × 4 connections from fnmill —
/// the compute processes do not even have the database URLs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_compute_two_io_do_every_event_once_within_the_connection_cap() {
    let _heavy = HEAVY.lock().await;
    let (nats, _server) = shared_nats();
    let data = Arc::new(Data::new(&nats).await);
    let broker = Broker::new().await;
    let (input, output, dead) = (unique("io-in"), unique("io-out"), unique("io-dead"));
    for q in [&input, &output, &dead] {
        broker.queue(q).await;
    }
    const N: usize = 20_000;
    broker.publish(&input, messages(0, N)).await;
    let out = Collector::start(&broker.connection, &output).await;
    let dead_letters = Collector::start(&broker.connection, &dead).await;
    let dir = tempfile::tempdir().unwrap();
    let config = amqp_config(dir.path(), &data, &input, &output, &dead);
    beyond_a_slow_machine(&config);

    let most = data.watch_connections();
    let io: Vec<Proc> = (0..2)
        .map(|i| Proc::start(&format!("io-{i}"), "io", &config, &Data::secrets()))
        .collect();
    for p in &io {
        p.ready(Duration::from_secs(60)).await;
    }
    let compute: Vec<Proc> = (0..3)
        .map(|i| Proc::start(&format!("compute-{i}"), "compute", &config, &[]))
        .collect();
    let started = Instant::now();
    wait_for(Duration::from_secs(600), "20,000 outputs", || {
        out.len() >= N || !dead_letters.is_empty()
    })
    .await;
    let elapsed = started.elapsed();
    assert_eq!(
        dead_letters.len(),
        0,
        "dead letters: {:?}",
        dead_letters.snapshot().first()
    );

    let mut counts: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for r in out.snapshot() {
        let json = r.json();
        let i: usize = r.id()[1..].parse().unwrap();
        assert_eq!(json["name"], format!("customer {}", customer(i)), "{json}");
        counts
            .entry(r.id())
            .or_default()
            .push(json["count"].as_i64().unwrap());
    }
    assert_eq!(counts.len(), N, "distinct ids out");
    assert_eq!(out.len(), N, "outputs (a duplicate would be more)");
    assert!(
        counts.values().all(|c| c == &[1]),
        "an event's counter was incremented more than once"
    );

    // Every process took part; each IO process served from its own pool.
    for p in &io {
        let served = metric(
            &p.metrics(),
            "fnmill_data_source_call_duration_seconds_count",
            &["data_source=\"db\"", "via=\"pool\"", "outcome=\"ok\""],
        );
        assert!(served > 0.0, "{} served no sql call", p.name);
        eprintln!("{} served {served} sql calls", p.name);
    }
    for p in &compute {
        let text = p.metrics();
        let done = metric(&text, "fnmill_events_done_total", &[]);
        assert!(done > 0.0, "{} did no event", p.name);
        let via = metric(
            &text,
            "fnmill_data_source_call_duration_seconds_count",
            &["via=\"io-tier\""],
        );
        assert!(
            via >= done,
            "{}: {via} calls through the IO tier for {done} events",
            p.name
        );
        assert_eq!(
            metric(
                &text,
                "fnmill_data_source_call_duration_seconds_count",
                &["via=\"pool\""]
            ),
            0.0,
            "{} used a pool of its own",
            p.name
        );
        eprintln!("{} did {done} events", p.name);
    }
    let most = most.load(Ordering::Relaxed);
    eprintln!(
        "{N} events in {elapsed:.1?} ({:.0}/s); PostgreSQL connections from fnmill at most {most}",
        N as f64 / elapsed.as_secs_f64()
    );
    assert!(most >= 1, "the sampler never saw the IO tier's connections");
    assert!(
        most <= 8,
        "{most} connections: more than 2 IO processes × pool_size 4"
    );

    for p in compute {
        p.stop();
    }
    for p in io {
        p.stop();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while data.connections().await > 0 {
        assert!(
            Instant::now() < deadline,
            "the IO tier's connections outlived it"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    data.drop_table().await;
    broker.cleanup().await;
}

/// An IO process frozen and then killed with SIGKILL mid-run: the calls it held fail as
/// `unavailable` at their callers and are retried on the other; no event is lost or dead-lettered. Started again, it
/// takes its share of the calls again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_io_process_killed_mid_run_loses_nothing_and_takes_its_share_again() {
    let _heavy = HEAVY.lock().await;
    let (nats, _server) = shared_nats();
    let data = Arc::new(Data::new(&nats).await);
    let broker = Broker::new().await;
    let (input, output, dead) = (unique("kill-in"), unique("kill-out"), unique("kill-dead"));
    for q in [&input, &output, &dead] {
        broker.queue(q).await;
    }
    let out = Collector::start(&broker.connection, &output).await;
    let dead_letters = Collector::start(&broker.connection, &dead).await;
    let dir = tempfile::tempdir().unwrap();
    let config = amqp_config(dir.path(), &data, &input, &output, &dead);

    let mut io: Vec<Proc> = (0..2)
        .map(|i| Proc::start(&format!("io-{i}"), "io", &config, &Data::secrets()))
        .collect();
    for p in &io {
        p.ready(Duration::from_secs(60)).await;
    }
    let compute: Vec<Proc> = (0..2)
        .map(|i| Proc::start(&format!("compute-{i}"), "compute", &config, &[]))
        .collect();

    // The kill must land while the process holds calls, however fast this machine is: once the
    // run is under way the process is frozen (SIGSTOP), so the calls NATS hands it stay
    // unanswered, and events keep coming until one of them has failed as `unavailable` at its
    // caller. Then it is killed, holding what it was handed since.
    const N: usize = 6000;
    const BEFORE_RESTART: usize = 4500;
    broker.publish(&input, messages(0, 3000)).await;
    wait_for(Duration::from_secs(300), "the first outputs", || {
        out.len() >= 500
    })
    .await;
    io[0].freeze();
    let mut published = 3000;
    let deadline = Instant::now() + Duration::from_secs(120);
    while unavailable(&compute) == 0.0 {
        assert!(
            Instant::now() < deadline && published < BEFORE_RESTART,
            "no call reached the frozen IO process ({published} events published)"
        );
        if broker.ready(&input).await < 100 {
            broker.publish(&input, messages(published, 100)).await;
            published += 100;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    io[0].kill9();
    let at_kill = out.len();
    broker
        .publish(&input, messages(published, BEFORE_RESTART - published))
        .await;
    wait_for(
        Duration::from_secs(300),
        "every event so far, with one IO process",
        || out.len() >= BEFORE_RESTART || !dead_letters.is_empty(),
    )
    .await;

    // Started again, it serves calls again.
    io[0] = Proc::start("io-0 (again)", "io", &config, &Data::secrets());
    io[0].ready(Duration::from_secs(60)).await;
    broker.publish(&input, messages(4500, 1500)).await;
    wait_for(Duration::from_secs(300), "every output", || {
        out.len() >= N || !dead_letters.is_empty()
    })
    .await;
    let served_again = metric(
        &io[0].metrics(),
        "fnmill_data_source_call_duration_seconds_count",
        &["via=\"pool\"", "outcome=\"ok\""],
    );
    assert!(
        served_again > 0.0,
        "the restarted IO process served nothing"
    );

    assert_eq!(
        dead_letters.len(),
        0,
        "dead letters: {:?}",
        dead_letters.snapshot().first()
    );
    let ids: BTreeSet<String> = out.snapshot().iter().map(|r| r.id()).collect();
    let expected: BTreeSet<String> = (0..N).map(|i| format!("m{i}")).collect();
    assert_eq!(ids, expected, "lost events");
    assert_eq!(out.len(), N, "an event was output twice");
    let unavailable = unavailable(&compute);
    eprintln!(
        "killed at {at_kill} outputs; {unavailable} calls unavailable (retried); the restarted IO \
         process served {served_again} calls"
    );
    for p in compute {
        p.stop();
    }
    for p in io {
        p.stop();
    }
    data.drop_table().await;
    broker.cleanup().await;
}

/// No IO process at all: the route's events fail as `unavailable` and are retried with backoff,
/// `/readyz` names the data source, nothing is dead-lettered; once an IO process starts, the
/// route finishes every event and is ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_io_process_events_wait_in_retry_and_resume_when_one_starts() {
    let (nats, _server) = shared_nats();
    let data = Data::new(&nats).await;
    let dir = tempfile::tempdir().unwrap();
    append_events(&dir.path().join("in.jsonl"), 0, 200);
    let config = file_config(dir.path(), &data, false, None);
    let mut compute = Proc::start("compute", "compute", &config, &[]);

    wait_for(
        Duration::from_secs(60),
        "retries without an IO tier",
        || metric(&compute.metrics(), "fnmill_retries_total", &[]) >= 50.0,
    )
    .await;
    let (status, body) = compute.readyz().unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("data source db"), "{body}");
    assert!(
        compute.logged("The IO tier does not answer; data source not ready"),
        "{}",
        compute.log_text()
    );
    assert!(
        compute.logged("no IO-tier process serves"),
        "{}",
        compute.log_text()
    );
    assert_eq!(common::count_lines(&dir.path().join("out.jsonl")), 0);
    assert_eq!(common::count_lines(&dir.path().join("dead.jsonl")), 0);

    let io = Proc::start("io", "io", &config, &Data::secrets());
    let status = compute.finished(Duration::from_secs(120)).await;
    assert!(status.success(), "{status}\n{}", compute.log_text());
    let outputs = file_outputs(&dir.path().join("out.jsonl"));
    assert_eq!(outputs.len(), 200);
    assert!(outputs.values().all(|o| o.len() == 1 && o[0].1 == 1));
    assert_eq!(common::count_lines(&dir.path().join("dead.jsonl")), 0);
    assert!(compute.logged("The IO tier answers; data source ready"));
    io.stop();
    data.drop_table().await;
}

/// A compute process whose config grants `f` the database and the bucket, an IO tier whose
/// config grants `f` neither: the calls are refused with `not-granted` (`access-denied` for
/// the bucket), the events are dead-lettered saying so, and both sides log the refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_the_io_tier_does_not_give_is_refused_and_logged_on_both_sides() {
    let (nats, _server) = shared_nats();
    let data = Data::new(&nats).await;
    let sql_dir = tempfile::tempdir().unwrap();
    let kv_dir = tempfile::tempdir().unwrap();
    append_events(&sql_dir.path().join("in.jsonl"), 0, 5);
    append_events(&kv_dir.path().join("in.jsonl"), 0, 5);
    // The IO tier's own config: `f` may use the database but not the bucket…
    let io_config = file_config(
        sql_dir.path(),
        &data,
        true,
        Some("data_sources = [\"db\"]\nbuckets = []"),
    );
    let io = Proc::start("io", "io", &io_config, &Data::secrets());
    io.ready(Duration::from_secs(60)).await;

    // …so a compute process granting `f` the bucket gets `access-denied` on it.
    let kv_config = file_config(kv_dir.path(), &data, false, None);
    let mut compute = Proc::start("compute (kv)", "compute", &kv_config, &[]);
    assert!(compute.finished(Duration::from_secs(120)).await.success());
    let dead = read_lines(&kv_dir.path().join("dead.jsonl"));
    assert_eq!(dead.len(), 5, "{}", compute.log_text());
    for d in &dead {
        assert_eq!(common::headers(d)["fnmill.error.message"], "access-denied");
    }
    assert!(
        compute.logged("The IO tier refused the call"),
        "{}",
        compute.log_text()
    );

    // A function the IO tier's config does not know at all is granted nothing there.
    let renamed = std::fs::read_to_string(&io_config)
        .unwrap()
        .replace("[functions.f]", "[functions.other]");
    std::fs::write(&io_config, renamed).unwrap();
    let io2 = Proc::start("io (without f)", "io", &io_config, &Data::secrets());
    io2.ready(Duration::from_secs(60)).await;
    io.stop();
    let sql_config = file_config(sql_dir.path(), &data, false, None);
    let mut compute = Proc::start("compute (sql)", "compute", &sql_config, &[]);
    assert!(compute.finished(Duration::from_secs(120)).await.success());
    let dead = read_lines(&sql_dir.path().join("dead.jsonl"));
    assert_eq!(dead.len(), 5, "{}", compute.log_text());
    for d in &dead {
        let message = &common::headers(d)["fnmill.error.message"];
        assert!(message.starts_with("not-granted: "), "{message}");
        assert!(message.contains("has no function `f`"), "{message}");
        assert_eq!(common::headers(d)["fnmill.error.kind"], "fatal");
    }
    assert_eq!(common::count_lines(&sql_dir.path().join("out.jsonl")), 0);
    assert!(
        compute.logged("The IO tier refused the call"),
        "{}",
        compute.log_text()
    );
    assert!(
        io2.logged("Refused a call the IO tier's config does not grant"),
        "{}",
        io2.log_text()
    );
    // The request named the function, the route (`<source>-<function>`) and the event.
    assert!(
        io2.logged("function=f route=\"in-f\" event=\"e0\""),
        "{}",
        io2.log_text()
    );
    assert_eq!(
        metric(
            &io2.metrics(),
            "fnmill_data_source_refused_total",
            &["data_source=\"db\"", "reason=\"not-granted\""]
        ),
        5.0
    );
    io2.stop();
    data.drop_table().await;
}

/// NATS unreachable when both processes start: each says so in its log and keeps running.
/// Once NATS is up the events flow; NATS killed mid-run and started again: the connection loss
/// and the reconnection are logged, events wait in retry meanwhile, none is lost or duplicated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_unreachable_at_start_and_restarted_mid_run_loses_nothing() {
    let _heavy = HEAVY.lock().await;
    let mut server = NatsServer::unstarted();
    let data = Data::new(&server.url()).await;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    append_events(&input, 0, 300);
    let config = file_config(dir.path(), &data, true, None);
    let mut io = Proc::start("io", "io", &config, &Data::secrets());
    let mut compute = Proc::start("compute", "compute", &config, &[]);
    wait_for(
        Duration::from_secs(60),
        "both to report NATS unreachable",
        || io.logged("NATS unreachable; retrying") && compute.logged("NATS unreachable; retrying"),
    )
    .await;
    // The route runs meanwhile: its events wait in retry, and it is not ready.
    wait_for(
        Duration::from_secs(60),
        "retries while NATS is unreachable",
        || metric(&compute.metrics(), "fnmill_retries_total", &[]) >= 20.0,
    )
    .await;
    let (status, body) = compute.readyz().unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(io.alive() && compute.alive());
    assert_eq!(common::count_lines(&dir.path().join("out.jsonl")), 0);

    server.start(&[]);
    let out = dir.path().join("out.jsonl");
    wait_for(Duration::from_secs(120), "the first 300 events", || {
        common::count_lines(&out) >= 300
    })
    .await;

    // Mid-run: NATS goes away while events arrive, and comes back.
    server.stop();
    wait_for(
        Duration::from_secs(60),
        "the connection loss to be noticed",
        || compute.logged("NATS connection lost") && io.logged("NATS connection lost"),
    )
    .await;
    append_events(&input, 300, 300);
    let retries = metric(&compute.metrics(), "fnmill_retries_total", &[]);
    wait_for(
        Duration::from_secs(60),
        "retries while NATS is down",
        || metric(&compute.metrics(), "fnmill_retries_total", &[]) >= retries + 20.0,
    )
    .await;
    let (status, body) = compute.readyz().unwrap();
    assert_eq!(status, 503, "{body}");
    server.start(&[]);
    wait_for(Duration::from_secs(120), "all 600 events", || {
        common::count_lines(&out) >= 600
    })
    .await;
    assert!(io.alive() && compute.alive(), "a process crashed");
    assert!(
        compute.count_logged("NATS connected") >= 2,
        "{}",
        compute.log_text()
    );
    assert!(io.count_logged("NATS connected") >= 2, "{}", io.log_text());

    let outputs = file_outputs(&out);
    assert_eq!(outputs.len(), 600, "lost events");
    assert!(
        outputs.values().all(|o| o.len() == 1),
        "an event was output twice"
    );
    assert_eq!(common::count_lines(&dir.path().join("dead.jsonl")), 0);
    compute.stop();
    io.stop();
    data.drop_table().await;
}

/// With tracing on in both tiers, an event's trace goes through the IO tier: the compute
/// process's `SELECT` and `INCRBY` spans each have the IO process's server span for that request
/// as their child, in the event's trace, naming the function, the route and the event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_through_the_io_tier_is_traced_on_both_sides() {
    use observe_support::{hex_id, jaeger, one, send_root_span, trace, traceparent};
    let (nats, _server) = shared_nats();
    let data = Data::new(&nats).await;
    let dir = tempfile::tempdir().unwrap();
    let (trace_id, root) = (hex_id(32), hex_id(16));
    send_root_span("test-producer", &trace_id, &root);
    let event = json!({"id": "traced", "key": "k", "payload": {"customer": 7},
                       "headers": {"traceparent": traceparent(&trace_id, &root)}});
    std::fs::write(dir.path().join("in.jsonl"), format!("{event}\n")).unwrap();
    let config = file_config(dir.path(), &data, false, None);
    // One config for both roles; each process names its own service.
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        format!(
            "[telemetry.traces]\nendpoint = \"{}\"\nprotocol = \"grpc\"\n{text}",
            jaeger().grpc
        ),
    )
    .unwrap();
    let services = (
        format!("iotier-compute-{}", hex_id(6)),
        format!("iotier-io-{}", hex_id(6)),
    );
    let mut io_env = Data::secrets();
    io_env.push(("OTEL_SERVICE_NAME", services.1.clone()));
    let io = Proc::start("io", "io", &config, &io_env);
    io.ready(Duration::from_secs(60)).await;
    let mut compute = Proc::start(
        "compute",
        "compute",
        &config,
        &[("OTEL_SERVICE_NAME", services.0.clone())],
    );
    assert!(compute.finished(Duration::from_secs(120)).await.success());
    assert_eq!(
        file_outputs(&dir.path().join("out.jsonl"))["traced"],
        [("customer 7".to_string(), 1)]
    );
    // The IO process's spans go out when it stops.
    io.stop();

    // root, event, call, SELECT, INCRBY, output; and the IO tier's two.
    let spans = tokio::task::spawn_blocking(move || trace(&trace_id, 8))
        .await
        .unwrap();
    for (client, server) in [
        ("SELECT db", "serve query db"),
        ("INCRBY counts", "serve increment counts"),
    ] {
        let client = one(&spans, client, |s| {
            s.name == client && s.service == services.0
        });
        assert_eq!(client.kind(), "client");
        let served = one(&spans, server, |s| s.name == server);
        assert_eq!(served.service, services.1, "{served:?}");
        assert_eq!(served.kind(), "server");
        assert_eq!(
            served.parent.as_deref(),
            Some(client.span_id.as_str()),
            "{server} is not a child of {}",
            client.name
        );
        assert_eq!(served.tag("fnmill.function"), "f");
        assert_eq!(served.tag("fnmill.route"), "in-f");
        assert_eq!(served.tag("messaging.message.id"), "traced");
    }
    data.drop_table().await;
}

/// A NATS password (in the URL) is in no log line of either role, even at trace level.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nats_password_stays_out_of_a_trace_log() {
    const PASSWORD: &str = "nats-secret-pw-7Kd02q";
    let mut server = NatsServer::unstarted();
    server.start(&["--user", "fnmill", "--pass", PASSWORD]);
    let url = format!("nats://fnmill:{PASSWORD}@127.0.0.1:{}", server.port);
    let data = Data::new(&url).await;
    let dir = tempfile::tempdir().unwrap();
    append_events(&dir.path().join("in.jsonl"), 0, 20);
    let config = file_config(dir.path(), &data, false, None);
    let trace = [("RUST_LOG", "trace".to_string())];
    let mut io_env = Data::secrets();
    io_env.extend(trace.clone());
    let io = Proc::start("io", "io", &config, &io_env);
    io.ready(Duration::from_secs(60)).await;
    let mut compute = Proc::start("compute", "compute", &config, &trace);
    assert!(compute.finished(Duration::from_secs(120)).await.success());
    assert_eq!(common::count_lines(&dir.path().join("out.jsonl")), 20);
    let io_log = io.log.lock().unwrap().join("\n");
    let compute_log = compute.log.lock().unwrap().join("\n");
    assert!(compute_log.contains("TRACE"), "trace logging was not on");
    for (name, log) in [("io", &io_log), ("compute", &compute_log)] {
        if let Some(line) = log.lines().find(|l| l.contains(PASSWORD)) {
            panic!("the NATS password is in the {name} log: {line}");
        }
    }
    io.stop();
    data.drop_table().await;
}

/// The compute side of `data`'s `db`, as a compute process builds it, in this test process: the
/// client of the IO tier on `data.subject`.db, ready once the tier answered a ping.
async fn db_client(data: &Data, timeout: Duration) -> Arc<Remote> {
    let remote: RemoteConfig = serde_json::from_value(
        json!({ "url": data.nats, "subject": format!("{}.db", data.subject) }),
    )
    .unwrap();
    let endpoint = Endpoint::from_config(&remote).unwrap();
    let nats = Nats::connect(&endpoint, "fnmill iotier test")
        .await
        .unwrap();
    assert!(nats.wait_connected(Duration::from_secs(30)).await);
    let client = Remote::new(nats, "db", &remote.subject, timeout, remote.linger());
    tokio::spawn(client.watch());
    let ready = client.readiness();
    wait_for(Duration::from_secs(60), "the IO tier to answer", || {
        ready.is_ready()
    })
    .await;
    client
}

/// `db` as function `function` sees it in event `e{i}`.
fn db_for(client: &Arc<Remote>, function: &str, i: usize) -> Arc<dyn SqlSource> {
    client
        .sql("db")
        .for_caller(&Caller {
            function: function.into(),
            route: Some("batch-test".into()),
            event: Some(format!("e{i}").into()),
            traceparent: None,
        })
        .unwrap()
}

/// Many calls at once through a real nats-server and a real IO process go in a few messages,
/// and each gets its own answer: its own row, or its own refusal for a function the IO tier's
/// config does not know, though refused and granted calls share the batches. An IO process that
/// holds a batch and is killed fails every call of it as `unavailable` (and none of another
/// batch); each is then retried, as a route would, and done by the other IO process.
///
/// The calls are made on this test's one thread, so the link's task runs only when the test
/// yields: up to `MAX_BATCH_CALLS` consecutive calls go in a message, and a `join_all` of at
/// most 30 calls queues all of them before the link runs, so they go in one.
#[tokio::test]
async fn calls_in_flight_share_messages_and_each_gets_its_own_answer() {
    let _heavy = HEAVY.lock().await;
    let (nats, _server) = shared_nats();
    let data = Data::new(&nats).await;
    let dir = tempfile::tempdir().unwrap();
    let config = file_config(dir.path(), &data, true, None);
    let mut io = vec![Proc::start("io-0", "io", &config, &Data::secrets())];
    io[0].ready(Duration::from_secs(60)).await;
    let client = db_client(&data, Duration::from_secs(3)).await;
    let statement = format!("select name from {} where id = $1", data.table);
    let query = |function: &str, i: usize| {
        db_for(&client, function, i).query(statement.clone(), vec![Value::Int(customer(i))])
    };

    // Every third call is by a function the IO tier grants nothing.
    const N: usize = 600;
    let before = client.batching();
    let results = futures::future::join_all(
        (0..N).map(|i| query(if i % 3 == 2 { "intruder" } else { "f" }, i)),
    )
    .await;
    let after = client.batching();
    for (i, result) in results.into_iter().enumerate() {
        match result {
            Ok(rows) if i % 3 != 2 => assert_eq!(
                rows.rows,
                [[Value::Text(format!("customer {}", customer(i)))]],
                "call {i} got another call's answer"
            ),
            Err(SqlError::NotGranted(m)) if i % 3 == 2 => {
                assert!(m.contains("no function `intruder`"), "call {i}: {m}")
            }
            other => panic!("call {i}: {other:?}"),
        }
    }
    // A ping of the readiness watch may have joined them.
    let (calls, batches) = (after.calls - before.calls, after.batches - before.batches);
    eprintln!(
        "{calls} calls in {batches} messages; {} answers in {} messages",
        after.answers - before.answers,
        after.answer_messages - before.answer_messages
    );
    assert!(calls >= N as u64, "{calls} calls sent");
    assert!(
        batches <= N.div_ceil(MAX_BATCH_CALLS) as u64 + 1,
        "{calls} calls in {batches} messages: not batched"
    );
    let refused = metric(
        &io[0].metrics(),
        "fnmill_data_source_refused_total",
        &["data_source=\"db\"", "reason=\"not-granted\""],
    );
    assert_eq!(refused, (N / 3) as f64, "refusals counted one by one");
    assert!(
        io[0].logged("function=intruder route=\"batch-test\" event=\"e2\""),
        "each refusal is logged with its own caller:\n{}",
        io[0].log_text()
    );

    // A second IO process; the first frozen, so the batches NATS hands it stay unanswered.
    io.push(Proc::start("io-1", "io", &config, &Data::secrets()));
    io[1].ready(Duration::from_secs(60)).await;
    io[0].freeze();
    // At most `join_all`'s 30 for polling every call in one go: a larger `join_all` yields
    // after every 32 calls, and the link, on this same thread, sends what is queued so far
    // (a batch of 100 once went in two messages, to both IO processes).
    const BATCH: usize = 30;
    let mut failed: Vec<usize> = Vec::new();
    let mut served_by_the_other = 0;
    let mut round = 0;
    while failed.is_empty() {
        assert!(
            round < 30,
            "no batch reached the frozen IO process in 30 tries"
        );
        let from = N + round * BATCH;
        let results = futures::future::join_all((from..from + BATCH).map(|i| query("f", i))).await;
        let unavailable: Vec<usize> = results
            .iter()
            .zip(from..)
            .filter(|(r, _)| matches!(r, Err(SqlError::Unavailable(_))))
            .map(|(_, i)| i)
            .collect();
        for (r, i) in results.iter().zip(from..) {
            match r {
                Ok(rows) => assert_eq!(
                    rows.rows,
                    [[Value::Text(format!("customer {}", customer(i)))]],
                    "call {i}"
                ),
                Err(SqlError::Unavailable(m)) => {
                    assert!(m.contains("no IO-tier process answered"), "call {i}: {m}")
                }
                Err(e) => panic!("call {i}: {e:?}"),
            }
        }
        // One batch, one IO process: all of it answered or none.
        assert!(
            unavailable.is_empty() || unavailable.len() == BATCH,
            "{} of a batch of {BATCH} unavailable",
            unavailable.len()
        );
        if unavailable.is_empty() {
            served_by_the_other += 1;
        }
        failed = unavailable;
        round += 1;
    }
    io[0].kill9();
    // Each failed call again, with backoff, until done.
    for &i in &failed {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match query("f", i).await {
                Ok(rows) => {
                    assert_eq!(
                        rows.rows,
                        [[Value::Text(format!("customer {}", customer(i)))]],
                        "call {i} retried"
                    );
                    break;
                }
                Err(SqlError::Unavailable(m)) => {
                    assert!(Instant::now() < deadline, "call {i} still unavailable: {m}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("call {i} retried: {e:?}"),
            }
        }
    }
    eprintln!(
        "a batch of {BATCH} failed as unavailable with its frozen, then killed IO process after \
         {served_by_the_other} served by the other; all retried and done"
    );
    drop(client);
    io.pop().unwrap().stop();
    data.drop_table().await;
}

/// A call made while others are in flight is held for company, and leaves with the calls made
/// meanwhile once nothing else is in flight (or `HOLD_UNTIL` calls wait); a call made while
/// none is in flight leaves at once. The link lingers 60 s here (far past the config's 100 ms
/// cap, through the API) so that only those two rules can send a held call: the message counts
/// below are exact. No readiness watch runs, so no ping joins in.
#[tokio::test]
async fn a_call_waits_for_company_only_while_others_are_in_flight() {
    let _heavy = HEAVY.lock().await;
    let (nats, _server) = shared_nats();
    let data = Data::new(&nats).await;
    let dir = tempfile::tempdir().unwrap();
    let config = file_config(dir.path(), &data, true, None);
    let io = Proc::start("io-0", "io", &config, &Data::secrets());
    io.ready(Duration::from_secs(60)).await;
    let remote: RemoteConfig = serde_json::from_value(
        json!({ "url": data.nats, "subject": format!("{}.db", data.subject) }),
    )
    .unwrap();
    let connection = Nats::connect(
        &Endpoint::from_config(&remote).unwrap(),
        "fnmill iotier test",
    )
    .await
    .unwrap();
    assert!(connection.wait_connected(Duration::from_secs(30)).await);
    let linger = Duration::from_secs(60);
    let client = Remote::new(
        connection,
        "db",
        &remote.subject,
        Duration::from_secs(120),
        linger,
    );
    let statement = format!("select name from {} where id = $1", data.table);
    let db = db_for(&client, "f", 0);
    let lookup = |i: usize| {
        let db = db.clone();
        let statement = statement.clone();
        async move {
            let rows = db.query(statement, vec![Value::Int(customer(i))]).await;
            assert_eq!(
                rows.unwrap().rows,
                [[Value::Text(format!("customer {}", customer(i)))]],
                "call {i}"
            );
            Instant::now()
        }
    };
    let sent = |client: &Arc<Remote>| client.batching().batches;

    // Alone: leaves at once, in a message of its own.
    let before = sent(&client);
    let start = Instant::now();
    lookup(1).await;
    assert!(
        start.elapsed() < linger,
        "a lone call waited out the linger"
    );
    assert_eq!(sent(&client) - before, 1);

    // A slow call in flight: ten calls made one by one, each after the link has run, all leave
    // in one message when the slow call's answer comes, and are answered after it.
    let slow = |seconds: u32| {
        let db = db.clone();
        tokio::spawn(async move {
            db.query(format!("select pg_sleep({seconds})::text"), vec![])
                .await
                .unwrap();
            Instant::now()
        })
    };
    let before = sent(&client);
    let slow_call = slow(2);
    wait_for(Duration::from_secs(30), "the slow call to leave", || {
        sent(&client) > before
    })
    .await;
    let mut held = Vec::new();
    for i in 0..10 {
        held.push(tokio::spawn(lookup(10 + i)));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let slow_done = slow_call.await.unwrap();
    for call in held {
        assert!(
            call.await.unwrap() >= slow_done,
            "a held call left before the slow one's answer"
        );
    }
    assert_eq!(
        sent(&client) - before,
        2,
        "the slow call, then the ten held ones together"
    );

    // With a slow call in flight, the first HOLD_UNTIL calls held leave together at once; the
    // rest wait for the slow call.
    let extra = 8;
    let before = sent(&client);
    let slow_call = slow(3);
    wait_for(Duration::from_secs(30), "the slow call to leave", || {
        sent(&client) > before
    })
    .await;
    let mut held = Vec::new();
    for i in 0..HOLD_UNTIL + extra {
        held.push(tokio::spawn(lookup(100 + i)));
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    slow_call.await.unwrap();
    for call in held {
        call.await.unwrap();
    }
    assert_eq!(
        sent(&client) - before,
        3,
        "the slow call, {HOLD_UNTIL} held calls, then the {extra} made after them"
    );
    io.stop();
}

/// `fnmill check --role …` checks what that role starts: a compute process needs no database
/// URL of a data source its IO tier serves, an IO process needs it; an IO process needs a data
/// source with `remote`; a wildcard or shared subject and an unreadable credentials file are
/// named by key.
#[test]
fn check_validates_each_role() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("in.jsonl"), "").unwrap();
    let component = guest("lookup-count");
    let config = |remote: &str| {
        let text = format!(
            r#"
[sources.in]
kind = "file"
path = "in.jsonl"
[sinks.out]
kind = "file"
path = "out.jsonl"
[data_sources.db]
kind = "postgres"
url_env = "IOT_CHECK_UNSET_URL"
{remote}
[functions.f]
component = "{component}"
data_sources = ["db"]
[[routes]]
source = "in"
function = "f"
destinations = {{ out = "out" }}
"#,
            component = component.display()
        );
        let path = dir.path().join("fnmill.toml");
        std::fs::write(&path, text).unwrap();
        path
    };
    let check = |path: &Path, role: &str, env: &[(&str, &str)]| {
        let out = fnmill()
            .args(["check", "--role", role, "-c"])
            .arg(path)
            .env_remove("IOT_CHECK_UNSET_URL")
            .envs(env.iter().copied())
            .output()
            .unwrap();
        (
            out.status.code(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let remote = config("remote = { url = \"nats://127.0.0.1:4222\", subject = \"fnmill.ds.db\" }");
    let (code, text) = check(&remote, "compute", &[]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("1 data source(s) through their IO tier"),
        "{text}"
    );
    let (code, text) = check(&remote, "io", &[]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("data_sources.db.url_env"), "{text}");
    // An IO process compiles no component, so a missing one does not stop it.
    std::fs::write(
        dir.path().join("io.toml"),
        std::fs::read_to_string(&remote)
            .unwrap()
            .replace(&component.display().to_string(), "/nonexistent/f.wasm"),
    )
    .unwrap();
    let (code, text) = check(
        &dir.path().join("io.toml"),
        "io",
        &[("IOT_CHECK_UNSET_URL", "postgres://u@127.0.0.1/db")],
    );
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("ok (role io): 1 data source(s)"), "{text}");
    // All (the default) ignores `remote` and keeps the pool: it needs the URL.
    let (code, text) = check(&remote, "all", &[]);
    assert_eq!(code, Some(2), "{text}");

    let (code, text) = check(&config(""), "io", &[]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("data_sources: --role io serves"), "{text}");

    let bad = config(
        "remote = { url = \"nats://127.0.0.1:4222\", subject = \"fnmill.ds.*\", credentials_file = \"missing.creds\" }",
    );
    let (code, text) = check(&bad, "compute", &[]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("data_sources.db.remote.subject: "), "{text}");
    let bad = config(
        "remote = { url = \"nats://127.0.0.1:4222\", subject = \"fnmill.ds.db\", credentials_file = \"missing.creds\" }",
    );
    let (code, text) = check(&bad, "compute", &[]);
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.contains("data_sources.db.remote.credentials_file: cannot be read")
            && text.contains("missing.creds"),
        "{text}"
    );
    let typo = config("remote = { url = \"nats://127.0.0.1:4222\", subjct = \"x\" }");
    let (code, text) = check(&typo, "compute", &[]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("unknown field `subjct`"), "{text}");
}
