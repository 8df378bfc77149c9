//! The store data of one instance: WASI with no authority, the memory limiter, the guest's log
//! budget, and what the host capabilities need to know about the function and the event.

use std::sync::Arc;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::bindings;
use super::engine::TABLE_ELEMENTS;
use super::function::FunctionShared;
use super::guest_log::{self, LogBudget};
use crate::telemetry::CallScope;

/// An error raised by fnmill's own host code while the guest runs: the call fails as a host
/// fault ([`Failure::Host`](super::Failure::Host)), which is retried, not blamed on the guest.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct HostFault(pub(crate) String);

pub(crate) struct Ctx {
    /// Built when the guest first calls WASI: a function built WASI-free never does, and its
    /// stores skip the context (its random-number generator seeded per store, its streams).
    wasi: Option<WasiCtx>,
    pub(super) table: ResourceTable,
    pub(super) limiter: Limiter,
    pub(super) function: Arc<FunctionShared>,
    pub(super) event_id: Arc<str>,
    /// The event the instance handles now and what it may still log for it (stdout, stderr and
    /// `logging.log`), shared with its stdout and stderr streams. A reused instance gets a new
    /// one per event.
    pub(super) current: Arc<std::sync::Mutex<guest_log::Current>>,
    pub(super) log: Arc<LogBudget>,
    /// The span of the call (tracing on): `sql` and `keyvalue` calls are its children.
    pub(super) trace: Option<CallScope>,
    /// When the current call's wall-clock limit runs out, checked on every epoch tick.
    pub(super) deadline: std::time::Instant,
}

impl Ctx {
    pub(super) fn new(
        function: &Arc<FunctionShared>,
        event_id: &Arc<str>,
        memory_bytes: u64,
        trace: Option<CallScope>,
    ) -> Self {
        let log = Arc::new(LogBudget::new(function.log));
        let current = Arc::new(std::sync::Mutex::new(guest_log::Current {
            event: event_id.clone(),
            budget: log.clone(),
        }));
        Self {
            wasi: None,
            table: ResourceTable::new(),
            limiter: Limiter {
                memory_bytes: memory_bytes as usize,
                refused: false,
                size: 0,
            },
            function: function.clone(),
            event_id: event_id.clone(),
            current,
            log,
            trace,
            // Armed before every instantiation and call (`Function::arm_deadline`).
            deadline: std::time::Instant::now(),
        }
    }

    /// Readies the store for a fresh instance of its next event (several fresh instances share
    /// a store, see [`Function`](super::Function)): the memory limiter starts over, as the new
    /// instance's memory does, and the event gets its own id in log lines, log budget and span.
    pub(super) fn next_instance(&mut self, event_id: &Arc<str>, trace: Option<CallScope>) {
        self.limiter.refused = false;
        self.limiter.size = 0;
        self.next_event(event_id, trace);
    }

    /// Points a reused instance at its next event: its id in log lines, a fresh log budget, the
    /// span of the call.
    pub(super) fn next_event(&mut self, event_id: &Arc<str>, trace: Option<CallScope>) {
        self.trace = trace;
        self.log.report(&self.function.name, &self.event_id);
        self.event_id = event_id.clone();
        self.log = Arc::new(LogBudget::new(self.function.log));
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        current.event = event_id.clone();
        current.budget = self.log.clone();
    }
}

impl Drop for Ctx {
    fn drop(&mut self) {
        self.log.report(&self.function.name, &self.event_id);
    }
}

/// WASI with no authority: no preopened directories, no sockets, no environment, no arguments.
/// It gives the guest clocks, random numbers, and stdout and stderr that become log lines of the
/// event it serves (`current`).
fn wasi_ctx(
    function: &FunctionShared,
    current: &Arc<std::sync::Mutex<guest_log::Current>>,
) -> WasiCtx {
    let stream = |stream| guest_log::GuestLog::new(stream, &function.name, current);
    WasiCtxBuilder::new()
        .stdout(stream(guest_log::Stream::Stdout))
        .stderr(stream(guest_log::Stream::Stderr))
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .build()
}

impl WasiView for Ctx {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        let (function, current) = (&self.function, &self.current);
        WasiCtxView {
            ctx: self.wasi.get_or_insert_with(|| wasi_ctx(function, current)),
            table: &mut self.table,
        }
    }
}

impl bindings::fnmill::function::types::Host for Ctx {}

impl bindings::fnmill::function::config::Host for Ctx {
    fn get(&mut self, key: String) -> Option<String> {
        self.function.config.get(&key).cloned()
    }
}

impl bindings::fnmill::function::logging::Host for Ctx {
    fn log(&mut self, level: bindings::Level, message: String) {
        let Some(message) = self.log.admit(&message) else {
            return;
        };
        let function = &*self.function.name;
        let event = &*self.event_id;
        match level {
            bindings::Level::Trace => tracing::trace!(%function, %event, "{message}"),
            bindings::Level::Debug => tracing::debug!(%function, %event, "{message}"),
            bindings::Level::Info => tracing::info!(%function, %event, "{message}"),
            bindings::Level::Warn => tracing::warn!(%function, %event, "{message}"),
            bindings::Level::Error => tracing::error!(%function, %event, "{message}"),
        }
    }
}

/// Refuses memory growth past the function's limit, and remembers that it did so that the
/// resulting trap is reported as a memory failure.
pub(super) struct Limiter {
    memory_bytes: usize,
    pub(super) refused: bool,
    /// The largest linear memory the instance has grown to (a reused instance is retired past a
    /// bound).
    pub(super) size: usize,
}

impl wasmtime::ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_bytes {
            self.refused = true;
            return Ok(false);
        }
        self.size = self.size.max(desired);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= TABLE_ELEMENTS)
    }
}
