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
use std::sync::Arc;
use std::time::Duration;

use deadpool_redis::redis::{self, AsyncCommands, ErrorKind, RedisError};
use deadpool_redis::{Pool, PoolError, Runtime, Timeouts};
use fnmill_connector_api::Problem;
use fnmill_connector_api::capability::kv;
pub use fnmill_connector_api::capability::kv::KvError;
use fnmill_connector_api::connection::SecretUrl;
use futures::future::BoxFuture;

/// Keys returned by one `SCAN` round trip, a hint to the server (it may return more or fewer).
const SCAN_COUNT: usize = 100;

/// Settings of one pool.
#[derive(Clone)]
pub struct RedisPoolConfig {
    /// A `redis://` or `rediss://` URL. Secret: never logged.
    pub url: SecretUrl,
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
    /// For a `rediss://` URL: a PEM client certificate and its key, for a server that verifies
    /// its clients (`tls-auth-clients yes`).
    pub tls_client: Option<(PathBuf, PathBuf)>,
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
            .field("tls_client", &self.tls_client)
            .finish()
    }
}

/// A pool of connections to one Redis server.
#[derive(Clone)]
pub struct RedisPool {
    pool: Pool,
    command_timeout: Duration,
    url: Arc<SecretUrl>,
}

impl fmt::Debug for RedisPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisPool")
            .field("status", &self.pool.status())
            .finish()
    }
}

impl RedisPool {
    /// Creates the pool; no connection is opened until the first command. Errors name the
    /// config key and never quote the URL.
    pub fn new(config: &RedisPoolConfig) -> Result<Self, Problem> {
        let mut url = config.url.clone();
        let info = redis::IntoConnectionInfo::into_connection_info(url.expose()).map_err(|e| {
            Problem::new("url", url.redact(&format!("is not a valid Redis URL: {e}")))
        })?;
        if let Some(p) = &info.redis.password {
            url.add_secret(p.clone());
        }
        let tls = matches!(info.addr, redis::ConnectionAddr::TcpTls { .. });
        let read = |path: &PathBuf, key: &str| {
            std::fs::read(path)
                .map_err(|e| Problem::new(key, format!("cannot be read: {}: {e}", path.display())))
        };
        let info = match (&config.tls_ca_file, &config.tls_client, tls) {
            (None, None, _) => info,
            // `rediss://` verifies the server's certificate and host name: against these
            // authorities, or (without a file) the system's roots.
            (ca, client, true) => {
                let certs = redis::TlsCertificates {
                    client_tls: match client {
                        None => None,
                        Some((cert, key)) => Some(redis::ClientTlsConfig {
                            client_cert: read(cert, "tls_cert_file")?,
                            client_key: read(key, "tls_key_file")?,
                        }),
                    },
                    root_cert: ca.as_ref().map(|p| read(p, "tls_ca_file")).transpose()?,
                };
                redis::Client::build_with_tls(info, certs)
                    .map_err(|e| {
                        let key = if ca.is_some() {
                            "tls_ca_file"
                        } else {
                            "tls_cert_file"
                        };
                        Problem::new(key, url.redact(&format!("cannot be used: {e}")))
                    })?
                    .get_connection_info()
                    .clone()
            }
            (ca, _, false) => {
                let key = if ca.is_some() {
                    "tls_ca_file"
                } else {
                    "tls_cert_file"
                };
                return Err(Problem::new(
                    key,
                    "is set, but the URL is not rediss:// (TLS)",
                ));
            }
        };
        // The manager takes redis' own connection info, TLS parameters included.
        let manager = deadpool_redis::Manager::new(info)
            .map_err(|e| Problem::new("url", url.redact(&format!("cannot build the pool: {e}"))))?;
        let pool = Pool::builder(manager)
            .max_size(config.pool_size)
            .timeouts(Timeouts {
                wait: Some(config.wait_timeout),
                create: Some(config.connect_timeout),
                recycle: Some(config.connect_timeout),
            })
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| Problem::new("pool_size", format!("cannot build the pool: {e}")))?;
        Ok(Self {
            pool,
            command_timeout: config.command_timeout,
            url: Arc::new(url),
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
        self.url.redact(text)
    }
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

impl kv::Bucket for Bucket {
    fn get(&self, key: String) -> BoxFuture<'static, Result<Option<Vec<u8>>, KvError>> {
        let b = self.clone();
        Box::pin(async move { Bucket::get(&b, &key).await })
    }

    fn set(&self, key: String, value: Vec<u8>) -> BoxFuture<'static, Result<(), KvError>> {
        let b = self.clone();
        Box::pin(async move { Bucket::set(&b, &key, &value).await })
    }

    fn delete(&self, key: String) -> BoxFuture<'static, Result<(), KvError>> {
        let b = self.clone();
        Box::pin(async move { Bucket::delete(&b, &key).await })
    }

    fn exists(&self, key: String) -> BoxFuture<'static, Result<bool, KvError>> {
        let b = self.clone();
        Box::pin(async move { Bucket::exists(&b, &key).await })
    }

    fn list_keys(
        &self,
        cursor: Option<u64>,
    ) -> BoxFuture<'static, Result<(Vec<String>, Option<u64>), KvError>> {
        let b = self.clone();
        Box::pin(async move { Bucket::list_keys(&b, cursor).await })
    }

    fn increment(&self, key: String, delta: i64) -> BoxFuture<'static, Result<i64, KvError>> {
        let b = self.clone();
        Box::pin(async move { Bucket::increment(&b, &key, delta).await })
    }
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
            url: SecretUrl::new(url.into()),
            pool_size: 1,
            wait_timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(1),
            command_timeout: Duration::from_secs(1),
            tls_ca_file: tls_ca_file.map(PathBuf::from),
            tls_client: None,
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
        assert_eq!(missing.key, "tls_ca_file");
        assert!(missing.message.contains("/nonexistent/ca.pem"), "{missing}");
        assert!(!missing.to_string().contains("hunter2"), "{missing}");
    }
}
