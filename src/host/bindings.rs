//! The one `bindgen!` of the crate. Generated types stay in the host module: the rest of the
//! crate never names them; `data.rs` and `mod.rs` convert at this edge.

wasmtime::component::bindgen!({
    path: "wit",
    world: "event-function",
    // `config` and `logging` are plain, synchronous and infallible. `sql` and `keyvalue` are
    // async: their host functions hand the work to the IO runtime and await it, so the guest's
    // fiber is suspended and the compute thread goes on with other instances meanwhile.
    // `keyvalue` is also trappable because a bucket handle the guest passes is looked up in the
    // store's resource table, and a forged handle must stop the guest.
    imports: {
        "fnmill:function/sql": async,
        "fnmill:function/keyvalue": async | trappable,
    },
    // The export is called asynchronously so that a compute thread is never blocked by a guest.
    exports: { default: async },
    ownership: Borrowing { duplicate_if_necessary: true },
    with: {
        "fnmill:function/keyvalue.bucket": crate::host::data::KvBucket,
    },
});

pub use self::fnmill::function::keyvalue;
pub use self::fnmill::function::logging::Level;
pub use self::fnmill::function::sql;
pub use self::fnmill::function::types::{Error as GuestError, HeaderParam};
pub use exports::fnmill::function::handler::{Event, Output};
