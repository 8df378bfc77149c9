//! The engine shared by every function: wasmtime's [`Engine`] with the pooling allocator, the
//! [`Linker`] with fnmill's imports, the epoch ticker, and the two admissions in front of
//! instantiation (instance slots and the memory budget).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{
    Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, ProfilingStrategy,
};

use super::admission::Admissions;
use super::bindings::{EventFunction, EventFunctionPre};
use super::context::Ctx;
use super::data::{DataSources, FunctionData, Grants};
use super::failure::{EngineError, LoadError};
use super::function::{Function, FunctionShared, FunctionSpec};
use super::function_cache::FunctionCache;
use super::{cache, guest_log};

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
pub(super) const TABLE_ELEMENTS: usize = 65_536;

/// Bytes of each freed memory and table slot that are reset with `memset` and kept resident
/// rather than returned to the kernel with `madvise`: a small guest's whole dirty heap fits, so
/// the next instance in the slot takes no page faults (measured: 32–42 µs → 17.6 µs per event
/// for the echo guest; see docs/performance.md). With the pagemap scan this is a budget for the
/// *dirty* bytes only, so 1 MiB costs a small guest nothing more, and covers the ~340 KiB a
/// JavaScript (SpiderMonkey) echo dirties: its fresh instances fault 41 times instead of 85.
const KEEP_RESIDENT: usize = 1 << 20;

/// Stack for the fiber an async call runs on. Guest frames and host-call frames share it;
/// wasmtime's default is 2 MiB, and the guest itself is capped at `max_wasm_stack` (512 KiB).
const ASYNC_STACK_SIZE: usize = 1024 * 1024;

/// The unit the memory budget is counted in: one wasm page.
pub(super) const PAGE: u64 = 64 * 1024;

/// The largest linear memory a 32-bit wasm guest can address.
pub const MAX_GUEST_MEMORY: u64 = 4 * 1024 * 1024 * 1024;

/// Settings of the engine shared by every function.
#[derive(Clone, Debug)]
pub struct HostConfig {
    /// Instances that may exist at once across all functions: the size of the pooling allocator
    /// and of the semaphore in front of it.
    pub max_instances: u32,
    /// The largest memory limit of any function; sizes the pooled memory slots.
    pub max_memory_bytes: u64,
    /// Memory all live instances may reserve together: an instance is admitted only once its
    /// function's `memory` limit fits in what is left, so the total stays bounded however many
    /// events are in flight.
    pub memory_budget: u64,
    /// Whether any function sets a fuel limit. Fuel metering is an engine-wide switch that makes
    /// all compiled code a little slower, so it is on only when used.
    pub fuel: bool,
    /// Where compiled components are cached; `None` disables the cache.
    pub cache_dir: Option<PathBuf>,
    /// Write a perf map (`/tmp/perf-<pid>.map`) of the compiled code, for `perf` to name the
    /// guests' functions.
    pub perf_map: bool,
}

/// The engine, the linker and the admissions, shared by every function.
pub struct Host {
    engine: Engine,
    linker: Linker<Ctx>,
    /// Instance slots and the memory budget.
    admissions: Arc<Admissions>,
    budget_pages: u64,
    cache_dir: Option<PathBuf>,
    /// Each wasm function's machine code, shared by every component compiled here.
    functions: Option<Arc<FunctionCache>>,
    fuel: bool,
    /// Keeps the epoch ticker thread alive; it stops by itself once the engine is dropped.
    _ticker: std::thread::JoinHandle<()>,
}

impl Host {
    pub fn new(config: &HostConfig) -> Result<Self, EngineError> {
        let functions = config
            .cache_dir
            .as_ref()
            .and_then(|dir| FunctionCache::open(dir.join("functions")))
            .map(Arc::new);
        let mut engine_config = engine_config(config);
        if let Some(store) = &functions {
            engine_config
                .enable_incremental_compilation(store.clone())
                .map_err(|e| EngineError(format!("{e:#}")))?;
        }
        let engine = Engine::new(&engine_config).map_err(|e| EngineError(format!("{e:#}")))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| EngineError(format!("{e:#}")))?;
        EventFunction::add_to_linker::<Ctx, HasSelf<Ctx>>(&mut linker, |ctx| ctx)
            .map_err(|e| EngineError(format!("{e:#}")))?;
        let ticker = spawn_epoch_ticker(&engine);
        let budget_pages = (config.memory_budget / PAGE).max(1);
        Ok(Self {
            engine,
            linker,
            admissions: Arc::new(Admissions::new(
                config.max_instances as usize,
                budget_pages.min(Semaphore::MAX_PERMITS as u64) as usize,
            )),
            budget_pages,
            cache_dir: config.cache_dir.clone(),
            functions,
            fuel: config.fuel,
            _ticker: ticker,
        })
    }

    /// Compiles (or loads from the cache) a component and checks that it implements the
    /// `event-function` world with nothing but the imports fnmill provides. The function is
    /// granted no data source: its `sql` and `keyvalue` calls are refused.
    pub fn load(&self, spec: FunctionSpec) -> Result<Function, LoadError> {
        self.load_inner(spec, FunctionData::default())
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

    fn load_inner(&self, spec: FunctionSpec, data: FunctionData) -> Result<Function, LoadError> {
        let component = self.compile(&spec.component)?;
        let world = |e: wasmtime::Error| LoadError::World {
            path: spec.component.clone(),
            message: one_line(&e),
        };
        let pre = self.linker.instantiate_pre(&component).map_err(world)?;
        let pre = EventFunctionPre::new(pre).map_err(world)?;
        let handle = handler_export(&component).ok_or_else(|| LoadError::World {
            path: spec.component.clone(),
            message: format!("no `handle` function exported in `{HANDLER}`"),
        })?;
        let pages = spec
            .limits
            .memory_bytes
            .div_ceil(PAGE)
            .min(self.budget_pages);
        Ok(Function {
            shared: Arc::new(FunctionShared {
                name: spec.name.into(),
                config: spec.config,
                data,
                log: guest_log::LogLimits {
                    bytes: spec.limits.max_log_bytes,
                    lines: spec.limits.max_log_lines,
                },
                live: Default::default(),
                memory_peak: Default::default(),
            }),
            limits: spec.limits,
            pre,
            handle,
            handle_checked: Default::default(),
            admissions: self.admissions.clone(),
            budget_pages: pages as u32,
            engine_fuel: self.fuel,
            isolation: spec.isolation,
            kept: self.admissions.keeper(),
        })
    }

    fn compile(&self, path: &Path) -> Result<Component, LoadError> {
        let bytes = std::fs::read(path).map_err(|source| LoadError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let compile = |bytes: &[u8]| {
            let started = Instant::now();
            let before = self.functions.as_ref().map(|f| f.counts());
            let component =
                Component::new(&self.engine, bytes).map_err(|e| LoadError::Compile {
                    path: path.to_path_buf(),
                    message: compile_error(&e),
                })?;
            if let (Some(functions), Some(before)) = (&self.functions, before) {
                functions.compiled(path, before, started.elapsed());
            }
            Ok(component)
        };
        match &self.cache_dir {
            Some(dir) => cache::load_or_compile(&self.engine, dir, &bytes, compile),
            None => compile(&bytes),
        }
    }
}

/// The interface every function exports, as its component names it (the package and version of
/// `wit/function.wit`; a unit test keeps the two in step).
const HANDLER: &str = "fnmill:function/handler@0.1.0";

/// Where a component exports the handler's `handle` function.
fn handler_export(component: &Component) -> Option<wasmtime::component::ComponentExportIndex> {
    let (_, interface) = component.get_export(None, HANDLER)?;
    let (_, handle) = component.get_export(Some(&interface), "handle")?;
    Some(handle)
}

/// A wasmtime error's chain on one line.
fn one_line(e: &wasmtime::Error) -> String {
    format!("{e:#}").replace('\n', " ")
}

/// Why a file is not a component, in one line: wasmtime's parser reports the first problem,
/// followed by context that repeats it.
fn compile_error(e: &wasmtime::Error) -> String {
    let root = e.root_cause().to_string();
    let first = root.lines().next().unwrap_or_default().trim();
    if first.contains("magic header") || first.contains("unknown binary version") {
        "not a WebAssembly file (build the function with `fnmill build`)".to_string()
    } else if first.contains("expected a component")
        || first.contains("is a core module")
        || first.contains("wasm module with a component parser")
    {
        format!(
            "{first} (a core module, not a component: build the function with `fnmill build`, \
             or with cargo for wasm32-wasip2)"
        )
    } else {
        first.to_string()
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
        .max_memory_size(config.max_memory_bytes.min(MAX_GUEST_MEMORY) as usize)
        .linear_memory_keep_resident(KEEP_RESIDENT)
        .table_keep_resident(KEEP_RESIDENT)
        // Find dirty pages with one ioctl instead of resetting whole slots (Linux ≥ 6.7).
        .pagemap_scan(Enabled::Auto);

    let mut c = Config::new();
    c.allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
        .wasm_component_model(true)
        // No function uses the component model's concurrency (WASIp3 streams and futures):
        // without it a store sets up less, and every call is cheaper.
        .concurrency_support(false)
        .epoch_interruption(true)
        .consume_fuel(config.fuel)
        .memory_init_cow(true)
        .async_stack_size(ASYNC_STACK_SIZE);
    if config.perf_map {
        c.profiler(ProfilingStrategy::PerfMap);
    }
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

/// The machine's memory as this process may use it: the cgroup's limit when there is one (a
/// container), else the physical memory. `None` when neither can be read.
pub fn machine_memory() -> Option<u64> {
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    let physical = std::fs::read_to_string("/proc/meminfo").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
    });
    match (cgroup, physical) {
        (Some(c), Some(p)) => Some(c.min(p)),
        (c, p) => c.or(p),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn why_not(bytes: &[u8]) -> String {
        let engine = Engine::default();
        let error = Component::new(&engine, bytes).unwrap_err();
        compile_error(&error)
    }

    #[test]
    fn the_handler_interface_is_named_as_the_wit_package_versions_it() {
        let wit =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("wit/function.wit"))
                .unwrap();
        let package = wit
            .lines()
            .find_map(|l| l.trim().strip_prefix("package "))
            .map(|p| p.trim_end_matches(';'))
            .unwrap();
        let (name, version) = package.split_once('@').unwrap();
        assert_eq!(HANDLER, format!("{name}/handler@{version}"));
    }

    #[test]
    fn a_file_that_is_not_a_component_says_what_to_build_it_with() {
        assert!(why_not(b"not wasm at all").contains("not a WebAssembly file"));
        // A core module, as cargo writes for wasm32-unknown-unknown before `fnmill build`.
        let core = why_not(b"\0asm\x01\0\0\0");
        assert!(core.contains("a core module, not a component"), "{core}");
        assert!(core.contains("fnmill build"), "{core}");
    }
}
