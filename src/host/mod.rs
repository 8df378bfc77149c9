//! The WebAssembly host: compiles function components once, and runs each event in a fresh,
//! limited instance.
//!
//! What makes a fresh instance per event cheap:
//! - one [`Engine`] with the pooling allocator, whose every limit is derived from
//!   [`HostConfig::max_instances`]; memories are copy-on-write images of the component's initial
//!   heap and a freed slot is reset, not unmapped;
//! - one [`Linker`] and one `InstancePre` per function, built at start, so the per-event work is
//!   a new [`Store`] and instantiation — no import resolution, no type checks;
//! - a semaphore sized to the pool in front of instantiation, so instantiation never fails for
//!   lack of a slot: callers wait instead.
//!
//! The host knows nothing about brokers: it takes an [`Event`] and gives back [`Output`]s or a
//! [`Failure`] that says exactly what went wrong. It serves the `sql` and `keyvalue`
//! capabilities from native pools ([`DataSources`]) that live on the IO runtime, to the
//! functions whose config grants them ([`Grants`]); see `data.rs`.

mod bindings;
mod cache;
mod data;
mod guest_log;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fnmill_connector_api::{Event, Header};
use tokio::sync::Semaphore;
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{
    Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, Trap,
    UpdateDeadline,
};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use self::bindings::{EventFunction, EventFunctionPre, GuestError};
pub use self::cache::default_cache_dir;
pub use self::data::{DataSources, Grants, KvBucket};

/// How often the epoch ticker advances the engine's epoch. A guest that overruns its timeout is
/// stopped within one tick; a tick costs one atomic increment, so 10 ms is cheap and precise
/// enough for timeouts measured in hundreds of milliseconds or more.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Core-instance slots reserved per component instance. A Rust component has 2–4 core
/// instances (the module and the shims that lower imports); componentize-py and
/// componentize-js components have up to a dozen.
const CORE_INSTANCES_PER_COMPONENT: u32 = 16;

/// Linear memories reserved per component instance: one for Rust and JavaScript components,
/// two for some Python builds. Each slot is address space only (a `PROT_NONE` reservation) until
/// a guest touches it.
const MEMORIES_PER_COMPONENT: u32 = 2;

/// Tables reserved per component instance (function tables of the core modules).
const TABLES_PER_COMPONENT: u32 = 4;

/// Elements per pooled table. Interpreters compiled to wasm (CPython, QuickJS) have function
/// tables of several thousand entries; 64 Ki covers them at 512 KiB of address space per slot.
const TABLE_ELEMENTS: usize = 65_536;

/// Bytes of each freed memory and table slot that are reset with `memset` and kept resident
/// rather than returned to the kernel with `madvise`: a small guest's whole dirty heap fits, so
/// the next instance in the slot takes no page faults (measured: 32–42 µs → 17.6 µs per event
/// for the echo guest; see FIELD_NOTES.md). With the pagemap scan this is a budget for the
/// *dirty* bytes only, so 1 MiB costs a small guest nothing more, and covers the ~340 KiB a
/// JavaScript (SpiderMonkey) echo dirties: its fresh instances fault 41 times instead of 85.
const KEEP_RESIDENT: usize = 1 << 20;

/// Stack for the fiber an async call runs on. Guest frames and host-call frames share it;
/// wasmtime's default is 2 MiB, and the guest itself is capped at `max_wasm_stack` (512 KiB).
const ASYNC_STACK_SIZE: usize = 1024 * 1024;

/// Settings of the engine shared by every function.
#[derive(Clone, Debug)]
pub struct HostConfig {
    /// Instances that may exist at once across all functions: the size of the pooling allocator
    /// and of the semaphore in front of it.
    pub max_instances: u32,
    /// The largest memory limit of any function; sizes the pooled memory slots.
    pub max_memory_bytes: u64,
    /// Whether any function sets a fuel limit. Fuel metering is an engine-wide switch that makes
    /// all compiled code a little slower, so it is on only when used.
    pub fuel: bool,
    /// Where compiled components are cached; `None` disables the cache.
    pub cache_dir: Option<PathBuf>,
}

/// Per-function limits.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Linear memory the guest may grow to.
    pub memory_bytes: u64,
    /// Wall-clock time one call may take.
    pub timeout: Duration,
    /// Fuel (roughly, wasm instructions) one call may use; `None` = unlimited.
    pub fuel: Option<u64>,
    /// Outputs one call may return.
    pub max_outputs: u32,
    /// Total payload + key + header bytes one call may return.
    pub max_output_bytes: u64,
}

/// What to load as a function.
#[derive(Clone, Debug)]
pub struct FunctionSpec {
    pub name: String,
    pub component: PathBuf,
    pub limits: Limits,
    /// Values the guest can read with `config.get`.
    pub config: BTreeMap<String, String>,
}

/// An output returned by a function.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Output {
    /// The destination *name*, resolved by the route.
    pub destination: String,
    pub key: Option<Bytes>,
    pub payload: Bytes,
    pub headers: Vec<Header>,
}

/// Why an invocation failed. Every way a call can go wrong lands in exactly one of these.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// The function returned `error::retryable`.
    #[error("retryable: {0}")]
    Retryable(String),
    /// The function returned `error::fatal`.
    #[error("fatal: {0}")]
    Fatal(String),
    /// The guest trapped (a panic, `unreachable`, out-of-bounds access, stack overflow...).
    #[error("trap ({code}): {message}")]
    Trap { code: String, message: String },
    /// The call ran longer than the function's `timeout`.
    #[error("timeout: the call ran longer than {0:?}")]
    Timeout(Duration),
    /// The call used up its fuel.
    #[error("fuel: the call used more than {0} units of fuel")]
    Fuel(u64),
    /// The guest tried to grow its memory past the function's `memory` limit and then failed.
    #[error("memory: the guest needed more than its limit of {0} bytes")]
    Memory(u64),
    /// The function returned too many outputs or too many bytes.
    #[error("output limit: {0}")]
    OutputLimit(String),
    /// The instance could not be created.
    #[error("instantiation: {0}")]
    Instantiation(String),
}

impl Failure {
    /// A stable, short name for metrics, headers and exit messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Failure::Retryable(_) => "retryable",
            Failure::Fatal(_) => "fatal",
            Failure::Trap { .. } => "trap",
            Failure::Timeout(_) => "timeout",
            Failure::Fuel(_) => "fuel",
            Failure::Memory(_) => "memory",
            Failure::OutputLimit(_) => "output-limit",
            Failure::Instantiation(_) => "instantiation",
        }
    }

    /// Whether trying the same event again may succeed. Traps, timeouts, fuel and memory
    /// exhaustion are treated as deterministic: retrying a guest that loops or panics on an
    /// event only burns compute and holds its key's lane.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Failure::Retryable(_) | Failure::Instantiation(_))
    }

    /// The failure's message without its kind.
    pub fn message(&self) -> String {
        match self {
            Failure::Retryable(m) | Failure::Fatal(m) => m.clone(),
            Failure::Trap { code, message } => format!("{code}: {message}"),
            other => {
                let text = other.to_string();
                match text.split_once(": ") {
                    Some((_, rest)) => rest.to_string(),
                    None => text,
                }
            }
        }
    }
}

/// Errors loading a function.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read component {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a valid WebAssembly component: {message}")]
    Compile { path: PathBuf, message: String },
    #[error("{path} does not implement the fnmill:function/event-function world: {message}")]
    World { path: PathBuf, message: String },
    /// A grant names a data source or bucket that is not there.
    #[error("{0}")]
    Grant(String),
}

/// Errors creating the host.
#[derive(Debug, thiserror::Error)]
#[error("cannot create the wasm engine: {0}")]
pub struct EngineError(String);

/// The engine, the linker and the instance semaphore, shared by every function.
pub struct Host {
    engine: Engine,
    linker: Linker<Ctx>,
    permits: Arc<Semaphore>,
    cache_dir: Option<PathBuf>,
    fuel: bool,
    /// Keeps the epoch ticker thread alive; it stops by itself once the engine is dropped.
    _ticker: std::thread::JoinHandle<()>,
}

impl Host {
    pub fn new(config: &HostConfig) -> Result<Self, EngineError> {
        let engine =
            Engine::new(&engine_config(config)).map_err(|e| EngineError(format!("{e:#}")))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| EngineError(format!("{e:#}")))?;
        EventFunction::add_to_linker::<Ctx, HasSelf<Ctx>>(&mut linker, |ctx| ctx)
            .map_err(|e| EngineError(format!("{e:#}")))?;
        let ticker = spawn_epoch_ticker(&engine);
        Ok(Self {
            engine,
            linker,
            permits: Arc::new(Semaphore::new(config.max_instances as usize)),
            cache_dir: config.cache_dir.clone(),
            fuel: config.fuel,
            _ticker: ticker,
        })
    }

    /// Compiles (or loads from the cache) a component and checks that it implements the
    /// `event-function` world with nothing but the imports fnmill provides. The function is
    /// granted no data source: its `sql` and `keyvalue` calls are refused.
    pub fn load(&self, spec: FunctionSpec) -> Result<Function, LoadError> {
        self.load_inner(spec, data::FunctionData::default())
    }

    /// [`Host::load`] for a function that may use the data sources and buckets of `data` that
    /// `grants` names, and nothing else.
    pub fn load_with(
        &self,
        spec: FunctionSpec,
        data: &DataSources,
        grants: &Grants,
    ) -> Result<Function, LoadError> {
        let data = data.resolve(grants).map_err(LoadError::Grant)?;
        self.load_inner(spec, data)
    }

    fn load_inner(
        &self,
        spec: FunctionSpec,
        data: data::FunctionData,
    ) -> Result<Function, LoadError> {
        let component = self.compile(&spec.component)?;
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| LoadError::World {
                path: spec.component.clone(),
                message: format!("{e:#}"),
            })?;
        let pre = EventFunctionPre::new(pre).map_err(|e| LoadError::World {
            path: spec.component.clone(),
            message: format!("{e:#}"),
        })?;
        Ok(Function {
            shared: Arc::new(FunctionShared {
                name: spec.name.into(),
                config: spec.config,
                data,
            }),
            limits: spec.limits,
            pre,
            permits: self.permits.clone(),
            engine_fuel: self.fuel,
        })
    }

    fn compile(&self, path: &Path) -> Result<Component, LoadError> {
        let bytes = std::fs::read(path).map_err(|source| LoadError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let compile = |bytes: &[u8]| {
            Component::new(&self.engine, bytes).map_err(|e| LoadError::Compile {
                path: path.to_path_buf(),
                message: format!("{e:#}"),
            })
        };
        match &self.cache_dir {
            Some(dir) => cache::load_or_compile(&self.engine, dir, &bytes, compile),
            None => compile(&bytes),
        }
    }
}

fn engine_config(config: &HostConfig) -> Config {
    let n = config.max_instances.max(1);
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(n)
        .total_core_instances(n.saturating_mul(CORE_INSTANCES_PER_COMPONENT))
        .max_core_instances_per_component(CORE_INSTANCES_PER_COMPONENT)
        .total_memories(n.saturating_mul(MEMORIES_PER_COMPONENT))
        .max_memories_per_component(MEMORIES_PER_COMPONENT)
        .total_tables(n.saturating_mul(TABLES_PER_COMPONENT))
        .max_tables_per_component(TABLES_PER_COMPONENT)
        .table_elements(TABLE_ELEMENTS)
        // One fiber stack per instance in flight: every call is async.
        .total_stacks(n)
        .max_memory_size(config.max_memory_bytes as usize)
        .linear_memory_keep_resident(KEEP_RESIDENT)
        .table_keep_resident(KEEP_RESIDENT)
        // Find dirty pages with one ioctl instead of resetting whole slots (Linux ≥ 6.7).
        .pagemap_scan(Enabled::Auto);

    let mut c = Config::new();
    c.allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
        .wasm_component_model(true)
        .epoch_interruption(true)
        .consume_fuel(config.fuel)
        .memory_init_cow(true)
        .async_stack_size(ASYNC_STACK_SIZE);
    c
}

/// Advances the engine's epoch every [`EPOCH_TICK`]. Holds only a weak reference, so the thread
/// ends soon after the last `Engine` clone is dropped.
fn spawn_epoch_ticker(engine: &Engine) -> std::thread::JoinHandle<()> {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("fnmill-epoch".into())
        .spawn(move || {
            loop {
                std::thread::sleep(EPOCH_TICK);
                match weak.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => return,
                }
            }
        })
        .expect("spawning the epoch ticker thread")
}

/// What every instance of one function shares.
struct FunctionShared {
    name: Arc<str>,
    config: BTreeMap<String, String>,
    /// The pools this function is granted.
    data: data::FunctionData,
}

/// A loaded function, ready to run events. Cheap to share behind an `Arc`.
pub struct Function {
    shared: Arc<FunctionShared>,
    limits: Limits,
    pre: EventFunctionPre<Ctx>,
    permits: Arc<Semaphore>,
    /// Whether the engine meters fuel, so every store must be given some.
    engine_fuel: bool,
}

impl Function {
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Runs `event` in a fresh instance. A failure of any kind is returned, never raised: the
    /// instance is thrown away and the next call starts clean.
    pub async fn invoke(&self, event: &Event, attempt: u32) -> Result<Vec<Output>, Failure> {
        // The pool has a slot for every permit, so instantiation never fails for lack of one.
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| Failure::Instantiation("the host is shutting down".into()))?;
        // Epoch interruption cannot stop a guest that is inside an awaited host call; the outer
        // timeout catches that case, one tick later than the epoch would.
        let outer = self.limits.timeout + EPOCH_TICK * 2;
        match tokio::time::timeout(outer, self.invoke_in_store(event, attempt)).await {
            Ok(result) => result,
            Err(_) => Err(Failure::Timeout(self.limits.timeout)),
        }
    }

    async fn invoke_in_store(&self, event: &Event, attempt: u32) -> Result<Vec<Output>, Failure> {
        let engine = self.pre.instance_pre().engine();
        let event_id: Arc<str> = Arc::from(event.id.as_str());
        let mut store = Store::new(
            engine,
            Ctx::new(&self.shared, &event_id, self.limits.memory_bytes),
        );
        store.limiter(|ctx| &mut ctx.limiter);
        if self.engine_fuel {
            // Fuel metering is engine-wide; a function without a fuel limit gets all of it.
            store
                .set_fuel(self.limits.fuel.unwrap_or(u64::MAX))
                .map_err(|e| Failure::Instantiation(format!("{e:#}")))?;
        }
        let deadline = Instant::now() + self.limits.timeout;
        // Check the clock on every tick and yield to the executor meanwhile, so a long guest
        // neither overruns its timeout nor monopolises a compute thread.
        store.epoch_deadline_callback(move |_| {
            if Instant::now() >= deadline {
                Err(Trap::Interrupt.into())
            } else {
                Ok(UpdateDeadline::Yield(1))
            }
        });
        store.set_epoch_deadline(1);

        let instance = match self.pre.instantiate_async(&mut store).await {
            Ok(instance) => instance,
            Err(e) => return Err(self.classify(e, store.data(), "instantiation")),
        };
        let wit_event = to_wit(event, attempt);
        let result = instance
            .fnmill_function_handler()
            .call_handle(&mut store, &wit_event)
            .await;
        match result {
            Ok(Ok(outputs)) => self.check_outputs(outputs),
            Ok(Err(GuestError::Retryable(message))) => Err(Failure::Retryable(message)),
            Ok(Err(GuestError::Fatal(message))) => Err(Failure::Fatal(message)),
            Err(e) => Err(self.classify(e, store.data(), "call")),
        }
    }

    fn classify(&self, error: wasmtime::Error, ctx: &Ctx, stage: &str) -> Failure {
        if let Some(trap) = error.downcast_ref::<Trap>() {
            match trap {
                Trap::Interrupt => return Failure::Timeout(self.limits.timeout),
                Trap::OutOfFuel => return Failure::Fuel(self.limits.fuel.unwrap_or(0)),
                _ => {}
            }
            // A guest whose allocation was refused usually aborts; that is the memory limit
            // at work, not a bug in the guest.
            if ctx.limiter.refused {
                return Failure::Memory(self.limits.memory_bytes);
            }
            return Failure::Trap {
                code: trap_code(*trap).to_string(),
                message: first_line(&error),
            };
        }
        if ctx.limiter.refused {
            return Failure::Memory(self.limits.memory_bytes);
        }
        if stage == "instantiation" {
            Failure::Instantiation(format!("{error:#}"))
        } else {
            Failure::Trap {
                code: "host".into(),
                message: format!("{error:#}"),
            }
        }
    }

    fn check_outputs(&self, outputs: Vec<bindings::Output>) -> Result<Vec<Output>, Failure> {
        let limits = &self.limits;
        if outputs.len() > limits.max_outputs as usize {
            return Err(Failure::OutputLimit(format!(
                "returned {} outputs, the limit is {}",
                outputs.len(),
                limits.max_outputs
            )));
        }
        let bytes: u64 = outputs
            .iter()
            .map(|o| {
                (o.payload.len()
                    + o.key.as_ref().map_or(0, Vec::len)
                    + o.headers
                        .iter()
                        .map(|h| h.name.len() + h.value.len())
                        .sum::<usize>()) as u64
            })
            .sum();
        if bytes > limits.max_output_bytes {
            return Err(Failure::OutputLimit(format!(
                "returned {bytes} bytes of outputs, the limit is {}",
                limits.max_output_bytes
            )));
        }
        Ok(outputs
            .into_iter()
            .map(|o| Output {
                destination: o.destination,
                key: o.key.map(Bytes::from),
                payload: Bytes::from(o.payload),
                headers: o
                    .headers
                    .into_iter()
                    .map(|h| Header::new(h.name, h.value))
                    .collect(),
            })
            .collect())
    }
}

/// One instance kept for many events. Not isolated — state leaks from one event to the next —
/// so the pipeline never uses it; it is the baseline the benchmarks compare fresh instances with.
pub struct ReusedInstance<'a> {
    function: &'a Function,
    store: Store<Ctx>,
    instance: EventFunction,
}

impl Function {
    /// Creates one instance to call repeatedly with [`ReusedInstance::call`].
    pub async fn reused_instance(&self) -> Result<ReusedInstance<'_>, Failure> {
        let engine = self.pre.instance_pre().engine();
        let id: Arc<str> = Arc::from("reused");
        let mut store = Store::new(
            engine,
            Ctx::new(&self.shared, &id, self.limits.memory_bytes),
        );
        store.limiter(|ctx| &mut ctx.limiter);
        if self.engine_fuel {
            store
                .set_fuel(u64::MAX)
                .map_err(|e| Failure::Instantiation(format!("{e:#}")))?;
        }
        store.epoch_deadline_callback(|_| Ok(UpdateDeadline::Yield(1)));
        let instance = self
            .pre
            .instantiate_async(&mut store)
            .await
            .map_err(|e| Failure::Instantiation(format!("{e:#}")))?;
        Ok(ReusedInstance {
            function: self,
            store,
            instance,
        })
    }
}

impl ReusedInstance<'_> {
    pub async fn call(&mut self, event: &Event, attempt: u32) -> Result<Vec<Output>, Failure> {
        let result = self
            .instance
            .fnmill_function_handler()
            .call_handle(&mut self.store, &to_wit(event, attempt))
            .await;
        match result {
            Ok(Ok(outputs)) => self.function.check_outputs(outputs),
            Ok(Err(GuestError::Retryable(m))) => Err(Failure::Retryable(m)),
            Ok(Err(GuestError::Fatal(m))) => Err(Failure::Fatal(m)),
            Err(e) => Err(self.function.classify(e, self.store.data(), "call")),
        }
    }
}

/// The event as the guest sees it. The one place host types become generated types.
fn to_wit(event: &Event, attempt: u32) -> bindings::Event {
    bindings::Event {
        id: event.id.clone(),
        source: event.source.clone(),
        key: event.key.as_ref().map(|k| k.to_vec()),
        payload: event.payload.to_vec(),
        headers: event
            .headers
            .iter()
            .map(|h| bindings::Header {
                name: h.name.clone(),
                value: h.value.to_vec(),
            })
            .collect(),
        timestamp_ms: event.timestamp_ms,
        attempt,
    }
}

fn trap_code(trap: Trap) -> &'static str {
    match trap {
        Trap::StackOverflow => "stack-overflow",
        Trap::MemoryOutOfBounds => "memory-out-of-bounds",
        Trap::HeapMisaligned => "heap-misaligned",
        Trap::TableOutOfBounds => "table-out-of-bounds",
        Trap::IndirectCallToNull => "indirect-call-to-null",
        Trap::BadSignature => "bad-signature",
        Trap::IntegerOverflow => "integer-overflow",
        Trap::IntegerDivisionByZero => "integer-division-by-zero",
        Trap::BadConversionToInteger => "bad-conversion-to-integer",
        Trap::UnreachableCodeReached => "unreachable",
        Trap::Interrupt => "interrupt",
        Trap::OutOfFuel => "out-of-fuel",
        Trap::CannotEnterComponent => "cannot-enter-component",
        _ => "other",
    }
}

fn first_line(error: &wasmtime::Error) -> String {
    let text = format!("{error}");
    text.lines().next().unwrap_or_default().to_string()
}

/// Store data of one instance: WASI with no authority, the limiter, and what the host
/// capabilities need to know about the function and the event.
struct Ctx {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: Limiter,
    function: Arc<FunctionShared>,
    event_id: Arc<str>,
}

impl Ctx {
    fn new(function: &Arc<FunctionShared>, event_id: &Arc<str>, memory_bytes: u64) -> Self {
        // No preopened directories, no sockets, no environment, no arguments: WASI here only
        // gives the guest clocks, random numbers and stdout/stderr that become log lines.
        let wasi = WasiCtxBuilder::new()
            .stdout(guest_log::GuestLog::new(
                guest_log::Stream::Stdout,
                &function.name,
                event_id,
            ))
            .stderr(guest_log::GuestLog::new(
                guest_log::Stream::Stderr,
                &function.name,
                event_id,
            ))
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        Self {
            wasi,
            table: ResourceTable::new(),
            limiter: Limiter {
                memory_bytes: memory_bytes as usize,
                refused: false,
            },
            function: function.clone(),
            event_id: event_id.clone(),
        }
    }
}

impl WasiView for Ctx {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
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
struct Limiter {
    memory_bytes: usize,
    refused: bool,
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
