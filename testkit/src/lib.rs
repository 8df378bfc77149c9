//! Helpers shared by fnmill's integration tests (`tests/`) and benchmarks (`benches/`), as a
//! dev-only crate of the workspace: the root crate lists it under `[dev-dependencies]` only.
//!
//! - [`common`]: the repository root, the `fnmill` binary of this build, test guests built from
//!   source, configs and event files, waiting on a condition with a deadline.
//! - [`kafka_support`]: the test broker's address, topics, a producer and readers.
//! - [`amqp_common`]: the test RabbitMQ, publishing, collecting, every operation with a deadline.
//! - [`observe_support`]: the test run's Jaeger (spans sent, traces read back) and `/metrics`
//!   scraped and parsed as Prometheus does.
//! - [`proxy`]: a TCP proxy in front of a test service that cuts, drops or freezes its
//!   connections on demand.
//! - [`bench_args`]: a benchmark's options, checked before it runs.
//! - [`cpu`]: CPU time and context switches per thread and per process, from `/proc`, for the
//!   benchmarks' "where did each event's CPU go" tables.

pub mod amqp_common;
pub mod bench_args;
pub mod common;
pub mod cpu;
pub mod kafka_support;
pub mod observe_support;
pub mod proxy;
