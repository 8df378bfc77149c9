//! The NATS connection: settings read from a data source's `remote` table ([`Endpoint`]), and
//! a connected client that reconnects on its own and says so in the log ([`Nats`]).
//!
//! A process opens one connection per distinct endpoint (URL, TLS files, credentials), shared by
//! every data source that names it: NATS multiplexes every request and subscription of a
//! process over it, so more connections would only cost the server.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::{ConnectOptions, Event, ServerAddr};
use fnmill_connector_api::Problem;
use fnmill_connector_api::connection::{Connected, SecretUrl};
use fnmill_connector_api::remote::RemoteConfig;

/// How long one attempt to reach a server may take: long enough for a TLS handshake across a
/// region, short enough that an unreachable server is reported within seconds.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest pause between reconnect attempts. A NATS server restarts in well under a second; the
/// requests of a compute replica fail as `unavailable` (and their events wait in retry) until it
/// is back, so trying often is cheap and shortens the outage.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(2);

/// Longest a server may stay silent before the connection counts as lost; NATS pings at this
/// interval and drops the connection after two unanswered pings.
const PING_INTERVAL: Duration = Duration::from_secs(10);

/// While the server stays unreachable, one warning this often (each attempt fails anew).
const UNREACHABLE_WARN_EVERY: Duration = Duration::from_secs(30);

/// Where a data source's IO tier is reached: the servers and how to authenticate, from a
/// `remote` table whose paths are resolved already.
#[derive(Clone)]
pub struct Endpoint {
    /// The URL as given (one or several, comma-separated); a secret.
    url: SecretUrl,
    servers: Vec<ServerAddr>,
    tls_ca_file: Option<PathBuf>,
    tls_client: Option<(PathBuf, PathBuf)>,
    credentials: Option<String>,
    /// `user:password@` (or a `token@`) of the URL: the client library takes it from options,
    /// not from the URL.
    userinfo: Option<(String, Option<String>)>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("servers", &self.display())
            .field("tls_ca_file", &self.tls_ca_file)
            .field("tls_client", &self.tls_client)
            .field(
                "credentials",
                &self.credentials.as_ref().map(|_| "<redacted>"),
            )
            .field("userinfo", &self.userinfo.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl Endpoint {
    /// Reads the URL (from wherever the table says) and the credentials file, and parses the
    /// servers. Errors name the key (relative to `remote`) and never quote a secret.
    pub fn from_config(config: &RemoteConfig) -> Result<Self, Problem> {
        let connection = config.connection();
        let url = connection.url(None)?;
        let tls = connection.tls()?;
        let mut servers = Vec::new();
        for part in url.expose().split(',').map(str::trim) {
            let server: ServerAddr = part.parse().map_err(|e: std::io::Error| {
                Problem::new("url", url.redact(&format!("is not a NATS server URL: {e}")))
            })?;
            if !matches!(server.clone().into_inner().scheme(), "nats" | "tls") {
                return Err(Problem::new(
                    "url",
                    "must be nats://host:port or tls://host:port (websockets are not supported)",
                ));
            }
            servers.push(server);
        }
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        };
        let userinfo = servers
            .iter()
            .find_map(|s| Some((decode(s.username()?), s.password().map(decode))));
        if userinfo.is_some() && config.credentials_file.is_some() {
            return Err(Problem::new(
                "credentials_file",
                "is set, and the URL has a user or token too: give one of the two",
            ));
        }
        let read = |path: &std::path::Path, key: &str| {
            std::fs::read(path)
                .map_err(|e| Problem::new(key, format!("cannot be read: {}: {e}", path.display())))
        };
        if let Some(ca) = tls.ca {
            read(ca, "tls_ca_file")?;
        }
        if let Some((cert, key)) = tls.client {
            read(cert, "tls_cert_file")?;
            read(key, "tls_key_file")?;
        }
        let credentials = match &config.credentials_file {
            None => None,
            Some(path) => {
                let text = String::from_utf8(read(path, "credentials_file")?).map_err(|_| {
                    Problem::new(
                        "credentials_file",
                        format!("{} is not a NATS credentials file", path.display()),
                    )
                })?;
                // Parsed now, so a bad file is a config error, not a connection that never
                // authenticates. The message names the file only: its content is a secret.
                ConnectOptions::with_credentials(&text).map_err(|_| {
                    Problem::new(
                        "credentials_file",
                        format!(
                            "{} is not a NATS credentials file (a user JWT and an NKey seed)",
                            path.display()
                        ),
                    )
                })?;
                Some(text)
            }
        };
        Ok(Self {
            servers,
            tls_ca_file: tls.ca.map(Into::into),
            tls_client: tls.client.map(|(c, k)| (c.into(), k.into())),
            credentials,
            userinfo,
            url,
        })
    }

    /// The servers as `host:port`, for logs: no credentials, no scheme.
    pub fn display(&self) -> String {
        self.servers
            .iter()
            .map(|s| format!("{}:{}", s.host(), s.port()))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// What makes two endpoints one connection.
    pub fn same_as(&self, other: &Endpoint) -> bool {
        self.url == other.url
            && self.tls_ca_file == other.tls_ca_file
            && self.tls_client == other.tls_client
            && self.credentials == other.credentials
    }

    fn options(&self) -> Result<ConnectOptions, Problem> {
        let mut options = match &self.credentials {
            Some(text) => ConnectOptions::with_credentials(text)
                .map_err(|_| Problem::new("credentials_file", "is not a NATS credentials file"))?,
            None => ConnectOptions::new(),
        };
        options = match &self.userinfo {
            Some((user, Some(password))) => {
                options.user_and_password(user.clone(), password.clone())
            }
            Some((token, None)) => options.token(token.clone()),
            None => options,
        };
        if let Some(ca) = &self.tls_ca_file {
            options = options.add_root_certificates(ca.clone());
        }
        if let Some((cert, key)) = &self.tls_client {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        Ok(options
            .connection_timeout(CONNECT_TIMEOUT)
            .ping_interval(PING_INTERVAL)
            .max_reconnects(None)
            .retry_on_initial_connect()
            .reconnect_delay_callback(reconnect_delay))
    }
}

/// 0, then 100 ms doubling up to [`MAX_RECONNECT_DELAY`].
fn reconnect_delay(attempts: usize) -> Duration {
    if attempts <= 1 {
        return Duration::ZERO;
    }
    let exp = u32::try_from(attempts - 2).unwrap_or(u32::MAX).min(16);
    Duration::from_millis(100u64.saturating_mul(1 << exp)).min(MAX_RECONNECT_DELAY)
}

/// Everything [`Endpoint::from_config`] would refuse, plus the table's own problems; keys are
/// relative to `remote`.
pub fn check(config: &RemoteConfig) -> Vec<Problem> {
    let mut problems = config.check_fields();
    if problems.is_empty()
        && let Err(p) = Endpoint::from_config(config)
    {
        problems.push(p);
    }
    problems
}

/// A NATS connection of this process: a client that reconnects by itself (forever, every
/// subscription renewed), whose state changes are logged.
#[derive(Clone)]
pub struct Nats {
    client: async_nats::Client,
    state: Arc<ConnState>,
}

/// What the connection's event callback keeps.
struct ConnState {
    /// The servers, for log lines.
    servers: String,
    connected: AtomicBool,
    /// When the last "unreachable" warning was logged, in ms since `start`.
    warned_at: AtomicU64,
    warned: AtomicBool,
    start: Instant,
}

impl Nats {
    /// Starts connecting to `endpoint` in the background and returns at once: an unreachable
    /// server is logged and retried, never an error here. `name` tells the server who this is
    /// (`fnmill compute`, `fnmill io`). Must be called inside a tokio runtime, which then runs
    /// the connection.
    pub async fn connect(endpoint: &Endpoint, name: &str) -> Result<Self, Problem> {
        let state = Arc::new(ConnState {
            servers: endpoint.display(),
            connected: AtomicBool::new(false),
            warned_at: AtomicU64::new(0),
            warned: AtomicBool::new(false),
            start: Instant::now(),
        });
        let events = state.clone();
        let options = endpoint.options()?.name(name).event_callback(move |event| {
            events.on(event);
            async {}
        });
        tracing::info!(servers = %state.servers, "Connecting to NATS");
        let client = options
            .connect(endpoint.servers.clone())
            .await
            .map_err(|e| Problem::new("url", endpoint.url.redact(&format!("{e}"))))?;
        Ok(Self { client, state })
    }

    /// Waits up to `timeout` for the connection to be up; whether it is. A process gives its
    /// new connection this long before it starts work, so the first calls do not fail only
    /// because the handshake was still under way.
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while !self.is_connected() {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }

    /// Whether the connection is up now.
    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// The servers, for log lines.
    pub fn servers(&self) -> &str {
        &self.state.servers
    }

    pub(crate) fn client(&self) -> &async_nats::Client {
        &self.client
    }
}

impl ConnState {
    fn on(&self, event: Event) {
        match event {
            Event::Connected => {
                self.connected.store(true, Ordering::Relaxed);
                self.warned.store(false, Ordering::Relaxed);
                tracing::info!(servers = %self.servers, "NATS connected");
            }
            Event::Disconnected => {
                self.connected.store(false, Ordering::Relaxed);
                tracing::warn!(
                    servers = %self.servers,
                    "NATS connection lost; calls to the IO tier fail as unavailable until it is back, reconnecting"
                );
            }
            Event::ClientError(e) if !self.connected.load(Ordering::Relaxed) => {
                let now = self.start.elapsed().as_millis() as u64;
                let last = self.warned_at.load(Ordering::Relaxed);
                let first = !self.warned.swap(true, Ordering::Relaxed);
                if first || now.saturating_sub(last) >= UNREACHABLE_WARN_EVERY.as_millis() as u64 {
                    self.warned_at.store(now, Ordering::Relaxed);
                    tracing::warn!(
                        servers = %self.servers,
                        error = %e,
                        "NATS unreachable; retrying (calls to the IO tier fail as unavailable meanwhile)"
                    );
                }
            }
            Event::LameDuckMode => {
                tracing::info!(servers = %self.servers, "NATS server entering lame duck mode; moving to another")
            }
            Event::SlowConsumer(sid) => tracing::warn!(
                servers = %self.servers,
                subscription = sid,
                "NATS dropped messages for a slow subscriber; their callers time out and retry"
            ),
            other => tracing::debug!(servers = %self.servers, event = %other, "NATS event"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remote(url: &str) -> RemoteConfig {
        serde_json_like(url)
    }

    fn serde_json_like(url: &str) -> RemoteConfig {
        RemoteConfig {
            url: Some(fnmill_connector_api::secret::Secret(url.into())),
            url_env: None,
            url_file: None,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            subject: "fnmill.ds.db".into(),
            credentials_file: None,
            timeout: None,
            linger: None,
        }
    }

    #[test]
    fn urls_are_checked_without_quoting_a_password() {
        assert!(check(&remote("nats://127.0.0.1:4222")).is_empty());
        assert!(check(&remote("nats://a:4222, tls://b:4222")).is_empty());
        let bad = check(&remote("http://u:hunter2@h:4222"));
        assert_eq!(bad.len(), 1, "{bad:?}");
        assert_eq!(bad[0].key, "url");
        assert!(!bad[0].to_string().contains("hunter2"), "{}", bad[0]);
        let ws = check(&remote("ws://h:80"));
        assert!(ws[0].message.contains("websockets"), "{ws:?}");
        let e = Endpoint::from_config(&remote("nats://u:hunter2@h:4222")).unwrap();
        assert_eq!(e.display(), "h:4222");
        assert_eq!(e.userinfo, Some(("u".into(), Some("hunter2".into()))));
        let token = Endpoint::from_config(&remote("nats://s3cr%40t@h:4222")).unwrap();
        assert_eq!(token.userinfo, Some(("s3cr@t".into(), None)));
        assert!(!format!("{e:?}").contains("hunter2"));
    }

    #[test]
    fn unreadable_or_malformed_credentials_are_named() {
        let mut c = remote("nats://h:4222");
        c.credentials_file = Some("/nonexistent/user.creds".into());
        let p = check(&c);
        assert_eq!(p[0].key, "credentials_file");
        assert!(p[0].message.contains("/nonexistent/user.creds"), "{p:?}");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("user.creds");
        std::fs::write(&file, "SUAsecretseed not a creds file").unwrap();
        c.credentials_file = Some(file);
        let p = check(&c);
        assert_eq!(p[0].key, "credentials_file");
        assert!(!p[0].message.contains("SUAsecretseed"), "{p:?}");
    }

    #[test]
    fn reconnects_start_at_once_and_back_off_to_two_seconds() {
        assert_eq!(reconnect_delay(1), Duration::ZERO);
        assert_eq!(reconnect_delay(2), Duration::from_millis(100));
        assert_eq!(reconnect_delay(3), Duration::from_millis(200));
        assert_eq!(reconnect_delay(50), MAX_RECONNECT_DELAY);
    }
}
