//! A first-fit allocator of byte ranges, for buffers in a shared segment.
//!
//! The bookkeeping lives in the memory of the one process that allocates from the range
//! (the runtime for a client's output space, a client for its data share), never in
//! shared memory, so a peer cannot corrupt it. Only offsets go into shared memory.
//!
//! Invariants: free extents never overlap nor touch (freeing merges neighbours), every
//! allocation is aligned to its requested power-of-two alignment, and `in_use` is the
//! sum of the lengths handed out and not yet freed.
use std::collections::BTreeMap;

/// An allocated range: `offset` from the start of the managed range, `len` bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    /// Start, relative to the managed range.
    pub offset: usize,
    /// Length in bytes.
    pub len: usize,
}

/// First-fit allocator over `0..capacity`.
#[derive(Debug)]
pub struct Arena {
    free: BTreeMap<usize, usize>,
    capacity: usize,
    in_use: usize,
}

impl Arena {
    /// An arena with all of `0..capacity` free.
    pub fn new(capacity: usize) -> Self {
        let mut free = BTreeMap::new();
        if capacity > 0 {
            free.insert(0, capacity);
        }
        Arena {
            free,
            capacity,
            in_use: 0,
        }
    }

    /// Allocates `len` bytes (at least 1) aligned to `align` (a power of two), or `None`
    /// when no free extent fits.
    pub fn alloc(&mut self, len: usize, align: usize) -> Option<Extent> {
        let len = len.max(1);
        let align = align.max(1).next_power_of_two();
        let (start, extent_len, offset) = self.free.iter().find_map(|(&start, &extent_len)| {
            let offset = start.checked_next_multiple_of(align)?;
            let end = offset.checked_add(len)?;
            (end <= start + extent_len).then_some((start, extent_len, offset))
        })?;
        self.free.remove(&start);
        if offset > start {
            self.free.insert(start, offset - start);
        }
        let end = offset + len;
        if end < start + extent_len {
            self.free.insert(end, start + extent_len - end);
        }
        self.in_use += len;
        Some(Extent { offset, len })
    }

    /// Returns an extent this arena handed out. Extents it does not recognise (outside
    /// the range, or overlapping free space) are ignored and reported as `false`.
    pub fn free(&mut self, extent: Extent) -> bool {
        let Extent { offset, len } = extent;
        let Some(end) = offset.checked_add(len) else {
            return false;
        };
        if len == 0 || end > self.capacity {
            return false;
        }
        let before = self
            .free
            .range(..=offset)
            .next_back()
            .map(|(&s, &l)| (s, l));
        let after = self.free.range(offset..).next().map(|(&s, &l)| (s, l));
        if before.is_some_and(|(s, l)| s + l > offset) || after.is_some_and(|(s, _)| s < end) {
            return false;
        }
        let mut start = offset;
        let mut stop = end;
        if let Some((s, l)) = before.filter(|(s, l)| s + l == offset) {
            self.free.remove(&s);
            start = s;
            let _ = l;
        }
        if let Some((s, l)) = after.filter(|(s, _)| *s == end) {
            self.free.remove(&s);
            stop = s + l;
        }
        self.free.insert(start, stop - start);
        self.in_use -= len;
        true
    }

    /// Forgets every allocation.
    pub fn reset(&mut self) {
        *self = Arena::new(self.capacity);
    }

    /// Bytes handed out and not freed.
    pub fn in_use(&self) -> usize {
        self.in_use
    }

    /// Size of the managed range.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocations_are_aligned_disjoint_and_coalesce_back() {
        let mut arena = Arena::new(1 << 16);
        let a = arena.alloc(100, 64).unwrap();
        let b = arena.alloc(5000, 4096).unwrap();
        let c = arena.alloc(1, 16).unwrap();
        for e in [a, b, c] {
            assert!(e.offset + e.len <= 1 << 16);
        }
        assert_eq!(b.offset % 4096, 0);
        assert!(a.offset + a.len <= b.offset || b.offset + b.len <= a.offset);
        assert_eq!(arena.in_use(), 5101);
        assert!(arena.free(b));
        assert!(!arena.free(b), "double free is refused");
        assert!(arena.free(a));
        assert!(arena.free(c));
        assert_eq!(arena.in_use(), 0);
        assert_eq!(
            arena.alloc(1 << 16, 1),
            Some(Extent {
                offset: 0,
                len: 1 << 16
            })
        );
    }

    #[test]
    fn exhaustion_and_bogus_frees() {
        let mut arena = Arena::new(1024);
        assert!(arena.alloc(2048, 1).is_none());
        assert!(!arena.free(Extent {
            offset: 1000,
            len: 100
        }));
        let all = arena.alloc(1024, 1).unwrap();
        assert!(arena.alloc(1, 1).is_none());
        assert!(arena.free(all));
    }
}
