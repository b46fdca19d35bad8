//! Every live pool of a runtime, by id and by name, with where its tasks queue.
//!
//! An entry is a [`Pool`] plus the lanes of each of its containers' local queues.
//! Entries are immutable once published; destroying a pool removes its entry and sets
//! the pool's `destroyed` flag, so tasks already queued for it see the flag and fail
//! with `PoolDestroyed` while tasks already running finish normally. The last `Arc`
//! (held by those tasks) frees the containers.
//!
//! Invariant: the table maps names and ids one-to-one; both maps change under one write
//! lock, and pool creation publishes with a check-and-insert, so two concurrent creations
//! of one name yield one pool.
use crate::admin_api::PoolInfo;
use crate::error::TaskError;
use crate::ids::{ContainerId, PoolId};
use crate::runtime::pool::Pool;
use crate::runtime::worker::Lane;
use rustc_hash::FxHashMap;
use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

/// A published pool and its containers' lanes.
pub struct PoolEntry {
    pub(crate) pool: Arc<Pool>,
    /// `lanes[container]`: that container's local queue, one lane per module lane.
    pub(crate) lanes: Vec<Vec<Arc<Lane>>>,
}

impl PoolEntry {
    /// The pool.
    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// The lanes of `container`'s local queue (empty for a container it does not have).
    pub(crate) fn lanes(&self, container: ContainerId) -> &[Arc<Lane>] {
        self.lanes
            .get(container as usize)
            .map_or(&[], Vec::as_slice)
    }

    /// Tasks queued on the pool's lanes now.
    pub fn queued(&self) -> usize {
        self.lanes.iter().flatten().map(|lane| lane.len()).sum()
    }

    /// The pool as the admin API describes it.
    pub fn info(&self) -> PoolInfo {
        let pool = &self.pool;
        PoolInfo {
            id: pool.id,
            name: pool.name.clone(),
            module: pool.module_name().to_owned(),
            containers: pool.container_count(),
            queued: self.queued() as u64,
            private_to: pool.private_to,
        }
    }
}

#[derive(Default)]
struct Tables {
    /// Looked up on every task, so hashed with Fx rather than SipHash: the keys stored
    /// are ids the runtime assigned, which no client can pick to collide.
    by_id: FxHashMap<PoolId, Arc<PoolEntry>>,
    /// Names come from clients: keep the DoS-resistant default hasher.
    by_name: HashMap<String, PoolId>,
}

/// Every live pool of a runtime, by id and by name.
pub struct PoolTable {
    tables: RwLock<Tables>,
    next_major: AtomicU32,
}

/// The pool an ingest looked up last, kept for its next tasks.
///
/// A lookup in the table takes its read lock and clones the entry's `Arc`: four locked
/// read-modify-writes, a tenth of an empty task's cost in the runtime. The tasks
/// clients push mostly go to the pools they used just before, so an ingest keeps the
/// entry it found and checks the next task's pool id against it.
///
/// A worker keeps its memo from one ingest batch to the next ([`PoolMemo::of_worker`],
/// [`PoolMemo::keep_for_worker`]) while it is busy (a sync client's batches hold one
/// task each, so a memo of one batch saved nothing for them), and lets it go when it goes
/// idle or stops ([`PoolMemo::release_worker`]). So a destroyed pool is kept alive by a memo only
/// until its worker's next lookup of another pool, or its next idle spell (a couple of
/// thousand empty polls): a memoized pool that was destroyed is looked up again, not
/// found, and dropped. Other callers (an in-process call) use a memo of their own, for
/// one task.
#[derive(Default)]
pub struct PoolMemo {
    last: Option<Arc<PoolEntry>>,
}

thread_local! {
    /// A worker thread's memo between its ingest batches. Taken out for a batch and put
    /// back after it, never borrowed across chimod code: a poller that dies inside a
    /// batch loses it, nothing more.
    static WORKER_MEMO: Cell<PoolMemo> = const { Cell::new(PoolMemo { last: None }) };
}

impl PoolMemo {
    /// This worker thread's memo, taken out for one ingest batch (empty on any other
    /// thread, or after an idle spell).
    pub(crate) fn of_worker() -> PoolMemo {
        WORKER_MEMO.with(Cell::take)
    }

    /// Puts the memo back for this worker thread's next batch.
    pub(crate) fn keep_for_worker(self) {
        WORKER_MEMO.with(|memo| memo.set(self));
    }

    /// Drops this worker thread's memo: the worker goes idle, or stops.
    pub(crate) fn release_worker() {
        drop(WORKER_MEMO.with(Cell::take));
    }
}

/// What a get-or-create found.
pub(crate) enum Lookup {
    /// A pool of that name exists.
    Existing(Arc<PoolEntry>),
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
    pub fn get(&self, id: PoolId) -> Option<Arc<PoolEntry>> {
        read(&self.tables).by_id.get(&id).cloned()
    }

    /// The pool with this id, through `memo` (see [`PoolMemo`]).
    pub(crate) fn get_memoized<'m>(
        &self,
        id: PoolId,
        memo: &'m mut PoolMemo,
    ) -> Option<&'m Arc<PoolEntry>> {
        let hit = memo
            .last
            .as_ref()
            .is_some_and(|entry| entry.pool.id == id && !entry.pool.is_destroyed());
        if !hit {
            // A miss lets the old entry go too (a destroyed pool's, say).
            memo.last = self.get(id);
        }
        memo.last.as_ref()
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

    /// Makes sure no fresh id is `id` or below it (ids a restarted node 0 learns from
    /// its peers).
    pub(crate) fn reserve(&self, id: PoolId) {
        self.next_major
            .fetch_max(id.major.saturating_add(1), Ordering::Relaxed);
    }

    /// Publishes `pool` unless a pool of its name appeared meanwhile; returns the pool
    /// now registered under the name.
    pub(crate) fn publish(&self, entry: Arc<PoolEntry>) -> Result<Arc<PoolEntry>, Arc<PoolEntry>> {
        let mut tables = write(&self.tables);
        if let Some(existing) = tables
            .by_name
            .get(&entry.pool.name)
            .and_then(|id| tables.by_id.get(id))
        {
            return Err(existing.clone());
        }
        tables
            .by_name
            .insert(entry.pool.name.clone(), entry.pool.id);
        tables.by_id.insert(entry.pool.id, entry.clone());
        Ok(entry)
    }

    /// Removes the pool and marks it destroyed; returns it.
    pub(crate) fn remove(&self, id: PoolId) -> Option<Arc<PoolEntry>> {
        let mut tables = write(&self.tables);
        let entry = tables.by_id.remove(&id)?;
        tables.by_name.remove(&entry.pool.name);
        entry.pool.destroyed.store(true, Ordering::Release);
        // Its containers are the creator's again: they go with the pool's last
        // reference, moments from now (a worker's memo may hold one a while).
        let reservation = entry.pool.reservation.lock();
        reservation.unwrap_or_else(PoisonError::into_inner).take();
        Some(entry)
    }

    /// All live pools, by id.
    pub fn list(&self) -> Vec<Arc<PoolEntry>> {
        let mut entries: Vec<_> = read(&self.tables).by_id.values().cloned().collect();
        entries.sort_by_key(|entry| entry.pool.id);
        entries
    }

    pub(crate) fn clear(&self) -> Vec<Arc<PoolEntry>> {
        let mut tables = write(&self.tables);
        tables.by_name.clear();
        let entries: Vec<_> = tables.by_id.drain().map(|(_, entry)| entry).collect();
        for entry in &entries {
            entry.pool.destroyed.store(true, Ordering::Release);
        }
        entries
    }
}

/// Checks that a re-opened pool matches what the caller asks for, and is open to
/// `caller` (a uid without admin rights, `None` for a trusted caller).
pub(crate) fn check_reopen(
    pool: &Pool,
    module: &str,
    containers: u32,
    params: &[u8],
    caller: Option<u32>,
) -> Result<(), TaskError> {
    // A name a uid without admin rights took is its own: any other caller, trusted ones
    // included, is told so rather than handed that uid's pool (whose owner could read
    // what they then write to it).
    if let Some(owner) = pool.private_to.filter(|&owner| caller != Some(owner)) {
        return Err(pool.private_error(owner));
    }
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
