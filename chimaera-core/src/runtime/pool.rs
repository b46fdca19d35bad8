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
//!
//! In a cluster a pool spans the nodes ([`Placement`]): every node holds the pool with
//! the same id, name and container count, but builds only the containers placed on it;
//! the others are `None` here and run on their nodes.
//!
//! A pool a uid without admin rights creates is private to that uid (`private_to`):
//! tasks of other such uids fail with [`TaskError::PrivatePool`] (checked where a task
//! is queued, and where `GetOrCreatePool` finds the name taken); the runtime's own work,
//! its owner and admin uids use every pool.
use crate::error::TaskError;
use crate::ids::{ContainerId, PoolId};
use crate::query::Placement;
use crate::quota::PoolReservation;
use crate::runtime::module::{Container, ModuleEntry};
use crate::stats::PoolStats;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// A live pool.
///
/// Aligned to 128 bytes so that, inside its `Arc`, the reference counts sit apart from
/// the fields: every task clones the `Arc` where it is queued and drops it where it ran
/// (two threads), and that traffic must not evict the fields both threads read.
#[repr(align(128))]
pub struct Pool {
    pub(crate) id: PoolId,
    pub(crate) name: String,
    pub(crate) module: ModuleEntry,
    pub(crate) params: Vec<u8>,
    /// `containers[c]`: container `c` if this node holds it.
    pub(crate) containers: Vec<Option<Arc<dyn Container>>>,
    /// Which node holds which container.
    pub(crate) placement: Placement,
    /// Whether the pool is one of the cluster's (created through node 0 on every node),
    /// rather than this node's own (the admin pool).
    pub(crate) clustered: bool,
    pub(crate) destroyed: AtomicBool,
    /// Its tasks' counters and latencies, per method.
    pub(crate) stats: PoolStats,
    /// What it holds of the quotas of the uid that created it, if that uid has them
    /// (`quotas.containers`, `quotas.memory`): given back when the pool is destroyed.
    pub(crate) reservation: Mutex<Option<PoolReservation>>,
    /// The uid without admin rights that created it, to which it is private (see
    /// [`Pool::check_caller`]); `None` for a pool the runtime, its owner or an admin
    /// made, which every allowed uid may use.
    pub(crate) private_to: Option<u32>,
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

    /// Refuses a task of `caller` (a uid without admin rights, `None` for a trusted
    /// caller) if the pool is private to another uid. Trusted callers use any pool.
    #[inline]
    pub(crate) fn check_caller(&self, caller: Option<u32>) -> Result<(), TaskError> {
        match (self.private_to, caller) {
            (Some(owner), Some(uid)) if uid != owner => Err(self.private_error(owner)),
            _ => Ok(()),
        }
    }

    /// The error a caller the pool is not open to gets.
    #[cold]
    pub(crate) fn private_error(&self, owner: u32) -> TaskError {
        TaskError::PrivatePool {
            name: self.name.clone(),
            owner,
        }
    }

    pub(crate) fn container(&self, id: ContainerId) -> Option<&Arc<dyn Container>> {
        self.containers.get(id as usize).and_then(Option::as_ref)
    }

    /// Which node holds which container.
    pub fn placement(&self) -> Placement {
        self.placement
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
