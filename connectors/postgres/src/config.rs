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
        /// `unavailable` (retryable) and that connection is closed, never reused. Default:
        /// `30s`, or `statement_timeout` plus 10 s when that is longer; when set, it must be
        /// longer than `statement_timeout`, so the server's limit fires first.
        #[serde(default, with = "humantime_serde")]
        pub answer_timeout: Option<Duration>,
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
const DEFAULT_ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// What the default answer timeout adds to a `statement_timeout` longer than it, so the server
/// cancels a slow statement (and says so) before fnmill gives up on the connection.
const ANSWER_OVER_STATEMENT: Duration = Duration::from_secs(10);

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
            (
                "answer_timeout",
                self.answer_timeout.unwrap_or(DEFAULT_ANSWER_TIMEOUT),
            ),
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
        if let (Some(statement), Some(answer)) = (self.statement_timeout, self.answer_timeout)
            && statement >= answer
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
            answer_timeout: self.answer_timeout.unwrap_or_else(|| {
                DEFAULT_ANSWER_TIMEOUT
                    .max(self.statement_timeout.unwrap_or_default() + ANSWER_OVER_STATEMENT)
            }),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn config(timeouts: serde_json::Value) -> PostgresConfig {
        let mut fields = serde_json::json!({ "url": "postgres://127.0.0.1/db" });
        fields
            .as_object_mut()
            .unwrap()
            .extend(timeouts.as_object().unwrap().clone());
        serde_json::from_value(fields).unwrap()
    }

    #[test]
    fn the_answer_timeout_defaults_above_a_long_statement_timeout() {
        use serde_json::json;
        let answer = |t| config(t).pool_config().unwrap().answer_timeout;
        assert_eq!(answer(json!({})), Duration::from_secs(30));
        assert_eq!(
            answer(json!({ "statement_timeout": "5s" })),
            Duration::from_secs(30)
        );
        assert_eq!(
            answer(json!({ "statement_timeout": "60s" })),
            Duration::from_secs(70),
            "a config that set a long statement_timeout before this key existed still loads"
        );
        assert_eq!(
            answer(json!({ "answer_timeout": "3s" })),
            Duration::from_secs(3)
        );
        let err = config(json!({ "statement_timeout": "60s", "answer_timeout": "60s" }))
            .pool_config()
            .unwrap_err();
        assert_eq!(err.key, "answer_timeout", "{}", err.message);
    }
}
