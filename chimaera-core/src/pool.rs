//! Pools and their containers.
//!
//! A [`Pool`] is one instance of a module: a unique name, an id, the archived create
//! parameters it was made with, and its containers, each with the lanes of its local
//! queue. Pools are immutable once published in the [`PoolTable`]; destroying one removes
//! it from the table and sets `destroyed`, so tasks already queued for it see the flag
//! and fail with `PoolDestroyed` while tasks already running finish normally. The last
//! `Arc` (held by those tasks) frees the containers.
//!
//! Invariant: the table maps names and ids one-to-one; both maps change under one write
//! lock, and pool creation publishes with a check-and-insert, so two concurrent creations
//! of one name yield one pool.
use crate::admin_api::PoolInfo;
use crate::error::TaskError;
use crate::ids::{ContainerId, PoolId};
use crate::module::{Container, ModuleEntry};
use crate::stats::PoolStats;
use crate::worker::Lane;
use rustc_hash::FxHashMap;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, RwLock};

/// One container of a pool and its local queue.
pub struct ContainerSlot {
    pub(crate) object: Arc<dyn Container>,
    pub(crate) lanes: Vec<Arc<Lane>>,
}

impl ContainerSlot {
    /// Tasks queued on this container's lanes.
    pub fn queued(&self) -> usize {
        self.lanes.iter().map(|lane| lane.len()).sum()
    }
}

/// A live pool.
pub struct Pool {
    pub(crate) id: PoolId,
    pub(crate) name: String,
    pub(crate) module: ModuleEntry,
    pub(crate) params: Vec<u8>,
    pub(crate) containers: Vec<ContainerSlot>,
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

    /// Its tasks' counters and latencies, per method.
    pub fn stats(&self) -> &PoolStats {
        &self.stats
    }

    /// Whether the pool was destroyed.
    pub fn is_destroyed(&self) -> bool {
        self.destroyed.load(Ordering::Acquire)
    }

    pub(crate) fn container(&self, id: ContainerId) -> Option<&ContainerSlot> {
        self.containers.get(id as usize)
    }

    /// The pool as the admin API describes it.
    pub fn info(&self) -> PoolInfo {
        PoolInfo {
            id: self.id,
            name: self.name.clone(),
            module: self.module.info.name.to_owned(),
            containers: self.container_count(),
            queued: self
                .containers
                .iter()
                .map(ContainerSlot::queued)
                .sum::<usize>() as u64,
        }
    }
}

#[derive(Default)]
struct Tables {
    /// Looked up on every task, so hashed with Fx rather than SipHash: the keys stored
    /// are ids the runtime assigned, which no client can pick to collide.
    by_id: FxHashMap<PoolId, Arc<Pool>>,
    /// Names come from clients: keep the DoS-resistant default hasher.
    by_name: HashMap<String, PoolId>,
}

/// Every live pool of a runtime, by id and by name.
pub struct PoolTable {
    tables: RwLock<Tables>,
    next_major: AtomicU32,
}

/// What a get-or-create found.
pub(crate) enum Lookup {
    /// A pool of that name exists.
    Existing(Arc<Pool>),
    /// None exists yet.
    Absent,
}

impl PoolTable {
    pub(crate) fn new() -> Self {
        PoolTable {
            tables: RwLock::new(Tables::default()),
            // 1 is the admin pool.
            next_major: AtomicU32::new(2),
        }
    }

    /// The pool with this id.
    pub fn get(&self, id: PoolId) -> Option<Arc<Pool>> {
        read(&self.tables).by_id.get(&id).cloned()
    }

    pub(crate) fn by_name(&self, name: &str) -> Lookup {
        let tables = read(&self.tables);
        match tables.by_name.get(name).and_then(|id| tables.by_id.get(id)) {
            Some(pool) => Lookup::Existing(pool.clone()),
            None => Lookup::Absent,
        }
    }

    pub(crate) fn fresh_id(&self) -> PoolId {
        PoolId::new(self.next_major.fetch_add(1, Ordering::Relaxed), 0)
    }

    /// Publishes `pool` unless a pool of its name appeared meanwhile; returns the pool
    /// now registered under the name.
    pub(crate) fn publish(&self, pool: Arc<Pool>) -> Result<Arc<Pool>, Arc<Pool>> {
        let mut tables = write(&self.tables);
        if let Some(existing) = tables
            .by_name
            .get(&pool.name)
            .and_then(|id| tables.by_id.get(id))
        {
            return Err(existing.clone());
        }
        tables.by_name.insert(pool.name.clone(), pool.id);
        tables.by_id.insert(pool.id, pool.clone());
        Ok(pool)
    }

    /// Removes the pool and marks it destroyed; returns it.
    pub(crate) fn remove(&self, id: PoolId) -> Option<Arc<Pool>> {
        let mut tables = write(&self.tables);
        let pool = tables.by_id.remove(&id)?;
        tables.by_name.remove(&pool.name);
        pool.destroyed.store(true, Ordering::Release);
        Some(pool)
    }

    /// All live pools, by id.
    pub fn list(&self) -> Vec<Arc<Pool>> {
        let mut pools: Vec<_> = read(&self.tables).by_id.values().cloned().collect();
        pools.sort_by_key(|pool| pool.id);
        pools
    }

    pub(crate) fn clear(&self) -> Vec<Arc<Pool>> {
        let mut tables = write(&self.tables);
        tables.by_name.clear();
        let pools: Vec<_> = tables.by_id.drain().map(|(_, pool)| pool).collect();
        for pool in &pools {
            pool.destroyed.store(true, Ordering::Release);
        }
        pools
    }
}

/// Checks that a re-opened pool matches what the caller asks for.
pub(crate) fn check_reopen(
    pool: &Pool,
    module: &str,
    containers: u32,
    params: &[u8],
) -> Result<(), TaskError> {
    let mismatch = |what: &str| TaskError::PoolMismatch {
        name: pool.name.clone(),
        what: what.to_owned(),
    };
    if pool.module.info.name != module {
        return Err(mismatch("module"));
    }
    if pool.container_count() != containers {
        return Err(mismatch("container count"));
    }
    if pool.params != params {
        return Err(mismatch("create parameters"));
    }
    Ok(())
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
