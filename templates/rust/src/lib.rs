//! {{name}}: an fnmill function. An event whose payload is `{"name": "Ada"}` gives one output
//! to `out`: `{"message": "Hello, Ada!"}` (the greeting comes from the `greeting` config key).
//! A payload without a string `name` is `fatal`: fnmill dead-letters the event.

use fnmill_sdk::{Error, Event, Guest, Output, config_or};
use serde_json::{Value, json};

struct Function;

impl Guest for Function {
    fn handle(event: Event) -> Result<Vec<Output>, Error> {
        let request: Value = event.json()?;
        let Some(name) = request.get("name").and_then(Value::as_str) else {
            return Err(Error::fatal("payload has no string `name`"));
        };
        let reply = json!({ "message": greet(&config_or("greeting", "Hello"), name) });
        Ok(vec![Output::json("out", &reply)?.with_key(event.key)])
    }
}

fnmill_sdk::export!(Function);

/// The business logic, kept apart from the bindings so it is easy to test.
fn greet(greeting: &str, name: &str) -> String {
    format!("{greeting}, {name}!")
}

#[cfg(test)]
mod tests {
    use super::*;
    use fnmill_sdk::testing;

    fn event(payload: &str) -> Event {
        testing::event(payload.as_bytes())
    }

    #[test]
    fn greets_with_the_configured_greeting() {
        testing::set_config([("greeting", "Hi")]);
        let outputs = Function::handle(event(r#"{"name":"Ada"}"#)).unwrap();
        assert_eq!(outputs.len(), 1);
        assert_eq!(outputs[0].destination, "out");
        assert_eq!(outputs[0].payload, br#"{"message":"Hi, Ada!"}"#);
    }

    #[test]
    fn a_payload_without_a_name_is_fatal() {
        let err = Function::handle(event(r#"{"nom":"Ada"}"#)).unwrap_err();
        assert!(matches!(err, Error::Fatal(m) if m.contains("name")));
    }
}
