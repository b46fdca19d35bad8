//! Pools: what a task runs on.
//!
//! A [`Pool`] is one instance of a module: a unique name, an id, the archived create
//! parameters it was made with, and its containers (the module's objects). Every task
//! holds its pool (`Arc`), so a destroyed pool lives until its tasks are done. A pool is
//! immutable once built except for `destroyed`, which is set once (when it leaves the
//! [`PoolTable`](crate::runtime::pool_table::PoolTable)): tasks still queued for it see
//! the flag and fail with `PoolDestroyed`, tasks already running finish normally.
//!
//! Where a pool's tasks queue (its containers' lanes) is not part of it: that is the
//! table's business, so tasks — which hold pools — never hold queues of tasks.
use crate::ids::{ContainerId, PoolId};
use crate::runtime::module::{Container, ModuleEntry};
use crate::stats::PoolStats;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A live pool.
pub struct Pool {
    pub(crate) id: PoolId,
    pub(crate) name: String,
    pub(crate) module: ModuleEntry,
    pub(crate) params: Vec<u8>,
    pub(crate) containers: Vec<Arc<dyn Container>>,
    pub(crate) destroyed: AtomicBool,
    /// Its tasks' counters and latencies, per method.
    pub(crate) stats: PoolStats,
}

impl Pool {
    /// The pool's id.
    pub fn id(&self) -> PoolId {
        self.id
    }

    /// The pool's unique name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Number of containers.
    pub fn container_count(&self) -> u32 {
        self.containers.len() as u32
    }

    /// Whether the pool was destroyed.
    pub fn is_destroyed(&self) -> bool {
        self.destroyed.load(Ordering::Acquire)
    }

    pub(crate) fn container(&self, id: ContainerId) -> Option<&Arc<dyn Container>> {
        self.containers.get(id as usize)
    }

    /// Its tasks' counters and latencies, per method.
    pub fn stats(&self) -> &PoolStats {
        &self.stats
    }

    /// The name of the module the pool runs.
    pub fn module_name(&self) -> &'static str {
        self.module.info.name
    }
}
