//! A real chips client over tokio-postgres, shared by the integration tests, the demo and the
//! benchmarks, cut by what each part is:
//!
//! * [`client`]: connections, a [`Site`] (one database = one chips site, with its own agent) and
//!   its [`User`]s (a person holding an Ed25519 key the database never sees, acting through their
//!   own role), as an integrator's program would be; LISTEN helpers.
//! * [`cluster`]: the shared test cluster ([`Cluster`], from `CHIPS_TEST_DSN`) and private ones.
//! * [`relay`]: carries outbox messages from one site to another through `chips.peer_receive`,
//!   standing in for the sidecar's transport.
//! * [`process`]: a running `chipsd`, scratch directories, ports, waiting for a condition.
//! * [`faults`], [`load`], [`oracle`], [`ring`]: fault injection, obligation networks loaded
//!   straight into tables, the max-flow oracle, and the payment ring the demo runs.

pub mod client;
pub mod cluster;
pub mod faults;
pub mod load;
pub mod oracle;
pub mod process;
pub mod relay;
pub mod ring;

pub use client::*;
pub use cluster::*;
pub use process::*;
pub use relay::*;

pub type Error = tokio_postgres::Error;
pub type Result<T, E = Error> = std::result::Result<T, E>;
