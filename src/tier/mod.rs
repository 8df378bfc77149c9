//! The IO tier: data-source pools in processes of their own (`fnmill run --role io`), reached by
//! compute processes (`--role compute`) over NATS, so a database's connections are the IO
//! replicas times `pool_size` whatever the number of compute replicas.
//!
//! - [`Connections`]: one NATS connection per endpoint, shared by the data sources naming it.
//! - [`run_io`]: the IO role: every data source with a `remote` table gets its pool and a server
//!   on its subject; grants come from the same config's functions.
//! - [`measured`]: requests, latency and errors per data source, on both sides.
//!
//! The compute side is wired with the other data sources, in `app::build_data_sources`: a data
//! source with `remote` becomes a [`Remote`] behind the same capability traits as a pool.

pub mod measured;

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use fnmill_connector_api::Problem;
use fnmill_connector_api::remote::RemoteConfig;
use fnmill_connector_nats::{Endpoint, GrantTable, Nats, Remote, Served, Server};
use tokio_util::sync::CancellationToken;

use self::measured::{DataSourceCalls, DataSourceStatus, Via, measured};
use crate::admin::AdminState;
use crate::app::{Pool, RunSummary, StartError, build_pool};
use crate::config::{DataSourceConfig, ValidatedConfig};
use crate::telemetry::{Registry, Telemetry};

/// How long a process waits for a new NATS connection before it starts work regardless.
const FIRST_CONNECT_WAIT: Duration = Duration::from_secs(2);

/// The NATS connections of a process, one per distinct endpoint.
pub struct Connections {
    /// How this process introduces itself to the server (`fnmill compute`, `fnmill io`).
    name: &'static str,
    open: Vec<(Endpoint, Nats)>,
}

impl Connections {
    pub fn new(name: &'static str) -> Self {
        Self {
            name,
            open: Vec::new(),
        }
    }

    /// The connection for `remote`'s endpoint, opened (in the background, on the current
    /// runtime) the first time. Errors name the key relative to `remote`.
    pub async fn get(&mut self, remote: &RemoteConfig) -> Result<Nats, Problem> {
        let endpoint = Endpoint::from_config(remote)?;
        if let Some((_, nats)) = self.open.iter().find(|(e, _)| e.same_as(&endpoint)) {
            return Ok(nats.clone());
        }
        let nats = Nats::connect(&endpoint, self.name).await?;
        // Not an error when it takes longer: the connection keeps trying (and says so in the
        // log), and calls fail as `unavailable` meanwhile.
        nats.wait_connected(FIRST_CONNECT_WAIT).await;
        self.open.push((endpoint, nats.clone()));
        Ok(nats)
    }
}

/// A compute process's client of `name`'s IO tier: what the functions granted `name` (or its
/// buckets) reach.
pub fn remote_of(
    nats: Nats,
    name: &str,
    ds: &DataSourceConfig,
    remote: &RemoteConfig,
) -> (Arc<Remote>, Pool) {
    let timeout = ds.remote_timeout().unwrap_or_default();
    let client = Remote::new(nats, name, &remote.subject, timeout, remote.linger());
    let pool = match ds {
        DataSourceConfig::Postgres(_) => Pool::Sql(Arc::new(client.sql(name))),
        DataSourceConfig::Redis(c) => Pool::Buckets(
            c.buckets
                .keys()
                .map(|b| {
                    let bucket: Arc<dyn fnmill_connector_api::capability::kv::Bucket> =
                        Arc::new(client.bucket(b));
                    (b.clone(), bucket)
                })
                .collect(),
        ),
    };
    (client, pool)
}

/// The grants of every function of the config: what an IO process lets callers reach.
fn grant_table(config: &ValidatedConfig) -> GrantTable {
    let mut grants = GrantTable::default();
    for (name, f) in &config.functions {
        grants.grant(
            name,
            f.data_sources.iter().cloned(),
            f.buckets.iter().cloned(),
        );
    }
    grants
}

/// Runs the IO role until `shutdown`: serves every data source that has a `remote` table from
/// a pool of this process. Blocks the calling thread; builds and owns the IO runtime. A
/// [`StartError`] means nothing was served.
pub fn run_io(
    config: ValidatedConfig,
    admin: Option<TcpListener>,
    shutdown: CancellationToken,
) -> Result<RunSummary> {
    let io = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.runtime.io_threads)
        .thread_name("fnmill-io")
        .enable_all()
        .build()
        .context("starting the IO runtime")?;
    let telemetry = Telemetry::start(&config, io.handle()).map_err(StartError)?;
    tracing::info!("Telemetry: {}", Telemetry::describe(&config));
    let result = io.block_on(serve(&config, admin, shutdown, &telemetry));
    // Queued spans go out before the IO runtime that sends them stops.
    telemetry.shutdown();
    io.shutdown_background();
    result.map(|()| RunSummary::default())
}

async fn serve(
    config: &ValidatedConfig,
    admin: Option<TcpListener>,
    shutdown: CancellationToken,
    telemetry: &Telemetry,
) -> Result<()> {
    let grants = Arc::new(grant_table(config));
    let mut connections = Connections::new("fnmill io");
    let mut registry = Registry::default();
    let metrics_on = telemetry.metrics_on();
    let mut readiness = Vec::new();
    let mut servers = tokio::task::JoinSet::new();
    for (name, ds) in &config.data_sources {
        let Some(remote) = ds.remote() else {
            continue;
        };
        let key = format!("data_sources.{name}");
        let mut pool =
            build_pool(name, ds, metrics_on.then_some(&mut registry)).map_err(StartError)?;
        let calls = metrics_on.then(|| Arc::new(DataSourceCalls::default()));
        if let Some(calls) = &calls {
            pool = measured(pool, calls);
        }
        let served = match pool {
            Pool::Sql(source) => Served::Sql {
                name: name.clone(),
                source,
            },
            Pool::Buckets(buckets) => Served::Buckets(buckets.into_iter().collect()),
        };
        let nats = connections
            .get(remote)
            .await
            .map_err(|p| StartError(anyhow::anyhow!("{}", p.under(&format!("{key}.remote")))))?;
        let system = match ds {
            DataSourceConfig::Postgres(_) => "postgresql",
            DataSourceConfig::Redis(_) => "redis",
        };
        let server = Server::new(nats, name, &remote.subject, served, grants.clone())
            .observed_by(telemetry.io_tier_tracer(system))
            .lingering(remote.linger());
        readiness.push((name.clone(), server.readiness()));
        if let Some(calls) = calls {
            registry.data_source(DataSourceStatus {
                name: name.clone(),
                via: Via::Pool,
                ready: Some(server.readiness()),
                calls,
                server: Some(server.stats()),
            });
        }
        let token = shutdown.clone();
        let key = name.clone();
        servers.spawn(async move {
            server
                .run(token)
                .await
                .map_err(|e| anyhow::anyhow!("data_sources.{key}: {e}"))
        });
    }
    let registry = Arc::new(registry);
    let pusher = if metrics_on {
        telemetry.push_metrics(&registry).map_err(StartError)?
    } else {
        None
    };
    let admin_task = match admin {
        Some(listener) => Some(crate::admin::serve(
            listener,
            AdminState {
                data_sources: readiness,
                metrics: registry,
                ..AdminState::default()
            },
            shutdown.clone(),
        )?),
        None => None,
    };
    tracing::info!(
        data_sources = servers.len(),
        "IO tier started: serving data sources to compute processes"
    );

    let failures = crate::supervise::supervise(
        servers,
        &shutdown,
        config.runtime.shutdown_grace,
        crate::supervise::Phases {
            shutting_down: "Shutting down: answering the calls already taken",
            grace_over: "Shutdown grace period over; calls in flight are not answered (their callers retry)",
        },
    )
    .await;
    if let Some(task) = admin_task {
        task.abort();
    }
    telemetry.stop_metrics(pusher).await;
    tracing::info!("IO tier stopped");
    match failures.into_iter().next() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
