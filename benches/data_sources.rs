//! Events/s of a function doing one indexed SELECT per event (the `sql-query` test guest, a
//! fresh instance per event, the query served by the pool on the IO runtime) against a native
//! Rust loop doing the same SELECTs through the same pool, with the same concurrency, in one
//! run. Prints both and the ratio (the goal is ≥ 0.7).
//!
//! Needs PostgreSQL (`FNMILL_TEST_POSTGRES_URL`, default `postgres://postgres@127.0.0.1:5432/test`).
//! `cargo bench --bench data_sources` (add `-- --events N --concurrency C --pool P`, or
//! `-- --profile wasm` to run only the function side, e.g. under `perf record`).

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/cpu.rs"]
mod cpu;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fnmill::host::{DataSources, FunctionSpec, Grants, Host, HostConfig, Limits};
use fnmill_connector_api::Event;
use fnmill_connector_postgres::{PgPool, PgPoolConfig, Value};
use futures::StreamExt;

const TABLE: &str = "fnmill_bench_customers";
const ROWS: i64 = 10_000;
const QUERY: &str = "select name from fnmill_bench_customers where id = $1";

fn arg(name: &str, default: usize) -> usize {
    std::env::args()
        .skip_while(|a| a != name)
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let events = arg("--events", 20_000);
    let concurrency = arg("--concurrency", 64);
    let pool_size = arg("--pool", 8);
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
        url,
        pool_size,
        wait_timeout: Duration::from_secs(10),
        connect_timeout: Duration::from_secs(5),
        statement_timeout: None,
        application_name: "fnmill-bench".into(),
        tls_ca_file: None,
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
        max_instances: concurrency as u32,
        max_memory_bytes: 32 * 1024 * 1024,
        fuel: false,
        cache_dir: None,
    })
    .unwrap();
    let mut data = DataSources::new(io.handle().clone());
    data.add_postgres("db", pool.clone());
    let function = Arc::new(
        host.load_with(
            FunctionSpec {
                name: "sql-query".into(),
                component: common::guest("sql-query"),
                limits: Limits {
                    memory_bytes: 32 * 1024 * 1024,
                    timeout: Duration::from_secs(10),
                    fuel: None,
                    max_outputs: 10,
                    max_output_bytes: 1024 * 1024,
                },
                config: [("statement".to_string(), QUERY.to_string())].into(),
            },
            &data,
            &Grants {
                data_sources: ["db".to_string()].into(),
                buckets: Default::default(),
            },
        )
        .unwrap(),
    );
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
    let wasm = |n: usize| {
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
    native(2_000);
    wasm(2_000);
    // The PostgreSQL backends serving the pool, to count their CPU too.
    let backends: Vec<(String, u32)> = io.block_on(async {
        pool.query(
            "select pid from pg_stat_activity where application_name = 'fnmill-bench'",
            &[],
        )
        .await
        .unwrap()
        .rows
        .iter()
        .filter_map(|r| match r.first() {
            Some(Value::Int(pid)) => Some(("postgres backends".to_string(), *pid as u32)),
            _ => None,
        })
        .collect()
    });
    // `--profile wasm|native`: only that side, to run under a profiler.
    if let Some(only) = std::env::args().skip_while(|a| a != "--profile").nth(1) {
        let start = Instant::now();
        if only == "native" {
            native(events)
        } else {
            wasm(events)
        }
        println!(
            "{only}: {:.0} events/s",
            events as f64 / start.elapsed().as_secs_f64()
        );
        return;
    }

    let cpu0 = cpu::CpuTimes::now(&backends);
    let start = Instant::now();
    native(events);
    let native_rate = events as f64 / start.elapsed().as_secs_f64();
    let cpu1 = cpu::CpuTimes::now(&backends);
    let start = Instant::now();
    wasm(events);
    let wasm_rate = events as f64 / start.elapsed().as_secs_f64();
    let cpu2 = cpu::CpuTimes::now(&backends);

    println!(
        "one indexed SELECT per event, {events} events, {concurrency} in flight, pool of {pool_size}:"
    );
    println!("  native loop through the pool : {native_rate:>9.0} events/s");
    println!("  function (fresh instance)    : {wasm_rate:>9.0} events/s");
    println!(
        "  ratio function / native      : {:>9.2} (goal >= 0.7)",
        wasm_rate / native_rate
    );
    cpu::print_per_event("native loop", &cpu1.per_event_since(&cpu0, events));
    cpu::print_per_event("function", &cpu2.per_event_since(&cpu1, events));
}
