//! [`Config::validate`]: every check, before anything starts. Each section of the config checks
//! itself beside its definition (a connector's config in its own crate); this module reaches each
//! through an exhaustive `match` over the kinds, so a new kind cannot be forgotten, and adds the
//! checks that span sections. The result is a [`ValidatedConfig`] — the only thing the wiring
//! accepts — so `fnmill check` and `fnmill run` refuse exactly the same configs, role by role
//! ([`Role`]): a compute process is not asked for a database URL its IO tier holds, nor an IO
//! process for the function components it never runs.

use std::collections::BTreeMap;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fnmill_connector_amqp::DeadLetterMode;
use fnmill_connector_api::connection::Connected;

use super::{
    Config, ConfigError, DataSourceConfig, DestinationConfig, FunctionConfig, Problem, Result,
    Role, RouteConfig, SinkConfig, SourceConfig, known,
};
use crate::host::MAX_GUEST_MEMORY;
use crate::telemetry::settings::TelemetrySettings;

/// The longest backoff a retry may wait: a day is already far beyond anything useful, and
/// refusing more keeps every computation on it far from overflowing.
const MAX_BACKOFF: Duration = Duration::from_secs(24 * 60 * 60);

/// The smallest memory a function can have: one wasm page.
const MIN_MEMORY: u64 = 64 * 1024;

/// A config that passed every check, with every relative path resolved against the config
/// file's folder. Only [`Config::validate`] makes one.
#[derive(Clone, Debug)]
pub struct ValidatedConfig {
    config: Config,
    /// What the process does with it: validated for exactly that.
    role: Role,
    memory_budget: u64,
    /// `[telemetry]` with the `OTEL_*` environment applied.
    telemetry: TelemetrySettings,
    warnings: Vec<Problem>,
}

impl Deref for ValidatedConfig {
    type Target = Config;

    fn deref(&self) -> &Config {
        &self.config
    }
}

impl ValidatedConfig {
    /// Things that will work, but maybe not as the author meant (printed by `check`, logged by
    /// `run`).
    pub fn warnings(&self) -> &[Problem] {
        &self.warnings
    }

    /// The role the config was validated for.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Where traces and metrics go, the `OTEL_*` environment applied.
    pub fn telemetry_settings(&self) -> &TelemetrySettings {
        &self.telemetry
    }

    /// The memory budget of all instances, the default resolved.
    pub fn memory_budget(&self) -> u64 {
        self.memory_budget
    }

    /// The source a route reads (validation made sure it exists).
    pub fn source_of(&self, route: &RouteConfig) -> &SourceConfig {
        &self.config.sources[&route.source]
    }

    /// The function a route runs (validation made sure it exists).
    pub fn function_of(&self, route: &RouteConfig) -> &FunctionConfig {
        &self.config.functions[&route.function]
    }

    /// A validated config for running one function on its own (`fnmill invoke` of a component
    /// file): `function` with the defaults of everything else.
    pub fn for_function(
        name: &str,
        function: FunctionConfig,
        base_dir: &Path,
    ) -> Result<ValidatedConfig> {
        let config = Config {
            functions: BTreeMap::from([(name.to_string(), function)]),
            base_dir: base_dir.to_path_buf(),
            ..Config::default()
        };
        config.validate()
    }
}

/// The default memory budget: three quarters of the machine's memory, leaving the rest to the
/// process's own work and to everything else on the machine.
fn default_memory_budget() -> u64 {
    crate::host::machine_memory().map_or(4 << 30, |m| m / 4 * 3)
}

impl Config {
    /// Resolves every relative path against the config file's folder and runs every check,
    /// reporting every problem, one per key.
    pub fn validate(self) -> Result<ValidatedConfig> {
        self.validate_as(Role::All)
    }

    /// [`Config::validate`] for a process of `role`: the checks of what that role starts.
    pub fn validate_as(mut self, role: Role) -> Result<ValidatedConfig> {
        self.resolve_paths();
        let mut problems = Vec::new();
        let mut warnings = Vec::new();
        let memory_budget = self
            .runtime
            .memory_budget
            .unwrap_or_else(default_memory_budget);
        self.check_runtime(&mut problems, &mut warnings);
        if role.runs_routes() {
            self.check_sources(&mut problems, &mut warnings);
            self.check_sinks(&mut problems);
            self.check_routes(&mut problems);
        }
        self.check_data_sources(role, &mut problems, &mut warnings);
        self.check_functions(role, memory_budget, &mut problems, &mut warnings);
        let telemetry =
            crate::telemetry::settings::resolve(&self.telemetry, &|name| std::env::var(name).ok())
                .unwrap_or_else(|mut p| {
                    problems.append(&mut p);
                    TelemetrySettings::default()
                });
        if problems.is_empty() {
            Ok(ValidatedConfig {
                config: self,
                role,
                memory_budget,
                telemetry,
                warnings,
            })
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }

    /// `path` made absolute against the config file's directory.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        if path.is_absolute() || path.as_os_str().is_empty() {
            path.to_path_buf()
        } else {
            self.base_dir.join(path)
        }
    }

    /// The compiled-component cache directory; `None` when there is nowhere safe to keep one.
    pub fn cache_dir(&self) -> Option<PathBuf> {
        match &self.runtime.cache_dir {
            Some(dir) => Some(self.resolve(dir)),
            None => crate::host::default_cache_dir(),
        }
    }

    /// The one place relative paths are resolved, so nothing after validation needs the config
    /// file's folder.
    fn resolve_paths(&mut self) {
        let base = self.base_dir.clone();
        for source in self.sources.values_mut() {
            match source {
                SourceConfig::File(c) => c.resolve_paths(&base),
                SourceConfig::Amqp(c) => c.resolve_paths(&base),
                SourceConfig::Kafka(c) => c.resolve_paths(&base),
            }
        }
        for sink in self.sinks.values_mut() {
            match sink {
                SinkConfig::File(c) => c.resolve_paths(&base),
                SinkConfig::Amqp(c) => c.resolve_paths(&base),
                SinkConfig::Kafka(c) => c.resolve_paths(&base),
            }
        }
        for ds in self.data_sources.values_mut() {
            match ds {
                DataSourceConfig::Postgres(c) => c.resolve_paths(&base),
                DataSourceConfig::Redis(c) => c.resolve_paths(&base),
            }
            if let Some(remote) = ds.remote_mut() {
                remote.resolve_files(&base);
            }
        }
        let functions: Vec<String> = self.functions.keys().cloned().collect();
        for name in functions {
            let path = self.resolve(&self.functions[&name].component);
            self.functions.get_mut(&name).expect("listed").component = path;
        }
        if let Some(dir) = &self.runtime.cache_dir {
            self.runtime.cache_dir = Some(self.resolve(dir));
        }
    }

    fn check_runtime(&self, problems: &mut Vec<Problem>, warnings: &mut Vec<Problem>) {
        let rt = &self.runtime;
        for (key, n) in [
            ("runtime.io_threads", rt.io_threads),
            ("runtime.compute_threads", rt.compute_threads),
            ("runtime.max_instances", rt.max_instances as usize),
        ] {
            if n == 0 {
                problems.push(Problem::new(key, "must be at least 1"));
            }
        }
        if rt.memory_budget.is_some_and(|b| b < MIN_MEMORY) {
            problems.push(Problem::new(
                "runtime.memory_budget",
                "must be at least 64KiB (one wasm page)",
            ));
        }
        if rt.shutdown_grace.is_zero() {
            warnings.push(Problem::new(
                "runtime.shutdown_grace",
                "is zero: on SIGTERM every event in flight is abandoned at once",
            ));
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.telemetry.log) {
            problems.push(Problem::new(
                "telemetry.log",
                format!("`{}` is not a log filter: {e}", self.telemetry.log),
            ));
        }
        if let Some(listen) = self.admin.listen
            && let Err(e) = std::net::TcpListener::bind(listen)
        {
            problems.push(Problem::new(
                "admin.listen",
                format!("cannot listen on {listen}: {}", crate::io_error(&e)),
            ));
        }
    }

    fn check_sources(&self, problems: &mut Vec<Problem>, warnings: &mut Vec<Problem>) {
        for (name, source) in &self.sources {
            let key = format!("sources.{name}");
            let (found, drain) = match source {
                SourceConfig::File(c) => (c.check(), c.drain_timeout),
                SourceConfig::Amqp(c) => (c.check(), c.drain_timeout),
                SourceConfig::Kafka(c) => (c.check(), c.drain_timeout),
            };
            problems.extend(found.into_iter().map(|p| p.under(&key)));
            if drain > self.runtime.shutdown_grace {
                warnings.push(Problem::new(
                    format!("{key}.drain_timeout"),
                    format!(
                        "{drain:?} is longer than runtime.shutdown_grace ({:?}): on shutdown the \
                         drain is cut short there",
                        self.runtime.shutdown_grace
                    ),
                ));
            }
        }
    }

    fn check_sinks(&self, problems: &mut Vec<Problem>) {
        for (name, sink) in &self.sinks {
            let found = match sink {
                SinkConfig::File(c) => c.check(),
                SinkConfig::Amqp(c) => c.check(),
                SinkConfig::Kafka(c) => c.check(),
            };
            let key = format!("sinks.{name}");
            problems.extend(found.into_iter().map(|p| p.under(&key)));
        }
    }

    fn check_data_sources(
        &self,
        role: Role,
        problems: &mut Vec<Problem>,
        warnings: &mut Vec<Problem>,
    ) {
        let mut bucket_owner: BTreeMap<&String, &String> = BTreeMap::new();
        let mut subject_owner: BTreeMap<&str, &String> = BTreeMap::new();
        for (name, ds) in &self.data_sources {
            let key = format!("data_sources.{name}");
            let remote = ds.remote();
            if let Some(r) = remote {
                if let Some(prev) = subject_owner.insert(&r.subject, name) {
                    problems.push(Problem::new(
                        format!("{key}.remote.subject"),
                        format!(
                            "`{}` is already the subject of data_sources.{prev}; each data \
                             source is served on its own",
                            r.subject
                        ),
                    ));
                }
                if role.uses_remote(true) {
                    let found = fnmill_connector_nats::check(r);
                    problems.extend(found.into_iter().map(|p| p.under(&format!("{key}.remote"))));
                }
            } else if role == Role::Io {
                warnings.push(Problem::new(
                    &key,
                    "has no `remote` table: --role io does not serve it (compute processes keep \
                     its pool in-process)",
                ));
            }
            // A pool this role does not hold is not checked: a compute process need not have
            // the secrets of a database its IO tier serves.
            let holds_pool = role.holds_pool(remote.is_some());
            let found = match ds {
                DataSourceConfig::Postgres(_) if !holds_pool => Vec::new(),
                DataSourceConfig::Postgres(c) => c.check(),
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
                    if holds_pool { c.check() } else { Vec::new() }
                }
            };
            problems.extend(found.into_iter().map(|p| p.under(&key)));
        }
        if role == Role::Io && subject_owner.is_empty() {
            problems.push(Problem::new(
                "data_sources",
                "--role io serves the data sources that have a `remote` table, and none has one",
            ));
        }
    }

    fn check_functions(
        &self,
        role: Role,
        memory_budget: u64,
        problems: &mut Vec<Problem>,
        warnings: &mut Vec<Problem>,
    ) {
        let buckets = self.buckets();
        for (name, f) in &self.functions {
            let key = format!("functions.{name}");
            let mut problem = |k: &str, message: String| {
                problems.push(Problem::new(format!("{key}.{k}"), message));
            };
            // An IO process reads a function's grants only; it never loads its component.
            match std::fs::metadata(&f.component) {
                _ if !role.runs_routes() => {}
                Ok(m) if m.is_file() => {}
                Ok(_) => problem(
                    "component",
                    format!("{} is not a file", f.component.display()),
                ),
                Err(_) => problem(
                    "component",
                    format!("no component file at {}", f.component.display()),
                ),
            }
            if f.memory < MIN_MEMORY {
                problem("memory", "must be at least 64KiB (one wasm page)".into());
            } else if f.memory > MAX_GUEST_MEMORY {
                problem(
                    "memory",
                    "must be at most 4GiB, the most a 32-bit wasm guest can address".into(),
                );
            } else if f.memory > memory_budget {
                problem(
                    "memory",
                    format!(
                        "{} is more than runtime.memory_budget ({}): no instance could ever be \
                         admitted",
                        bytesize::ByteSize(f.memory),
                        bytesize::ByteSize(memory_budget)
                    ),
                );
            }
            if f.timeout.is_zero() {
                problem("timeout", "must be greater than zero".into());
            }
            if f.fuel == Some(0) {
                problem(
                    "fuel",
                    "must be greater than zero (leave it out for no limit)".into(),
                );
            }
            if f.max_reuse == 0 {
                problem("max_reuse", "must be at least 1".into());
            }
            if f.isolation == super::IsolationConfig::Event
                && (f.reuse_max_memory.is_some() || f.max_reuse != super::default_max_reuse())
            {
                problem(
                    "isolation",
                    "is \"event\" (the default), so max_reuse and reuse_max_memory do nothing: \
                     set isolation = \"reuse\" or remove them"
                        .into(),
                );
            }
            if f.max_outputs == 0 {
                problem(
                    "max_outputs",
                    "must be at least 1 (a function with no outputs returns an empty list)".into(),
                );
            }
            for (i, ds) in f.data_sources.iter().enumerate() {
                let k = format!("data_sources[{i}]");
                match self.data_sources.get(ds) {
                    Some(DataSourceConfig::Postgres(_)) => {}
                    Some(DataSourceConfig::Redis(_)) => problem(
                        &k,
                        format!(
                            "`{ds}` is a redis data source; grant its buckets in {key}.buckets"
                        ),
                    ),
                    None => problem(
                        &k,
                        format!(
                            "no postgres data source named `{ds}`{}",
                            known(self.data_sources.keys())
                        ),
                    ),
                }
            }
            for (i, b) in f.buckets.iter().enumerate() {
                if !buckets.contains_key(b) {
                    problem(
                        &format!("buckets[{i}]"),
                        format!("no bucket named `{b}`{}", known(buckets.keys())),
                    );
                }
            }
        }
        let largest = self.functions.values().map(|f| f.memory).max().unwrap_or(0);
        let all = largest.saturating_mul(u64::from(self.runtime.max_instances));
        // With both at their defaults the budget simply does its job; warn when the author
        // chose either and the two disagree.
        let chosen = self.runtime.memory_budget.is_some()
            || self.runtime.max_instances != super::default_max_instances();
        if chosen && largest > 0 && all > memory_budget {
            warnings.push(Problem::new(
                "runtime.max_instances",
                format!(
                    "{} instances of {} each ({}) exceed runtime.memory_budget ({}): at most {} \
                     instances of the largest function run at once, and events wait for room",
                    self.runtime.max_instances,
                    bytesize::ByteSize(largest),
                    bytesize::ByteSize(all),
                    bytesize::ByteSize(memory_budget),
                    memory_budget / largest
                ),
            ));
        }
    }

    fn check_routes(&self, problems: &mut Vec<Problem>) {
        if self.routes.is_empty() && !self.sources.is_empty() {
            problems.push(Problem::new(
                "routes",
                "sources are defined but no route reads them",
            ));
        }
        let mut route_names = BTreeMap::new();
        let mut sources_used = BTreeMap::new();
        for (i, r) in self.routes.iter().enumerate() {
            let key = format!("routes[{i}]");
            if let Some(prev) = route_names.insert(r.name(), i) {
                problems.push(Problem::new(
                    format!("{key}.name"),
                    format!("`{}` is already the name of routes[{prev}]", r.name()),
                ));
            }
            match self.sources.get(&r.source) {
                None => problems.push(Problem::new(
                    format!("{key}.source"),
                    format!(
                        "no source named `{}`{}",
                        r.source,
                        known(self.sources.keys())
                    ),
                )),
                Some(source) => {
                    // The broker's dead-letter exchange and the route's would both get the event.
                    if let SourceConfig::Amqp(c) = source
                        && c.dead_letter == DeadLetterMode::Broker
                        && r.dead_letter.is_some()
                    {
                        problems.push(Problem::new(
                            format!("{key}.dead_letter"),
                            format!(
                                "source `{}` has `dead_letter = \"broker\"` (the queue's own \
                                 dead-letter exchange); remove one of the two",
                                r.source
                            ),
                        ));
                    }
                    self.check_feedback(&key, source, r, problems);
                }
            }
            if let Some(prev) = sources_used.insert(&r.source, i) {
                problems.push(Problem::new(
                    format!("{key}.source"),
                    format!(
                        "source `{}` is already read by routes[{prev}]; a source feeds one route",
                        r.source
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
                self.check_sink(problems, format!("{key}.destinations.{dest}"), d);
            }
            if let Some(d) = &r.dead_letter {
                self.check_sink(problems, format!("{key}.dead_letter"), d);
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
            for (k, d) in [
                ("initial_backoff", retry.initial_backoff),
                ("max_backoff", retry.max_backoff),
            ] {
                if d > MAX_BACKOFF {
                    problems.push(Problem::new(
                        format!("{key}.retry.{k}"),
                        "must be at most 24h",
                    ));
                }
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
    }

    /// A route that writes into the file it reads feeds itself until the disk is full.
    fn check_feedback(
        &self,
        key: &str,
        source: &SourceConfig,
        route: &RouteConfig,
        problems: &mut Vec<Problem>,
    ) {
        let SourceConfig::File(input) = source else {
            return;
        };
        if input.is_stdin() {
            return;
        }
        let input = same_file_key(&input.path);
        let dests = route
            .destinations
            .iter()
            .map(|(name, d)| (format!("{key}.destinations.{name}"), d))
            .chain(
                route
                    .dead_letter
                    .iter()
                    .map(|d| (format!("{key}.dead_letter"), d)),
            );
        for (k, d) in dests {
            if let Some(SinkConfig::File(out)) = self.sinks.get(d.sink())
                && !out.is_stdout()
                && same_file_key(&out.path) == input
            {
                problems.push(Problem::new(
                    k,
                    format!(
                        "sink `{}` writes {}, the file the route reads: it would read its own \
                         output forever",
                        d.sink(),
                        out.path.display()
                    ),
                ));
            }
        }
    }

    /// Every bucket of every redis data source: bucket name → (data source name, prefix).
    pub fn buckets(&self) -> BTreeMap<String, (String, String)> {
        let mut out = BTreeMap::new();
        for (name, ds) in &self.data_sources {
            match ds {
                DataSourceConfig::Redis(c) => {
                    for (bucket, b) in &c.buckets {
                        out.entry(bucket.clone())
                            .or_insert_with(|| (name.clone(), b.prefix.clone()));
                    }
                }
                DataSourceConfig::Postgres(_) => {}
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
}

/// A path as it names a file: its folder canonicalized (the file itself may not exist yet).
fn same_file_key(path: &Path) -> PathBuf {
    if let Ok(p) = path.canonicalize() {
        return p;
    }
    match (path.parent(), path.file_name()) {
        (Some(parent), Some(name)) => parent
            .canonicalize()
            .map(|p| p.join(name))
            .unwrap_or_else(|_| path.to_path_buf()),
        _ => path.to_path_buf(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::ConfigError;

    fn problems(text: &str) -> Vec<String> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f.wasm"), b"").unwrap();
        std::fs::write(dir.path().join("in.jsonl"), b"").unwrap();
        match super::super::from_toml(text, dir.path()) {
            Ok(_) => vec![],
            Err(ConfigError::Invalid(p)) => p.into_iter().map(|p| p.to_string()).collect(),
            Err(e) => vec![e.to_string()],
        }
    }

    /// [`problems`] for a process of `role`.
    fn problems_as(text: &str, role: super::Role) -> Vec<String> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f.wasm"), b"").unwrap();
        let mut config = super::super::from_value(super::super::toml_value(text).unwrap()).unwrap();
        config.base_dir = dir.path().to_path_buf();
        match config.validate_as(role) {
            Ok(_) => vec![],
            Err(ConfigError::Invalid(p)) => p.into_iter().map(|p| p.to_string()).collect(),
            Err(e) => vec![e.to_string()],
        }
    }

    #[test]
    fn each_role_checks_what_it_starts() {
        use super::Role;
        let remote = |subject: &str| {
            format!(
                r#"
                [data_sources.db]
                kind = "postgres"
                url_env = "FNMILL_SURELY_UNSET_VAR"
                remote = {{ url = "nats://127.0.0.1:4222", subject = "{subject}" }}
                [data_sources.kv]
                kind = "redis"
                url = "redis://127.0.0.1:6379"
                buckets = {{ b = {{ prefix = "p:" }} }}
                remote = {{ url = "nats://127.0.0.1:4222", subject = "fnmill.ds.kv" }}
                [functions.f]
                component = "missing.wasm"
                data_sources = ["db"]
                "#
            )
        };
        let text = remote("fnmill.ds.db");
        // The pool's URL is the IO tier's business, the component the compute side's.
        let compute = problems_as(&text, Role::Compute);
        assert_eq!(compute.len(), 1, "{compute:?}");
        assert!(
            compute[0].starts_with("functions.f.component"),
            "{compute:?}"
        );
        let io = problems_as(&text, Role::Io);
        assert_eq!(io.len(), 1, "{io:?}");
        assert!(io[0].starts_with("data_sources.db.url_env"), "{io:?}");
        assert_eq!(problems_as(&text, Role::All).len(), 2);
        // Two data sources on one subject, and a subject with a wildcard.
        let shared = remote("fnmill.ds.kv");
        let p = problems_as(&shared, Role::Compute);
        assert!(
            p.iter().any(|p| p.starts_with("data_sources.kv.remote.subject: `fnmill.ds.kv` is already")),
            "{p:?}"
        );
        let p = problems_as(&remote("fnmill.ds.>"), Role::Compute);
        assert!(
            p.iter()
                .any(|p| p.starts_with("data_sources.db.remote.subject: ")),
            "{p:?}"
        );
        // An IO process with nothing to serve.
        let p = problems_as("[functions.f]\ncomponent = \"f.wasm\"\n", Role::Io);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].starts_with("data_sources: --role io serves"), "{p:?}");
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
    fn a_problem_quoting_a_newline_or_escape_code_stays_one_line() {
        let p = problems("[sources.\"a\\nb\"]\nkind = \"file\"\npath = \"\"\n");
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(
            p[0].starts_with("sources.a\\nb.path: must not be empty"),
            "{p:?}"
        );
        let p = problems("[functions.f]\ncomponent = \"f.wasm\"\ntimeout = \"1\\u001b[31m\"\n");
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].starts_with("functions.f.timeout: `1\\u{1b}[31m`"),
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
            p[0].starts_with("sinks.k.secret_properties.\"sasl.password\": "),
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
        assert!(p[0].starts_with("sinks.r.url_env: "), "{p:?}");
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
            p[0].starts_with("sinks.r.tls_ca_file: cannot be read")
                && p[0].contains("no-such-ca.pem"),
            "{p:?}"
        );
        let p = sink("tls_cert_file = \"client.pem\"");
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].contains("tls_cert_file: needs `tls_key_file`"),
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
