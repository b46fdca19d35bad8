//! # admin — the runtime's own chimod
//!
//! Every runtime links this module and creates its pool, `1.0`, at start. Its tasks
//! manage the runtime itself:
//!
//! | id | task | does |
//! |---|---|---|
//! | 10 | `get_or_create_pool` | returns the pool of that name, creating it (and its containers, through the module's `create`) if absent; a re-open with another module, container count or create parameters is an error, and so is one of a pool private to another uid (see `TaskError::PrivatePool`) |
//! | 11 | `destroy_pool` | removes a pool: tasks still queued for it fail with `PoolDestroyed`, running ones finish, each container's `kDestroy` runs; a client of a uid without admin rights may destroy only the pools it created |
//! | 12 | `stop_runtime` | a clean stop: in-flight tasks get `grace_period_ms` to finish, what is left fails with `RuntimeStopped`, the runtime ends (the original aborted) |
//! | 13 | `flush` | returns when every task in flight when it started is done (tasks submitted meanwhile, the caller's own and other flushes are not waited for), with the number of tasks completed meanwhile |
//! | 16 | `status` | the runtime's pid, instance, workers and their task counts, pools with their containers and lanes, tasks in flight and completed, per-method counters and latencies, attached clients, live periodic tasks, shared memory (the status task and its client left out) |
//! | 17 | `find_pool` | the pool of that name, if any (what every typed client's `open` asks) |
//!
//! The wire types are those of [`chimaera_core::admin_api`], so every client can reach
//! these tasks without depending on this crate; the tests pin the ids to it.
#![deny(unsafe_op_in_unsafe_fn)]

use chimaera_core::admin_api::{CreatePoolRequest, PoolInfo, RuntimeStatus};
use chimaera_core::{CoMutex, PoolId, RunContext, TaskError};
use chimaera_macros::chimod;
use std::time::Duration;

/// The admin container.
#[chimod(name = "admin")]
pub struct Admin {
    /// Serializes pool creation and destruction, so a get-or-create of one name from
    /// many clients builds the pool's containers once.
    pool_lifecycle: CoMutex,
}

#[chimod]
impl Admin {
    /// `kCreate`: the admin pool is created by the runtime at start.
    #[task(method = 0)]
    fn create(_ctx: &mut RunContext) -> Self {
        Admin {
            pool_lifecycle: CoMutex::new(()),
        }
    }

    /// `kGetOrCreatePool`.
    #[task(method = 10)]
    fn get_or_create_pool(
        &self,
        ctx: &mut RunContext,
        request: CreatePoolRequest,
    ) -> Result<PoolInfo, TaskError> {
        let _serial = self.pool_lifecycle.lock(ctx);
        ctx.runtime().get_or_create_pool(ctx, &request)
    }

    /// `kDestroyPool`.
    #[task(method = 11)]
    fn destroy_pool(&self, ctx: &mut RunContext, pool: PoolId) -> Result<(), TaskError> {
        let _serial = self.pool_lifecycle.lock(ctx);
        ctx.runtime().destroy_pool(ctx, pool)
    }

    /// `kStopRuntime`: answers, then stops the runtime cleanly.
    #[task(method = 12)]
    fn stop_runtime(&self, ctx: &mut RunContext, grace_period_ms: u64) -> Result<(), TaskError> {
        ctx.runtime()
            .stop_from_task(ctx, Duration::from_millis(grace_period_ms))
    }

    /// `kFlush`: waits until the tasks in flight when it started are done; returns how
    /// many tasks completed meanwhile.
    #[task(method = 13)]
    fn flush(&self, ctx: &mut RunContext) -> u64 {
        ctx.runtime().flush(ctx)
    }

    /// `kStatus`: a snapshot of the runtime (what `chimaera runtime status` prints).
    #[task(method = 16)]
    fn status(&self, ctx: &mut RunContext) -> RuntimeStatus {
        ctx.runtime().status(ctx)
    }

    /// `kFindPool`: the pool named `name`, if there is one.
    #[task(method = 17)]
    fn find_pool(&self, ctx: &mut RunContext, name: &str) -> Option<PoolInfo> {
        ctx.runtime()
            .pools()
            .into_iter()
            .find(|pool| pool.name == name)
    }
}
