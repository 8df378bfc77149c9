//! librdkafka properties from config: any property can be set, except the few that fnmill's
//! delivery guarantee rests on, which are refused with the reason.

use std::collections::BTreeMap;
use std::fmt;

use rdkafka::ClientConfig;
use serde::Deserialize;

use crate::KafkaError;

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

    #[test]
    fn user_properties_override_defaults() {
        let props = BTreeMap::from([("linger.ms".to_string(), PropertyValue::Integer(20))]);
        let c = client_config("b:9092", &[("linger.ms", "5")], &props, &[]).unwrap();
        assert_eq!(c.get("linger.ms"), Some("20"));
        assert_eq!(c.get("bootstrap.servers"), Some("b:9092"));
    }

    #[test]
    fn fixed_properties_are_refused_with_the_reason() {
        let props = BTreeMap::from([(
            "enable.auto.offset.store".to_string(),
            PropertyValue::Bool(true),
        )]);
        let err = client_config("b", &[], &props, &[FIXED]).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("enable.auto.offset.store"), "{text}");
        assert!(text.contains("only after events are finished"), "{text}");
        // The same value is fine.
        let props = BTreeMap::from([(
            "enable.auto.offset.store".to_string(),
            PropertyValue::Text("false".into()),
        )]);
        assert!(client_config("b", &[], &props, &[FIXED]).is_ok());
    }
}
