//! Counting tasks in flight, and a flush that waits only for the tasks that were in
//! flight when it started.
//!
//! **Epochs.** Time is cut into epochs, numbered from 0. A task replica is counted, from
//! the moment it is queued until its result is delivered, in the counter of the
//! *parity* (`epoch % 2`) of the epoch current when it was queued; its header keeps
//! that parity so it uncounts itself from the same counter. A periodic task is counted
//! only while it runs, and each run is counted afresh.
//!
//! **A flush** started in epoch `E` must see every task queued in an epoch `<= E` done.
//! At most one epoch drains at a time: when no drain runs (`drained == epoch`), a flush
//! moves the epoch on (`E → E + 1`, one compare-exchange, so exactly one flush wins) and
//! waits until the counter of `E`'s parity is empty; new tasks meanwhile land in the
//! other parity, so the drain waits for a set of tasks that only shrinks — a client
//! that keeps submitting cannot hold a flush up. Then `drained = E + 1`, and every
//! flush whose start epoch is below that returns. A flush that arrives while a drain
//! runs waits for it, then starts the next one if its own epoch still needs it: at most
//! two drains, each of a finite set.
//!
//! **A flush does not wait for itself.** The flushing task and the tasks it is nested
//! in are in flight and will not finish before it does. Each [`TaskNode`] carries how
//! many tasks of its chain (itself and its ancestors) are counted in each parity; a
//! flush takes those out of the counts it drains while it waits (counting them as finished), and puts
//! them back after. So a flush never waits for another flush either: two flushes from
//! two clients, or one nested inside a task another flush waits for, both return.
//!
//! **Shards.** Counts are spread over cache-line shards, and a parity's count is the sum
//! over them. Each worker of the runtime has a shard of its own, written by its thread
//! only: a task a worker ingests from a client ring is counted started there, and the
//! worker that runs a task counts it finished there, each with a load and a `Release`
//! store — no locked add on the per-task path. Every other thread (an in-process
//! client, a network thread, a worker of another runtime in the same process) counts
//! into shared shards with `fetch_add`. A caller names itself a worker
//! ([`ThreadRole::Worker`]) only where it knows it runs on that worker's thread: the
//! worker's own ingest and its task runner. A reader that sees a finish (through the
//! `Release` store or the `fetch_add`) also sees its start: the start was stored before
//! the task was handed to the worker that finished it.
//!
//! Invariants: the count of parity `p` (`Σ started[p] − Σ finished[p]` over the
//! counter shards) is the tasks counted in parity `p` minus the chains of flushes
//! waiting now; `epoch ∈ {drained, drained + 1}`; `drained` only grows. A task
//! that read the epoch just before a flush moved it may land in the parity being
//! drained: the drain then waits for it too (it is bounded: that task runs like any
//! other). Limits: a flush from a subtask whose parent no longer waits for it (a
//! fire-and-forget subtask outliving its parent) takes out a chain part of which has
//! already finished, and may return before up to that many other tasks of the drained
//! epoch are done.
use crate::ids::TaskNode;
use crate::runtime::worker::ThreadRole;
use crossbeam_utils::CachePadded;
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Shared counter shards: threads that are not this runtime's workers are spread over
/// them, so a client thread that queues tasks and the worker that finishes them each
/// write their own cache line (one shared counter is written by both on every task, and
/// its line travels twice per round trip).
const SHARDS: usize = 16;

/// Workers with a shard of their own; workers past this count use the shared shards.
const MAX_OWNED: usize = 64;

/// One thread's (or a few threads') counts. Every counter only grows, which is what
/// makes the sum over shards safe to read without a lock (see [`InFlight::pending`]).
#[derive(Default)]
#[repr(align(128))]
struct Shard {
    /// Replicas counted in each parity (and the chains of flushes that are done waiting).
    started: [AtomicU64; 2],
    /// Replicas of each parity that delivered their result (and the chains of flushes
    /// that started waiting).
    finished: [AtomicU64; 2],
    /// Replicas (and runs of periodic tasks) finished.
    completed: AtomicU64,
}

thread_local! {
    /// This thread's shard, assigned on first use.
    static SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// The shard of the calling thread: threads take shards in turn.
fn my_shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    SHARD.with(|shard| {
        if shard.get() == usize::MAX {
            shard.set(NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS);
        }
        shard.get()
    })
}

/// Task replicas in flight, by epoch parity, and the flushes waiting on them.
///
/// A parity's count is `Σ started − Σ finished` over the shards. A flush takes its own
/// chain out by counting it as finished while it waits and as started again after, so
/// both sums only grow and every `finished` step has an earlier `started` step.
#[derive(Default)]
pub(crate) struct InFlight {
    /// `owned[i]`: written by worker `i`'s thread only (see [`ThreadRole::Worker`]).
    owned: Box<[Shard]>,
    shards: [Shard; SHARDS],
    /// Tasks taken out by waiting flushes (so the total stays exact).
    quiesced: CachePadded<AtomicU64>,
    /// The epoch new tasks are counted in (read on every task, written by flushes only:
    /// its own line, so counting never invalidates it).
    epoch: CachePadded<AtomicU64>,
    /// Every epoch below this one has drained.
    drained: CachePadded<AtomicU64>,
}

impl InFlight {
    /// The parity new tasks are counted in now.
    pub(crate) fn parity(&self) -> u8 {
        (self.epoch.load(Ordering::SeqCst) % 2) as u8
    }

    /// Counts for a runtime of `workers` workers, each with a shard of its own (up to
    /// [`MAX_OWNED`]).
    pub(crate) fn with_workers(workers: usize) -> Self {
        InFlight {
            owned: (0..workers.min(MAX_OWNED))
                .map(|_| Shard::default())
                .collect(),
            ..InFlight::default()
        }
    }

    fn shard(&self) -> &Shard {
        &self.shards[my_shard()]
    }

    /// Adds one to the counter `pick` chooses in `by`'s shard.
    fn add_one(&self, by: ThreadRole, pick: impl Fn(&Shard) -> &AtomicU64) {
        match by {
            ThreadRole::Worker(worker) if worker < self.owned.len() => {
                // One writer (see `ThreadRole::Worker`): nothing to lose between the load
                // and the store. `Release`, so a reader that sees a task finished here
                // sees it started too (see `counted`).
                let counter = pick(&self.owned[worker]);
                counter.store(
                    counter.load(Ordering::Relaxed).wrapping_add(1),
                    Ordering::Release,
                );
            }
            _ => {
                pick(self.shard()).fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    /// One task replica queued, counted in `parity`.
    pub(crate) fn started(&self, parity: u8, by: ThreadRole) {
        self.add_one(by, |shard| &shard.started[usize::from(parity & 1)]);
    }

    /// One task replica counted in `parity` delivered its result; counted as completed.
    pub(crate) fn finished(&self, parity: u8, by: ThreadRole) {
        self.count_completed(by);
        self.uncount(parity, by);
    }

    /// The count part of [`finished`](Self::finished), for callers that count the
    /// completion earlier (before answering the caller).
    pub(crate) fn uncount(&self, parity: u8, by: ThreadRole) {
        self.add_one(by, |shard| &shard.finished[usize::from(parity & 1)]);
    }

    /// Counts one completion (see [`uncount`](Self::uncount)).
    pub(crate) fn count_completed(&self, by: ThreadRole) {
        self.add_one(by, |shard| &shard.completed);
    }

    /// Every shard, the workers' own ones first.
    fn all_shards(&self) -> impl Iterator<Item = &Shard> {
        self.owned.iter().chain(&self.shards)
    }

    /// Sums over the shards, `finished` first, then `started`: each sum only grows, so
    /// the `finished` sum read is at most the true one at the moment between the two
    /// passes, and the `started` sum at least; since finishing never runs ahead of
    /// starting, the difference is at least the true count of that moment (never a
    /// false zero), and exact when nothing moves.
    fn counted(&self, parities: &[usize]) -> u64 {
        let sum = |pick: &dyn Fn(&Shard) -> &[AtomicU64; 2]| -> u64 {
            self.all_shards()
                .flat_map(|shard| parities.iter().map(move |&p| (shard, p)))
                .map(|(shard, p)| pick(shard)[p].load(Ordering::SeqCst))
                .fold(0u64, u64::wrapping_add)
        };
        let finished = sum(&|shard| &shard.finished);
        let started = sum(&|shard| &shard.started);
        started.saturating_sub(finished)
    }

    /// Tasks counted in `parity`, minus the chains of flushes waiting now.
    fn pending(&self, parity: usize) -> u64 {
        self.counted(&[parity])
    }

    /// Task replicas in flight now (waiting flushes included).
    pub(crate) fn total(&self) -> u64 {
        self.counted(&[0, 1])
            .saturating_add(self.quiesced.load(Ordering::SeqCst))
    }

    /// Task replicas finished since start.
    pub(crate) fn completed(&self) -> u64 {
        self.all_shards()
            .map(|shard| shard.completed.load(Ordering::Acquire))
            .fold(0u64, u64::wrapping_add)
    }

    /// Waits until at most `allowed` tasks are in flight, or `deadline` passes; returns
    /// whether it got there. Parks a coroutine caller in short sleeps.
    pub(crate) fn wait_at_most(&self, allowed: u64, deadline: Option<Instant>) -> bool {
        let mut pause = Backoff::default();
        loop {
            if self.total() <= allowed {
                return true;
            }
            if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
                return false;
            }
            pause.sleep();
        }
    }

    /// Waits until every task queued before this call is done, except the chain of
    /// `own` (the flushing task and the tasks it is nested in); see the module docs.
    pub(crate) fn flush(&self, own: TaskNode) {
        let chain = own.chain.map(u64::from);
        let chain_total = chain.iter().sum::<u64>();
        self.quiesced.fetch_add(chain_total, Ordering::SeqCst);
        // The chain counts as finished while this flush waits (see `InFlight`).
        let shard = self.shard();
        for (count, mine) in shard.finished.iter().zip(chain) {
            count.fetch_add(mine, Ordering::SeqCst);
        }
        let target = self.epoch.load(Ordering::SeqCst);
        let mut pause = Backoff::default();
        while self.drained.load(Ordering::Acquire) <= target {
            let drained = self.drained.load(Ordering::Acquire);
            let moved = drained == target
                && self
                    .epoch
                    .compare_exchange(target, target + 1, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok();
            if moved {
                // This flush drains `target`: new tasks go to the other parity now.
                let parity = (target % 2) as usize;
                let mut drain_pause = Backoff::default();
                while self.pending(parity) > 0 {
                    drain_pause.sleep();
                }
                self.drained.store(target + 1, Ordering::Release);
            } else {
                // Another flush drains (`target` or the epoch before it).
                pause.sleep();
            }
        }
        for (count, mine) in shard.started.iter().zip(chain) {
            count.fetch_add(mine, Ordering::SeqCst);
        }
        self.quiesced.fetch_sub(chain_total, Ordering::SeqCst);
    }
}

/// Sleeps that start short and grow to a few milliseconds: a wait for other tasks
/// parks its coroutine (or thread) instead of spinning.
#[derive(Clone, Copy)]
struct Backoff(Duration);

impl Default for Backoff {
    fn default() -> Self {
        Backoff(Duration::from_micros(50))
    }
}

impl Backoff {
    fn sleep(&mut self) {
        crate::coroutine::sleep(self.0);
        self.0 = (self.0 * 2).min(Duration::from_millis(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn node(chain: [u32; 2]) -> TaskNode {
        TaskNode {
            chain,
            ..TaskNode::default()
        }
    }

    #[test]
    fn a_flush_waits_for_earlier_tasks_only() {
        let counts = Arc::new(InFlight::default());
        let early = counts.parity();
        counts.started(early, ThreadRole::Other);
        let flusher = {
            let counts = counts.clone();
            std::thread::spawn(move || counts.flush(node([0, 0])))
        };
        // Tasks queued after the flush moved the epoch do not hold it up, even if they
        // never finish.
        while counts.parity() == early {
            std::thread::yield_now();
        }
        for _ in 0..100 {
            counts.started(counts.parity(), ThreadRole::Other);
        }
        counts.finished(early, ThreadRole::Other);
        flusher.join().unwrap();
        assert_eq!(counts.total(), 100);
    }

    #[test]
    fn a_flush_does_not_wait_for_its_own_chain_or_another_flush() {
        let counts = Arc::new(InFlight::default());
        // A parent task and the flush task it waits for, both counted.
        let parity = counts.parity();
        counts.started(parity, ThreadRole::Other);
        counts.started(parity, ThreadRole::Other);
        let mut chain = [0, 0];
        chain[usize::from(parity)] = 2;
        let nested = {
            let counts = counts.clone();
            std::thread::spawn(move || counts.flush(node(chain)))
        };
        // A second flush, from a client, counted itself.
        let second_parity = counts.parity();
        counts.started(second_parity, ThreadRole::Other);
        let mut own = [0, 0];
        own[usize::from(second_parity)] = 1;
        counts.flush(node(own));
        nested.join().unwrap();
        assert_eq!(counts.total(), 3);
    }
}
