//! fnmill's IO tier over NATS: a data source's `sql` and `keyvalue` calls made by compute
//! replicas (`fnmill run --role compute`) and served from the pools of IO-tier processes
//! (`--role io`), so a database's connections are the IO replicas times `pool_size`, however
//! many compute replicas run.
//!
//! - [`protocol`]: the request and reply messages, binary (postcard) behind a version byte.
//! - [`connection`]: the connection settings from a data source's `remote` table, their check,
//!   and a connection that reconnects on its own and logs its state.
//! - [`client`]: the compute side, behind the capability traits of `fnmill-connector-api`.
//! - [`server`]: the IO side, serving a subject in a queue group, re-checking every grant.
//!
//! The crate knows nothing about wasm or fnmill's config file: the wiring builds clients and
//! servers from the config and hands them the pools and grants.

mod batch;
pub mod client;
pub mod connection;
pub mod protocol;
pub mod server;

pub use client::{Batching, Remote, RemoteBucket, RemoteSql};
pub use connection::{Endpoint, Nats, check};
pub use server::{GrantTable, ObservedCall, Observer, QUEUE_GROUP, Served, Server, ServerStats};
