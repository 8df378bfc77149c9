//! Secrets in connector configs, read from an environment variable or a file, never printed and
//! never quoted in an error. A URL is given as exactly one of `url` (inline), `url_env` (an
//! environment variable) or `url_file` (a file, e.g. a mounted Kubernetes secret).

use std::fmt;
use std::path::Path;

use serde::Deserialize;

/// A configuration value that is never printed.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A problem with a data-source config: the field it is about and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: &'static str,
    pub message: String,
}

/// Reads a secret URL from exactly one of `url`, `url_env`, `url_file`. Messages never contain
/// the secret.
pub fn resolve_url(
    url: Option<&Secret>,
    url_env: Option<&str>,
    url_file: Option<&Path>,
    base_dir: &Path,
) -> Result<String, FieldError> {
    let given = [url.is_some(), url_env.is_some(), url_file.is_some()]
        .iter()
        .filter(|g| **g)
        .count();
    if given != 1 {
        return Err(FieldError {
            field: "url",
            message: format!("give exactly one of `url`, `url_env`, `url_file` ({given} given)"),
        });
    }
    if let Some(url) = url {
        return Ok(url.0.clone());
    }
    if let Some(var) = url_env {
        return from_env(var).map_err(|message| FieldError {
            field: "url_env",
            message,
        });
    }
    let path = url_file.expect("one of the three is set");
    from_file(path, base_dir).map_err(|message| FieldError {
        field: "url_file",
        message,
    })
}

/// A secret from the environment variable `var`, trimmed. The message of an error names the
/// variable, never a value.
pub fn from_env(var: &str) -> Result<String, String> {
    match std::env::var(var) {
        Ok(v) if !v.trim().is_empty() => Ok(v.trim().to_string()),
        _ => Err(format!(
            "the environment variable `{var}` is not set or empty"
        )),
    }
}

/// A secret from the file at `path` (relative to `base_dir`), trimmed: e.g. a mounted
/// Kubernetes secret. The message of an error names the file, never its content.
pub fn from_file(path: &Path, base_dir: &Path) -> Result<String, String> {
    let path = if path.is_absolute() {
        path.to_path_buf()
    } else {
        base_dir.join(path)
    };
    match std::fs::read_to_string(&path) {
        Ok(v) if !v.trim().is_empty() => Ok(v.trim().to_string()),
        Ok(_) => Err(format!("{} is empty", path.display())),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const URL: &str = "postgres://user:hunter2@db/x";

    #[test]
    fn exactly_one_source_and_never_the_secret_in_messages() {
        let secret = Secret(URL.into());
        assert_eq!(format!("{secret:?}"), "<redacted>");
        let dir = std::env::temp_dir();
        assert_eq!(resolve_url(Some(&secret), None, None, &dir).unwrap(), URL);
        let both = resolve_url(Some(&secret), Some("X"), None, &dir).unwrap_err();
        assert_eq!(both.field, "url");
        assert!(both.message.contains("2 given"), "{}", both.message);
        assert!(!both.message.contains("hunter2"));
        let none = resolve_url(None, None, None, &dir).unwrap_err();
        assert!(none.message.contains("0 given"), "{}", none.message);
    }

    #[test]
    fn from_a_file_relative_to_the_config_or_a_missing_variable() {
        let dir = std::env::temp_dir().join(format!("fnmill-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("url"), format!("  {URL}\n")).unwrap();
        let got = resolve_url(None, None, Some(Path::new("url")), &dir).unwrap();
        assert_eq!(got, URL);
        std::fs::write(dir.join("empty"), "\n").unwrap();
        let empty = resolve_url(None, None, Some(Path::new("empty")), &dir).unwrap_err();
        assert_eq!(empty.field, "url_file");
        let unset = resolve_url(None, Some("FNMILL_SURELY_UNSET_VAR"), None, &dir).unwrap_err();
        assert_eq!(unset.field, "url_env");
        assert!(unset.message.contains("FNMILL_SURELY_UNSET_VAR"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
