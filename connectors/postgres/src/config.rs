//! `data_sources.<name>` with `kind = "postgres"` in fnmill.toml.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

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

/// A configuration value that is never printed.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A problem with a data-source config: the field it is about and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: &'static str,
    pub message: String,
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
        })
    }
}

/// Reads a secret URL from exactly one of `url`, `url_env`, `url_file`. Messages never contain
/// the secret.
pub fn resolve_url(
    url: Option<&Secret>,
    url_env: Option<&str>,
    url_file: Option<&std::path::Path>,
    base_dir: &std::path::Path,
) -> Result<String, FieldError> {
    let given = [url.is_some(), url_env.is_some(), url_file.is_some()]
        .iter()
        .filter(|g| **g)
        .count();
    if given != 1 {
        return Err(FieldError {
            field: "url",
            message: format!("give exactly one of `url`, `url_env`, `url_file` ({given} given)"),
        });
    }
    if let Some(url) = url {
        return Ok(url.0.clone());
    }
    if let Some(var) = url_env {
        return match std::env::var(var) {
            Ok(v) if !v.trim().is_empty() => Ok(v.trim().to_string()),
            _ => Err(FieldError {
                field: "url_env",
                message: format!("the environment variable `{var}` is not set or empty"),
            }),
        };
    }
    let path = url_file.expect("one of the three is set");
    let path = if path.is_absolute() {
        path.to_path_buf()
    } else {
        base_dir.join(path)
    };
    match std::fs::read_to_string(&path) {
        Ok(v) if !v.trim().is_empty() => Ok(v.trim().to_string()),
        Ok(_) => Err(FieldError {
            field: "url_file",
            message: format!("{} is empty", path.display()),
        }),
        Err(e) => Err(FieldError {
            field: "url_file",
            message: format!("cannot read {}: {e}", path.display()),
        }),
    }
}
