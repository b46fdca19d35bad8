//! Waking a parked coroutine from a thread outside `may`'s scheduler, promptly.
//!
//! `may` queues a coroutine unparked from a foreign thread (an I/O thread, say) on a
//! scheduler thread's *global* queue, which that thread reads only once its local run
//! queue is empty. A worker whose poller spins while idle keeps its local queue busy, so
//! such a wake-up would wait until the poller gives up and sleeps — hundreds of
//! microseconds. [`unpark_from_outside`] avoids that: while some poller spins, the
//! blocker goes on a queue the spinning pollers drain on every round, unparking it from
//! inside the scheduler (a local run-queue push); with no poller spinning, it is
//! unparked directly, and nothing then keeps the global queue waiting.
//!
//! Invariant: every blocker handed in is unparked exactly once. A poller announces that
//! it stops spinning ([`stop_spinning`]) and then drains the queue once more; a waker
//! pushes, then reads the spinning count, draining the queue itself if it reads zero.
//! Both sides use `SeqCst`, so at least one of them sees the other's step; a blocker
//! popped by one is not seen by the other.
//!
//! The state is process-wide, like `may`'s scheduler: any poller may wake any blocker.
use crossbeam_queue::SegQueue;
use may::sync::Blocker;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

static WOKEN: SegQueue<Arc<Blocker>> = SegQueue::new();
static SPINNING: AtomicUsize = AtomicUsize::new(0);

/// Unparks `blocker` (parked by a coroutine, or by a thread) from a thread that is not a
/// `may` scheduler thread, without the delay of `may`'s global queue.
pub fn unpark_from_outside(blocker: Arc<Blocker>) {
    if SPINNING.load(Ordering::SeqCst) == 0 {
        blocker.unpark();
        return;
    }
    WOKEN.push(blocker);
    if SPINNING.load(Ordering::SeqCst) == 0 {
        // Every poller stopped spinning meanwhile; the last one may have drained
        // before the push.
        drain();
    }
}

/// Unparks every blocker handed in from outside; called by spinning pollers each round.
/// Returns how many.
pub(crate) fn drain() -> usize {
    let mut woken = 0;
    while let Some(blocker) = WOKEN.pop() {
        blocker.unpark();
        woken += 1;
    }
    woken
}

/// A poller starts spinning (polling without sleeping).
pub(crate) fn start_spinning() {
    SPINNING.fetch_add(1, Ordering::SeqCst);
}

/// A poller stops spinning; it drains what was handed in before it stopped.
pub(crate) fn stop_spinning() {
    SPINNING.fetch_sub(1, Ordering::SeqCst);
    drain();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_thread_parked_on_a_blocker_is_woken_with_and_without_spinners() {
        for spinning in [false, true] {
            let blocker = Arc::new(Blocker::new(false));
            let waker = blocker.clone();
            if spinning {
                start_spinning();
            }
            let thread = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(10));
                unpark_from_outside(waker);
            });
            if spinning {
                // Play the poller: drain until our blocker was handed over.
                while WOKEN.is_empty() && !thread.is_finished() {
                    std::hint::spin_loop();
                }
                stop_spinning();
            }
            blocker.park(Some(Duration::from_secs(10))).expect("woken");
            thread.join().unwrap();
        }
    }
}
