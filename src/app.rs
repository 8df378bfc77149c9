//! The wiring: builds the host, functions, data sources, sinks, sources and routes from a
//! [`ValidatedConfig`], and runs them on two runtimes — IO (connectors, sinks, data sources) and
//! compute (wasm instances and the routes' shards) — each with its own threads.
//!
//! Everything is built from the one validated config, through one exhaustive `match` per kind of
//! part ([`build_source`], [`build_sink`], [`build_pool`]): adding a connector adds one arm to
//! one of them, and nothing in the pipeline or the host.
//!
//! What a process builds depends on its role (`ValidatedConfig::role`): `all` builds everything
//! here; `compute` reaches a data source with a `remote` table through its IO tier instead of a
//! pool; `io` runs [`crate::tier::run_io`] instead of the routes. `fnmill invoke` and `fnmill
//! replay --through` build their function here too ([`load_function`]), so a function runs with
//! the same limits and grants everywhere.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};

use anyhow::{Context, Result};
use fnmill_connector_amqp::{AmqpSink, AmqpSource, DeadLetterMode};
use fnmill_connector_api::capability::kv::Bucket;
use fnmill_connector_api::capability::sql::SqlSource;
use fnmill_connector_api::metrics::Gauge;
use fnmill_connector_api::{Readiness, Sink, Source, SourceContext};
use fnmill_connector_file::{FileSink, FileSource};
use fnmill_connector_kafka::{ConsumerLag, KafkaSink, KafkaSource};
use tokio_util::sync::CancellationToken;

use crate::admin::AdminState;
use crate::config::{
    DataSourceConfig, DestinationConfig, Role, SinkConfig, SourceConfig, ValidatedConfig,
};
use crate::host::{DataSources, Function, FunctionSpec, Grants, Host, HostConfig};
use crate::pipeline::{Backoff, DeadLetter, Destination, Route, RouteStats};
use crate::telemetry::{Registry, Telemetry};
use crate::tier::measured::{DataSourceCalls, DataSourceStatus, Via, measured};

/// Why a run could not start: a problem with what the config points at (a component that does
/// not load, a port taken, an input locked by another process), found before anything ran.
/// `fnmill` exits 2 for these, as for an invalid config.
#[derive(Debug, thiserror::Error)]
#[error("{0:#}")]
pub struct StartError(pub anyhow::Error);

/// The host settings a config implies.
pub fn host_config(config: &ValidatedConfig) -> HostConfig {
    HostConfig {
        max_instances: config.runtime.max_instances,
        max_memory_bytes: config
            .functions
            .values()
            .map(|f| f.memory)
            .max()
            .unwrap_or(64 * 1024 * 1024),
        memory_budget: config.memory_budget(),
        fuel: config.functions.values().any(|f| f.fuel.is_some()),
        cache_dir: config.cache_dir(),
        perf_map: config.runtime.perf_map,
    }
}

/// What serves one data source in this process, behind the capability traits.
pub enum Pool {
    /// A SQL data source.
    Sql(Arc<dyn SqlSource>),
    /// The buckets of a key-value data source, by name.
    Buckets(Vec<(String, Arc<dyn Bucket>)>),
}

/// Builds the pool of data source `name`; no connection is opened until a call needs one. The
/// pool (its connections and waits) is registered in `metrics`, if given.
pub fn build_pool(
    name: &str,
    ds: &DataSourceConfig,
    metrics: Option<&mut Registry>,
) -> Result<Pool> {
    let key = format!("data_sources.{name}");
    let problem = |p: fnmill_connector_api::Problem| anyhow::anyhow!("{}", p.under(&key));
    Ok(match ds {
        DataSourceConfig::Postgres(c) => {
            let pool = fnmill_connector_postgres::PgPool::new(&c.pool_config().map_err(problem)?)
                .map_err(problem)?;
            let pool = Arc::new(pool);
            if let Some(m) = metrics {
                m.pool(name, "postgresql", pool.clone());
            }
            Pool::Sql(pool)
        }
        DataSourceConfig::Redis(c) => {
            let pool = fnmill_connector_redis::RedisPool::new(&c.pool_config().map_err(problem)?)
                .map_err(problem)?;
            if let Some(m) = metrics {
                m.pool(name, "redis", Arc::new(pool.clone()));
            }
            Pool::Buckets(
                c.buckets
                    .iter()
                    .map(|(bucket, b)| {
                        let served: Arc<dyn Bucket> = Arc::new(pool.bucket(&b.prefix));
                        (bucket.clone(), served)
                    })
                    .collect(),
            )
        }
    })
}

/// What serves every data source of the config, and the readiness of those whose readiness is
/// known (a data source reached through its IO tier), for `/readyz`.
pub struct BuiltDataSources {
    pub data: DataSources,
    pub readiness: Vec<(String, Readiness)>,
}

/// Builds what serves every data source of the config; the pools' work runs on `io`. No
/// connection is opened until a function needs one. With role `compute`, a data source with a
/// `remote` table is served by its IO tier over NATS (connected in the background on `io`, so
/// an unreachable NATS is logged, not fatal). With `metrics`, each pool and each data source's
/// calls are registered there. Must be called outside the runtime of `io`.
pub fn build_data_sources(
    config: &ValidatedConfig,
    io: tokio::runtime::Handle,
    mut metrics: Option<&mut Registry>,
) -> Result<BuiltDataSources> {
    let mut data = DataSources::new(io.clone());
    let mut readiness = Vec::new();
    let mut connections = crate::tier::Connections::new("fnmill compute");
    for (name, ds) in &config.data_sources {
        let remote = ds.remote().filter(|_| config.role() == Role::Compute);
        let (pool, via, ready) = match remote {
            Some(remote) => {
                let nats = io.block_on(connections.get(remote)).map_err(|p| {
                    anyhow::anyhow!("{}", p.under(&format!("data_sources.{name}.remote")))
                })?;
                let (client, pool) = crate::tier::remote_of(nats, name, ds, remote);
                io.spawn(client.watch());
                readiness.push((name.clone(), client.readiness()));
                (pool, Via::IoTier, Some(client.readiness()))
            }
            None => (
                build_pool(name, ds, metrics.as_deref_mut())?,
                Via::Pool,
                None,
            ),
        };
        let pool = match metrics.as_deref_mut() {
            Some(m) => {
                let calls = Arc::new(DataSourceCalls::default());
                m.data_source(DataSourceStatus {
                    name: name.clone(),
                    via,
                    ready,
                    calls: calls.clone(),
                    server: None,
                });
                measured(pool, &calls)
            }
            None => pool,
        };
        match pool {
            Pool::Sql(s) => data.add_sql(name, s),
            Pool::Buckets(buckets) => {
                for (bucket, b) in buckets {
                    data.add_bucket(bucket, b);
                }
            }
        }
        tracing::debug!(data_source = %name, via = via.label(), "Data source ready");
    }
    Ok(BuiltDataSources { data, readiness })
}

/// Compiles (or loads from cache) the function `name` of the config and checks it implements the
/// function world, granting it the data sources and buckets its config lists (none without
/// `data`, as `fnmill check` loads them).
pub fn load_function(
    config: &ValidatedConfig,
    host: &Host,
    name: &str,
    data: Option<&DataSources>,
) -> Result<Function> {
    let f = config
        .functions
        .get(name)
        .with_context(|| format!("no function named `{name}`"))?;
    let spec = FunctionSpec {
        name: name.to_string(),
        component: f.component.clone(),
        limits: f.limits(),
        config: f.config.clone(),
        isolation: f.isolation(),
    };
    match data {
        Some(data) => {
            let grants = Grants {
                data_sources: f.data_sources.iter().cloned().collect(),
                buckets: f.buckets.iter().cloned().collect(),
            };
            host.load_with(spec, data, &grants)
        }
        None => host.load(spec),
    }
    .with_context(|| format!("functions.{name}.component"))
}

/// A function to run on its own (`fnmill invoke`, `fnmill replay --through`), with what keeps
/// it working: its host (the epoch ticker) and its data sources.
pub struct LocalFunction {
    pub function: Arc<Function>,
    _host: Host,
    _data: DataSources,
}

/// Loads the function `name` of `config` for local runs, with at most `instances` instances at
/// once; its data sources' work runs on `io`.
pub fn local_function(
    config: &ValidatedConfig,
    name: &str,
    instances: u32,
    io: &tokio::runtime::Handle,
) -> Result<LocalFunction> {
    let mut host_config = host_config(config);
    host_config.max_instances = instances;
    let host = Host::new(&host_config)?;
    let _entered = io.enter();
    let data = build_data_sources(config, io.clone(), None)?.data;
    let function = load_function(config, &host, name, Some(&data))?;
    Ok(LocalFunction {
        function: Arc::new(function),
        _host: host,
        _data: data,
    })
}

/// Every function of the config; see [`load_function`].
pub fn load_functions(
    config: &ValidatedConfig,
    host: &Host,
    data: Option<&DataSources>,
) -> Result<BTreeMap<String, Arc<Function>>> {
    config
        .functions
        .keys()
        .map(|name| {
            Ok((
                name.clone(),
                Arc::new(load_function(config, host, name, data)?),
            ))
        })
        .collect()
}

/// A source, and what it reports for metrics (when asked to).
struct BuiltSource {
    source: Box<dyn Source>,
    lag: Option<Arc<ConsumerLag>>,
    unacked: Option<(String, Gauge)>,
}

fn build_source(name: &str, source: &SourceConfig, metrics: bool) -> Result<BuiltSource> {
    let key = || format!("sources.{name}");
    let (mut lag, mut unacked) = (None, None);
    let source: Box<dyn Source> = match source {
        SourceConfig::File(c) => Box::new(FileSource::new(name, c.clone()).with_context(key)?),
        SourceConfig::Amqp(c) => {
            let mut s = AmqpSource::new(name, (**c).clone()).with_context(key)?;
            if metrics {
                let gauge = Gauge::default();
                unacked = Some((s.queue().to_string(), gauge.clone()));
                s = s.with_unacked(gauge);
            }
            Box::new(s)
        }
        SourceConfig::Kafka(c) => {
            let mut s = KafkaSource::new(name, c.clone()).with_context(key)?;
            if metrics {
                let l = Arc::new(ConsumerLag::default());
                lag = Some(l.clone());
                s = s.with_lag(l);
            }
            Box::new(s)
        }
    };
    Ok(BuiltSource {
        source,
        lag,
        unacked,
    })
}

/// Must be called inside the IO runtime: sinks spawn their writer tasks there.
pub fn build_sink(name: &str, sink: &SinkConfig) -> Result<Arc<dyn Sink>> {
    let key = || format!("sinks.{name}");
    Ok(match sink {
        SinkConfig::File(c) => Arc::new(FileSink::new(c.clone()).with_context(key)?),
        SinkConfig::Amqp(c) => Arc::new(AmqpSink::new(name, (**c).clone()).with_context(key)?),
        SinkConfig::Kafka(c) => Arc::new(KafkaSink::new(c.clone()).with_context(key)?),
    })
}

/// Whether a source hands events that failed for good to a dead-letter mechanism of its own.
fn dead_letters_itself(source: &SourceConfig) -> bool {
    match source {
        SourceConfig::Amqp(c) => c.dead_letter == DeadLetterMode::Broker,
        SourceConfig::File(_) | SourceConfig::Kafka(_) => false,
    }
}

/// What a finished run did, per route.
#[derive(Debug, Default)]
pub struct RunSummary {
    pub routes: BTreeMap<String, Arc<RouteStats>>,
}

impl RunSummary {
    /// Events abandoned (not acknowledged, to be delivered again) across all routes.
    pub fn abandoned(&self) -> u64 {
        self.routes
            .values()
            .map(|s| s.abandoned.load(Ordering::Relaxed) + s.in_flight())
            .sum()
    }
}

/// Runs the config until every source is exhausted or `shutdown` is cancelled. Blocks the
/// calling thread; builds and owns both runtimes. A [`StartError`] means nothing ran.
pub fn run(config: ValidatedConfig, shutdown: CancellationToken) -> Result<RunSummary> {
    for w in config.warnings() {
        tracing::warn!(key = %w.key, "{}", w.message);
    }
    // Taken before anything starts, so a port in use is reported before any event is consumed.
    let admin = match config.admin.listen {
        Some(listen) => Some(TcpListener::bind(listen).map_err(|e| {
            StartError(anyhow::anyhow!(
                "admin.listen: cannot listen on {listen}: {}",
                crate::io_error(&e)
            ))
        })?),
        None => None,
    };
    tracing::info!(role = %config.role(), "Starting");
    if config.role() == Role::Io {
        return crate::tier::run_io(config, admin, shutdown);
    }
    let host = Host::new(&host_config(&config)).map_err(|e| StartError(e.into()))?;
    let compute = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.runtime.compute_threads)
        .thread_name("fnmill-compute")
        // Timers only: every socket lives on the IO runtime. Without an IO driver an idle
        // worker parks on a condvar, and waking it costs a futex, not an eventfd and epoll.
        .enable_time()
        .build()
        .context("starting the compute runtime")?;
    let io = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.runtime.io_threads)
        .thread_name("fnmill-io")
        .enable_all()
        .build()
        .context("starting the IO runtime")?;
    let telemetry = Telemetry::start(&config, io.handle()).map_err(StartError)?;
    tracing::info!("Telemetry: {}", Telemetry::describe(&config));
    let mut registry = Registry::default();
    // The pools' connection tasks run on the IO runtime; instances await their work from the
    // compute side.
    let BuiltDataSources { data, readiness } = build_data_sources(
        &config,
        io.handle().clone(),
        telemetry.metrics_on().then_some(&mut registry),
    )
    .map_err(StartError)?;
    let functions = load_functions(&config, &host, Some(&data)).map_err(StartError)?;

    // `/readyz` names the data sources whose IO tier does not answer, too.
    let admin = admin.map(|listener| (listener, readiness));
    let summary = io.block_on(run_routes(
        &config, functions, admin, &compute, shutdown, &telemetry, registry,
    ));
    // Queued spans go out before the IO runtime that sends them stops.
    telemetry.shutdown();
    // Instances may still be finishing on a graceful-shutdown timeout; they are abandoned.
    compute.shutdown_background();
    io.shutdown_background();
    summary
}

async fn run_routes(
    config: &ValidatedConfig,
    functions: BTreeMap<String, Arc<Function>>,
    admin: Option<(TcpListener, Vec<(String, Readiness)>)>,
    compute: &tokio::runtime::Runtime,
    shutdown: CancellationToken,
    telemetry: &Telemetry,
    mut registry: Registry,
) -> Result<RunSummary> {
    let mut sinks = BTreeMap::new();
    for (name, sink) in &config.sinks {
        sinks.insert(name.clone(), build_sink(name, sink).map_err(StartError)?);
    }
    let destination = |d: &DestinationConfig| Destination {
        sink_name: d.sink().into(),
        sink: sinks[d.sink()].clone(),
        target: d.target().map(Arc::from),
    };

    // Every source is built (a file source takes its lock) before any route starts.
    let mut built = Vec::new();
    for r in &config.routes {
        built.push(
            build_source(&r.source, config.source_of(r), telemetry.metrics_on())
                .map_err(StartError)?,
        );
    }

    let mut summary = RunSummary::default();
    let (admin, data_readiness) = admin.unzip();
    let mut admin_state = AdminState {
        data_sources: data_readiness.unwrap_or_default(),
        ..AdminState::default()
    };
    let mut routes = Vec::new();
    let mut tasks = tokio::task::JoinSet::new();
    for (r, source) in config.routes.iter().zip(built) {
        let name = r.name();
        let stats = Arc::new(telemetry.route_stats(r.destinations.keys().cloned()));
        summary.routes.insert(name.clone(), stats.clone());
        let dead_letter = match &r.dead_letter {
            Some(d) => DeadLetter::Destination(destination(d)),
            None if dead_letters_itself(config.source_of(r)) => DeadLetter::Source,
            None => DeadLetter::Hold,
        };
        let route = Arc::new(Route {
            name: name.clone(),
            function: functions[&r.function].clone(),
            destinations: r
                .destinations
                .iter()
                .map(|(k, d)| (k.clone(), destination(d)))
                .collect(),
            dead_letter,
            backoff: Backoff::from(&r.retry),
            max_attempts: r.retry.max_attempts,
            max_in_flight: r.max_in_flight,
            shards: config.runtime.compute_threads,
            compute: compute.handle().clone(),
            io: tokio::runtime::Handle::current(),
            shutdown: shutdown.clone(),
            stats: stats.clone(),
            telemetry: telemetry.route(config, r),
            fatal: OnceLock::new(),
            repeated_logs: Default::default(),
        });
        routes.push(route.clone());
        let (out, route_done) = route.start();
        tracing::info!(route = %name, source = %r.source, function = %r.function, "Route started");
        let source_name = r.source.clone();
        let ready = Readiness::default();
        admin_state.sources.push((r.source.clone(), ready.clone()));
        registry.route(&name, &r.function, stats);
        registry.function(&r.function, functions[&r.function].clone());
        registry.source(&r.source, ready.clone(), source.lag, source.unacked);
        let source = source.source;
        let ctx = SourceContext {
            out,
            shutdown: shutdown.clone(),
            ready,
        };
        tasks.spawn(async move {
            source
                .run(ctx)
                .await
                .with_context(|| format!("source `{source_name}` failed"))
        });
        tasks.spawn(async move {
            route_done.await;
            Ok(())
        });
    }

    let registry = Arc::new(registry);
    admin_state.metrics = registry.clone();
    let pusher = if telemetry.metrics_on() {
        telemetry.push_metrics(&registry).map_err(StartError)?
    } else {
        None
    };
    // Started after the routes so that /readyz lists every source from the first request.
    let admin_task = match admin {
        Some(listener) => Some(crate::admin::serve(
            listener,
            admin_state,
            shutdown.clone(),
        )?),
        None => None,
    };

    let mut failures = crate::supervise::supervise(
        tasks,
        &shutdown,
        config.runtime.shutdown_grace,
        crate::supervise::Phases {
            shutting_down: "Shutting down: finishing in-flight events",
            grace_over: "Shutdown grace period over; abandoning in-flight events",
        },
    )
    .await;
    if let Some(task) = admin_task {
        task.abort();
    }
    telemetry.stop_metrics(pusher).await;
    for (name, sink) in &sinks {
        if let Err(e) = sink.close().await {
            tracing::error!(sink = %name, error = %e, "Closing sink failed");
        }
    }
    for route in &routes {
        if let Some(error) = route.fatal.get() {
            failures.push(anyhow::anyhow!("route `{}`: {error}", route.name));
        }
    }
    for (name, stats) in &summary.routes {
        tracing::info!(
            route = %name,
            received = stats.received.load(Ordering::Relaxed),
            done = stats.done.load(Ordering::Relaxed),
            dead_lettered = stats.dead_lettered.load(Ordering::Relaxed),
            retries = stats.retries.load(Ordering::Relaxed),
            abandoned = stats.abandoned.load(Ordering::Relaxed) + stats.in_flight(),
            "Route finished"
        );
    }
    if let Some(first) = failures.into_iter().next() {
        return Err(first);
    }
    Ok(summary)
}
