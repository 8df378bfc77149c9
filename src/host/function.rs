//! A loaded function and one call of it: admission (an instance slot and room in the memory
//! budget), a fresh store and instance, the handler call within the limits, and the
//! classification of whatever went wrong.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fnmill_connector_api::{Event, Header};
use futures::FutureExt;
use futures::future::Either;
use wasmtime::component::{ComponentExportIndex, Func, TypedFunc};
use wasmtime::{Store, Trap, UpdateDeadline};

use super::admission::{Admission, Admissions, Kept, lock};
use super::bindings::{self, EventFunctionPre, GuestError};
use super::context::Ctx;
use super::data::FunctionData;
use super::engine::{EPOCH_TICK, PAGE};
use super::failure::{Failure, Stage, sanitize};
use super::guest_log::LogLimits;
use crate::telemetry::CallScope;

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
    /// Bytes of log output (stdout, stderr, `logging.log`) one call may write; the rest is
    /// dropped and counted.
    pub max_log_bytes: u64,
    /// Log lines one call may write; the rest is dropped and counted.
    pub max_log_lines: u32,
}

/// Whether an instance serves one event or several.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Isolation {
    /// A fresh instance per event: nothing one event leaves in memory is seen by another.
    #[default]
    Event,
    /// An instance serves up to `max_uses` events in turn (never two at once), and is retired
    /// after any failure (an error, a trap, a timeout, fuel or memory) or once its memory grew
    /// past `max_memory` bytes. State an event leaves in memory is seen by the next events the
    /// instance serves — whatever their keys.
    Reuse { max_uses: u32, max_memory: u64 },
}

/// What to load as a function.
#[derive(Clone, Debug)]
pub struct FunctionSpec {
    pub name: String,
    pub component: PathBuf,
    pub limits: Limits,
    /// Values the guest can read with `config.get`.
    pub config: BTreeMap<String, String>,
    pub isolation: Isolation,
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

/// What every instance of one function shares.
pub(super) struct FunctionShared {
    pub(super) name: Arc<str>,
    pub(super) config: BTreeMap<String, String>,
    /// The capabilities this function is granted.
    pub(super) data: FunctionData,
    pub(super) log: LogLimits,
    /// Instances alive now (admitted and not dropped), for metrics.
    pub(super) live: AtomicI64,
    /// The largest linear memory any instance grew to, for metrics.
    pub(super) memory_peak: AtomicU64,
}

/// What one call cost, for its span and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CallStats {
    /// Time to create the instance; `None` when a reused instance served the call.
    pub instantiation: Option<Duration>,
    /// Fuel the call used, when the engine meters fuel.
    pub fuel: Option<u64>,
    /// The instance's linear memory after the call, in bytes.
    pub memory: u64,
}

/// Fresh instances one store runs, one event each, before it is dropped
/// (`isolation = "event"`). Every event still gets an instance of its own, whose memory, tables
/// and globals no other event touched; what they share is the host's per-store setup (the WASI
/// context, the resource table, the module registration, the fiber stack), made once per store
/// instead of once per event (measured in docs/performance.md).
const INSTANCES_PER_STORE: u32 = 8;

/// Memory a store's instances may have grown to in all and still be given another instance:
/// a spent instance's memory stays resident until its store is dropped.
const STORE_MEMORY: u64 = 16 << 20;

/// A loaded function, ready to run events. Cheap to share behind an `Arc`.
pub struct Function {
    pub(super) shared: Arc<FunctionShared>,
    pub(super) limits: Limits,
    pub(super) pre: EventFunctionPre<Ctx>,
    /// The `handle` export, found once at load.
    pub(super) handle: ComponentExportIndex,
    /// Whether `handle` was checked against the type fnmill calls it with, which wasmtime does
    /// on the first instance; every later instance of the component has the same type.
    pub(super) handle_checked: AtomicBool,
    /// Instance slots and the memory budget, shared by every function of the host.
    pub(super) admissions: Arc<Admissions>,
    /// What this function's instance holds of the memory budget, in pages.
    pub(super) budget_pages: u32,
    /// Whether the engine meters fuel, so every store must be given some.
    pub(super) engine_fuel: bool,
    pub(super) isolation: Isolation,
    /// Instances waiting for their next event (reuse), the most recently used last, and stores
    /// with room for more fresh instances (event).
    pub(super) kept: Arc<Kept>,
}

/// An instance kept for more events (`isolation = "reuse"`).
pub(crate) struct Reusable {
    store: Store<Ctx>,
    instance: Handler,
    /// Events served so far.
    uses: u32,
    _admission: Admission,
}

/// The parameters and result of the guest's `handle`, as fnmill lowers and lifts them.
type HandleParams<'a> = (bindings::Event<'a>,);
type HandleResult = (Result<Vec<bindings::Output>, GuestError>,);

/// The `handle` export of one instance.
#[derive(Clone, Copy)]
pub(crate) struct Handler(Func);

impl Handler {
    fn typed<'a>(&self) -> TypedFunc<HandleParams<'a>, HandleResult> {
        // SAFETY: the function's type was checked against these types on the first instance
        // of its component (`Function::instantiate`), and every instance of one component
        // exports `handle` with the same type.
        unsafe { TypedFunc::new_unchecked(self.0) }
    }
}

/// Whether the guest's `handle` ran to its end and returned: with outputs, with its own error
/// (`retryable`, `fatal`), or with outputs over the limits (checked once it returned). Its store
/// is then in a state wasmtime defines, and may start the next fresh instance; a trap, a timeout,
/// fuel or memory exhaustion or a host fault stopped the call part-way. (A guest that always
/// returns `fatal`, one fresh instance after another on one thread: 11.4 µs each when the error
/// dropped the store, 9.9 µs keeping it, about what an echo costs; medians of four interleaved
/// pairs, docs/performance.md.)
fn returned(result: &Result<Vec<Output>, Failure>) -> bool {
    matches!(
        result,
        Ok(_) | Err(Failure::Retryable(_) | Failure::Fatal(_) | Failure::OutputLimit(_))
    )
}

/// A store whose instances each ran one event, kept to run more (`isolation = "event"`).
pub(crate) struct Spent {
    store: Store<Ctx>,
    /// The memory its instances grew to, in all.
    memory: u64,
    /// The slot of each of its instances and the memory it grew to, held until the store is
    /// dropped and frees them.
    admissions: Vec<Admission>,
    /// The thread that ran its last instance: only that thread takes the store again.
    thread: std::thread::ThreadId,
}

impl Function {
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Instances of this function alive now: running, or kept for reuse (not the spent ones a
    /// store keeps until it is dropped).
    pub fn live_instances(&self) -> i64 {
        self.shared.live.load(Ordering::Relaxed)
    }

    /// The largest linear memory, in bytes, that any instance of this function grew to.
    pub fn memory_peak(&self) -> u64 {
        self.shared.memory_peak.load(Ordering::Relaxed)
    }

    /// Waits for an instance slot and for room in the memory budget.
    pub(super) async fn admit(&self) -> Result<Admission, Failure> {
        self.admissions
            .admit(self.budget_pages, Some(&self.shared))
            .await
    }

    /// Runs `event`: in a fresh instance, or with `isolation = "reuse"` in an instance that
    /// served earlier events. A failure of any kind is returned, never raised; the instance it
    /// happened in is thrown away and the next call starts clean.
    pub async fn invoke(&self, event: &Event, attempt: u32) -> Result<Vec<Output>, Failure> {
        self.invoke_observed(event, attempt, None).await.0
    }

    /// [`Function::invoke`], with what the call cost; its `sql` and `keyvalue` calls become
    /// spans under `trace` (the call's span, with tracing on).
    ///
    /// Not an `async fn` matching on the mode: that future was about as large as both modes'
    /// together (1,840 bytes where the larger was 864), and it is moved whole as each future
    /// around it is built. Each mode's future is now only as large as its own (the boxed call
    /// in the pipeline 1,888 bytes → 760).
    pub fn invoke_observed<'a>(
        &'a self,
        event: &'a Event,
        attempt: u32,
        trace: Option<CallScope>,
    ) -> impl Future<Output = (Result<Vec<Output>, Failure>, CallStats)> + Send + 'a {
        match self.isolation {
            Isolation::Event => Either::Left(async move {
                let mut stats = CallStats::default();
                let result = self.invoke_fresh(event, attempt, trace, &mut stats).await;
                (result, stats)
            }),
            Isolation::Reuse {
                max_uses,
                max_memory,
            } => Either::Right(async move {
                let mut stats = CallStats::default();
                let result = self
                    .invoke_reused(event, attempt, max_uses, max_memory, trace, &mut stats)
                    .await;
                (result, stats)
            }),
        }
    }

    async fn invoke_fresh(
        &self,
        event: &Event,
        attempt: u32,
        trace: Option<CallScope>,
        stats: &mut CallStats,
    ) -> Result<Vec<Output>, Failure> {
        let event_id: Arc<str> = Arc::from(event.id.as_str());
        let mut admission = self.admit().await?;
        // A kept store goes on with the thread that kept it: its structures and its slots' pages
        // are in that core's caches and that thread's allocator heap. Taken by the other compute
        // thread instead, every instance's set-up and reset touched memory last written on the
        // other core, and the store's drop freed across threads: 20.8–23.8 µs of compute per
        // event against 13.1–16.4 in the Kafka bench (docs/performance.md).
        let me = std::thread::current().id();
        let taken = {
            let mut kept = lock(&self.kept.spent);
            kept.iter()
                .rposition(|s| s.thread == me)
                .map(|i| kept.swap_remove(i))
        };
        let mut spent = match taken {
            Some(mut spent) => {
                spent.store.data_mut().next_instance(&event_id, trace);
                spent
            }
            None => Spent {
                store: self.store(&event_id, trace),
                memory: 0,
                admissions: Vec::with_capacity(INSTANCES_PER_STORE as usize),
                thread: me,
            },
        };
        self.ready_for_call(&mut spent.store)?;
        let result = self
            .within_timeout(async {
                let instance = self.instantiate(&mut spent.store, stats).await?;
                self.call(&instance, &mut spent.store, event, attempt, stats)
                    .await
            })
            .await;
        // A call that returned keeps the store for the next fresh instance, its own error
        // included; one that a trap, the deadline or a host fault cut short drops it: whatever
        // state that left the store in is not trusted.
        if returned(&result) {
            let grown = spent.store.data().limiter.size as u64;
            admission.spend(grown.div_ceil(PAGE) as u32);
            spent.memory += grown;
            spent.admissions.push(admission);
            spent.thread = std::thread::current().id();
            if spent.admissions.len() < INSTANCES_PER_STORE as usize
                && spent.memory <= STORE_MEMORY
                && self.admissions.slots_to_spare()
            {
                self.admissions.keep(&self.kept.spent, spent);
            }
        }
        result
    }

    async fn invoke_reused(
        &self,
        event: &Event,
        attempt: u32,
        max_uses: u32,
        max_memory: u64,
        trace: Option<CallScope>,
        stats: &mut CallStats,
    ) -> Result<Vec<Output>, Failure> {
        let event_id: Arc<str> = Arc::from(event.id.as_str());
        let taken = lock(&self.kept.idle).pop();
        let mut r = match taken {
            Some(mut r) => {
                r.store.data_mut().next_event(&event_id, trace);
                r
            }
            // Boxed: the rare path, whose futures would otherwise make every call's larger.
            None => Box::pin(self.new_reusable(&event_id, trace, stats)).await?,
        };
        self.ready_for_call(&mut r.store)?;
        let result = self
            .within_timeout(self.call(&r.instance, &mut r.store, event, attempt, stats))
            .await;
        r.uses += 1;
        // Any failure retires the instance: whatever state it was left in is not trusted.
        let keep = result.is_ok()
            && r.uses < max_uses
            && (r.store.data().limiter.size as u64) <= max_memory;
        if keep {
            self.admissions.keep(&self.kept.idle, r);
        }
        result
    }

    /// A new instance for `isolation = "reuse"`, in a store of its own.
    async fn new_reusable(
        &self,
        event_id: &Arc<str>,
        trace: Option<CallScope>,
        stats: &mut CallStats,
    ) -> Result<Reusable, Failure> {
        let admission = self.admit().await?;
        let mut store = self.store(event_id, trace);
        self.ready_for_call(&mut store)?;
        let instance = self.instantiate(&mut store, stats).await?;
        Ok(Reusable {
            store,
            instance,
            uses: 0,
            _admission: admission,
        })
    }

    /// A store for instances of this function, with its memory limiter.
    pub(super) fn store(&self, event_id: &Arc<str>, trace: Option<CallScope>) -> Store<Ctx> {
        let engine = self.pre.instance_pre().engine();
        let mut store = Store::new(
            engine,
            Ctx::new(&self.shared, event_id, self.limits.memory_bytes, trace),
        );
        store.limiter(|ctx| &mut ctx.limiter);
        // Set once per store; each call arms its own deadline (`arm_deadline`).
        store.epoch_deadline_callback(|store| {
            if Instant::now() >= store.data().deadline {
                Err(Trap::Interrupt.into())
            } else {
                Ok(UpdateDeadline::Yield(1))
            }
        });
        store
    }

    /// Readies `store` for the next instantiation or call: the wall-clock deadline armed and,
    /// when the engine meters fuel, a full tank (fuel metering is engine-wide; a function
    /// without a fuel limit gets all of it).
    pub(super) fn ready_for_call(&self, store: &mut Store<Ctx>) -> Result<(), Failure> {
        self.arm_deadline(store);
        if self.engine_fuel {
            store
                .set_fuel(self.limits.fuel.unwrap_or(u64::MAX))
                .map_err(|e| Failure::Host(format!("setting fuel: {e:#}")))?;
        }
        Ok(())
    }

    /// A new instance in `store`, its instantiation time in `stats`.
    async fn instantiate(
        &self,
        store: &mut Store<Ctx>,
        stats: &mut CallStats,
    ) -> Result<Handler, Failure> {
        let instantiating = Instant::now();
        // Boxed, as the call below: wasmtime's futures are the bulk of an invocation's, and
        // inline they were copied into every enclosing future as each was created (1.8 KiB at
        // `invoke_observed`, 0.7 KiB boxed; future moves 3.5% → 2.1% of the compute threads).
        let instance = Box::pin(self.pre.instance_pre().instantiate_async(&mut *store))
            .await
            .map_err(|e| self.classify(e, store.data(), Stage::Instantiation))?;
        let func = instance
            .get_func(&mut *store, self.handle)
            .ok_or_else(|| Failure::Host("the instance has no `handle` export".into()))?;
        // The type check walks the event and output types (2% of a fresh instance's CPU), so
        // it is made on the first instance only, where the generated bindings made it on each.
        if !self.handle_checked.load(Ordering::Relaxed) {
            func.typed::<HandleParams<'_>, HandleResult>(&*store)
                .map_err(|e| self.classify(e, store.data(), Stage::Instantiation))?;
            self.handle_checked.store(true, Ordering::Relaxed);
        }
        stats.instantiation = Some(instantiating.elapsed());
        Ok(Handler(func))
    }

    /// Runs `work` (instantiation and call) within the function's timeout. Epoch interruption
    /// cannot stop a guest that is inside an awaited host call; this outer timeout catches that
    /// case, one tick later than the epoch would.
    ///
    /// A plain function, not an `async fn`, which would hold `work` twice.
    fn within_timeout(
        &self,
        work: impl Future<Output = Result<Vec<Output>, Failure>>,
    ) -> impl Future<Output = Result<Vec<Output>, Failure>> {
        let limit = self.limits.timeout;
        tokio::time::timeout(limit + EPOCH_TICK * 2, work)
            .map(move |r| r.unwrap_or(Err(Failure::Timeout(limit))))
    }

    /// Arms the wall-clock limit of one call: the clock is checked on every epoch tick, and the
    /// guest yields to the executor meanwhile, so a long guest neither overruns its timeout nor
    /// monopolises a compute thread.
    pub(super) fn arm_deadline(&self, store: &mut Store<Ctx>) {
        store.data_mut().deadline = Instant::now() + self.limits.timeout;
        store.set_epoch_deadline(1);
    }

    /// Calls the handler of `instance` with `event`.
    pub(super) async fn call(
        &self,
        instance: &Handler,
        store: &mut Store<Ctx>,
        event: &Event,
        attempt: u32,
        stats: &mut CallStats,
    ) -> Result<Vec<Output>, Failure> {
        let headers = wit_headers(event);
        let wit_event = to_wit(event, &headers, attempt);
        let result = Box::pin(instance.typed().call_async(&mut *store, (wit_event,)))
            .await
            .map(|(result,)| result);
        // What the call cost: read now, whatever its outcome.
        stats.memory = store.data().limiter.size as u64;
        // Read first: in the steady state the peak does not move, and a read shares the cache
        // line where a read-modify-write would take it from the other compute threads.
        if stats.memory > self.shared.memory_peak.load(Ordering::Relaxed) {
            self.shared
                .memory_peak
                .fetch_max(stats.memory, Ordering::Relaxed);
        }
        if self.engine_fuel
            && let Ok(left) = store.get_fuel()
        {
            stats.fuel = Some(self.limits.fuel.unwrap_or(u64::MAX).saturating_sub(left));
        }
        match result {
            Ok(Ok(outputs)) => self.check_outputs(outputs),
            Ok(Err(GuestError::Retryable(message))) => Err(Failure::Retryable(sanitize(&message))),
            Ok(Err(GuestError::Fatal(message))) => Err(Failure::Fatal(sanitize(&message))),
            Err(e) => Err(self.classify(e, store.data(), Stage::Call)),
        }
    }

    pub(super) fn classify(&self, error: wasmtime::Error, ctx: &Ctx, stage: Stage) -> Failure {
        if let Some(fault) = error.downcast_ref::<super::context::HostFault>() {
            return Failure::Host(fault.0.clone());
        }
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
                message: sanitize(&trap_message(&error)),
            };
        }
        if ctx.limiter.refused {
            return Failure::Memory(self.limits.memory_bytes);
        }
        match stage {
            Stage::Instantiation => Failure::Instantiation(sanitize(&format!("{error:#}"))),
            // An error raised by a host function the guest called wrongly (a forged resource
            // handle) stops the guest: it is the guest's fault, like a trap.
            Stage::Call => Failure::Trap {
                code: "host-call".into(),
                message: sanitize(&format!("{error:#}")),
            },
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

/// The event as the guest sees it, borrowed: it is lowered into the guest's memory straight from
/// the event, its headers from `headers` ([`wit_headers`]). The one place host types become
/// generated types.
fn to_wit<'a>(
    event: &'a Event,
    headers: &'a [bindings::HeaderParam<'a>],
    attempt: u32,
) -> bindings::Event<'a> {
    bindings::Event {
        id: &event.id,
        source: &event.source,
        key: event.key.as_deref(),
        payload: &event.payload,
        headers,
        timestamp_ms: event.timestamp_ms,
        attempt,
    }
}

/// The event's headers, borrowed, for [`to_wit`].
fn wit_headers(event: &Event) -> Vec<bindings::HeaderParam<'_>> {
    event
        .headers
        .iter()
        .map(|h| bindings::HeaderParam {
            name: &h.name,
            value: &h.value,
        })
        .collect()
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

/// A trap's reason and where it happened, on one line: wasmtime's text is "error while
/// executing at wasm backtrace:", the frames, then the reason at the end of the chain.
fn trap_message(error: &wasmtime::Error) -> String {
    let reason = error.root_cause().to_string();
    let frames: Vec<String> = format!("{error:?}")
        .lines()
        .map(str::trim)
        .filter(|l| l.chars().next().is_some_and(|c| c.is_ascii_digit()) && l.contains(':'))
        .take(5)
        .map(|l| l.split_once(": ").map_or(l, |(_, f)| f).to_string())
        .collect();
    if frames.is_empty() {
        reason
    } else {
        format!("{reason} (at {})", frames.join(" < "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_call_that_returned_keeps_its_store() {
        let kept = |failure: Failure| returned(&Err(failure));
        assert!(returned(&Ok(Vec::new())));
        assert!(kept(Failure::Retryable("busy".into())));
        assert!(kept(Failure::Fatal("bad input".into())));
        assert!(kept(Failure::OutputLimit("too many".into())));
        assert!(!kept(Failure::Trap {
            code: "unreachable".into(),
            message: "panicked".into(),
        }));
        assert!(!kept(Failure::Timeout(Duration::from_secs(1))));
        assert!(!kept(Failure::Fuel(1)));
        assert!(!kept(Failure::Memory(1)));
        assert!(!kept(Failure::Host("fault".into())));
        assert!(!kept(Failure::Instantiation("no".into())));
    }
}
