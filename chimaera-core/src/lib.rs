//! The chimaera-rs runtime.
//!
//! A runtime hosts **pools**: named instances of a chimod (a module written with
//! `#[chimod]`), each made of one or more **containers**. Clients send **tasks** (a method
//! id plus rkyv-encoded inputs) to a pool; a [`PoolQuery`] says which containers run them.
//! Each container owns a local queue of **lanes**; every lane is served by one **worker**,
//! and each task runs as a stackful coroutine taken from that worker's pool of reused
//! coroutines, so a task may wait (on a [`CoMutex`], a subtask, a timer) without blocking
//! the worker thread. A task's coroutine never leaves its worker's thread
//! ([`coroutine`]), so `std`'s thread-affine values are sound to hold across its waits.
//!
//! Client processes reach a runtime over shared memory ([`transport::shm`]): their tasks
//! arrive in per-client rings that the workers poll, and their results go back into the
//! same client areas; a crashed client's area is reclaimed by the runtime.
//!
//! # Layers
//!
//! Every file imports only files below it: no import cycle anywhere in the core (a test,
//! `tests/layers.rs`, checks the sources). From the bottom:
//!
//! * foundations that know nothing of tasks: [`ids`], [`codec`], [`error`], [`query`],
//!   [`config`], [`coroutine`] (the pinned per-worker executor), [`lock`] (coroutine
//!   locks), [`bulk`], [`peer`] (the seam to the other nodes of a cluster), [`cluster`] (hostfile,
//!   membership, the runtime's frames, the in-memory network), and [`shm`]'s building blocks (segment, ring, futex, liveness,
//!   arena, naming, directory), which import nothing outside `shm`;
//! * [`client`] and the [`transport`] seam (`Arc<dyn Transport>`): a client never
//!   matches on a transport kind nor reaches into runtime state;
//! * the runtime, bottom up: [`runtime::header`] (a task's fixed facts) →
//!   [`runtime::context`] (what a handler sees; it reaches the runtime through the
//!   `Host` trait the runtime implements) → [`runtime::module`] (the chimod contract) →
//!   [`runtime::pool`] (a pool and its containers) → [`runtime::task`] (a task holds its
//!   pool) → [`runtime::worker`] (lanes, workers, task coroutines; a worker runs tasks
//!   through a `TaskRunner` and polls its `TaskSource` itself) →
//!   [`runtime::pool_table`] (pools with their lanes) → [`runtime`] (the state that ties
//!   them together);
//! * transports over the runtime: `transport::inproc` (through a trait the runtime
//!   implements) and [`transport::shm`] (wire layout, handshake, the runtime's server
//!   and client areas — the server is the workers' task source — and a client's end).
//!
//! The core never names a chimod: the admin chimod reaches the runtime through
//! [`RuntimeHandle`].
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod admin_api;
pub mod bulk;
pub mod client;
pub mod cluster;
pub mod codec;
pub mod config;
pub mod coroutine;
pub mod error;
pub mod ids;
pub mod lock;
pub mod peer;
pub mod query;
pub mod runtime;
pub mod shm;
pub mod stats;
mod sync;
pub mod transport;

pub use runtime::{compose, context, module, pool, task, worker};

#[doc(hidden)]
pub mod __private;

pub use bulk::{Buffer, BulkIn, BulkOut, BulkRangeError};
pub use client::{Client, Pending, ReturnedBuffers, TaskHandle};
pub use config::RuntimeConfig;
pub use context::RunContext;
pub use error::TaskError;
pub use ids::{ContainerId, MethodId, NodeId, PoolId, TaskNode};
pub use lock::{CoMutex, CoMutexGuard, CoRwLock, CoRwLockReadGuard, CoRwLockWriteGuard};
pub use module::LanePriority;
pub use module::{ChiMod, LaneChoice, MethodInfo, ModuleInfo};
pub use query::PoolQuery;
pub use runtime::{Runtime, RuntimeBuilder, RuntimeHandle, StartError};
pub use task::Schedule;
pub use transport::shm::client::ConnectError;

/// rkyv, the zero-copy format of task inputs and outputs: `#[chimaera::wire]` derives
/// its traits through this path, so a chimod crate needs no `rkyv` dependency of its own.
pub use rkyv;
/// serde, through which `#[wire(compose)]` derives `Deserialize` for compose params.
pub use serde;
