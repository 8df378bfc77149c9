//! Helpers of the tests that read the local stack's files: `docker-compose.yml` with the
//! variables of `.env` substituted as Compose does, the environment a service gets, and the
//! config `fnmill` runs in the stack.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_yaml::Value;

use crate::common::root;

/// The variables of `.env` (`NAME=value` lines; `#` comments).
pub fn dotenv() -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(root().join(".env")).expect("reading .env");
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l
                .split_once('=')
                .unwrap_or_else(|| panic!(".env: {l:?} is not NAME=value"));
            (k.trim().to_string(), v.trim().to_string())
        })
        .collect()
}

/// Replaces `${NAME}` with the value of `vars` (panicking on an unknown name, as Compose would
/// leave it blank) and `$$` with `$`.
pub fn substitute(text: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(tail) = after.strip_prefix('{') {
            let end = tail.find('}').expect("unclosed ${ in docker-compose.yml");
            let name = &tail[..end];
            let value = vars
                .get(name)
                .unwrap_or_else(|| panic!("docker-compose.yml uses ${{{name}}}, which .env lacks"));
            out.push_str(value);
            rest = &tail[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// `docker-compose.yml` as Compose reads it: `.env`'s variables substituted.
pub fn compose() -> Value {
    let text = std::fs::read_to_string(root().join("docker-compose.yml")).unwrap();
    serde_yaml::from_str(&substitute(&text, &dotenv())).expect("docker-compose.yml is YAML")
}

/// A service's `environment` map as name → value.
pub fn service_env(compose: &Value, service: &str) -> Vec<(String, String)> {
    compose["services"][service]["environment"]
        .as_mapping()
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    let v = match v {
                        Value::String(s) => s.clone(),
                        other => serde_yaml::to_string(other).unwrap().trim().to_string(),
                    };
                    (k.as_str().unwrap().to_string(), v)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The config fnmill runs in the stack.
pub fn stack_config() -> PathBuf {
    root().join("deploy").join("compose").join("fnmill.toml")
}

/// The topics the stack's `kafka-init` service creates (its `TOPICS` variable).
pub fn stack_topics(compose: &Value) -> Vec<String> {
    service_env(compose, "kafka-init")
        .into_iter()
        .find(|(k, _)| k == "TOPICS")
        .map(|(_, v)| v.split_whitespace().map(str::to_string).collect())
        .expect("kafka-init has no TOPICS")
}
