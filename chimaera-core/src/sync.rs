//! Plain-mutex helpers shared by every layer, from the coroutine scheduler up.
//!
//! Invariant: the mutexes locked through [`lock`] guard plain data whose every critical
//! section is a single push, take or store, so a panic while one is held cannot leave
//! the data half-written; poison is therefore ignored rather than spread.
//!
//! [`Fifo`] is the unbounded queue of the worker's lanes and ready lists: a `VecDeque`
//! under such a mutex, which keeps its memory from push to push (crossbeam's `SegQueue`
//! allocates a block every 31 pushes: a steady stream of tasks then allocates), with
//! its length mirrored in an atomic so that looking at an empty queue — what an idle
//! poller does all the time — takes no lock. The length is stored under the lock
//! (`SeqCst`), after the push or pop it reflects, and read `SeqCst`: a pusher that then
//! reads a flag `SeqCst` and a reader that set that flag `SeqCst` before reading the
//! length cannot both miss each other (the workers' sleep and lane-turn handshakes).
//!
//! [`Inbox`] is a worker's queue of tasks pushed from other threads: a bounded lock-free
//! ring first ([`ring::SlotRing`]), so that a pusher and the worker share no lock word
//! (with one pushing thread, the ring's tail stays in that thread's cache and its head
//! in the worker's, and the worker's idle polls read only the next slot: only the slots
//! travel), and a [`Fifo`] for what does not fit. It stays FIFO: a push
//! goes to the ring only while the overflow is empty, so everything in the ring is older
//! than everything in the overflow, and a pop takes from the ring first. (Two pushes
//! that overlap in time may land in either order, as with any concurrent queue; one
//! thread's pushes never overtake each other.) A push ends with the light side of an
//! asymmetric barrier ([`barrier`]), the consumer about to sleep passes the heavy side,
//! so the sleep handshake above holds for it too, without a store-load fence per push.
//!
//! [`Latch`] is a one-shot event an OS thread blocks on (a runtime stopped, a worker's
//! poller finished), with an optional deadline: once opened it stays open.
use ring::SlotRing;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Instant;

pub(crate) mod barrier;
pub(crate) mod cacheline;
mod ring;

/// Locks a mutex that guards plain data; a panic while holding it cannot leave the data
/// half-written (every critical section is a single push or take), so poison is ignored.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A one-shot event for OS threads (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct Latch {
    open: Mutex<bool>,
    opened: Condvar,
}

impl Latch {
    /// Opens the latch and wakes every waiter; later waits return at once.
    pub(crate) fn open(&self) {
        *lock(&self.open) = true;
        self.opened.notify_all();
    }

    /// Blocks the calling thread until the latch is open or `deadline` (if any) has
    /// passed: whether it is open.
    pub(crate) fn wait(&self, deadline: Option<Instant>) -> bool {
        let mut open = lock(&self.open);
        while !*open {
            let Some(deadline) = deadline else {
                open = self
                    .opened
                    .wait(open)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                continue;
            };
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            open = self
                .opened
                .wait_timeout(open, left)
                .map_or_else(|poisoned| poisoned.into_inner().0, |(guard, _)| guard);
        }
        true
    }
}

/// An unbounded FIFO that allocates only when it grows past its largest length so far
/// (see the module docs).
#[derive(Debug)]
pub(crate) struct Fifo<T> {
    items: Mutex<VecDeque<T>>,
    len: AtomicUsize,
}

impl<T> Default for Fifo<T> {
    fn default() -> Self {
        Fifo {
            items: Mutex::new(VecDeque::new()),
            len: AtomicUsize::new(0),
        }
    }
}

impl<T> Fifo<T> {
    /// Adds `item` at the back.
    pub(crate) fn push(&self, item: T) {
        let mut items = lock(&self.items);
        items.push_back(item);
        self.len.store(items.len(), Ordering::SeqCst);
    }

    /// Takes the item at the front; `None` when empty (without taking the lock).
    pub(crate) fn pop(&self) -> Option<T> {
        if self.is_empty() {
            return None;
        }
        let mut items = lock(&self.items);
        let item = items.pop_front();
        self.len.store(items.len(), Ordering::SeqCst);
        item
    }

    /// How many items wait.
    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::SeqCst)
    }

    /// Whether no item waits.
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A multi-producer FIFO that allocates nothing in steady state and shares no lock
/// between its pushers and its consumer while it holds at most its ring's capacity
/// (see the module docs).
pub(crate) struct Inbox<T> {
    ring: SlotRing<T>,
    overflow: Fifo<T>,
}

impl<T> Inbox<T> {
    /// An inbox whose lock-free ring holds at least `capacity` items.
    pub(crate) fn new(capacity: usize) -> Self {
        Inbox {
            ring: SlotRing::new(capacity),
            overflow: Fifo::default(),
        }
    }

    /// Adds `item` at the back, then passes the light side of the sleep handshake's
    /// barrier ([`barrier::light`]): a consumer about to sleep passes the heavy side.
    ///
    /// Inlined, so the item is written into its slot where it is made: called for two
    /// item types, the compiler stopped inlining it, and every task was copied once more
    /// through `memcpy` on its way in.
    #[inline(always)]
    pub(crate) fn push(&self, item: T) {
        if self.overflow.is_empty() {
            if let Err(item) = self.ring.push(item) {
                self.overflow.push(item);
            }
        } else {
            self.overflow.push(item);
        }
        barrier::light();
    }

    /// Starts fetching the ring slot the next push fills (see
    /// [`SlotRing::prefetch_next_push`]).
    pub(crate) fn prefetch_next_push(&self) {
        self.ring.prefetch_next_push();
    }

    /// Takes the item at the front; `None` when empty.
    pub(crate) fn pop(&self) -> Option<T> {
        self.ring.pop().or_else(|| self.overflow.pop())
    }

    /// How many items wait (a snapshot).
    pub(crate) fn len(&self) -> usize {
        self.ring.len() + self.overflow.len()
    }

    /// Whether no item waits. A consumer about to sleep passes [`barrier::heavy`]
    /// between announcing it and calling this, so that it and a pusher cannot both miss
    /// each other.
    pub(crate) fn is_empty(&self) -> bool {
        self.ring.is_empty() && self.overflow.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A latch opens once for every waiter, before or after; a wait with a deadline
    /// that passes first says so.
    #[test]
    fn a_latch_opens_for_every_waiter() {
        let latch = std::sync::Arc::new(Latch::default());
        let soon = Instant::now() + std::time::Duration::from_millis(20);
        assert!(!latch.wait(Some(soon)), "opened by nobody");
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let latch = latch.clone();
                std::thread::spawn(move || latch.wait(None))
            })
            .collect();
        latch.open();
        assert!(waiters.into_iter().all(|waiter| waiter.join().unwrap()));
        assert!(latch.wait(Some(Instant::now())), "open stays open");
    }

    #[test]
    fn a_fifo_keeps_order_and_counts() {
        let fifo = Fifo::default();
        assert!(fifo.is_empty());
        assert_eq!(fifo.pop(), None::<u32>);
        for n in 0..100 {
            fifo.push(n);
        }
        assert_eq!(fifo.len(), 100);
        for n in 0..100 {
            assert_eq!(fifo.pop(), Some(n));
        }
        assert!(fifo.is_empty());
    }

    #[test]
    fn an_inbox_stays_in_order_through_its_overflow() {
        let inbox = Inbox::new(4);
        // Fill the ring, spill into the overflow, drain part, push more: still in order.
        for n in 0..10 {
            inbox.push(n);
        }
        assert_eq!(inbox.len(), 10);
        for n in 0..3 {
            assert_eq!(inbox.pop(), Some(n));
        }
        // The ring has room again, but the overflow holds older items: these queue behind.
        for n in 10..14 {
            inbox.push(n);
        }
        for n in 3..14 {
            assert_eq!(inbox.pop(), Some(n));
        }
        assert!(inbox.is_empty());
        assert_eq!(inbox.pop(), None);
    }

    #[test]
    fn an_inbox_keeps_each_pushers_order() {
        let inbox = std::sync::Arc::new(Inbox::new(8));
        let pushers: Vec<_> = (0..4u64)
            .map(|pusher| {
                let inbox = inbox.clone();
                std::thread::spawn(move || {
                    for n in 0..10_000u64 {
                        inbox.push((pusher, n));
                    }
                })
            })
            .collect();
        let mut next = [0u64; 4];
        let mut taken = 0;
        while taken < 40_000 {
            match inbox.pop() {
                Some((pusher, n)) => {
                    assert_eq!(n, next[pusher as usize], "pusher {pusher} overtaken");
                    next[pusher as usize] += 1;
                    taken += 1;
                }
                None => std::thread::yield_now(),
            }
        }
        for pusher in pushers {
            pusher.join().unwrap();
        }
        assert!(inbox.is_empty());
    }
}
