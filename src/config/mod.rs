//! `fnmill.toml`: one file, every key overridable from the environment as
//! `FNMILL__SECTION__KEY` (e.g. `FNMILL__RUNTIME__COMPUTE_THREADS=4`).
//!
//! Loading happens in two steps. [`read`] merges the file and the environment and deserializes
//! into [`Config`], where unknown keys and malformed values fail with the key's path.
//! [`Config::validate`] then resolves every relative path against the config file's folder and
//! runs every check — each section's own, beside its definition (each connector's config checks
//! itself), and those that span sections — reporting every problem, one line each naming its
//! key. It returns a [`ValidatedConfig`], the only thing the wiring (`app::run`) accepts, so
//! `fnmill check` and `fnmill run` refuse exactly the same configs, before anything starts.
//!
//! # Layout
//!
//! - this module: the config types and loading;
//! - `env`: `FNMILL__…` overrides, kept as text where the schema wants text;
//! - `validate`: [`ValidatedConfig`] and the checks;
//! - `role`: [`Role`], which part of the work a process does (what it checks and starts).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fnmill_connector_amqp::{AmqpSinkConfig, AmqpSourceConfig};
use fnmill_connector_file::{FileSinkConfig, FileSourceConfig};
use fnmill_connector_kafka::{KafkaSinkConfig, KafkaSourceConfig};
use fnmill_connector_postgres::config::PostgresConfig;
use fnmill_connector_redis::config::RedisConfig;
use serde::{Deserialize, Deserializer};

mod env;
mod role;
mod validate;

/// One configuration problem, naming the key it is about: the dotted path of the key, e.g.
/// `routes[0].function` or `functions.enrich.timeout`.
pub use fnmill_connector_api::Problem;
pub use role::Role;
pub use validate::ValidatedConfig;

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {}: {message}", path.display())]
    Read { path: PathBuf, message: String },
    /// One or more problems, each on its own line.
    #[error("{}", Problems(.0))]
    Invalid(Vec<Problem>),
}

struct Problems<'a>(&'a [Problem]);

impl fmt::Display for Problems<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

pub type Result<T, E = ConfigError> = std::result::Result<T, E>;

/// The whole configuration.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Threads, in-flight bounds and instance pool size.
    #[serde(default)]
    pub runtime: RuntimeConfig,
    /// Logging.
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    /// The admin HTTP endpoint (`/healthz`, `/readyz`, `/metrics`).
    #[serde(default)]
    pub admin: AdminConfig,
    /// Where events come from, by name.
    #[serde(default)]
    pub sources: BTreeMap<String, SourceConfig>,
    /// Where outputs and dead letters go, by name.
    #[serde(default)]
    pub sinks: BTreeMap<String, SinkConfig>,
    /// The WebAssembly functions, by name.
    #[serde(default)]
    pub functions: BTreeMap<String, FunctionConfig>,
    /// Databases and key-value stores that functions may use, by name; see [`DataSourceConfig`].
    #[serde(default)]
    pub data_sources: BTreeMap<String, DataSourceConfig>,
    /// Each route runs one source's events through one function into sinks.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// The directory the config file is in; relative paths in it are resolved against it.
    #[serde(skip)]
    pub base_dir: PathBuf,
}

/// The two sides of the process and their bounds.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Threads of the IO runtime: connectors, sinks, the dispatcher.
    #[serde(default = "default_io_threads")]
    pub io_threads: usize,
    /// Threads of the compute runtime that runs wasm instances.
    #[serde(default = "default_compute_threads")]
    pub compute_threads: usize,
    /// Wasm instances that may exist at once, across all functions. Sizes the pooling allocator;
    /// an event that finds no free instance waits for one.
    #[serde(default = "default_max_instances")]
    pub max_instances: u32,
    /// Where compiled components are cached. Default: `$XDG_CACHE_HOME/fnmill` or
    /// `~/.cache/fnmill`.
    #[serde(default)]
    pub cache_dir: Option<PathBuf>,
    /// How long a graceful shutdown (SIGTERM, Ctrl-C) may take to finish in-flight events
    /// before they are abandoned (and delivered again after restart).
    #[serde(default = "default_shutdown_grace", deserialize_with = "duration")]
    pub shutdown_grace: Duration,
    /// Memory all live wasm instances may reserve together, e.g. `"4GiB"`. An instance is
    /// admitted only once its function's `memory` fits in what is left; until then its event
    /// waits. Default: three quarters of the machine's (or the container's) memory.
    #[serde(default, deserialize_with = "optional_byte_size")]
    pub memory_budget: Option<u64>,
    /// Write `/tmp/perf-<pid>.map`, naming the compiled functions' code, so that Linux `perf`
    /// shows a guest's own functions (`wasm[0]::function[N]::name`) instead of `[unknown]`.
    /// Costs a line per function when a component is loaded, nothing per event.
    #[serde(default)]
    pub perf_map: bool,
}

/// IO is mostly waiting: one thread serves many connections; a second lets a slow sink and a
/// busy source proceed side by side.
fn default_io_threads() -> usize {
    2
}

/// Compute is CPU-bound: one thread per core.
fn default_compute_threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// Enough for a route's default in-flight window to run fully concurrent while guests await
/// host calls; each idle pool slot costs only address space.
pub(crate) fn default_max_instances() -> u32 {
    1000
}

/// Below Kubernetes' default 30 s termination grace period, so a pod commits before it is
/// killed.
fn default_shutdown_grace() -> Duration {
    Duration::from_secs(20)
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            io_threads: default_io_threads(),
            compute_threads: default_compute_threads(),
            max_instances: default_max_instances(),
            cache_dir: None,
            shutdown_grace: default_shutdown_grace(),
            memory_budget: None,
            perf_map: false,
        }
    }
}

/// The admin HTTP endpoint.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Address to serve `/healthz`, `/readyz` and `/metrics` on, e.g. `"0.0.0.0:9464"`
    /// (9464 is the port OpenTelemetry's Prometheus exporter uses). Unset: no endpoint.
    #[serde(default)]
    pub listen: Option<std::net::SocketAddr>,
}

/// Logging, traces and metrics.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Log filter in `RUST_LOG` syntax; the `RUST_LOG` environment variable wins when set.
    #[serde(default = "default_log")]
    pub log: String,
    /// Log format: `text` for people, `json` for log pipelines.
    #[serde(default)]
    pub log_format: LogFormat,
    /// `service.name` of fnmill's spans and pushed metrics. Default: `OTEL_SERVICE_NAME`, else
    /// `fnmill`.
    #[serde(default)]
    pub service_name: Option<String>,
    /// OpenTelemetry traces over OTLP; see [`crate::telemetry::settings`].
    #[serde(default)]
    pub traces: crate::telemetry::settings::TracesConfig,
    /// OpenTelemetry metrics over OTLP (they are always on `/metrics` when `admin.listen` is
    /// set).
    #[serde(default)]
    pub metrics: crate::telemetry::settings::MetricsConfig,
}

fn default_log() -> String {
    "info".into()
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            log: default_log(),
            log_format: LogFormat::default(),
            service_name: None,
            traces: Default::default(),
            metrics: Default::default(),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// A source of events. Adding a connector adds one variant here; the compiler then points at
/// the matches that check it (`validate`) and build it (`app`).
#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum SourceConfig {
    /// A JSON Lines file (or stdin), with a durable checkpoint.
    File(FileSourceConfig),
    /// A RabbitMQ (AMQP 0.9.1) queue.
    Amqp(Box<AmqpSourceConfig>),
    /// Kafka topics, consumed as a consumer group.
    Kafka(KafkaSourceConfig),
}

/// A destination for outputs and dead letters. Adding one works as for [`SourceConfig`].
#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum SinkConfig {
    /// A JSON Lines file (or stdout).
    File(FileSinkConfig),
    /// A RabbitMQ (AMQP 0.9.1) exchange, with publisher confirms.
    Amqp(Box<AmqpSinkConfig>),
    /// Kafka topics, through an idempotent producer.
    Kafka(KafkaSinkConfig),
}

/// A function: a component and its limits.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionConfig {
    /// Path of the `.wasm` component, relative to the config file.
    pub component: PathBuf,
    /// Most linear memory an instance may use, e.g. `"64MiB"`.
    #[serde(default = "default_memory", deserialize_with = "byte_size")]
    pub memory: u64,
    /// Longest one call may run, e.g. `"2s"`.
    #[serde(default = "default_timeout", deserialize_with = "duration")]
    pub timeout: Duration,
    /// Fuel per call (about one unit per wasm instruction); unset = unlimited. Deterministic,
    /// unlike the timeout, at a small cost to all code while any function sets it.
    #[serde(default)]
    pub fuel: Option<u64>,
    /// Most outputs one call may return.
    #[serde(default = "default_max_outputs")]
    pub max_outputs: u32,
    /// Most bytes (payloads, keys, headers) one call may return, e.g. `"1MiB"`.
    #[serde(default = "default_max_output_bytes", deserialize_with = "byte_size")]
    pub max_output_bytes: u64,
    /// Values the function reads with `config.get`. Only this function sees them.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    /// SQL data sources (`data_sources.<name>` of kind `postgres`) the function may query.
    /// Any other name is refused at the host.
    #[serde(default)]
    pub data_sources: Vec<String>,
    /// Key-value buckets (defined under a `redis` data source's `buckets`) the function may open.
    #[serde(default)]
    pub buckets: Vec<String>,
    /// Most bytes of log output (stdout, stderr, `logging.log`) one call may write, e.g.
    /// `"64KiB"`; what is over is dropped and counted in one warning.
    #[serde(default = "default_max_log_bytes", deserialize_with = "byte_size")]
    pub max_log_bytes: u64,
    /// Most log lines one call may write; what is over is dropped and counted.
    #[serde(default = "default_max_log_lines")]
    pub max_log_lines: u32,
    /// `"event"` (default): a fresh instance for every event, so nothing one event leaves in
    /// memory is seen by another. `"reuse"`: an instance serves up to `max_reuse` events in turn
    /// and is retired after any failure or once its memory grew past `reuse_max_memory` —
    /// several times cheaper per event, but state an event leaves in the instance's memory
    /// (globals, caches) is seen by the next events it serves, whatever their keys. Choose it
    /// only for functions that keep nothing between events, or whose leftovers are harmless.
    #[serde(default)]
    pub isolation: IsolationConfig,
    /// With `isolation = "reuse"`: events one instance serves before it is retired.
    #[serde(default = "default_max_reuse")]
    pub max_reuse: u32,
    /// With `isolation = "reuse"`: an instance whose memory grew past this is retired after its
    /// event, e.g. `"16MiB"`. Default: half of `memory`.
    #[serde(default, deserialize_with = "optional_byte_size")]
    pub reuse_max_memory: Option<u64>,
}

/// `functions.<name>.isolation`.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum IsolationConfig {
    #[default]
    Event,
    Reuse,
}

/// Long enough that instantiation is noise, short enough that an instance that slowly
/// accumulates state is renewed every so often.
pub(crate) fn default_max_reuse() -> u32 {
    1000
}

impl FunctionConfig {
    /// A function running `component` with every limit at its default.
    pub fn new(component: impl Into<PathBuf>) -> Self {
        Self {
            component: component.into(),
            memory: default_memory(),
            timeout: default_timeout(),
            fuel: None,
            max_outputs: default_max_outputs(),
            max_output_bytes: default_max_output_bytes(),
            config: BTreeMap::new(),
            data_sources: Vec::new(),
            buckets: Vec::new(),
            max_log_bytes: default_max_log_bytes(),
            max_log_lines: default_max_log_lines(),
            isolation: IsolationConfig::Event,
            max_reuse: default_max_reuse(),
            reuse_max_memory: None,
        }
    }

    /// The host's isolation for this function.
    pub fn isolation(&self) -> crate::host::Isolation {
        match self.isolation {
            IsolationConfig::Event => crate::host::Isolation::Event,
            IsolationConfig::Reuse => crate::host::Isolation::Reuse {
                max_uses: self.max_reuse,
                max_memory: self.reuse_max_memory.unwrap_or(self.memory / 2),
            },
        }
    }

    /// The host's limits for this function.
    pub fn limits(&self) -> crate::host::Limits {
        crate::host::Limits {
            memory_bytes: self.memory,
            timeout: self.timeout,
            fuel: self.fuel,
            max_outputs: self.max_outputs,
            max_output_bytes: self.max_output_bytes,
            max_log_bytes: self.max_log_bytes,
            max_log_lines: self.max_log_lines,
        }
    }
}

/// A few screens of text per event: enough for debugging output, too little for a runaway loop
/// to flood the logs.
fn default_max_log_bytes() -> u64 {
    64 * 1024
}

fn default_max_log_lines() -> u32 {
    200
}

/// A data source: a pool of connections on the IO side, served to the functions granted it.
/// Adding a kind adds one variant here; the compiler then points at the matches that check it
/// and build it.
#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum DataSourceConfig {
    /// PostgreSQL, through the `sql` capability.
    Postgres(PostgresConfig),
    /// Redis, through the `keyvalue` capability: its buckets are key prefixes.
    Redis(RedisConfig),
}

impl DataSourceConfig {
    /// Its `remote` table: the IO tier that serves it over NATS.
    pub fn remote(&self) -> Option<&fnmill_connector_api::remote::RemoteConfig> {
        match self {
            DataSourceConfig::Postgres(c) => c.remote.as_ref(),
            DataSourceConfig::Redis(c) => c.remote.as_ref(),
        }
    }

    fn remote_mut(&mut self) -> Option<&mut fnmill_connector_api::remote::RemoteConfig> {
        match self {
            DataSourceConfig::Postgres(c) => c.remote.as_mut(),
            DataSourceConfig::Redis(c) => c.remote.as_mut(),
        }
    }

    /// How long a compute process waits for the IO tier to answer one call: `remote.timeout`,
    /// else as long as the IO tier itself may take — the pool's `wait_timeout` plus the
    /// statement's (`statement_timeout`, when set) or the command's (`command_timeout`).
    pub fn remote_timeout(&self) -> Option<Duration> {
        let remote = self.remote()?;
        Some(remote.timeout.unwrap_or(match self {
            DataSourceConfig::Postgres(c) => {
                c.wait_timeout + c.statement_timeout.unwrap_or_default()
            }
            DataSourceConfig::Redis(c) => c.wait_timeout + c.command_timeout,
        }))
    }
}

/// Enough for Rust and JavaScript functions with room to spare; Python functions need more
/// (the interpreter's heap), and say so in their config.
fn default_memory() -> u64 {
    64 * 1024 * 1024
}

/// Generous for business logic, short enough that a looping function frees its lane quickly.
fn default_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_max_outputs() -> u32 {
    100
}

/// Kafka's default `message.max.bytes` is 1 MiB; a few outputs of that size fit.
fn default_max_output_bytes() -> u64 {
    4 * 1024 * 1024
}

/// A route: source → function → destinations.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Name used in logs and dead-letter headers. Default: `<source>-<function>`.
    #[serde(default)]
    pub name: Option<String>,
    /// The `sources.<name>` to read.
    pub source: String,
    /// The `functions.<name>` to run.
    pub function: String,
    /// Output destination names (what the function writes in `output.destination`) mapped to
    /// sinks. An output to a name missing here fails the event as fatal.
    #[serde(default)]
    pub destinations: BTreeMap<String, DestinationConfig>,
    /// Where events go when they fail for good. Without one, a failed event stops its lane
    /// (its ordering key) until fnmill restarts: nothing is dropped.
    #[serde(default)]
    pub dead_letter: Option<DestinationConfig>,
    /// Retries of retryable failures.
    #[serde(default)]
    pub retry: RetryConfig,
    /// Events of this route accepted but not yet settled (queued in a lane or running). When
    /// full, the source stops pulling.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
}

/// Enough to keep the compute side busy while some events wait on retries or slow sinks, and
/// to cover the sinks' confirmation latency: an event holds its place until its outputs are
/// confirmed, so a route runs at most `max_in_flight` / confirmation latency events per second
/// (1,000 capped the kafka bench's `reuse` rows near 125k events/s at a ~8 ms confirmation;
/// 5,000 ran them 19% faster). Events queued in lanes hold no instance (`max_instances` bounds
/// those), so a larger window costs little memory.
fn default_max_in_flight() -> usize {
    5000
}

impl RouteConfig {
    pub fn name(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("{}-{}", self.source, self.function))
    }
}

/// A sink, optionally with a target inside it (a topic, an exchange): `"out"` or
/// `{ sink = "out", target = "orders.valid" }`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DestinationConfig {
    /// Just the sink's name.
    Sink(String),
    /// A sink and a target inside it.
    Target {
        sink: String,
        target: Option<String>,
    },
}

/// The table form of a destination; unknown keys (a misspelt `target`) are refused.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DestinationTable {
    sink: String,
    #[serde(default)]
    target: Option<String>,
}

impl<'de> Deserialize<'de> for DestinationConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = DestinationConfig;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a sink name, or a table { sink = \"…\", target = \"…\" }")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(DestinationConfig::Sink(v.to_string()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Self::Value, A::Error> {
                let t = DestinationTable::deserialize(
                    serde::de::value::MapAccessDeserializer::new(map),
                )?;
                Ok(DestinationConfig::Target {
                    sink: t.sink,
                    target: t.target,
                })
            }
        }
        d.deserialize_any(V)
    }
}

impl DestinationConfig {
    pub fn sink(&self) -> &str {
        match self {
            DestinationConfig::Sink(s) => s,
            DestinationConfig::Target { sink, .. } => sink,
        }
    }

    pub fn target(&self) -> Option<&str> {
        match self {
            DestinationConfig::Sink(_) => None,
            DestinationConfig::Target { target, .. } => target.as_deref(),
        }
    }
}

/// Exponential backoff with jitter.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Total attempts of a retryable failure, the first included. 1 = no retry.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Wait before the first retry.
    #[serde(default = "default_initial_backoff", deserialize_with = "duration")]
    pub initial_backoff: Duration,
    /// Longest wait between attempts.
    #[serde(default = "default_max_backoff", deserialize_with = "duration")]
    pub max_backoff: Duration,
    /// Factor the wait grows by after each attempt.
    #[serde(default = "default_multiplier")]
    pub multiplier: f64,
    /// Random spread of each wait, as a fraction (0.2 = ±20%), so retries of many events do
    /// not hit a recovering dependency in lockstep.
    #[serde(default = "default_jitter")]
    pub jitter: f64,
}

fn default_max_attempts() -> u32 {
    5
}

fn default_initial_backoff() -> Duration {
    Duration::from_millis(100)
}

fn default_max_backoff() -> Duration {
    Duration::from_secs(10)
}

fn default_multiplier() -> f64 {
    2.0
}

fn default_jitter() -> f64 {
    0.2
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_attempts: default_max_attempts(),
            initial_backoff: default_initial_backoff(),
            max_backoff: default_max_backoff(),
            multiplier: default_multiplier(),
            jitter: default_jitter(),
        }
    }
}

/// Reads `path` and the `FNMILL__…` environment, and validates the result.
pub fn load(path: &Path) -> Result<ValidatedConfig> {
    load_with_env(path, std::env::vars())
}

/// [`load`] for a process of `role`: validated for what that role starts.
pub fn load_as(path: &Path, role: Role) -> Result<ValidatedConfig> {
    read(path, std::env::vars())?.validate_as(role)
}

/// [`load`] with an explicit environment (for tests).
pub fn load_with_env(
    path: &Path,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<ValidatedConfig> {
    read(path, env)?.validate()
}

/// Reads `path` and the `FNMILL__…` variables of `env` into a [`Config`], not yet validated.
pub fn read(path: &Path, env: impl IntoIterator<Item = (String, String)>) -> Result<Config> {
    let unreadable = |message: String| ConfigError::Read {
        path: path.to_path_buf(),
        message,
    };
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => return Err(unreadable("is a directory, not a config file".into())),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(unreadable("no such file".into()));
        }
        Err(e) => return Err(unreadable(e.to_string())),
    }
    let text = std::fs::read_to_string(path).map_err(|e| unreadable(e.to_string()))?;
    let file = toml_value(&text).map_err(|e| match e {
        ConfigError::Read { message, .. } => unreadable(message),
        other => other,
    })?;
    let config = env::apply(file, env)?;
    let mut config = config;
    config.base_dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    Ok(config)
}

/// Parses a TOML string (no environment); relative paths resolve against `base_dir`.
pub fn from_toml(text: &str, base_dir: &Path) -> Result<ValidatedConfig> {
    let mut config = from_value(toml_value(text)?)?;
    config.base_dir = base_dir.to_path_buf();
    config.validate()
}

/// The TOML text as a JSON value, so that serde_path_to_error can name the key of any problem
/// (the config crate's own deserializer loses it inside tagged enums).
fn toml_value(text: &str) -> Result<serde_json::Value> {
    config::Config::builder()
        .add_source(config::File::from_str(text, config::FileFormat::Toml))
        .build()
        .and_then(|c| c.try_deserialize())
        .map_err(|e| ConfigError::Read {
            path: PathBuf::from("<inline>"),
            message: one_line(&e.to_string()),
        })
}

fn from_value(value: serde_json::Value) -> Result<Config> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let key = key_of(e.path());
        ConfigError::Invalid(vec![Problem::new(key, e.into_inner().to_string())])
    })
}

/// The dotted key of `path` as TOML writes it: a part that is not a bare key (empty, with a
/// space, a dot or a quote) quoted, so that `"" = 1` or `sinks.k.properties."linger.ms"` still
/// name a key one can find (the path's own display would print nothing, or split the name).
fn key_of(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut key = String::new();
    for segment in path {
        let part = match segment {
            Segment::Seq { index } => {
                key.push_str(&format!("[{index}]"));
                continue;
            }
            Segment::Map { key } | Segment::Enum { variant: key } => key.as_str(),
            Segment::Unknown => "?",
        };
        if !key.is_empty() {
            key.push('.');
        }
        let bare = !part.is_empty()
            && part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if bare || part == "?" {
            key.push_str(part);
        } else {
            key.push_str(&serde_json::Value::from(part).to_string());
        }
    }
    if key.is_empty() {
        "<root>".to_string()
    } else {
        key
    }
}

/// The TOML parser's multi-line report (with a source excerpt) as one line: position and reason.
fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.contains('|') && !l.starts_with("in "))
        .collect::<Vec<_>>()
        .join(": ")
}

fn known<'a>(names: impl Iterator<Item = &'a String>) -> String {
    let names: Vec<_> = names.map(|n| format!("`{n}`")).collect();
    if names.is_empty() {
        " (none are defined)".into()
    } else {
        format!(" (defined: {})", names.join(", "))
    }
}

/// A duration such as `"250ms"`, `"2s"`, `"1m 30s"`.
pub fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text).map_err(|e| {
        serde::de::Error::custom(format!(
            "`{text}` is not a duration ({e}); write e.g. \"250ms\", \"2s\", \"1m\""
        ))
    })
}

/// A size such as `"32MiB"`, `"512 KiB"`, `"1GB"`, or a plain number of bytes.
pub fn byte_size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    struct V;
    impl serde::de::Visitor<'_> for V {
        type Value = u64;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a size such as \"64MiB\" or a number of bytes")
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<u64, E> {
            Ok(v)
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<u64, E> {
            u64::try_from(v).map_err(|_| E::custom(format!("`{v}` is not a size: it is negative")))
        }
        fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<u64, E> {
            text.trim()
                .parse::<bytesize::ByteSize>()
                .map(|s| s.as_u64())
                .map_err(|e| {
                    E::custom(format!(
                        "`{text}` is not a size ({e}); write e.g. \"64MiB\", \"512KiB\""
                    ))
                })
        }
    }
    d.deserialize_any(V)
}

/// An optional [`byte_size`].
pub fn optional_byte_size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    byte_size(d).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(text: &str) -> Problem {
        match from_value(toml_value(text).unwrap()) {
            Err(ConfigError::Invalid(mut p)) if p.len() == 1 => p.remove(0),
            other => panic!("{text}: {other:?}"),
        }
    }

    #[test]
    fn a_key_that_is_not_bare_is_quoted_so_the_problem_names_it() {
        assert_eq!(problem("\"\" = 1").key, "\"\"");
        assert_eq!(problem("\" \" = 1").key, "\" \"");
        assert_eq!(
            problem("[sources.\"a.b\"]\nkind = \"x\"").key,
            "sources.\"a.b\".kind"
        );
        assert_eq!(
            problem("[functions.f]\ncomponent = \"f\"\n\"t\\n\" = 1").key,
            "functions.f.\"t\\n\""
        );
        assert_eq!(
            problem("[[routes]]\nsource = \"s\"\nfunction = \"f\"\nmax_in_flight = \"x\"").key,
            "routes[0].max_in_flight"
        );
        assert_eq!(problem("[runtime]\nio_thread = 3").key, "runtime.io_thread");
    }
}
