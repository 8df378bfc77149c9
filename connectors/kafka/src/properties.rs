//! librdkafka properties from config: any property can be set, except the few that fnmill's
//! delivery guarantee rests on, which are refused with the reason.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use fnmill_connector_api::Problem;
use fnmill_connector_api::secret::{self, Secret};
use rdkafka::ClientConfig;
use serde::Deserialize;

use crate::KafkaError;

/// librdkafka's `fetch.queue.backoff.ms`, fnmill's default for every consumer. Once the local
/// queue holds `queued.min.messages` (100,000) messages, librdkafka stops fetching for this long.
/// A consumer's partition queues all forward to one queue and the threshold counts that one, so
/// with small records and librdkafka's default of 1 s a consumer reading a backlog fetches about
/// 100,000 records and then sits out the rest of each second: the `kafka` bench's native
/// passthrough ran 156k–220k records/s with it and 0.9–1.1M with 10 ms. 10 ms is still long
/// enough that a full queue costs the broker thread 100 wake-ups a second, nothing measurable.
pub(crate) const FETCH_QUEUE_BACKOFF: (&str, &str) = ("fetch.queue.backoff.ms", "10");
/// A librdkafka property value. TOML (and `FNMILL__…` environment values, which are parsed)
/// may give a number or a boolean where librdkafka wants text, so all three are accepted.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum PropertyValue {
    Text(String),
    Integer(i64),
    Bool(bool),
}

impl fmt::Display for PropertyValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PropertyValue::Text(s) => f.write_str(s),
            PropertyValue::Integer(i) => write!(f, "{i}"),
            PropertyValue::Bool(b) => write!(f, "{b}"),
        }
    }
}

/// Where the value of a secret property (`sasl.password`, `ssl.key.password`, ...) is read
/// from, instead of the config file: exactly one of an environment variable or a file (e.g. a
/// mounted Kubernetes secret; a relative path is relative to the config file). The value is
/// read when the source or sink starts and is never logged.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretProperty {
    #[serde(default)]
    pub env: Option<String>,
    #[serde(default)]
    pub file: Option<PathBuf>,
}

impl SecretProperty {
    /// `file` made absolute against `base_dir` (the config file's directory).
    pub fn resolve_path(&mut self, base_dir: &Path) {
        if let Some(file) = &self.file
            && file.is_relative()
        {
            self.file = Some(base_dir.join(file));
        }
    }
}

/// Reads every secret property; an error names the property and where its value was to come
/// from, never a value. A name also given in `properties` is refused: one value per property.
pub(crate) fn read_secrets(
    properties: &BTreeMap<String, PropertyValue>,
    secrets: &BTreeMap<String, SecretProperty>,
) -> Result<BTreeMap<String, Secret>, KafkaError> {
    let fail = |property: &str, message: String| KafkaError::Secret {
        property: property.to_string(),
        message,
    };
    secrets
        .iter()
        .map(|(name, from)| {
            if properties.contains_key(name) {
                return Err(fail(
                    name,
                    "is also set in `properties`; give it in one place".into(),
                ));
            }
            let value = match (&from.env, &from.file) {
                (Some(var), None) => secret::from_env(var),
                (None, Some(file)) => secret::from_file(file, Path::new(".")),
                _ => Err("give exactly one of `env` or `file`".into()),
            }
            .map_err(|m| fail(name, m))?;
            Ok((name.clone(), Secret(value)))
        })
        .collect()
}

/// Checks a client's properties the way librdkafka will take them, without creating a client:
/// the fixed ones, every secret (read, not kept), and every name and value (librdkafka's own
/// `rd_kafka_conf_set`, which knows every property and its type). Problems name the key.
pub(crate) fn check(
    brokers: &str,
    defaults: &[(&str, &str)],
    properties: &BTreeMap<String, PropertyValue>,
    secrets: &BTreeMap<String, SecretProperty>,
    fixed: &[Fixed],
) -> Vec<Problem> {
    let config = match client_config(brokers, defaults, properties, secrets, fixed) {
        Err(e) => return vec![e.into()],
        Ok(config) => config,
    };
    // librdkafka stops at the first property it refuses, and rdkafka hands them over in the
    // order of a HashMap, which differs from one map to the next: with two bad properties the
    // one reported changed from run to run (and `check` could disagree with `run`). Each of the
    // user's is checked on its own, in key order, so every bad one is reported, always alike.
    let mut problems = Vec::new();
    for name in properties.keys().chain(secrets.keys()) {
        let Some(value) = config.get(name) else {
            continue;
        };
        if let Err(e) = ClientConfig::new().set(name, value).create_native_config() {
            problems.push(refused(e, secrets));
        }
    }
    if problems.is_empty()
        && let Err(e) = config.create_native_config()
    {
        problems.push(refused(e, secrets));
    }
    problems
}

/// The problem for a config librdkafka refused, naming the property it refused.
fn refused(e: rdkafka::error::KafkaError, secrets: &BTreeMap<String, SecretProperty>) -> Problem {
    match e {
        rdkafka::error::KafkaError::ClientConfig(_, message, name, _) => {
            let table = if secrets.contains_key(&name) {
                "secret_properties"
            } else {
                "properties"
            };
            // librdkafka's message may quote the value: never for a secret.
            let message = if table == "secret_properties" {
                "is not a valid value for this property".to_string()
            } else {
                message
            };
            Problem::new(format!("{table}.\"{name}\""), message)
        }
        e => Problem::new("properties", e.to_string()),
    }
}

/// A property fnmill sets and the user may not change.
pub(crate) struct Fixed {
    pub name: &'static str,
    pub value: &'static str,
    pub reason: &'static str,
}

/// Builds a client config: `defaults` (overridable), then the user's `properties`, then
/// `fixed` (refused if the user set them to anything else).
pub(crate) fn client_config(
    brokers: &str,
    defaults: &[(&str, &str)],
    properties: &BTreeMap<String, PropertyValue>,
    secrets: &BTreeMap<String, SecretProperty>,
    fixed: &[Fixed],
) -> Result<ClientConfig, KafkaError> {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers);
    for (name, value) in defaults {
        config.set(*name, *value);
    }
    for (name, value) in properties {
        let value = value.to_string();
        if let Some(f) = fixed.iter().find(|f| f.name == name)
            && !value.eq_ignore_ascii_case(f.value)
        {
            return Err(KafkaError::Fixed {
                property: name.clone(),
                value,
                required: f.value,
                reason: f.reason,
            });
        }
        config.set(name, value);
    }
    for (name, value) in read_secrets(properties, secrets)? {
        if let Some(f) = fixed.iter().find(|f| f.name == name) {
            return Err(KafkaError::Secret {
                property: name,
                message: format!("fnmill sets it to `{}` because {}", f.value, f.reason),
            });
        }
        config.set(name, value.0);
    }
    for f in fixed {
        config.set(f.name, f.value);
    }
    Ok(config)
}

/// A property as milliseconds, or `default` when unset.
pub(crate) fn millis(
    properties: &BTreeMap<String, PropertyValue>,
    name: &str,
    default: u64,
) -> Result<u64, KafkaError> {
    match properties.get(name) {
        None => Ok(default),
        Some(v) => v.to_string().parse().map_err(|_| KafkaError::BadProperty {
            property: name.to_string(),
            value: v.to_string(),
            expected: "a whole number of milliseconds",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXED: Fixed = Fixed {
        name: "enable.auto.offset.store",
        value: "false",
        reason: "offsets are stored only after events are finished",
    };

    fn no_secrets() -> BTreeMap<String, SecretProperty> {
        BTreeMap::new()
    }

    #[test]
    fn secret_properties_come_from_env_or_file_and_errors_never_show_them() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pw"), "s3cret-from-file\n").unwrap();
        let var = format!("FNMILL_TEST_KAFKA_SECRET_{}", std::process::id());
        // SAFETY: a variable no other test reads, set before anything reads it.
        unsafe { std::env::set_var(&var, "s3cret-from-env") };
        let mut from_file = SecretProperty {
            env: None,
            file: Some("pw".into()),
        };
        from_file.resolve_path(dir.path());
        let secrets = BTreeMap::from([
            (
                "sasl.password".to_string(),
                SecretProperty {
                    env: Some(var.clone()),
                    file: None,
                },
            ),
            ("ssl.key.password".to_string(), from_file),
        ]);
        let c = client_config("b", &[], &BTreeMap::new(), &secrets, &[]).unwrap();
        assert_eq!(c.get("sasl.password"), Some("s3cret-from-env"));
        assert_eq!(c.get("ssl.key.password"), Some("s3cret-from-file"));

        // Unset variable, neither or both sources, a name also in `properties`, a fixed one.
        let one = |p: SecretProperty| BTreeMap::from([("sasl.password".to_string(), p)]);
        let unset = one(SecretProperty {
            env: Some("FNMILL_SURELY_UNSET_VAR".into()),
            file: None,
        });
        let err = client_config("b", &[], &BTreeMap::new(), &unset, &[]).unwrap_err();
        assert!(err.to_string().contains("FNMILL_SURELY_UNSET_VAR"), "{err}");
        assert!(err.to_string().contains("sasl.password"), "{err}");
        let neither = one(SecretProperty {
            env: None,
            file: None,
        });
        let err = client_config("b", &[], &BTreeMap::new(), &neither, &[]).unwrap_err();
        assert!(err.to_string().contains("exactly one"), "{err}");
        let both = BTreeMap::from([(
            "sasl.password".to_string(),
            PropertyValue::Text("inline".into()),
        )]);
        let err = client_config("b", &[], &both, &secrets, &[]).unwrap_err();
        assert!(err.to_string().contains("one place"), "{err}");
        let fixed = BTreeMap::from([(
            "enable.auto.offset.store".to_string(),
            SecretProperty {
                env: Some(var.clone()),
                file: None,
            },
        )]);
        let err = client_config("b", &[], &BTreeMap::new(), &fixed, &[FIXED]).unwrap_err();
        assert!(!err.to_string().contains("s3cret"), "{err}");
        assert!(err.to_string().contains("fnmill sets it"), "{err}");
    }

    #[test]
    fn check_names_an_unknown_property_a_bad_value_and_a_fixed_one() {
        let props = |name: &str, value: &str| {
            BTreeMap::from([(name.to_string(), PropertyValue::Text(value.into()))])
        };
        let check = |p| check("b:9092", &[], &p, &no_secrets(), &[FIXED]);
        assert!(check(props("linger.ms", "20")).is_empty());
        let p = check(props("linger.msec", "20"));
        assert_eq!(p[0].key, "properties.\"linger.msec\"", "{p:?}");
        let p = check(props("linger.ms", "soon"));
        assert_eq!(p[0].key, "properties.\"linger.ms\"", "{p:?}");
        let p = check(props("enable.auto.offset.store", "true"));
        assert_eq!(p[0].key, "properties.\"enable.auto.offset.store\"", "{p:?}");
        assert!(p[0].message.contains("fnmill sets it"), "{p:?}");
    }

    #[test]
    fn check_names_every_bad_property_in_key_order() {
        // Found by fuzzing config loading: librdkafka reported whichever came first in a
        // HashMap, so the same config gave one problem or the other from one check to the next.
        let props = BTreeMap::from([
            ("max_backoff".to_string(), PropertyValue::Integer(5)),
            (
                "compression.type".to_string(),
                PropertyValue::Text("lz3".into()),
            ),
            ("linger.ms".to_string(), PropertyValue::Integer(5)),
        ]);
        for _ in 0..8 {
            let p = check("b:9092", &[], &props, &no_secrets(), &[FIXED]);
            let keys: Vec<_> = p.iter().map(|p| p.key.as_str()).collect();
            assert_eq!(
                keys,
                [
                    "properties.\"compression.type\"",
                    "properties.\"max_backoff\""
                ],
                "{p:?}"
            );
        }
    }

    #[test]
    fn user_properties_override_defaults() {
        let props = BTreeMap::from([("linger.ms".to_string(), PropertyValue::Integer(20))]);
        let c = client_config("b:9092", &[("linger.ms", "5")], &props, &no_secrets(), &[]).unwrap();
        assert_eq!(c.get("linger.ms"), Some("20"));
        assert_eq!(c.get("bootstrap.servers"), Some("b:9092"));
    }

    #[test]
    fn fixed_properties_are_refused_with_the_reason() {
        let props = BTreeMap::from([(
            "enable.auto.offset.store".to_string(),
            PropertyValue::Bool(true),
        )]);
        let err = client_config("b", &[], &props, &no_secrets(), &[FIXED]).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("enable.auto.offset.store"), "{text}");
        assert!(text.contains("only after events are finished"), "{text}");
        // The same value is fine.
        let props = BTreeMap::from([(
            "enable.auto.offset.store".to_string(),
            PropertyValue::Text("false".into()),
        )]);
        assert!(client_config("b", &[], &props, &no_secrets(), &[FIXED]).is_ok());
    }
}
