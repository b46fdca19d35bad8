//! The RAM device: a zeroed anonymous mapping; reads and writes are one copy made by the
//! calling task itself (no system call, no hand-off to another thread): a plain
//! `memcpy` for private bytes, word-wise atomic on the side of a caller's view that lies
//! in a client's shared memory ([`BulkIn`] / [`BulkOut`]).
//!
//! **Why page locks.** Tasks on several workers read and write the buffer at once
//! through `&self`. Blocks handed out by the allocator never overlap, but nothing stops
//! a client from writing and reading one block from two tasks at once, and two plain
//! copies of the same bytes at once would be a data race — undefined behaviour. So every
//! copy first takes the locks of the 4 KiB *pages* it touches, from a fixed table of
//! [`PAGE_LOCKS`] spin locks chosen by page number. Two accesses that share a byte share
//! its page, hence a lock, hence never run at once: every byte access is ordered by a
//! lock's acquire/release, and the copies themselves are ordinary `memcpy`s (word-wise
//! atomic copies were measured ~40–80% slower for random 4 KiB blocks).
//!
//! * Locks are taken in ascending table order (a range's pages map to one run of the
//!   table, or two when it wraps), so two accesses cannot deadlock.
//! * A lock is held only for one `memcpy` (never across a park or a yield), so a waiter
//!   spins briefly, then yields its coroutine (never blocking its worker) until the
//!   holder, necessarily running on another thread, is done.
//! * An uncontended 4 KiB access costs one compare-and-swap and one store on a table of
//!   1 KiB that stays in cache.
//!
//! **Memory.** The buffer is an anonymous mapping (zeroed, backed lazily by the kernel)
//! made fallibly: a size the machine cannot hold is [`CreateError::OutOfMemory`], not an
//! abort. It is advised for transparent huge pages (`MADV_HUGEPAGE`): with 4 KiB pages
//! every random block access walks the page table of a device that spans tens of
//! thousands of pages, and the walk plus the copy's exposed store latency cost as much
//! as the copy (2 MiB pages: +20% writes, +33% reads at depth 32 through the runtime).
//! The advice is best effort: a kernel with huge pages off serves 4 KiB pages.
//!
//! **Writes stream.** A write copies into the buffer with non-temporal stores
//! ([`BulkIn::read_at_streaming`]): the block's lines are not read into the cache
//! first, and the stores do not stall the rest of the task behind that read (+14% 4 KiB
//! writes at depth 32). The copy's closing fence orders it before the page lock's
//! release. Reads copy normally: the client reads what it asked for next.
use super::{check_range, BdevType, BlockDevice, CreateError, IoError};
use chimaera_core::{BulkIn, BulkOut};
use memmap2::{MmapMut, MmapRaw};
use std::sync::atomic::{AtomicBool, Ordering};

/// Granularity of the locks: bytes per page.
const PAGE: u64 = 4096;
/// Spin locks in the table; page `p` uses lock `p % PAGE_LOCKS`.
pub const PAGE_LOCKS: usize = 1024;
/// Spins on a held lock before yielding the coroutine.
const SPINS_BEFORE_YIELD: u32 = 128;

/// The device's memory: an anonymous mapping reached only through [`Buffer::copy_in`]
/// and [`Buffer::copy_out`], whose callers hold the page locks (which is what makes
/// sharing the buffer between workers sound: `MmapRaw` itself promises nothing about
/// concurrent access to the bytes).
struct Buffer {
    /// A raw mapping: it makes no Rust reference to the bytes; unmapped on drop.
    map: MmapRaw,
}

impl Buffer {
    /// `size` zeroed bytes, or `None` if they cannot be mapped.
    fn zeroed(size: u64) -> Option<Buffer> {
        let len = usize::try_from(size).ok().filter(|&len| len > 0)?;
        let map = MmapRaw::from(MmapMut::map_anon(len).ok()?);
        // Best effort (see the module docs): without huge pages the device still works.
        #[cfg(target_os = "linux")]
        let _ = map.advise(memmap2::Advice::HugePage);
        Some(Buffer { map })
    }

    /// Copies `data` to byte `offset`.
    ///
    /// # Safety
    /// `offset + data.len()` must not exceed the buffer's size, and the caller must hold
    /// the page locks of that range.
    unsafe fn copy_in(&self, offset: usize, data: BulkIn<'_>) {
        // SAFETY: the range lies inside the allocation (caller's contract), which is
        // private to this device, and the page locks make this the only access to those
        // bytes right now, so a short-lived `&mut [u8]` over them is sound.
        let dst = unsafe {
            std::slice::from_raw_parts_mut(self.map.as_mut_ptr().add(offset), data.len())
        };
        // The view copies atomically when its bytes lie in a client's shared memory,
        // around the cache (a block written is rarely read back soon; see the module
        // docs); the lengths match, so this cannot fail.
        let _ = data.read_at_streaming(0, dst);
    }

    /// Copies from byte `offset` into `buf`.
    ///
    /// # Safety
    /// As for [`copy_in`](Self::copy_in), with `buf.len()` bytes.
    unsafe fn copy_out(&self, offset: usize, buf: &mut BulkOut<'_>) {
        // SAFETY: as in `copy_in`; the device's bytes are only read here.
        let src = unsafe { std::slice::from_raw_parts(self.map.as_ptr().add(offset), buf.len()) };
        let _ = buf.write_at(0, src);
    }
}

/// The page locks; see the [module docs](self).
struct PageLocks {
    locks: Box<[AtomicBool]>,
}

/// Holds the locks of a range of pages: table runs `[a.0, a.1)` and `[b.0, b.1)`.
struct PageGuard<'a> {
    locks: &'a [AtomicBool],
    runs: [(usize, usize); 2],
}

impl PageLocks {
    fn new() -> Self {
        PageLocks {
            locks: (0..PAGE_LOCKS).map(|_| AtomicBool::new(false)).collect(),
        }
    }

    /// Locks every page of `len` bytes at `offset` (`len` > 0).
    fn lock(&self, offset: u64, len: u64) -> PageGuard<'_> {
        let first = offset / PAGE;
        let last = (offset + len - 1) / PAGE;
        let pages = last - first + 1;
        let n = PAGE_LOCKS as u64;
        let start = (first % n) as usize;
        if first == last {
            // One page (every access to a block of at most 4 KiB): one lock.
            acquire(&self.locks[start]);
            return PageGuard {
                locks: &self.locks,
                runs: [(start, start + 1), (0, 0)],
            };
        }
        let end = (last % n) as usize;
        let runs = if pages >= n {
            [(0, PAGE_LOCKS), (0, 0)]
        } else if start <= end {
            [(start, end + 1), (0, 0)]
        } else {
            // Wraps: the low run first, so locks are always taken in ascending order.
            [(0, end + 1), (start, PAGE_LOCKS)]
        };
        for &(from, to) in &runs {
            self.locks[from..to].iter().for_each(acquire);
        }
        PageGuard {
            locks: &self.locks,
            runs,
        }
    }
}

fn acquire(lock: &AtomicBool) {
    let mut spins = 0;
    while lock
        .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        if spins < SPINS_BEFORE_YIELD {
            spins += 1;
            std::hint::spin_loop();
        } else {
            chimaera_core::wait::yield_now();
        }
    }
}

impl Drop for PageGuard<'_> {
    fn drop(&mut self) {
        for &(from, to) in &self.runs {
            for lock in &self.locks[from..to] {
                lock.store(false, Ordering::Release);
            }
        }
    }
}

/// A device in memory; see the [module docs](self).
pub struct RamDevice {
    buffer: Buffer,
    pages: PageLocks,
    capacity: u64,
    closed: AtomicBool,
}

impl RamDevice {
    /// A zeroed device of `size` bytes.
    pub fn new(size: u64) -> Result<Self, CreateError> {
        if size == 0 {
            return Err(CreateError::RamSizeZero);
        }
        let buffer = Buffer::zeroed(size).ok_or(CreateError::OutOfMemory { size })?;
        Ok(RamDevice {
            buffer,
            pages: PageLocks::new(),
            capacity: size,
            closed: AtomicBool::new(false),
        })
    }

    fn check_open(&self) -> Result<(), IoError> {
        if self.closed.load(Ordering::Acquire) {
            Err(IoError::Closed)
        } else {
            Ok(())
        }
    }
}

impl BlockDevice for RamDevice {
    fn kind(&self) -> BdevType {
        BdevType::Ram
    }

    fn capacity(&self) -> u64 {
        self.capacity
    }

    fn write_at(&self, offset: u64, data: BulkIn<'_>) -> Result<u64, IoError> {
        self.check_open()?;
        check_range(offset, data.len(), self.capacity)?;
        if data.is_empty() {
            return Ok(0);
        }
        let _pages = self.pages.lock(offset, data.len() as u64);
        // SAFETY: the range is inside the buffer (`check_range`; the capacity is the
        // buffer's size, so the offset fits a `usize`) and its pages are locked.
        unsafe { self.buffer.copy_in(offset as usize, data) };
        Ok(data.len() as u64)
    }

    fn read_into(&self, offset: u64, mut buf: BulkOut<'_>) -> Result<u64, IoError> {
        self.check_open()?;
        check_range(offset, buf.len(), self.capacity)?;
        if buf.is_empty() {
            return Ok(0);
        }
        let _pages = self.pages.lock(offset, buf.len() as u64);
        // SAFETY: as in `write_at`.
        unsafe { self.buffer.copy_out(offset as usize, &mut buf) };
        Ok(buf.len() as u64)
    }

    fn sync(&self) -> Result<(), IoError> {
        self.check_open()
    }

    fn close(&self) -> Result<(), IoError> {
        self.closed.store(true, Ordering::Release);
        Ok(())
    }
}

impl std::fmt::Debug for RamDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RamDevice")
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::Slices;
    use super::*;
    use std::sync::Arc;

    /// The buffer's mapping carries the huge-page advice (`hg` in its `VmFlags`), on a
    /// kernel that has transparent huge pages at all.
    #[test]
    #[cfg(target_os = "linux")]
    fn the_buffer_is_advised_for_huge_pages() {
        if !std::path::Path::new("/sys/kernel/mm/transparent_hugepage").exists() {
            eprintln!("no transparent huge pages in this kernel: nothing to check");
            return;
        }
        let device = RamDevice::new(8 << 20).unwrap();
        let start = device.buffer.map.as_ptr() as usize;
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut in_buffer = false;
        let mut flags = None;
        for line in smaps.lines() {
            if let Some((range, _)) = line.split_once(' ') {
                if let Some((from, to)) = range.split_once('-') {
                    if let (Ok(from), Ok(to)) = (
                        usize::from_str_radix(from, 16),
                        usize::from_str_radix(to, 16),
                    ) {
                        in_buffer = (from..to).contains(&start);
                        continue;
                    }
                }
            }
            if in_buffer {
                if let Some(found) = line.strip_prefix("VmFlags:") {
                    flags = Some(found.to_owned());
                    break;
                }
            }
        }
        let flags = flags.expect("the buffer's mapping in /proc/self/smaps");
        assert!(
            flags.split_whitespace().any(|flag| flag == "hg"),
            "VmFlags of the buffer: {flags}"
        );
    }

    #[test]
    fn page_lock_runs_cover_wrapping_and_huge_ranges() {
        let locks = PageLocks::new();
        let n = PAGE_LOCKS as u64;
        let cases = [
            (0, 1, [(0, 1), (0, 0)]),
            (PAGE - 1, 2, [(0, 2), (0, 0)]),
            (
                (n - 1) * PAGE,
                2 * PAGE,
                [(0, 1), (PAGE_LOCKS - 1, PAGE_LOCKS)],
            ),
            (5 * PAGE, n * PAGE, [(0, PAGE_LOCKS), (0, 0)]),
        ];
        for (offset, len, runs) in cases {
            let guard = locks.lock(offset, len);
            assert_eq!(guard.runs, runs, "{offset}+{len}");
            let held = locks
                .locks
                .iter()
                .filter(|l| l.load(Ordering::Relaxed))
                .count();
            assert_eq!(held, runs.iter().map(|(a, b)| b - a).sum::<usize>());
        }
        assert!(locks.locks.iter().all(|l| !l.load(Ordering::Relaxed)));
    }

    #[test]
    fn racing_writers_of_one_block_leave_one_whole_pattern() {
        let device = Arc::new(RamDevice::new(1 << 20).unwrap());
        let writers: Vec<_> = (1..=4u8)
            .map(|value| {
                let device = device.clone();
                std::thread::spawn(move || {
                    for _ in 0..2000 {
                        device.write_bytes(8192, &[value; 4096]).unwrap();
                    }
                })
            })
            .collect();
        for _ in 0..2000 {
            let mut seen = [0u8; 4096];
            device.read_bytes(8192, &mut seen).unwrap();
            assert!(
                seen.iter().all(|&b| b == seen[0]),
                "a read saw a torn write"
            );
        }
        writers.into_iter().for_each(|w| w.join().unwrap());
    }
}
