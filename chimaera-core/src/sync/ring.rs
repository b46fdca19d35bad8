//! A bounded lock-free FIFO whose idle consumer reads only the slot it would take.
//!
//! [`SlotRing`] is Vyukov's bounded array queue: each slot carries a sequence number
//! that says whose turn it is, pushers claim positions on one counter (`tail`) and
//! poppers on another (`head`). crossbeam's `ArrayQueue` is the same design, with one
//! addition this ring leaves out on purpose: a pop that finds its slot empty also reads
//! the pushers' `tail`, to tell "empty" from "a push in progress" (and then spins). A
//! worker polling an empty inbox does that thousands of times a second, so the `tail`
//! line sits in the worker's cache and every push from another thread first has to
//! pull it back: one more cross-core cache miss on the critical path of every
//! in-process call. Here a pop that finds its slot empty, or still being written, just
//! reports `None`; the item is seen by a later pop.
//!
//! # Invariants
//!
//! * Positions only grow (`usize`, never wrapping in practice); position `p` uses slot
//!   `p & mask`.
//! * A slot's `seq` is `p` while it is free for the push at position `p`, `p + 1` once
//!   that push's item is in it, and `p + capacity` once that item was popped (free for
//!   the push one lap later).
//! * A pusher writes a slot's item only after winning the compare-exchange of `tail`
//!   from `p` to `p + 1` having seen `seq == p` (`Acquire`: the previous item's pop is
//!   done with it), and publishes it by storing `seq = p + 1` (`Release`). A popper reads
//!   it only after winning `head` from `p` to `p + 1` having seen `seq == p + 1`
//!   (`Acquire`), and gives the slot back by storing `seq = p + capacity` (`Release`).
//!   One winner per position on each side, so each item has exactly one writer, then
//!   exactly one reader, and the two never overlap.
//! * [`SlotRing::is_empty`] looks at the slot at `head` only: a caller that fences
//!   (`SeqCst`) before it, against a pusher that fences after publishing, cannot miss
//!   that push (the sleep handshake of `runtime/worker.rs`). It may report empty while
//!   an earlier push is still being written; that pusher's own fence then finds the
//!   sleeper.
use crate::sync::cacheline;
use crossbeam_utils::CachePadded;
use std::cell::UnsafeCell;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A bounded multi-producer, multi-consumer FIFO (see the module docs).
pub(crate) struct SlotRing<T> {
    slots: Box<[Slot<T>]>,
    /// `capacity - 1` (the capacity is a power of two).
    mask: usize,
    /// The next position to push: written by pushers only.
    tail: CachePadded<AtomicUsize>,
    /// The next position to pop: written by poppers only.
    head: CachePadded<AtomicUsize>,
}

/// Aligned to a cache line, so that a slot shares no line with its neighbours and an
/// item moves only the lines it fills (unaligned, the 160-byte slots of the 144-byte
/// requests posted before straddled three or four lines). `seq` comes first: the popper that sees it change finds the item's
/// first bytes on the same line.
#[repr(C, align(64))]
struct Slot<T> {
    seq: AtomicUsize,
    item: UnsafeCell<MaybeUninit<T>>,
}

// SAFETY: an item is moved in by one thread and out by one other (see the module
// invariants); what crosses threads is `T`, so `T: Send` suffices.
unsafe impl<T: Send> Send for SlotRing<T> {}
// SAFETY: as for `Send`: shared access only ever moves whole items in and out, each
// slot's item owned by exactly one thread at a time.
unsafe impl<T: Send> Sync for SlotRing<T> {}

impl<T> SlotRing<T> {
    /// A ring of at least `capacity` slots (rounded up to a power of two, at least 2).
    pub(crate) fn new(capacity: usize) -> Self {
        let capacity = capacity.max(2).next_power_of_two();
        let slots = (0..capacity)
            .map(|position| Slot {
                seq: AtomicUsize::new(position),
                item: UnsafeCell::new(MaybeUninit::uninit()),
            })
            .collect();
        SlotRing {
            slots,
            mask: capacity - 1,
            tail: CachePadded::new(AtomicUsize::new(0)),
            head: CachePadded::new(AtomicUsize::new(0)),
        }
    }

    fn slot(&self, position: usize) -> &Slot<T> {
        &self.slots[position & self.mask]
    }

    /// Adds `item` at the back; gives it back when the ring is full.
    pub(crate) fn push(&self, item: T) -> Result<(), T> {
        let mut position = self.tail.load(Ordering::Relaxed);
        loop {
            let slot = self.slot(position);
            let seq = slot.seq.load(Ordering::Acquire);
            match seq.wrapping_sub(position) as isize {
                0 => match self.tail.compare_exchange_weak(
                    position,
                    position.wrapping_add(1),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => {
                        // SAFETY: this pusher won `position` with the slot free for it
                        // (`seq == position`, seen with `Acquire` after the last pop of
                        // the slot released it): nobody else touches the item until the
                        // `Release` store below publishes it.
                        unsafe { (*slot.item.get()).write(item) };
                        slot.seq.store(position.wrapping_add(1), Ordering::Release);
                        return Ok(());
                    }
                    Err(now) => position = now,
                },
                // The slot still holds the item of the lap before: full.
                gap if gap < 0 => return Err(item),
                // Another pusher took `position`: look again.
                _ => position = self.tail.load(Ordering::Relaxed),
            }
        }
    }

    /// Starts fetching the slot the next push fills, for writing: the consumer touched it
    /// last (a lap ago), so that push's stores would otherwise queue behind its transfer,
    /// and so would every load after them that the store buffer cannot serve (the
    /// pusher's next steps). For a pusher that pushes again soon: right after a push
    /// whose item is awaited at once, the fetch competes with that item's own transfer
    /// (sync in-process calls: 5% slower round trips).
    pub(crate) fn prefetch_next_push(&self) {
        let position = self.tail.load(Ordering::Relaxed);
        let slot = std::ptr::from_ref(self.slot(position)).cast::<u8>();
        for line in (0..std::mem::size_of::<Slot<T>>()).step_by(64) {
            cacheline::prefetch_for_writing(slot.wrapping_add(line));
        }
    }

    /// Takes the item at the front; `None` when the ring is empty (or its front item is
    /// still being written). Reads no pusher-written word but the front slot's.
    pub(crate) fn pop(&self) -> Option<T> {
        let mut position = self.head.load(Ordering::Relaxed);
        loop {
            let slot = self.slot(position);
            let seq = slot.seq.load(Ordering::Acquire);
            match seq.wrapping_sub(position.wrapping_add(1)) as isize {
                0 => match self.head.compare_exchange_weak(
                    position,
                    position.wrapping_add(1),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => {
                        // SAFETY: this popper won `position` with the item published
                        // (`seq == position + 1`, seen with `Acquire` after the pusher's
                        // `Release`): it alone reads it, once, then frees the slot.
                        let item = unsafe { (*slot.item.get()).assume_init_read() };
                        slot.seq
                            .store(position.wrapping_add(self.mask + 1), Ordering::Release);
                        return Some(item);
                    }
                    Err(now) => position = now,
                },
                // Empty, or the push of `position` is not published yet.
                gap if gap < 0 => return None,
                // Another popper took `position`: look again.
                _ => position = self.head.load(Ordering::Relaxed),
            }
        }
    }

    /// Whether the front slot holds no published item (see the module docs for the
    /// handshake this serves).
    pub(crate) fn is_empty(&self) -> bool {
        let position = self.head.load(Ordering::SeqCst);
        self.slot(position).seq.load(Ordering::SeqCst) != position.wrapping_add(1)
    }

    /// How many items were pushed and not popped (a snapshot; pushes in progress
    /// included).
    pub(crate) fn len(&self) -> usize {
        let head = self.head.load(Ordering::SeqCst);
        let tail = self.tail.load(Ordering::SeqCst);
        tail.wrapping_sub(head).min(self.mask + 1)
    }
}

impl<T> Drop for SlotRing<T> {
    fn drop(&mut self) {
        // `&mut self`: no push or pop is in progress, so every position between head
        // and tail holds a published item.
        while self.pop().is_some() {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_ring_keeps_order_refuses_when_full_and_reuses_its_slots() {
        let ring = SlotRing::new(4);
        assert!(ring.is_empty());
        assert_eq!(ring.pop(), None::<u32>);
        for lap in 0..10u32 {
            for n in 0..4 {
                ring.push(lap * 4 + n).unwrap();
            }
            assert_eq!(
                ring.push(99),
                Err(99),
                "lap {lap}: a full ring took an item"
            );
            assert_eq!(ring.len(), 4);
            for n in 0..4 {
                assert_eq!(ring.pop(), Some(lap * 4 + n));
            }
            assert!(ring.is_empty());
            assert_eq!(ring.len(), 0);
        }
    }

    #[test]
    fn a_capacity_is_rounded_up_to_a_power_of_two() {
        let ring = SlotRing::new(5);
        for n in 0..8 {
            ring.push(n).unwrap();
        }
        assert_eq!(ring.push(8), Err(8));
    }

    #[test]
    fn items_left_in_a_dropped_ring_are_dropped_once() {
        let item = Arc::new(());
        let ring = SlotRing::new(8);
        for _ in 0..5 {
            ring.push(item.clone()).unwrap();
        }
        drop(ring.pop());
        drop(ring);
        assert_eq!(Arc::strong_count(&item), 1);
    }

    /// Four pushers and two poppers through a small ring: every item arrives exactly
    /// once, and no pusher's items overtake each other at either popper.
    #[test]
    fn pushers_and_poppers_lose_nothing_and_keep_each_pushers_order() {
        const PER_PUSHER: u64 = 50_000;
        let ring = Arc::new(SlotRing::new(16));
        let pushers: Vec<_> = (0..4u64)
            .map(|pusher| {
                let ring = ring.clone();
                std::thread::spawn(move || {
                    for n in 0..PER_PUSHER {
                        let mut item = (pusher, n);
                        while let Err(back) = ring.push(item) {
                            item = back;
                            std::thread::yield_now();
                        }
                    }
                })
            })
            .collect();
        let taken = Arc::new(AtomicUsize::new(0));
        let poppers: Vec<_> = (0..2)
            .map(|_| {
                let (ring, taken) = (ring.clone(), taken.clone());
                std::thread::spawn(move || {
                    let mut last = [None::<u64>; 4];
                    let mut sum = 0u64;
                    while taken.load(Ordering::SeqCst) < 4 * PER_PUSHER as usize {
                        match ring.pop() {
                            Some((pusher, n)) => {
                                let seen = &mut last[pusher as usize];
                                assert!(seen.is_none_or(|seen| seen < n), "overtaken");
                                *seen = Some(n);
                                sum += n;
                                taken.fetch_add(1, Ordering::SeqCst);
                            }
                            None => std::thread::yield_now(),
                        }
                    }
                    sum
                })
            })
            .collect();
        for pusher in pushers {
            pusher.join().unwrap();
        }
        let sum: u64 = poppers.into_iter().map(|p| p.join().unwrap()).sum();
        assert_eq!(sum, 4 * (PER_PUSHER * (PER_PUSHER - 1) / 2));
        assert!(ring.is_empty());
    }
}
