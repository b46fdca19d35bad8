//! The bulk probe chimod: each byte-buffer argument form, with answers that tell a test
//! which bytes the handler saw and where they lay. Used by `tests/bulk.rs`, served by a
//! runtime child process.
use chimaera::prelude::*;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

#[chimod(name = "bulk_probe", manifest = "chimaera_mod.yaml")]
pub(crate) struct BulkProbe {
    finished: AtomicU64,
}

/// The byte at `index` of the pattern `seed` names.
pub(crate) fn pattern_byte(seed: u8, index: usize) -> u8 {
    (index as u8).wrapping_mul(31) ^ seed
}

#[chimod(manifest = "chimaera_mod.yaml")]
impl BulkProbe {
    #[task(method = 0)]
    fn create() -> Self {
        BulkProbe {
            finished: AtomicU64::new(0),
        }
    }

    /// The sum and length of a private copy of `data`.
    #[task(method = 10)]
    fn sum_plain(&self, data: &[u8]) -> (u64, u64) {
        (data.iter().map(|&b| u64::from(b)).sum(), data.len() as u64)
    }

    /// The sum of `data` read through the view, and whether it lay in shared memory.
    #[task(method = 11)]
    fn sum_view(&self, data: BulkIn<'_>) -> (u64, bool) {
        let sum = data.to_vec().iter().map(|&b| u64::from(b)).sum();
        (sum, data.is_shared())
    }

    /// Fills a private copy of `data` with pattern `seed`; returns the sum it held before.
    #[task(method = 12)]
    fn fill_plain(&self, data: &mut [u8], seed: u8) -> u64 {
        let before = data.iter().map(|&b| u64::from(b)).sum();
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = pattern_byte(seed, i);
        }
        before
    }

    /// Fills `data` in place with pattern `seed`, a byte at a time at its offset;
    /// returns whether it lay in shared memory.
    #[task(method = 13)]
    fn fill_view(&self, mut data: BulkOut<'_>, seed: u8) -> Result<bool, TaskError> {
        for i in 0..data.len() {
            data.write_at(i, &[pattern_byte(seed, i)])?;
        }
        Ok(data.is_shared())
    }

    /// Waits `ms`, then fills `data` with `0xab` and counts itself finished.
    #[task(method = 14)]
    fn fill_later(&self, ctx: &mut RunContext, mut data: BulkOut<'_>, ms: u64) {
        ctx.sleep(Duration::from_millis(ms));
        data.fill(0xab);
        self.finished.fetch_add(1, Ordering::SeqCst);
    }

    /// Fills a private copy of `data` with pattern `seed` and adds its length to
    /// `count`; returns the sum it held before (a byte buffer and another in-out value
    /// in one output).
    #[task(method = 16)]
    fn fill_counted(&self, data: &mut [u8], seed: u8, count: &mut u64) -> u64 {
        *count += data.len() as u64;
        self.fill_plain(data, seed)
    }

    /// How many `fill_later` tasks have finished.
    #[task(method = 15)]
    fn finished(&self) -> u64 {
        self.finished.load(Ordering::SeqCst)
    }
}
