//! `remote = { … }` of a data source: the IO tier that serves it, reached over NATS.
//!
//! The same config file serves every role of `fnmill run`. With `--role compute` a data source
//! that has a `remote` table is not a pool of this process: its calls are NATS requests on
//! `subject`, answered by whichever IO-tier process of the queue group takes them. With `--role
//! io` the process holds the data source's pool and answers those requests. `--role all` (the
//! default) ignores `remote` and keeps the pool in-process. The NATS client itself lives in
//! `fnmill-connector-nats`; this is only the config, so the data-source connectors can carry it
//! without depending on a NATS client.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::Problem;
use crate::connection::Connected;

crate::connection_config! {
    /// Where a data source's IO tier answers: a NATS server (or cluster) and the subject its
    /// IO-tier processes serve as one queue group.
    #[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
    #[serde(deny_unknown_fields)]
    pub struct RemoteConfig {
        #[serde(alias = "nats")]
        url: "The NATS server: `nats://[user:password@]host:4222` (several, comma-separated, for a \
              cluster), or `tls://host:4222` for TLS (the server's certificate and host name are \
              checked). `nats = \"…\"` is another name for `url`.",
        /// The subject compute replicas send this data source's calls to, e.g.
        /// `"fnmill.ds.orders_db"`. Every IO-tier process serving the data source subscribes
        /// to it in one queue group, so each call goes to one of them. No wildcards.
        pub subject: String,
        /// A NATS credentials file (`.creds`: a user JWT and its NKey seed), for a server with
        /// decentralised authentication; a secret, never logged. Relative to the config file.
        #[serde(default)]
        pub credentials_file: Option<std::path::PathBuf>,
        /// Longest a compute replica waits for an IO-tier process to answer one call; then the
        /// function gets `unavailable` (retryable). Default: the data source's `wait_timeout`,
        /// plus its `statement_timeout` (PostgreSQL, when set) or `command_timeout` (Redis).
        #[serde(default, with = "humantime_serde")]
        pub timeout: Option<Duration>,
        /// Longest a call (at a compute replica) or an answer (at an IO-tier process) is held
        /// for others to share its NATS message, and only while other calls are in flight:
        /// a lone call never waits. Fewer, fuller messages cost NATS and both processes less
        /// CPU per call; `"0s"` sends each as soon as possible. Default 1 ms; at most 100 ms.
        #[serde(default, with = "humantime_serde")]
        pub linger: Option<Duration>,
    }
}

/// `linger` when the config leaves it out.
pub const DEFAULT_LINGER: Duration = Duration::from_millis(1);

/// The longest `linger` taken: past it a call's wait would rival a query's own time.
pub const MAX_LINGER: Duration = Duration::from_millis(100);

impl RemoteConfig {
    /// How long a call or an answer is held for company (`linger`, or [`DEFAULT_LINGER`]).
    pub fn linger(&self) -> Duration {
        self.linger.unwrap_or(DEFAULT_LINGER)
    }

    /// Makes every file path absolute against `base_dir` (the config file's folder): the
    /// connection's and `credentials_file`. Idempotent.
    pub fn resolve_files(&mut self, base_dir: &Path) {
        Connected::resolve_paths(self, base_dir);
        if let Some(p) = &self.credentials_file
            && p.is_relative()
        {
            self.credentials_file = Some(base_dir.join(p));
        }
    }

    /// What is wrong with the table itself, each naming its key (relative to `remote`): the
    /// subject, the timeout, half a client identity. Whether the URL and the files can be used
    /// is the NATS connector's check.
    pub fn check_fields(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        if let Err(message) = check_subject(&self.subject) {
            problems.push(Problem::new("subject", message));
        }
        if self.timeout.is_some_and(|t| t.is_zero()) {
            problems.push(Problem::new(
                "timeout",
                "must be greater than zero (leave it out for the default)",
            ));
        }
        if self.linger.is_some_and(|l| l > MAX_LINGER) {
            problems.push(Problem::new(
                "linger",
                format!("must be at most {MAX_LINGER:?} (`\"0s\"` sends every call at once)"),
            ));
        }
        if let Err(e) = self.connection().tls() {
            problems.push(e.into());
        }
        problems
    }
}

/// A subject to publish requests on: dot-separated tokens, none empty, no whitespace, no
/// wildcard (a request goes to one subject).
pub fn check_subject(subject: &str) -> Result<(), String> {
    if subject.is_empty() {
        return Err("must not be empty".into());
    }
    if subject.chars().any(char::is_whitespace) {
        return Err(format!("`{subject}` contains whitespace"));
    }
    if subject.split('.').any(str::is_empty) {
        return Err(format!(
            "`{subject}` has an empty token (a leading, trailing or double `.`)"
        ));
    }
    if subject.split('.').any(|t| t == "*" || t == ">") {
        return Err(format!(
            "`{subject}` has a wildcard; a data source is served on one subject"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_plain_dotted_names() {
        assert!(check_subject("fnmill.ds.orders_db").is_ok());
        assert!(check_subject("").is_err());
        assert!(check_subject("a..b").is_err());
        assert!(check_subject("a.b.").is_err());
        assert!(check_subject("a b").is_err());
        assert!(check_subject("fnmill.ds.*").is_err());
        assert!(check_subject("fnmill.>").is_err());
    }

    #[test]
    fn linger_is_bounded_and_zero_turns_it_off() {
        let parse = |linger: &str| {
            serde_json::from_str::<RemoteConfig>(&format!(
                r#"{{"url": "nats://127.0.0.1:4222", "subject": "s", "linger": "{linger}"}}"#
            ))
            .unwrap()
        };
        assert_eq!(parse("0s").linger(), Duration::ZERO);
        assert!(parse("0s").check_fields().is_empty());
        assert_eq!(parse("5ms").linger(), Duration::from_millis(5));
        let problems = parse("1s").check_fields();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(format!("{problems:?}").contains("linger"), "{problems:?}");
    }

    #[test]
    fn nats_is_another_name_for_url_and_files_resolve_once() {
        let mut c: RemoteConfig = serde_json::from_str(
            r#"{"nats": "nats://127.0.0.1:4222", "subject": "s", "credentials_file": "a.creds",
                "timeout": "3s"}"#,
        )
        .unwrap();
        assert_eq!(
            c.url.as_ref().map(|u| u.0.as_str()),
            Some("nats://127.0.0.1:4222")
        );
        assert_eq!(c.timeout, Some(Duration::from_secs(3)));
        assert_eq!(c.linger(), DEFAULT_LINGER);
        c.resolve_files(Path::new("/cfg"));
        c.resolve_files(Path::new("/other"));
        assert_eq!(
            c.credentials_file.as_deref(),
            Some(Path::new("/cfg/a.creds"))
        );
        let unknown = serde_json::from_str::<RemoteConfig>(r#"{"url": "x", "subjects": "s"}"#);
        assert!(
            unknown
                .unwrap_err()
                .to_string()
                .contains("unknown field `subjects`")
        );
    }
}
