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
//! Client processes reach a runtime over shared memory ([`shm`]): their tasks arrive in
//! per-client rings that the workers poll, and their results go back into the same
//! client areas; a crashed client's area is reclaimed by the runtime.
//!
//! Layers look down: [`codec`] and [`ids`] know nothing of tasks; [`lock`] knows nothing
//! of pools; [`worker`] runs tasks without knowing what they do (a task does carry its
//! `Arc<Pool>`, to spare a table lookup per task); [`shm`]'s building blocks know nothing
//! of tasks, its server and connection sit on them; [`pool`] and [`runtime`] tie
//! everything together; [`client`] is the public face, and reaches a runtime only
//! through the [`transport`] seam (`Arc<dyn Transport>`): the in-process transport gets
//! what it needs from the runtime through a trait the runtime implements, the
//! shared-memory one ([`transport_shm`], which also defines `Client::connect`) sits on
//! [`shm::connection`]. None of client, transports, [`bulk`] or [`coroutine`] imports
//! the runtime's files, so they stay out of its import cycle (task ↔ pool ↔ module ↔
//! context ↔ runtime). The core never names a chimod: the admin chimod reaches the
//! runtime through [`RuntimeHandle`].
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod admin_api;
pub mod bulk;
pub mod client;
pub mod codec;
pub mod compose;
pub mod config;
pub mod context;
pub mod coroutine;
pub mod error;
mod flush;
pub mod ids;
pub mod lock;
pub mod module;
pub mod pool;
pub mod query;
pub mod runtime;
pub mod shm;
mod sync;
pub mod task;
pub mod transport;
pub(crate) mod transport_inproc;
pub mod transport_shm;
pub mod worker;

#[doc(hidden)]
pub mod __private;

pub use bulk::{Buffer, BulkIn, BulkOut, BulkRangeError};
pub use client::{Client, Pending, ReturnedBuffers, TaskHandle};
pub use config::RuntimeConfig;
pub use context::RunContext;
pub use error::TaskError;
pub use ids::{ContainerId, MethodId, NodeId, PoolId, TaskNode};
pub use lock::{CoMutex, CoMutexGuard, CoRwLock, CoRwLockReadGuard, CoRwLockWriteGuard};
pub use module::{ChiMod, LaneChoice, MethodInfo, ModuleInfo};
pub use query::PoolQuery;
pub use runtime::{Runtime, RuntimeBuilder, RuntimeHandle, StartError};
pub use shm::connection::ConnectError;
pub use task::Schedule;
pub use worker::LanePriority;

/// rkyv, the zero-copy format of task inputs and outputs: `#[chimaera::wire]` derives
/// its traits through this path, so a chimod crate needs no `rkyv` dependency of its own.
pub use rkyv;
/// serde, through which `#[wire(compose)]` derives `Deserialize` for compose params.
pub use serde;
