//! Measured statistics of one device: what really happened since it was created.
//!
//! Each completed read or write adds its bytes and its latency (time from the task
//! asking the device to the device answering, queueing for an I/O slot included) to
//! per-direction counters; a failed one only counts as failed. Remaining space is
//! stored by the chimod after each allocate or free, under the allocator's lock, so a
//! stats query never takes that lock.
//!
//! **Cheap per operation.** Recording an operation must cost little next to a 4 KiB RAM
//! copy, so:
//!
//! * Counters are striped by thread: [`SLOTS`] cache-line-sized slots, each holding every
//!   counter of both directions. The first `SLOTS - 1` threads that record on any device
//!   each own one slot index for good (a process-wide thread number) and update their
//!   slot with a plain `Relaxed` load and store — no read-modify-write instruction, no
//!   cache line shared with another recording thread. Every later thread records in the
//!   last slot, shared, with `fetch_add`. A slot index is owned by one thread only, and
//!   a thread runs one update at a time (a coroutine never yields inside one), so no
//!   update is ever lost.
//! * Latency is measured with [`DeviceStats::start`] and [`DeviceStats::record_read_since`]
//!   / [`record_write_since`](DeviceStats::record_write_since) as nanoseconds since the
//!   device was created (two reads per operation of the runtime's own clock,
//!   [`chimaera_core::stats::clock`], the only clock cost: the time stamp counter where
//!   it is invariant, 16–30 ns a read on the development VM, about half of
//!   `Instant::now`; calibrated once per process). A stamp later than the reading that
//!   ends it counts as 0, never as a huge latency.
//!
//! Counters are independent `Relaxed` atomics: a [`snapshot`](DeviceStats::snapshot)
//! taken while I/O runs may see one counter of an operation updated and not yet the
//! other; once the operations it should count have completed (their tasks answered),
//! it sees all of them exactly.
use chimaera_core::stats::clock;
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Counter slots per device: `SLOTS - 1` owned by one thread each, the last shared.
pub const SLOTS: usize = 16;
const SHARED_SLOT: usize = SLOTS - 1;

/// Figures for one direction (reads or writes), since the device was created.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
#[rkyv(derive(Debug))]
pub struct OpStats {
    /// Completed operations.
    pub ops: u64,
    /// Bytes transferred by them.
    pub bytes: u64,
    /// Operations that failed (out of bounds, I/O error, closed device).
    pub failed: u64,
    /// Mean latency of a completed operation, in nanoseconds (0 if none).
    pub mean_latency_ns: u64,
    /// `bytes` per second of the device's lifetime.
    pub bandwidth_bytes_per_sec: f64,
    /// `ops` per second of the device's lifetime.
    pub iops: f64,
}

/// The answer of `GetStats`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
#[rkyv(derive(Debug))]
pub struct BdevStats {
    /// Reads.
    pub read: OpStats,
    /// Writes.
    pub write: OpStats,
    /// Bytes not allocated, exactly.
    pub remaining_bytes: u64,
    /// Bytes the device can allocate in all.
    pub capacity_bytes: u64,
    /// Nanoseconds since the device was created (the span of the rates above).
    pub elapsed_ns: u64,
}

/// One direction's counters in a slot.
#[derive(Debug, Default)]
struct Counters {
    ops: AtomicU64,
    bytes: AtomicU64,
    failed: AtomicU64,
    /// Latency of the completed operations, in nanoseconds.
    busy_ns: AtomicU64,
}

/// Every counter of one thread (or of the shared slot): one cache line.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Slot {
    read: Counters,
    write: Counters,
}

/// Adds `n` to a counter of the slot `owned` says whether the caller owns.
fn add(counter: &AtomicU64, n: u64, owned: bool) {
    if owned {
        // Only this thread writes the counter (see the module docs), so a load and a
        // store lose nothing; readers see either value, both whole.
        counter.store(
            counter.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    } else {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// Threads numbered so far (process-wide); a thread's number is its slot index, or the
/// shared slot from `SHARED_SLOT` on.
static THREADS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's slot index, once it has recorded on some device. Sound with
    /// coroutines: a slot belongs to an OS thread, and each update (a load and a store)
    /// runs inside one call that never yields, so two writers never meet on a slot even
    /// if a coroutine did move threads (DESIGN §7 says it never does).
    static THREAD_SLOT: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// The calling thread's slot index and whether it owns that slot.
fn thread_slot() -> (usize, bool) {
    let slot = THREAD_SLOT.with(|slot| {
        let index = slot.get();
        if index != usize::MAX {
            return index;
        }
        let index = THREADS.fetch_add(1, Ordering::Relaxed).min(SHARED_SLOT);
        slot.set(index);
        index
    });
    (slot, slot < SHARED_SLOT)
}

/// A moment an operation started, in nanoseconds since its device was created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp(u64);

/// Live counters of one device; see the [module docs](self).
#[derive(Debug)]
pub struct DeviceStats {
    created: Instant,
    /// `created` as a raw reading of [`clock`].
    created_raw: u64,
    slots: Box<[Slot]>,
    remaining: AtomicU64,
    capacity: u64,
}

impl DeviceStats {
    /// Counters of a new device that can allocate `capacity` bytes, all free.
    pub fn new(capacity: u64) -> Self {
        DeviceStats {
            created: Instant::now(),
            created_raw: clock().raw(),
            slots: (0..SLOTS).map(|_| Slot::default()).collect(),
            remaining: AtomicU64::new(capacity),
            capacity,
        }
    }

    /// The moment an operation starts, for `record_*_since`.
    pub fn start(&self) -> Stamp {
        Stamp(self.now())
    }

    /// Counts a completed read of `bytes` that started at `started`.
    pub fn record_read_since(&self, bytes: u64, started: Stamp) {
        let latency = self.now().saturating_sub(started.0);
        self.record(bytes, latency, |slot| &slot.read);
    }

    /// Counts a completed write of `bytes` that started at `started`.
    pub fn record_write_since(&self, bytes: u64, started: Stamp) {
        let latency = self.now().saturating_sub(started.0);
        self.record(bytes, latency, |slot| &slot.write);
    }

    /// Counts a completed read of `bytes` that took `latency`.
    pub fn record_read(&self, bytes: u64, latency: Duration) {
        self.record(bytes, nanos(latency), |slot| &slot.read);
    }

    /// Counts a completed write of `bytes` that took `latency`.
    pub fn record_write(&self, bytes: u64, latency: Duration) {
        self.record(bytes, nanos(latency), |slot| &slot.write);
    }

    /// Counts a failed read.
    pub fn record_failed_read(&self) {
        let (slot, owned) = thread_slot();
        add(&self.slots[slot].read.failed, 1, owned);
    }

    /// Counts a failed write.
    pub fn record_failed_write(&self) {
        let (slot, owned) = thread_slot();
        add(&self.slots[slot].write.failed, 1, owned);
    }

    /// Nanoseconds since the device was made: what a [`Stamp`] holds.
    fn now(&self) -> u64 {
        let clock = clock();
        let now = clock.raw();
        if now >= self.created_raw {
            clock.delta_as_nanos(self.created_raw, now)
        } else {
            0
        }
    }

    fn record(&self, bytes: u64, busy_ns: u64, direction: impl Fn(&Slot) -> &Counters) {
        let (slot, owned) = thread_slot();
        let counters = direction(&self.slots[slot]);
        add(&counters.ops, 1, owned);
        add(&counters.bytes, bytes, owned);
        if busy_ns > 0 {
            add(&counters.busy_ns, busy_ns, owned);
        }
    }

    /// Stores the allocator's remaining bytes.
    pub fn set_remaining(&self, bytes: u64) {
        self.remaining.store(bytes, Ordering::Relaxed);
    }

    /// The figures now.
    pub fn snapshot(&self) -> BdevStats {
        let elapsed = self.created.elapsed();
        let direction = |pick: fn(&Slot) -> &Counters| {
            let sum = |field: fn(&Counters) -> &AtomicU64| {
                self.slots.iter().fold(0u64, |total, slot| {
                    total.wrapping_add(field(pick(slot)).load(Ordering::Relaxed))
                })
            };
            op_stats(
                sum(|c| &c.ops),
                sum(|c| &c.bytes),
                sum(|c| &c.failed),
                sum(|c| &c.busy_ns),
                elapsed,
            )
        };
        BdevStats {
            read: direction(|slot| &slot.read),
            write: direction(|slot| &slot.write),
            remaining_bytes: self.remaining.load(Ordering::Relaxed),
            capacity_bytes: self.capacity,
            elapsed_ns: nanos(elapsed),
        }
    }
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// One direction's figures from its totals over `elapsed`.
fn op_stats(ops: u64, bytes: u64, failed: u64, busy_ns: u64, elapsed: Duration) -> OpStats {
    let seconds = elapsed.as_secs_f64();
    let per_second = |n: u64| {
        if seconds > 0.0 {
            n as f64 / seconds
        } else {
            0.0
        }
    };
    OpStats {
        ops,
        bytes,
        failed,
        mean_latency_ns: busy_ns.checked_div(ops).unwrap_or(0),
        bandwidth_bytes_per_sec: per_second(bytes),
        iops: per_second(ops),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_bytes_latency_and_rates() {
        let stats = DeviceStats::new(1 << 20);
        let empty = stats.snapshot();
        assert_eq!(
            empty.read,
            OpStats {
                bandwidth_bytes_per_sec: 0.0,
                iops: 0.0,
                ..empty.read
            }
        );
        assert_eq!(empty.read.mean_latency_ns, 0);
        assert_eq!(empty.remaining_bytes, 1 << 20);

        stats.record_write(4096, Duration::from_nanos(1000));
        stats.record_write(4096, Duration::from_nanos(3000));
        stats.record_read(100, Duration::from_nanos(500));
        stats.record_failed_read();
        stats.set_remaining(12345);
        let now = stats.snapshot();
        assert_eq!(
            (now.write.ops, now.write.bytes, now.write.mean_latency_ns),
            (2, 8192, 2000)
        );
        assert_eq!((now.read.ops, now.read.bytes, now.read.failed), (1, 100, 1));
        assert_eq!(now.remaining_bytes, 12345);
        assert_eq!(now.capacity_bytes, 1 << 20);
        assert!(now.elapsed_ns > 0);
        assert!(now.write.iops > 0.0 && now.write.bandwidth_bytes_per_sec > now.write.iops);
    }

    #[test]
    fn more_threads_than_slots_count_every_operation() {
        let stats = std::sync::Arc::new(DeviceStats::new(1 << 20));
        let threads: Vec<_> = (0..2 * SLOTS as u64)
            .map(|t| {
                let stats = stats.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        let started = stats.start();
                        stats.record_write_since(t + 1, started);
                        stats.record_read_since(1, started);
                        stats.record_failed_read();
                    }
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        let now = stats.snapshot();
        let threads = 2 * SLOTS as u64;
        assert_eq!(now.write.ops, threads * 1000);
        assert_eq!(now.write.bytes, 1000 * threads * (threads + 1) / 2);
        assert_eq!(
            (now.read.ops, now.read.bytes),
            (threads * 1000, threads * 1000)
        );
        assert_eq!((now.read.failed, now.write.failed), (threads * 1000, 0));
    }

    #[test]
    fn measured_latency_is_in_nanoseconds() {
        let stats = DeviceStats::new(1 << 20);
        let started = stats.start();
        std::thread::sleep(Duration::from_millis(20));
        stats.record_read_since(4096, started);
        let later = stats.start();
        stats.record_read_since(4096, later);
        let mean = stats.snapshot().read.mean_latency_ns;
        // (20 ms + ~0) / 2.
        assert!((10_000_000..500_000_000).contains(&mean), "mean {mean} ns");
    }

    #[test]
    fn a_stamp_from_the_future_counts_no_latency() {
        let stats = DeviceStats::new(1 << 20);
        stats.record_write_since(10, Stamp(u64::MAX));
        let now = stats.snapshot();
        assert_eq!((now.write.ops, now.write.bytes), (1, 10));
        assert_eq!(now.write.mean_latency_ns, 0);
    }
}
