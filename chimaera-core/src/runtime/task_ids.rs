//! Task ids: unique within a runtime, taken without a locked add on a worker's thread.
//!
//! Ids come from one runtime-wide counter. A worker takes them a block at a time
//! ([`BLOCK`] ids for one `fetch_add`) into a block of its own, which only its thread
//! touches, and hands them out from there with a load and a store; any other thread
//! takes one id at a time from the counter itself. Blocks never overlap, so every id is
//! handed out once.
//!
//! Ids are unique, not ordered: two tasks queued one after the other by different
//! threads may get ids in either order. Nothing reads an order into them (they name a
//! task, and the group a subtask belongs to).
use crate::runtime::worker::ThreadRole;
use crossbeam_utils::CachePadded;
use std::sync::atomic::{AtomicU64, Ordering};

/// Ids a worker takes from the counter at once.
const BLOCK: u64 = 1024;

/// Workers with a block of their own; workers past this count take ids one at a time.
const MAX_BLOCKS: usize = 64;

/// The ids of one runtime; see the module docs.
pub(crate) struct TaskIds {
    next: CachePadded<AtomicU64>,
    /// `blocks[i]`: the ids worker `i` has left, `[next, end)`, written by its thread
    /// only.
    blocks: Box<[CachePadded<IdBlock>]>,
}

#[derive(Default)]
struct IdBlock {
    next: AtomicU64,
    end: AtomicU64,
}

impl TaskIds {
    /// Ids for a runtime of `workers` workers, from 1 up.
    pub(crate) fn new(workers: usize) -> Self {
        TaskIds {
            next: CachePadded::new(AtomicU64::new(1)),
            blocks: (0..workers.min(MAX_BLOCKS))
                .map(|_| CachePadded::default())
                .collect(),
        }
    }

    /// A fresh id, taken on the thread `role` names.
    pub(crate) fn take(&self, role: ThreadRole) -> u64 {
        let ThreadRole::Worker(worker) = role else {
            return self.next.fetch_add(1, Ordering::Relaxed);
        };
        let Some(block) = self.blocks.get(worker) else {
            return self.next.fetch_add(1, Ordering::Relaxed);
        };
        // Only worker `worker`'s thread reaches its block (see `ThreadRole::Worker`), so
        // a load and a store lose nothing.
        let id = block.next.load(Ordering::Relaxed);
        if id < block.end.load(Ordering::Relaxed) {
            block.next.store(id + 1, Ordering::Relaxed);
            return id;
        }
        let first = self.next.fetch_add(BLOCK, Ordering::Relaxed);
        block.next.store(first + 1, Ordering::Relaxed);
        block.end.store(first + BLOCK, Ordering::Relaxed);
        first
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// Ids taken by workers (past a block's end, and past the workers with blocks) and
    /// by other threads, interleaved, are all distinct.
    #[test]
    fn ids_from_blocks_and_the_counter_never_repeat() {
        let ids = TaskIds::new(2);
        let mut seen = HashSet::new();
        for round in 0..3 * BLOCK {
            for role in [
                ThreadRole::Worker(0),
                ThreadRole::Worker(1),
                ThreadRole::Worker(5),
                ThreadRole::Other,
            ] {
                if role_skips(round, role) {
                    continue;
                }
                let id = ids.take(role);
                assert!(id >= 1);
                assert!(seen.insert(id), "id {id} handed out twice ({role:?})");
            }
        }
    }

    /// Worker 1 takes fewer ids, so the two workers' blocks run out at different times.
    fn role_skips(round: u64, role: ThreadRole) -> bool {
        matches!(role, ThreadRole::Worker(1)) && !round.is_multiple_of(3)
    }
}
