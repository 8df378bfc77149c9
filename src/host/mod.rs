//! The WebAssembly host: compiles function components once, and runs each event in a fresh,
//! limited instance.
//!
//! What makes a fresh instance per event cheap:
//! - one [`Engine`](wasmtime::Engine) with the pooling allocator, whose every limit is derived
//!   from [`HostConfig::max_instances`]; memories are copy-on-write images of the component's
//!   initial heap and a freed slot is reset, not unmapped;
//! - one `Linker` and one `InstancePre` per function, built at start, so the per-event work is
//!   a new instance — no import resolution, no type checks;
//! - a store runs several fresh instances, one event each, before it is dropped, so the
//!   per-store setup (WASI context, module registration, fiber stack) is made once for several
//!   events while no event sees memory another touched;
//! - admission in front of instantiation — an instance slot and room in the memory budget — so
//!   instantiation never fails for lack of a slot and all instances together stay within
//!   [`HostConfig::memory_budget`]: callers wait instead.
//!
//! The host knows nothing about brokers: it takes an [`Event`](fnmill_connector_api::Event) and
//! gives back [`Output`]s or a [`Failure`] that says exactly what went wrong. It serves the `sql`
//! and `keyvalue` capabilities through the traits of `connectors/api` ([`DataSources`]), to the
//! functions whose config grants them ([`Grants`]).
//!
//! # Layout
//!
//! - `engine`: [`Host`] — the engine, the linker, the epoch ticker.
//! - `admission`: instance slots and the memory budget, and what functions keep for later
//!   (reused instances, stores with room) — given back as soon as an admission would wait.
//! - `function`: [`Function`] — one call: store, instance, limits, classification.
//! - `context`: the store data of an instance (WASI without authority, limiter, log budget).
//! - `failure`: [`Failure`] and the load and engine errors.
//! - `data`: the `sql` and `keyvalue` capabilities.
//! - `guest_log`: guest stdout/stderr as log lines, within a per-event budget.
//! - `cache`: compiled components on disk.
//! - `function_cache`: each wasm function's machine code on disk, shared by every component.
//! - `bindings`: the one `bindgen!` of the crate.

mod admission;
mod bindings;
mod cache;
mod context;
mod data;
mod engine;
mod failure;
mod function;
mod function_cache;
mod guest_log;

pub use self::cache::default_cache_dir;
pub use self::data::{CallerScope, DataSources, Grants, KvBucket};
pub use self::engine::{EPOCH_TICK, Host, HostConfig, MAX_GUEST_MEMORY, machine_memory};
pub use self::failure::{EngineError, Failure, LoadError, MAX_MESSAGE, sanitize};
pub use self::function::{CallStats, Function, FunctionSpec, Isolation, Limits, Output};
