//! Contract: opens bucket config `bucket` (default `cache`); with key = event id: set(payload), get, exists, increment(`n:`+id) by 2 twice, list-keys (all pages), delete, exists; one output to `out` with `{"got_back":bool,"exists":bool,"counter":n,"listed":bool,"exists_after_delete":bool}`; `unavailable` → `retryable`; any other error → `fatal("<error kind>: ...")`.

// Linked for its allocator, which takes the initial memory before growing it.
use fnmill_sdk as _;

wit_bindgen::generate!({
    path: "../../../wit",
    world: "event-function",
});

use exports::fnmill::function::handler::Guest;
use fnmill::function::config;
use fnmill::function::keyvalue::{self, Error as KvError};
use fnmill::function::types::{Error, Event, Output};
use serde_json::json;

struct KvProbe;

fn failure(e: KvError) -> Error {
    match e {
        KvError::Unavailable(m) => Error::Retryable(format!("unavailable: {m}")),
        KvError::NoSuchStore => Error::Fatal("no-such-store".into()),
        KvError::AccessDenied => Error::Fatal("access-denied".into()),
        KvError::Other(m) => Error::Fatal(format!("other: {m}")),
    }
}

impl Guest for KvProbe {
    fn handle(event: Event) -> Result<Vec<Output>, Error> {
        let name = config::get("bucket").unwrap_or_else(|| "cache".into());
        let bucket = keyvalue::open(&name).map_err(failure)?;
        let key = event.id.clone();
        bucket.set(&key, &event.payload).map_err(failure)?;
        let got_back = bucket.get(&key).map_err(failure)? == Some(event.payload.clone());
        let exists = bucket.exists(&key).map_err(failure)?;
        let counter_key = format!("n:{key}");
        bucket.delete(&counter_key).map_err(failure)?;
        bucket.increment(&counter_key, 2).map_err(failure)?;
        let counter = bucket.increment(&counter_key, 2).map_err(failure)?;
        let mut listed = false;
        let mut cursor = None;
        loop {
            let page = bucket.list_keys(cursor).map_err(failure)?;
            listed |= page.keys.iter().any(|k| *k == key);
            cursor = page.cursor;
            if cursor.is_none() {
                break;
            }
        }
        bucket.delete(&key).map_err(failure)?;
        bucket.delete(&counter_key).map_err(failure)?;
        let exists_after_delete = bucket.exists(&key).map_err(failure)?;
        let body = json!({
            "got_back": got_back,
            "exists": exists,
            "counter": counter,
            "listed": listed,
            "exists_after_delete": exists_after_delete,
        });
        Ok(vec![Output {
            destination: "out".into(),
            key: event.key,
            payload: body.to_string().into_bytes(),
            headers: vec![],
        }])
    }
}

export!(KvProbe);
