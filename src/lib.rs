//! # chimaera — ChiMods in Rust
//!
//! Write a module with `#[chimod]` and `#[task(method = N)]`, check it against its
//! `chimaera_mod.yaml` at compile time, link it into a runtime, call it through the
//! generated typed client.
//!
//! ```no_run
//! # #[cfg(feature = "mod_name")] { // (the example needs the default `mod_name` feature)
//! use chimaera::prelude::*;
//! use chimaera::mod_name::{CreateParams, ModNameClient};
//!
//! let runtime = chimaera::builder().start()?;          // admin + the enabled modules
//! let chi = runtime.client();
//! let m = ModNameClient::create(&chi, PoolQuery::local(), "my_pool", CreateParams::default())?;
//! assert_eq!(m.custom(PoolQuery::local(), "hello", 0)?, "hello");
//! # }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! New here? [`guide`] writes a first chimod, step by step.
//!
//! # What this crate offers
//!
//! An explicit list, everything a user of chimods needs and nothing of the runtime's
//! insides (shared-memory blocks, the worker, the coroutine executor and the codec stay
//! private to [`chimaera_core`]):
//!
//! * running a runtime: [`builder`], [`Runtime`], [`RuntimeBuilder`], [`RuntimeConfig`]
//!   (and [`config`]), [`StartError`], [`RuntimeHandle`];
//! * calling it: [`Client`] ([`ConnectError`]), [`Pending`] and [`TaskHandle`],
//!   [`PoolQuery`], [`Schedule`], the ids ([`PoolId`], [`ContainerId`], [`MethodId`],
//!   [`NodeId`], [`TaskNode`]), [`TaskError`], and bulk buffers ([`Buffer`],
//!   [`BufferError`], [`ReturnedBuffers`]);
//! * writing a chimod: the macros [`chimod`], [`task`] and [`wire`], the contract they
//!   implement ([`ChiMod`], [`ModuleInfo`], [`MethodInfo`], [`LaneChoice`],
//!   [`LanePriority`]; [`Wire`], what argument and output types must be), what a
//!   handler sees ([`RunContext`], [`BulkIn`], [`BulkOut`], [`BulkRangeError`],
//!   [`Bytes`]), coroutine locks ([`CoMutex`], [`CoRwLock`], [`LockError`]),
//!   waits that do not block a worker ([`wait`]) and YAML composition ([`compose`]);
//! * operating it: the admin chimod ([`admin`], [`AdminClient`]) and its wire types
//!   ([`admin_api`]: pool options, the status the CLI shows), an instance's files
//!   ([`instance`]), and the command line ([`cli`]);
//! * [`rkyv`] and [`serde`], so the derives work without a dependency of your own;
//!   the chimods enabled by cargo features (`mod_name`, `bdev`), and the gRPC network
//!   between runtimes ([`net`], feature `net`).
//!
//! [`cli`] is the `chimaera` command line (`runtime start|stop|status|clean`, `pool
//! list|info|destroy`, `cluster start|status|stop`, `monitor`, `compose`, `modules`,
//! `repo check`, `completions`); a
//! runtime binary with modules of your own gets it, under its own name, from a one-line
//! `main`: `chimaera::cli::main_with(chimaera::binary!(), chimaera::builder().module::<MyMod>())`
//! (and adds commands of its own with [`cli::main_with_commands`]).
//!
//! The runtime's internals are not reachable from here:
//!
//! ```compile_fail,E0432
//! use chimaera::shm::Ring; // shared-memory building blocks are private to the core
//! ```
//!
//! ```compile_fail,E0433
//! let _ = chimaera::codec::encode(&1u32); // so is the codec
//! ```
#![deny(unsafe_op_in_unsafe_fn)]

// Running a runtime.
pub use chimaera_core::{Runtime, RuntimeBuilder, RuntimeConfig, RuntimeHandle, StartError};

// Calling it.
pub use chimaera_core::{
    Buffer, BufferError, Client, ConnectError, Pending, PoolQuery, ReturnedBuffers, Schedule,
    TaskError, TaskHandle,
};
pub use chimaera_core::{ContainerId, MethodId, NodeId, PoolId, TaskNode};

// Writing a chimod.
pub use chimaera_core::{
    BulkIn, BulkOut, BulkRangeError, Bytes, ChiMod, CoMutex, CoMutexGuard, CoRwLock,
    CoRwLockReadGuard, CoRwLockWriteGuard, LaneChoice, LanePriority, LockError, MethodInfo,
    ModuleInfo, RunContext, Wire,
};
pub use chimaera_macros::{chimod, task, wire};

// Clusters: hostfile and membership, the in-memory network, the seam a network implements,
// and what a topology-aware `Dynamic` route sees.
pub use chimaera_core::query::{Placement, PoolTopology};
pub use chimaera_core::{cluster, peer};

// Modules: the admin wire types, YAML composition, the config, instance files, waits.
pub use chimaera_core::{admin_api, compose, config, instance, wait};
pub use chimaera_core::{rkyv, serde};

/// Support for the code `#[chimod]` generates; not an API.
#[doc(hidden)]
pub use chimaera_core::__private;

pub use admin::AdminClient;
/// The admin chimod: pool lifecycle, flush, stop (always linked).
pub use chimaera_admin as admin;

/// The MOD_NAME template chimod.
#[cfg(feature = "mod_name")]
pub use chimaera_mod_name as mod_name;

/// The bdev chimod: file and RAM block devices.
#[cfg(feature = "bdev")]
pub use chimaera_bdev as bdev;

/// The gRPC network between runtimes (feature `net`, on by default):
/// [`net::attach`] makes a runtime built in code the cluster node its config's
/// `networking:` describes, as `runtime start` does.
#[cfg(feature = "net")]
pub use chimaera_net as net;

pub mod cli;
pub mod guide;

/// A runtime builder with the admin chimod and every chimod enabled by cargo features
/// (MOD_NAME composable from YAML); add your own with [`RuntimeBuilder::module`], or
/// [`RuntimeBuilder::composable_module`] for one that `compose:` entries can create.
pub fn builder() -> RuntimeBuilder {
    let builder = Runtime::builder().module::<admin::Admin>();
    #[cfg(feature = "mod_name")]
    let builder = builder.composable_module::<mod_name::ModName>();
    #[cfg(feature = "bdev")]
    let builder = builder.composable_module::<bdev::Bdev>();
    builder
}

/// What a chimod or a client needs in scope.
pub mod prelude {
    pub use crate::admin::AdminClient;
    pub use chimaera_core::admin_api::PoolOptions;
    pub use chimaera_core::{
        Buffer, BufferError, BulkIn, BulkOut, ChiMod, Client, CoMutex, CoRwLock, ContainerId,
        LaneChoice, LanePriority, MethodId, Pending, PoolId, PoolQuery, RunContext, Runtime,
        RuntimeConfig, Schedule, TaskError, TaskHandle, TaskNode,
    };
    pub use chimaera_macros::{chimod, task, wire};
}
