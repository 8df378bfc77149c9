//! `data_sources.<name>` with `kind = "redis"` in fnmill.toml.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

pub use fnmill_connector_api::secret::{FieldError, Secret, resolve_url};

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
    /// With a `rediss://` URL: a PEM file of the certificate authorities that may sign the
    /// server's certificate. Without it, the operating system's trusted roots. Relative to the
    /// config file. The certificate must also name the host in the URL.
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
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
            tls_ca_file: self.tls_ca_file.as_ref().map(|p| base_dir.join(p)),
        })
    }
}
