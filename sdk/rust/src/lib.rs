//! Write fnmill functions in Rust.
//!
//! The bindings of fnmill's contract (`wit/function.wit`, world `event-function`) generated once
//! here, an [`export!`] macro that registers a function, and helpers for the common chores: JSON
//! payloads, outputs, errors, config, logging, SQL values and key-value errors.
//!
//! ```no_run
//! use fnmill_sdk::{Error, Event, Guest, Output};
//!
//! struct Echo;
//!
//! impl Guest for Echo {
//!     fn handle(event: Event) -> Result<Vec<Output>, Error> {
//!         Ok(vec![Output::new("out", event.payload).with_key(event.key)])
//!     }
//! }
//!
//! fnmill_sdk::export!(Echo);
//! ```
//!
//! Build with `fnmill build`: cargo for `wasm32-unknown-unknown`, then a component that imports
//! only the fnmill interfaces the function calls (no WASI), with this crate's allocator (`heap`)
//! and a panic hook that logs a panic's message ([`export!`]). `fnmill build --wasi` (cargo for
//! `wasm32-wasip2`) is for a function that needs the standard library's clocks, randomness or
//! stdio. The crate also compiles for the host, so a function's logic can be unit-tested with
//! `cargo test`; calling an import (`config`, `logging`, `sql`, `keyvalue`) outside WebAssembly
//! panics.

wit_bindgen::generate!({
    path: "../../wit",
    world: "event-function",
    // `fnmill_sdk::export!(MyFunction)` from the function's crate: the macro names the bindings
    // through this crate instead of expecting them in the caller.
    pub_export_macro: true,
    default_bindings_module: "fnmill_sdk",
    // Wrapped by this crate's own `export!`, which adds the panic hook.
    export_macro_name: "export_bindings",
});

/// Registers `$function` (a type implementing [`Guest`]) as the function of this component.
///
/// Besides the bindings' export, the first event an instance handles installs a panic hook that
/// logs a panic's message and place through the `logging` capability at error level before the
/// instance traps: a function built by `fnmill build` has no stderr to print it to.
#[macro_export]
macro_rules! export {
    ($function:ident) => {
        const _: () = {
            struct PanicsLogged;

            impl $crate::Guest for PanicsLogged {
                fn handle(
                    event: $crate::Event,
                ) -> ::std::result::Result<::std::vec::Vec<$crate::Output>, $crate::Error> {
                    $crate::log_panics();
                    <$function as $crate::Guest>::handle(event)
                }
            }

            $crate::export_bindings!(PanicsLogged);
        };
    };
}

/// Installs (once per instance) the panic hook of [`export!`].
#[doc(hidden)]
pub fn log_panics() {
    #[cfg(target_arch = "wasm32")]
    {
        static INSTALLED: std::sync::Once = std::sync::Once::new();
        INSTALLED.call_once(|| {
            std::panic::set_hook(Box::new(|info| {
                fnmill::function::logging::log(
                    fnmill::function::logging::Level::Error,
                    &format!("function {info}"),
                );
            }));
        });
    }
}

#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
pub mod heap;

use std::fmt;

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use exports::fnmill::function::handler::Guest;
pub use fnmill::function::types::{Error, Event, Header, Output};
pub use fnmill::function::{config, keyvalue, logging, sql};

impl Error {
    /// A transient failure: fnmill retries the event later, with backoff.
    pub fn retryable(message: impl fmt::Display) -> Self {
        Error::Retryable(message.to_string())
    }

    /// A failure that retrying cannot fix: fnmill dead-letters the event.
    pub fn fatal(message: impl fmt::Display) -> Self {
        Error::Fatal(message.to_string())
    }
}

impl Event {
    /// The payload as UTF-8 text; a payload that is not UTF-8 is a `fatal` error.
    pub fn text(&self) -> Result<&str, Error> {
        std::str::from_utf8(&self.payload)
            .map_err(|e| Error::fatal(format!("payload is not UTF-8: {e}")))
    }

    /// The payload parsed as JSON into `T`; a payload that does not parse is a `fatal` error
    /// (it will not parse on a retry either).
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_slice(&self.payload)
            .map_err(|e| Error::fatal(format!("payload is not valid JSON: {e}")))
    }

    /// The value of the first header named `name` (ASCII case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value.as_slice())
    }

    /// [`Event::header`] as text, if it is UTF-8.
    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.header(name).and_then(|v| std::str::from_utf8(v).ok())
    }
}

impl Output {
    /// An output of `payload` to the destination *name* `destination` (a key of the route's
    /// `destinations` table), without key or headers.
    pub fn new(destination: impl Into<String>, payload: impl Into<Vec<u8>>) -> Self {
        Output {
            destination: destination.into(),
            key: None,
            payload: payload.into(),
            headers: Vec::new(),
        }
    }

    /// An output whose payload is `value` as JSON, with `content-type: application/json`.
    pub fn json<T: Serialize + ?Sized>(
        destination: impl Into<String>,
        value: &T,
    ) -> Result<Self, Error> {
        let payload = serde_json::to_vec(value)
            .map_err(|e| Error::fatal(format!("cannot serialize the output as JSON: {e}")))?;
        Ok(Output::new(destination, payload).with_header("content-type", "application/json"))
    }

    /// Sets the message key (Kafka key, AMQP routing key); `None` leaves it unset.
    pub fn with_key(mut self, key: impl Into<Option<Vec<u8>>>) -> Self {
        self.key = key.into();
        self
    }

    /// Adds a header, replacing any of the same name (ASCII case-insensitive).
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        let name = name.into();
        self.headers.retain(|h| !h.name.eq_ignore_ascii_case(&name));
        self.headers.push(Header {
            name,
            value: value.into(),
        });
        self
    }

    /// Copies the event's headers (e.g. `traceparent`) that the output does not set itself.
    pub fn with_headers_of(mut self, event: &Event) -> Self {
        for h in &event.headers {
            if !self
                .headers
                .iter()
                .any(|o| o.name.eq_ignore_ascii_case(&h.name))
            {
                self.headers.push(h.clone());
            }
        }
        self
    }
}

/// The function's config value for `key` (its `config` table in fnmill.toml). In unit tests on
/// the host it reads [`testing::set_config`] instead.
pub fn get_config(key: &str) -> Option<String> {
    #[cfg(target_arch = "wasm32")]
    return config::get(key);
    #[cfg(not(target_arch = "wasm32"))]
    return testing::config(key);
}

/// [`get_config`], or `default` when the key is not set.
pub fn config_or(key: &str, default: &str) -> String {
    get_config(key).unwrap_or_else(|| default.to_string())
}

/// Log lines in fnmill's log, tagged with the function and the event id. In unit tests on the
/// host they are collected by [`testing::logs`].
pub mod log {
    use super::logging::Level;

    fn log(level: Level, message: &str) {
        #[cfg(target_arch = "wasm32")]
        super::logging::log(level, message);
        #[cfg(not(target_arch = "wasm32"))]
        super::testing::record_log(level, message);
    }

    /// Logs at debug level.
    pub fn debug(message: impl AsRef<str>) {
        log(Level::Debug, message.as_ref());
    }

    /// Logs at info level.
    pub fn info(message: impl AsRef<str>) {
        log(Level::Info, message.as_ref());
    }

    /// Logs at warn level.
    pub fn warn(message: impl AsRef<str>) {
        log(Level::Warn, message.as_ref());
    }

    /// Logs at error level.
    pub fn error(message: impl AsRef<str>) {
        log(Level::Error, message.as_ref());
    }
}

// SQL parameters from plain Rust values: `sql::query("db", "... $1", &[customer_id.into()])`.

impl From<bool> for sql::Value {
    fn from(v: bool) -> Self {
        sql::Value::Boolean(v)
    }
}

impl From<i32> for sql::Value {
    fn from(v: i32) -> Self {
        sql::Value::Int(v.into())
    }
}

impl From<i64> for sql::Value {
    fn from(v: i64) -> Self {
        sql::Value::Int(v)
    }
}

impl From<f64> for sql::Value {
    fn from(v: f64) -> Self {
        sql::Value::Float(v)
    }
}

impl From<&str> for sql::Value {
    fn from(v: &str) -> Self {
        sql::Value::Text(v.to_string())
    }
}

impl From<String> for sql::Value {
    fn from(v: String) -> Self {
        sql::Value::Text(v)
    }
}

impl From<Vec<u8>> for sql::Value {
    fn from(v: Vec<u8>) -> Self {
        sql::Value::Bytes(v)
    }
}

impl<T: Into<sql::Value>> From<Option<T>> for sql::Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(sql::Value::Null, Into::into)
    }
}

impl sql::Value {
    /// A `json`/`jsonb` parameter from any serializable value.
    pub fn json<T: Serialize + ?Sized>(value: &T) -> Result<Self, Error> {
        serde_json::to_string(value)
            .map(sql::Value::Json)
            .map_err(|e| Error::fatal(format!("cannot serialize the parameter as JSON: {e}")))
    }

    /// The text of a `text` value.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            sql::Value::Text(s) => Some(s),
            _ => None,
        }
    }

    /// The number of an `int` value.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            sql::Value::Int(v) => Some(*v),
            _ => None,
        }
    }

    /// The number of a `float` value, or of an `int` value converted.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            sql::Value::Float(v) => Some(*v),
            sql::Value::Int(v) => Some(*v as f64),
            _ => None,
        }
    }

    /// The value of a `boolean`.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            sql::Value::Boolean(v) => Some(*v),
            _ => None,
        }
    }

    /// Whether the value is SQL `NULL`.
    pub fn is_null(&self) -> bool {
        matches!(self, sql::Value::Null)
    }
}

impl sql::Rows {
    /// The value of column `column` in row `row`, if both exist.
    pub fn get(&self, row: usize, column: &str) -> Option<&sql::Value> {
        let index = self.columns.iter().position(|c| c == column)?;
        self.rows.get(row)?.get(index)
    }
}

/// `?` on a `sql` call inside a handler: transient failures become `retryable` (the event is
/// tried again later), everything else `fatal` (dead-lettered with the SQLSTATE in the message).
impl From<sql::SqlError> for Error {
    fn from(e: sql::SqlError) -> Self {
        match e {
            sql::SqlError::Database(d) => {
                let message = format!("sqlstate={}: {}", d.sqlstate, d.message);
                if d.retryable {
                    Error::Retryable(message)
                } else {
                    Error::Fatal(message)
                }
            }
            sql::SqlError::Unavailable(m) => Error::Retryable(format!("database unavailable: {m}")),
            sql::SqlError::NotGranted(m) => Error::Fatal(format!("not-granted: {m}")),
            sql::SqlError::Invalid(m) => Error::Fatal(format!("invalid: {m}")),
        }
    }
}

/// `?` on a `keyvalue` call inside a handler: an unreachable Redis is `retryable`, a bucket the
/// function may not use (or a bad value) is `fatal`.
impl From<keyvalue::Error> for Error {
    fn from(e: keyvalue::Error) -> Self {
        match e {
            keyvalue::Error::Unavailable(m) => {
                Error::Retryable(format!("keyvalue unavailable: {m}"))
            }
            keyvalue::Error::NoSuchStore => Error::Fatal("keyvalue: no-such-store".into()),
            keyvalue::Error::AccessDenied => Error::Fatal("keyvalue: access-denied".into()),
            keyvalue::Error::Other(m) => Error::Fatal(format!("keyvalue: {m}")),
        }
    }
}

/// Unit tests of a function on the host (`cargo test`): config values and logged lines, per
/// test thread. The `sql` and `keyvalue` imports exist only in WebAssembly; keep the logic that
/// uses their results in plain functions to test it.
#[cfg(not(target_arch = "wasm32"))]
pub mod testing {
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    use super::Event;
    use super::logging::Level;

    thread_local! {
        static CONFIG: RefCell<BTreeMap<String, String>> = const { RefCell::new(BTreeMap::new()) };
        static LOGS: RefCell<Vec<(Level, String)>> = const { RefCell::new(Vec::new()) };
    }

    /// Sets what [`get_config`](super::get_config) answers on this thread (replacing it all).
    pub fn set_config<K: Into<String>, V: Into<String>>(values: impl IntoIterator<Item = (K, V)>) {
        CONFIG.with(|c| {
            *c.borrow_mut() = values
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect();
        });
    }

    pub(crate) fn config(key: &str) -> Option<String> {
        CONFIG.with(|c| c.borrow().get(key).cloned())
    }

    pub(crate) fn record_log(level: Level, message: &str) {
        LOGS.with(|l| l.borrow_mut().push((level, message.to_string())));
    }

    /// The lines logged with [`log`](super::log) on this thread so far, and forgets them.
    pub fn logs() -> Vec<(Level, String)> {
        LOGS.with(|l| std::mem::take(&mut *l.borrow_mut()))
    }

    /// An event with `payload`, id `e1`, key `k`, no headers, first attempt.
    pub fn event(payload: impl Into<Vec<u8>>) -> Event {
        Event {
            id: "e1".into(),
            source: "test".into(),
            key: Some(b"k".to_vec()),
            payload: payload.into(),
            headers: Vec::new(),
            timestamp_ms: None,
            attempt: 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(payload: &str) -> Event {
        Event {
            id: "e1".into(),
            source: "test".into(),
            key: Some(b"k".to_vec()),
            payload: payload.as_bytes().to_vec(),
            headers: vec![Header {
                name: "TraceParent".into(),
                value: b"00-1".to_vec(),
            }],
            timestamp_ms: None,
            attempt: 1,
        }
    }

    #[test]
    fn json_payloads_in_and_out() {
        #[derive(Debug, serde::Deserialize, serde::Serialize)]
        struct Order {
            id: String,
        }
        let order: Order = event(r#"{"id":"o-1"}"#).json().unwrap();
        let out = Output::json("valid", &order).unwrap();
        assert_eq!(out.payload, br#"{"id":"o-1"}"#);
        assert_eq!(out.headers[0].name, "content-type");
        let err = event("{nope").json::<Order>().unwrap_err();
        assert!(matches!(err, Error::Fatal(m) if m.starts_with("payload is not valid JSON")));
    }

    #[test]
    fn headers_and_keys() {
        let e = event("x");
        assert_eq!(e.header_str("traceparent"), Some("00-1"));
        let out = Output::new("out", "y")
            .with_key(e.key.clone())
            .with_header("traceparent", "00-2")
            .with_headers_of(&e);
        assert_eq!(out.key.as_deref(), Some(&b"k"[..]));
        assert_eq!(out.headers.len(), 1, "the output's own header wins");
        assert_eq!(out.headers[0].value, b"00-2");
    }

    #[test]
    fn errors_convert_by_retryability() {
        let e: Error = sql::SqlError::Unavailable("pool".into()).into();
        assert!(matches!(e, Error::Retryable(_)));
        let e: Error = sql::SqlError::Database(sql::DatabaseError {
            sqlstate: "42P01".into(),
            message: "no table".into(),
            retryable: false,
        })
        .into();
        assert!(matches!(e, Error::Fatal(m) if m == "sqlstate=42P01: no table"));
        let e: Error = keyvalue::Error::AccessDenied.into();
        assert!(matches!(e, Error::Fatal(_)));
        let v: sql::Value = Some(7i64).into();
        assert_eq!(v.as_i64(), Some(7));
        let v: sql::Value = None::<String>.into();
        assert!(v.is_null());
    }
}
