//! PostgreSQL pools for fnmill's `sql` capability.
//!
//! A [`PgPool`] is a bounded pool of connections (deadpool-postgres) to one database, sized for
//! the database and not for the number of callers: thousands of concurrent callers wait for one
//! of `pool_size` connections, at most `wait_timeout` each. Every statement is prepared once per
//! connection and then served from that connection's statement cache. A statement unanswered
//! for `answer_timeout` (its preparation included) fails as unavailable and takes its
//! connection out of the pool: the pool's cheap recycling checks only for a closed socket, so a
//! connection whose network path went silent would otherwise go to the next caller.
//!
//! Values cross this crate's edge as [`Value`]s, a small closed set of types (null, bool, int,
//! float, text, bytes, json, timestamp) converted to and from the PostgreSQL type of each
//! parameter and column. Errors say whether retrying may help ([`SqlError::is_retryable`]):
//! an exhausted pool or a lost connection is transient; an SQL error carries its SQLSTATE.
//! [`PgPool`] implements the `sql` capability's trait ([`SqlSource`]) that the host holds.
//!
//! The crate knows nothing about wasm. Its futures must run on a tokio runtime, and the pool's
//! connection tasks live on the runtime that first needed them — fnmill's IO runtime.

pub mod config;

use std::error::Error as StdError;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use fnmill_connector_api::Problem;
pub use fnmill_connector_api::capability::sql::{Rows, SqlError, SqlSource, Value};
use fnmill_connector_api::connection::SecretUrl;
use fnmill_connector_api::metrics::{Histogram, ObservedPool};
use futures::future::BoxFuture;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_postgres::NoTls;
use tokio_postgres::config::SslMode;
use tokio_postgres::types::{FromSql, IsNull, ToSql, Type, to_sql_checked};
use tokio_postgres_rustls::MakeRustlsConnect;

/// Re-exported so tests and benchmarks can talk to the same database without another dependency.
pub use tokio_postgres;

/// Microseconds between the Unix epoch and PostgreSQL's epoch (2000-01-01 00:00:00 UTC), the
/// origin of PostgreSQL's binary timestamps.
const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;

/// Whether `value` can be sent as a parameter of type `ty`.
fn fits(value: &Value, ty: &Type) -> bool {
    match value {
        Value::Null => true,
        Value::Bool(_) => *ty == Type::BOOL,
        Value::Int(i) => match *ty {
            Type::INT2 => i16::try_from(*i).is_ok(),
            Type::INT4 => i32::try_from(*i).is_ok(),
            Type::OID => u32::try_from(*i).is_ok(),
            Type::INT8 => true,
            _ => false,
        },
        Value::Float(_) => [Type::FLOAT4, Type::FLOAT8].contains(ty),
        Value::Text(_) => is_text(ty),
        Value::Bytes(_) => *ty == Type::BYTEA,
        Value::Json(_) => [Type::JSON, Type::JSONB].contains(ty),
        Value::Timestamp(_) => [Type::TIMESTAMP, Type::TIMESTAMPTZ].contains(ty),
    }
}

fn is_text(ty: &Type) -> bool {
    [
        Type::TEXT,
        Type::VARCHAR,
        Type::BPCHAR,
        Type::NAME,
        Type::UNKNOWN,
    ]
    .contains(ty)
}

type BoxError = Box<dyn StdError + Sync + Send>;

/// A parameter on its way to the server (`Value` is the capability's type, defined in
/// `connectors/api`, so the driver's traits are implemented on this wrapper).
#[derive(Debug)]
struct Param<'a>(&'a Value);

impl ToSql for Param<'_> {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        match self.0 {
            Value::Null => return Ok(IsNull::Yes),
            Value::Bool(b) => out.put_u8(u8::from(*b)),
            Value::Int(i) => match *ty {
                Type::INT2 => out.put_i16(i16::try_from(*i).map_err(|_| range(*i, "smallint"))?),
                Type::INT4 => out.put_i32(i32::try_from(*i).map_err(|_| range(*i, "integer"))?),
                Type::OID => out.put_u32(u32::try_from(*i).map_err(|_| range(*i, "oid"))?),
                _ => out.put_i64(*i),
            },
            Value::Float(f) => match *ty {
                Type::FLOAT4 => out.put_f32(*f as f32),
                _ => out.put_f64(*f),
            },
            Value::Text(s) => out.put_slice(s.as_bytes()),
            Value::Bytes(b) => out.put_slice(b),
            Value::Json(s) => {
                if *ty == Type::JSONB {
                    // jsonb's binary format: a version byte, then the JSON text.
                    out.put_u8(1);
                }
                out.put_slice(s.as_bytes());
            }
            Value::Timestamp(micros) => out.put_i64(
                micros
                    .checked_sub(PG_EPOCH_OFFSET_MICROS)
                    .ok_or("timestamp out of range")?,
            ),
        }
        Ok(IsNull::No)
    }

    fn accepts(_: &Type) -> bool {
        // Checked per value by `fits` before the statement runs, with a clearer message.
        true
    }

    to_sql_checked!();
}

fn range(i: i64, ty: &str) -> BoxError {
    format!("{i} is out of range for {ty}").into()
}

/// A column value on its way from the server.
struct Column(Value);

impl<'a> FromSql<'a> for Column {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Self, BoxError> {
        Ok(Column(match *ty {
            Type::BOOL => Value::Bool(bool::from_sql(ty, raw)?),
            Type::INT2 => Value::Int(i16::from_sql(ty, raw)?.into()),
            Type::INT4 => Value::Int(i32::from_sql(ty, raw)?.into()),
            Type::INT8 => Value::Int(i64::from_sql(ty, raw)?),
            Type::OID => Value::Int(u32::from_sql(ty, raw)?.into()),
            Type::FLOAT4 => Value::Float(f32::from_sql(ty, raw)?.into()),
            Type::FLOAT8 => Value::Float(f64::from_sql(ty, raw)?),
            Type::BYTEA => Value::Bytes(raw.to_vec()),
            Type::JSON => Value::Json(String::from_utf8(raw.to_vec())?),
            Type::JSONB => match raw.split_first() {
                Some((1, text)) => Value::Json(String::from_utf8(text.to_vec())?),
                _ => return Err("unsupported jsonb version".into()),
            },
            Type::TIMESTAMP | Type::TIMESTAMPTZ => {
                let pg = i64::from_sql(&Type::INT8, raw)?;
                Value::Timestamp(pg.saturating_add(PG_EPOCH_OFFSET_MICROS))
            }
            ref t if is_text(t) => Value::Text(String::from_utf8(raw.to_vec())?),
            ref t => {
                return Err(format!(
                    "columns of type {t} are not converted; cast the column in SQL \
                     (e.g. `::text`, `::float8`, `::int8`)"
                )
                .into());
            }
        }))
    }

    fn from_sql_null(_: &Type) -> Result<Self, BoxError> {
        Ok(Column(Value::Null))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

/// Is a SQLSTATE transient? See `SqlError::Database::retryable`.
fn retryable_sqlstate(code: &str) -> bool {
    code.starts_with("40")
        || code.starts_with("08")
        || code.starts_with("53")
        || matches!(code, "57P01" | "57P02" | "57P03")
}

/// TLS files of a pool, for `sslmode=require`.
#[derive(Clone, Debug, Default)]
pub struct Tls {
    /// PEM file of the certificates that may sign the server's certificate; `None` = the
    /// operating system's trusted roots.
    pub ca_file: Option<PathBuf>,
    /// A PEM client certificate (chain) and its key, for a server that verifies its clients.
    pub client: Option<(PathBuf, PathBuf)>,
}

/// Settings of one pool.
#[derive(Clone)]
pub struct PgPoolConfig {
    /// A `postgres://` URL or a `key=value` connection string. Secret: never logged.
    pub url: SecretUrl,
    /// Connections the pool may open.
    pub pool_size: usize,
    /// Longest wait for a free connection before the caller gets [`SqlError::Unavailable`].
    pub wait_timeout: Duration,
    /// Longest time to open a connection.
    pub connect_timeout: Duration,
    /// Server-side limit on each statement (`statement_timeout`); `None` = the server's.
    pub statement_timeout: Option<Duration>,
    /// Longest a statement (its preparation included) may go unanswered; then the call fails
    /// [`SqlError::Unavailable`] and its connection is closed, not returned to the pool.
    pub answer_timeout: Duration,
    /// `application_name` of every connection, so they can be told apart in
    /// `pg_stat_activity`.
    pub application_name: String,
    /// TLS files, used when the URL says `sslmode=require`.
    pub tls: Tls,
}

impl fmt::Debug for PgPoolConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgPoolConfig")
            .field("url", &"<redacted>")
            .field("pool_size", &self.pool_size)
            .field("wait_timeout", &self.wait_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("statement_timeout", &self.statement_timeout)
            .field("answer_timeout", &self.answer_timeout)
            .field("application_name", &self.application_name)
            .field("tls", &self.tls)
            .finish()
    }
}

/// A pool of connections to one PostgreSQL database.
#[derive(Clone)]
pub struct PgPool {
    pool: Pool,
    /// How long getting a connection took (`db.client.connection.wait_time`).
    wait_time: Arc<Histogram>,
    wait_timeout: Duration,
    answer_timeout: Duration,
    url: Arc<SecretUrl>,
}

impl fmt::Debug for PgPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgPool")
            .field("status", &self.pool.status())
            .finish()
    }
}

/// Statistics of a pool, for metrics and tests.
pub use fnmill_connector_api::metrics::PoolStatus;

fn certificates(path: &Path, key: &str) -> Result<Vec<CertificateDer<'static>>, Problem> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            Problem::new(
                key,
                format!("{}: not PEM certificates: {e}", path.display()),
            )
        })?;
    if certs.is_empty() {
        return Err(Problem::new(
            key,
            format!("{} holds no PEM certificate", path.display()),
        ));
    }
    Ok(certs)
}

/// TLS for `sslmode=require`: the server's certificate must chain to `tls.ca_file`'s
/// certificates (or the system's roots) and name the host connected to, as libpq's
/// `verify-full` checks; with `tls.client`, the client presents that certificate.
fn tls_connector(tls: &Tls) -> Result<MakeRustlsConnect, Problem> {
    let mut roots = rustls::RootCertStore::empty();
    match &tls.ca_file {
        Some(path) => {
            for cert in certificates(path, "tls_ca_file")? {
                roots
                    .add(cert)
                    .map_err(|e| Problem::new("tls_ca_file", format!("{}: {e}", path.display())))?;
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                // A malformed system certificate is skipped, as every TLS client does.
                let _ = roots.add(cert);
            }
        }
    }
    if roots.is_empty() {
        return Err(Problem::new(
            "tls_ca_file",
            "sslmode=require, but there is no certificate to verify the server with: set \
             tls_ca_file or install the system's CA certificates",
        ));
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| Problem::new("url", format!("TLS set-up: {e}")))?
    .with_root_certificates(roots);
    let config = match &tls.client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = certificates(cert, "tls_cert_file")?;
            // The error names the file only: its content is a secret.
            let key_der = PrivateKeyDer::from_pem_file(key).map_err(|_| {
                Problem::new(
                    "tls_key_file",
                    format!(
                        "{} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)",
                        key.display()
                    ),
                )
            })?;
            builder.with_client_auth_cert(chain, key_der).map_err(|e| {
                Problem::new("tls_key_file", format!("does not fit tls_cert_file: {e}"))
            })?
        }
    };
    Ok(MakeRustlsConnect::new(config))
}

impl PgPool {
    /// Creates the pool; no connection is opened until the first statement. Errors name the
    /// config key and never quote the URL.
    pub fn new(config: &PgPoolConfig) -> Result<Self, Problem> {
        let mut pg: tokio_postgres::Config = config.url.expose().parse().map_err(|e| {
            Problem::new(
                "url",
                config
                    .url
                    .redact(&format!("is not a valid PostgreSQL URL: {e}")),
            )
        })?;
        pg.application_name(&config.application_name)
            .connect_timeout(config.connect_timeout);
        if let Some(t) = config.statement_timeout {
            pg.options(format!("-c statement_timeout={}", t.as_millis()));
        }
        let mut url = config.url.clone();
        if let Some(p) = pg.get_password()
            && let Ok(p) = std::str::from_utf8(p)
        {
            url.add_secret(p);
        }
        let manager_config = ManagerConfig {
            // A dead connection is noticed by its closed socket; checking each checkout with a
            // round trip would double the latency of short statements.
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = if matches!(pg.get_ssl_mode(), SslMode::Require) {
            let tls = tls_connector(&config.tls)?;
            Manager::from_config(pg, tls, manager_config)
        } else if config.tls.ca_file.is_some() || config.tls.client.is_some() {
            let key = if config.tls.ca_file.is_some() {
                "tls_ca_file"
            } else {
                "tls_cert_file"
            };
            return Err(Problem::new(
                key,
                "is set, but the URL does not ask for TLS (add `sslmode=require`)",
            ));
        } else {
            // `disable`, and `prefer` (the default): plain TCP, as before TLS was supported.
            Manager::from_config(pg, NoTls, manager_config)
        };
        let pool = Pool::builder(manager)
            .max_size(config.pool_size)
            .wait_timeout(Some(config.wait_timeout))
            .create_timeout(Some(config.connect_timeout))
            .recycle_timeout(Some(config.connect_timeout))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| Problem::new("pool_size", format!("cannot build the pool: {e}")))?;
        Ok(Self {
            pool,
            wait_time: Arc::default(),
            wait_timeout: config.wait_timeout,
            answer_timeout: config.answer_timeout,
            url: Arc::new(url),
        })
    }

    /// Runs a statement that returns rows.
    pub async fn query(&self, statement: &str, params: &[Value]) -> Result<Rows, SqlError> {
        let (prepared, rows) = self
            .answered(statement, params, async |client, prepared| {
                client.query(prepared, &as_refs(&as_params(params))).await
            })
            .await?;
        let columns: Vec<String> = prepared
            .columns()
            .iter()
            .map(|c| c.name().to_string())
            .collect();
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let mut values = Vec::with_capacity(columns.len());
            for (i, name) in columns.iter().enumerate() {
                let Column(value) = row
                    .try_get::<_, Column>(i)
                    .map_err(|e| SqlError::Invalid(format!("column `{name}`: {}", cause(&e))))?;
                values.push(value);
            }
            out.push(values);
        }
        Ok(Rows { columns, rows: out })
    }

    /// Runs a statement and returns the number of rows it affected.
    pub async fn execute(&self, statement: &str, params: &[Value]) -> Result<u64, SqlError> {
        let (_, affected) = self
            .answered(statement, params, async |client, prepared| {
                client.execute(prepared, &as_refs(&as_params(params))).await
            })
            .await?;
        Ok(affected)
    }

    /// Takes a connection, prepares `statement` on it (cached per connection), checks `params`
    /// against it and runs `run`, all within `answer_timeout`. A connection that does not answer
    /// in time is taken out of the pool and closed: its socket may be open while nothing comes
    /// back, and the next caller would wait on it again.
    async fn answered<T>(
        &self,
        statement: &str,
        params: &[Value],
        run: impl AsyncFnOnce(
            &deadpool_postgres::Object,
            &tokio_postgres::Statement,
        ) -> Result<T, tokio_postgres::Error>,
    ) -> Result<(tokio_postgres::Statement, T), SqlError> {
        let client = self.client().await?;
        let answer = tokio::time::timeout(self.answer_timeout, async {
            let prepared = client
                .prepare_cached(statement)
                .await
                .map_err(|e| self.error(e))?;
            check_params(prepared.params(), params)?;
            let value = run(&client, &prepared).await.map_err(|e| self.error(e))?;
            Ok((prepared, value))
        })
        .await;
        match answer {
            Ok(result) => result,
            Err(_) => {
                drop(deadpool_postgres::Object::take(client));
                tracing::warn!(
                    after = ?self.answer_timeout,
                    "A database connection did not answer; closed it"
                );
                Err(SqlError::Unavailable(format!(
                    "the database did not answer within {:?} (`answer_timeout`); the connection \
                     was closed",
                    self.answer_timeout
                )))
            }
        }
    }

    /// How many connections are open, idle and awaited.
    pub fn status(&self) -> PoolStatus {
        let s = self.pool.status();
        PoolStatus {
            open: s.size,
            idle: s.available,
            max: s.max_size,
            waiting: s.waiting,
        }
    }

    /// A pooled connection and `statement` prepared on it (once per connection, then cached),
    /// with `params` checked against the statement's parameter types.
    async fn client(&self) -> Result<deadpool_postgres::Object, SqlError> {
        let asked = Instant::now();
        let got = self.pool.get().await;
        self.wait_time.observe(asked.elapsed());
        got.map_err(|e| match e {
            PoolError::Timeout(deadpool_postgres::TimeoutType::Wait) => {
                SqlError::Unavailable(format!(
                    "the pool is exhausted: no connection was free within {:?}",
                    self.wait_timeout
                ))
            }
            PoolError::Timeout(_) => {
                SqlError::Unavailable("timed out connecting to the database".into())
            }
            PoolError::Backend(e) => match self.error(e) {
                // An error while connecting (say, too many connections) is transient here.
                SqlError::Database {
                    sqlstate, message, ..
                } => {
                    SqlError::Unavailable(format!("cannot connect: SQLSTATE {sqlstate}: {message}"))
                }
                other => other,
            },
            other => SqlError::Unavailable(self.redact(&format!("cannot connect: {other}"))),
        })
    }

    /// Classifies a driver error. Whatever is not the server's answer to the statement is a
    /// lost or unusable connection.
    fn error(&self, e: tokio_postgres::Error) -> SqlError {
        if let Some(db) = e.as_db_error() {
            let code = db.code().code();
            let mut message = db.message().to_string();
            if let Some(detail) = db.detail() {
                message.push_str(&format!(" (detail: {detail})"));
            }
            if let Some(hint) = db.hint() {
                message.push_str(&format!(" (hint: {hint})"));
            }
            return SqlError::Database {
                sqlstate: code.to_string(),
                retryable: retryable_sqlstate(code),
                message: self.redact(&message),
            };
        }
        SqlError::Unavailable(self.redact(&format!("connection lost: {}", cause(&e))))
    }

    fn redact(&self, text: &str) -> String {
        self.url.redact(text)
    }
}

impl ObservedPool for PgPool {
    fn status(&self) -> PoolStatus {
        PgPool::status(self)
    }

    fn wait_time(&self) -> &Histogram {
        &self.wait_time
    }
}

impl SqlSource for PgPool {
    fn query(
        &self,
        statement: String,
        params: Vec<Value>,
    ) -> BoxFuture<'static, Result<Rows, SqlError>> {
        let pool = self.clone();
        Box::pin(async move { pool.query(&statement, &params).await })
    }

    fn execute(
        &self,
        statement: String,
        params: Vec<Value>,
    ) -> BoxFuture<'static, Result<u64, SqlError>> {
        let pool = self.clone();
        Box::pin(async move { pool.execute(&statement, &params).await })
    }
}

fn check_params(types: &[Type], params: &[Value]) -> Result<(), SqlError> {
    if types.len() != params.len() {
        return Err(SqlError::Invalid(format!(
            "the statement takes {} parameter(s), {} given",
            types.len(),
            params.len()
        )));
    }
    for (i, (ty, value)) in types.iter().zip(params).enumerate() {
        if !fits(value, ty) {
            return Err(SqlError::Invalid(format!(
                "parameter ${} is of type {ty}; this {} value does not fit (out of range, or cast \
                 the parameter in SQL, e.g. `${}::text`)",
                i + 1,
                value.kind(),
                i + 1
            )));
        }
    }
    Ok(())
}

fn as_params(params: &[Value]) -> Vec<Param<'_>> {
    params.iter().map(Param).collect()
}

fn as_refs<'a>(params: &'a [Param<'a>]) -> Vec<&'a (dyn ToSql + Sync)> {
    params.iter().map(|p| p as &(dyn ToSql + Sync)).collect()
}

/// The error and its sources on one line.
fn cause(e: &dyn StdError) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_codes() {
        assert!(retryable_sqlstate("40001"));
        assert!(retryable_sqlstate("57P01"));
        assert!(retryable_sqlstate("08006"));
        assert!(!retryable_sqlstate("42P01"));
        assert!(!retryable_sqlstate("23505"));
    }

    fn config(url: &str) -> PgPoolConfig {
        PgPoolConfig {
            url: SecretUrl::new(url.into()),
            pool_size: 1,
            wait_timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(1),
            statement_timeout: None,
            answer_timeout: Duration::from_secs(30),
            application_name: "t".into(),
            tls: Tls::default(),
        }
    }

    #[test]
    fn a_bad_url_does_not_echo_the_secret() {
        let err = PgPool::new(&config("postgres://u:hunter2@host:notaport/db")).unwrap_err();
        assert_eq!(err.key, "url");
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn tls_files_that_are_missing_not_pem_or_without_sslmode_are_named() {
        let tls = |ca: &str| Tls {
            ca_file: Some(ca.into()),
            client: None,
        };
        let missing = tls_connector(&tls("/nonexistent/ca.pem")).err().unwrap();
        assert_eq!(missing.key, "tls_ca_file");
        assert!(missing.message.contains("/nonexistent/ca.pem"), "{missing}");
        let dir = tempfile::tempdir().unwrap();
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not a certificate\n").unwrap();
        let empty = tls_connector(&tls(garbage.to_str().unwrap()))
            .err()
            .unwrap();
        assert!(empty.message.contains("no PEM certificate"), "{empty}");
        let mut plain = config("postgres://u:hunter2@host/db");
        plain.tls = tls("/ca.pem");
        let err = PgPool::new(&plain).unwrap_err();
        assert_eq!(err.key, "tls_ca_file");
        assert!(err.message.contains("sslmode=require"), "{err}");
    }

    #[test]
    fn values_fit_their_types() {
        assert!(fits(&Value::Int(1), &Type::INT4));
        assert!(!fits(&Value::Int(1), &Type::TEXT));
        assert!(fits(&Value::Null, &Type::JSONB));
        assert!(fits(&Value::Text("x".into()), &Type::VARCHAR));
    }
}
