//! The allocator of a function built for `wasm32-unknown-unknown` (what `fnmill build` makes).
//!
//! fnmill instantiates a function afresh for every event, so what an instance does before its
//! first line of code is paid per event. The standard library's allocator on this target asks for
//! new pages (`memory.grow`) on its first allocation, although the module's initial memory has
//! room past the stack and data; in fnmill's pooled instance slots a grow costs an `mprotect` and
//! its reset later: an echo ran 11.1–11.6 µs per fresh instance with it, 6.1–6.3 with this one.
//! This one, [Talc], first takes the initial memory
//! from `__heap_base` to its end, and grows only when that is used up (then by the pages needed,
//! extending the heap in place).
//!
//! Installed as the global allocator on `wasm32-unknown-unknown` only; a build for
//! `wasm32-wasip2` keeps wasi-libc's `malloc`, which already uses the initial memory first.
//!
//! [Talc]: https://crates.io/crates/talc

use core::alloc::Layout;
use core::ptr::NonNull;

use talc::base::Talc;
use talc::base::binning::Binning;
use talc::cell::TalcSyncCell;
use talc::source::Source;
use talc::wasm::WasmBinning;

const PAGE: usize = 64 * 1024;

unsafe extern "C" {
    /// Where the linker ends the stack and static data: the first byte free for a heap.
    static __heap_base: u8;
}

/// Talc's memory source: the initial memory past `__heap_base` first, then `memory.grow`.
#[derive(Debug)]
pub struct InitialMemoryThenGrow {
    /// The end of the heap so far (`None` until the first allocation).
    end: Option<NonNull<u8>>,
}

impl InitialMemoryThenGrow {
    const fn new() -> Self {
        Self { end: None }
    }
}

// SAFETY: the spans claimed are linear memory that nothing else uses: the initial memory past
// `__heap_base` (the linker puts the stack and static data below it), and pages `memory.grow`
// just added.
unsafe impl Source for InitialMemoryThenGrow {
    fn acquire<B: Binning>(talc: &mut Talc<Self, B>, layout: Layout) -> Result<(), ()> {
        let memory_end = core::arch::wasm32::memory_size::<0>() * PAGE;
        let Some(end) = talc.source.end else {
            let base = (&raw const __heap_base) as usize;
            // SAFETY: see the impl.
            talc.source.end = unsafe { talc.claim(base as *mut u8, memory_end - base) };
            if talc.source.end.is_some() {
                return Ok(());
            }
            // Too little room for a heap: grow below, as a first claim.
            return grow(talc, layout, None);
        };
        grow(talc, layout, Some(end))
    }
}

/// Adds the pages `layout` needs (with room for Talc's bookkeeping) and extends the heap over
/// them, or claims them as a new heap when they do not follow it.
fn grow<B: Binning>(
    talc: &mut Talc<InitialMemoryThenGrow, B>,
    layout: Layout,
    end: Option<NonNull<u8>>,
) -> Result<(), ()> {
    let needed = layout.size() + layout.align() + 64;
    let pages = needed.div_ceil(PAGE);
    let previous = core::arch::wasm32::memory_grow::<0>(pages);
    if previous == usize::MAX {
        return Err(());
    }
    let base = (previous * PAGE) as *mut u8;
    let size = pages * PAGE;
    talc.source.end = match end {
        // SAFETY: see the impl; `end` is the heap's current end and `base + size` lies past it.
        Some(end) if end.as_ptr() == base => Some(unsafe { talc.extend(end, base.add(size)) }),
        // SAFETY: see the impl.
        _ => unsafe { talc.claim(base, size) },
    };
    if talc.source.end.is_some() { Ok(()) } else { Err(()) }
}

#[global_allocator]
static ALLOCATOR: TalcSyncCell<InitialMemoryThenGrow, WasmBinning> =
    TalcSyncCell::new_wasm(InitialMemoryThenGrow::new());
