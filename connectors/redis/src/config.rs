//! `data_sources.<name>` with `kind = "redis"` in fnmill.toml.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use std::fmt;

use serde::Deserialize;

use crate::RedisPoolConfig;

/// A Redis data source: a pool of connections serving the key-value buckets defined on it.
///
/// The URL is a secret, given as exactly one of `url`, `url_env` or `url_file`, as for
/// PostgreSQL; it is never logged.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]`.
    #[serde(default)]
    pub url: Option<Secret>,
    /// Environment variable that holds the URL.
    #[serde(default)]
    pub url_env: Option<String>,
    /// File that holds the URL. Relative to the config file.
    #[serde(default)]
    pub url_file: Option<PathBuf>,
    /// Connections the pool may open. Each is multiplexed (many commands in flight at once), so
    /// a few serve thousands of instances.
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    /// Longest a call waits for a free connection.
    #[serde(default = "default_wait_timeout", with = "humantime_serde")]
    pub wait_timeout: Duration,
    /// Longest time to open a connection.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Longest one command may take, waiting for a connection included; then the function gets
    /// `unavailable` (retryable).
    #[serde(default = "default_command_timeout", with = "humantime_serde")]
    pub command_timeout: Duration,
    /// Buckets served by this data source, by name: what functions open with
    /// `keyvalue.open(name)` and are granted with `functions.<f>.buckets`. Bucket names are
    /// unique across all data sources.
    #[serde(default)]
    pub buckets: BTreeMap<String, BucketConfig>,
}

/// A bucket: a key prefix.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BucketConfig {
    /// Prepended to every key of the bucket, e.g. `"orders:dedup:"`. Buckets with distinct
    /// prefixes never see each other's keys.
    pub prefix: String,
}

/// Multiplexed connections rarely need more than a few.
fn default_pool_size() -> usize {
    4
}

fn default_wait_timeout() -> Duration {
    Duration::from_secs(2)
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(2)
}

/// Redis answers in well under a millisecond; a second means it is gone.
fn default_command_timeout() -> Duration {
    Duration::from_secs(1)
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

impl RedisConfig {
    /// The pool settings, with the URL read from wherever the config says.
    pub fn pool_config(&self, base_dir: &std::path::Path) -> Result<RedisPoolConfig, FieldError> {
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
        Ok(RedisPoolConfig {
            url,
            pool_size: self.pool_size,
            wait_timeout: self.wait_timeout,
            connect_timeout: self.connect_timeout,
            command_timeout: self.command_timeout,
        })
    }
}

// The same rules as the PostgreSQL data source (kept in step with connectors/postgres).
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
