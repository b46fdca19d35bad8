//! Measured statistics of one device: what really happened since it was created.
//!
//! Each completed read or write adds its bytes and its latency (time from the task
//! asking the device to the device answering, queueing for an I/O slot included) to
//! per-direction counters; a failed one only counts as failed. Remaining space is
//! stored by the chimod after each allocate or free, under the allocator's lock, so a
//! stats query never takes that lock.
//!
//! Counters are independent `Relaxed` atomics: a [`snapshot`](DeviceStats::snapshot)
//! taken while I/O runs may see one counter of an operation updated and not yet the
//! other; once the operations it should count have completed (their tasks answered),
//! it sees all of them exactly.
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

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

#[derive(Debug, Default)]
struct Direction {
    ops: AtomicU64,
    bytes: AtomicU64,
    failed: AtomicU64,
    busy_ns: AtomicU64,
}

impl Direction {
    fn record(&self, bytes: u64, latency: Duration) {
        self.ops.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        let nanos = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        self.busy_ns.fetch_add(nanos, Ordering::Relaxed);
    }

    fn snapshot(&self, elapsed: Duration) -> OpStats {
        let ops = self.ops.load(Ordering::Relaxed);
        let bytes = self.bytes.load(Ordering::Relaxed);
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
            failed: self.failed.load(Ordering::Relaxed),
            mean_latency_ns: self
                .busy_ns
                .load(Ordering::Relaxed)
                .checked_div(ops)
                .unwrap_or(0),
            bandwidth_bytes_per_sec: per_second(bytes),
            iops: per_second(ops),
        }
    }
}

/// Live counters of one device; see the [module docs](self).
#[derive(Debug)]
pub struct DeviceStats {
    created: Instant,
    read: Direction,
    write: Direction,
    remaining: AtomicU64,
    capacity: u64,
}

impl DeviceStats {
    /// Counters of a new device that can allocate `capacity` bytes, all free.
    pub fn new(capacity: u64) -> Self {
        DeviceStats {
            created: Instant::now(),
            read: Direction::default(),
            write: Direction::default(),
            remaining: AtomicU64::new(capacity),
            capacity,
        }
    }

    /// Counts a completed read of `bytes` that took `latency`.
    pub fn record_read(&self, bytes: u64, latency: Duration) {
        self.read.record(bytes, latency);
    }

    /// Counts a completed write of `bytes` that took `latency`.
    pub fn record_write(&self, bytes: u64, latency: Duration) {
        self.write.record(bytes, latency);
    }

    /// Counts a failed read.
    pub fn record_failed_read(&self) {
        self.read.failed.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a failed write.
    pub fn record_failed_write(&self) {
        self.write.failed.fetch_add(1, Ordering::Relaxed);
    }

    /// Stores the allocator's remaining bytes.
    pub fn set_remaining(&self, bytes: u64) {
        self.remaining.store(bytes, Ordering::Relaxed);
    }

    /// The figures now.
    pub fn snapshot(&self) -> BdevStats {
        let elapsed = self.created.elapsed();
        BdevStats {
            read: self.read.snapshot(elapsed),
            write: self.write.snapshot(elapsed),
            remaining_bytes: self.remaining.load(Ordering::Relaxed),
            capacity_bytes: self.capacity,
            elapsed_ns: u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX),
        }
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
}
