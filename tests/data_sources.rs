//! Data sources: functions reach PostgreSQL and Redis only through the `sql` and `keyvalue`
//! capabilities their config grants; pools on the IO side bound the connections whatever the
//! number of instances; lost connections and an unreachable Redis are retryable and recovered;
//! SQL errors reach the dead-letter destination with their SQLSTATE; every value type
//! round-trips. Needs PostgreSQL (`FNMILL_TEST_POSTGRES_URL`, default
//! `postgres://postgres@127.0.0.1:5432/test`) and Redis (`FNMILL_TEST_REDIS_URL`, default
//! `redis://127.0.0.1:6379`); `scripts/services.sh` starts both.

use fnmill_testkit::common;
use fnmill_testkit::proxy::TcpProxy;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{FileRoute, count_lines, fnmill, guest, headers, read_lines, wait_for, write_events};
use fnmill::host::{DataSources, Failure, Function, FunctionSpec, Grants, Host, Limits};
use fnmill_connector_api::Event;
use fnmill_connector_api::connection::SecretUrl;
use fnmill_connector_postgres::tokio_postgres::{self, NoTls};
use fnmill_connector_postgres::{PgPool, PgPoolConfig};
use fnmill_connector_redis::{RedisPool, RedisPoolConfig};
use serde_json::json;

fn pg_url() -> String {
    std::env::var("FNMILL_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

fn redis_url() -> String {
    std::env::var("FNMILL_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A name no other test (or test run) uses.
fn unique(prefix: &str) -> String {
    format!("{prefix}_{}_{:08x}", std::process::id(), fastrand::u32(..))
}

/// A direct connection for the test's own checks.
async fn pg() -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(&pg_url(), NoTls)
        .await
        .expect("connecting to the test PostgreSQL");
    tokio::spawn(conn);
    client
}

/// Connections PostgreSQL has open with `application_name`.
async fn connections(client: &tokio_postgres::Client, app: &str) -> i64 {
    client
        .query_one(
            "select count(*) from pg_stat_activity where application_name = $1",
            &[&app],
        )
        .await
        .unwrap()
        .get(0)
}

fn pg_pool(app: &str, size: usize) -> PgPool {
    pool_at(pg_url(), app, size, None)
}

fn pool_at(url: String, app: &str, size: usize, tls_ca_file: Option<PathBuf>) -> PgPool {
    PgPool::new(&pool_config(url, app, size, tls_ca_file)).unwrap()
}

fn pool_config(url: String, app: &str, size: usize, tls_ca_file: Option<PathBuf>) -> PgPoolConfig {
    PgPoolConfig {
        url: SecretUrl::new(url),
        pool_size: size,
        wait_timeout: Duration::from_secs(2),
        connect_timeout: Duration::from_secs(2),
        statement_timeout: None,
        answer_timeout: Duration::from_secs(30),
        application_name: app.into(),
        tls: fnmill_connector_postgres::Tls {
            ca_file: tls_ca_file,
            client: None,
        },
    }
}

fn redis_pool(url: &str) -> RedisPool {
    redis_pool_with(url, None)
}

fn redis_pool_with(url: &str, tls_ca_file: Option<PathBuf>) -> RedisPool {
    RedisPool::new(&RedisPoolConfig {
        url: SecretUrl::new(url.into()),
        pool_size: 2,
        wait_timeout: Duration::from_millis(500),
        connect_timeout: Duration::from_millis(500),
        command_timeout: Duration::from_millis(500),
        tls_ca_file,
        tls_client: None,
    })
    .unwrap()
}

fn host() -> Host {
    common::test_host(false)
}

fn load(
    host: &Host,
    data: &DataSources,
    guest_name: &str,
    config: &[(&str, &str)],
    sql: &[&str],
    buckets: &[&str],
) -> Function {
    let spec = FunctionSpec {
        name: format!("{guest_name}-test"),
        component: guest(guest_name),
        limits: Limits {
            memory_bytes: 32 * 1024 * 1024,
            timeout: Duration::from_secs(5),
            fuel: None,
            max_outputs: 10,
            max_output_bytes: 1024 * 1024,
            max_log_bytes: 64 * 1024,
            max_log_lines: 200,
        },
        config: config
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
        isolation: fnmill::host::Isolation::Event,
    };
    let grants = Grants {
        data_sources: sql.iter().map(|s| s.to_string()).collect(),
        buckets: buckets.iter().map(|s| s.to_string()).collect(),
    };
    host.load_with(spec, data, &grants).unwrap()
}

fn event(id: &str, payload: &str) -> Event {
    Event {
        id: id.into(),
        source: "test".into(),
        key: None,
        payload: Bytes::from(payload.to_string()),
        headers: vec![],
        timestamp_ms: None,
        origin: vec![],
        decode_error: None,
    }
}

/// Log lines of this test process, for tests that check what was logged.
fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = logs.clone();
        let _ = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || Capture(sink.clone()))
            .try_init();
        logs
    })
    .clone()
}

struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A grant of something that does not exist, a redis source granted as SQL, a missing secret:
/// each is one problem naming its key, and the secret never appears in the error or in `Debug`.
#[test]
fn config_names_bad_grants_and_never_shows_the_url() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f.wasm"), b"").unwrap();
    let text = r#"
        [data_sources.db]
        kind = "postgres"
        url = "postgres://u:hunter2-secret@db.example/orders"
        pool_size = 4
        [data_sources.cache]
        kind = "redis"
        url_env = "FNMILL_TEST_SURELY_UNSET_VARIABLE"
        buckets = { dedup = { prefix = "d:" } }
        [data_sources.cache2]
        kind = "redis"
        url = "redis://127.0.0.1:6379"
        buckets = { dedup = { prefix = "e:" } }
        [functions.f]
        component = "f.wasm"
        data_sources = ["db", "nope", "cache"]
        buckets = ["dedup", "missing"]
    "#;
    let err = fnmill::config::from_toml(text, dir.path()).unwrap_err();
    let text_err = err.to_string();
    let lines: Vec<&str> = text_err.lines().collect();
    let expect = [
        "functions.f.data_sources[1]: no postgres data source named `nope`",
        "functions.f.data_sources[2]: `cache` is a redis data source",
        "functions.f.buckets[1]: no bucket named `missing`",
        "data_sources.cache.url_env: the environment variable `FNMILL_TEST_SURELY_UNSET_VARIABLE`",
        "data_sources.cache2.buckets.dedup: bucket `dedup` is already defined by data_sources.cache",
    ];
    for e in expect {
        assert!(
            lines.iter().any(|l| l.starts_with(e)),
            "no {e:?} in:\n{text_err}"
        );
    }
    assert_eq!(lines.len(), expect.len(), "{text_err}");
    assert!(!text_err.contains("hunter2"));

    let ok = r#"
        [data_sources.db]
        kind = "postgres"
        url = "postgres://u:hunter2-secret@db.example/orders"
        [functions.f]
        component = "f.wasm"
        data_sources = ["db"]
    "#;
    let config = fnmill::config::from_toml(ok, dir.path()).unwrap();
    assert!(!format!("{config:?}").contains("hunter2"));

    let unknown = "[data_sources.db]\nkind = \"postgres\"\nurl = \"x\"\npassword = \"p\"\n";
    let err = fnmill::config::from_toml(unknown, dir.path()).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("data_sources.db: unknown field `password`"),
        "{err}"
    );
}

/// A function reaches only what it is granted: an ungranted data source gets `not-granted`
/// (and PostgreSQL never sees a connection from its pool), an ungranted bucket
/// `access-denied`, an unknown one `no-such-store`; each refusal is logged. Granted ones work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_are_enforced_for_sql_and_keyvalue() {
    let logs = captured_logs();
    let granted_app = unique("fnmill_granted");
    let other_app = unique("fnmill_other");
    let secret_prefix = format!("{}:", unique("secret"));
    let mut data = DataSources::new(tokio::runtime::Handle::current());
    data.add_sql("db", Arc::new(pg_pool(&granted_app, 2)));
    data.add_sql("other", Arc::new(pg_pool(&other_app, 2)));
    let redis = redis_pool(&redis_url());
    data.add_bucket(
        "cache",
        Arc::new(redis.bucket(format!("{}:", unique("cache")))),
    );
    data.add_bucket("secret", Arc::new(redis.bucket(secret_prefix.clone())));
    let host = host();

    let query = [("statement", "select 41 + $1::int8 as n")];
    let allowed = load(&host, &data, "sql-query", &query, &["db"], &[]);
    let out = allowed.invoke(&event("e1", "[1]"), 1).await.unwrap();
    assert_eq!(
        out[0].payload,
        Bytes::from(r#"{"columns":["n"],"rows":[[42]]}"#)
    );

    let other = [("statement", "select 1 as n"), ("source", "other")];
    let refused = load(&host, &data, "sql-query", &other, &["db"], &["cache"]);
    let failure = refused.invoke(&event("e2", "[]"), 1).await.unwrap_err();
    assert!(
        matches!(&failure, Failure::Fatal(m) if m.starts_with("not-granted:") && m.contains("`other`")),
        "{failure:?}"
    );
    assert_eq!(
        connections(&pg().await, &other_app).await,
        0,
        "no connection is touched"
    );

    let kv = load(
        &host,
        &data,
        "kv-probe",
        &[("bucket", "cache")],
        &[],
        &["cache"],
    );
    let out = kv.invoke(&event("k1", "v1"), 1).await.unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out[0].payload).unwrap();
    assert_eq!(
        report,
        json!({"got_back": true, "exists": true, "counter": 4, "listed": true, "exists_after_delete": false})
    );
    let denied = load(
        &host,
        &data,
        "kv-probe",
        &[("bucket", "secret")],
        &[],
        &["cache"],
    );
    let failure = denied.invoke(&event("k2", "v"), 1).await.unwrap_err();
    assert_eq!(failure, Failure::Fatal("access-denied".into()));
    let unknown = load(
        &host,
        &data,
        "kv-probe",
        &[("bucket", "nope")],
        &[],
        &["cache"],
    );
    let failure = unknown.invoke(&event("k3", "v"), 1).await.unwrap_err();
    assert_eq!(failure, Failure::Fatal("no-such-store".into()));
    let (keys, _) = redis.bucket(secret_prefix).list_keys(None).await.unwrap();
    assert!(keys.is_empty(), "{keys:?}");

    let logs = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    for name in ["`other`", "`secret`", "`nope`"] {
        assert!(
            logs.lines()
                .any(|l| l.contains("not granted") && l.contains(name)),
            "no refusal of {name} logged in:\n{logs}"
        );
    }
}

/// Every value type goes in as a parameter and comes back from a column unchanged, nulls
/// included; values that do not fit their parameter type are refused as `invalid`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_value_type_round_trips() {
    let table = unique("fnmill_types");
    let client = pg().await;
    client
        .batch_execute(&format!(
            "create table {table} (id text primary key, b bool, i8 int8, i4 int4, i2 int2, \
             f8 float8, f4 float4, t text, v varchar(20), by bytea, j json, jb jsonb, \
             ts timestamp, tz timestamptz)"
        ))
        .await
        .unwrap();
    let mut data = DataSources::new(tokio::runtime::Handle::current());
    data.add_sql("db", Arc::new(pg_pool(&unique("fnmill_types"), 2)));
    let host = host();
    let f = load(
        &host,
        &data,
        "sql-types",
        &[("table", &table)],
        &["db"],
        &[],
    );
    let result = f.invoke(&event("row1", ""), 1).await;
    client
        .batch_execute(&format!("drop table {table}"))
        .await
        .unwrap();
    let out = result.unwrap();
    assert_eq!(out[0].payload, Bytes::from(r#"{"checked":28}"#));
}

/// A route config of the `sql-query` guest over a pool of `pool_size` connections.
fn sql_route(dir: &Path, statement: &str, app: &str, pool_size: usize, route: &str) -> FileRoute {
    let mut r = FileRoute::new(dir, guest("sql-query"));
    r.runtime_extra = "max_instances = 600".into();
    r.function_extra = format!(
        "data_sources = [\"db\"]\nconfig = {{ statement = {} }}\n",
        toml_string(statement)
    );
    r.route_extra = format!(
        "{route}\n\n[data_sources.db]\nkind = \"postgres\"\nurl_env = \"FNMILL_TEST_PG_URL\"\n\
         pool_size = {pool_size}\napplication_name = \"{app}\"\nwait_timeout = \"10s\"\n"
    );
    r
}

fn toml_string(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

fn spawn_fnmill(config: &Path) -> std::process::Child {
    fnmill()
        .args(["run", "-c"])
        .arg(config)
        .env("FNMILL_TEST_PG_URL", pg_url())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting fnmill")
}

/// Waits for a child started by [`spawn_fnmill`] while `each` runs every 20 ms; returns stderr.
async fn wait_child(
    mut child: std::process::Child,
    timeout: Duration,
    mut each: impl AsyncFnMut(),
) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        each().await;
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            assert!(status.success(), "fnmill failed: {status}\n{stderr}");
            return stderr;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "fnmill did not finish within {timeout:?}:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn numbered_events(path: &Path, n: usize) {
    write_events(
        path,
        (0..n).map(|i| (format!("e{i}"), None, json!([i as i64]))),
    );
}

fn output_ids(path: &Path) -> BTreeSet<i64> {
    read_lines(path)
        .iter()
        .map(|l| l["payload"]["rows"][0][0].as_i64().expect("a row with n"))
        .collect()
}

/// The `retries=N` of the route summary log line.
fn retries(stderr: &str) -> u64 {
    stderr
        .lines()
        .filter(|l| l.contains("Route finished"))
        .find_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("retries="))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or_else(|| panic!("no route summary in:\n{stderr}"))
}

/// 2,000 events, 500 in flight, one SELECT each over a pool of 4: all succeed, and PostgreSQL
/// never sees more than 4 connections from fnmill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_of_four_serves_500_instances_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let app = unique("fnmill_pool");
    let route = sql_route(
        dir.path(),
        "select $1::int8 as n from pg_sleep(0.001)",
        &app,
        4,
        "max_in_flight = 500",
    );
    numbered_events(&route.input(), 2000);
    let config = route.write();
    let client = pg().await;
    let mut peak = 0;
    let child = spawn_fnmill(&config);
    wait_child(child, Duration::from_secs(90), async || {
        peak = peak.max(connections(&client, &app).await);
    })
    .await;
    assert_eq!(output_ids(&route.output()).len(), 2000);
    assert_eq!(count_lines(&route.dead()), 0);
    assert!(peak >= 1, "the test saw no connection at all");
    assert!(
        peak <= 4,
        "PostgreSQL saw {peak} connections from a pool of 4"
    );
}

/// fnmill's connections are terminated twice mid-run: the statements in flight fail as
/// retryable, are retried, and every event still gets through exactly once into the output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_connections_are_retried_and_nothing_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let app = unique("fnmill_kill");
    let route = sql_route(
        dir.path(),
        "select $1::int8 as n from pg_sleep(0.002)",
        &app,
        4,
        "max_in_flight = 200\nretry = { max_attempts = 30, initial_backoff = \"20ms\", max_backoff = \"200ms\" }",
    );
    numbered_events(&route.input(), 2000);
    let config = route.write();
    let client = pg().await;
    let output = route.output();
    let mut kills: Vec<i64> = vec![];
    let child = spawn_fnmill(&config);
    let stderr = wait_child(child, Duration::from_secs(120), async || {
        let done = count_lines(&output);
        let due = match kills.len() {
            0 => done >= 300,
            1 => done >= 1000,
            _ => false,
        };
        if due {
            let killed: i64 = client
                .query_one(
                    "select count(pg_terminate_backend(pid)) from pg_stat_activity \
                     where application_name = $1",
                    &[&app],
                )
                .await
                .unwrap()
                .get(0);
            if killed > 0 {
                kills.push(killed);
            }
        }
    })
    .await;
    assert_eq!(kills.len(), 2, "the terminations did not land: {kills:?}");
    assert_eq!(output_ids(&output), (0..2000).collect::<BTreeSet<i64>>());
    assert_eq!(count_lines(&output), 2000);
    assert_eq!(count_lines(&route.dead()), 0);
    assert!(retries(&stderr) > 0, "no retries:\n{stderr}");
}

/// Bad SQL is the function's `fatal`: no retries, dead-lettered with the SQLSTATE in the
/// headers; the URL (a secret) is in no log line and no header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_sql_is_dead_lettered_with_its_sqlstate() {
    let dir = tempfile::tempdir().unwrap();
    let route = sql_route(
        dir.path(),
        "select * from fnmill_no_such_table_anywhere",
        &unique("fnmill_bad"),
        2,
        "retry = { max_attempts = 3, initial_backoff = \"10ms\" }",
    );
    numbered_events(&route.input(), 3);
    let config = route.write();
    let stderr = wait_child(spawn_fnmill(&config), Duration::from_secs(60), async || {}).await;
    let dead = read_lines(&route.dead());
    assert_eq!(dead.len(), 3);
    for line in &dead {
        let h = headers(line);
        assert_eq!(h["fnmill.error.kind"], "fatal");
        assert_eq!(h["fnmill.error.attempts"], "1");
        assert!(
            h["fnmill.error.message"].starts_with("sqlstate=42P01: relation"),
            "{h:?}"
        );
    }
    assert_eq!(retries(&stderr), 0);
    let url = pg_url();
    assert!(!stderr.contains(&url));
    assert!(
        !std::fs::read_to_string(route.dead())
            .unwrap()
            .contains(&url)
    );
}

/// The user part (with its `@`) and the `host:port` of a `redis://` or `postgres://` URL.
fn host_port(url: &str) -> (String, String) {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let (auth, hostport) = match rest.rsplit_once('@') {
        Some((a, h)) => (format!("{a}@"), h),
        None => (String::new(), rest),
    };
    let hostport = hostport.split('/').next().unwrap().to_string();
    (auth, hostport)
}

/// Redis unreachable (its connections cut, nothing listening) → the function's key-value
/// calls are `unavailable` → `retryable`; once Redis is back, calls succeed again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_unreachable_is_retryable_and_recovers() {
    let (mut proxy, f) = kv_probe_through_a_proxy().await;
    f.invoke(&event("before", "x"), 1).await.unwrap();

    proxy.cut().await;
    let failure = f.invoke(&event("during", "x"), 1).await.unwrap_err();
    assert!(
        matches!(&failure, Failure::Retryable(m) if m.starts_with("unavailable")),
        "{failure:?}"
    );
    // Still down: a fresh connection is refused, also retryable.
    let failure = f.invoke(&event("during2", "x"), 1).await.unwrap_err();
    assert_eq!(failure.kind(), "retryable", "{failure:?}");

    proxy.restore().await;
    recovers_within(&f, Duration::from_secs(15)).await;
}

/// The `kv-probe` function with a bucket of a Redis pool (2 connections, 500 ms timeouts) that
/// connects through a proxy.
async fn kv_probe_through_a_proxy() -> (TcpProxy, Function) {
    let (auth, upstream) = host_port(&redis_url());
    let proxy = TcpProxy::start(upstream).await;
    let mut data = DataSources::new(tokio::runtime::Handle::current());
    let pool = redis_pool(&format!("redis://{auth}{}", proxy.addr));
    data.add_bucket(
        "cache",
        Arc::new(pool.bucket(format!("{}:", unique("proxied")))),
    );
    let f = load(&host(), &data, "kv-probe", &[], &[], &["cache"]);
    (proxy, f)
}

/// Invokes `f` until it succeeds; each failure until then must be retryable.
async fn recovers_within(f: &Function, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        match f.invoke(&event("after", "x"), 1).await {
            Ok(_) => return,
            Err(e) => {
                assert!(Instant::now() < deadline, "not recovered: {e:?}");
                assert_eq!(e.kind(), "retryable", "{e:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Redis connections whose network path goes silent (the proxy stops forwarding, sockets still
/// open): calls fail `unavailable` within `command_timeout`, and the pool replaces the silent
/// connections, so calls succeed again through new ones without anything being restored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_connection_that_stops_answering_is_replaced() {
    let (proxy, f) = kv_probe_through_a_proxy().await;
    f.invoke(&event("before", "x"), 1).await.unwrap();

    proxy.freeze();
    let failure = f.invoke(&event("during", "x"), 1).await.unwrap_err();
    assert!(
        matches!(&failure, Failure::Retryable(m) if m.contains("did not answer")),
        "{failure:?}"
    );
    recovers_within(&f, Duration::from_secs(15)).await;
}

/// A PostgreSQL connection whose network path goes silent (the proxy stops forwarding and
/// keeps its sockets open): the statement on it fails `unavailable` after `answer_timeout`, and
/// that connection is closed (its socket too) rather than put back in the pool, so the next
/// statement opens a new one and succeeds, though the pool has room for a single connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_connection_that_stops_answering_is_closed_not_reused() {
    let url = pg_url();
    let (_, upstream) = host_port(&url);
    let proxy = TcpProxy::start(upstream.clone()).await;
    let proxied = url.replacen(&upstream, &proxy.addr.to_string(), 1);
    let mut config = pool_config(proxied, "fnmill_silent", 1, None);
    config.answer_timeout = Duration::from_secs(1);
    let pool = PgPool::new(&config).unwrap();
    // Bounded here too: without the fix the second statement waits on the silent socket.
    let select = async || {
        tokio::time::timeout(
            Duration::from_secs(20),
            pool.query("select 1::int8 as one", &[]),
        )
        .await
        .expect("an answer or an error within 20 s")
    };
    select().await.unwrap();

    proxy.freeze();
    let started = Instant::now();
    let err = select().await.unwrap_err();
    assert!(
        matches!(&err, fnmill_connector_postgres::SqlError::Unavailable(m) if m.contains("did not answer within 1s")),
        "{err:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let rows = select().await.expect("a new connection through the proxy");
    assert_eq!(rows.rows.len(), 1);
    assert_eq!(
        pool.status().open,
        1,
        "the silent connection is not counted"
    );
    // Its socket is closed too, not left open until TCP gives up on it: the proxy sees the
    // close and ends the frozen connection, which leaves the new one.
    wait_for(
        Duration::from_secs(10),
        "the silent connection's socket to close",
        || proxy.open_connections() == 1,
    )
    .await;
}

/// `fnmill invoke <function> --config` serves the function's granted data sources as
/// `fnmill run` does, and still refuses what is not granted.
#[test]
fn invoke_of_a_config_function_uses_its_grants() {
    let dir = tempfile::tempdir().unwrap();
    let route = sql_route(
        dir.path(),
        "select $1::int8 + 1 as next",
        "fnmill_invoke",
        1,
        "",
    );
    let config = route.write();
    let event = dir.path().join("event.json");
    std::fs::write(&event, r#"{"id":"e1","payload":[41]}"#).unwrap();
    let invoke = |config: &Path| {
        fnmill()
            .env("FNMILL_TEST_PG_URL", pg_url())
            .args(["invoke", "f", "--config"])
            .arg(config)
            .arg("--event")
            .arg(&event)
            .output()
            .unwrap()
    };
    let out = invoke(&config);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(line["destination"], "out");
    assert_eq!(
        line["payload"],
        json!({"columns": ["next"], "rows": [[42]]})
    );

    // The same function without the grant: the guest gets `not-granted` (fatal, exit code 11).
    let text = std::fs::read_to_string(&config).unwrap();
    let ungranted = dir.path().join("ungranted.toml");
    std::fs::write(&ungranted, text.replace("data_sources = [\"db\"]\n", "")).unwrap();
    let out = invoke(&ungranted);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(11), "{stderr}");
    assert!(stderr.contains("not-granted"), "{stderr}");
}

/// `sslmode=require` connects over TLS, verifying the server's certificate against
/// `tls_ca_file` and the host name; a server the client cannot verify is refused (as `unavailable`, so events
/// retry rather than fail). Debian's PostgreSQL serves its `localhost` snakeoil certificate;
/// `FNMILL_TEST_POSTGRES_TLS_URL` and `FNMILL_TEST_POSTGRES_CA` point the test elsewhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_when_the_url_requires_it() {
    let url = std::env::var("FNMILL_TEST_POSTGRES_TLS_URL").unwrap_or_else(|_| {
        "postgres://postgres@localhost:5432/test?sslmode=require&hostaddr=127.0.0.1".into()
    });
    let ca = std::env::var("FNMILL_TEST_POSTGRES_CA")
        .unwrap_or_else(|_| "/etc/ssl/certs/ssl-cert-snakeoil.pem".into());
    let pool = pool_at(
        url.clone(),
        &unique("fnmill_tls"),
        1,
        Some(ca.clone().into()),
    );
    let rows = pool
        .query(
            "select ssl from pg_stat_ssl where pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        rows.rows,
        vec![vec![fnmill_connector_postgres::Value::Bool(true)]]
    );

    // The certificate names `localhost`, not the address: a client that verifies refuses it.
    // (Only for a URL of that shape, the default; another server has its own names.)
    let Some(by_address) = url
        .contains("@localhost:")
        .then(|| url.replace("@localhost:", "@127.0.0.1:"))
    else {
        eprintln!("FNMILL_TEST_POSTGRES_TLS_URL does not use host localhost: name check skipped");
        return;
    };
    let untrusted = pool_at(by_address, &unique("fnmill_tls"), 1, Some(ca.into()));
    let err = untrusted.query("select 1", &[]).await.unwrap_err();
    assert!(
        matches!(&err, fnmill_connector_postgres::SqlError::Unavailable(m) if m.contains("certificate")),
        "{err}"
    );
}

/// A `redis-server` serving TLS only, on a free port, stopped when dropped.
struct TlsRedis {
    child: std::process::Child,
    port: u16,
}

impl TlsRedis {
    /// Uses Debian's `localhost` snakeoil certificate, as the PostgreSQL TLS test does.
    fn start(cert: &str, key: &str) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = std::process::Command::new("redis-server")
            .args(["--port", "0", "--tls-port", &port.to_string()])
            .args(["--tls-cert-file", cert, "--tls-key-file", key])
            .args([
                "--tls-auth-clients",
                "no",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("starting redis-server (Debian's package serves TLS)");
        Self { child, port }
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `rediss://` URL connects over TLS, verifying the server's certificate against
/// `tls_ca_file` and the host name; a server that cannot be verified is `unavailable`.
/// `FNMILL_TEST_REDIS_TLS_URL` (a `rediss://localhost:<port>` URL) and `FNMILL_TEST_REDIS_CA`
/// use another server instead of starting one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_verifies_the_server() {
    let ca = std::env::var("FNMILL_TEST_REDIS_CA")
        .unwrap_or_else(|_| "/etc/ssl/certs/ssl-cert-snakeoil.pem".into());
    let mut _server = None;
    let url = std::env::var("FNMILL_TEST_REDIS_TLS_URL").unwrap_or_else(|_| {
        let server = TlsRedis::start(&ca, "/etc/ssl/private/ssl-cert-snakeoil.key");
        let url = format!("rediss://localhost:{}", server.port);
        _server = Some(server);
        url
    });
    let bucket = redis_pool_with(&url, Some(ca.clone().into())).bucket(unique("tls:"));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match bucket.set("k", b"over tls").await {
            Ok(()) => break,
            // The server is still starting.
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("no TLS connection to {url}: {e}"),
        }
    }
    assert_eq!(bucket.get("k").await.unwrap(), Some(b"over tls".to_vec()));

    // The certificate names `localhost`, not the address.
    let by_address = url.replace("://localhost:", "://127.0.0.1:");
    if by_address == url {
        eprintln!("FNMILL_TEST_REDIS_TLS_URL does not use host localhost: name check skipped");
        return;
    }
    let untrusted = redis_pool_with(&by_address, Some(ca.into())).bucket("tls:");
    let err = untrusted.get("k").await.unwrap_err();
    eprintln!("refused as expected: {err}");
    assert!(
        matches!(&err, fnmill_connector_redis::KvError::Unavailable(m) if m.contains("certificate")),
        "{err}"
    );
}
