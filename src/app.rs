//! The wiring: builds the host, functions, sinks, sources and routes from a validated
//! [`Config`], and runs them on two runtimes — IO (connectors, sinks, dispatchers) and compute
//! (wasm instances) — each with its own threads.
//!
//! Adding a connector touches the two `match`es here ([`build_source`], [`build_sink`]) and
//! nothing in the dispatcher or the host.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::{Context, Result};
use fnmill_connector_amqp::{AmqpSink, AmqpSource};
use fnmill_connector_api::{Readiness, Sink, Source, SourceContext};
use fnmill_connector_file::{FileSink, FileSource};
use fnmill_connector_kafka::{KafkaSink, KafkaSource};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::admin::AdminState;
use crate::config::{Config, DataSourceConfig, DestinationConfig, SinkConfig, SourceConfig};
use crate::host::{DataSources, Function, FunctionSpec, Grants, Host, HostConfig, Limits};
use crate::pipeline::{Backoff, Destination, Route, RouteStats};

/// Deliveries buffered between a source and its dispatcher. The route's `max_in_flight` is the
/// real window; this only smooths the hand-over, so it is small.
const SOURCE_CHANNEL: usize = 256;

/// The host settings a config implies.
pub fn host_config(config: &Config) -> HostConfig {
    HostConfig {
        max_instances: config.runtime.max_instances,
        max_memory_bytes: config
            .functions
            .values()
            .map(|f| f.memory)
            .max()
            .unwrap_or(64 * 1024 * 1024),
        fuel: config.functions.values().any(|f| f.fuel.is_some()),
        cache_dir: Some(config.cache_dir()),
    }
}

/// Compiles (or loads from cache) every function of the config and checks each implements the
/// function world. Fails on the first function that does not, naming its key. The functions get
/// no data sources (for `fnmill check`); [`load_functions_with`] grants them.
pub fn load_functions(config: &Config, host: &Host) -> Result<BTreeMap<String, Arc<Function>>> {
    load_functions_with(config, host, None)
}

/// Creates a pool for every data source of the config; their work runs on `io`. No connection
/// is opened until a function needs one.
pub fn build_data_sources(config: &Config, io: tokio::runtime::Handle) -> Result<DataSources> {
    let mut data = DataSources::new(io);
    for (name, ds) in &config.data_sources {
        let key = || format!("data_sources.{name}");
        match ds {
            DataSourceConfig::Postgres(c) => {
                let pool_config = c
                    .pool_config(&config.base_dir)
                    .map_err(|e| anyhow::anyhow!("{}.{}: {}", key(), e.field, e.message))?;
                let pool =
                    fnmill_connector_postgres::PgPool::new(&pool_config).with_context(key)?;
                data.add_postgres(name, pool);
            }
            DataSourceConfig::Redis(c) => {
                let pool_config = c
                    .pool_config(&config.base_dir)
                    .map_err(|e| anyhow::anyhow!("{}.{}: {}", key(), e.field, e.message))?;
                let pool =
                    fnmill_connector_redis::RedisPool::new(&pool_config).with_context(key)?;
                for (bucket, b) in &c.buckets {
                    data.add_bucket(bucket, pool.bucket(&b.prefix));
                }
            }
        }
        tracing::info!(data_source = %name, "Data source ready");
    }
    Ok(data)
}

/// [`load_functions`], granting each function the data sources and buckets its config lists.
pub fn load_functions_with(
    config: &Config,
    host: &Host,
    data: Option<&DataSources>,
) -> Result<BTreeMap<String, Arc<Function>>> {
    let mut functions = BTreeMap::new();
    for (name, f) in &config.functions {
        let spec = FunctionSpec {
            name: name.clone(),
            component: config.resolve(&f.component),
            limits: Limits {
                memory_bytes: f.memory,
                timeout: f.timeout,
                fuel: f.fuel,
                max_outputs: f.max_outputs,
                max_output_bytes: f.max_output_bytes,
            },
            config: f.config.clone(),
        };
        let function = match data {
            Some(data) => {
                let grants = Grants {
                    data_sources: f.data_sources.iter().cloned().collect(),
                    buckets: f.buckets.iter().cloned().collect(),
                };
                host.load_with(spec, data, &grants)
            }
            None => host.load(spec),
        }
        .with_context(|| format!("functions.{name}.component"))?;
        functions.insert(name.clone(), Arc::new(function));
    }
    Ok(functions)
}

fn resolve_io_path(config: &Config, path: &Path) -> PathBuf {
    if path == Path::new("-") {
        path.to_path_buf()
    } else {
        config.resolve(path)
    }
}

fn build_source(config: &Config, name: &str, source: &SourceConfig) -> Result<Box<dyn Source>> {
    Ok(match source {
        SourceConfig::File(c) => {
            let mut c = c.clone();
            c.path = resolve_io_path(config, &c.path);
            c.checkpoint = c.checkpoint.as_deref().map(|p| config.resolve(p));
            Box::new(FileSource::new(name, c).with_context(|| format!("sources.{name}"))?)
        }
        SourceConfig::Amqp(c) => {
            let mut c = (**c).clone();
            c.resolve_paths(|p| config.resolve(p));
            Box::new(AmqpSource::new(name, c).with_context(|| format!("sources.{name}"))?)
        }
        SourceConfig::Kafka(c) => {
            let mut c = c.clone();
            for secret in c.secret_properties.values_mut() {
                secret.resolve_path(&config.base_dir);
            }
            Box::new(KafkaSource::new(name, c).with_context(|| format!("sources.{name}"))?)
        }
    })
}

/// Must be called inside the IO runtime: sinks spawn their writer tasks there.
fn build_sink(config: &Config, name: &str, sink: &SinkConfig) -> Result<Arc<dyn Sink>> {
    Ok(match sink {
        SinkConfig::File(c) => {
            let mut c = c.clone();
            c.path = resolve_io_path(config, &c.path);
            Arc::new(FileSink::new(c).with_context(|| format!("sinks.{name}"))?)
        }
        SinkConfig::Amqp(c) => {
            let mut c = (**c).clone();
            c.resolve_paths(|p| config.resolve(p));
            Arc::new(AmqpSink::new(name, c).with_context(|| format!("sinks.{name}"))?)
        }
        SinkConfig::Kafka(c) => {
            let mut c = c.clone();
            for secret in c.secret_properties.values_mut() {
                secret.resolve_path(&config.base_dir);
            }
            Arc::new(KafkaSink::new(c).with_context(|| format!("sinks.{name}"))?)
        }
    })
}

/// What a finished run did, per route.
#[derive(Debug, Default)]
pub struct RunSummary {
    pub routes: BTreeMap<String, Arc<RouteStats>>,
}

/// Runs the config until every source is exhausted or `shutdown` is cancelled. Blocks the
/// calling thread; builds and owns both runtimes.
pub fn run(config: Config, shutdown: CancellationToken) -> Result<RunSummary> {
    let host = Host::new(&host_config(&config))?;

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
    // The pools' connection tasks run on the IO runtime; instances await their work from the
    // compute side.
    let data = build_data_sources(&config, io.handle().clone())?;
    let functions = load_functions_with(&config, &host, Some(&data))?;

    let summary = io.block_on(run_routes(
        &config,
        functions,
        compute.handle().clone(),
        shutdown,
    ));
    // Instances may still be finishing on a graceful-shutdown timeout; they are abandoned.
    compute.shutdown_background();
    io.shutdown_background();
    summary
}

async fn run_routes(
    config: &Config,
    functions: BTreeMap<String, Arc<Function>>,
    compute: tokio::runtime::Handle,
    shutdown: CancellationToken,
) -> Result<RunSummary> {
    let mut sinks = BTreeMap::new();
    for (name, sink) in &config.sinks {
        sinks.insert(name.clone(), build_sink(config, name, sink)?);
    }
    let destination = |d: &DestinationConfig| Destination {
        sink_name: d.sink().to_string(),
        sink: sinks[d.sink()].clone(),
        target: d.target().map(str::to_string),
    };

    let mut summary = RunSummary::default();
    let mut admin = AdminState::default();
    let mut tasks = tokio::task::JoinSet::new();
    for r in &config.routes {
        let name = r.name();
        let source = build_source(config, &r.source, &config.sources[&r.source])?;
        let stats = Arc::new(RouteStats::default());
        summary.routes.insert(name.clone(), stats.clone());
        let route = Arc::new(Route {
            name: name.clone(),
            function: functions[&r.function].clone(),
            destinations: r
                .destinations
                .iter()
                .map(|(k, d)| (k.clone(), destination(d)))
                .collect(),
            dead_letter: r.dead_letter.as_ref().map(destination),
            backoff: Backoff::from(&r.retry),
            max_attempts: r.retry.max_attempts,
            max_in_flight: r.max_in_flight,
            compute: compute.clone(),
            shutdown: shutdown.clone(),
            stats,
        });
        let (tx, rx) = mpsc::channel(SOURCE_CHANNEL.min(r.max_in_flight));
        tracing::info!(route = %name, source = %r.source, function = %r.function, "Route started");
        let source_name = r.source.clone();
        let ready = Readiness::default();
        admin.sources.push((r.source.clone(), ready.clone()));
        admin.routes.push((name.clone(), route.stats.clone()));
        let ctx = SourceContext {
            out: tx,
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
            route.run(rx).await;
            Ok(())
        });
    }

    // Started after the routes so that /readyz lists every source from the first request.
    let admin_task = match config.admin.listen {
        Some(listen) => Some(
            crate::admin::serve(listen, admin, shutdown.clone())
                .await
                .with_context(|| format!("admin.listen: cannot listen on {listen}"))?,
        ),
        None => None,
    };

    let grace = config.runtime.shutdown_grace;
    let mut failures = Vec::new();
    let mut grace_deadline = None;
    loop {
        let next = async {
            match grace_deadline {
                Some(deadline) => tokio::time::timeout_at(deadline, tasks.join_next())
                    .await
                    .ok(),
                None => Some(tasks.join_next().await),
            }
        };
        tokio::select! {
            joined = next => match joined {
                None => {
                    tracing::warn!(grace = ?grace, "Shutdown grace period over; abandoning in-flight events");
                    tasks.abort_all();
                    break;
                }
                Some(None) => break,
                Some(Some(Ok(Ok(())))) => {}
                Some(Some(Ok(Err(e)))) => {
                    tracing::error!(error = format!("{e:#}"), "Stopping");
                    failures.push(e);
                    shutdown.cancel();
                }
                Some(Some(Err(e))) => {
                    failures.push(anyhow::anyhow!("a task panicked: {e}"));
                    shutdown.cancel();
                }
            },
            _ = shutdown.cancelled(), if grace_deadline.is_none() => {
                tracing::info!(grace = ?grace, "Shutting down: finishing in-flight events");
                grace_deadline = Some(tokio::time::Instant::now() + grace);
            }
        }
    }
    if let Some(task) = admin_task {
        task.abort();
    }
    for (name, sink) in &sinks {
        if let Err(e) = sink.close().await {
            tracing::error!(sink = %name, error = %e, "Closing sink failed");
        }
    }
    for (name, stats) in &summary.routes {
        tracing::info!(
            route = %name,
            received = stats.received.load(Ordering::Relaxed),
            done = stats.done.load(Ordering::Relaxed),
            dead_lettered = stats.dead_lettered.load(Ordering::Relaxed),
            retries = stats.retries.load(Ordering::Relaxed),
            abandoned = stats.abandoned.load(Ordering::Relaxed),
            "Route finished"
        );
    }
    if let Some(first) = failures.into_iter().next() {
        return Err(first);
    }
    Ok(summary)
}
