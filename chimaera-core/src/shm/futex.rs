//! Process-shared futex: sleep on a 32-bit word of a shared mapping until another process
//! (or thread) wakes it.
//!
//! The calls leave out `FUTEX_PRIVATE_FLAG`, so the kernel keys waiters by the mapped
//! file page and offset rather than by this process's address: a waiter in one process is
//! woken by a [`wake`] in another that maps the same segment at any address. (That is
//! also why the `atomic-wait` crate, which is process-private, does not serve here.)
//!
//! # Protocol
//!
//! A futex word carries no meaning of its own; callers build on it the usual way: a
//! sleeper announces itself (for example sets a "sleeping" flag), re-checks its condition,
//! then calls [`wait`] with the word's value it last saw; a waker changes the word (or the
//! condition) and then calls [`wake`] if someone announced they sleep. The kernel compares
//! the word with `expected` atomically with going to sleep, so a wake between the check
//! and the sleep is never lost: it shows up as [`WaitOutcome::ValueChanged`].
//!
//! # Failure modes
//!
//! [`wait`] can return [`WaitOutcome::Woken`] spuriously (a signal-free kernel wake-up, or
//! an unexpected error from the system call, which is logged); callers always re-check
//! their condition. Interrupted waits (`EINTR`) are resumed with the time that is left. A
//! peer that dies never wakes us: callers that wait on a peer pass a timeout and check
//! the peer's liveness ([`crate::shm::liveness`]) when it expires.
use std::sync::atomic::AtomicU32;
use std::time::{Duration, Instant};

use rustix::io::Errno;
use rustix::thread::futex::{self, Flags, Timespec};

/// How a [`wait`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitOutcome {
    /// Woken by a [`wake`] (or spuriously): re-check the condition.
    Woken,
    /// The timeout passed with no wake-up.
    TimedOut,
    /// The word did not hold `expected` when the wait began: it changed meanwhile.
    ValueChanged,
}

/// Sleeps while `word` holds `expected`, until woken or until `timeout` passes (`None`:
/// no limit). Works across processes when `word` lies in a shared mapping.
pub fn wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) -> WaitOutcome {
    let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
    loop {
        // With a timeout too large for an Instant, wait without one: nobody lives that long.
        let left = match deadline {
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return WaitOutcome::TimedOut;
                }
                Some(timespec(left))
            }
            None => None,
        };
        match futex::wait(word, Flags::empty(), expected, left.as_ref()) {
            Ok(()) => return WaitOutcome::Woken,
            Err(Errno::TIMEDOUT) => return WaitOutcome::TimedOut,
            Err(Errno::AGAIN) => return WaitOutcome::ValueChanged,
            Err(Errno::INTR) => continue,
            Err(errno) => {
                tracing::warn!("futex wait failed unexpectedly: {errno}; treated as a wake-up");
                return WaitOutcome::Woken;
            }
        }
    }
}

/// Wakes up to `n` waiters on `word`; returns how many were woken.
pub fn wake(word: &AtomicU32, n: u32) -> usize {
    // The kernel reads the count as a signed int: larger counts would wake only one.
    let n = n.min(i32::MAX as u32);
    match futex::wake(word, Flags::empty(), n) {
        Ok(woken) => woken,
        Err(errno) => {
            tracing::warn!("futex wake failed unexpectedly: {errno}");
            0
        }
    }
}

/// Wakes every waiter on `word`; returns how many were woken.
pub fn wake_all(word: &AtomicU32) -> usize {
    wake(word, u32::MAX)
}

fn timespec(d: Duration) -> Timespec {
    Timespec {
        tv_sec: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        tv_nsec: i64::from(d.subsec_nanos()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shm::naming::ShmName;
    use crate::shm::segment::Segment;
    use crate::shm::test_util::instance;
    use std::sync::atomic::Ordering;

    #[test]
    fn a_waiter_on_a_shared_segment_is_woken() {
        let name = ShmName::segment(&instance("futex"), "main").unwrap();
        let seg = Segment::create(&name, 4096).unwrap();
        seg.remove_on_drop(true);
        // A second, independent mapping of the same file: what another process would see.
        let other = Segment::open(&name).unwrap();

        let waiter = std::thread::spawn(move || {
            let word = other.atomic_u32(128).unwrap();
            let mut rounds = 0u32;
            while word.load(Ordering::Acquire) == 0 {
                // A lost wake-up would hang here; the generous timeout turns it into a
                // test failure instead of a hang.
                if wait(word, 0, Some(Duration::from_secs(30))) == WaitOutcome::TimedOut {
                    return Err(rounds);
                }
                rounds += 1;
            }
            Ok(word.load(Ordering::Acquire))
        });
        let word = seg.atomic_u32(128).unwrap();
        // Keep waking until the waiter has seen the value (it may not sleep yet).
        word.store(42, Ordering::Release);
        while !waiter.is_finished() {
            wake_all(word);
            std::thread::yield_now();
        }
        assert_eq!(waiter.join().unwrap(), Ok(42));
    }

    #[test]
    fn wait_times_out_and_sees_changed_values() {
        let word = AtomicU32::new(5);
        assert_eq!(
            wait(&word, 5, Some(Duration::from_millis(10))),
            WaitOutcome::TimedOut
        );
        assert_eq!(wait(&word, 5, Some(Duration::ZERO)), WaitOutcome::TimedOut);
        assert_eq!(wait(&word, 4, None), WaitOutcome::ValueChanged);
        assert_eq!(wake(&word, 1), 0);
        assert_eq!(wake_all(&word), 0);
    }
}
