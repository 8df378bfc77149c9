//! Contract: increments a global counter on every call and returns it as decimal text to `out`
//! (always "1" with a fresh instance per event). Then, by payload: `fail` returns
//! `retryable("failing on purpose")`, `trap` panics, `loop` loops forever, `grow` keeps
//! `grow_mib` MiB (config, default 8) allocated in the instance — each after counting the call.

// Linked for its allocator, which takes the initial memory before growing it.
use fnmill_sdk as _;

wit_bindgen::generate!({
    path: "../../../wit",
    world: "event-function",
});

use core::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use exports::fnmill::function::handler::Guest;
use fnmill::function::config;
use fnmill::function::types::{Error, Event, Output};

static COUNTER: AtomicU64 = AtomicU64::new(0);
static KEPT: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

struct Counter;

impl Guest for Counter {
    fn handle(event: Event) -> Result<Vec<Output>, Error> {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst) + 1;
        match event.payload.as_slice() {
            b"fail" => return Err(Error::Retryable("failing on purpose".into())),
            b"trap" => panic!("trapping on purpose"),
            b"loop" => {
                let mut i = 0u64;
                loop {
                    i = std::hint::black_box(i.wrapping_add(1));
                }
            }
            b"grow" => {
                let mib = config::get("grow_mib")
                    .and_then(|v| v.parse::<usize>().ok())
                    .unwrap_or(8);
                KEPT.lock().unwrap().push(vec![1u8; mib << 20]);
            }
            _ => {}
        }
        Ok(vec![Output {
            destination: "out".to_string(),
            key: event.key,
            payload: n.to_string().into_bytes(),
            headers: Vec::new(),
        }])
    }
}

export!(Counter);
