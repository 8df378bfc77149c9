//! The one `bindgen!` of the crate. Generated types stay in this module: the rest of the host
//! converts at this edge and never names them.

wasmtime::component::bindgen!({
    path: "wit",
    world: "event-function",
    // Host imports are plain, synchronous and infallible (config lookup, logging); the export is
    // called asynchronously so that a compute thread is never blocked by a guest, and so that
    // future IO-backed imports can be awaited.
    exports: { default: async },
});

pub use exports::fnmill::function::handler::{Event, Output};
pub use fnmill::function::logging::Level;
pub use fnmill::function::types::{Error as GuestError, Header};
