//! Events/s of a function doing one indexed SELECT per event (the `sql-query` test guest, a
//! fresh instance per event, the query served by the pool on the IO runtime) against a native
//! Rust loop doing the same SELECTs through the same pool, with the same concurrency, in one
//! run. Prints both and the ratio (the goal is ≥ 0.7). A third row runs the same function with
//! `isolation = "reuse"` (opt-in: an instance serves up to 1,000 events in turn), to show what
//! the fresh instance costs an IO-bound function; the goal is the default's row.
//!
//! Needs PostgreSQL (`FNMILL_TEST_POSTGRES_URL`, default `postgres://postgres@127.0.0.1:5432/test`).
//! The sides alternate for `--rounds` rounds (default 3) and the median ratio is the result.
//! Then where the difference goes: the CPU per event of each thread and of the PostgreSQL
//! backends, the cost of the same component with no query (one instance at a time), and of one
//! compute → IO → compute hand-off with nothing else running.
//!
//! With `--io-tier`, last, the IO tier: the same function with its SELECT served by an IO-tier
//! process (`fnmill run --role io`, a pool of the same size) over NATS, against the in-process
//! pool, in alternating rounds; prints the ratio (the goal is ≥ 0.6) and the CPU per event of this
//! process, the IO-tier process, nats-server and both pools' PostgreSQL backends. The bench runs
//! a nats-server of its own (`scripts/nats.sh build`, or `FNMILL_TEST_NATS_SERVER`), so that its
//! CPU is counted and no other test shares it.
//!
//! `cargo bench --bench data_sources` (add `-- --events N --concurrency C --pool P --rounds R`,
//! `-- --profile wasm|reuse|native` to run only that side, e.g. under `perf record`, or
//! `-- --io-tier` to race the IO tier too, `-- --io-tier-only` to race only the IO tier,
//! `-- --linger-us N` for the IO tier's `remote.linger`, default 1000, `-- --max-instances N`
//! for the host's instance slots, default 1000 as `runtime.max_instances`).

use fnmill_testkit::bench_args::{Args, Opt};
use fnmill_testkit::common;
use fnmill_testkit::cpu;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fnmill::config::{FunctionConfig, IsolationConfig};
use fnmill::host::{
    DataSources, Failure, Function, FunctionSpec, Grants, Host, HostConfig, Isolation, Limits,
};
use fnmill_connector_api::Event;
use fnmill_connector_postgres::{PgPool, PgPoolConfig, Value};
use futures::StreamExt;

const TABLE: &str = "fnmill_bench_customers";
const ROWS: i64 = 10_000;
const QUERY: &str = "select name from fnmill_bench_customers where id = $1";

fn main() {
    let args = Args::parse(
        "data_sources",
        "cargo bench --bench data_sources [-- --events N] [--concurrency C] [--pool P] \
         [--rounds R] [--max-instances N] [--profile wasm|reuse|native] [--io-tier | \
         --io-tier-only] [--linger-us N]",
        &[
            Opt::Value("--events"),
            Opt::Value("--concurrency"),
            Opt::Value("--pool"),
            Opt::Value("--rounds"),
            Opt::Value("--max-instances"),
            Opt::Value("--profile"),
            Opt::Switch("--io-tier"),
            Opt::Switch("--io-tier-only"),
            Opt::Value("--linger-us"),
        ],
    );
    let events = args.number("--events", 20_000);
    let concurrency = args.number("--concurrency", 64);
    let pool_size = args.number("--pool", 8);
    let rounds = args.number("--rounds", 3).max(1);
    // fnmill's default `runtime.max_instances`. With as many slots as events in flight, no
    // store could keep its spent instances' slots for more (see `Admissions::slots_to_spare`).
    let max_instances = args.number("--max-instances", 1000).max(concurrency);
    let url = std::env::var("FNMILL_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());

    // The two sides of fnmill: IO (pools) and compute (wasm), one thread each on this 2-core
    // box, for both the function and the native loop.
    let io = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("fnmill-io")
        .enable_all()
        .build()
        .unwrap();
    let compute = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("fnmill-compute")
        // As `fnmill run` builds it: timers, no IO driver.
        .enable_time()
        .build()
        .unwrap();

    let pool = PgPool::new(&PgPoolConfig {
        url: fnmill_connector_api::connection::SecretUrl::new(url.clone()),
        pool_size,
        wait_timeout: Duration::from_secs(10),
        connect_timeout: Duration::from_secs(5),
        statement_timeout: None,
        answer_timeout: Duration::from_secs(30),
        application_name: "fnmill-bench".into(),
        tls: Default::default(),
    })
    .unwrap();
    io.block_on(async {
        pool.execute(
            &format!(
                "create table if not exists {TABLE} (id int8 primary key, name text not null)"
            ),
            &[],
        )
        .await
        .unwrap();
        pool.execute(
            &format!(
                "insert into {TABLE} select i, 'customer ' || i from generate_series(1, {ROWS}) i \
                 on conflict do nothing"
            ),
            &[],
        )
        .await
        .unwrap();
    });

    let host = Host::new(&HostConfig {
        max_instances: max_instances as u32,
        max_memory_bytes: 32 * 1024 * 1024,
        memory_budget: concurrency as u64 * 32 * 1024 * 1024,
        fuel: false,
        cache_dir: None,
        // Under `--profile`, perf names the guest's functions.
        perf_map: args.value("--profile").is_some(),
    })
    .unwrap();
    let limits = Limits {
        memory_bytes: 32 * 1024 * 1024,
        timeout: Duration::from_secs(10),
        fuel: None,
        max_outputs: 10,
        max_output_bytes: 1024 * 1024,
        max_log_bytes: 64 * 1024,
        max_log_lines: 200,
    };
    let mut data = DataSources::new(io.handle().clone());
    data.add_sql("db", Arc::new(pool.clone()));
    let load = |isolation| {
        Arc::new(
            host.load_with(
                FunctionSpec {
                    name: "sql-query".into(),
                    component: common::guest("sql-query"),
                    limits: limits.clone(),
                    config: [("statement".to_string(), QUERY.to_string())].into(),
                    isolation,
                },
                &data,
                &Grants {
                    data_sources: ["db".to_string()].into(),
                    buckets: Default::default(),
                },
            )
            .unwrap(),
        )
    };
    // The default: a fresh instance per event.
    let function = load(Isolation::Event);
    // The opt-in reuse mode as `isolation = "reuse"` sets it, with the other keys' defaults.
    let reusing = load({
        let mut config = FunctionConfig::new(common::guest("sql-query"));
        config.memory = limits.memory_bytes;
        config.isolation = IsolationConfig::Reuse;
        config.isolation()
    });
    let id = |i: usize| (i as i64 % ROWS) + 1;

    // Warm up both paths: connections open, statements prepared, instances paged in.
    let native = |n: usize| {
        let pool = pool.clone();
        io.block_on(async move {
            futures::stream::iter(0..n)
                .map(|i| {
                    let pool = pool.clone();
                    tokio::spawn(async move {
                        let rows = pool.query(QUERY, &[Value::Int(id(i))]).await.unwrap();
                        assert_eq!(rows.rows.len(), 1);
                    })
                })
                .buffer_unordered(concurrency)
                .for_each(|r| async { r.unwrap() })
                .await
        })
    };
    let run = |function: &Arc<Function>, n: usize| {
        let function = function.clone();
        compute.block_on(async move {
            futures::stream::iter(0..n)
                .map(|i| {
                    let function = function.clone();
                    tokio::spawn(async move {
                        let event = Event {
                            id: format!("e{i}"),
                            source: "bench".into(),
                            key: None,
                            payload: Bytes::from(format!("[{}]", id(i))),
                            headers: vec![],
                            timestamp_ms: None,
                            origin: vec![],
                            decode_error: None,
                        };
                        let out = function.invoke(&event, 1).await.unwrap();
                        assert_eq!(out.len(), 1);
                    })
                })
                .buffer_unordered(concurrency)
                .for_each(|r| async { r.unwrap() })
                .await
        })
    };
    let wasm = |n: usize| run(&function, n);
    let reuse = |n: usize| run(&reusing, n);
    native(2_000);
    wasm(2_000);
    reuse(2_000);
    // The PostgreSQL backends serving the pool, to count their CPU too.
    let backends = io.block_on(backends_of(&pool, "fnmill-bench", "postgres backends"));
    // `--profile wasm|reuse|native`: only that side, to run under a profiler.
    if let Some(only) = args.value("--profile") {
        let start = Instant::now();
        match only {
            "native" => native(events),
            "reuse" => reuse(events),
            _ => wasm(events),
        }
        println!(
            "{only}: {:.0} events/s",
            events as f64 / start.elapsed().as_secs_f64()
        );
        return;
    }

    // `--io-tier-only`: skip the race against the native loop.
    let io_tier_only = args.switch("--io-tier-only");
    if !io_tier_only {
        // Interleaved rounds: the machine's load drifts (PostgreSQL, both runtimes and whatever
        // else runs share two cores), so each ratio compares neighbours and the median is printed.
        let mut ratios = Vec::with_capacity(rounds);
        let mut reuse_ratios = Vec::with_capacity(rounds);
        let (mut native_cpu, mut wasm_cpu, mut reuse_cpu) = (Vec::new(), Vec::new(), Vec::new());
        println!(
            "one indexed SELECT per event, {events} events, {concurrency} in flight, pool of {pool_size}, {max_instances} instance slots:"
        );
        for round in 1..=rounds {
            let cpu0 = cpu::CpuTimes::now(&backends);
            let start = Instant::now();
            native(events);
            let native_rate = events as f64 / start.elapsed().as_secs_f64();
            let cpu1 = cpu::CpuTimes::now(&backends);
            let start = Instant::now();
            wasm(events);
            let wasm_rate = events as f64 / start.elapsed().as_secs_f64();
            let cpu2 = cpu::CpuTimes::now(&backends);
            let start = Instant::now();
            reuse(events);
            let reuse_rate = events as f64 / start.elapsed().as_secs_f64();
            let cpu3 = cpu::CpuTimes::now(&backends);
            native_cpu.push(cpu1.per_event_since(&cpu0, events));
            wasm_cpu.push(cpu2.per_event_since(&cpu1, events));
            reuse_cpu.push(cpu3.per_event_since(&cpu2, events));
            ratios.push(wasm_rate / native_rate);
            reuse_ratios.push(reuse_rate / native_rate);
            println!(
                "  round {round}: native loop {native_rate:>7.0} events/s, function (fresh instance) \
             {wasm_rate:>7.0} events/s, ratio {:.2}; isolation = \"reuse\" {reuse_rate:>7.0} \
             events/s, ratio {:.2}",
                wasm_rate / native_rate,
                reuse_rate / native_rate
            );
        }
        ratios.sort_by(f64::total_cmp);
        reuse_ratios.sort_by(f64::total_cmp);
        println!(
            "  ratio function / native, median of {rounds}: {:.2} (goal >= 0.7)",
            ratios[rounds / 2]
        );
        println!(
            "  the same with isolation = \"reuse\" (opt-in), median of {rounds}: {:.2}",
            reuse_ratios[rounds / 2]
        );
        let native_rows = cpu::mean(&native_cpu);
        let wasm_rows = cpu::mean(&wasm_cpu);
        cpu::print_per_event("native loop (mean of the rounds)", &native_rows);
        cpu::print_per_event("function (mean of the rounds)", &wasm_rows);
        cpu::print_per_event(
            "function, isolation = \"reuse\" (mean of the rounds)",
            &cpu::mean(&reuse_cpu),
        );

        // The floor of the function side: the same component instantiated, called and dropped one
        // at a time with no query (no `statement`: it fails before calling the host), on a compute
        // thread of its own with nothing else in flight.
        let floor = {
            let bare = Arc::new(
                host.load_with(
                    FunctionSpec {
                        name: "sql-query-bare".into(),
                        component: common::guest("sql-query"),
                        limits: limits.clone(),
                        config: Default::default(),
                        isolation: Isolation::Event,
                    },
                    &data,
                    &Grants::default(),
                )
                .unwrap(),
            );
            compute.block_on(async move {
                tokio::spawn(async move {
                let event = Event {
                    id: "floor".into(),
                    source: "bench".into(),
                    key: None,
                    payload: Bytes::from_static(b"[1]"),
                    headers: vec![],
                    timestamp_ms: None,
                    origin: vec![],
                    decode_error: None,
                };
                // The guest's own answer, so the instance really ran.
                let no_statement =
                    |result| matches!(result, Err(Failure::Fatal(m)) if m.contains("statement"));
                for _ in 0..1_000 {
                    assert!(no_statement(bare.invoke(&event, 1).await));
                }
                let n = 10_000;
                let start = Instant::now();
                for _ in 0..n {
                    assert!(no_statement(bare.invoke(&event, 1).await));
                }
                start.elapsed().as_secs_f64() * 1e6 / n as f64
            })
            .await
            .unwrap()
            })
        };
        // What the function side adds per query besides the instance: the hand-off from the
        // compute runtime to the IO runtime and back (`on_io`), here with no work at all, one at a
        // time, so each side parks and is woken every time: its CPU on both threads per round trip.
        let hop = {
            let io = io.handle().clone();
            let round_trips = 10_000;
            let before = cpu::CpuTimes::now(&[]);
            compute.block_on(async move {
                tokio::spawn(async move {
                    for _ in 0..round_trips {
                        io.spawn(async {}).await.unwrap();
                    }
                })
                .await
                .unwrap()
            });
            cpu::CpuTimes::now(&[])
                .per_event_since(&before, round_trips)
                .iter()
                .filter(|r| r.name == "fnmill-compute" || r.name == "fnmill-io")
                .map(|r| r.us)
                .sum::<f64>()
        };
        let native_total: f64 = native_rows.iter().map(|r| r.us).sum();
        let wasm_total: f64 = wasm_rows.iter().map(|r| r.us).sum();
        let extra = wasm_total - native_total;
        println!("  what the function side adds per event:");
        println!("    CPU, function minus native (mean)           : {extra:>6.1} µs");
        println!("    of which a fresh sql-query instance, alone  : {floor:>6.1} µs");
        println!(
            "    the rest: hand-offs and contention          : {:>6.1} µs",
            extra - floor
        );
        println!(
            "    one compute -> IO -> compute hand-off, both sides parked: {hop:.1} µs of CPU"
        );
        println!(
            "    ratio if the instance were the only cost    : {:>6.2}",
            native_total / (native_total + floor)
        );
    }

    if !io_tier_only && !args.switch("--io-tier") {
        return;
    }
    io_tier::compare(io_tier::Setup {
        io: &io,
        compute: &compute,
        host: &host,
        limits: &limits,
        url: &url,
        events,
        concurrency,
        pool_size,
        rounds,
        linger_us: args.number("--linger-us", 1_000),
        in_process: &wasm,
        backends: &backends,
        pool: &pool,
    });
}

/// The PostgreSQL backends of connections named `application`, labelled `label`, asked through
/// `pool`.
async fn backends_of(pool: &PgPool, application: &str, label: &str) -> Vec<(String, u32)> {
    pool.query(
        "select pid from pg_stat_activity where application_name = $1",
        &[Value::Text(application.into())],
    )
    .await
    .unwrap()
    .rows
    .iter()
    .filter_map(|r| match r.first() {
        Some(Value::Int(pid)) => Some((label.to_string(), *pid as u32)),
        _ => None,
    })
    .collect()
}

/// The `sql` call through the IO tier against the in-process pool.
mod io_tier {
    use std::net::TcpStream;
    use std::path::PathBuf;
    use std::process::{Child, Command, Stdio};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use bytes::Bytes;
    use fnmill::host::{DataSources, FunctionSpec, Grants, Host, Limits};
    use fnmill_connector_api::Event;
    use fnmill_connector_api::remote::RemoteConfig;
    use fnmill_connector_nats::{Endpoint, Nats, Remote};
    use futures::StreamExt;

    use fnmill_connector_postgres::PgPool;

    use super::{QUERY, ROWS, common, cpu};

    /// What the comparison needs from the rest of the bench.
    pub struct Setup<'a> {
        pub io: &'a tokio::runtime::Runtime,
        pub compute: &'a tokio::runtime::Runtime,
        pub host: &'a Host,
        pub limits: &'a Limits,
        pub url: &'a str,
        pub events: usize,
        pub concurrency: usize,
        pub pool_size: usize,
        pub rounds: usize,
        /// `remote.linger` of both sides, in µs.
        pub linger_us: usize,
        /// The function with the in-process pool, run over n events.
        pub in_process: &'a dyn Fn(usize),
        /// The in-process pool's PostgreSQL backends.
        pub backends: &'a [(String, u32)],
        /// The in-process pool, to find the IO tier's backends with.
        pub pool: &'a PgPool,
    }

    /// A child process killed when the bench ends.
    struct Killed(Child);

    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    /// A nats-server of the bench's own (built by `scripts/nats.sh build`, or
    /// `FNMILL_TEST_NATS_SERVER`), so that its CPU is counted and nothing else shares it.
    fn nats() -> Result<(String, Killed), String> {
        let bin = match std::env::var_os("FNMILL_TEST_NATS_SERVER") {
            Some(bin) => PathBuf::from(bin),
            None => {
                let out = Command::new(common::root().join("scripts/nats.sh"))
                    .arg("build")
                    .stderr(Stdio::inherit())
                    .output()
                    .map_err(|e| format!("scripts/nats.sh build: {e}"))?;
                if !out.status.success() {
                    return Err("scripts/nats.sh build failed".into());
                }
                PathBuf::from(
                    String::from_utf8_lossy(&out.stdout)
                        .lines()
                        .last()
                        .unwrap_or("")
                        .trim(),
                )
            }
        };
        let port = free_port();
        let child = Command::new(&bin)
            .args(["--addr", "127.0.0.1", "--port", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting {}: {e}", bin.display()))?;
        let server = Killed(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                return Err("nats-server did not listen within 30 s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok((format!("nats://127.0.0.1:{port}"), server))
    }

    pub fn compare(setup: Setup<'_>) {
        let (nats_url, nats_server) = match nats() {
            Ok(n) => n,
            Err(e) => {
                println!("IO tier: not measured: {e}");
                return;
            }
        };
        let subject = format!("fnmill.bench.{}.db", std::process::id());
        // The IO tier: `fnmill run --role io` with a pool of the same size as the in-process one,
        // granting the function its data source.
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("io.toml");
        std::fs::write(
            &config,
            format!(
                r#"
[runtime]
io_threads = 1
[data_sources.db]
kind = "postgres"
url_env = "FNMILL_BENCH_DB_URL"
pool_size = {pool}
wait_timeout = "10s"
application_name = "fnmill-bench-io"
remote = {{ url = "{nats_url}", subject = "{subject}", linger = "{linger}us" }}
[functions.sql-query]
component = "{component}"
data_sources = ["db"]
"#,
                pool = setup.pool_size,
                linger = setup.linger_us,
                component = common::guest("sql-query").display(),
            ),
        )
        .unwrap();
        let tier = Killed(
            Command::new(env!("CARGO_BIN_EXE_fnmill"))
                .args(["run", "--role", "io", "-c"])
                .arg(&config)
                .env("FNMILL_BENCH_DB_URL", setup.url)
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .spawn()
                .expect("starting the IO-tier process"),
        );

        // This process's side: the same function, its data source served by the IO tier.
        let remote: RemoteConfig = serde_json::from_value(serde_json::json!({
            "url": nats_url,
            "subject": subject,
            "linger": format!("{}us", setup.linger_us),
        }))
        .unwrap();
        let endpoint = Endpoint::from_config(&remote).unwrap();
        let client = setup.io.block_on(async {
            let nats = Nats::connect(&endpoint, "fnmill bench").await.unwrap();
            let client = Remote::new(
                nats,
                "db",
                &subject,
                Duration::from_secs(10),
                remote.linger(),
            );
            tokio::spawn(client.watch());
            let deadline = Instant::now() + Duration::from_secs(60);
            while !client.readiness().is_ready() {
                assert!(
                    Instant::now() < deadline,
                    "the IO tier did not answer within 60 s"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            client
        });
        let mut data = DataSources::new(setup.io.handle().clone());
        data.add_sql("db", Arc::new(client.sql("db")));
        let function = Arc::new(
            setup
                .host
                .load_with(
                    FunctionSpec {
                        name: "sql-query".into(),
                        component: common::guest("sql-query"),
                        limits: setup.limits.clone(),
                        config: [("statement".to_string(), QUERY.to_string())].into(),
                        isolation: fnmill::host::Isolation::Event,
                    },
                    &data,
                    &Grants {
                        data_sources: ["db".to_string()].into(),
                        buckets: Default::default(),
                    },
                )
                .unwrap(),
        );
        let concurrency = setup.concurrency;
        let remote_run = |n: usize| {
            let function = function.clone();
            setup.compute.block_on(async move {
                futures::stream::iter(0..n)
                    .map(|i| {
                        let function = function.clone();
                        tokio::spawn(async move {
                            let event = Event {
                                id: format!("e{i}"),
                                source: "bench".into(),
                                key: None,
                                payload: Bytes::from(format!("[{}]", (i as i64 % ROWS) + 1)),
                                headers: vec![],
                                timestamp_ms: None,
                                origin: vec![],
                                decode_error: None,
                            };
                            let out = function.invoke(&event, 1).await.unwrap();
                            assert_eq!(out.len(), 1);
                        })
                    })
                    .buffer_unordered(concurrency)
                    .for_each(|r| async { r.unwrap() })
                    .await
            })
        };
        // Warm up: the tier's connections open, its statements prepared.
        remote_run(2_000);

        let mut others: Vec<(String, u32)> = setup.backends.to_vec();
        others.push(("io-tier process".into(), tier.0.id()));
        others.push(("nats-server".into(), nats_server.0.id()));
        others.extend(setup.io.block_on(super::backends_of(
            setup.pool,
            "fnmill-bench-io",
            "pg backends, IO tier",
        )));
        let (events, rounds) = (setup.events, setup.rounds);
        println!(
            "the same SELECT through the IO tier (fnmill run --role io over NATS, pool of {}, \
             linger {} µs) against the in-process pool, {events} events, {concurrency} in flight:",
            setup.pool_size, setup.linger_us
        );
        let mut ratios = Vec::with_capacity(rounds);
        let (mut local_cpu, mut tier_cpu) = (Vec::new(), Vec::new());
        let batching = client.batching();
        for round in 1..=rounds {
            let cpu0 = cpu::CpuTimes::now(&others);
            let start = Instant::now();
            (setup.in_process)(events);
            let local = events as f64 / start.elapsed().as_secs_f64();
            let cpu1 = cpu::CpuTimes::now(&others);
            let start = Instant::now();
            remote_run(events);
            let tier_rate = events as f64 / start.elapsed().as_secs_f64();
            let cpu2 = cpu::CpuTimes::now(&others);
            local_cpu.push(cpu1.per_event_since(&cpu0, events));
            tier_cpu.push(cpu2.per_event_since(&cpu1, events));
            ratios.push(tier_rate / local);
            println!(
                "  round {round}: in-process pool {local:>7.0} events/s, IO tier {tier_rate:>7.0} \
                 events/s, ratio {:.2}",
                tier_rate / local
            );
        }
        ratios.sort_by(f64::total_cmp);
        println!(
            "  ratio IO tier / in-process pool, median of {rounds}: {:.2} (goal >= 0.6)",
            ratios[rounds / 2]
        );
        let after = client.batching();
        let per = |calls: u64, messages: u64| calls as f64 / messages.max(1) as f64;
        println!(
            "  calls per NATS message: {:.1} to the IO tier, {:.1} back",
            per(
                after.calls - batching.calls,
                after.batches - batching.batches
            ),
            per(
                after.answers - batching.answers,
                after.answer_messages - batching.answer_messages
            ),
        );
        cpu::print_per_event(
            "function, in-process pool (mean of the rounds)",
            &cpu::mean(&local_cpu),
        );
        cpu::print_per_event(
            "function, IO tier (mean of the rounds)",
            &cpu::mean(&tier_cpu),
        );
        drop(tier);
        drop(nats_server);
    }
}
