//! The chimaera-rs runtime.
//!
//! A runtime hosts **pools**: named instances of a chimod (a module written with
//! `#[chimod]`), each made of one or more **containers**. Clients send **tasks** (a method
//! id plus rkyv-encoded inputs) to a pool; a [`PoolQuery`] says which containers run them.
//! Each container owns a local queue of **lanes**; every lane is served by one **worker**,
//! and each task runs as a stackful coroutine taken from that worker's pool of reused
//! coroutines, so a task may wait (on a [`CoMutex`], a subtask, a timer) without blocking
//! the worker thread. A task's coroutine never leaves its worker's thread
//! (`coroutine`), so `std`'s thread-affine values are sound to hold across its waits.
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
//! * foundations that know nothing of tasks: [`ids`], `codec`, [`error`], [`query`],
//!   [`config`], `coroutine` (the pinned per-worker executor), [`lock`] (coroutine
//!   locks), [`bulk`], [`peer`] (the seam to the other nodes of a cluster), [`cluster`]
//!   (hostfile, membership, the runtime's frames, the in-memory network), and `shm`'s
//!   building blocks (segment, ring, futex, liveness,
//!   arena, naming, directory), which import nothing outside `shm`;
//! * [`client`] and the [`transport`] seam (`Arc<dyn Transport>`): a client never
//!   matches on a transport kind nor reaches into runtime state;
//! * the runtime, bottom up: `runtime::header` (a task's fixed facts) →
//!   [`runtime::context`] (what a handler sees; it reaches the runtime through the
//!   `Host` trait the runtime implements) → [`runtime::module`] (the chimod contract) →
//!   `runtime::pool` (a pool and its containers) → `runtime::task` (a task holds its
//!   pool) → `runtime::worker` (lanes, workers, task coroutines; a worker runs tasks
//!   through a `TaskRunner` and polls its `TaskSource` itself) →
//!   `runtime::pool_table` (pools with their lanes) → [`runtime`] (the state that ties
//!   them together);
//! * transports over the runtime: `transport::inproc` (through a trait the runtime
//!   implements) and [`transport::shm`] (wire layout, handshake, the runtime's server
//!   and client areas — the server is the workers' task source — and a client's end).
//!
//! `codec`, `coroutine`, `shm`, the pieces of `transport::shm` and the runtime's
//! `header`, `pool`, `task`, `worker` and `pool_table` are private to this crate: their public items are reachable only with the unstable
//! `testing` feature, which chimaera's own integration tests enable to play a faulty
//! client. What a user of them needs is re-exported: [`Bytes`], [`Wire`], [`wait`], [`instance`].
//!
//! The core never names a chimod: the admin chimod reaches the runtime through
//! [`RuntimeHandle`].
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

/// Declares a module that is crate-private, or public with the unstable `testing`
/// feature: internals that chimaera's own integration tests drive directly (a faulty
/// client, raw wire bytes), never API. Its items are `pub` so that the feature can
/// expose them; without the feature no path outside the crate reaches them, and what
/// only those tests call is unused — which is why `unreachable_pub` and `dead_code` are
/// quiet there without the feature (with it, every such item is public, as all of them
/// were before these modules became private).
macro_rules! internal_mod {
    ($(#[$attr:meta])* mod $name:ident;) => {
        $(#[$attr])*
        #[cfg(feature = "testing")]
        #[doc(hidden)]
        pub mod $name;
        $(#[$attr])*
        #[cfg(not(feature = "testing"))]
        #[allow(unreachable_pub, dead_code)]
        pub(crate) mod $name;
    };
}
pub(crate) use internal_mod;

pub mod admin_api;
pub mod bulk;
pub mod client;
pub mod cluster;
internal_mod! {
    /// rkyv encoding of task inputs and outputs (unstable, for chimaera's own tests).
    mod codec;
}
pub mod config;
internal_mod! {
    /// The per-worker coroutine executor (unstable, for chimaera's own tests); the waits a
    /// task may use are in [`wait`].
    mod coroutine;
}
pub mod error;
pub mod ids;
pub mod instance;
mod io_ring;
pub mod lock;
pub mod peer;
pub mod query;
mod quota;
pub use quota::MemoryReservation;
pub mod runtime;
internal_mod! {
    /// Shared-memory building blocks (unstable, for chimaera's own tests).
    mod shm;
}
pub mod stats;
mod sync;
pub mod transport;

pub use runtime::{compose, context, module};

pub mod wait {
    //! Waiting inside a task without blocking its worker thread.
    //!
    //! A task runs as a coroutine on a worker thread that many tasks share: a handler that
    //! must wait for something outside the runtime (a thread of its own, an I/O completion)
    //! parks its coroutine with a [`Blocker`] instead of blocking the thread, and a handler
    //! that loops for long gives the other tasks a turn with [`yield_now`]. Outside a task
    //! (a plain thread) each of these blocks, sleeps or returns at once, as documented.
    //! A span of your own entered with [`enter_span`] is current exactly while the task
    //! runs, across its waits, like the runtime's own `task` span.
    //!
    //! A handler doing file or device I/O can hand an `io_uring` entry to
    //! [`submit_io`]: the worker it runs on issues it on a ring of its own and resumes
    //! the task on completion, with no other thread in between (bdev's file device does
    //! so). Where that is not possible it returns `None` and the handler takes its own
    //! path.

    pub use crate::coroutine::{
        enter_span, is_coroutine, sleep, submit_io, yield_now, Blocker, SpanScope,
    };
}

#[doc(hidden)]
pub mod __private;

pub use bulk::{Buffer, BufferError, BulkIn, BulkOut, BulkRangeError};
pub use client::{Client, Pending, ReturnedBuffers, TaskHandle};
pub use codec::{Bytes, Wire};
pub use config::RuntimeConfig;
pub use context::RunContext;
pub use error::TaskError;
pub use ids::{ContainerId, MethodId, NodeId, PoolId, TaskNode};
pub use lock::{CoMutex, CoMutexGuard, CoRwLock, CoRwLockReadGuard, CoRwLockWriteGuard, LockError};
pub use module::LanePriority;
pub use module::{ChiMod, LaneChoice, MethodInfo, ModuleInfo};
pub use query::PoolQuery;
pub use runtime::header::MAX_PERIOD;
pub use runtime::{Runtime, RuntimeBuilder, RuntimeHandle, StartError};
pub use transport::shm::ConnectError;
pub use transport::Schedule;

/// rkyv, the zero-copy format of task inputs and outputs: `#[chimaera::wire]` derives
/// its traits through this path, so a chimod crate needs no `rkyv` dependency of its own.
pub use rkyv;
/// serde, through which `#[wire(compose)]` derives `Deserialize` for compose params.
pub use serde;
