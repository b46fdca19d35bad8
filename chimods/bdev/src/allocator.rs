//! The block allocator: which byte ranges of a device are handed out as [`Block`]s.
//!
//! A pure data structure (no I/O, no locking); the chimod keeps one per device behind a
//! lock held only for the bookkeeping of one request.
//!
//! **Requests and classes.** Blocks come in five size classes, [`BLOCK_CLASSES`]:
//! 256 B, 1 KiB, 4 KiB, 64 KiB and 128 KiB; a block's `block_type` is its class index.
//! A request for `n` bytes becomes `n / 128 KiB` blocks of 128 KiB plus, for the
//! remainder, one block of the smallest class that holds it (300 KiB → 128 + 128 +
//! 64 KiB; 4 KiB → one 4 KiB block). There is no cap on the number of blocks of one
//! request, and a request is **all-or-nothing**: either every block is handed out, or
//! none is and the allocator is as it was (same remaining space).
//!
//! **Layout: a binary buddy system** over orders 256 B · 2^k, k = 0..=9 (256 B to
//! 128 KiB; the five classes are orders 0, 2, 4, 8 and 9):
//!
//! * The device is cut into 128 KiB *chunks* at multiples of 128 KiB; the tail after the
//!   last whole chunk is cut into descending powers of two (down to 256 B; a rest below
//!   256 B is never handed out and not counted as capacity).
//! * Every free byte is in exactly one place: a per-order free set (`free[k]`, offsets of
//!   free blocks of 256 B · 2^k), the *untouched* chunks at or above `frontier` (so a
//!   huge device costs no memory until it is used), or a per-class *cache*.
//! * Every block, free or allocated, is naturally aligned (offset multiple of its size),
//!   so a block is aligned to its size — and so to min(its size, any device alignment) —
//!   and 4 KiB blocks are 4 KiB-aligned.
//! * **Coalescing.** Freeing a block that is not cached merges it with its buddy
//!   (`offset ^ size`) for as long as the buddy is free in the same order, so no two
//!   buddies are ever both in `free[k]`. A 128 KiB chunk freed just below `frontier`
//!   lowers the frontier. A device filled with small blocks and then freed is therefore
//!   whole again, and serves 128 KiB blocks.
//! * **Cache.** A freed block first goes to a short LIFO list of its class (at most
//!   [`CACHE_LIMIT`] per class), the hot path of allocate-then-free. Cached blocks are
//!   free (counted in [`BlockAllocator::remaining`]) but not coalesced; when a request
//!   cannot be met otherwise, every cache is flushed into the buddy system (coalescing)
//!   and the request retried once.
//! * `free_bytes` is exactly the sum of all free bytes, so [`BlockAllocator::remaining`]
//!   is exact.
//! * `allocated` maps the offset of every block handed out to its class. A free names
//!   the block exactly (offset, size and type) or fails: freeing twice, freeing a block
//!   this allocator never handed out, or a block outside the device is a typed
//!   [`FreeError`], never a panic and never a corruption. A free of several blocks is
//!   checked whole before any is freed, so it is all-or-nothing too.
//!
//! **Costs.** Allocate and free are O(orders · log n) tree operations; the cached path is
//! O(1) plus one hash-map update (a free of one block: one map operation, which checks
//! and unrecords the block at once). Memory is proportional to the number of live blocks
//! and free fragments, not to the device size.
use std::collections::{BTreeSet, HashMap};
use std::hash::{BuildHasherDefault, Hasher};

/// Hashes block offsets with one multiplication, the high half folded into the low one
/// (the table indexes by low bits; offsets share many low zero bits). Offsets in the
/// map are chosen by the allocator, never by clients (a client's offset is only looked
/// up), so a keyed hash buys nothing here, and SipHash costs ~25 ns an operation.
#[derive(Default)]
struct OffsetHasher(u64);

impl Hasher for OffsetHasher {
    fn finish(&self) -> u64 {
        self.0 ^ (self.0 >> 32)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(byte)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u64(&mut self, offset: u64) {
        self.0 = offset.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

type OffsetMap = HashMap<u64, u8, BuildHasherDefault<OffsetHasher>>;

/// Sizes of the block classes, by `block_type`.
pub const BLOCK_CLASSES: [u64; 5] = [256, 1024, 4096, 64 * 1024, 128 * 1024];

/// The largest block; larger requests are split into blocks of this size.
pub const MAX_BLOCK_SIZE: u64 = 128 * 1024;

/// Freed blocks kept per class for reuse before they are coalesced.
pub const CACHE_LIMIT: usize = 256;

/// The smallest buddy order's size.
const MIN_ORDER_SIZE: u64 = 256;
/// Orders 0..=9: 256 B .. 128 KiB.
const ORDERS: usize = 10;
const TOP_ORDER: usize = ORDERS - 1;

/// The buddy order of each class.
const CLASS_ORDER: [usize; 5] = [0, 2, 4, 8, 9];

const fn order_size(order: usize) -> u64 {
    MIN_ORDER_SIZE << order
}

/// A range of a device handed out by [`BlockAllocator::allocate`].
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
#[rkyv(derive(Debug))]
pub struct Block {
    /// Byte offset in the device; a multiple of `size`.
    pub offset: u64,
    /// Size in bytes: `BLOCK_CLASSES[block_type]`.
    pub size: u64,
    /// The class index in [`BLOCK_CLASSES`].
    pub block_type: u32,
}

impl Block {
    /// One past the block's last byte, or `None` if that overflows `u64`.
    pub fn end(&self) -> Option<u64> {
        self.offset.checked_add(self.size)
    }
}

/// Why an allocation failed; nothing was allocated.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    /// The request, rounded up to whole blocks, is larger than the free space.
    #[error("out of space: {requested} bytes requested (rounded up to whole blocks) but only {remaining} bytes are free; free blocks or create a larger device")]
    OutOfSpace {
        /// The request rounded up to whole blocks (saturated at `u64::MAX`).
        requested: u64,
        /// Free bytes.
        remaining: u64,
    },
    /// Enough bytes are free in total, but not in blocks of the sizes needed.
    #[error("out of space: {requested} bytes requested and {remaining} bytes are free, but the free space is fragmented into blocks too small; free neighbouring blocks or request smaller sizes")]
    Fragmented {
        /// The request rounded up to whole blocks.
        requested: u64,
        /// Free bytes.
        remaining: u64,
    },
}

/// Why a free was refused; nothing was freed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FreeError {
    /// The block does not lie within the device.
    #[error("block at offset {offset} of {size} bytes lies outside the device ({capacity} usable bytes)")]
    OutsideDevice {
        /// The block's offset.
        offset: u64,
        /// The block's size.
        size: u64,
        /// The device's usable bytes.
        capacity: u64,
    },
    /// The block's size or type is not one of the classes, or they disagree.
    #[error("block at offset {offset} has size {size} and block_type {block_type}, which is not a block class (sizes {BLOCK_CLASSES:?} by type)")]
    NotABlockClass {
        /// The block's offset.
        offset: u64,
        /// The block's size.
        size: u64,
        /// The block's type.
        block_type: u32,
    },
    /// No block with this offset and size is allocated.
    #[error("block at offset {offset} of {size} bytes is not allocated: freed twice, or never handed out by this device")]
    NotAllocated {
        /// The block's offset.
        offset: u64,
        /// The block's size.
        size: u64,
    },
    /// The same block appears more than once in one request.
    #[error("block at offset {offset} is listed more than once in one free request")]
    Duplicate {
        /// The block's offset.
        offset: u64,
    },
}

/// How a request of some size is split into blocks: `full` blocks of 128 KiB, then one
/// block of class `tail` if the size is not a multiple of 128 KiB.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Split {
    /// Number of 128 KiB blocks.
    pub full: u64,
    /// Class of the remainder block, if any.
    pub tail: Option<usize>,
}

impl Split {
    /// The split of a request of `size` bytes.
    pub fn of(size: u64) -> Split {
        let full = size / MAX_BLOCK_SIZE;
        let rest = size % MAX_BLOCK_SIZE;
        let tail = (rest > 0).then(|| {
            BLOCK_CLASSES
                .iter()
                .position(|&class| class >= rest)
                .unwrap_or(BLOCK_CLASSES.len() - 1)
        });
        Split { full, tail }
    }

    /// Total bytes of the blocks, saturated at `u64::MAX`.
    pub fn bytes(&self) -> u64 {
        let tail = self.tail.map_or(0, |class| BLOCK_CLASSES[class]);
        self.full
            .saturating_mul(MAX_BLOCK_SIZE)
            .saturating_add(tail)
    }

    /// The classes of the blocks, 128 KiB ones first.
    fn classes(&self) -> impl Iterator<Item = usize> {
        let full = std::iter::repeat_n(BLOCK_CLASSES.len() - 1, self.full as usize);
        full.chain(self.tail)
    }
}

/// A device's block allocator; see the [module docs](self).
#[derive(Debug)]
pub struct BlockAllocator {
    /// Usable bytes: the device size less an unusable rest below 256 B.
    capacity: u64,
    /// End of the whole 128 KiB chunks.
    chunks_end: u64,
    /// Chunks in `[frontier, chunks_end)` have never been handed out and are free.
    frontier: u64,
    /// Free blocks per order, by offset.
    free: [BTreeSet<u64>; ORDERS],
    /// Recently freed blocks per class, not yet coalesced.
    cache: [Vec<u64>; BLOCK_CLASSES.len()],
    /// Offset → class of every block handed out.
    allocated: OffsetMap,
    free_bytes: u64,
}

impl BlockAllocator {
    /// An allocator for a device of `device_size` bytes, all free.
    pub fn new(device_size: u64) -> Self {
        let chunks_end = device_size - device_size % MAX_BLOCK_SIZE;
        let mut free: [BTreeSet<u64>; ORDERS] = Default::default();
        let mut offset = chunks_end;
        let mut rest = device_size - chunks_end;
        for order in (0..TOP_ORDER).rev() {
            if rest >= order_size(order) {
                free[order].insert(offset);
                offset += order_size(order);
                rest -= order_size(order);
            }
        }
        let capacity = device_size - rest;
        BlockAllocator {
            capacity,
            chunks_end,
            frontier: 0,
            free,
            cache: Default::default(),
            allocated: OffsetMap::default(),
            free_bytes: capacity,
        }
    }

    /// Bytes that can be handed out: the device size rounded down to 256 B.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Free bytes, exactly.
    pub fn remaining(&self) -> u64 {
        self.free_bytes
    }

    /// Number of blocks handed out and not yet freed.
    pub fn allocated_blocks(&self) -> usize {
        self.allocated.len()
    }

    /// Allocates blocks covering `size` bytes (see the [module docs](self) for the
    /// split). All or nothing: on error no block is allocated and
    /// [`remaining`](Self::remaining) is unchanged. A size of 0 yields no blocks.
    pub fn allocate(&mut self, size: u64) -> Result<Vec<Block>, AllocError> {
        let split = Split::of(size);
        let requested = split.bytes();
        if requested > self.free_bytes {
            return Err(AllocError::OutOfSpace {
                requested,
                remaining: self.free_bytes,
            });
        }
        if let Split {
            full: 0,
            tail: Some(class),
        } = split
        {
            // One block (every request of at most 128 KiB): no loop.
            let offset = match self.take(class) {
                Some(offset) => offset,
                None => {
                    self.flush_caches();
                    self.take(class)
                        .ok_or_else(|| self.roll_back(Vec::new(), requested))?
                }
            };
            return Ok(vec![Block {
                offset,
                size: BLOCK_CLASSES[class],
                block_type: class as u32,
            }]);
        }
        // `requested <= free_bytes <= capacity`, so the count fits in memory.
        let mut blocks =
            Vec::with_capacity(split.full as usize + usize::from(split.tail.is_some()));
        let mut flushed = false;
        for class in split.classes() {
            let offset = match self.take(class) {
                Some(offset) => offset,
                None if !flushed => {
                    flushed = true;
                    self.flush_caches();
                    match self.take(class) {
                        Some(offset) => offset,
                        None => return Err(self.roll_back(blocks, requested)),
                    }
                }
                None => return Err(self.roll_back(blocks, requested)),
            };
            blocks.push(Block {
                offset,
                size: BLOCK_CLASSES[class],
                block_type: class as u32,
            });
        }
        Ok(blocks)
    }

    /// Frees `blocks`. All or nothing: every block is checked first; if any is invalid,
    /// none is freed.
    pub fn free(&mut self, blocks: &[Block]) -> Result<(), FreeError> {
        if let [block] = blocks {
            return self.free_one(block);
        }
        for block in blocks {
            self.check_allocated(block)?;
        }
        if blocks.len() > 1 {
            let mut offsets: Vec<u64> = blocks.iter().map(|b| b.offset).collect();
            offsets.sort_unstable();
            if let Some(pair) = offsets.windows(2).find(|pair| pair[0] == pair[1]) {
                return Err(FreeError::Duplicate { offset: pair[0] });
            }
        }
        for block in blocks {
            self.allocated.remove(&block.offset);
            self.put_back(block);
        }
        Ok(())
    }

    /// [`free`](Self::free) of one block (the common case): one map operation, which
    /// checks and unrecords it at once.
    fn free_one(&mut self, block: &Block) -> Result<(), FreeError> {
        let class = self.check_shape(block)?;
        match self.allocated.remove(&block.offset) {
            Some(found) if usize::from(found) == class => {
                self.put_back(block);
                Ok(())
            }
            other => {
                if let Some(found) = other {
                    // Another class at that offset: it stays allocated, as it was.
                    self.allocated.insert(block.offset, found);
                }
                Err(FreeError::NotAllocated {
                    offset: block.offset,
                    size: block.size,
                })
            }
        }
    }

    /// Returns a checked, unrecorded block to the free space: its class's cache, or the
    /// buddy system when the cache is full.
    fn put_back(&mut self, block: &Block) {
        let class = block.block_type as usize;
        self.free_bytes += block.size;
        if self.cache[class].len() < CACHE_LIMIT {
            self.cache[class].push(block.offset);
        } else {
            self.release(block.offset, CLASS_ORDER[class]);
        }
    }

    /// Moves every cached block into the buddy system, coalescing it.
    pub fn flush_caches(&mut self) {
        for (class, order) in CLASS_ORDER.into_iter().enumerate() {
            let cached = std::mem::take(&mut self.cache[class]);
            for offset in cached {
                self.release(offset, order);
            }
        }
    }

    fn check_allocated(&self, block: &Block) -> Result<(), FreeError> {
        let class = self.check_shape(block)?;
        if self.allocated.get(&block.offset) != Some(&(class as u8)) {
            return Err(FreeError::NotAllocated {
                offset: block.offset,
                size: block.size,
            });
        }
        Ok(())
    }

    /// Checks that `block` is of a block class and inside the device; its class.
    fn check_shape(&self, block: &Block) -> Result<usize, FreeError> {
        let class = block.block_type as usize;
        if BLOCK_CLASSES.get(class) != Some(&block.size) {
            return Err(FreeError::NotABlockClass {
                offset: block.offset,
                size: block.size,
                block_type: block.block_type,
            });
        }
        if block.end().is_none_or(|end| end > self.capacity) {
            return Err(FreeError::OutsideDevice {
                offset: block.offset,
                size: block.size,
                capacity: self.capacity,
            });
        }
        Ok(class)
    }

    /// Takes one free block of `class` and records it as allocated.
    fn take(&mut self, class: usize) -> Option<u64> {
        let offset = match self.cache[class].pop() {
            Some(offset) => offset,
            None => self.split_off(CLASS_ORDER[class])?,
        };
        self.allocated.insert(offset, class as u8);
        self.free_bytes -= BLOCK_CLASSES[class];
        Some(offset)
    }

    /// Takes a free block of `order` from the buddy system, splitting a larger one if
    /// needed; the unused halves go back to their free sets.
    fn split_off(&mut self, order: usize) -> Option<u64> {
        let (mut found_order, offset) = (order..ORDERS)
            .find_map(|k| self.free[k].pop_first().map(|offset| (k, offset)))
            .or_else(|| {
                self.take_untouched_chunk()
                    .map(|offset| (TOP_ORDER, offset))
            })?;
        while found_order > order {
            found_order -= 1;
            self.free[found_order].insert(offset + order_size(found_order));
        }
        Some(offset)
    }

    fn take_untouched_chunk(&mut self) -> Option<u64> {
        (self.frontier < self.chunks_end).then(|| {
            let offset = self.frontier;
            self.frontier += MAX_BLOCK_SIZE;
            offset
        })
    }

    /// Returns a free block of `order` to the buddy system, merging it with free buddies.
    /// Does not touch `free_bytes` or `allocated`.
    fn release(&mut self, mut offset: u64, mut order: usize) {
        while order < TOP_ORDER {
            let buddy = offset ^ order_size(order);
            if !self.free[order].remove(&buddy) {
                break;
            }
            offset = offset.min(buddy);
            order += 1;
        }
        if order == TOP_ORDER && offset + MAX_BLOCK_SIZE == self.frontier {
            self.frontier = offset;
            while let Some(&last) = self.free[TOP_ORDER].last() {
                if last + MAX_BLOCK_SIZE != self.frontier {
                    break;
                }
                self.free[TOP_ORDER].pop_last();
                self.frontier = last;
            }
        } else {
            self.free[order].insert(offset);
        }
    }

    /// Undoes the blocks of a failed request (coalescing them) and builds its error.
    fn roll_back(&mut self, blocks: Vec<Block>, requested: u64) -> AllocError {
        for block in blocks {
            self.allocated.remove(&block.offset);
            self.free_bytes += block.size;
            self.release(block.offset, CLASS_ORDER[block.block_type as usize]);
        }
        AllocError::Fragmented {
            requested,
            remaining: self.free_bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KIB: u64 = 1024;
    const MIB: u64 = 1024 * KIB;

    impl BlockAllocator {
        /// Checks every invariant of the module docs; panics (tests only) if one fails.
        fn assert_invariants(&self) {
            let mut ranges: Vec<(u64, u64, &str)> = Vec::new();
            let mut free_total = self.chunks_end - self.frontier;
            for order in 0..ORDERS {
                for &offset in &self.free[order] {
                    let size = order_size(order);
                    assert_eq!(offset % size, 0, "free block misaligned");
                    if order < TOP_ORDER {
                        let buddy = offset ^ size;
                        assert!(
                            !self.free[order].contains(&buddy),
                            "uncoalesced buddies at {offset}"
                        );
                    }
                    ranges.push((offset, size, "free"));
                    free_total += size;
                }
            }
            for (class, cached) in self.cache.iter().enumerate() {
                assert!(cached.len() <= CACHE_LIMIT);
                for &offset in cached {
                    ranges.push((offset, BLOCK_CLASSES[class], "cached"));
                    free_total += BLOCK_CLASSES[class];
                }
            }
            for (&offset, &class) in &self.allocated {
                ranges.push((offset, BLOCK_CLASSES[class as usize], "allocated"));
            }
            if self.frontier < self.chunks_end {
                ranges.push((self.frontier, self.chunks_end - self.frontier, "untouched"));
            }
            assert_eq!(free_total, self.free_bytes, "free_bytes is not exact");
            ranges.sort_unstable();
            for pair in ranges.windows(2) {
                assert!(
                    pair[0].0 + pair[0].1 <= pair[1].0,
                    "{} {:?} overlaps {} {:?}",
                    pair[0].2,
                    pair[0],
                    pair[1].2,
                    pair[1]
                );
            }
            if let Some(last) = ranges.last() {
                assert!(last.0 + last.1 <= self.capacity);
            }
        }
    }

    fn sizes(blocks: &[Block]) -> Vec<u64> {
        blocks.iter().map(|b| b.size).collect()
    }

    #[test]
    fn requests_split_into_128k_pieces_and_a_rounded_remainder() {
        assert_eq!(
            Split::of(300 * KIB),
            Split {
                full: 2,
                tail: Some(3)
            }
        );
        assert_eq!(
            Split::of(4 * KIB),
            Split {
                full: 0,
                tail: Some(2)
            }
        );
        assert_eq!(
            Split::of(1),
            Split {
                full: 0,
                tail: Some(0)
            }
        );
        assert_eq!(
            Split::of(256),
            Split {
                full: 0,
                tail: Some(0)
            }
        );
        assert_eq!(
            Split::of(257),
            Split {
                full: 0,
                tail: Some(1)
            }
        );
        assert_eq!(
            Split::of(4 * KIB + 1),
            Split {
                full: 0,
                tail: Some(3)
            }
        );
        assert_eq!(
            Split::of(65 * KIB),
            Split {
                full: 0,
                tail: Some(4)
            }
        );
        assert_eq!(
            Split::of(256 * KIB),
            Split {
                full: 2,
                tail: None
            }
        );
        assert_eq!(
            Split::of(0),
            Split {
                full: 0,
                tail: None
            }
        );
        assert_eq!(Split::of(u64::MAX).bytes(), u64::MAX);

        let mut alloc = BlockAllocator::new(MIB);
        let blocks = alloc.allocate(300 * KIB).unwrap();
        assert_eq!(sizes(&blocks), [128 * KIB, 128 * KIB, 64 * KIB]);
        assert_eq!(
            blocks.iter().map(|b| b.block_type).collect::<Vec<_>>(),
            [4, 4, 3]
        );
        assert_eq!(alloc.remaining(), MIB - 320 * KIB);
        alloc.assert_invariants();
    }

    #[test]
    fn small_blocks_are_disjoint_and_aligned_to_their_size() {
        let mut alloc = BlockAllocator::new(MIB);
        let mut blocks = Vec::new();
        for _ in 0..16 {
            let got = alloc.allocate(4 * KIB).unwrap();
            assert_eq!(sizes(&got), [4 * KIB]);
            blocks.extend(got);
        }
        for size in [1, 300, 1024, 5000, 70 * KIB] {
            blocks.extend(alloc.allocate(size).unwrap());
        }
        for block in &blocks {
            assert_eq!(block.offset % block.size, 0, "{block:?}");
            assert_eq!(BLOCK_CLASSES[block.block_type as usize], block.size);
        }
        let mut sorted = blocks.clone();
        sorted.sort_by_key(|b| b.offset);
        for pair in sorted.windows(2) {
            assert!(pair[0].offset + pair[0].size <= pair[1].offset);
        }
        alloc.assert_invariants();
    }

    #[test]
    fn zero_bytes_allocate_no_blocks() {
        let mut alloc = BlockAllocator::new(MIB);
        assert_eq!(alloc.allocate(0).unwrap(), []);
        assert_eq!(alloc.remaining(), MIB);
    }

    #[test]
    fn over_capacity_fails_and_leaves_everything_unchanged() {
        let mut alloc = BlockAllocator::new(MIB);
        let held = alloc.allocate(100 * KIB).unwrap();
        let before = alloc.remaining();
        for size in [MIB, 2 * MIB, u64::MAX, before + 1] {
            let err = alloc.allocate(size).unwrap_err();
            assert!(
                matches!(err, AllocError::OutOfSpace { remaining, .. } if remaining == before),
                "{err}"
            );
            assert_eq!(alloc.remaining(), before);
            assert_eq!(alloc.allocated_blocks(), held.len());
        }
        alloc.assert_invariants();
    }

    #[test]
    fn fragmentation_failure_rolls_back_every_block() {
        // Fill with 4 KiB blocks (handed out in address order), then free the first
        // 128 KiB chunk whole and every other block of the rest: a 128 KiB block fits,
        // but no 64 KiB one does.
        let mut alloc = BlockAllocator::new(MIB);
        let blocks: Vec<Block> = (0..256)
            .flat_map(|_| alloc.allocate(4 * KIB).unwrap())
            .collect();
        assert_eq!(alloc.remaining(), 0);
        assert!(blocks
            .windows(2)
            .all(|pair| pair[0].offset < pair[1].offset));
        let freed: Vec<Block> = blocks[..32]
            .iter()
            .chain(blocks[32..].iter().skip(1).step_by(2))
            .copied()
            .collect();
        alloc.free(&freed).unwrap();
        let before = alloc.remaining();
        assert_eq!(before, 128 * KIB + 112 * 4 * KIB);
        let err = alloc.allocate(128 * KIB + 8 * KIB).unwrap_err();
        assert!(
            matches!(err, AllocError::Fragmented { remaining, .. } if remaining == before),
            "{err}"
        );
        assert_eq!(alloc.remaining(), before);
        assert_eq!(alloc.allocated_blocks(), 256 - freed.len());
        alloc.assert_invariants();
        // The rolled-back chunk is whole again, and the holes still take small blocks.
        assert_eq!(sizes(&alloc.allocate(128 * KIB).unwrap()), [128 * KIB]);
        assert_eq!(sizes(&alloc.allocate(4 * KIB).unwrap()), [4 * KIB]);
        alloc.assert_invariants();
    }

    #[test]
    fn freed_small_blocks_coalesce_into_half_the_device() {
        let device = 8 * MIB;
        let mut alloc = BlockAllocator::new(device);
        let mut blocks = Vec::new();
        while let Ok(got) = alloc.allocate(4 * KIB) {
            blocks.extend(got);
        }
        assert_eq!(blocks.len() as u64, device / (4 * KIB));
        assert_eq!(alloc.remaining(), 0);
        alloc.free(&blocks).unwrap();
        assert_eq!(alloc.remaining(), device);
        alloc.assert_invariants();
        let half = alloc.allocate(device / 2).unwrap();
        assert_eq!(half.len() as u64, device / 2 / MAX_BLOCK_SIZE);
        assert_eq!(alloc.remaining(), device / 2);
        alloc.assert_invariants();
        let other_half = alloc.allocate(device / 2).unwrap();
        assert_eq!(other_half.len(), half.len());
        assert_eq!(alloc.remaining(), 0);
        alloc.free(&half).unwrap();
        alloc.free(&other_half).unwrap();
        alloc.flush_caches();
        alloc.assert_invariants();
        // Fully coalesced: everything is back to untouched chunks.
        assert_eq!(alloc.frontier, 0);
        assert!(alloc.free.iter().all(BTreeSet::is_empty));
    }

    #[test]
    fn double_free_and_foreign_blocks_are_typed_errors() {
        let mut alloc = BlockAllocator::new(MIB);
        let blocks = alloc.allocate(4 * KIB).unwrap();
        let block = blocks[0];
        alloc.free(&blocks).unwrap();
        let remaining = alloc.remaining();
        assert_eq!(
            alloc.free(&blocks),
            Err(FreeError::NotAllocated {
                offset: block.offset,
                size: block.size
            })
        );
        let outside = Block {
            offset: MIB,
            size: 4 * KIB,
            block_type: 2,
        };
        assert!(matches!(
            alloc.free(&[outside]),
            Err(FreeError::OutsideDevice { .. })
        ));
        let overflow = Block {
            offset: u64::MAX - 100,
            size: 4 * KIB,
            block_type: 2,
        };
        assert!(matches!(
            alloc.free(&[overflow]),
            Err(FreeError::OutsideDevice { .. })
        ));
        let mismatched = Block {
            offset: 0,
            size: 4 * KIB,
            block_type: 3,
        };
        assert!(matches!(
            alloc.free(&[mismatched]),
            Err(FreeError::NotABlockClass { .. })
        ));
        let unknown_type = Block {
            offset: 0,
            size: 4 * KIB,
            block_type: 99,
        };
        assert!(matches!(
            alloc.free(&[unknown_type]),
            Err(FreeError::NotABlockClass { .. })
        ));
        // A block inside an allocated larger one was never handed out.
        let big = alloc.allocate(128 * KIB).unwrap()[0];
        let inner = Block {
            offset: big.offset + 4 * KIB,
            size: 4 * KIB,
            block_type: 2,
        };
        assert!(matches!(
            alloc.free(&[inner]),
            Err(FreeError::NotAllocated { .. })
        ));
        // Same offset, other class.
        let same_offset = Block {
            offset: big.offset,
            size: 4 * KIB,
            block_type: 2,
        };
        assert!(matches!(
            alloc.free(&[same_offset]),
            Err(FreeError::NotAllocated { .. })
        ));
        assert_eq!(alloc.remaining(), remaining - 128 * KIB);
        alloc.assert_invariants();
    }

    #[test]
    fn a_single_block_request_flushes_the_caches_or_fails_changing_nothing() {
        // 256 KiB filled with 4 KiB blocks, all freed: every one is cached, so a
        // 128 KiB block exists only once the caches are flushed and coalesced.
        let mut alloc = BlockAllocator::new(256 * KIB);
        let blocks: Vec<Block> = (0..64)
            .flat_map(|_| alloc.allocate(4 * KIB).unwrap())
            .collect();
        alloc.free(&blocks).unwrap();
        let big = alloc.allocate(128 * KIB).unwrap();
        assert_eq!(sizes(&big), [128 * KIB]);
        alloc.assert_invariants();
        // Every other 4 KiB block held: 128 KiB free, but no two free buddies.
        let mut alloc = BlockAllocator::new(256 * KIB);
        let blocks: Vec<Block> = (0..64)
            .flat_map(|_| alloc.allocate(4 * KIB).unwrap())
            .collect();
        let freed: Vec<Block> = blocks.iter().step_by(2).copied().collect();
        alloc.free(&freed).unwrap();
        let remaining = alloc.remaining();
        assert_eq!(remaining, 128 * KIB);
        assert!(matches!(
            alloc.allocate(100 * KIB),
            Err(AllocError::Fragmented { remaining: r, .. }) if r == remaining
        ));
        assert_eq!(alloc.remaining(), remaining);
        assert_eq!(alloc.allocated_blocks(), 32);
        alloc.assert_invariants();
        assert_eq!(sizes(&alloc.allocate(4 * KIB).unwrap()), [4 * KIB]);
        alloc.assert_invariants();
    }

    #[test]
    fn a_refused_single_free_leaves_the_block_allocated_as_it_was() {
        let mut alloc = BlockAllocator::new(MIB);
        let big = alloc.allocate(64 * KIB).unwrap()[0];
        let small = alloc.allocate(1024).unwrap()[0];
        let remaining = alloc.remaining();
        // The offset of a live 64 KiB block, named as each smaller class; then as the
        // right class with a wrong size; then the 1 KiB block as a 4 KiB one.
        for (size, block_type) in [(256, 0), (1024, 1), (4 * KIB, 2), (64 * KIB, 2)] {
            let forged = Block {
                offset: big.offset,
                size,
                block_type,
            };
            assert!(alloc.free(&[forged]).is_err(), "{forged:?}");
        }
        let forged = Block {
            size: 4 * KIB,
            block_type: 2,
            ..small
        };
        assert_eq!(
            alloc.free(&[forged]),
            Err(FreeError::NotAllocated {
                offset: small.offset,
                size: 4 * KIB
            })
        );
        assert_eq!(alloc.remaining(), remaining);
        assert_eq!(alloc.allocated_blocks(), 2);
        alloc.assert_invariants();
        // Both are still allocated, under their own class, exactly once.
        alloc.free(&[big]).unwrap();
        alloc.free(&[small]).unwrap();
        assert!(alloc.free(&[big]).is_err());
        assert_eq!(alloc.remaining(), MIB);
        alloc.assert_invariants();
    }

    #[test]
    fn a_bad_block_in_a_list_frees_none() {
        let mut alloc = BlockAllocator::new(MIB);
        let blocks = alloc.allocate(300 * KIB).unwrap();
        let remaining = alloc.remaining();
        let mut with_bad = blocks.clone();
        with_bad.push(Block {
            offset: 512 * KIB,
            size: 256,
            block_type: 0,
        });
        assert!(alloc.free(&with_bad).is_err());
        let duplicated = vec![blocks[0], blocks[1], blocks[0]];
        assert_eq!(
            alloc.free(&duplicated),
            Err(FreeError::Duplicate {
                offset: blocks[0].offset
            })
        );
        assert_eq!(alloc.remaining(), remaining);
        assert_eq!(alloc.allocated_blocks(), 3);
        alloc.free(&blocks).unwrap();
        assert_eq!(alloc.remaining(), MIB);
        alloc.assert_invariants();
    }

    #[test]
    fn odd_device_sizes_use_every_256_byte_unit() {
        // 1 MiB + 100 KiB + 700 B: 8 chunks, a tail of 64+32+4 KiB, then 512 + 256 B;
        // the last 188 bytes cannot hold a block.
        let device = MIB + 100 * KIB + 700;
        let mut alloc = BlockAllocator::new(device);
        assert_eq!(alloc.capacity(), device - 188);
        alloc.assert_invariants();
        let mut blocks = Vec::new();
        while let Ok(got) = alloc.allocate(256) {
            blocks.extend(got);
        }
        assert_eq!(alloc.remaining(), 0);
        assert_eq!(blocks.len() as u64, alloc.capacity() / 256);
        assert!(blocks.iter().all(|b| b.offset + b.size <= alloc.capacity()));
        alloc.free(&blocks).unwrap();
        alloc.flush_caches();
        alloc.assert_invariants();
        assert_eq!(alloc.remaining(), alloc.capacity());
        let whole = alloc.allocate(MIB).unwrap();
        assert_eq!(whole.len(), 8);
    }

    #[test]
    fn devices_smaller_than_one_block_have_no_capacity() {
        let mut alloc = BlockAllocator::new(200);
        assert_eq!(alloc.capacity(), 0);
        assert!(matches!(
            alloc.allocate(1),
            Err(AllocError::OutOfSpace { .. })
        ));
        let mut tiny = BlockAllocator::new(1024);
        assert_eq!(sizes(&tiny.allocate(1000).unwrap()), [1024]);
        assert!(tiny.allocate(1).is_err());
    }

    #[test]
    fn freed_blocks_are_reused_first() {
        let mut alloc = BlockAllocator::new(MIB);
        let first = alloc.allocate(4 * KIB).unwrap();
        alloc.free(&first).unwrap();
        assert_eq!(alloc.allocate(4 * KIB).unwrap(), first);
    }

    #[test]
    fn huge_devices_cost_no_memory_up_front() {
        let mut alloc = BlockAllocator::new(1 << 50);
        assert_eq!(alloc.remaining(), 1 << 50);
        let blocks = alloc.allocate(10 * MIB).unwrap();
        assert_eq!(blocks.len(), 80);
        alloc.free(&blocks).unwrap();
        alloc.flush_caches();
        assert_eq!(alloc.frontier, 0);
        alloc.assert_invariants();
    }

    /// A small deterministic generator (xorshift64*), so the random test needs no crate.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
    }

    #[test]
    fn random_allocate_and_free_keeps_every_invariant() {
        let device = 4 * MIB + 12 * KIB + 256;
        let mut alloc = BlockAllocator::new(device);
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut live: Vec<Vec<Block>> = Vec::new();
        for step in 0..20_000 {
            if live.is_empty() || rng.next() % 3 < 2 {
                let size = match rng.next() % 4 {
                    0 => rng.next() % 1024 + 1,
                    1 => 4 * KIB,
                    2 => rng.next() % (200 * KIB) + 1,
                    _ => rng.next() % (600 * KIB) + 1,
                };
                let before = alloc.remaining();
                match alloc.allocate(size) {
                    Ok(blocks) => {
                        let bytes: u64 = blocks.iter().map(|b| b.size).sum();
                        assert_eq!(bytes, Split::of(size).bytes());
                        assert_eq!(alloc.remaining(), before - bytes);
                        live.push(blocks);
                    }
                    Err(_) => assert_eq!(alloc.remaining(), before),
                }
            } else {
                let index = (rng.next() % live.len() as u64) as usize;
                let blocks = live.swap_remove(index);
                alloc.free(&blocks).unwrap();
            }
            if step % 500 == 0 {
                alloc.assert_invariants();
            }
        }
        alloc.assert_invariants();
        for blocks in live.drain(..) {
            alloc.free(&blocks).unwrap();
        }
        alloc.flush_caches();
        alloc.assert_invariants();
        assert_eq!(alloc.remaining(), alloc.capacity());
        assert_eq!(alloc.frontier, 0);
    }
}
