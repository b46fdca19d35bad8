//! An `io_uring` queue: file I/O submitted by parked tasks, issued and completed on the
//! worker's own ring, or else by one I/O thread per device, started when first needed.
//!
//! **Path of one operation** ([`UringQueue::read_exact_at`],
//! [`write_all_at`](UringQueue::write_all_at), [`sync_data`](UringQueue::sync_data)):
//!
//! 1. The caller takes a permit ([`UringQueue::permit`]) of a coroutine-aware counting
//!    semaphore: at most `depth` operations in flight; waiting for one parks the
//!    coroutine.
//! 2. A task on a worker issues the operation on **its worker's ring**
//!    ([`chimaera_core::wait::submit_io`]): one `io_uring_enter`, then the coroutine parks and
//!    the worker runs other tasks; the worker's own thread takes the completion and
//!    resumes the task, so no other thread wakes for it. The rest of this list is the
//!    path of callers without one (a plain thread, a kernel without the ring flags the
//!    worker ring needs): the device's own ring and I/O thread. These are started by
//!    the first such caller (the others that come meanwhile park until they are there),
//!    so a device used only by tasks on workers keeps no idle thread and no ring; a
//!    start that fails fails the operation that tried it, and the next one tries again.
//! 3. The caller puts a submission entry on the device's ring (a few stores under a
//!    short lock; no system call) and, only if the I/O thread is asleep, rings its
//!    doorbell (an `eventfd` write, which never blocks). Then it parks its coroutine (a
//!    [`Blocker`]; a plain thread parks), and the worker runs other tasks.
//! 4. The queue's **I/O thread** loops on one `io_uring_enter(to_submit, GETEVENTS)`:
//!    it hands every queued entry to the kernel and sleeps until a completion arrives —
//!    an I/O, or the doorbell (a read of the `eventfd` it keeps armed on the ring). It
//!    stores each I/O's result in the caller's slot and unparks the caller, which
//!    resumes on its own worker's thread (the blocker queues it there and wakes that
//!    thread only if it sleeps).
//!
//! Why the device's ring is issued by its I/O thread, not by the tasks: the kernel
//! completes an `io_uring` request in the context of the thread that submitted it (it
//! interrupts that thread to post the completion), which a worker's own ring avoids
//! only by asking for completions itself (`DEFER_TASKRUN`, which allows one submitting
//! thread per ring).
//!
//! No allocation per operation besides the blocker's `Arc`; the caller's slot lives on
//! its own stack.
//!
//! **Soundness of borrowed buffers.** The kernel reads or writes the caller's buffer and
//! slot until the completion arrives, so a caller must not return earlier. It does not:
//! once its entry is on the ring, the caller loops on its slot's `done` flag, and nothing
//! in that loop can panic or be cancelled (coroutines are never cancelled).
//! Every entry on the ring is issued: the I/O thread reads the queue length after
//! announcing that it sleeps, and a submitter checks for that announcement after
//! publishing its entry (both with `SeqCst` fences), so either the thread sees the entry
//! or the submitter rings the doorbell. The I/O thread clones the blocker's `Arc`
//! *before* marking the slot done, so it never touches the slot after the caller may
//! have left.
//!
//! **Shutdown.** Dropping the queue (no operation can be in flight then: each borrows
//! the queue until it completes) queues a no-op with a reserved tag on the device's ring,
//! if it was started; the I/O thread then completes its doorbell read, waits for it,
//! and exits; the queue joins it.
//!
//! [`probe`] tells whether `io_uring` can be used here at all (it may be compiled out of
//! the kernel, disabled by `kernel.io_uring_disabled`, or refused by a seccomp filter).
use crate::permits::Permits;
use crate::short_lock::ShortLock;
use chimaera_core::wait::Blocker;
use chimaera_core::{BulkIn, BulkOut};
use io_uring::{opcode, squeue, types, IoUring};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{fence, AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;

/// `user_data` of the no-op that stops the I/O thread (slots are never at address 0).
const SHUTDOWN: u64 = 0;
/// `user_data` of the doorbell read (slots are aligned, never at address 1).
const DOORBELL: u64 = 1;
/// Stack of the I/O thread: it only moves entries and completions.
const IO_THREAD_STACK: usize = 128 * 1024;
/// `io_uring_enter` flag: wait for completions (from `<linux/io_uring.h>`).
const IORING_ENTER_GETEVENTS: u32 = 1;
/// Completions taken from the ring per batch.
const BATCH: usize = 64;

/// Whether an `io_uring` instance can be created in this process (tested once).
///
/// `Err` carries the reason (for instance `EPERM` under a seccomp filter, `ENOSYS` on a
/// kernel built without it).
/// The test ring is made on a thread of its own: a thread that created a ring is
/// interrupted when the ring is torn down, which a runtime worker should not be.
pub fn probe() -> Result<(), String> {
    static PROBE: OnceLock<Result<(), String>> = OnceLock::new();
    PROBE
        .get_or_init(|| {
            std::thread::spawn(|| IoUring::new(2).map(drop).map_err(|e| e.to_string()))
                .join()
                .unwrap_or_else(|_| Err("the probe thread panicked".into()))
        })
        .clone()
}

/// The ring the I/O thread made (or why it could not), handed to the caller that waits
/// for the setup.
struct Setup {
    ring: std::sync::Mutex<Option<io::Result<Arc<Shared>>>>,
    blocker: Arc<Blocker>,
}

impl Setup {
    fn deliver(&self, made: io::Result<Arc<Shared>>) {
        *self.ring.lock().unwrap_or_else(|p| p.into_inner()) = Some(made);
        self.blocker.unpark();
    }

    fn wait(&self) -> io::Result<Arc<Shared>> {
        loop {
            if let Some(made) = self.ring.lock().unwrap_or_else(|p| p.into_inner()).take() {
                return made;
            }
            self.blocker.park(None);
        }
    }
}

/// Where the I/O thread puts one operation's result, on the waiting caller's stack.
struct Slot {
    /// The completion's `res`: bytes transferred, or `-errno`.
    result: AtomicI32,
    done: AtomicBool,
    blocker: Arc<Blocker>,
}

/// One operation's right to be in flight (see [`UringQueue::permit`]); given back when
/// dropped.
pub struct Permit<'a>(&'a Permits);

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        self.0.post();
    }
}

/// What the submitters and the I/O thread share.
struct Shared {
    ring: IoUring,
    /// Guards the submission side of `ring` (pushes, and reading its length).
    submit: ShortLock<()>,
    /// Set by the I/O thread before it may sleep in `io_uring_enter`.
    sleeping: AtomicBool,
    /// The doorbell: an `eventfd` the I/O thread keeps a read armed on.
    doorbell: OwnedFd,
}

impl Shared {
    /// A ring of `entries` submission entries and its doorbell; called on the I/O thread.
    fn new(entries: u32) -> io::Result<Shared> {
        // Only the I/O thread issues requests, and it enters the kernel after every batch
        // of completions it hands out: the kernel need not interrupt it to post a
        // completion (an IPI, costly in a VM). Kernels before 5.19 lack the flag.
        let ring = match IoUring::builder().setup_coop_taskrun().build(entries) {
            Ok(ring) => ring,
            Err(_) => IoUring::new(entries)?,
        };
        // SAFETY: plain eventfd creation; the result is checked.
        let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if efd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `efd` is a fresh descriptor that nothing else owns.
        let doorbell = unsafe { OwnedFd::from_raw_fd(efd) };
        Ok(Shared {
            ring,
            submit: ShortLock::new(()),
            sleeping: AtomicBool::new(false),
            doorbell,
        })
    }

    /// Puts `entry` on the submission queue (not yet issued).
    fn push(&self, entry: &squeue::Entry) {
        let _guard = self.submit.lock();
        // SAFETY: the `submit` lock makes this the only submission-queue handle.
        let mut sq = unsafe { self.ring.submission_shared() };
        // SAFETY: the entry's buffers outlive its completion (`submit_wait`'s contract).
        // The ring has room: permits + the doorbell read + the shutdown no-op ≤ entries.
        if unsafe { sq.push(entry) }.is_err() {
            unreachable!("the submission queue has more room than permits");
        }
        // Dropping `sq` publishes the new tail (Release).
    }

    /// Entries pushed and not yet taken by the kernel.
    fn queued(&self) -> usize {
        let _guard = self.submit.lock();
        // SAFETY: as in `push`. The handle must be dropped (it stores the tail back)
        // before the guard: a `let`, not a tail expression, whose temporaries would
        // outlive the guard.
        let sq = unsafe { self.ring.submission_shared() };
        let len = sq.len();
        drop(sq);
        len
    }

    /// Wakes the I/O thread if it announced that it sleeps.
    fn ring_doorbell(&self) {
        fence(Ordering::SeqCst);
        if self.sleeping.load(Ordering::Relaxed) && self.sleeping.swap(false, Ordering::AcqRel) {
            let one = 1u64.to_ne_bytes();
            // SAFETY: writes 8 bytes from a live buffer to an eventfd we own; an eventfd
            // write only fails if the counter would overflow, which a few wake-ups cannot.
            let _ = unsafe { libc::write(self.doorbell.as_raw_fd(), one.as_ptr().cast(), 8) };
        }
    }
}

/// The depth bound, and the device's own ring and I/O thread once a caller without a
/// worker ring needed them; see the [module docs](self).
pub struct UringQueue {
    permits: Permits,
    depth: usize,
    /// Submission entries of the device's own ring.
    entries: u32,
    /// The I/O thread's name.
    thread_name: String,
    /// The device's own ring and I/O thread, once started (set once, by the caller that
    /// started them).
    fallback: OnceLock<Fallback>,
    /// Who starts the fallback ring: never held across a park.
    starting: ShortLock<Start>,
    /// Starts tried, for the tests.
    #[cfg(test)]
    starts: std::sync::atomic::AtomicU32,
}

/// The device's own ring and the I/O thread that issues it.
struct Fallback {
    shared: Arc<Shared>,
    io_thread: Option<JoinHandle<()>>,
}

/// Where the start of the fallback ring stands (see [`UringQueue::fallback`]).
enum Start {
    /// Not started (or the last try failed: the next caller tries again).
    Idle,
    /// A caller is starting it; these callers wait for it.
    Starting(Vec<Arc<Blocker>>),
}

impl UringQueue {
    /// A depth bound of `depth` operations in flight (`depth` 0 counts as 1) for a device
    /// whose I/O thread, if one is ever needed, is named `name`-uring.
    ///
    /// Nothing is started here: tasks on a runtime worker issue their I/O on the worker's
    /// own ring. The device's own ring and I/O thread start on the first operation of a
    /// caller without one (a plain thread, or a kernel without the flags the worker ring
    /// needs). Fails if `io_uring` cannot be used in this process at all ([`probe`]; the
    /// first probe of a process blocks its caller while a thread makes a test ring, so
    /// [`FileDevice::open`](super::file::FileDevice::open) probes on its I/O thread first).
    pub fn new(name: &str, depth: u32) -> io::Result<Self> {
        probe().map_err(io::Error::other)?;
        let depth = depth.max(1) as usize;
        // Room for the doorbell read and the shutdown no-op too; completions have twice
        // the room.
        let entries = u32::try_from(depth + 2)
            .unwrap_or(u32::MAX)
            .next_power_of_two()
            .min(32_768);
        Ok(UringQueue {
            permits: Permits::new(depth.min(entries as usize - 2)),
            depth,
            entries,
            thread_name: format!("{name}-uring"),
            fallback: OnceLock::new(),
            starting: ShortLock::new(Start::Idle),
            #[cfg(test)]
            starts: Default::default(),
        })
    }

    /// Whether the device's own ring and I/O thread were started.
    pub fn fallback_started(&self) -> bool {
        self.fallback.get().is_some()
    }

    /// The device's own ring, started by the first caller that needs it; the others
    /// that need it meanwhile park until it is there. A failed start fails the operation
    /// that tried it; the callers that waited for it try again.
    fn fallback(&self) -> io::Result<&Shared> {
        loop {
            if let Some(fallback) = self.fallback.get() {
                return Ok(&fallback.shared);
            }
            let waiting = {
                let mut start = self.starting.lock();
                // Set before `starting` went back to idle: look again under the lock.
                if let Some(fallback) = self.fallback.get() {
                    return Ok(&fallback.shared);
                }
                match &mut *start {
                    Start::Starting(waiters) => {
                        let blocker = Blocker::current();
                        waiters.push(blocker.clone());
                        Some(blocker)
                    }
                    Start::Idle => {
                        *start = Start::Starting(Vec::new());
                        None
                    }
                }
            };
            if let Some(blocker) = waiting {
                // Woken when the start is over (a wake-up before the park is kept).
                let _ = blocker.park(None);
                continue;
            }
            let started = self.start_fallback().map(|fallback| {
                // Only this caller sets it (`starting` says `Starting` meanwhile): it is empty.
                let _ = self.fallback.set(fallback);
            });
            let waiters = match std::mem::replace(&mut *self.starting.lock(), Start::Idle) {
                Start::Starting(waiters) => waiters,
                Start::Idle => Vec::new(),
            };
            waiters.iter().for_each(|waiter| waiter.unpark());
            started?;
        }
    }

    /// Starts the device's own I/O thread, which makes the ring itself, so the kernel ties
    /// the ring to that thread alone: it never signals a runtime worker about it (it
    /// interrupts the tasks registered with a ring when the ring is torn down, for
    /// instance). Parks the calling coroutine (a thread blocks) for the ring's setup.
    fn start_fallback(&self) -> io::Result<Fallback> {
        #[cfg(test)]
        self.starts.fetch_add(1, Ordering::Relaxed);
        let setup = Arc::new(Setup {
            ring: std::sync::Mutex::new(None),
            blocker: Blocker::current(),
        });
        let thread_setup = setup.clone();
        let entries = self.entries;
        let io_thread = std::thread::Builder::new()
            .name(self.thread_name.clone())
            .stack_size(IO_THREAD_STACK)
            .spawn(move || {
                let made = Shared::new(entries).map(Arc::new);
                let serving = made.as_ref().ok().cloned();
                thread_setup.deliver(made);
                if let Some(shared) = serving {
                    serve(&shared);
                }
            })?;
        match setup.wait() {
            Ok(shared) => Ok(Fallback {
                shared,
                io_thread: Some(io_thread),
            }),
            Err(err) => {
                let _ = io_thread.join();
                Err(err)
            }
        }
    }

    /// The bound on operations in flight.
    pub fn depth(&self) -> usize {
        self.depth
    }

    /// Takes a permit for one operation in flight, parking the coroutine meanwhile.
    /// Callers that run an operation outside the ring (on an I/O thread) hold one too, so
    /// the device's bound covers both.
    pub fn permit(&self) -> Permit<'_> {
        self.permits.wait();
        Permit(&self.permits)
    }

    /// Reads up to `len` bytes into `buf` from `offset` of `fd`: bytes read (0 at end of
    /// file).
    ///
    /// # Safety
    /// `buf..buf + len` must be writable memory that nothing in this process accesses
    /// until the call returns (the kernel writes it; another process may too).
    unsafe fn read_at(
        &self,
        fd: RawFd,
        buf: *mut u8,
        len: usize,
        offset: u64,
    ) -> io::Result<usize> {
        let len = u32::try_from(len).unwrap_or(u32::MAX);
        let entry = opcode::Read::new(types::Fd(fd), buf, len)
            .offset(offset)
            .build();
        // SAFETY: the caller keeps `buf` valid and untouched for the whole call, and
        // `submit_wait` does not return before the kernel is done with it.
        let res = unsafe { self.submit_wait(entry) }?;
        Ok(res as usize)
    }

    /// Writes up to `len` bytes from `buf` at `offset` of `fd`: bytes written.
    ///
    /// # Safety
    /// `buf..buf + len` must be readable memory that stays mapped until the call returns.
    unsafe fn write_at(
        &self,
        fd: RawFd,
        buf: *const u8,
        len: usize,
        offset: u64,
    ) -> io::Result<usize> {
        let len = u32::try_from(len).unwrap_or(u32::MAX);
        let entry = opcode::Write::new(types::Fd(fd), buf, len)
            .offset(offset)
            .build();
        // SAFETY: as in `read_at`; the kernel only reads `buf`.
        let res = unsafe { self.submit_wait(entry) }?;
        Ok(res as usize)
    }

    /// `fdatasync(fd)`.
    fn fdatasync(&self, fd: RawFd) -> io::Result<()> {
        let entry = opcode::Fsync::new(types::Fd(fd))
            .flags(types::FsyncFlags::DATASYNC)
            .build();
        // SAFETY: no buffer is involved.
        unsafe { self.submit_wait(entry) }.map(drop)
    }

    /// Reads all of `buf` from `offset`, resubmitting after short reads. `permit` is
    /// the caller's slot in the depth bound. The kernel writes straight into `buf`'s
    /// memory (a client's shared buffer, zero-copy).
    pub fn read_exact_at(
        &self,
        _permit: &Permit<'_>,
        fd: RawFd,
        mut buf: BulkOut<'_>,
        mut offset: u64,
    ) -> io::Result<()> {
        let mut done = 0;
        while done < buf.len() {
            let rest = buf.len() - done;
            let at = buf.as_mut_ptr().wrapping_add(done);
            // SAFETY: `at..at + rest` is the unread tail of the view, which `buf`
            // (taken by value, so held by nobody else here) keeps valid for the call.
            match unsafe { self.read_at(fd, at, rest, offset) }? {
                0 => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the file ended before the range read",
                    ))
                }
                n => {
                    done += n.min(rest);
                    offset += n as u64;
                }
            }
        }
        Ok(())
    }

    /// Writes all of `buf` at `offset`, resubmitting after short writes; `permit` as
    /// for [`read_exact_at`](Self::read_exact_at). The kernel reads straight from
    /// `buf`'s memory.
    pub fn write_all_at(
        &self,
        _permit: &Permit<'_>,
        fd: RawFd,
        buf: BulkIn<'_>,
        mut offset: u64,
    ) -> io::Result<()> {
        let mut done = 0;
        while done < buf.len() {
            let rest = buf.len() - done;
            // SAFETY: the unwritten tail of the view, valid while `buf` lives.
            match unsafe { self.write_at(fd, buf.as_ptr().wrapping_add(done), rest, offset) }? {
                0 => {
                    return Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "the file took no byte of the write",
                    ))
                }
                n => {
                    done += n.min(rest);
                    offset += n as u64;
                }
            }
        }
        Ok(())
    }

    /// `fdatasync(fd)`; `permit` as for [`read_exact_at`](Self::read_exact_at).
    pub fn sync_data(&self, _permit: &Permit<'_>, fd: RawFd) -> io::Result<()> {
        self.fdatasync(fd)
    }

    /// Submits `entry` and waits for its completion: its non-negative result, or the
    /// error it reports. The caller holds a permit.
    ///
    /// # Safety
    /// Every buffer `entry` points to must stay valid (and, for reads, unaliased) for the
    /// whole call; this function returns only after the kernel has completed the entry.
    unsafe fn submit_wait(&self, entry: squeue::Entry) -> io::Result<i32> {
        // SAFETY: the caller's contract is the worker ring's.
        if let Some(result) = unsafe { chimaera_core::wait::submit_io(&entry) } {
            return result.map(|done| done as i32);
        }
        let slot = Slot {
            result: AtomicI32::new(0),
            done: AtomicBool::new(false),
            blocker: Blocker::current(),
        };
        let shared = self.fallback()?;
        let entry = entry.user_data(&slot as *const Slot as u64);
        shared.push(&entry);
        shared.ring_doorbell();
        while !slot.done.load(Ordering::Acquire) {
            // A spurious or early return re-checks the flag.
            let _ = slot.blocker.park(None);
        }
        let res = slot.result.load(Ordering::Acquire);
        if res < 0 {
            Err(io::Error::from_raw_os_error(-res))
        } else {
            Ok(res)
        }
    }
}

impl Drop for Fallback {
    fn drop(&mut self) {
        let stop = opcode::Nop::new().build().user_data(SHUTDOWN);
        self.shared.push(&stop);
        self.shared.ring_doorbell();
        if let Some(io_thread) = self.io_thread.take() {
            let _ = io_thread.join();
        }
    }
}

impl std::fmt::Debug for UringQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringQueue")
            .field("depth", &self.depth)
            .field("fallback_started", &self.fallback_started())
            .finish_non_exhaustive()
    }
}

/// The I/O thread: issues queued entries and hands completions to their slots, until
/// the shutdown no-op completes.
fn serve(shared: &Shared) {
    let ring = &shared.ring;
    // The doorbell read's buffer: lives until its last read completed (below).
    let mut bell = Box::new(0u64);
    let mut bell_armed = false;
    let mut stopping = false;
    let mut taken: Vec<(u64, i32)> = Vec::with_capacity(BATCH);
    loop {
        // Hand out every completion there is.
        loop {
            taken.clear();
            {
                // SAFETY: the I/O thread is the only user of the completion queue.
                let cq = unsafe { ring.completion_shared() };
                taken.extend(cq.take(BATCH).map(|cqe| (cqe.user_data(), cqe.result())));
            }
            if taken.is_empty() {
                break;
            }
            for &(user_data, result) in &taken {
                match user_data {
                    SHUTDOWN => {
                        stopping = true;
                        if bell_armed {
                            // Complete the armed read, so its buffer can go.
                            let one = 1u64.to_ne_bytes();
                            // SAFETY: as in `ring_doorbell`.
                            let _ = unsafe {
                                libc::write(shared.doorbell.as_raw_fd(), one.as_ptr().cast(), 8)
                            };
                        }
                    }
                    DOORBELL => bell_armed = false,
                    _ => {
                        // SAFETY: every other tag is the address of a `Slot` whose caller
                        // waits until `done` is set; it is alive now.
                        let slot = unsafe { &*(user_data as *const Slot) };
                        let blocker = slot.blocker.clone();
                        slot.result.store(result, Ordering::Relaxed);
                        slot.done.store(true, Ordering::Release);
                        // From here on the slot may be gone; only our clone is used.
                        blocker.unpark();
                    }
                }
            }
        }
        if stopping && !bell_armed {
            return;
        }
        // (Re-)arm the doorbell before sleeping.
        if !bell_armed && !stopping {
            let read = opcode::Read::new(
                types::Fd(shared.doorbell.as_raw_fd()),
                (&mut *bell as *mut u64).cast(),
                8,
            )
            .build()
            .user_data(DOORBELL);
            shared.push(&read);
            bell_armed = true;
        }
        // Announce the sleep, then look for entries: a submitter that publishes after
        // this look sees the announcement and rings the doorbell.
        shared.sleeping.store(true, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        let queued = shared.queued();
        // SAFETY: the completion queue is ours (see above); a read-only look.
        let ready = !unsafe { ring.completion_shared() }.is_empty();
        let (wait, flags) = if ready {
            (0, 0)
        } else {
            (1, IORING_ENTER_GETEVENTS)
        };
        if queued > 0 || wait > 0 {
            // SAFETY: issues `queued` entries (all published, with live buffers) and
            // waits for one completion; no argument.
            let entered = unsafe {
                ring.submitter()
                    .enter::<libc::sigset_t>(queued as u32, wait, flags, None)
            };
            match entered {
                Ok(_) => {}
                Err(err)
                    if matches!(
                        err.raw_os_error(),
                        Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)
                    ) => {}
                Err(err) => {
                    // Cannot happen with a valid ring; entries cannot be taken back (their
                    // buffers belong to parked callers), so keep trying.
                    tracing::error!("io_uring_enter failed ({err}); retrying");
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
            }
        }
        shared.sleeping.store(false, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    fn queue(depth: u32) -> Option<UringQueue> {
        match probe() {
            Ok(()) => Some(UringQueue::new("test", depth).unwrap()),
            Err(reason) => {
                println!("note: io_uring unavailable here ({reason}); test skipped");
                None
            }
        }
    }

    /// An empty file `f`, readable and writable, in a directory of its own (`test`).
    fn empty_file(test: &str) -> (super::super::tests::TempDir, std::fs::File) {
        let dir = super::super::tests::TempDir::new(test);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.file("f"))
            .unwrap();
        (dir, file)
    }

    /// Writes 512 bytes of `i` at block `i` of `fd` and reads them back.
    fn write_and_read_back(queue: &UringQueue, fd: RawFd, i: u8) {
        let data = [i; 512];
        let at = u64::from(i) * 512;
        let permit = queue.permit();
        queue
            .write_all_at(&permit, fd, BulkIn::from(&data[..]), at)
            .unwrap();
        let mut back = [0u8; 512];
        queue
            .read_exact_at(&permit, fd, BulkOut::from(&mut back[..]), at)
            .unwrap();
        assert_eq!(back, data);
    }

    #[test]
    fn threads_and_coroutines_write_and_read_through_the_ring() {
        let Some(queue) = queue(4) else { return };
        let queue = Arc::new(queue);
        let (dir, file) = empty_file("uring-queue");
        let file = Arc::new(file);
        let fd = file.as_raw_fd();
        let coroutines: Vec<_> = (0..16u8)
            .map(|i| {
                let queue = queue.clone();
                crate::test_executor::spawn(move || write_and_read_back(&queue, fd, i))
            })
            .collect();
        let threads: Vec<_> = (16..20u8)
            .map(|i| {
                let queue = queue.clone();
                std::thread::spawn(move || {
                    let data = [i; 512];
                    let permit = queue.permit();
                    queue
                        .write_all_at(&permit, fd, BulkIn::from(&data[..]), u64::from(i) * 512)
                        .unwrap();
                    queue.sync_data(&permit, fd).unwrap();
                })
            })
            .collect();
        coroutines.into_iter().for_each(|c| c.join().unwrap());
        threads.into_iter().for_each(|t| t.join().unwrap());
        let bytes = std::fs::read(dir.file("f")).unwrap();
        for (i, chunk) in bytes.chunks(512).enumerate() {
            assert!(chunk.iter().all(|&b| b == i as u8), "chunk {i}");
        }
        // Past the end of the file: end of file, not a hang.
        let mut past = [0u8; 8];
        // SAFETY: `past` is ours and untouched during the call.
        let read = unsafe { queue.read_at(fd, past.as_mut_ptr(), past.len(), 1 << 20) };
        assert_eq!(read.unwrap(), 0);
        let permit = queue.permit();
        let err = queue
            .read_exact_at(&permit, fd, BulkOut::from(&mut past[..]), 1 << 20)
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        // A bad descriptor is an error from the completion.
        // SAFETY: `past` is ours and stays alive during the call.
        assert!(unsafe { queue.write_at(-1, past.as_ptr(), past.len(), 0) }.is_err());
    }

    #[test]
    fn many_callers_keep_the_ring_busy_without_losing_a_wake_up() {
        // More callers than the depth, coroutines and threads, each op waiting on the
        // I/O thread: a lost entry or wake-up hangs here.
        let Some(queue) = queue(8) else { return };
        let queue = Arc::new(queue);
        let (_dir, file) = empty_file("uring-stress");
        file.set_len(64 * 4096).unwrap();
        let fd = file.as_raw_fd();
        let callers: Vec<_> = (0..64u64)
            .map(|i| {
                let queue = queue.clone();
                let body = move || {
                    let mut buf = [i as u8; 4096];
                    for round in 0..400u64 {
                        let permit = queue.permit();
                        if round % 2 == 0 {
                            queue
                                .write_all_at(&permit, fd, BulkIn::from(&buf[..]), i * 4096)
                                .unwrap();
                        } else {
                            buf.fill(0);
                            queue
                                .read_exact_at(&permit, fd, BulkOut::from(&mut buf[..]), i * 4096)
                                .unwrap();
                            assert!(buf.iter().all(|&b| b == i as u8));
                        }
                    }
                };
                if i % 8 == 0 {
                    Err(std::thread::spawn(body))
                } else {
                    // SAFETY: the coroutine uses no thread-local storage.
                    Ok(crate::test_executor::spawn(body))
                }
            })
            .collect();
        for caller in callers {
            match caller {
                Ok(coroutine) => coroutine.join().unwrap(),
                Err(thread) => thread.join().unwrap(),
            }
        }
    }

    /// The threads of this process named `name` (as `/proc` shows them: 15 bytes at most).
    fn threads_named(name: &str) -> usize {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
            .filter(|comm| comm.trim_end() == name)
            .count()
    }

    #[test]
    fn tasks_on_an_executor_with_a_ring_start_no_io_thread() {
        let Some(queue) = queue(4) else { return };
        let queue = Arc::new(queue);
        let (_dir, file) = empty_file("uring-lazy");
        let fd = file.as_raw_fd();
        let runs: Vec<_> = (0..8u8)
            .map(|i| {
                let queue = queue.clone();
                crate::test_executor::spawn(move || {
                    // Whether this executor has a ring of its own (a kernel before 6.1
                    // has none, and the device's ring is then the way).
                    let nop = opcode::Nop::new().build();
                    // SAFETY: a no-op points to no buffer.
                    let has_ring = unsafe { chimaera_core::wait::submit_io(&nop) }.is_some();
                    write_and_read_back(&queue, fd, i);
                    queue.sync_data(&queue.permit(), fd).unwrap();
                    has_ring
                })
            })
            .collect();
        let rings: Vec<bool> = runs.into_iter().map(|run| run.join().unwrap()).collect();
        if rings.contains(&false) {
            println!("note: an executor has no ring of its own here; test skipped");
            return;
        }
        assert!(
            !queue.fallback_started(),
            "tasks with a worker ring started the device's I/O thread"
        );
    }

    #[test]
    fn threads_racing_for_the_first_operation_start_one_io_thread() {
        let Some(queue) = queue(4) else { return };
        // Named for this test alone: the thread count below sees the whole process.
        let queue = Arc::new(UringQueue::new("race", queue.depth() as u32).unwrap());
        let (dir, file) = empty_file("uring-race");
        let file = Arc::new(file);
        assert!(!queue.fallback_started());
        assert_eq!(
            threads_named("race-uring"),
            0,
            "started before any operation"
        );
        let go = Arc::new(std::sync::Barrier::new(8));
        let threads: Vec<_> = (0..8u8)
            .map(|i| {
                let (queue, file, go) = (queue.clone(), file.clone(), go.clone());
                std::thread::spawn(move || {
                    let data = [i; 512];
                    go.wait();
                    let permit = queue.permit();
                    let at = u64::from(i) * 512;
                    let fd = file.as_raw_fd();
                    queue
                        .write_all_at(&permit, fd, BulkIn::from(&data[..]), at)
                        .unwrap();
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        assert!(queue.fallback_started());
        assert_eq!(
            queue.starts.load(Ordering::Relaxed),
            1,
            "started more than once"
        );
        assert_eq!(
            threads_named("race-uring"),
            1,
            "one I/O thread for the device"
        );
        let bytes = std::fs::read(dir.file("f")).unwrap();
        for (i, chunk) in bytes.chunks(512).enumerate() {
            assert!(chunk.iter().all(|&b| b == i as u8), "chunk {i}");
        }
        // The last handle goes: the I/O thread is stopped and joined.
        drop(Arc::into_inner(queue).expect("the threads are done"));
        assert_eq!(
            threads_named("race-uring"),
            0,
            "the I/O thread outlived its queue"
        );
    }
}
