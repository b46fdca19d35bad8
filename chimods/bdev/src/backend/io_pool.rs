//! A small pool of I/O threads that runs blocking file calls for parked tasks.
//!
//! Runtime workers must never block in a system call: a task that needs `pread`,
//! `pwrite` or `fdatasync` hands a closure to [`IoPool::run`], which queues it for an
//! I/O thread and **parks the task's coroutine** (a
//! [`Blocker`]; the worker goes on
//! with other tasks) until the closure has run, then returns its result. Called from a
//! plain thread, the same call parks that thread.
//!
//! **Depth.** At most `depth` closures are queued or running at once per pool: a caller
//! first takes a permit from a coroutine-aware counting semaphore ([`Permits`];
//! waiting for it parks the coroutine) and gives it back when its closure is done.
//! Threads are started on demand, one more whenever a closure is queued while none is
//! idle, up to `depth`; so a device kept at depth 32 has 32 system calls in flight (what
//! `O_DIRECT` needs to keep a disk busy). A thread that waits [`IDLE_EXIT`] for a job
//! ends, so an idle device keeps no thread (most devices use the pool only to open
//! their file: their reads and writes go through `io_uring`). Threads end when the pool
//! is dropped.
//!
//! **No job is stranded by a thread that ends.** A caller that saw an idle thread sends
//! its job; a thread whose wait ran out uncounts itself, then looks at the queue once
//! more. After sending, the caller looks at the thread count and starts a thread if
//! there is none. Both sides put a `SeqCst` fence between their write and their read,
//! so at least one sees the other: the ending thread takes the job, or the caller
//! starts a thread for it.
//!
//! **Borrowed data, soundly.** [`IoPool::run`] lets the closure borrow the caller's
//! data (the caller's buffer goes to the kernel as it is: no copy), like
//! `std::thread::scope`: the caller does not return before the closure has been run or
//! dropped. The wait cannot be cut short: coroutines are never cancelled, and nothing in the wait loop can panic. A job signals completion only after the
//! closure (and all it borrowed) is gone. Each thread owns a [`Scratch`] buffer it lends
//! to the closures it runs (bounce buffers for `O_DIRECT`), so steady-state I/O
//! allocates no buffers.
//!
//! A closure that panics is caught on its I/O thread (which lives on) and its caller
//! gets [`PoolError::JobFailed`].
use crate::permits::Permits;
use chimaera_core::wait::Blocker;
use crossbeam_channel as mpmc;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{fence, AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Stack of an I/O thread: closures only make system calls and copy into heap buffers.
const IO_THREAD_STACK: usize = 256 * 1024;

/// How long an I/O thread waits for a job before it ends.
pub const IDLE_EXIT: Duration = Duration::from_secs(5);

/// Why a closure did not run to completion.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    /// The closure panicked, or was dropped unrun because the pool shut down.
    #[error("the I/O job panicked or was dropped before it ran")]
    JobFailed,
    /// No I/O thread runs and none could be started.
    #[error("no I/O thread could be started: {0}")]
    NoThread(String),
}

/// A per-thread buffer lent to each closure, for aligned bounce buffers.
#[derive(Debug, Default)]
pub struct Scratch {
    buf: Vec<u8>,
}

impl Scratch {
    /// A slice of `len` bytes whose address is a multiple of `align` (a power of two),
    /// reusing this buffer's memory. Its contents are left from earlier use: callers
    /// overwrite every byte they pass on.
    pub fn aligned(&mut self, len: usize, align: usize) -> Option<&mut [u8]> {
        let needed = len.checked_add(align)?;
        if self.buf.len() < needed {
            self.buf.resize(needed, 0);
        }
        let start = self.buf.as_ptr().align_offset(align);
        self.buf.get_mut(start..start.checked_add(len)?)
    }
}

/// Where a job's result goes, and the caller parked waiting for it.
struct Slot<R> {
    result: Mutex<Option<R>>,
    done: AtomicBool,
    blocker: Arc<Blocker>,
}

impl<R> Slot<R> {
    /// Stores the result (`None`: the job failed), then wakes the caller. Called once.
    fn fill(&self, result: Option<R>) {
        *self.result.lock().unwrap_or_else(|p| p.into_inner()) = result;
        self.done.store(true, Ordering::Release);
        // The waiter resumes on its own worker's thread (its blocker queues it there).
        self.blocker.unpark();
    }
}

/// A queued closure, type-erased.
trait Job: Send {
    fn run(self: Box<Self>, scratch: &mut Scratch);
}

/// A closure and the slot its result goes to. Whether it runs or is dropped unrun, the
/// slot is filled only after the closure is gone (see `Drop`).
struct ScopedJob<F, R> {
    work: Option<F>,
    slot: Arc<Slot<R>>,
}

impl<F, R> Job for ScopedJob<F, R>
where
    F: FnOnce(&mut Scratch) -> R + Send,
    R: Send,
{
    fn run(mut self: Box<Self>, scratch: &mut Scratch) {
        if let Some(work) = self.work.take() {
            let result = work(scratch);
            self.slot.fill(Some(result));
        }
    }
}

impl<F, R> Drop for ScopedJob<F, R> {
    fn drop(&mut self) {
        drop(self.work.take());
        if !self.slot.done.load(Ordering::Acquire) {
            self.slot.fill(None);
        }
    }
}

/// State shared by the pool's handle and its threads.
struct Counters {
    threads: AtomicUsize,
    idle: AtomicUsize,
}

/// A pool of I/O threads with a bound on closures in flight; see the [module docs](self).
pub struct IoPool {
    jobs: mpmc::Sender<Box<dyn Job>>,
    /// Kept to hand a receiver to each new thread.
    queue: mpmc::Receiver<Box<dyn Job>>,
    counters: Arc<Counters>,
    permits: Permits,
    depth: usize,
    name: String,
    /// How long a thread waits for a job before it ends ([`IDLE_EXIT`]).
    idle_exit: Duration,
    /// A pause between finding a thread and sending the job, for the tests of the race
    /// with a thread that ends.
    #[cfg(test)]
    pause_before_send: Duration,
}

/// Gives a permit back when dropped, so a caller unwinding still returns it.
struct Permit<'a>(&'a Permits);

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        self.0.post();
    }
}

impl IoPool {
    /// A pool named `name` (thread names) with at most `depth` closures in flight
    /// (`depth` 0 counts as 1). Starts no thread yet.
    pub fn new(name: &str, depth: u32) -> Self {
        Self::with_idle_exit(name, depth, IDLE_EXIT)
    }

    /// As [`new`](Self::new), with threads that end after waiting `idle_exit` for a job.
    pub fn with_idle_exit(name: &str, depth: u32, idle_exit: Duration) -> Self {
        let depth = depth.max(1) as usize;
        let (jobs, queue) = mpmc::unbounded();
        IoPool {
            jobs,
            queue,
            counters: Arc::new(Counters {
                threads: AtomicUsize::new(0),
                idle: AtomicUsize::new(0),
            }),
            permits: Permits::new(depth),
            depth,
            name: name.to_owned(),
            idle_exit,
            #[cfg(test)]
            pause_before_send: Duration::ZERO,
        }
    }

    /// The bound on closures in flight.
    pub fn depth(&self) -> usize {
        self.depth
    }

    /// I/O threads running now.
    pub fn threads(&self) -> usize {
        self.counters.threads.load(Ordering::Relaxed)
    }

    /// Runs `work` on an I/O thread and returns its result, parking the calling
    /// coroutine (or thread) meanwhile. `work` may borrow from the caller.
    pub fn run<'env, F, R>(&self, work: F) -> Result<R, PoolError>
    where
        F: FnOnce(&mut Scratch) -> R + Send + 'env,
        R: Send + 'static,
    {
        self.permits.wait();
        let _permit = Permit(&self.permits);
        self.ensure_thread()?;
        let slot = Arc::new(Slot {
            result: Mutex::new(None),
            done: AtomicBool::new(false),
            blocker: Blocker::current(),
        });
        let job: Box<dyn Job + 'env> = Box::new(ScopedJob {
            work: Some(work),
            slot: slot.clone(),
        });
        // SAFETY: only the lifetime bound changes (same vtable, same layout). What the
        // job borrows for 'env is reachable only through its `work`, which is consumed
        // or dropped before the slot is marked done (`ScopedJob::run` and `Drop`). This
        // function does not return before it sees `done`: the loop below cannot panic,
        // and coroutines are never cancelled, so no unwinding can skip it.
        // If the send fails, the job comes back and is dropped right here, which marks
        // `done` too. So no borrow outlives 'env.
        let job: Box<dyn Job + 'static> =
            unsafe { std::mem::transmute::<Box<dyn Job + 'env>, Box<dyn Job + 'static>>(job) };
        #[cfg(test)]
        std::thread::sleep(self.pause_before_send);
        if let Err(unsent) = self.jobs.send(job) {
            drop(unsent);
        }
        // A thread counted as idle above may have ended meanwhile without seeing the job
        // (see the module docs): then no thread is left to take it.
        fence(Ordering::SeqCst);
        if self.counters.threads.load(Ordering::SeqCst) == 0 {
            // No thread runs and none can start: every queued job (this one among them)
            // would wait for the pool's drop. Fail them now (a dropped job fails its
            // caller with `JobFailed`).
            if let Err(err) = self.ensure_thread() {
                tracing::warn!("{err}; failing the queued I/O jobs");
                while let Ok(job) = self.queue.try_recv() {
                    drop(job);
                }
            }
        }
        while !slot.done.load(Ordering::Acquire) {
            // A spurious or early return re-checks the flag.
            let _ = slot.blocker.park(None);
        }
        let result = slot.result.lock().unwrap_or_else(|p| p.into_inner()).take();
        result.ok_or(PoolError::JobFailed)
    }

    /// Starts a thread if none is idle and the pool is below its depth.
    fn ensure_thread(&self) -> Result<(), PoolError> {
        let counters = &self.counters;
        if counters.idle.load(Ordering::Acquire) > 0 {
            return Ok(());
        }
        let started = counters.threads.load(Ordering::Acquire);
        if started >= self.depth
            || counters
                .threads
                .compare_exchange(started, started + 1, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
        {
            // Another caller is starting one, or the pool is at its depth: a running
            // thread will take the job.
            return Ok(());
        }
        let queue = self.queue.clone();
        let thread_counters = counters.clone();
        let idle_exit = self.idle_exit;
        let spawned = std::thread::Builder::new()
            .name(format!("{}-io-{started}", self.name))
            .stack_size(IO_THREAD_STACK)
            .spawn(move || serve(queue, thread_counters, idle_exit));
        match spawned {
            Ok(_) => Ok(()),
            Err(err) => {
                let now = counters.threads.fetch_sub(1, Ordering::AcqRel) - 1;
                if now == 0 {
                    Err(PoolError::NoThread(err.to_string()))
                } else {
                    tracing::warn!("cannot start another I/O thread for {}: {err}", self.name);
                    Ok(())
                }
            }
        }
    }
}

impl std::fmt::Debug for IoPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IoPool")
            .field("name", &self.name)
            .field("depth", &self.depth)
            .field("threads", &self.threads())
            .finish_non_exhaustive()
    }
}

/// An I/O thread: runs jobs until every sender is gone or it waited `idle_exit` for one.
fn serve(queue: mpmc::Receiver<Box<dyn Job>>, counters: Arc<Counters>, idle_exit: Duration) {
    let mut scratch = Scratch::default();
    loop {
        counters.idle.fetch_add(1, Ordering::SeqCst);
        let waited = queue.recv_timeout(idle_exit);
        counters.idle.fetch_sub(1, Ordering::SeqCst);
        let job = match waited {
            Ok(job) => job,
            Err(mpmc::RecvTimeoutError::Disconnected) => break,
            Err(mpmc::RecvTimeoutError::Timeout) => {
                counters.threads.fetch_sub(1, Ordering::SeqCst);
                // A caller that saw this thread idle may have sent a job since the wait
                // ended: take it and serve on, or that caller sees the count lowered and
                // starts a thread (see the module docs).
                fence(Ordering::SeqCst);
                match queue.try_recv() {
                    Ok(job) => {
                        counters.threads.fetch_add(1, Ordering::SeqCst);
                        job
                    }
                    Err(_) => return,
                }
            }
        };
        // A panicking job has filled its slot with a failure while unwinding.
        if catch_unwind(AssertUnwindSafe(|| job.run(&mut scratch))).is_err() {
            scratch = Scratch::default();
        }
    }
    counters.threads.fetch_sub(1, Ordering::SeqCst);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn closures_borrow_caller_data_and_return_results() {
        let pool = IoPool::new("test", 4);
        let mut data = vec![1u8, 2, 3];
        let sum = pool
            .run(|_| {
                data.push(4);
                data.iter().map(|&b| u32::from(b)).sum::<u32>()
            })
            .unwrap();
        assert_eq!(sum, 10);
        assert_eq!(data, [1, 2, 3, 4]);
    }

    #[test]
    fn a_panicking_closure_is_an_error_and_the_pool_lives_on() {
        let pool = IoPool::new("test", 1);
        let err = pool.run(|_| -> u32 { panic!("boom") }).unwrap_err();
        assert_eq!(err, PoolError::JobFailed);
        assert_eq!(pool.run(|_| 7).unwrap(), 7);
        assert_eq!(pool.threads(), 1);
    }

    #[test]
    fn scratch_slices_are_aligned() {
        let mut scratch = Scratch::default();
        for align in [512usize, 4096, 1 << 20] {
            let slice = scratch.aligned(10_000, align).unwrap();
            assert_eq!(slice.as_ptr() as usize % align, 0);
            assert_eq!(slice.len(), 10_000);
            slice.fill(0xff);
        }
        assert!(scratch.aligned(usize::MAX, 4096).is_none());
    }

    #[test]
    fn no_more_than_depth_closures_are_in_flight() {
        let pool = Arc::new(IoPool::new("test", 3));
        let inside = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let callers: Vec<_> = (0..12)
            .map(|_| {
                let (pool, inside, most) = (pool.clone(), inside.clone(), most.clone());
                std::thread::spawn(move || {
                    pool.run(|_| {
                        let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(5));
                        inside.fetch_sub(1, Ordering::SeqCst);
                    })
                    .unwrap();
                })
            })
            .collect();
        for caller in callers {
            caller.join().unwrap();
        }
        assert!(most.load(Ordering::SeqCst) <= 3);
        assert!(pool.threads() <= 3);
    }

    #[test]
    fn coroutines_park_while_their_closure_runs() {
        let pool = Arc::new(IoPool::new("test", 8));
        let handles: Vec<_> = (0..16u64)
            .map(|i| {
                let pool = pool.clone();
                crate::test_executor::spawn(move || {
                    let local = [i; 4];
                    pool.run(|_| local.iter().sum::<u64>()).unwrap()
                })
            })
            .collect();
        for (i, handle) in handles.into_iter().enumerate() {
            assert_eq!(handle.join().unwrap(), 4 * i as u64);
        }
    }

    #[test]
    fn an_idle_thread_ends_and_the_next_call_starts_one() {
        let pool = IoPool::with_idle_exit("test", 4, Duration::from_millis(20));
        assert_eq!(pool.run(|_| 1).unwrap(), 1);
        assert_eq!(pool.threads(), 1);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while pool.threads() > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the idle thread never ended"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(pool.run(|_| 2).unwrap(), 2);
        assert_eq!(pool.threads(), 1);
    }

    #[test]
    fn a_thread_that_ends_after_a_caller_counted_on_it_strands_no_job() {
        let mut pool = IoPool::with_idle_exit("test", 2, Duration::from_millis(50));
        assert_eq!(pool.run(|_| 1).unwrap(), 1);
        // The thread is idle now, and ends 50 ms later: after this caller found it idle
        // and before its job is sent.
        std::thread::sleep(Duration::from_millis(10));
        pool.pause_before_send = Duration::from_millis(150);
        let pool = Arc::new(pool);
        let (done, finished) = std::sync::mpsc::channel();
        let caller = pool.clone();
        std::thread::spawn(move || done.send(caller.run(|_| 2)).unwrap());
        let answer = finished
            .recv_timeout(Duration::from_secs(30))
            .expect("the job was stranded: no thread took it");
        assert_eq!(answer.unwrap(), 2);
    }

    #[test]
    fn threads_ending_while_callers_come_strand_no_job() {
        // Threads that end after 1 ms idle, callers that pause about that long between
        // calls: jobs keep arriving just as threads give up. A stranded job hangs its
        // caller; the watchdog below turns that into a failure.
        let pool = Arc::new(IoPool::with_idle_exit("test", 2, Duration::from_millis(1)));
        let (done, finished) = std::sync::mpsc::channel();
        for caller in 0..6u64 {
            let (pool, done) = (pool.clone(), done.clone());
            std::thread::spawn(move || {
                for call in 0..300u64 {
                    assert_eq!(pool.run(|_| caller * call).unwrap(), caller * call);
                    let pause = (caller * 7 + call * 13) % 3;
                    std::thread::sleep(Duration::from_micros(500 * pause));
                }
                done.send(()).unwrap();
            });
        }
        for _ in 0..6 {
            finished
                .recv_timeout(Duration::from_secs(60))
                .expect("a caller hung: its job was stranded");
        }
    }

    #[test]
    fn coroutines_find_a_thread_after_the_pool_went_idle() {
        let pool = Arc::new(IoPool::with_idle_exit("test", 2, Duration::from_millis(1)));
        for round in 0..20u64 {
            let handles: Vec<_> = (0..4u64)
                .map(|i| {
                    let pool = pool.clone();
                    crate::test_executor::spawn(move || pool.run(move |_| round + i).unwrap())
                })
                .collect();
            for (i, handle) in handles.into_iter().enumerate() {
                assert_eq!(handle.join().unwrap(), round + i as u64);
            }
            std::thread::sleep(Duration::from_millis(3));
        }
    }
}
