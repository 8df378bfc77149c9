//! `data_sources.<name>` with `kind = "postgres"` in fnmill.toml.

use std::time::Duration;

use fnmill_connector_api::Problem;
use fnmill_connector_api::connection::Connected;
use serde::Deserialize;

use crate::{PgPoolConfig, Tls};

fnmill_connector_api::connection_config! {
    /// A PostgreSQL data source: a pool of connections that functions granted it use through
    /// the `sql` capability.
    #[derive(Clone, Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct PostgresConfig {
        url: "`postgres://user:password@host:port/database?...` or a `key=value` connection \
              string. With `sslmode=require` the connection uses TLS and checks the server's \
              certificate and host name, as libpq's `verify-full` does.",
        /// Connections the pool may open. Size it for the database, not for the number of
        /// function instances: callers beyond it wait for a free connection.
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
        /// Longest a statement may go unanswered from fnmill's side (preparing it included),
        /// e.g. when the connection's network path went silent: the call then fails
        /// `unavailable` (retryable) and that connection is closed, never reused. Longer than
        /// `statement_timeout` when both are set, so the server's limit fires first.
        #[serde(default = "default_answer_timeout", with = "humantime_serde")]
        pub answer_timeout: Duration,
        /// `application_name` of fnmill's connections, as seen in `pg_stat_activity`.
        #[serde(default = "default_application_name")]
        pub application_name: String,
        /// The IO tier that serves this data source over NATS, e.g. `{ url = "nats://nats:4222",
        /// subject = "fnmill.ds.orders_db" }`: with `fnmill run --role compute` calls go there
        /// instead of to a pool of this process; `--role io` holds the pool and serves them;
        /// `--role all` (the default) ignores it.
        #[serde(default)]
        pub remote: Option<fnmill_connector_api::remote::RemoteConfig>,
    }
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

/// Far beyond a function's default 5 s timeout: only a connection that stopped answering
/// reaches it.
fn default_answer_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_application_name() -> String {
    "fnmill".into()
}

impl PostgresConfig {
    /// The pool settings, with the URL read from wherever the config says (relative files
    /// resolved already, see [`Connected::resolve_paths`]). Errors name the key.
    pub fn pool_config(&self) -> Result<PgPoolConfig, Problem> {
        if self.pool_size == 0 {
            return Err(Problem::new("pool_size", "must be at least 1"));
        }
        for (key, d) in [
            ("wait_timeout", self.wait_timeout),
            ("connect_timeout", self.connect_timeout),
            ("answer_timeout", self.answer_timeout),
        ] {
            if d.is_zero() {
                return Err(Problem::new(key, "must be greater than zero"));
            }
        }
        if self.statement_timeout.is_some_and(|d| d.is_zero()) {
            return Err(Problem::new(
                "statement_timeout",
                "must be greater than zero (leave it out for the server's setting)",
            ));
        }
        if let Some(statement) = self.statement_timeout
            && statement >= self.answer_timeout
        {
            return Err(Problem::new(
                "answer_timeout",
                format!(
                    "must be longer than statement_timeout ({statement:?}), so that the server \
                     ends a slow statement before fnmill gives up on its connection"
                ),
            ));
        }
        let connection = self.connection();
        let url = connection.url(None)?;
        let tls = connection.tls()?;
        Ok(PgPoolConfig {
            url,
            pool_size: self.pool_size,
            wait_timeout: self.wait_timeout,
            connect_timeout: self.connect_timeout,
            statement_timeout: self.statement_timeout,
            answer_timeout: self.answer_timeout,
            application_name: self.application_name.clone(),
            tls: Tls {
                ca_file: tls.ca.map(Into::into),
                client: tls.client.map(|(c, k)| (c.into(), k.into())),
            },
        })
    }

    /// Everything that would keep the pool from being built, each naming its key: the URL
    /// (read and parsed, never quoted), the pool size and timeouts, the TLS files.
    pub fn check(&self) -> Vec<Problem> {
        match self.pool_config() {
            Err(p) => vec![p],
            Ok(config) => crate::PgPool::new(&config).err().into_iter().collect(),
        }
    }
}
