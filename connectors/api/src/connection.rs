//! How a connector reaches its server, declared once for every connector: the URL — a secret,
//! given inline, from an environment variable or from a file — and the TLS files.
//!
//! The fields sit at the top level of each connector's table (`url = "…"`, `tls_ca_file = "…"`),
//! next to the connector's own keys. serde cannot flatten a struct into one that denies unknown
//! fields, so [`connection_config!`](crate::connection_config) declares them inside each config
//! struct, with one set of docs, and implements [`Connected`] for it; everything else about a
//! connection — where relative paths resolve, which URL wins, what must never be printed — lives
//! in [`Connection`].

use std::path::{Path, PathBuf};

use crate::secret::{self, FieldError, Secret};

/// The connection fields of a connector config, as the user wrote them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Connection {
    pub url: Option<Secret>,
    pub url_env: Option<String>,
    pub url_file: Option<PathBuf>,
    pub tls_ca_file: Option<PathBuf>,
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
}

/// A config struct declared with [`connection_config!`](crate::connection_config).
pub trait Connected {
    /// Its connection fields.
    fn connection(&self) -> Connection;
    /// Replaces its connection fields (after [`Connection::resolve_paths`]).
    fn set_connection(&mut self, connection: Connection);

    /// Makes every file path of the connection absolute against `base_dir` (the config file's
    /// folder). Idempotent.
    fn resolve_paths(&mut self, base_dir: &Path) {
        let mut c = self.connection();
        c.resolve_paths(base_dir);
        self.set_connection(c);
    }
}

/// The TLS files of a connection, checked to come in a usable combination.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TlsFiles<'a> {
    /// `tls_ca_file`: PEM CA certificates to trust besides the system's roots.
    pub ca: Option<&'a Path>,
    /// `tls_cert_file` and `tls_key_file`: a PEM client certificate (chain) and its key, to
    /// present to a server that verifies its clients (mutual TLS).
    pub client: Option<(&'a Path, &'a Path)>,
}

impl TlsFiles<'_> {
    pub fn is_empty(&self) -> bool {
        self.ca.is_none() && self.client.is_none()
    }

    /// The name of the first TLS key that is set, for "set, but the URL is not TLS" errors.
    pub fn first_key(&self) -> Option<&'static str> {
        if self.ca.is_some() {
            Some("tls_ca_file")
        } else if self.client.is_some() {
            Some("tls_cert_file")
        } else {
            None
        }
    }
}

impl Connection {
    /// Makes `url_file` and the TLS files absolute against `base_dir`. Idempotent.
    pub fn resolve_paths(&mut self, base_dir: &Path) {
        for path in [
            &mut self.url_file,
            &mut self.tls_ca_file,
            &mut self.tls_cert_file,
            &mut self.tls_key_file,
        ] {
            if let Some(p) = path
                && p.is_relative()
            {
                *p = base_dir.join(&*p);
            }
        }
    }

    /// The URL from exactly one of `url`, `url_env`, `url_file`; when none is given, `default`
    /// (a connector with a local default, like RabbitMQ's), else an error naming the keys.
    /// Messages never contain the URL.
    pub fn url(&self, default: Option<&str>) -> Result<SecretUrl, FieldError> {
        if let Some(default) = default
            && self.url.is_none()
            && self.url_env.is_none()
            && self.url_file.is_none()
        {
            return Ok(SecretUrl::new(default.to_string()));
        }
        let url = secret::resolve_url(
            self.url.as_ref(),
            self.url_env.as_deref(),
            self.url_file.as_deref(),
            Path::new("."),
        )?;
        if url.trim().is_empty() {
            return Err(FieldError {
                field: "url",
                message: "is empty".into(),
            });
        }
        Ok(SecretUrl::new(url))
    }

    /// The TLS files; a client certificate needs its key and the other way round.
    pub fn tls(&self) -> Result<TlsFiles<'_>, FieldError> {
        let client = match (&self.tls_cert_file, &self.tls_key_file) {
            (None, None) => None,
            (Some(_), None) => {
                return Err(FieldError {
                    field: "tls_cert_file",
                    message: "needs `tls_key_file`".into(),
                });
            }
            (None, Some(_)) => {
                return Err(FieldError {
                    field: "tls_key_file",
                    message: "needs `tls_cert_file`".into(),
                });
            }
            (Some(cert), Some(key)) => Some((cert.as_path(), key.as_path())),
        };
        Ok(TlsFiles {
            ca: self.tls_ca_file.as_deref(),
            client,
        })
    }
}

/// A connection URL that holds secrets, and what of it must never be printed: the URL itself and
/// its password (as written and percent-decoded; `password=` of a `key=value` string too).
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl {
    url: String,
    secrets: Vec<String>,
}

impl std::fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl SecretUrl {
    pub fn new(url: String) -> Self {
        let mut secrets = vec![url.clone()];
        if let Some(password) = password_of(&url) {
            let decoded = percent_decode(&password);
            if decoded != password {
                secrets.push(decoded);
            }
            secrets.push(password);
        }
        // Short strings would redact ordinary words.
        secrets.retain(|s| s.len() >= 3);
        Self { url, secrets }
    }

    /// The URL, to hand to a client library. Never log it.
    pub fn expose(&self) -> &str {
        &self.url
    }

    /// Adds another string that must never be printed (one the client library found in the URL).
    pub fn add_secret(&mut self, secret: impl Into<String>) {
        let secret = secret.into();
        if secret.len() >= 3 && !self.secrets.contains(&secret) {
            self.secrets.push(secret);
        }
    }

    /// `text` with every secret of this URL replaced by `<redacted>`: for a client library's
    /// error message that may quote the URL.
    pub fn redact(&self, text: &str) -> String {
        redact(text, &self.secrets)
    }
}

/// `text` with every occurrence of each secret replaced by `<redacted>`, longest first (so a
/// password inside the URL does not leave the rest of the URL behind).
pub fn redact(text: &str, secrets: &[String]) -> String {
    let mut sorted: Vec<&String> = secrets.iter().filter(|s| s.len() >= 3).collect();
    sorted.sort_by_key(|s| std::cmp::Reverse(s.len()));
    let mut out = text.to_string();
    for s in sorted {
        out = out.replace(s.as_str(), "<redacted>");
    }
    out
}

/// The password of `scheme://user:password@host…`, or of a `key=value` connection string.
fn password_of(url: &str) -> Option<String> {
    if let Some((_, rest)) = url.split_once("://") {
        let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
        let (userinfo, _) = authority.rsplit_once('@')?;
        let (_, password) = userinfo.split_once(':')?;
        return (!password.is_empty()).then(|| password.to_string());
    }
    url.split_whitespace()
        .find_map(|kv| kv.strip_prefix("password="))
        .map(|p| p.trim_matches('\'').to_string())
        .filter(|p| !p.is_empty())
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push(h * 16 + l);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Declares a connector's config struct with the connection fields (`url`, `url_env`,
/// `url_file`, `tls_ca_file`, `tls_cert_file`, `tls_key_file`) before its own, and implements
/// [`Connected`] for it. The first line of the body documents the `url` key for this connector
/// (attributes before it go on the `url` field, e.g. `#[serde(alias = "…")]`):
///
/// ```
/// use serde::Deserialize;
///
/// fnmill_connector_api::connection_config! {
///     /// `data_sources.<name>` with `kind = "example"`.
///     #[derive(Clone, Debug, Deserialize)]
///     #[serde(deny_unknown_fields)]
///     pub struct ExampleConfig {
///         url: "`example://user:password@host:port`.",
///         /// Connections the pool may open.
///         #[serde(default)]
///         pub pool_size: usize,
///     }
/// }
///
/// let c: ExampleConfig = serde_json::from_str(r#"{"url_env": "EXAMPLE_URL"}"#).unwrap();
/// assert_eq!(c.url_env.as_deref(), Some("EXAMPLE_URL"));
/// ```
#[macro_export]
macro_rules! connection_config {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $(#[$url_meta:meta])*
            url: $url_doc:literal,
            $(
                $(#[$fmeta:meta])*
                $fvis:vis $field:ident : $ty:ty
            ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        $vis struct $name {
            #[doc = $url_doc]
            ///
            /// The URL may hold a password, so give it as exactly one of `url`, `url_env` (an
            /// environment variable holding it) or `url_file` (a file holding it, e.g. a mounted
            /// Kubernetes secret; relative to the config file). It is read at start and never
            /// logged; errors that would quote it are redacted.
            #[serde(default)]
            $(#[$url_meta])*
            pub url: ::std::option::Option<$crate::secret::Secret>,
            /// An environment variable that holds the URL.
            #[serde(default)]
            pub url_env: ::std::option::Option<::std::string::String>,
            /// A file that holds the URL (surrounding whitespace is ignored). Relative to the
            /// config file.
            #[serde(default)]
            pub url_file: ::std::option::Option<::std::path::PathBuf>,
            /// With a TLS URL: a PEM file of the certificate authorities that may sign the
            /// server's certificate (a private CA, a cloud provider's bundle), besides the
            /// system's roots. The server's host name is always checked. Relative to the config
            /// file.
            #[serde(default)]
            pub tls_ca_file: ::std::option::Option<::std::path::PathBuf>,
            /// With a TLS URL and `tls_key_file`: a PEM client certificate (chain) to present to a
            /// server that verifies its clients (mutual TLS). Relative to the config file.
            #[serde(default)]
            pub tls_cert_file: ::std::option::Option<::std::path::PathBuf>,
            /// The PEM private key of `tls_cert_file` (PKCS#8, PKCS#1 or SEC1, unencrypted); a
            /// secret, never logged.
            #[serde(default)]
            pub tls_key_file: ::std::option::Option<::std::path::PathBuf>,
            $(
                $(#[$fmeta])*
                $fvis $field : $ty
            ),*
        }

        impl $crate::connection::Connected for $name {
            fn connection(&self) -> $crate::connection::Connection {
                $crate::connection::Connection {
                    url: self.url.clone(),
                    url_env: self.url_env.clone(),
                    url_file: self.url_file.clone(),
                    tls_ca_file: self.tls_ca_file.clone(),
                    tls_cert_file: self.tls_cert_file.clone(),
                    tls_key_file: self.tls_key_file.clone(),
                }
            }

            fn set_connection(&mut self, c: $crate::connection::Connection) {
                self.url = c.url;
                self.url_env = c.url_env;
                self.url_file = c.url_file;
                self.tls_ca_file = c.tls_ca_file;
                self.tls_cert_file = c.tls_cert_file;
                self.tls_key_file = c.tls_key_file;
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_is_redacted_as_written_and_decoded() {
        let url = SecretUrl::new("amqp://user:hun%40ter2@host:5672/%2f".into());
        let text = "cannot connect to amqp://user:hun%40ter2@host:5672/%2f (user hun@ter2)";
        assert_eq!(
            url.redact(text),
            "cannot connect to <redacted> (user <redacted>)"
        );
        let kv = SecretUrl::new("host=db user=u password=hunter2".into());
        assert_eq!(kv.redact("bad password hunter2"), "bad password <redacted>");
        let none = SecretUrl::new("redis://127.0.0.1:6379".into());
        assert_eq!(none.redact("to 127.0.0.1"), "to 127.0.0.1");
        assert_eq!(format!("{url:?}"), "<redacted>");
    }

    #[test]
    fn an_empty_url_and_half_a_client_identity_are_named() {
        let c = Connection {
            url: Some(Secret(String::new())),
            ..Connection::default()
        };
        assert_eq!(c.url(None).unwrap_err().field, "url");
        let c = Connection {
            tls_key_file: Some("k.pem".into()),
            ..Connection::default()
        };
        assert_eq!(c.tls().unwrap_err().field, "tls_key_file");
        assert_eq!(
            Connection::default()
                .url(Some("amqp://localhost"))
                .unwrap()
                .expose(),
            "amqp://localhost"
        );
        assert_eq!(Connection::default().url(None).unwrap_err().field, "url");
    }

    #[test]
    fn relative_paths_resolve_against_the_config_folder_once() {
        let mut c = Connection {
            url_file: Some("secrets/url".into()),
            tls_ca_file: Some("/etc/ca.pem".into()),
            ..Connection::default()
        };
        c.resolve_paths(Path::new("/cfg"));
        c.resolve_paths(Path::new("/other"));
        assert_eq!(c.url_file.as_deref(), Some(Path::new("/cfg/secrets/url")));
        assert_eq!(c.tls_ca_file.as_deref(), Some(Path::new("/etc/ca.pem")));
    }
}
