//! A counting semaphore for tasks: waiting for a permit parks the coroutine (the worker
//! runs other tasks), or blocks a plain thread.
//!
//! Waiters are served first-come first-served: [`Permits::post`] hands the permit
//! straight to the longest waiter (no barging), so none starves. The count and the queue
//! sit under one short `std` mutex, never held across a park; a waiter parks on its own
//! [`Blocker`] until its `granted` flag is set, so a spurious wake-up re-checks.
use chimaera_core::wait::Blocker;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

struct Waiter {
    granted: Arc<AtomicBool>,
    blocker: Arc<Blocker>,
}

struct State {
    available: usize,
    waiters: VecDeque<Waiter>,
}

/// A bound on operations in flight; see the [module docs](self).
pub struct Permits {
    state: Mutex<State>,
}

impl Permits {
    /// `count` permits, all available.
    pub fn new(count: usize) -> Self {
        Permits {
            state: Mutex::new(State {
                available: count,
                waiters: VecDeque::new(),
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // Every critical section is a counter update or a queue push/pop: a panic cannot
        // leave the state half-written, so poison is ignored.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes a permit, parking until one is free.
    pub fn wait(&self) {
        let (granted, blocker) = {
            let mut state = self.state();
            if state.available > 0 {
                state.available -= 1;
                return;
            }
            let granted = Arc::new(AtomicBool::new(false));
            let blocker = Blocker::current();
            state.waiters.push_back(Waiter {
                granted: granted.clone(),
                blocker: blocker.clone(),
            });
            (granted, blocker)
        };
        while !granted.load(Ordering::Acquire) {
            blocker.park(None);
        }
    }

    /// Gives a permit back: to the longest waiter if any.
    pub fn post(&self) {
        let waiter = {
            let mut state = self.state();
            match state.waiters.pop_front() {
                Some(waiter) => waiter,
                None => {
                    state.available += 1;
                    return;
                }
            }
        };
        waiter.granted.store(true, Ordering::Release);
        waiter.blocker.unpark();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn at_most_count_holders_at_once_and_every_waiter_gets_one() {
        let permits = Arc::new(Permits::new(2));
        let inside = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (permits, inside, most) = (permits.clone(), inside.clone(), most.clone());
                std::thread::spawn(move || {
                    for _ in 0..50 {
                        permits.wait();
                        let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        std::thread::yield_now();
                        inside.fetch_sub(1, Ordering::SeqCst);
                        permits.post();
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert!(most.load(Ordering::SeqCst) <= 2);
        assert_eq!(permits.state().available, 2);
    }
}
