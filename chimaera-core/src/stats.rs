//! Runtime statistics: per pool and method, tasks started, succeeded and failed, and a
//! latency histogram. A leaf of the core: it knows method ids and nothing of the
//! runtime; `runtime/status.rs` builds the admin `Status` snapshot from it.
//!
//! # What is measured
//!
//! A task's **latency** here is its run: from the moment a worker starts its handler to
//! the moment its result is ready (waits on locks, subtasks and timers included; time
//! queued in a lane before that is not). A periodic task counts each run. Tasks in
//! flight per method are those started and not yet done (queued ones are in the lanes'
//! depths instead).
//!
//! # Cost on the hot path
//!
//! Each pool owns one [`PoolStats`], made when the pool is made, with one
//! [`MethodCounters`] per method of its module (found by id through a direct table, or
//! a binary search for large ids). Recording a task is two counter increments
//! (started; succeeded or failed), plus, for a run whose latency is measured, two reads
//! of the clock and two more (its latency bucket; the latency sum): no lock, no
//! allocation. Each method's counters are sharded, each shard on cache lines of its own,
//! so workers completing tasks of one method at once do not fight over one line; a
//! reader sums the shards. A pool has one shard per worker of the runtime, for the first
//! [`MAX_SHARDS`] workers (about 2 KiB each per method), plus one shared shard for every
//! other thread.
//!
//! **Latency is sampled; counts are not.** Every run is counted (started, succeeded,
//! failed), but past a method's first [`ALWAYS_TIMED_RUNS`] runs on one shard, only one
//! run in `latency_sample` (the `metrics.latency_sample` config key, 8 by default; 1
//! times every run) has its latency measured. The two clock reads were half of what the
//! statistics cost an empty task, about a twelfth of its whole run on the development VM.
//! Which runs are timed follows a hash of the run's number, so the sample does not
//! alias with a client's own periodic pattern (every eighth call slow, say). A rare slow
//! run is therefore seen in `max_ns` only if it was sampled; `LatencySummary::count`
//! counts the runs measured, and percentiles and the mean are of those.
//!
//! **A worker's own shard has one writer**: only that worker's thread records into it
//! (a pool's tasks run on its own runtime's workers, and a worker index is unique within
//! a runtime), so an increment there is a relaxed load and store, not a locked
//! read-modify-write. The shared shard (threads that are not workers, workers past
//! [`MAX_SHARDS`]) uses `fetch_add`. Were the one-writer rule ever broken, counts could
//! be lost, never memory.
//!
//! **The clock** is `quanta`'s: on x86 with an invariant TSC, a read is the time stamp
//! counter (16–30 ns on the development VM, with the host's state, about half of what
//! `Instant::now` through the vDSO takes there: two reads a task made the clock about a
//! tenth of an empty task's run), scaled to nanoseconds only when a latency is recorded;
//! elsewhere it is the OS's monotonic clock. It is calibrated once, when the first pool's
//! statistics are made (well under a millisecond). A latency whose end reads before its
//! start (a counter that is not in step across CPUs) is recorded as 0.
//!
//! # Histogram
//!
//! Latencies are nanoseconds in log-linear buckets: four per power of two (values below
//! 4 ns exact), so a percentile read back is within 12.5 % of a recorded value (the
//! bucket's midpoint is reported). [`BUCKETS`] covers every `u64`.
//!
//! # Invariants
//!
//! Counters only grow; a reader sees each one at some recent value, so `in_flight`
//! (started minus done) is clamped at zero when a reader sees a completion before its
//! start. Nothing here can fail or panic on any task.
use crate::ids::{MethodId, PoolId};
use crate::module::MethodInfo;
use rkyv::{Archive, Deserialize, Serialize};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

/// One method of one pool: its tasks and their run latencies since the pool was made.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
#[rkyv(derive(Debug))]
pub struct MethodStatus {
    /// The pool.
    pub pool: PoolId,
    /// The method's id.
    pub method: MethodId,
    /// The method's manifest name (`kCustom`).
    pub name: String,
    /// Runs that succeeded.
    pub completed: u64,
    /// Runs that failed (an error, a panic, a stack overflow).
    pub failed: u64,
    /// Runs started and not yet done (the `Status` task left out).
    pub in_flight: u64,
    /// Latencies of the runs done.
    pub latency: LatencySummary,
}

/// Count, mean and percentiles of the run latencies measured (a sample, see the module
/// docs), in nanoseconds (each within 12.5 %).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Archive, Serialize, Deserialize)]
#[rkyv(derive(Debug))]
pub struct LatencySummary {
    /// Runs measured.
    pub count: u64,
    /// Their sum (wraps after 2^64 ns: 584 years of run time).
    pub sum_ns: u64,
    /// Their mean.
    pub mean_ns: u64,
    /// Median.
    pub p50_ns: u64,
    /// 90th percentile.
    pub p90_ns: u64,
    /// 99th percentile.
    pub p99_ns: u64,
    /// The largest (the upper bound of its bucket).
    pub max_ns: u64,
}

/// Buckets of a latency histogram: four per power of two of a `u64` nanosecond count.
pub const BUCKETS: usize = 252;

/// Most shards of one method's counters.
pub const MAX_SHARDS: usize = 8;

thread_local! {
    /// The worker index this thread records as (`usize::MAX`: not a worker).
    static SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// Makes this thread record into worker `worker`'s own shard (the shared one past
/// [`MAX_SHARDS`]): called by each worker thread, the only writer of that shard.
pub fn set_thread_shard(worker: usize) {
    SHARD.with(|shard| shard.set(worker));
}

/// A shard picked for this thread, and whether this thread is its only writer.
struct ShardRef<'a> {
    shard: &'a Shard,
    own: bool,
}

impl ShardRef<'_> {
    /// Adds `by` to `counter` and returns its value before: a plain load and store on a
    /// shard with one writer.
    fn add(&self, counter: impl Fn(&Shard) -> &AtomicU64, by: u64) -> u64 {
        let counter = counter(self.shard);
        if self.own {
            let before = counter.load(Ordering::Relaxed);
            counter.store(before.wrapping_add(by), Ordering::Relaxed);
            before
        } else {
            counter.fetch_add(by, Ordering::Relaxed)
        }
    }
}

/// One shard of a method's counters, alone on its cache lines.
#[repr(align(128))]
struct Shard {
    started: AtomicU64,
    succeeded: AtomicU64,
    failed: AtomicU64,
    latency_sum_ns: AtomicU64,
    buckets: [AtomicU64; BUCKETS],
}

impl Shard {
    fn new() -> Shard {
        Shard {
            started: AtomicU64::new(0),
            succeeded: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            latency_sum_ns: AtomicU64::new(0),
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

/// The counters of one method of one pool.
pub struct MethodCounters {
    id: MethodId,
    name: &'static str,
    shards: Box<[Shard]>,
}

impl MethodCounters {
    fn new(method: &MethodInfo, shards: usize) -> MethodCounters {
        MethodCounters {
            id: method.id,
            name: method.name,
            // The workers' own shards, then the shared one.
            shards: (0..shards.min(MAX_SHARDS) + 1)
                .map(|_| Shard::new())
                .collect(),
        }
    }

    /// This thread's shard: its own as a worker, else the shared one (the last).
    fn shard(&self) -> ShardRef<'_> {
        let shared = self.shards.len() - 1;
        match SHARD.with(Cell::get) {
            worker if worker < shared => ShardRef {
                shard: &self.shards[worker],
                own: true,
            },
            _ => ShardRef {
                shard: &self.shards[shared],
                own: false,
            },
        }
    }

    /// The sum of one counter over the shards.
    fn sum(&self, counter: impl Fn(&Shard) -> &AtomicU64) -> u64 {
        self.shards
            .iter()
            .map(|shard| counter(shard).load(Ordering::Relaxed))
            .fold(0, u64::wrapping_add)
    }

    /// A copy of the counters now, with `exclude` of its running tasks left out (the
    /// status task leaves itself out).
    fn snapshot(&self, pool: PoolId, exclude: u64) -> MethodStatus {
        let succeeded = self.sum(|shard| &shard.succeeded);
        let failed = self.sum(|shard| &shard.failed);
        let started = self.sum(|shard| &shard.started);
        let counts: Vec<u64> = (0..BUCKETS)
            .map(|bucket| self.sum(|shard| &shard.buckets[bucket]))
            .collect();
        MethodStatus {
            pool,
            method: self.id,
            name: self.name.to_owned(),
            completed: succeeded,
            failed,
            in_flight: started
                .saturating_sub(succeeded)
                .saturating_sub(failed)
                .saturating_sub(exclude),
            latency: summarize(&counts, self.sum(|shard| &shard.latency_sum_ns)),
        }
    }
}

/// The counters of one pool, one entry per method of its module.
pub struct PoolStats {
    methods: Box<[MethodCounters]>,
    /// `direct[id]`: one more than the index in `methods` of method `id`, `0` for none;
    /// covers every id below its length (ids are small in practice), so finding a
    /// task's counters is one load. Larger ids are found by a binary search, whose
    /// chain of dependent compares showed in profiles of empty tasks.
    direct: Box<[u8]>,
    /// A run past the first [`ALWAYS_TIMED_RUNS`] is timed when its hashed number is at
    /// most this.
    sample_below: u64,
}

/// Runs of a method on one shard (one worker) that are all timed before sampling starts:
/// a method called now and then has every run measured.
pub const ALWAYS_TIMED_RUNS: u64 = 1024;

/// Run number `run` scattered over `u64` (Fibonacci hashing): consecutive runs land far
/// apart, so a sample taken below a threshold is about evenly spread, without the
/// aliasing of "every n-th run" against a client's own periodic pattern.
fn sample_hash(run: u64) -> u64 {
    run.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// Method ids below this are found through [`PoolStats`]'s direct table.
const DIRECT_IDS: u32 = 256;

/// A task's run being measured: which method, since when.
#[must_use = "finish the timer when the task is done"]
pub struct Timer {
    index: Option<usize>,
    /// A raw reading of [`clock`], for a run whose latency is measured.
    started: Option<u64>,
}

/// The clock every run latency is read from (see the module docs): one per process,
/// calibrated on first use. Chimods that time their own operations read it too (bdev
/// does), so a process calibrates one clock, and their figures and the runtime's
/// statistics come from the same counter.
pub fn clock() -> &'static quanta::Clock {
    static CLOCK: std::sync::OnceLock<quanta::Clock> = std::sync::OnceLock::new();
    CLOCK.get_or_init(quanta::Clock::new)
}

impl PoolStats {
    /// Counters for every method in `methods`: one shard for each of `shards` workers
    /// (the runtime's worker count; at most [`MAX_SHARDS`]) and a shared one. One run in
    /// `latency_sample` (0 is taken as 1: every run) is timed past each shard's first
    /// [`ALWAYS_TIMED_RUNS`] of a method.
    pub fn new(methods: &[MethodInfo], shards: usize, latency_sample: u32) -> PoolStats {
        // Calibrated here, with the pool, rather than in its first task.
        let _ = clock();
        let mut methods: Vec<MethodCounters> = methods
            .iter()
            .map(|method| MethodCounters::new(method, shards))
            .collect();
        methods.sort_by_key(|method| method.id);
        methods.dedup_by_key(|method| method.id);
        let mut direct = Vec::new();
        // An index must fit the table's `u8` (with `0` for none).
        if methods.len() < usize::from(u8::MAX) {
            for (index, counters) in methods.iter().enumerate() {
                if counters.id < DIRECT_IDS {
                    let id = counters.id as usize;
                    if direct.len() <= id {
                        direct.resize(id + 1, 0);
                    }
                    direct[id] = index as u8 + 1;
                }
            }
        }
        PoolStats {
            methods: methods.into_boxed_slice(),
            direct: direct.into_boxed_slice(),
            sample_below: u64::MAX / u64::from(latency_sample.max(1)),
        }
    }

    fn index(&self, method: MethodId) -> Option<usize> {
        if let Some(&slot) = self.direct.get(method as usize) {
            return usize::from(slot).checked_sub(1);
        }
        if method < DIRECT_IDS && !self.direct.is_empty() {
            // Every method below `DIRECT_IDS` is in the table, which ends at the last.
            return None;
        }
        self.methods
            .binary_search_by_key(&method, |counters| counters.id)
            .ok()
    }

    /// Counts a task of `method` as started, and starts its clock if this run is one
    /// whose latency is measured.
    pub fn start(&self, method: MethodId) -> Timer {
        let index = self.index(method);
        let Some(counters) = index.and_then(|i| self.methods.get(i)) else {
            return Timer {
                index,
                started: None,
            };
        };
        let run = counters.shard().add(|shard| &shard.started, 1);
        let timed = run < ALWAYS_TIMED_RUNS || sample_hash(run) <= self.sample_below;
        Timer {
            index,
            started: timed.then(|| clock().raw()),
        }
    }

    /// Counts the task of `timer` as done (`succeeded` or not) and records its latency if
    /// it was timed.
    pub fn finish(&self, timer: Timer, succeeded: bool) {
        let Some(counters) = timer.index.and_then(|i| self.methods.get(i)) else {
            return;
        };
        let shard = counters.shard();
        if succeeded {
            shard.add(|shard| &shard.succeeded, 1);
        } else {
            shard.add(|shard| &shard.failed, 1);
        }
        let Some(started) = timer.started else {
            return;
        };
        let clock = clock();
        let now = clock.raw();
        let nanos = if now >= started {
            clock.delta_as_nanos(started, now)
        } else {
            0
        };
        let bucket = bucket_of(nanos);
        shard.add(|shard| &shard.buckets[bucket], 1);
        shard.add(|shard| &shard.latency_sum_ns, nanos);
    }

    /// Counts a started task of `method` whose timer was lost (its coroutine died of a
    /// stack overflow) as failed, without a latency.
    pub fn lost(&self, method: MethodId) {
        if let Some(counters) = self.index(method).and_then(|i| self.methods.get(i)) {
            counters.shard().add(|shard| &shard.failed, 1);
        }
    }

    /// Every method's counters now; `exclude` (a method and a count) leaves that many of
    /// the method's running tasks out of its `in_flight`.
    pub fn snapshot(&self, pool: PoolId, exclude: Option<(MethodId, u64)>) -> Vec<MethodStatus> {
        self.methods
            .iter()
            .map(|counters| {
                let own = match exclude {
                    Some((method, count)) if method == counters.id => count,
                    _ => 0,
                };
                counters.snapshot(pool, own)
            })
            .collect()
    }
}

/// The bucket of a latency of `nanos`.
pub fn bucket_of(nanos: u64) -> usize {
    if nanos < 4 {
        return nanos as usize;
    }
    let exponent = 63 - nanos.leading_zeros() as usize; // >= 2
    let mantissa = ((nanos >> (exponent - 2)) & 3) as usize;
    4 * (exponent - 1) + mantissa
}

/// The smallest and largest latency of bucket `bucket`.
pub fn bucket_bounds(bucket: usize) -> (u64, u64) {
    if bucket < 4 {
        return (bucket as u64, bucket as u64);
    }
    let exponent = bucket / 4 + 1;
    let mantissa = (bucket % 4) as u64;
    let low = (4 + mantissa) << (exponent - 2);
    let width = 1u64 << (exponent - 2);
    (low, low.saturating_add(width - 1))
}

/// The midpoint of bucket `bucket`: what a percentile falling in it reports.
fn bucket_value(bucket: usize) -> u64 {
    let (low, high) = bucket_bounds(bucket);
    low + (high - low) / 2
}

/// Count, mean and percentiles of a histogram of `counts` whose values sum to `sum_ns`.
pub fn summarize(counts: &[u64], sum_ns: u64) -> LatencySummary {
    let count: u64 = counts.iter().fold(0u64, |sum, c| sum.saturating_add(*c));
    let percentile = |fraction: f64| -> u64 {
        if count == 0 {
            return 0;
        }
        // The rank of the value at `fraction`, 1-based: the smallest bucket whose
        // cumulative count reaches it.
        let rank = ((count as f64 * fraction).ceil() as u64).clamp(1, count);
        let mut seen = 0u64;
        for (bucket, c) in counts.iter().enumerate() {
            seen = seen.saturating_add(*c);
            if seen >= rank {
                return bucket_value(bucket);
            }
        }
        0
    };
    let max = counts
        .iter()
        .rposition(|c| *c > 0)
        .map_or(0, |bucket| bucket_bounds(bucket).1);
    LatencySummary {
        count,
        sum_ns,
        mean_ns: sum_ns.checked_div(count).unwrap_or(0),
        p50_ns: percentile(0.50),
        p90_ns: percentile(0.90),
        p99_ns: percentile(0.99),
        max_ns: max,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_every_value_in_order() {
        let mut last = 0;
        for nanos in (0..10_000u64).chain([u64::MAX / 3, u64::MAX - 1, u64::MAX]) {
            let bucket = bucket_of(nanos);
            assert!(bucket < BUCKETS, "{nanos} -> {bucket}");
            assert!(bucket >= last, "buckets grow with the value");
            last = bucket;
            let (low, high) = bucket_bounds(bucket);
            assert!(
                (low..=high).contains(&nanos),
                "{nanos} not in {low}..={high}"
            );
        }
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn a_reported_value_is_within_an_eighth_of_the_recorded_one() {
        for nanos in [5u64, 100, 999, 1_000, 123_456, 10_000_000_000] {
            let reported = bucket_value(bucket_of(nanos));
            let error = reported.abs_diff(nanos) as f64 / nanos as f64;
            assert!(error <= 0.125, "{nanos} reported as {reported}");
        }
    }

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut counts = vec![0u64; BUCKETS];
        // 90 tasks of ~1 µs, 9 of ~1 ms, 1 of ~1 s.
        counts[bucket_of(1_000)] += 90;
        counts[bucket_of(1_000_000)] += 9;
        counts[bucket_of(1_000_000_000)] += 1;
        let sum = 90 * 1_000 + 9 * 1_000_000 + 1_000_000_000;
        let summary = summarize(&counts, sum);
        assert_eq!(summary.count, 100);
        assert_eq!(summary.mean_ns, sum / 100);
        assert_eq!(summary.p50_ns, bucket_value(bucket_of(1_000)));
        assert_eq!(summary.p90_ns, bucket_value(bucket_of(1_000)));
        assert_eq!(summary.p99_ns, bucket_value(bucket_of(1_000_000)));
        assert_eq!(summary.max_ns, bucket_bounds(bucket_of(1_000_000_000)).1);
        let empty = summarize(&vec![0; BUCKETS], 0);
        assert_eq!((empty.count, empty.p50_ns, empty.max_ns), (0, 0, 0));
    }

    #[test]
    fn counters_follow_starts_and_finishes() {
        static METHODS: [MethodInfo; 2] = [
            MethodInfo {
                name: "b",
                id: 7,
                function: "b",
            },
            MethodInfo {
                name: "a",
                id: 3,
                function: "a",
            },
        ];
        let stats = PoolStats::new(&METHODS, 3, 8);
        let pool = PoolId::new(9, 0);
        let first = stats.start(7);
        let second = stats.start(7);
        let third = stats.start(3);
        stats.finish(first, true);
        stats.finish(third, false);
        let unknown = stats.start(99);
        stats.finish(unknown, true);
        let snapshot = stats.snapshot(pool, None);
        let ids: Vec<_> = snapshot.iter().map(|m| m.method).collect();
        assert_eq!(ids, [3, 7]);
        let b = &snapshot[1];
        assert_eq!(
            (b.name.as_str(), b.completed, b.failed, b.in_flight),
            ("b", 1, 0, 1)
        );
        assert_eq!(b.latency.count, 1);
        let a = &snapshot[0];
        assert_eq!((a.completed, a.failed, a.in_flight), (0, 1, 0));
        assert_eq!(stats.snapshot(pool, Some((7, 1)))[1].in_flight, 0);
        stats.lost(7);
        drop(second);
        assert_eq!(stats.snapshot(pool, None)[1].in_flight, 0);
    }

    /// Methods are found by id whether their id is in the direct table or past it, and
    /// ids of no method are found nowhere, on both sides of the table's end.
    #[test]
    fn every_method_is_found_by_its_id_and_no_other_id_is() {
        static METHODS: [MethodInfo; 5] = [
            MethodInfo {
                name: "big",
                id: 1000,
                function: "big",
            },
            MethodInfo {
                name: "ten",
                id: 10,
                function: "ten",
            },
            MethodInfo {
                name: "zero",
                id: 0,
                function: "zero",
            },
            MethodInfo {
                name: "past",
                id: 300,
                function: "past",
            },
            MethodInfo {
                name: "three",
                id: 3,
                function: "three",
            },
        ];
        let stats = PoolStats::new(&METHODS, 1, 8);
        for method in &METHODS {
            let index = stats.index(method.id).expect("a method of the module");
            assert_eq!(stats.methods[index].id, method.id);
        }
        for id in [1, 2, 9, 11, 255, 256, 299, 301, 999, 1001, u32::MAX] {
            assert_eq!(stats.index(id), None, "id {id}");
        }
        // Only large ids: no direct table, a binary search.
        let large = PoolStats::new(&[METHODS[0], METHODS[3]], 1, 8);
        assert!(large.direct.is_empty());
        assert_eq!(large.index(300).map(|i| large.methods[i].id), Some(300));
        assert_eq!(large.index(3), None);
    }

    /// Past the first runs, one run in `latency_sample` is timed while every run is
    /// counted; with 1, every run is timed.
    #[test]
    fn latency_is_sampled_past_the_first_runs_and_counts_stay_exact() {
        static METHODS: [MethodInfo; 1] = [MethodInfo {
            name: "m",
            id: 1,
            function: "m",
        }];
        let runs = ALWAYS_TIMED_RUNS + 80_000;
        for (sample, low, high) in [(8, 9_000, 11_000), (1, 80_000, 80_000)] {
            let stats = std::sync::Arc::new(PoolStats::new(&METHODS, 1, sample));
            let recorder = stats.clone();
            std::thread::spawn(move || {
                // A worker's own shard, as on the hot path.
                set_thread_shard(0);
                for _ in 0..runs {
                    let timer = recorder.start(1);
                    recorder.finish(timer, true);
                }
            })
            .join()
            .unwrap();
            let method = &stats.snapshot(PoolId::new(1, 0), None)[0];
            assert_eq!((method.completed, method.in_flight), (runs, 0));
            let sampled = method.latency.count - ALWAYS_TIMED_RUNS;
            assert!((low..=high).contains(&sampled), "1 in {sample}: {sampled}");
        }
    }

    /// The sampled runs spread evenly over any short period of run numbers: a client
    /// whose every eighth call is slow has its slow calls sampled as often as the rest.
    #[test]
    fn the_sample_does_not_alias_with_a_periodic_pattern() {
        let below = u64::MAX / 8;
        for period in [2u64, 3, 4, 8, 16, 64] {
            let mut per_phase = vec![0u64; period as usize];
            for run in ALWAYS_TIMED_RUNS..ALWAYS_TIMED_RUNS + 160_000 {
                if sample_hash(run) <= below {
                    per_phase[(run % period) as usize] += 1;
                }
            }
            let expected = 20_000 / period;
            for (phase, count) in per_phase.iter().enumerate() {
                assert!(
                    count.abs_diff(expected) <= expected / 10,
                    "period {period}, phase {phase}: {count} sampled, {expected} expected"
                );
            }
        }
    }

    #[test]
    fn workers_record_into_their_own_shards_and_readers_see_the_sum() {
        static METHODS: [MethodInfo; 1] = [MethodInfo {
            name: "m",
            id: 5,
            function: "m",
        }];
        let stats = std::sync::Arc::new(PoolStats::new(&METHODS, 4, 8));
        let threads: Vec<_> = (0..6)
            .map(|worker| {
                let stats = stats.clone();
                std::thread::spawn(move || {
                    set_thread_shard(worker);
                    for run in 0..100 {
                        let timer = stats.start(5);
                        stats.finish(timer, run % 10 != 0);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let method = &stats.snapshot(PoolId::new(1, 0), None)[0];
        assert_eq!(
            (method.completed, method.failed, method.in_flight),
            (540, 60, 0)
        );
        assert_eq!(method.latency.count, 600);
        // Each shard got what its workers recorded, not everything.
        let per_shard: Vec<u64> = stats.methods[0]
            .shards
            .iter()
            .map(|shard| shard.started.load(Ordering::Relaxed))
            .collect();
        // Workers 0..4 have their own; 4 and 5 share the last with other threads.
        assert_eq!(per_shard, [100, 100, 100, 100, 200]);
    }
}
