//! fnmill runs WebAssembly functions on every event that arrives on Kafka, RabbitMQ or a JSON
//! Lines file, publishes what they return, and acknowledges the source only once that is
//! confirmed.
//!
//! # Layout
//!
//! - [`config`]: `fnmill.toml` plus `FNMILL__…` overrides, parsed and validated before anything
//!   starts; every problem is one error naming its key.
//! - [`host`]: the wasm runtime (wasmtime): compiles components once, runs each event in a fresh
//!   instance within its limits, and classifies every failure. Knows nothing about brokers.
//! - [`pipeline`]: the dispatcher that joins a source to a function and its sinks: key-ordered
//!   lanes, retries with backoff, dead letters, settlement. The only module (with [`app`]) that
//!   knows both connectors and wasm.
//! - [`app`]: builds connectors, functions and routes from a [`config::ValidatedConfig`] and
//!   runs them on the IO and compute runtimes.
//! - [`tier`]: the IO tier: data-source pools in processes of their own (`--role io`), reached
//!   over NATS by compute processes (`--role compute`); data-source metrics.
//! - [`telemetry`]: logs, OpenTelemetry traces (W3C trace context through message headers) and
//!   metrics (`/metrics`, OTLP).
//! - [`admin`]: the `/healthz`, `/readyz` and `/metrics` endpoint.
//!
//! Connectors live in their own crates under `connectors/`, behind the traits of
//! `fnmill-connector-api`.

pub mod admin;
pub mod app;
pub mod build;
pub mod config;
#[doc(hidden)]
pub mod fuzzing;
pub mod host;
pub mod pipeline;
mod supervise;
pub mod telemetry;
pub mod tier;

/// An I/O error as one line for a message: its description, without the `(os error N)` that
/// repeats it.
pub fn io_error(e: &std::io::Error) -> String {
    let text = e.to_string();
    match text.rfind(" (os error ") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

/// The process allocator: mimalloc instead of glibc's malloc. Every event allocates on a compute
/// thread (the record, its outputs, the instance's store) and frees much of it on another (the
/// producer's delivery-report thread settles it); glibc takes the owning arena's lock for each
/// such free, and consolidates its fast bins when a larger block is asked for. A profile of the
/// Kafka bench had malloc and free at 13% of the compute thread and 40% of the delivery-report
/// thread. Its v2 line (the crate's `v2` feature), not v3: v3's collection of blocks freed by
/// other threads took about a tenth of the compute threads in the same bench. Declared in the
/// library, so the binary, the benches and the tests all run on it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
