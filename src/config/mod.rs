//! `fnmill.toml`: one file, every key overridable from the environment as
//! `FNMILL__SECTION__KEY` (e.g. `FNMILL__RUNTIME__COMPUTE_THREADS=4`).
//!
//! Loading happens in two steps. [`load`] merges the file and the environment with the `config`
//! crate and deserializes into [`Config`], where unknown keys and malformed values fail with the
//! key's path. [`Config::validate`] then checks what spans keys — routes naming missing sources,
//! functions or sinks, component files that do not exist — and reports every problem, one line
//! each, before anything starts.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fnmill_connector_amqp::{AmqpSinkConfig, AmqpSourceConfig, DeadLetterMode};
use fnmill_connector_file::{FileSinkConfig, FileSourceConfig};
use fnmill_connector_kafka::{KafkaSinkConfig, KafkaSourceConfig};
use fnmill_connector_postgres::config::PostgresConfig;
use fnmill_connector_redis::config::RedisConfig;
use serde::{Deserialize, Deserializer};

/// One configuration problem, naming the key it is about.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct Problem {
    /// Dotted path of the key, e.g. `routes[0].function` or `functions.enrich.timeout`.
    pub key: String,
    pub message: String,
}

impl Problem {
    fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {message}")]
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
fn default_max_instances() -> u32 {
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

/// Logging settings.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Log filter in `RUST_LOG` syntax; the `RUST_LOG` environment variable wins when set.
    #[serde(default = "default_log")]
    pub log: String,
    /// Log format: `text` for people, `json` for log pipelines.
    #[serde(default)]
    pub log_format: LogFormat,
}

fn default_log() -> String {
    "info".into()
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            log: default_log(),
            log_format: LogFormat::default(),
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

/// A source of events. Adding a connector adds one variant here and one arm in `app`.
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

/// A destination for outputs and dead letters.
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
}

/// A data source: a pool of connections on the IO side, served to the functions granted it.
/// Adding a kind adds one variant here and one arm in `app`.
#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum DataSourceConfig {
    /// PostgreSQL, through the `sql` capability.
    Postgres(PostgresConfig),
    /// Redis, through the `keyvalue` capability: its buckets are key prefixes.
    Redis(RedisConfig),
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

/// Enough to keep the compute side busy while some events wait on retries or slow sinks,
/// small enough that redelivery after a crash stays cheap.
fn default_max_in_flight() -> usize {
    1000
}

impl RouteConfig {
    pub fn name(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("{}-{}", self.source, self.function))
    }
}

/// A sink, optionally with a target inside it (a topic, an exchange).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum DestinationConfig {
    /// Just the sink's name.
    Sink(String),
    /// A sink and a target inside it.
    Target {
        sink: String,
        #[serde(default)]
        target: Option<String>,
    },
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
pub fn load(path: &Path) -> Result<Config> {
    load_with_env(path, std::env::vars())
}

/// [`load`] with an explicit environment (for tests).
pub fn load_with_env(
    path: &Path,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Config> {
    if !path.is_file() {
        return Err(ConfigError::Read {
            path: path.to_path_buf(),
            message: "no such file".into(),
        });
    }
    let env: config::Map<String, String> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with("FNMILL__"))
        .collect();
    let merged = config::Config::builder()
        .add_source(config::File::from(path).format(config::FileFormat::Toml))
        .add_source(
            config::Environment::with_prefix("FNMILL")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .source(Some(env)),
        )
        .build()
        .map_err(|e| ConfigError::Read {
            path: path.to_path_buf(),
            message: one_line(&e.to_string()),
        })?;
    // Go through a JSON value so that serde_path_to_error can name the key of any problem,
    // which the config crate's own deserializer loses inside tagged enums.
    let value: serde_json::Value = merged.try_deserialize().map_err(|e| ConfigError::Read {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let mut config = from_value(value)?;
    config.base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    config.validate()?;
    Ok(config)
}

/// Parses a TOML string (no environment); relative paths resolve against `base_dir`.
pub fn from_toml(text: &str, base_dir: &Path) -> Result<Config> {
    let value: serde_json::Value = toml_value(text)?;
    let mut config = from_value(value)?;
    config.base_dir = base_dir.to_path_buf();
    config.validate()?;
    Ok(config)
}

fn toml_value(text: &str) -> Result<serde_json::Value> {
    config::Config::builder()
        .add_source(config::File::from_str(text, config::FileFormat::Toml))
        .build()
        .and_then(|c| c.try_deserialize())
        .map_err(|e| ConfigError::Read {
            path: PathBuf::from("<inline>"),
            message: e.to_string(),
        })
}

fn from_value(value: serde_json::Value) -> Result<Config> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let key = e.path().to_string();
        let key = if key == "." {
            "<root>".to_string()
        } else {
            key
        };
        ConfigError::Invalid(vec![Problem::new(key, e.into_inner().to_string())])
    })
}

impl Config {
    /// Cross-key checks. Every problem found is reported, one per line.
    pub fn validate(&self) -> Result<()> {
        let mut problems = Vec::new();
        let rt = &self.runtime;
        if rt.io_threads == 0 {
            problems.push(Problem::new("runtime.io_threads", "must be at least 1"));
        }
        if rt.compute_threads == 0 {
            problems.push(Problem::new(
                "runtime.compute_threads",
                "must be at least 1",
            ));
        }
        if rt.max_instances == 0 {
            problems.push(Problem::new("runtime.max_instances", "must be at least 1"));
        }
        // Secrets and TLS files of the broker connections: each must be readable now, not at
        // the first connect. Messages name the field, never a value.
        let kafka = |properties, secrets| {
            fnmill_connector_kafka::check_secrets(properties, secrets, &self.base_dir)
                .err()
                .map(|e| e.to_string())
        };
        let amqp = |checked: std::result::Result<(), fnmill_connector_amqp::AmqpError>| {
            checked.err().map(|e| e.to_string())
        };
        let sources = self.sources.iter().map(|(name, source)| {
            let problem = match source {
                SourceConfig::Kafka(c) => kafka(&c.properties, &c.secret_properties),
                SourceConfig::Amqp(c) => amqp(c.check(&self.base_dir)),
                _ => None,
            };
            (format!("sources.{name}"), problem)
        });
        let sinks = self.sinks.iter().map(|(name, sink)| {
            let problem = match sink {
                SinkConfig::Kafka(c) => kafka(&c.properties, &c.secret_properties),
                SinkConfig::Amqp(c) => amqp(c.check(&self.base_dir)),
                _ => None,
            };
            (format!("sinks.{name}"), problem)
        });
        for (key, problem) in sources.chain(sinks) {
            if let Some(message) = problem {
                problems.push(Problem::new(key, message));
            }
        }
        for (name, f) in &self.functions {
            let key = format!("functions.{name}");
            let path = self.resolve(&f.component);
            if !path.is_file() {
                problems.push(Problem::new(
                    format!("{key}.component"),
                    format!("no component file at {}", path.display()),
                ));
            }
            if f.memory < 64 * 1024 {
                problems.push(Problem::new(
                    format!("{key}.memory"),
                    "must be at least 64KiB (one wasm page)",
                ));
            }
            if f.timeout.is_zero() {
                problems.push(Problem::new(format!("{key}.timeout"), "must be above zero"));
            }
            if f.fuel == Some(0) {
                problems.push(Problem::new(format!("{key}.fuel"), "must be above zero"));
            }
            for (i, ds) in f.data_sources.iter().enumerate() {
                match self.data_sources.get(ds) {
                    Some(DataSourceConfig::Postgres(_)) => {}
                    Some(DataSourceConfig::Redis(_)) => problems.push(Problem::new(
                        format!("{key}.data_sources[{i}]"),
                        format!(
                            "`{ds}` is a redis data source; grant its buckets in {key}.buckets"
                        ),
                    )),
                    None => problems.push(Problem::new(
                        format!("{key}.data_sources[{i}]"),
                        format!(
                            "no postgres data source named `{ds}`{}",
                            known(self.data_sources.keys())
                        ),
                    )),
                }
            }
            let buckets = self.buckets();
            for (i, b) in f.buckets.iter().enumerate() {
                if !buckets.contains_key(b) {
                    problems.push(Problem::new(
                        format!("{key}.buckets[{i}]"),
                        format!("no bucket named `{b}`{}", known(buckets.keys())),
                    ));
                }
            }
        }
        let mut bucket_owner: BTreeMap<&String, &String> = BTreeMap::new();
        for (name, ds) in &self.data_sources {
            let key = format!("data_sources.{name}");
            let resolved = match ds {
                DataSourceConfig::Postgres(c) => c
                    .pool_config(&self.base_dir)
                    .err()
                    .map(|e| (e.field, e.message)),
                DataSourceConfig::Redis(c) => {
                    for bucket in c.buckets.keys() {
                        if let Some(prev) = bucket_owner.insert(bucket, name) {
                            problems.push(Problem::new(
                                format!("{key}.buckets.{bucket}"),
                                format!(
                                    "bucket `{bucket}` is already defined by data_sources.{prev}"
                                ),
                            ));
                        }
                    }
                    c.pool_config(&self.base_dir)
                        .err()
                        .map(|e| (e.field, e.message))
                }
            };
            if let Some((field, message)) = resolved {
                problems.push(Problem::new(format!("{key}.{field}"), message));
            }
        }
        if self.routes.is_empty() && !self.sources.is_empty() {
            problems.push(Problem::new(
                "routes",
                "sources are defined but no route reads them",
            ));
        }
        let mut route_names = BTreeMap::new();
        for (i, r) in self.routes.iter().enumerate() {
            let key = format!("routes[{i}]");
            if let Some(prev) = route_names.insert(r.name(), i) {
                problems.push(Problem::new(
                    format!("{key}.name"),
                    format!("`{}` is already the name of routes[{prev}]", r.name()),
                ));
            }
            if !self.sources.contains_key(&r.source) {
                problems.push(Problem::new(
                    format!("{key}.source"),
                    format!(
                        "no source named `{}`{}",
                        r.source,
                        known(self.sources.keys())
                    ),
                ));
            }
            if !self.functions.contains_key(&r.function) {
                problems.push(Problem::new(
                    format!("{key}.function"),
                    format!(
                        "no function named `{}`{}",
                        r.function,
                        known(self.functions.keys())
                    ),
                ));
            }
            for (dest, d) in &r.destinations {
                self.check_sink(&mut problems, format!("{key}.destinations.{dest}"), d);
            }
            if let Some(d) = &r.dead_letter {
                self.check_sink(&mut problems, format!("{key}.dead_letter"), d);
            }
            let retry = &r.retry;
            if retry.max_attempts == 0 {
                problems.push(Problem::new(
                    format!("{key}.retry.max_attempts"),
                    "must be at least 1 (the first attempt counts)",
                ));
            }
            if !(retry.multiplier >= 1.0 && retry.multiplier.is_finite()) {
                problems.push(Problem::new(
                    format!("{key}.retry.multiplier"),
                    "must be a number of at least 1.0",
                ));
            }
            if !(0.0..=1.0).contains(&retry.jitter) {
                problems.push(Problem::new(
                    format!("{key}.retry.jitter"),
                    "must be between 0.0 and 1.0",
                ));
            }
            if retry.max_backoff < retry.initial_backoff {
                problems.push(Problem::new(
                    format!("{key}.retry.max_backoff"),
                    "must not be shorter than initial_backoff",
                ));
            }
            if r.max_in_flight == 0 {
                problems.push(Problem::new(
                    format!("{key}.max_in_flight"),
                    "must be at least 1",
                ));
            }
        }
        let mut sources_used = BTreeMap::new();
        for (i, r) in self.routes.iter().enumerate() {
            // The broker's dead-letter exchange and the route's would both get the event.
            if let Some(SourceConfig::Amqp(c)) = self.sources.get(&r.source)
                && c.dead_letter == DeadLetterMode::Broker
                && r.dead_letter.is_some()
            {
                problems.push(Problem::new(
                    format!("routes[{i}].dead_letter"),
                    format!(
                        "source `{}` has `dead_letter = \"broker\"` (the queue's own dead-letter \
                         exchange); remove one of the two",
                        r.source
                    ),
                ));
            }
            if let Some(prev) = sources_used.insert(&r.source, i) {
                problems.push(Problem::new(
                    format!("routes[{i}].source"),
                    format!(
                        "source `{}` is already read by routes[{prev}]; a source feeds one route",
                        r.source
                    ),
                ));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }

    /// Every bucket of every redis data source: bucket name → (data source name, prefix).
    pub fn buckets(&self) -> BTreeMap<String, (String, String)> {
        let mut out = BTreeMap::new();
        for (name, ds) in &self.data_sources {
            if let DataSourceConfig::Redis(c) = ds {
                for (bucket, b) in &c.buckets {
                    out.entry(bucket.clone())
                        .or_insert_with(|| (name.clone(), b.prefix.clone()));
                }
            }
        }
        out
    }

    fn check_sink(&self, problems: &mut Vec<Problem>, key: String, d: &DestinationConfig) {
        if !self.sinks.contains_key(d.sink()) {
            problems.push(Problem::new(
                key,
                format!("no sink named `{}`{}", d.sink(), known(self.sinks.keys())),
            ));
        }
    }

    /// `path` made absolute against the config file's directory.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.base_dir.join(path)
        }
    }

    /// The compiled-component cache directory.
    pub fn cache_dir(&self) -> PathBuf {
        match &self.runtime.cache_dir {
            Some(dir) => self.resolve(dir),
            None => crate::host::default_cache_dir(),
        }
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
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Bytes(u64),
        Text(String),
    }
    match Size::deserialize(d)? {
        Size::Bytes(n) => Ok(n),
        Size::Text(text) => text
            .trim()
            .parse::<bytesize::ByteSize>()
            .map(|s| s.as_u64())
            .map_err(|e| {
                serde::de::Error::custom(format!(
                    "`{text}` is not a size ({e}); write e.g. \"64MiB\", \"512KiB\""
                ))
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(text: &str) -> Vec<String> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f.wasm"), b"").unwrap();
        std::fs::write(dir.path().join("in.jsonl"), b"").unwrap();
        match from_toml(text, dir.path()) {
            Ok(_) => vec![],
            Err(ConfigError::Invalid(p)) => p.into_iter().map(|p| p.to_string()).collect(),
            Err(e) => vec![e.to_string()],
        }
    }

    const BASE: &str = r#"
        [sources.in]
        kind = "file"
        path = "in.jsonl"
        [sinks.out]
        kind = "file"
        path = "out.jsonl"
        [functions.f]
        component = "f.wasm"
    "#;

    #[test]
    fn a_valid_config_has_no_problems() {
        let text = format!(
            "{BASE}\n[[routes]]\nsource = \"in\"\nfunction = \"f\"\ndestinations = {{ out = \"out\" }}\ndead_letter = {{ sink = \"out\", target = \"dlq\" }}\n"
        );
        assert_eq!(problems(&text), Vec::<String>::new());
    }

    #[test]
    fn unknown_key_is_named() {
        let p = problems("[runtime]\nio_thread = 3\n");
        assert_eq!(p.len(), 1);
        assert!(
            p[0].starts_with("runtime.io_thread: unknown field `io_thread`"),
            "{p:?}"
        );
    }

    #[test]
    fn bad_duration_is_named() {
        let p = problems(&format!(
            "{BASE}\n[functions.g]\ncomponent = \"f.wasm\"\ntimeout = \"soon\"\n"
        ));
        assert!(
            p[0].starts_with("functions.g.timeout: `soon` is not a duration"),
            "{p:?}"
        );
    }

    #[test]
    fn route_to_missing_things_lists_each() {
        let p = problems(&format!(
            "{BASE}\n[[routes]]\nsource = \"nope\"\nfunction = \"g\"\ndestinations = {{ out = \"x\" }}\n"
        ));
        assert_eq!(p.len(), 3, "{p:?}");
        assert!(p[0].starts_with("routes[0].source: no source named `nope`"));
        assert!(p[1].starts_with("routes[0].function: no function named `g`"));
        assert!(p[2].starts_with("routes[0].destinations.out: no sink named `x`"));
    }

    #[test]
    fn an_unreadable_kafka_secret_is_named_without_a_value() {
        let text = format!(
            "{BASE}\n[sinks.k]\nkind = \"kafka\"\nbrokers = \"b:9092\"\ntopic = \"t\"\n\
             properties = {{ \"security.protocol\" = \"sasl_ssl\" }}\n\
             secret_properties = {{ \"sasl.password\" = {{ env = \"FNMILL_SURELY_UNSET_VAR\" }}, \
             \"ssl.key.password\" = {{ file = \"no-such-file\" }} }}\n\
             [[routes]]\nsource = \"in\"\nfunction = \"f\"\ndestinations = {{ out = \"k\" }}\n"
        );
        let p = problems(&text);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].starts_with("sinks.k: `secret_properties.\"sasl.password\"`"),
            "{p:?}"
        );
        assert!(p[0].contains("FNMILL_SURELY_UNSET_VAR"), "{p:?}");
    }

    #[test]
    fn an_amqp_url_from_an_unset_variable_or_from_two_places_is_named() {
        let routes =
            "[[routes]]\nsource = \"in\"\nfunction = \"f\"\ndestinations = { out = \"r\" }\n";
        let unset = format!(
            "{BASE}\n[sinks.r]\nkind = \"amqp\"\nurl_env = \"FNMILL_SURELY_UNSET_VAR\"\n{routes}"
        );
        let p = problems(&unset);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].starts_with("sinks.r: `url_env`"), "{p:?}");
        assert!(p[0].contains("FNMILL_SURELY_UNSET_VAR"), "{p:?}");
        let both = format!(
            "{BASE}\n[sinks.r]\nkind = \"amqp\"\nurl = \"amqp://u:hunter2@h/%2f\"\nurl_env = \"X\"\n{routes}"
        );
        let p = problems(&both);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].contains("exactly one"), "{p:?}");
        assert!(!p[0].contains("hunter2"), "{p:?}");
        // None of them: RabbitMQ's local default, no problem.
        let none = format!("{BASE}\n[sinks.r]\nkind = \"amqp\"\n{routes}");
        assert_eq!(problems(&none), Vec::<String>::new());
    }

    #[test]
    fn amqp_tls_files_are_checked_before_anything_starts() {
        let routes =
            "[[routes]]\nsource = \"in\"\nfunction = \"f\"\ndestinations = { out = \"r\" }\n";
        let sink = |extra: &str| {
            problems(&format!(
                "{BASE}\n[sinks.r]\nkind = \"amqp\"\nurl = \"amqps://u:hunter2@h/%2f\"\n{extra}\n{routes}"
            ))
        };
        let p = sink("tls_ca_file = \"no-such-ca.pem\"");
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].starts_with("sinks.r: `tls_ca_file` cannot be read")
                && p[0].contains("no-such-ca.pem"),
            "{p:?}"
        );
        let p = sink("tls_cert_file = \"client.pem\"");
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].contains("`tls_cert_file` needs `tls_key_file`"),
            "{p:?}"
        );
        assert!(!p[0].contains("hunter2"), "{p:?}");
        let plain = problems(&format!(
            "{BASE}\n[sinks.r]\nkind = \"amqp\"\ntls_ca_file = \"ca.pem\"\n{routes}"
        ));
        assert_eq!(plain.len(), 1, "{plain:?}");
        assert!(plain[0].contains("not amqps://"), "{plain:?}");
    }
}
