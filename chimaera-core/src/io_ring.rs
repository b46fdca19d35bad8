//! An executor's own `io_uring`: I/O that the coroutines of one worker submit and that
//! worker's thread completes, with no other thread in between.
//!
//! **Why.** A device that hands each operation to an I/O thread pays two thread
//! wake-ups per operation besides the device's own (the I/O thread's, then the
//! worker's), and on a VM waking a sleeping CPU costs microseconds each. Submitting from
//! the worker and completing there leaves one: the completion's.
//!
//! **Path of one operation** (`coroutine::submit_io`). The coroutine puts its entry on the
//! ring of its executor (made on first use, on that thread) and parks. Entries are
//! issued in batches, one `io_uring_enter` for all of them (and one plug of the block
//! layer: one doorbell to a virtual disk rather than one per entry): when the executor
//! runs out of ready coroutines, when a coroutine yields (an idle poller does at once,
//! see `coroutine::others_ready`), after [`ISSUE_AFTER_ROUNDS`] turns of the executor's
//! loop, or once [`ISSUE_BATCH`] entries wait. While operations are in flight, the
//! executor looks at the ring between coroutines (a few loads of ring memory; a system
//! call only when the kernel flags completions to run or entries are to be issued), and
//! an idle executor sleeps in `io_uring_enter` rather than on its futex, so a completion
//! itself wakes it.
//! Each completion is handed to the executor (its tag: the address of the caller's
//! slot), which fills the slot and unparks the caller, on this thread. This module knows
//! the ring, not the coroutines: the executor drives it.
//!
//! **Invariants.**
//! * The ring is made, used and dropped on its executor's thread only
//!   (`SINGLE_ISSUER | DEFER_TASKRUN`: the kernel runs completions when this thread asks
//!   for them, and never interrupts it to do so).
//! * An entry's buffers and slot stay valid until its completion: the caller loops on
//!   its slot's `done` flag and a coroutine is never cancelled; the executor does not
//!   stop, nor drop the ring, while operations are in flight.
//! * An entry pushed is issued by this thread's next `io_uring_enter`, which comes within
//!   [`ISSUE_AFTER_ROUNDS`] turns of the loop, or before the executor sleeps. Should one
//!   ever fail for good (it cannot with a valid ring), the ring is marked broken and
//!   never entered again: the kernel never sees an entry whose caller was told to go
//!   another way, and the callers of entries already pushed wait for good (their
//!   buffers stay borrowed, which is sound).
//! * Other threads wake an executor asleep in its ring by writing its *bell*, an eventfd
//!   a read is kept armed on; the executor's sleep word says which way it sleeps
//!   (see `coroutine::Home::wake_thread`).
//! * Without a usable ring (a kernel before 6.1, `io_uring` disabled or filtered, a
//!   caller that is no coroutine, or `MAX_IN_FLIGHT` operations in flight already)
//!   nothing is issued and the caller takes its own path.
use io_uring::{opcode, squeue, types, IoUring};
use rustix::io::Errno;
use std::cell::{Cell, RefCell, UnsafeCell};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

/// `user_data` of the bell read (slots are never at address 0).
const BELL: u64 = 0;
/// `user_data` of the cancellation a stopping executor issues (slots are aligned, never
/// at address 1).
const CANCEL: u64 = 1;
/// Submission entries of a ring; completions get twice as many.
const ENTRIES: u32 = 256;
/// Operations one ring carries at once (the bell's read takes one more entry).
pub(crate) const MAX_IN_FLIGHT: usize = ENTRIES as usize - 1;
/// Errors of `io_uring_enter` after which the queued entries are still issued by the next
/// one: interrupted, timed out, or short of kernel resources.
const TRANSIENT: [Errno; 4] = [Errno::INTR, Errno::TIME, Errno::AGAIN, Errno::BUSY];
/// Entries waiting to be issued that make the next push issue them at once.
const ISSUE_BATCH: u32 = 16;
/// Turns of the executor's loop an entry may wait before it is issued.
const ISSUE_AFTER_ROUNDS: u32 = 8;
/// Completions handled per look at the completion queue.
const BATCH: usize = 32;

/// What the executor does with one completion: its tag (what [`WorkerRing::issue`] was
/// given) and its `res` (bytes transferred, or `-errno`).
pub(crate) type Completed<'a> = &'a mut dyn FnMut(u64, i32);

/// An executor's ring, in the executor's thread-confined state.
#[derive(Default)]
pub(crate) struct WorkerRing {
    state: RefCell<State>,
    /// Operations issued and not yet completed (kept outside `state` so the executor's
    /// loop checks it without a borrow).
    in_flight: Cell<usize>,
    /// Whether the operations in flight were asked to end (the executor stops).
    cancelled: Cell<bool>,
    /// Entries pushed and not yet issued.
    unissued: Cell<u32>,
    /// Turns of the executor's loop since the oldest of them was pushed.
    unissued_rounds: Cell<u32>,
}

#[derive(Default)]
enum State {
    /// Not asked for yet.
    #[default]
    Untried,
    /// Cannot be made here, or broke: callers take their own path.
    Unusable,
    Ready(Box<Ring>),
}

struct Ring {
    ring: IoUring,
    /// The executor's bell (a duplicate: the ring rings it itself to end its own read
    /// when it is dropped).
    bell: OwnedFd,
    /// The bell's read target; the kernel writes it, nothing here reads it.
    bell_buffer: Box<UnsafeCell<u64>>,
    bell_armed: bool,
}

impl WorkerRing {
    /// Operations in flight on this executor's ring, which the executor waits for: none
    /// once the ring broke (its operations never complete; their callers wait for
    /// good, see the module invariants).
    pub(crate) fn in_flight(&self) -> usize {
        match self.state.try_borrow().as_deref() {
            Ok(State::Ready(_)) => self.in_flight.get(),
            _ => 0,
        }
    }

    /// Whether any operation was issued and not yet handed out: a `Cell` read, for the
    /// executor's loop to skip the ring (and its look at the run queue) when none was.
    pub(crate) fn any_issued(&self) -> bool {
        self.in_flight.get() > 0
    }

    /// Whether the executor has ring work to do: entries to issue, or a completion to
    /// hand out (the kernel flagged one to run, or one is in the queue). A busy poller
    /// then lets the executor have a turn.
    pub(crate) fn work_waiting(&self) -> bool {
        if self.in_flight.get() == 0 {
            return false;
        }
        let Ok(mut state) = self.state.try_borrow_mut() else {
            return false;
        };
        let State::Ready(ring) = &mut *state else {
            return false;
        };
        self.unissued.get() > 0
            || ring.ring.submission().taskrun()
            || !ring.ring.completion().is_empty()
    }

    /// Hands every completion there is to `completed`, issuing the waiting entries too
    /// if `issue` or they waited [`ISSUE_AFTER_ROUNDS`] turns. Called by the executor
    /// on every turn of its loop; costs a borrow and a few loads when nothing completed.
    pub(crate) fn reap(&self, issue: bool, completed: Completed<'_>) {
        if self.in_flight.get() == 0 {
            return;
        }
        let mut issue = issue;
        if self.unissued.get() > 0 {
            let rounds = self.unissued_rounds.get() + 1;
            self.unissued_rounds.set(rounds);
            issue |= rounds >= ISSUE_AFTER_ROUNDS;
        }
        let mut state = self.state.borrow_mut();
        let State::Ready(ring) = &mut *state else {
            return;
        };
        let needs_enter = {
            let sq = ring.ring.submission();
            (issue && !sq.is_empty()) || sq.taskrun() || sq.cq_overflow()
        };
        if needs_enter && !self.enter(ring, 0, None) {
            state.break_ring();
            return;
        }
        drop(state);
        self.complete_ready(completed);
    }

    /// Issues the entries waiting to be issued (a coroutine yields: see the module docs).
    pub(crate) fn issue_waiting(&self) {
        if self.unissued.get() == 0 {
            return;
        }
        let mut state = self.state.borrow_mut();
        let State::Ready(ring) = &mut *state else {
            return;
        };
        if !self.enter(ring, 0, None) {
            state.break_ring();
        }
    }

    /// `ring.enter`, which issues every entry pushed: the count of waiting ones restarts.
    fn enter(&self, ring: &mut Ring, want: usize, timeout: Option<Duration>) -> bool {
        self.unissued.set(0);
        self.unissued_rounds.set(0);
        ring.enter(want, timeout)
    }

    /// Sleeps until a completion, a ring of the bell or `timeout`, then hands out the
    /// completions. The caller announced the sleep in the executor's sleep word.
    pub(crate) fn wait(&self, timeout: Option<Duration>, completed: Completed<'_>) {
        let mut state = self.state.borrow_mut();
        let State::Ready(ring) = &mut *state else {
            return;
        };
        if !ring.arm_bell() {
            state.break_ring();
            return;
        }
        let ready = !ring.ring.completion().is_empty();
        if !self.enter(ring, usize::from(!ready), timeout) {
            state.break_ring();
            return;
        }
        drop(state);
        self.complete_ready(completed);
    }

    /// Asks the kernel, once, to end every operation in flight early (reads of a pipe,
    /// say; a block device's I/O just completes): the executor stops and waits for them.
    pub(crate) fn cancel_all(&self) {
        if self.cancelled.replace(true) {
            return;
        }
        let mut state = self.state.borrow_mut();
        let State::Ready(ring) = &mut *state else {
            return;
        };
        let cancel = opcode::AsyncCancel2::new(types::CancelBuilder::any())
            .build()
            .user_data(CANCEL);
        // SAFETY: a cancellation points to no buffer.
        while unsafe { ring.ring.submission().push(&cancel) }.is_err() {
            if !self.enter(ring, 0, None) {
                state.break_ring();
                return;
            }
        }
        if !self.enter(ring, 0, None) {
            state.break_ring();
        }
    }

    /// Hands every completion in the queue to `completed`.
    fn complete_ready(&self, completed: Completed<'_>) {
        loop {
            let mut taken = [(0u64, 0i32); BATCH];
            let count = {
                let mut state = self.state.borrow_mut();
                let State::Ready(ring) = &mut *state else {
                    return;
                };
                let mut count = 0;
                let mut completions = ring.ring.completion();
                while count < BATCH {
                    let Some(cqe) = completions.next() else { break };
                    taken[count] = (cqe.user_data(), cqe.result());
                    count += 1;
                }
                drop(completions);
                if taken[..count]
                    .iter()
                    .any(|&(user_data, _)| user_data == BELL)
                {
                    ring.bell_armed = false;
                }
                count
            };
            for &(user_data, result) in &taken[..count] {
                if user_data == BELL || user_data == CANCEL {
                    continue;
                }
                self.in_flight.set(self.in_flight.get() - 1);
                completed(user_data, result);
            }
            if count < BATCH {
                return;
            }
        }
    }

    /// Puts `entry` tagged `tag` (never 0 or 1: the address of an aligned slot) on the
    /// ring, made on first use with `bell` as its bell, to be issued with the next batch
    /// (see the module docs). `false` if it was not taken: no ring here, or
    /// `MAX_IN_FLIGHT` operations in flight already.
    ///
    /// # Safety
    /// Every buffer `entry` points to, and whatever `tag` names, must stay valid (and for
    /// the kernel's writes unaliased) until the completion is handed out.
    pub(crate) unsafe fn issue(&self, bell: &OwnedFd, entry: &squeue::Entry, tag: u64) -> bool {
        debug_assert!(tag != BELL && tag != CANCEL);
        let mut state = self.state.borrow_mut();
        if self.in_flight.get() >= MAX_IN_FLIGHT {
            return false;
        }
        let Some(ring) = WorkerRing::ready(&mut state, bell) else {
            return false;
        };
        let entry = entry.clone().user_data(tag);
        // SAFETY: the caller keeps the entry's buffers valid until its completion.
        while unsafe { ring.ring.submission().push(&entry) }.is_err() {
            // Full of entries not yet issued (the bell's read among them): issue them.
            if !self.enter(ring, 0, None) {
                state.break_ring();
                return false;
            }
        }
        self.in_flight.set(self.in_flight.get() + 1);
        self.unissued.set(self.unissued.get() + 1);
        if self.unissued.get() >= ISSUE_BATCH && !self.enter(ring, 0, None) {
            // Broken (see the module invariants): never entered again.
            state.break_ring();
        }
        true
    }

    /// The ready ring, made on first use; `None` if there is none here.
    fn ready<'a>(state: &'a mut State, bell: &OwnedFd) -> Option<&'a mut Ring> {
        if matches!(state, State::Untried) {
            *state = match Ring::new(bell) {
                Ok(ring) => State::Ready(Box::new(ring)),
                Err(err) => {
                    tracing::debug!("no worker io_uring here ({err}); I/O takes other paths");
                    State::Unusable
                }
            };
        }
        match state {
            State::Ready(ring) => Some(ring),
            _ => None,
        }
    }
}

impl State {
    /// Gives up a ring whose `io_uring_enter` failed for good (it cannot, with a valid
    /// ring and the transient errors aside). The ring is leaked, not dropped: dropping
    /// would enter it again, issuing entries whose callers were told to go their own way,
    /// and its memory must outlive whatever is still in flight.
    fn break_ring(&mut self) {
        if let State::Ready(ring) = std::mem::replace(self, State::Unusable) {
            std::mem::forget(ring);
        }
    }
}

impl Ring {
    fn new(bell: &OwnedFd) -> io::Result<Ring> {
        let ring = IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_taskrun_flag()
            .build(ENTRIES)?;
        Ok(Ring {
            ring,
            bell: bell.try_clone()?,
            bell_buffer: Box::new(UnsafeCell::new(0)),
            bell_armed: false,
        })
    }

    /// Keeps a read armed on the bell, so a write to it ends a wait in the ring.
    /// `false` if the ring failed for good.
    fn arm_bell(&mut self) -> bool {
        if self.bell_armed {
            return true;
        }
        let read = opcode::Read::new(
            types::Fd(self.bell.as_raw_fd()),
            self.bell_buffer.get().cast(),
            8,
        )
        .build()
        .user_data(BELL);
        // SAFETY: the buffer lives as long as the ring and is never read here; the ring
        // waits for this read to complete before its buffer goes (`Drop`).
        while unsafe { self.ring.submission().push(&read) }.is_err() {
            // Full of entries not yet issued: issue them.
            if !self.enter(0, None) {
                return false;
            }
        }
        self.bell_armed = true;
        true
    }

    /// Issues the queued entries and waits for `want` completions (0: none) at most
    /// `timeout`. `false` if the ring failed for good (see the module invariants).
    fn enter(&mut self, want: usize, timeout: Option<Duration>) -> bool {
        let submitter = self.ring.submitter();
        let entered = match timeout {
            Some(timeout) if want > 0 => {
                let timespec = types::Timespec::from(timeout);
                let args = types::SubmitArgs::new().timespec(&timespec);
                submitter.submit_with_args(want, &args)
            }
            _ => submitter.submit_and_wait(want),
        };
        match entered {
            Ok(_) => true,
            Err(err) => match err.raw_os_error() {
                // Interrupted, timed out, or short of kernel resources: the entries stay
                // queued and the next enter issues them.
                Some(code) if TRANSIENT.iter().any(|errno| errno.raw_os_error() == code) => true,
                _ => {
                    tracing::error!("io_uring_enter failed on a worker ring ({err}); the ring is no longer used");
                    false
                }
            },
        }
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // The armed bell read writes `bell_buffer` when it completes: ring the bell and
        // wait for it.
        if self.bell_armed {
            let _ = rustix::io::write(&self.bell, &1u64.to_ne_bytes());
        }
        let mut rounds = 0;
        while self.bell_armed && rounds < 1000 {
            if !self.enter(1, Some(Duration::from_millis(10))) {
                break;
            }
            if self.ring.completion().any(|cqe| cqe.user_data() == BELL) {
                self.bell_armed = false;
            }
            rounds += 1;
        }
        if self.bell_armed {
            // The read never completed (the ring broke): its buffer must outlive it.
            std::mem::forget(std::mem::replace(
                &mut self.bell_buffer,
                Box::new(UnsafeCell::new(0)),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coroutine::{submit_io, Blocker, Executor, ExecutorOptions};
    use std::sync::Arc;

    fn executor(name: &str) -> Executor {
        Executor::start(ExecutorOptions {
            name: name.into(),
            stack_size: 128 * 1024,
            cpu: None,
        })
        .unwrap()
    }

    /// Whether a worker ring can be made here (a kernel since 6.1, `io_uring` allowed);
    /// tests that need one are skipped, with a note, where it cannot.
    fn rings_work_here() -> bool {
        let home = executor("io-ring-probe");
        let nop = opcode::Nop::new().build();
        // SAFETY: a no-op points to no buffer.
        let issued = home
            .spawn(move || unsafe { submit_io(&nop) })
            .join()
            .unwrap();
        if issued.is_none() {
            println!("note: no worker io_uring here; test skipped");
        }
        issued.is_some()
    }

    #[test]
    fn a_coroutine_writes_and_reads_through_its_workers_ring() {
        if !rings_work_here() {
            return;
        }
        let dir = std::env::temp_dir().join(format!("chimaera-io-ring-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.join("f"))
            .unwrap();
        let fd = file.as_raw_fd();
        let home = executor("io-ring-test");
        let used = home
            .spawn(move || {
                let data = [7u8; 4096];
                let write = opcode::Write::new(types::Fd(fd), data.as_ptr(), 4096)
                    .offset(0)
                    .build();
                // SAFETY: `data` outlives the call.
                let written = unsafe { submit_io(&write) };
                let mut back = [0u8; 4096];
                let read = opcode::Read::new(types::Fd(fd), back.as_mut_ptr(), 4096)
                    .offset(0)
                    .build();
                // SAFETY: `back` outlives the call and nothing else touches it.
                let read = unsafe { submit_io(&read) };
                (
                    written.map(|r| r.unwrap()),
                    read.map(|r| r.unwrap()),
                    back == data,
                )
            })
            .join()
            .unwrap();
        assert_eq!(used, (Some(4096), Some(4096), true));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Reads 8 bytes of `fd` through the worker ring of the calling coroutine.
    fn read_word(fd: i32) -> Option<io::Result<u32>> {
        let mut word = [0u8; 8];
        let read = opcode::Read::new(types::Fd(fd), word.as_mut_ptr(), 8).build();
        // SAFETY: `word` outlives the call and nothing else touches it.
        unsafe { submit_io(&read) }
    }

    #[test]
    fn a_wake_up_from_another_thread_reaches_an_executor_asleep_in_its_ring() {
        if !rings_work_here() {
            return;
        }
        // A reads a pipe (in flight until B writes it); B parks until a plain thread
        // unparks it. The executor has nothing to run but I/O in flight, so it sleeps in
        // its ring: only the bell can wake it for B. A lost wake-up hangs here.
        let (reader, mut writer) = std::io::pipe().unwrap();
        let home = executor("io-ring-bell");
        let reader_fd = reader.as_raw_fd();
        for round in 0..50u8 {
            let a = home.spawn(move || read_word(reader_fd));
            let (blocker_tx, blocker_rx) = std::sync::mpsc::channel();
            let b = home.spawn(move || {
                let blocker = Blocker::current();
                blocker_tx.send(blocker.clone()).unwrap();
                blocker.park(None);
            });
            let blocker = blocker_rx.recv().unwrap();
            std::thread::sleep(Duration::from_millis(2));
            blocker.unpark();
            b.join().unwrap();
            std::io::Write::write_all(&mut writer, &[round; 8]).unwrap();
            assert_eq!(
                a.join().unwrap().map(|r| r.unwrap()),
                Some(8),
                "round {round}"
            );
        }
        drop(reader);
    }

    #[test]
    fn a_stopping_executor_ends_what_it_has_in_flight_and_waits_for_it() {
        if !rings_work_here() {
            return;
        }
        // A read of a pipe nobody writes would never complete: stopping cancels it, and
        // its caller still gets its answer before the executor's thread ends.
        let (reader, writer) = std::io::pipe().unwrap();
        let home = executor("io-ring-stop");
        let reader_fd = reader.as_raw_fd();
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let read = home.spawn(move || {
            started_tx.send(()).unwrap();
            read_word(reader_fd)
        });
        started_rx.recv().unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let stopping = std::time::Instant::now();
        home.stop();
        assert!(stopping.elapsed() < Duration::from_secs(5));
        let result = read.join().unwrap().expect("issued on the ring");
        assert_eq!(
            result.unwrap_err().raw_os_error(),
            Some(Errno::CANCELED.raw_os_error())
        );
        drop((reader, writer));
    }

    #[test]
    fn an_entry_is_issued_while_other_coroutines_keep_the_executor_busy() {
        // A writes a pipe (done as soon as issued); B and C then wake each other 10,000
        // times without ever yielding, so the executor always has a coroutine ready.
        // Entries wait for a batch only a few turns of the loop: A is done long before.
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Mutex;
        if !rings_work_here() {
            return;
        }
        let (reader, writer) = std::io::pipe().unwrap();
        let home = executor("io-ring-busy");
        let writer_fd = writer.as_raw_fd();
        let a_done = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let b_slot: Arc<Mutex<Option<Arc<Blocker>>>> = Arc::default();
        let c_slot: Arc<Mutex<Option<Arc<Blocker>>>> = Arc::default();
        let a = {
            let a_done = a_done.clone();
            home.spawn(move || {
                let word = [1u8; 8];
                let write = opcode::Write::new(types::Fd(writer_fd), word.as_ptr(), 8).build();
                // SAFETY: `word` outlives the call.
                let written = unsafe { submit_io(&write) };
                a_done.store(true, Ordering::SeqCst);
                written.map(|r| r.unwrap())
            })
        };
        let b = {
            let (a_done, stop) = (a_done.clone(), stop.clone());
            let (b_slot, c_slot) = (b_slot.clone(), c_slot.clone());
            home.spawn(move || {
                let me = Blocker::current();
                *b_slot.lock().unwrap() = Some(me.clone());
                me.park(None); // until C runs
                let c = c_slot.lock().unwrap().clone().unwrap();
                for _ in 0..10_000 {
                    c.unpark();
                    me.park(None);
                }
                let seen = a_done.load(Ordering::SeqCst);
                stop.store(true, Ordering::SeqCst);
                c.unpark();
                seen
            })
        };
        let c = home.spawn(move || {
            let me = Blocker::current();
            *c_slot.lock().unwrap() = Some(me.clone());
            let b = b_slot.lock().unwrap().clone().unwrap();
            while !stop.load(Ordering::SeqCst) {
                b.unpark();
                me.park(None);
            }
        });
        assert!(
            b.join().unwrap(),
            "the write waited for the busy coroutines"
        );
        c.join().unwrap();
        assert_eq!(a.join().unwrap(), Some(8));
        drop((reader, writer));
    }

    #[test]
    fn outside_a_coroutine_nothing_is_issued() {
        let (reader, _writer) = std::io::pipe().unwrap();
        assert!(read_word(reader.as_raw_fd()).is_none());
    }
}
