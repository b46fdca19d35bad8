//! Asymmetric barriers for a sleep handshake with a fast side and a rare side: threads
//! of this process pushing tasks to a worker (every push) and the worker about to sleep
//! (after its idle rounds).
//!
//! # The handshake
//!
//! A pusher publishes its task, then reads the worker's `sleeping` flag (and wakes it if
//! set); a worker about to sleep stores `sleeping` (`SeqCst`), then looks for tasks.
//! Each side needs its store ordered before its load, or both can miss each other: the
//! worker sleeps beside a task nobody wakes it for. With a store-load fence on each
//! side, the pusher's fence waits until the task's lines, written a moment before, have
//! left its CPU: on an in-process push that wait was most of the pusher's time in
//! `perf`, as the lines come from the worker's cache.
//!
//! So the pusher calls [`light`] and the worker [`heavy`]. Where Linux's
//! `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)` is available (registered once per
//! process, on first use), [`heavy`] makes every thread of this process running at the
//! time execute a full barrier (a thread not running passed one when it was switched
//! out), and [`light`] only keeps the compiler from reordering. Wherever the worker's
//! barrier lands in a pusher's sequence, either the pusher's store is before it, and
//! then visible to the worker's load, or the pusher's load is after it, and then sees
//! `sleeping`, which the worker stored (`SeqCst`) before asking for the barrier.
//! Elsewhere (another OS, an old kernel, a seccomp filter that refuses the call, Miri)
//! both are `fence(SeqCst)`.
//!
//! # Invariants
//!
//! * The mode is decided once per process, by whichever side asks first, and never
//!   changes: a pusher's [`light`] and a worker's [`heavy`] always agree.
//! * [`heavy`] returns whether the handshake holds. A barrier refused after the
//!   registration succeeded (not seen; the kernel documents no such case) returns
//!   `false`: the caller must then not sleep without a timeout.
//! * Only threads of this process may be on the light side: the barrier reaches no
//!   other process (the shared-memory clients have a handshake of their own).
use std::sync::atomic::{compiler_fence, fence, Ordering};
use std::sync::OnceLock;

/// Whether the expedited process-wide barrier is registered (decided once).
fn expedited() -> bool {
    static EXPEDITED: OnceLock<bool> = OnceLock::new();
    *EXPEDITED.get_or_init(os::register)
}

/// The system's side: Linux's `membarrier`, or nothing to register elsewhere.
#[cfg(all(target_os = "linux", not(miri)))]
mod os {
    use rustix::thread::{membarrier, membarrier_query, MembarrierCommand};

    /// Registers this process for expedited barriers, if the kernel offers them.
    pub(super) fn register() -> bool {
        let supported = membarrier_query();
        supported.contains_command(MembarrierCommand::PrivateExpedited)
            && supported.contains_command(MembarrierCommand::RegisterPrivateExpedited)
            && membarrier(MembarrierCommand::RegisterPrivateExpedited).is_ok()
    }

    /// A full barrier on every running thread of this process; whether it was done.
    pub(super) fn barrier() -> bool {
        membarrier(MembarrierCommand::PrivateExpedited).is_ok()
    }
}

#[cfg(not(all(target_os = "linux", not(miri))))]
mod os {
    pub(super) fn register() -> bool {
        false
    }

    pub(super) fn barrier() -> bool {
        false
    }
}

/// The fast side's barrier, between publishing a task and reading `sleeping`.
#[inline]
pub(crate) fn light() {
    if expedited() {
        compiler_fence(Ordering::SeqCst);
    } else {
        fence(Ordering::SeqCst);
    }
}

/// The rare side's barrier, between storing `sleeping` and looking for tasks. Returns
/// whether the handshake holds (see the module docs).
pub(crate) fn heavy() -> bool {
    fence(Ordering::SeqCst);
    !expedited() || os::barrier()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    /// Spins until `ready` says yes, yielding the CPU now and then (the test may share
    /// the machine's CPUs with other tests).
    fn spin_until(ready: impl Fn() -> bool) {
        let mut spins = 0u32;
        while !ready() {
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(1 << 12) {
                std::thread::yield_now();
            }
            std::hint::spin_loop();
        }
    }

    /// The store-buffering litmus test, round after round: the light side stores `x`
    /// then loads `y`, the heavy side stores `y` then loads `x`, both at the same
    /// instant (a start time set for each round); in no round may both loads miss the
    /// other side's store. (With `heavy` a plain fence, this fails on x86 within a few
    /// thousand rounds when the two sides have a CPU each.)
    #[test]
    fn the_two_sides_never_both_miss_each_other() {
        const ROUNDS: u64 = 20_000;
        let epoch = Instant::now();
        let cell = || Arc::new(AtomicU64::new(0));
        // `start`: the round (high 20 bits) and its start time in ns since `epoch`.
        let (start, x, y, light_saw, light_done) = (cell(), cell(), cell(), cell(), cell());
        let light_side = {
            let (start, x, y) = (start.clone(), x.clone(), y.clone());
            let (saw, done) = (light_saw.clone(), light_done.clone());
            std::thread::spawn(move || {
                for round in 1..=ROUNDS {
                    spin_until(|| start.load(Ordering::Acquire) >> 44 >= round);
                    let at = Duration::from_nanos(start.load(Ordering::Acquire) & ((1 << 44) - 1));
                    spin_until(|| epoch.elapsed() >= at);
                    x.store(round, Ordering::Relaxed);
                    light();
                    saw.store(y.load(Ordering::Relaxed), Ordering::Relaxed);
                    done.store(round, Ordering::Release);
                }
            })
        };
        let mut both_missed = Vec::new();
        for round in 1..=ROUNDS {
            let at = epoch.elapsed() + Duration::from_micros(3);
            start.store(round << 44 | at.as_nanos() as u64, Ordering::Release);
            spin_until(|| epoch.elapsed() >= at);
            y.store(round, Ordering::SeqCst);
            assert!(heavy(), "the barrier was refused");
            let heavy_saw = x.load(Ordering::Relaxed);
            spin_until(|| light_done.load(Ordering::Acquire) >= round);
            if heavy_saw < round && light_saw.load(Ordering::Relaxed) < round {
                both_missed.push(round);
            }
        }
        light_side.join().expect("the light side");
        assert!(
            both_missed.is_empty(),
            "both sides missed in rounds {both_missed:?}"
        );
    }
}
