//! `FNMILL__SECTION__KEY=value` environment overrides.
//!
//! An environment variable is text, and the schema decides what it means: `group = "01234"` must
//! stay the string `01234`, while `compute_threads` wants the number 4 from `"4"`. So every
//! override starts as text; when the config does not deserialize because one of those texts is
//! where the schema wants a number or a boolean, that override is turned into one and the config
//! is read again. (Parsing every value that looks like a number, as the `config` crate's
//! `try_parsing` does, turns `01234` into 1234.)

use serde_json::{Map, Value};

use super::{Config, ConfigError, Problem, Result, from_value};

/// The prefix of every override; `__` also separates the levels of the key.
const PREFIX: &str = "FNMILL__";

/// `file` with the overrides of `env` applied, deserialized.
pub(super) fn apply(
    file: Value,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Config> {
    let overrides: Vec<(Vec<String>, String)> = env
        .into_iter()
        .filter_map(|(name, value)| {
            let key = name.strip_prefix(PREFIX)?;
            let path: Vec<String> = key.split("__").map(str::to_lowercase).collect();
            (!path.iter().any(String::is_empty)).then_some((path, value))
        })
        .collect();
    let mut typed = vec![false; overrides.len()];
    loop {
        let mut value = file.clone();
        for ((path, text), typed) in overrides.iter().zip(&typed) {
            let v = if *typed {
                scalar(text).unwrap_or_else(|| Value::String(text.clone()))
            } else {
                Value::String(text.clone())
            };
            set(&mut value, path, v).map_err(|message| {
                ConfigError::Invalid(vec![Problem::new(
                    format!("{PREFIX}{}", path.join("__").to_uppercase()),
                    message,
                )])
            })?;
        }
        match from_value(value) {
            Ok(config) => return Ok(config),
            Err(ConfigError::Invalid(problems)) => {
                let mut retyped = false;
                for ((_, text), typed) in overrides.iter().zip(typed.iter_mut()) {
                    if *typed || scalar(text).is_none() {
                        continue;
                    }
                    let as_text = format!("invalid type: string {text:?}");
                    if problems.iter().any(|p| p.message.contains(&as_text)) {
                        *typed = true;
                        retyped = true;
                    }
                }
                if !retyped {
                    return Err(ConfigError::Invalid(problems));
                }
            }
            Err(other) => return Err(other),
        }
    }
}

/// `text` as a JSON boolean or number, if it is one.
fn scalar(text: &str) -> Option<Value> {
    match text.trim() {
        "true" => return Some(Value::Bool(true)),
        "false" => return Some(Value::Bool(false)),
        _ => {}
    }
    if let Ok(i) = text.trim().parse::<i64>() {
        return Some(Value::from(i));
    }
    text.trim()
        .parse::<f64>()
        .ok()
        .filter(|f| f.is_finite())
        .map(Value::from)
}

/// Sets `path` in `root` to `value`, creating tables on the way. A number in the path indexes
/// an array that exists (`ROUTES__0__MAX_IN_FLIGHT`).
fn set(root: &mut Value, path: &[String], value: Value) -> std::result::Result<(), String> {
    let (last, parents) = path.split_last().expect("a path has at least one part");
    let mut node = root;
    for part in parents {
        node = match node {
            Value::Object(map) => map
                .entry(part.clone())
                .or_insert_with(|| Value::Object(Map::new())),
            Value::Array(items) => {
                let len = items.len();
                part.parse::<usize>()
                    .ok()
                    .and_then(|i| items.get_mut(i))
                    .ok_or_else(|| format!("`{part}` is not an index of a list of {len} entries"))?
            }
            _ => return Err(format!("`{part}` is below a value that is not a table")),
        };
    }
    match node {
        Value::Object(map) => {
            map.insert(last.clone(), value);
            Ok(())
        }
        Value::Array(items) => {
            let len = items.len();
            let slot = last
                .parse::<usize>()
                .ok()
                .and_then(|i| items.get_mut(i))
                .ok_or_else(|| format!("`{last}` is not an index of a list of {len} entries"))?;
            *slot = value;
            Ok(())
        }
        _ => Err(format!("`{last}` is below a value that is not a table")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply_to(toml: &str, env: &[(&str, &str)]) -> Result<Config> {
        let file = super::super::toml_value(toml)?;
        apply(
            file,
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn text_stays_text_where_the_schema_wants_text_and_numbers_become_numbers() {
        let toml = "[sources.k]\nkind = \"kafka\"\nbrokers = \"b:9092\"\ngroup = \"g\"\ntopics = [\"t\"]\n";
        let c = apply_to(
            toml,
            &[
                ("FNMILL__SOURCES__K__GROUP", "01234"),
                ("FNMILL__RUNTIME__COMPUTE_THREADS", "3"),
                ("FNMILL__RUNTIME__SHUTDOWN_GRACE", "5s"),
                ("FNMILL__ADMIN__LISTEN", "127.0.0.1:9464"),
            ],
        )
        .unwrap();
        let super::super::SourceConfig::Kafka(k) = &c.sources["k"] else {
            panic!("not kafka");
        };
        assert_eq!(k.group, "01234");
        assert_eq!(c.runtime.compute_threads, 3);
        assert_eq!(c.runtime.shutdown_grace, std::time::Duration::from_secs(5));
        // Inside a tagged table (a source's own keys) too.
        let c = apply_to(toml, &[("FNMILL__SOURCES__K__DRAIN_TIMEOUT", "3s")]).unwrap();
        assert!(matches!(
            &c.sources["k"],
            super::super::SourceConfig::Kafka(_)
        ));
    }

    #[test]
    fn a_value_of_the_wrong_type_is_still_named() {
        let err = apply_to("", &[("FNMILL__RUNTIME__COMPUTE_THREADS", "many")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("runtime.compute_threads"), "{err}");
        let err = apply_to("", &[("FNMILL__RUNTIME__IO_THREADS", "-1")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("runtime.io_threads"), "{err}");
    }
}
