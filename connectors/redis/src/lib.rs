//! Redis pools for fnmill's key-value capability.
//!
//! A [`RedisPool`] is a bounded pool of connections (deadpool-redis) to one Redis server. A
//! bucket is a key prefix: [`RedisPool::bucket`] gives a [`Bucket`] whose keys are stored as
//! `prefix + key`, so buckets of different functions on one server never see each other's keys.
//!
//! Errors say whether retrying may help: an unreachable server, a dropped connection, an
//! exhausted pool or a command that did not answer within `command_timeout` is
//! [`KvError::Unavailable`]; what the server refuses is [`KvError::Other`].
//!
//! The crate knows nothing about wasm. Its futures must run on a tokio runtime; the pool's
//! connection tasks live on the runtime that first needed them — fnmill's IO runtime.

pub mod config;

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use deadpool_redis::redis::{self, AsyncCommands, ErrorKind, RedisError};
use deadpool_redis::{Pool, PoolError, Runtime, Timeouts};

/// Keys returned by one `SCAN` round trip, a hint to the server (it may return more or fewer).
const SCAN_COUNT: usize = 100;

/// Why a key-value operation failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    /// The server could not be reached or did not answer in time, or the pool was exhausted.
    /// Transient.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The server refused the command (e.g. `increment` of a value that is not an integer).
    #[error("{0}")]
    Other(String),
}

impl KvError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, KvError::Unavailable(_))
    }
}

/// Settings of one pool.
#[derive(Clone)]
pub struct RedisPoolConfig {
    /// A `redis://` or `rediss://` URL. Secret: never logged.
    pub url: String,
    /// Connections the pool may open. Each is multiplexed, so a few serve many callers.
    pub pool_size: usize,
    /// Longest wait for a free connection.
    pub wait_timeout: Duration,
    /// Longest time to open a connection.
    pub connect_timeout: Duration,
    /// Longest time one command may take, connection checkout included.
    pub command_timeout: Duration,
    /// For a `rediss://` URL: a PEM file of the certificate authorities that may sign the
    /// server's certificate; `None` = the operating system's trusted roots.
    pub tls_ca_file: Option<PathBuf>,
}

impl fmt::Debug for RedisPoolConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisPoolConfig")
            .field("url", &"<redacted>")
            .field("pool_size", &self.pool_size)
            .field("wait_timeout", &self.wait_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("command_timeout", &self.command_timeout)
            .field("tls_ca_file", &self.tls_ca_file)
            .finish()
    }
}

/// Why a pool could not be created. Never contains the URL.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

/// A pool of connections to one Redis server.
#[derive(Clone)]
pub struct RedisPool {
    pool: Pool,
    command_timeout: Duration,
    secrets: Vec<String>,
}

impl fmt::Debug for RedisPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisPool")
            .field("status", &self.pool.status())
            .finish()
    }
}

impl RedisPool {
    /// Creates the pool; no connection is opened until the first command.
    pub fn new(config: &RedisPoolConfig) -> Result<Self, ConfigError> {
        let mut secrets = vec![config.url.clone()];
        let info = redis::IntoConnectionInfo::into_connection_info(config.url.as_str())
            .map_err(|e| ConfigError(redact(&format!("not a valid Redis URL: {e}"), &secrets)))?;
        if let Some(p) = &info.redis.password
            && p.len() >= 3
        {
            secrets.push(p.clone());
        }
        let tls = matches!(info.addr, redis::ConnectionAddr::TcpTls { .. });
        let info = match (&config.tls_ca_file, tls) {
            // `rediss://` verifies the server's certificate and host name: against these
            // authorities, or (without a file) the system's roots.
            (Some(path), true) => {
                let root_cert = std::fs::read(path)
                    .map_err(|e| ConfigError(format!("tls_ca_file {}: {e}", path.display())))?;
                let certs = redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(root_cert),
                };
                redis::Client::build_with_tls(info, certs)
                    .map_err(|e| {
                        ConfigError(redact(
                            &format!("tls_ca_file {}: {e}", path.display()),
                            &secrets,
                        ))
                    })?
                    .get_connection_info()
                    .clone()
            }
            (Some(_), false) => {
                return Err(ConfigError(
                    "tls_ca_file is set but the URL is not rediss:// (TLS)".into(),
                ));
            }
            (None, _) => info,
        };
        // The manager takes redis' own connection info, TLS parameters included.
        let manager = deadpool_redis::Manager::new(info)
            .map_err(|e| ConfigError(redact(&format!("cannot build the pool: {e}"), &secrets)))?;
        let pool = Pool::builder(manager)
            .max_size(config.pool_size)
            .timeouts(Timeouts {
                wait: Some(config.wait_timeout),
                create: Some(config.connect_timeout),
                recycle: Some(config.connect_timeout),
            })
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| ConfigError(redact(&format!("cannot build the pool: {e}"), &secrets)))?;
        Ok(Self {
            pool,
            command_timeout: config.command_timeout,
            secrets,
        })
    }

    /// The bucket whose keys start with `prefix`.
    pub fn bucket(&self, prefix: impl Into<String>) -> Bucket {
        Bucket {
            pool: self.clone(),
            prefix: prefix.into(),
        }
    }

    /// Runs `op` on a pooled connection within `command_timeout`.
    async fn run<T, F, Fut>(&self, op: F) -> Result<T, KvError>
    where
        F: FnOnce(deadpool_redis::Connection) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        let work = async {
            let conn = self.pool.get().await.map_err(|e| self.pool_error(e))?;
            op(conn).await.map_err(|e| self.error(&e))
        };
        match tokio::time::timeout(self.command_timeout, work).await {
            Ok(result) => result,
            Err(_) => Err(KvError::Unavailable(format!(
                "Redis did not answer within {:?}",
                self.command_timeout
            ))),
        }
    }

    fn pool_error(&self, e: PoolError) -> KvError {
        match e {
            PoolError::Timeout(deadpool_redis::TimeoutType::Wait) => {
                KvError::Unavailable("the pool is exhausted: no connection was free in time".into())
            }
            PoolError::Timeout(_) => KvError::Unavailable("timed out connecting to Redis".into()),
            PoolError::Backend(e) => match self.error(&e) {
                KvError::Other(m) => KvError::Unavailable(format!("cannot connect: {m}")),
                unavailable => unavailable,
            },
            other => KvError::Unavailable(self.redact(&format!("cannot connect: {other}"))),
        }
    }

    fn error(&self, e: &RedisError) -> KvError {
        let transient = e.is_io_error()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || e.is_timeout()
            || matches!(
                e.kind(),
                ErrorKind::TryAgain
                    | ErrorKind::BusyLoadingError
                    | ErrorKind::ClusterDown
                    | ErrorKind::MasterDown
            );
        let message = self.redact(&e.to_string());
        if transient {
            KvError::Unavailable(message)
        } else {
            KvError::Other(message)
        }
    }

    fn redact(&self, text: &str) -> String {
        redact(text, &self.secrets)
    }
}

/// `text` with every occurrence of each secret replaced by `<redacted>`.
fn redact(text: &str, secrets: &[String]) -> String {
    let mut out = text.to_string();
    for s in secrets {
        out = out.replace(s.as_str(), "<redacted>");
    }
    out
}

/// A key prefix on one pool.
#[derive(Clone, Debug)]
pub struct Bucket {
    pool: RedisPool,
    prefix: String,
}

impl Bucket {
    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// The value of `key`, if it exists.
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        let key = self.key(key);
        self.pool
            .run(|mut c| async move { c.get::<_, Option<Vec<u8>>>(key).await })
            .await
    }

    /// Sets `key` to `value`, replacing any value it had.
    pub async fn set(&self, key: &str, value: &[u8]) -> Result<(), KvError> {
        let key = self.key(key);
        self.pool
            .run(|mut c| async move { c.set::<_, _, ()>(key, value).await })
            .await
    }

    /// Deletes `key`; deleting a missing key is not an error.
    pub async fn delete(&self, key: &str) -> Result<(), KvError> {
        let key = self.key(key);
        self.pool
            .run(|mut c| async move { c.del::<_, ()>(key).await })
            .await
    }

    /// Whether `key` exists.
    pub async fn exists(&self, key: &str) -> Result<bool, KvError> {
        let key = self.key(key);
        self.pool
            .run(|mut c| async move { c.exists::<_, bool>(key).await })
            .await
    }

    /// Adds `delta` to the integer at `key` (a missing key counts as 0), atomically, and returns
    /// the new value.
    pub async fn increment(&self, key: &str, delta: i64) -> Result<i64, KvError> {
        let key = self.key(key);
        self.pool
            .run(|mut c| async move { c.incr::<_, _, i64>(key, delta).await })
            .await
    }

    /// One page of the bucket's keys (without the prefix) and the cursor of the next page, `None`
    /// at the end. Start with `cursor = None`. Keys added or removed meanwhile may or may not be
    /// listed; no key present throughout is missed.
    pub async fn list_keys(
        &self,
        cursor: Option<u64>,
    ) -> Result<(Vec<String>, Option<u64>), KvError> {
        let pattern = format!("{}*", glob_escape(&self.prefix));
        let (next, keys): (u64, Vec<String>) = self
            .pool
            .run(|mut c| async move {
                redis::cmd("SCAN")
                    .arg(cursor.unwrap_or(0))
                    .arg("MATCH")
                    .arg(pattern)
                    .arg("COUNT")
                    .arg(SCAN_COUNT)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        let keys = keys
            .into_iter()
            .filter_map(|k| k.strip_prefix(&self.prefix).map(str::to_string))
            .collect();
        Ok((keys, (next != 0).then_some(next)))
    }
}

/// `text` with Redis glob metacharacters escaped, so a prefix matches literally.
fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_match_literally() {
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }

    fn config(url: &str, tls_ca_file: Option<&str>) -> RedisPoolConfig {
        RedisPoolConfig {
            url: url.into(),
            pool_size: 1,
            wait_timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(1),
            command_timeout: Duration::from_secs(1),
            tls_ca_file: tls_ca_file.map(PathBuf::from),
        }
    }

    #[test]
    fn a_bad_url_does_not_echo_the_secret() {
        let err = RedisPool::new(&config("mysql://u:hunter2@h/0", None)).unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn a_ca_file_needs_a_tls_url_and_must_exist() {
        let plain = RedisPool::new(&config("redis://h:6379", Some("/ca.pem"))).unwrap_err();
        assert!(plain.to_string().contains("not rediss://"), "{plain}");
        let missing = RedisPool::new(&config(
            "rediss://u:hunter2@h:6379",
            Some("/nonexistent/ca.pem"),
        ))
        .unwrap_err();
        assert!(
            missing
                .to_string()
                .contains("tls_ca_file /nonexistent/ca.pem"),
            "{missing}"
        );
        assert!(!missing.to_string().contains("hunter2"), "{missing}");
    }
}
