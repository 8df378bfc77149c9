//! `data_sources.<name>` with `kind = "postgres"` in fnmill.toml.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

pub use fnmill_connector_api::secret::{FieldError, Secret, resolve_url};

use crate::PgPoolConfig;

/// A PostgreSQL data source: a pool of connections that functions granted it use through the
/// `sql` capability.
///
/// The connection URL is a secret. Give exactly one of `url` (fine for a local database
/// without a password), `url_env` (the name of an environment variable holding it) or
/// `url_file` (a file holding it, e.g. a mounted Kubernetes secret). It is read at start and
/// never logged; errors that would quote it are redacted.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// `postgres://user:password@host:port/database?...` or a `key=value` connection string.
    #[serde(default)]
    pub url: Option<Secret>,
    /// Environment variable that holds the URL.
    #[serde(default)]
    pub url_env: Option<String>,
    /// File that holds the URL (surrounding whitespace is ignored). Relative to the config file.
    #[serde(default)]
    pub url_file: Option<PathBuf>,
    /// Connections the pool may open. Size it for the database, not for the number of function
    /// instances: callers beyond it wait for a free connection.
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    /// Longest a call waits for a free connection; then the function gets `unavailable`
    /// (retryable), e.g. `"2s"`.
    #[serde(default = "default_wait_timeout", with = "humantime_serde")]
    pub wait_timeout: Duration,
    /// Longest time to open a connection.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Server-side limit on each statement (PostgreSQL's `statement_timeout`); unset = the
    /// server's setting.
    #[serde(default, with = "humantime_serde")]
    pub statement_timeout: Option<Duration>,
    /// `application_name` of fnmill's connections, as seen in `pg_stat_activity`.
    #[serde(default = "default_application_name")]
    pub application_name: String,
    /// With `sslmode=require` in the URL: a PEM file of the certificate authorities that may
    /// sign the server's certificate (e.g. a cloud provider's CA bundle). Without it, the
    /// operating system's trusted roots. Relative to the config file. The server certificate
    /// must also name the host in the URL.
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
}

/// PostgreSQL's default `max_connections` is 100; a handful of replicas with 10 each leave room
/// for everything else.
fn default_pool_size() -> usize {
    10
}

/// Well under a function's default 5 s timeout, so a starved call fails as retryable rather
/// than as a timeout.
fn default_wait_timeout() -> Duration {
    Duration::from_secs(2)
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_application_name() -> String {
    "fnmill".into()
}

impl PostgresConfig {
    /// The pool settings, with the URL read from wherever the config says. `base_dir` resolves a
    /// relative `url_file`.
    pub fn pool_config(&self, base_dir: &std::path::Path) -> Result<PgPoolConfig, FieldError> {
        if self.pool_size == 0 {
            return Err(FieldError {
                field: "pool_size",
                message: "must be at least 1".into(),
            });
        }
        let url = resolve_url(
            self.url.as_ref(),
            self.url_env.as_deref(),
            self.url_file.as_deref(),
            base_dir,
        )?;
        Ok(PgPoolConfig {
            url,
            pool_size: self.pool_size,
            wait_timeout: self.wait_timeout,
            connect_timeout: self.connect_timeout,
            statement_timeout: self.statement_timeout,
            application_name: self.application_name.clone(),
            tls_ca_file: self.tls_ca_file.as_ref().map(|p| base_dir.join(p)),
        })
    }
}
