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
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

/// Locks a mutex that guards plain data; a panic while holding it cannot leave the data
/// half-written (every critical section is a single push or take), so poison is ignored.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
