//! [`ShortLock`]: a lock for bookkeeping that never waits while held.
//!
//! The allocator's critical sections are a few map updates (microseconds at most, one
//! large request a little longer) and never park, so a coroutine-aware queue of waiters
//! ([`chimaera_core::CoMutex`]) would cost more than the wait it saves. `ShortLock` is a
//! `std::sync::Mutex` taken without ever blocking a worker thread: `try_lock`, a short
//! spin, then `chimaera_core::wait::yield_now` so the worker runs other tasks before trying
//! again.
//!
//! Invariant the users keep: **nothing parks or yields while holding the guard.** So a
//! holder is always running on some thread, the holder is never a coroutine of the
//! waiter's own worker, and the wait ends as soon as that other thread finishes its few
//! instructions. A poisoned lock (a panic while held) is recovered: users' critical
//! sections leave their data consistent at every step that can panic.
use std::sync::{Mutex, MutexGuard, TryLockError};

/// Spins before the first yield: an uncontended holder leaves within this many tries.
const SPINS_BEFORE_YIELD: u32 = 64;

/// See the [module docs](self).
#[derive(Debug, Default)]
pub struct ShortLock<T> {
    inner: Mutex<T>,
}

impl<T> ShortLock<T> {
    /// A new, unlocked lock around `value`.
    pub fn new(value: T) -> Self {
        ShortLock {
            inner: Mutex::new(value),
        }
    }

    /// Takes the lock, yielding the calling coroutine (never blocking its thread) while
    /// another thread holds it.
    pub fn lock(&self) -> MutexGuard<'_, T> {
        let mut spins = 0;
        loop {
            match self.inner.try_lock() {
                Ok(guard) => return guard,
                Err(TryLockError::Poisoned(poisoned)) => return poisoned.into_inner(),
                Err(TryLockError::WouldBlock) if spins < SPINS_BEFORE_YIELD => {
                    spins += 1;
                    std::hint::spin_loop();
                }
                Err(TryLockError::WouldBlock) => chimaera_core::wait::yield_now(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn many_coroutines_and_threads_count_exactly() {
        let counter = Arc::new(ShortLock::new(0u64));
        let coroutines: Vec<_> = (0..8)
            .map(|_| {
                let counter = counter.clone();
                crate::test_executor::spawn(move || {
                    for _ in 0..1000 {
                        *counter.lock() += 1;
                    }
                })
            })
            .collect();
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let counter = counter.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        *counter.lock() += 1;
                    }
                })
            })
            .collect();
        coroutines.into_iter().for_each(|c| c.join().unwrap());
        threads.into_iter().for_each(|t| t.join().unwrap());
        assert_eq!(*counter.lock(), 10_000);
    }
}
