//! `data_sources.<name>` with `kind = "redis"` in fnmill.toml.

use std::collections::BTreeMap;
use std::time::Duration;

use fnmill_connector_api::Problem;
use fnmill_connector_api::connection::Connected;
use serde::Deserialize;

use crate::RedisPoolConfig;

fnmill_connector_api::connection_config! {
    /// A Redis data source: a pool of connections serving the key-value buckets defined on it.
    #[derive(Clone, Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct RedisConfig {
        url: "`redis://[user:password@]host:port[/db]`, or `rediss://…` for TLS (the server's \
              certificate and host name are checked).",
        /// Connections the pool may open. Each is multiplexed (many commands in flight at once),
        /// so a few serve thousands of instances.
        #[serde(default = "default_pool_size")]
        pub pool_size: usize,
        /// Longest a call waits for a free connection.
        #[serde(default = "default_wait_timeout", with = "humantime_serde")]
        pub wait_timeout: Duration,
        /// Longest time to open a connection.
        #[serde(default = "default_connect_timeout", with = "humantime_serde")]
        pub connect_timeout: Duration,
        /// Longest one command may take, waiting for a connection included; then the function
        /// gets `unavailable` (retryable).
        #[serde(default = "default_command_timeout", with = "humantime_serde")]
        pub command_timeout: Duration,
        /// Buckets served by this data source, by name: what functions open with
        /// `keyvalue.open(name)` and are granted with `functions.<f>.buckets`. Bucket names are
        /// unique across all data sources.
        #[serde(default)]
        pub buckets: BTreeMap<String, BucketConfig>,
        /// The IO tier that serves this data source over NATS, e.g. `{ url = "nats://nats:4222",
        /// subject = "fnmill.ds.orders_db" }`: with `fnmill run --role compute` calls go there
        /// instead of to a pool of this process; `--role io` holds the pool and serves them;
        /// `--role all` (the default) ignores it.
        #[serde(default)]
        pub remote: Option<fnmill_connector_api::remote::RemoteConfig>,
    }
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
    /// The pool settings, with the URL read from wherever the config says (relative files
    /// resolved already). Errors name the key.
    pub fn pool_config(&self) -> Result<RedisPoolConfig, Problem> {
        if self.pool_size == 0 {
            return Err(Problem::new("pool_size", "must be at least 1"));
        }
        for (key, d) in [
            ("wait_timeout", self.wait_timeout),
            ("connect_timeout", self.connect_timeout),
            ("command_timeout", self.command_timeout),
        ] {
            if d.is_zero() {
                return Err(Problem::new(key, "must be greater than zero"));
            }
        }
        let connection = self.connection();
        let url = connection.url(None)?;
        let tls = connection.tls()?;
        Ok(RedisPoolConfig {
            url,
            pool_size: self.pool_size,
            wait_timeout: self.wait_timeout,
            connect_timeout: self.connect_timeout,
            command_timeout: self.command_timeout,
            tls_ca_file: tls.ca.map(Into::into),
            tls_client: tls.client.map(|(c, k)| (c.into(), k.into())),
        })
    }

    /// Everything that would keep the pool from being built, each naming its key.
    pub fn check(&self) -> Vec<Problem> {
        let mut problems = match self.pool_config() {
            Err(p) => vec![p],
            Ok(config) => crate::RedisPool::new(&config).err().into_iter().collect(),
        };
        for (name, bucket) in &self.buckets {
            if bucket.prefix.is_empty() {
                problems.push(Problem::new(
                    format!("buckets.{name}.prefix"),
                    "must not be empty (a bucket would see every key of the server)",
                ));
            }
        }
        problems
    }
}
