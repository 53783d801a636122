//! The chips sidecar as a library: the binary `chipsd` (src/main.rs) wires these together; the
//! benchmarks and tests use them directly.

pub mod channel;
pub mod check;
pub mod clearing;
pub mod config;
pub mod db;
pub mod error;
pub mod gateway;
pub mod metrics;
pub mod sender;
pub mod server;
