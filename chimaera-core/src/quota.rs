//! What the tasks of one uid may hold of a runtime, over all its connections.
//!
//! Client processes are untrusted, and one user may open many connections (up to
//! `max_clients`), each with its own per-connection quotas (tasks in flight, output
//! bytes; see `transport/shm/client_area.rs`). Some resources must be bounded per user
//! instead, or a user with many connections — or one task with a deep chain of subtasks —
//! takes them all. [`UidQuotas`] holds those bounds for one uid without admin rights
//! (admins may stop the runtime anyway: they are not counted). The runtime keeps one per
//! uid for its life ([`UidTable`]), so a client that reconnects finds its counts as it
//! left them; every task of the uid reaches it through the data share it carries
//! (`BulkShare::quotas`), and so do its subtasks (`BulkShare::for_subtasks`) and the
//! tasks other nodes of a cluster run for it (a task sent to a peer names the uid it runs
//! for, and the peer counts it against its own table's quotas of that uid). (The uid's
//! connections, `quotas.connections`, the shared-memory server counts itself, from the
//! areas it serves.)
//!
//! * **Stack overflows** (`quotas.stack_overflows`): a handler that overflows its
//!   coroutine's stack leaves that stack behind for good (it cannot be unwound), so the
//!   uid may cause only so many; past them its tasks are refused at the door.
//! * **Pool containers** (`quotas.containers`): a pool's containers (their state and
//!   lanes) stay until the pool is destroyed (by an admin, or by the uid, which may
//!   destroy the pools it created); pools it creates may hold only so many containers at
//!   once. A new pool takes a [`PoolReservation`] (its containers, and the bytes of its
//!   name and create parameters from `quotas.memory`), which it keeps until it is
//!   destroyed (or dropped).
//! * **Module memory** (`quotas.memory`): memory a module allocates on the uid's behalf
//!   and keeps (a RAM block device, say) is reserved first
//!   ([`RunContext::reserve_memory`](crate::runtime::context::RunContext::reserve_memory));
//!   the module keeps the [`MemoryReservation`] with what it allocated, and dropping it
//!   gives the bytes back. The runtime counts there too what it keeps for the uid: the
//!   names and create parameters of its pools, and each task input it copied out of a
//!   client's memory (inputs of more than `INLINE_INPUT` bytes), until the task ends.
//! * **Periodic tasks** (`quotas.periodic_tasks`): each keeps a coroutine between its
//!   runs, and a runtime has at most `max_periodic_tasks` of them; the runtime's registry
//!   of periodic tasks notes whose each is, and refuses one more of a uid that has its
//!   quota alive.
//! * **Waiting tasks** (`quotas.waiting_tasks`): a task whose handler waits keeps a
//!   coroutine (a stack: two memory mappings) until it ends, and a runtime has at most
//!   `max_coroutines` of them. The worker counts a task when it first waits (when its
//!   coroutine hands the polling role on) and uncounts it when that run ends; it refuses
//!   to start a task of a uid whose count is at its quota, with
//!   [`TaskError::QuotaExceeded`]. A task already running when the count was read may
//!   still wait, at most one per worker, so the count stays below the quota plus the
//!   number of workers.
//!
//! Invariants: counts saturate (never wrap, never go below zero); a run is counted as
//! waiting at most once, and uncounted exactly once, by the worker that runs it, when
//! the run ends; a coroutine that dies of a stack overflow while its task is counted
//! stays counted, as its stack stays alive (and counted in `max_coroutines`); a
//! reservation (containers, memory) is taken whole or not at all, never past its quota,
//! and given back exactly once, when it is dropped.
use crate::error::TaskError;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How often at most the refusals of one uid's tasks for its waiting quota are logged.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// The per-uid quotas of one uid without admin rights (see the module docs).
#[derive(Debug)]
pub(crate) struct UidQuotas {
    uid: u32,
    overflows: AtomicU32,
    max_overflows: u32,
    waiting: AtomicU32,
    max_waiting: u32,
    max_periodic: u32,
    containers: AtomicU64,
    max_containers: u32,
    memory: AtomicU64,
    max_memory: u64,
    /// When a refusal for the waiting quota was last logged.
    refusal_logged_at: Mutex<Option<Instant>>,
}

/// What one uid holds against its quotas: `(used, max)` pairs (see [`UidQuotas::usage`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct UidUsage {
    pub(crate) waiting_tasks: (u64, u64),
    pub(crate) max_periodic_tasks: u64,
    pub(crate) containers: (u64, u64),
    pub(crate) memory_bytes: (u64, u64),
    pub(crate) stack_overflows: (u64, u64),
}

/// The per-uid limits a runtime applies (from its config).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct UidLimits {
    /// `quotas.stack_overflows`.
    pub(crate) stack_overflows: u32,
    /// `quotas.waiting_tasks`, resolved.
    pub(crate) waiting_tasks: u32,
    /// `quotas.periodic_tasks`, resolved.
    pub(crate) periodic_tasks: u32,
    /// `quotas.containers`.
    pub(crate) containers: u32,
    /// `quotas.memory`, in bytes.
    pub(crate) memory: u64,
}

impl UidQuotas {
    /// The quotas of `uid`, nothing used.
    pub(crate) fn new(uid: u32, limits: UidLimits) -> UidQuotas {
        UidQuotas {
            uid,
            overflows: AtomicU32::new(0),
            max_overflows: limits.stack_overflows,
            waiting: AtomicU32::new(0),
            max_waiting: limits.waiting_tasks,
            max_periodic: limits.periodic_tasks,
            containers: AtomicU64::new(0),
            max_containers: limits.containers,
            memory: AtomicU64::new(0),
            max_memory: limits.memory,
            refusal_logged_at: Mutex::new(None),
        }
    }

    /// What the uid holds against these quotas now (connections and periodic tasks are
    /// counted by their owners: only their quotas are here).
    pub(crate) fn usage(&self) -> UidUsage {
        let load = |count: &AtomicU32| u64::from(count.load(Ordering::Relaxed));
        UidUsage {
            waiting_tasks: (load(&self.waiting), u64::from(self.max_waiting)),
            max_periodic_tasks: u64::from(self.max_periodic),
            containers: (
                self.containers.load(Ordering::Relaxed),
                u64::from(self.max_containers),
            ),
            memory_bytes: (self.memory.load(Ordering::Relaxed), self.max_memory),
            stack_overflows: (load(&self.overflows), u64::from(self.max_overflows)),
        }
    }

    /// The uid these quotas are of.
    pub(crate) fn uid(&self) -> u32 {
        self.uid
    }

    /// Counts one stack overflow of the uid's tasks.
    pub(crate) fn count_overflow(&self) {
        saturating_add(&self.overflows);
    }

    /// Whether the uid's stack-overflow quota is used up (its tasks are refused).
    pub(crate) fn overflows_spent(&self) -> bool {
        self.overflows.load(Ordering::Relaxed) >= self.max_overflows
    }

    /// The error a task of a uid past its stack-overflow quota fails with.
    #[cold]
    pub(crate) fn overflow_error(&self) -> TaskError {
        TaskError::QuotaExceeded {
            what: "stack overflows".into(),
            limit: u64::from(self.max_overflows),
            config_key: "quotas.stack_overflows".into(),
        }
    }

    /// Reserves `containers` of the uid's quota for a pool it creates, or says why not.
    pub(crate) fn reserve_containers(
        self: &Arc<Self>,
        containers: u32,
    ) -> Result<ContainerReservation, TaskError> {
        let max = u64::from(self.max_containers);
        if !reserve(&self.containers, u64::from(containers), max) {
            return Err(TaskError::QuotaExceeded {
                what: "pool containers".into(),
                limit: max,
                config_key: "quotas.containers".into(),
            });
        }
        Ok(ContainerReservation {
            quotas: self.clone(),
            containers,
        })
    }

    /// Containers of pools the uid created that are not destroyed.
    #[cfg(test)]
    fn containers(&self) -> u64 {
        self.containers.load(Ordering::Relaxed)
    }

    /// Reserves `bytes` of the uid's module memory, or says why not.
    pub(crate) fn reserve_memory(
        self: &Arc<Self>,
        bytes: u64,
    ) -> Result<MemoryReservation, TaskError> {
        if !reserve(&self.memory, bytes, self.max_memory) {
            return Err(TaskError::QuotaExceeded {
                what: "bytes of memory held for it (module allocations, pool names and parameters, task inputs)".into(),
                limit: self.max_memory,
                config_key: "quotas.memory".into(),
            });
        }
        Ok(MemoryReservation(Some((self.clone(), bytes))))
    }

    /// How many periodic tasks of the uid may be alive at once.
    pub(crate) fn max_periodic(&self) -> u32 {
        self.max_periodic
    }

    /// The error a periodic task of a uid that has its quota of them alive fails with.
    #[cold]
    pub(crate) fn periodic_error(&self) -> TaskError {
        TaskError::QuotaExceeded {
            what: "periodic tasks".into(),
            limit: u64::from(self.max_periodic),
            config_key: "quotas.periodic_tasks".into(),
        }
    }

    /// Whether the uid has as many tasks waiting as its quota allows: a worker refuses
    /// to start another of its tasks. One relaxed load: the bound is approximate by
    /// design (see the module docs).
    #[inline]
    pub(crate) fn waiting_full(&self) -> bool {
        self.waiting.load(Ordering::Relaxed) >= self.max_waiting
    }

    /// Counts one more task of the uid waiting (its handler keeps a coroutine).
    pub(crate) fn start_waiting(&self) {
        saturating_add(&self.waiting);
    }

    /// Uncounts a task counted by [`start_waiting`](Self::start_waiting): its run ended.
    pub(crate) fn stop_waiting(&self) {
        let _ = self
            .waiting
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }

    /// Tasks of the uid waiting now.
    pub(crate) fn waiting(&self) -> u32 {
        self.waiting.load(Ordering::Relaxed)
    }

    /// The error a task refused for the uid's waiting quota fails with; says so in the
    /// log at most every [`REFUSAL_LOG_EVERY`] for the uid.
    #[cold]
    pub(crate) fn waiting_error(&self) -> TaskError {
        let log = {
            // A poisoned lock still holds a time: logging is all it guards.
            let mut logged_at = self
                .refusal_logged_at
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let due = logged_at.is_none_or(|at| at.elapsed() >= REFUSAL_LOG_EVERY);
            if due {
                *logged_at = Some(Instant::now());
            }
            due
        };
        if log {
            tracing::warn!(
                uid = self.uid,
                waiting = self.waiting(),
                max = self.max_waiting,
                "a uid has its quota of waiting tasks: its new tasks fail with QuotaExceeded until some end (config key quotas.waiting_tasks; said at most every 10 s per uid)"
            );
        }
        TaskError::QuotaExceeded {
            what: "waiting tasks".into(),
            limit: u64::from(self.max_waiting),
            config_key: "quotas.waiting_tasks".into(),
        }
    }
}

/// The quotas of every uid without admin rights that tasks ran for, one [`UidQuotas`]
/// per uid, kept for the runtime's life: a client that reconnects finds its uid's counts
/// as it left them, and a task a peer node sends for such a uid counts against the same
/// quotas as the uid's own clients of this node.
#[derive(Debug)]
pub(crate) struct UidTable {
    limits: UidLimits,
    quotas: Mutex<HashMap<u32, Arc<UidQuotas>>>,
}

impl UidTable {
    /// A table that gives each uid `limits`.
    pub(crate) fn new(limits: UidLimits) -> UidTable {
        UidTable {
            limits,
            quotas: Mutex::new(HashMap::new()),
        }
    }

    /// The quotas of `uid`, made on first use.
    pub(crate) fn of(&self, uid: u32) -> Arc<UidQuotas> {
        // A poisoned lock still holds whole entries: an insert is its only write.
        let mut quotas = self.quotas.lock().unwrap_or_else(PoisonError::into_inner);
        quotas
            .entry(uid)
            .or_insert_with(|| Arc::new(UidQuotas::new(uid, self.limits)))
            .clone()
    }

    /// Every uid's quotas made so far, in uid order.
    pub(crate) fn all(&self) -> Vec<Arc<UidQuotas>> {
        let quotas = self.quotas.lock().unwrap_or_else(PoisonError::into_inner);
        let mut all: Vec<_> = quotas.values().cloned().collect();
        all.sort_by_key(|quotas| quotas.uid());
        all
    }
}

/// Bytes of an unprivileged caller's `quotas.memory` that a module holds for it (see
/// [`RunContext::reserve_memory`](crate::runtime::context::RunContext::reserve_memory)):
/// keep it with what was allocated; dropped, the bytes are the caller's again. Empty
/// (counting nothing) for a trusted caller.
#[derive(Debug, Default)]
pub struct MemoryReservation(Option<(Arc<UidQuotas>, u64)>);

impl MemoryReservation {
    /// The bytes reserved (0 for a trusted caller, who is not counted).
    pub fn bytes(&self) -> u64 {
        self.0.as_ref().map_or(0, |(_, bytes)| *bytes)
    }
}

impl Drop for MemoryReservation {
    fn drop(&mut self) {
        if let Some((quotas, bytes)) = self.0.take() {
            release(&quotas.memory, bytes);
        }
    }
}

/// What a pool a uid created holds of its quotas until the pool is destroyed (dropped):
/// its containers (`quotas.containers`) and the bytes of its name and create parameters,
/// which the runtime keeps with it (`quotas.memory`).
#[derive(Debug)]
pub(crate) struct PoolReservation {
    _containers: ContainerReservation,
    _memory: MemoryReservation,
}

impl UidQuotas {
    /// Reserves what a pool of `containers` that keeps `kept_bytes` holds of the uid's
    /// quotas, or says why not (taking nothing).
    pub(crate) fn reserve_pool(
        self: &Arc<Self>,
        containers: u32,
        kept_bytes: u64,
    ) -> Result<PoolReservation, TaskError> {
        let containers = self.reserve_containers(containers)?;
        let memory = self.reserve_memory(kept_bytes)?;
        Ok(PoolReservation {
            _containers: containers,
            _memory: memory,
        })
    }
}

/// Containers of a uid's quota that one of its pools holds; given back when dropped
/// (the pool destroyed).
#[derive(Debug)]
pub(crate) struct ContainerReservation {
    quotas: Arc<UidQuotas>,
    containers: u32,
}

impl Drop for ContainerReservation {
    fn drop(&mut self) {
        release(&self.quotas.containers, u64::from(self.containers));
    }
}

/// Adds `amount` to `used` if the total stays within `max`; whether it did.
fn reserve(used: &AtomicU64, amount: u64, max: u64) -> bool {
    used.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
        used.checked_add(amount).filter(|&total| total <= max)
    })
    .is_ok()
}

/// Takes `amount` back from `used` (never below zero).
fn release(used: &AtomicU64, amount: u64) {
    let _ = used.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
        Some(used.saturating_sub(amount))
    });
}

/// Adds one to `count` unless it is at `u32::MAX`: a count that wrapped would hand the
/// quota back.
fn saturating_add(count: &AtomicU32) {
    let _ = count.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_add(1));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quotas(stack_overflows: u32, waiting_tasks: u32) -> UidQuotas {
        UidQuotas::new(
            1001,
            UidLimits {
                stack_overflows,
                waiting_tasks,
                periodic_tasks: 4,
                containers: 10,
                memory: 1000,
            },
        )
    }

    #[test]
    fn the_waiting_quota_fills_and_empties() {
        let quotas = quotas(1, 2);
        assert!(!quotas.waiting_full());
        quotas.start_waiting();
        assert!(!quotas.waiting_full());
        quotas.start_waiting();
        assert!(quotas.waiting_full());
        assert_eq!(quotas.waiting(), 2);
        quotas.stop_waiting();
        assert!(!quotas.waiting_full());
        quotas.stop_waiting();
        // Never below zero, even if uncounted once too often.
        quotas.stop_waiting();
        assert_eq!(quotas.waiting(), 0);
        assert_eq!(
            quotas.waiting_error(),
            TaskError::QuotaExceeded {
                what: "waiting tasks".into(),
                limit: 2,
                config_key: "quotas.waiting_tasks".into(),
            }
        );
    }

    #[test]
    fn counts_saturate_instead_of_wrapping() {
        let quotas = quotas(3, u32::MAX);
        quotas.waiting.store(u32::MAX, Ordering::Relaxed);
        quotas.start_waiting();
        assert_eq!(quotas.waiting(), u32::MAX);
        assert!(quotas.waiting_full());
        quotas.overflows.store(u32::MAX, Ordering::Relaxed);
        quotas.count_overflow();
        assert!(quotas.overflows_spent());
    }

    #[test]
    fn container_reservations_stay_within_the_quota_and_come_back() {
        let quotas = Arc::new(quotas(1, 1));
        let first = quotas.reserve_containers(6).unwrap();
        let refused = quotas.reserve_containers(5).unwrap_err();
        assert!(
            matches!(&refused, TaskError::QuotaExceeded { limit: 10, config_key, .. } if config_key == "quotas.containers"),
            "{refused:?}"
        );
        let second = quotas.reserve_containers(4).unwrap();
        assert_eq!(quotas.containers(), 10);
        // No overflow past u32::MAX either.
        assert!(quotas.reserve_containers(u32::MAX).is_err());
        drop(first);
        assert_eq!(quotas.containers(), 4);
        drop(second);
        assert_eq!(quotas.containers(), 0);
    }

    #[test]
    fn memory_reservations_stay_within_the_quota_and_come_back() {
        let quotas = Arc::new(quotas(1, 1));
        let first = quotas.reserve_memory(600).unwrap();
        assert_eq!(first.bytes(), 600);
        let refused = quotas.reserve_memory(401).unwrap_err();
        assert!(
            matches!(&refused, TaskError::QuotaExceeded { limit: 1000, config_key, .. } if config_key == "quotas.memory"),
            "{refused:?}"
        );
        assert!(quotas.reserve_memory(u64::MAX).is_err());
        let second = quotas.reserve_memory(400).unwrap();
        drop(first);
        let third = quotas.reserve_memory(600).unwrap();
        drop((second, third));
        assert_eq!(quotas.memory.load(Ordering::Relaxed), 0);
        assert_eq!(MemoryReservation::default().bytes(), 0);
    }

    #[test]
    fn the_overflow_quota_is_spent_at_its_limit() {
        let quotas = quotas(2, 8);
        quotas.count_overflow();
        assert!(!quotas.overflows_spent());
        quotas.count_overflow();
        assert!(quotas.overflows_spent());
        assert!(matches!(
            quotas.overflow_error(),
            TaskError::QuotaExceeded { limit: 2, .. }
        ));
    }

    #[test]
    fn a_table_keeps_one_quota_per_uid_and_lists_them_in_uid_order() {
        let table = UidTable::new(UidLimits {
            stack_overflows: 1,
            waiting_tasks: 2,
            periodic_tasks: 3,
            containers: 4,
            memory: 5,
        });
        let later = table.of(2000);
        later.count_overflow();
        table.of(1000);
        // The same uid gets the same counts back (a client that reconnects, a peer's task).
        assert!(table.of(2000).overflows_spent());
        assert!(Arc::ptr_eq(&later, &table.of(2000)));
        let uids: Vec<u32> = table.all().iter().map(|quotas| quotas.uid()).collect();
        assert_eq!(uids, [1000, 2000]);
        assert_eq!(table.of(1000).usage().containers, (0, 4));
    }
}
