//! Per-event cost of the wasm host: the echo guest in a fresh instance per event (fnmill's
//! default, `isolation = "event"`), against `isolation = "reuse"` (an instance serves many
//! events), and against a native Rust function doing the same work. Prints µs/event and the
//! ratios, measured in the same run.
//!
//! `cargo bench --bench host` (add `-- --events N` to change the count).

#[path = "../tests/common/mod.rs"]
mod common;

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fnmill::host::Output;
use fnmill_connector_api::{Event, Header};

fn event(i: usize) -> Event {
    Event {
        id: format!("e{i}"),
        source: "bench".into(),
        key: Some(Bytes::from(format!("key-{}", i % 64))),
        payload: Bytes::from(format!(
            "{{\"order_id\":\"o-{i}\",\"qty\":3,\"price\":12.5}}"
        )),
        headers: vec![Header::new("content-type", "application/json")],
        timestamp_ms: Some(1_700_000_000_000),
        origin: vec![],
        decode_error: None,
    }
}

/// The same work natively: copy the event into one output.
fn native_echo(event: &Event) -> Vec<Output> {
    vec![Output {
        destination: "out".into(),
        key: event.key.as_ref().map(|k| Bytes::copy_from_slice(k)),
        payload: Bytes::copy_from_slice(&event.payload),
        headers: event.headers.clone(),
    }]
}

fn per_event(elapsed: Duration, n: usize) -> f64 {
    elapsed.as_secs_f64() * 1e6 / n as f64
}

fn main() {
    let n: usize = std::env::args()
        .skip_while(|a| a != "--events")
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000);
    let function = common::load_guest("echo", 64);
    let reusing = common::load_guest_with(
        "echo",
        64,
        fnmill::host::Isolation::Reuse {
            max_uses: u32::MAX,
            max_memory: 32 << 20,
        },
    );
    let events: Vec<Event> = (0..1024).map(event).collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    let (fresh, reused) = rt.block_on(async {
        // Warm up: pool slots, page tables, caches.
        for e in events.iter().take(2000.min(n)) {
            function.invoke(e, 1).await.unwrap();
        }
        let start = Instant::now();
        for i in 0..n {
            black_box(function.invoke(&events[i % events.len()], 1).await.unwrap());
        }
        let fresh = start.elapsed();

        for e in events.iter().take(2000.min(n)) {
            reusing.invoke(e, 1).await.unwrap();
        }
        let start = Instant::now();
        for i in 0..n {
            black_box(reusing.invoke(&events[i % events.len()], 1).await.unwrap());
        }
        (fresh, start.elapsed())
    });

    let start = Instant::now();
    for i in 0..n {
        black_box(native_echo(black_box(&events[i % events.len()])));
    }
    let native = start.elapsed();

    let (f, r, nat) = (
        per_event(fresh, n),
        per_event(reused, n),
        per_event(native, n),
    );
    println!("echo guest, {n} events, one thread");
    println!(
        "  fresh instance per event : {f:>8.2} µs/event  ({:>9.0} events/s)",
        1e6 / f
    );
    println!(
        "  isolation = \"reuse\"     : {r:>8.2} µs/event  ({:>9.0} events/s)",
        1e6 / r
    );
    println!("  native Rust function     : {nat:>8.3} µs/event");
    println!("  fresh / reused           : {:>8.2}×", f / r);
    println!("  fresh / native           : {:>8.0}×", f / nat);
    println!("  goals: fresh ≤ 8 µs/event (aim ≤ 5), ≤ 3× reused");
}
