//! Coroutine-aware locks: [`CoMutex`] and [`CoRwLock`].
//!
//! A task that must wait for a lock parks *its coroutine* (a [`Blocker`]); the worker
//! thread goes on running other tasks. Waiters are served first-come first-served:
//! a release hands the lock directly to the waiter at the front of the queue (no
//! barging), so no waiter starves.
//!
//! **TaskNode groups.** A lock is held by a *group* — the `root` of the holder's
//! [`TaskNode`](crate::TaskNode) — with a count of holds. A task whose group already
//! holds the lock gets it at once, even while others wait. So when a lock holder waits on
//! a subtask that needs the same lock, the subtask (same root) goes through instead of
//! deadlocking — the original's TaskNode rule.
//!
//! **Why the guards give `&T`, never `&mut T`.** Tasks of one group may hold the same
//! lock at once, and may run on different worker threads. Handing each a `&mut T` would
//! create aliasing mutable references — undefined behaviour in Rust. So, as
//! `std::sync::ReentrantLock` does, guards deref to `&T` only and `T: Sync` is required:
//! put atomics, or small `std::sync::Mutex`-protected fields never held across a wait,
//! inside the lock. The lock then orders *which groups* touch the data; the data's own
//! types keep each access sound.
//!
//! **Upgrades.** A group that holds a [`CoRwLock`] for reading may ask to write (one of
//! its tasks reads and waits on a subtask that writes, say). Queued behind another
//! group's writer, such an upgrade would deadlock: the writer waits for the group's
//! read, the group's read waits for its upgrade. So an upgrade never queues behind
//! anyone: it is granted at once when the group holds the only read, and otherwise goes
//! to the front of the queue, granted the moment the other groups' reads end. Two groups
//! that both read and both ask to write would each wait for the other's read forever:
//! the second one's `write` fails with [`LockError::UpgradeConflict`] instead, and its
//! task can drop its read and let the first one through.
//!
//! The queue of waiters is guarded by a `std::sync::Mutex` held only for a few
//! instructions, never across a park. A parked waiter is woken on its own worker thread
//! (see `crate::coroutine`).
//!
//! **A holder that dies of a stack overflow.** Its stack cannot be unwound, so its guards
//! are never dropped. Each guard therefore registers its release with the running
//! coroutine (`coroutine::hold`); if the coroutine overflows, the worker runs
//! the release and the lock goes to the next waiter, as if the guard had been dropped:
//! waiters never hang. The data may be half-updated, as after a panic; the task that
//! overflowed failed with `TaskError::StackOverflow`. Guards are `!Send`, so a hold
//! always belongs to the coroutine that registered it.
use crate::coroutine::{self, Blocker, Release};
use crate::error::TaskError;
use crate::runtime::context::RunContext;
use crate::runtime::task::lock;
use std::collections::VecDeque;
use std::marker::PhantomData;
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Why a lock was not granted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LockError {
    /// The caller's group reads the [`CoRwLock`], and so does another group that already
    /// waits to write: both upgrades would wait for each other forever.
    #[error("another task group that reads this lock already waits to write; two such upgrades would wait for each other forever: drop the read guard before writing, or take the write lock first")]
    UpgradeConflict,
}

impl From<LockError> for TaskError {
    fn from(err: LockError) -> TaskError {
        match err {
            LockError::UpgradeConflict => TaskError::LockUpgradeConflict,
        }
    }
}

/// One parked task waiting for a lock.
struct Waiter {
    group: u64,
    mode: Mode,
    /// A reader group's request to write, queued ahead of every other group.
    upgrade: bool,
    granted: Arc<AtomicBool>,
    blocker: Arc<Blocker>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Shared,
    Exclusive,
}

impl Waiter {
    fn grant(self) {
        self.granted.store(true, Ordering::Release);
        self.blocker.unpark();
    }
}

/// Parks the current coroutine (or thread) until `granted` is set.
fn park_until(granted: &AtomicBool, blocker: &Arc<Blocker>) {
    while !granted.load(Ordering::Acquire) {
        // A spurious return re-checks the flag.
        let _ = blocker.park(None);
    }
}

/// Queues a waiter (at the back, or at the front for an upgrade) and returns what it
/// parks on.
fn enqueue(
    waiters: &mut VecDeque<Waiter>,
    group: u64,
    mode: Mode,
    upgrade: bool,
) -> (Arc<AtomicBool>, Arc<Blocker>) {
    let granted = Arc::new(AtomicBool::new(false));
    let blocker = Blocker::current();
    let waiter = Waiter {
        group,
        mode,
        upgrade,
        granted: granted.clone(),
        blocker: blocker.clone(),
    };
    if upgrade {
        waiters.push_front(waiter);
    } else {
        waiters.push_back(waiter);
    }
    (granted, blocker)
}

struct MutexState {
    holder: Option<u64>,
    holds: u32,
    waiters: VecDeque<Waiter>,
}

/// A mutual-exclusion lock for tasks; see the [module docs](self).
pub struct CoMutex<T: ?Sized = ()> {
    state: Mutex<MutexState>,
    data: T,
}

/// Proof that a task's group holds a [`CoMutex`]; releases it when dropped.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct CoMutexGuard<'a, T: ?Sized> {
    mutex: &'a CoMutex<T>,
    /// `!Send`: the hold is registered with the coroutine that took it.
    _not_send: PhantomData<*const ()>,
}

impl<'a, T: ?Sized> CoMutexGuard<'a, T> {
    /// A guard for a hold just taken; registers its release with the coroutine.
    fn held(mutex: &'a CoMutex<T>) -> Self {
        coroutine::hold(mutex_release(&mutex.state));
        CoMutexGuard {
            mutex,
            _not_send: PhantomData,
        }
    }
}

fn mutex_release(state: &Mutex<MutexState>) -> Release {
    /// # Safety
    /// `data` is a live `Mutex<MutexState>` with a hold to give back.
    unsafe fn release(data: *const (), _: [u64; 3]) {
        // SAFETY: registered by `mutex_release` from a `&Mutex<MutexState>` whose lock
        // outlives its guards (see `coroutine::Release`).
        unlock_mutex_state(unsafe { &*data.cast::<Mutex<MutexState>>() });
    }
    Release {
        data: (state as *const Mutex<MutexState>).cast(),
        words: [0; 3],
        release,
    }
}

impl<T> CoMutex<T> {
    /// A new, unlocked mutex around `data`.
    pub fn new(data: T) -> Self {
        CoMutex {
            state: Mutex::new(MutexState {
                holder: None,
                holds: 0,
                waiters: VecDeque::new(),
            }),
            data,
        }
    }
}

impl<T: ?Sized + Sync> CoMutex<T> {
    /// Acquires the lock for the calling task's group, parking the task until then.
    pub fn lock(&self, ctx: &RunContext) -> CoMutexGuard<'_, T> {
        self.lock_for_group(ctx.task_node().root)
    }

    /// Acquires the lock if no other group holds it.
    pub fn try_lock(&self, ctx: &RunContext) -> Option<CoMutexGuard<'_, T>> {
        let group = ctx.task_node().root;
        let mut state = lock(&self.state);
        if state.holder.is_none() || state.holder == Some(group) {
            state.holder = Some(group);
            state.holds += 1;
            drop(state);
            Some(CoMutexGuard::held(self))
        } else {
            None
        }
    }

    fn lock_for_group(&self, group: u64) -> CoMutexGuard<'_, T> {
        let (granted, blocker) = {
            let mut state = lock(&self.state);
            if state.holder.is_none() || state.holder == Some(group) {
                state.holder = Some(group);
                state.holds += 1;
                drop(state);
                return CoMutexGuard::held(self);
            }
            enqueue(&mut state.waiters, group, Mode::Exclusive, false)
        };
        park_until(&granted, &blocker);
        CoMutexGuard::held(self)
    }

    /// The number of tasks parked waiting for this lock.
    pub fn waiting(&self) -> usize {
        lock(&self.state).waiters.len()
    }
}

impl<T: ?Sized> Deref for CoMutexGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.mutex.data
    }
}

impl<T: ?Sized> Drop for CoMutexGuard<'_, T> {
    fn drop(&mut self) {
        coroutine::let_go(mutex_release(&self.mutex.state));
        unlock_mutex_state(&self.mutex.state);
    }
}

/// Releases one hold; the last hold of a group hands the lock to the front waiter and
/// the rest of that waiter's group.
fn unlock_mutex_state(state_lock: &Mutex<MutexState>) {
    let mut granted = Vec::new();
    {
        let mut state = lock(state_lock);
        state.holds -= 1;
        if state.holds > 0 {
            return;
        }
        state.holder = None;
        if let Some(next) = state.waiters.pop_front() {
            let group = next.group;
            state.holder = Some(group);
            state.holds = 1;
            granted.push(next);
            let mut index = 0;
            while index < state.waiters.len() {
                if state.waiters[index].group == group {
                    if let Some(waiter) = state.waiters.remove(index) {
                        state.holds += 1;
                        granted.push(waiter);
                    }
                } else {
                    index += 1;
                }
            }
        }
    }
    granted.into_iter().for_each(Waiter::grant);
}

struct RwState {
    writer: Option<u64>,
    writer_holds: u32,
    /// Groups holding the lock shared, with their hold counts.
    readers: Vec<(u64, u32)>,
    waiters: VecDeque<Waiter>,
}

impl RwState {
    fn reading(&self, group: u64) -> bool {
        self.readers.iter().any(|(g, _)| *g == group)
    }

    /// Whether `group` may take the lock in `mode` now, ignoring queued waiters.
    fn compatible(&self, group: u64, mode: Mode) -> bool {
        if self.writer == Some(group) {
            return true;
        }
        if self.writer.is_some() {
            return false;
        }
        match mode {
            Mode::Shared => true,
            Mode::Exclusive => self.readers.iter().all(|(g, _)| *g == group),
        }
    }

    /// Gives back one shared hold of `group` (counted as a writer hold if it was taken
    /// while the group wrote).
    fn release_read(&mut self, group: u64, as_writer: bool) {
        if as_writer {
            self.release_write();
        } else if let Some(index) = self.readers.iter().position(|(g, _)| *g == group) {
            self.readers[index].1 -= 1;
            if self.readers[index].1 == 0 {
                self.readers.swap_remove(index);
            }
        }
    }

    /// Gives back one exclusive hold.
    fn release_write(&mut self) {
        self.writer_holds -= 1;
        if self.writer_holds == 0 {
            self.writer = None;
        }
    }

    fn take(&mut self, group: u64, mode: Mode) {
        match mode {
            Mode::Exclusive => {
                self.writer = Some(group);
                self.writer_holds += 1;
            }
            Mode::Shared if self.writer == Some(group) => self.writer_holds += 1,
            Mode::Shared => match self.readers.iter_mut().find(|(g, _)| *g == group) {
                Some((_, count)) => *count += 1,
                None => self.readers.push((group, 1)),
            },
        }
    }
}

/// A reader-writer lock for tasks; see the [module docs](self).
pub struct CoRwLock<T: ?Sized = ()> {
    state: Mutex<RwState>,
    data: T,
}

/// Shared access to a [`CoRwLock`]; released when dropped.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct CoRwLockReadGuard<'a, T: ?Sized> {
    lock: &'a CoRwLock<T>,
    group: u64,
    counted_as_writer: bool,
    /// `!Send`: the hold is registered with the coroutine that took it.
    _not_send: PhantomData<*const ()>,
}

/// Exclusive (per group) access to a [`CoRwLock`]; released when dropped.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct CoRwLockWriteGuard<'a, T: ?Sized> {
    lock: &'a CoRwLock<T>,
    /// `!Send`: the hold is registered with the coroutine that took it.
    _not_send: PhantomData<*const ()>,
}

impl<'a, T: ?Sized> CoRwLockReadGuard<'a, T> {
    /// A guard for a shared hold just taken; registers its release with the coroutine.
    fn held(lock: &'a CoRwLock<T>, group: u64, counted_as_writer: bool) -> Self {
        coroutine::hold(read_release(&lock.state, group, counted_as_writer));
        CoRwLockReadGuard {
            lock,
            group,
            counted_as_writer,
            _not_send: PhantomData,
        }
    }
}

impl<'a, T: ?Sized> CoRwLockWriteGuard<'a, T> {
    /// A guard for an exclusive hold just taken; registers its release with the coroutine.
    fn held(lock: &'a CoRwLock<T>) -> Self {
        coroutine::hold(write_release(&lock.state));
        CoRwLockWriteGuard {
            lock,
            _not_send: PhantomData,
        }
    }
}

fn read_release(state: &Mutex<RwState>, group: u64, counted_as_writer: bool) -> Release {
    /// # Safety
    /// `data` is a live `Mutex<RwState>` with this shared hold to give back.
    unsafe fn release(data: *const (), [group, as_writer, _]: [u64; 3]) {
        // SAFETY: registered by `read_release` from a `&Mutex<RwState>` whose lock
        // outlives its guards (see `coroutine::Release`).
        let state = unsafe { &*data.cast::<Mutex<RwState>>() };
        release_and_grant(state, |state| state.release_read(group, as_writer != 0));
    }
    Release {
        data: (state as *const Mutex<RwState>).cast(),
        words: [group, u64::from(counted_as_writer), 0],
        release,
    }
}

fn write_release(state: &Mutex<RwState>) -> Release {
    /// # Safety
    /// `data` is a live `Mutex<RwState>` with an exclusive hold to give back.
    unsafe fn release(data: *const (), _: [u64; 3]) {
        // SAFETY: as in `read_release`.
        let state = unsafe { &*data.cast::<Mutex<RwState>>() };
        release_and_grant(state, RwState::release_write);
    }
    Release {
        data: (state as *const Mutex<RwState>).cast(),
        words: [0, 1, 0],
        release,
    }
}

impl<T> CoRwLock<T> {
    /// A new, unlocked reader-writer lock around `data`.
    pub fn new(data: T) -> Self {
        CoRwLock {
            state: Mutex::new(RwState {
                writer: None,
                writer_holds: 0,
                readers: Vec::new(),
                waiters: VecDeque::new(),
            }),
            data,
        }
    }
}

impl<T: ?Sized + Sync> CoRwLock<T> {
    /// Shared access: many groups read at once; waits while another group writes or a
    /// writer is queued ahead (so writers do not starve).
    pub fn read(&self, ctx: &RunContext) -> CoRwLockReadGuard<'_, T> {
        self.read_for_group(ctx.task_node().root)
    }

    fn read_for_group(&self, group: u64) -> CoRwLockReadGuard<'_, T> {
        let (granted, blocker, counted_as_writer) = {
            let mut state = lock(&self.state);
            let counted_as_writer = state.writer == Some(group);
            let may_pass = state.compatible(group, Mode::Shared)
                && (state.waiters.is_empty() || counted_as_writer || state.reading(group));
            if may_pass {
                state.take(group, Mode::Shared);
                drop(state);
                return CoRwLockReadGuard::held(self, group, counted_as_writer);
            }
            let (granted, blocker) = enqueue(&mut state.waiters, group, Mode::Shared, false);
            (granted, blocker, false)
        };
        park_until(&granted, &blocker);
        // A queued reader is granted only as a reader (see `release_and_grant`).
        CoRwLockReadGuard::held(self, group, counted_as_writer)
    }

    /// Exclusive access for the calling task's group. When the group already reads,
    /// this is an upgrade (see the [module docs](self)): granted at once if the group
    /// holds the only read, else ahead of every other waiter once the other reads end;
    /// [`LockError::UpgradeConflict`] if another reading group already waits to write.
    pub fn write(&self, ctx: &RunContext) -> Result<CoRwLockWriteGuard<'_, T>, LockError> {
        self.write_for_group(ctx.task_node().root)
    }

    fn write_for_group(&self, group: u64) -> Result<CoRwLockWriteGuard<'_, T>, LockError> {
        let (granted, blocker) = {
            let mut state = lock(&self.state);
            let upgrade = state.reading(group) && state.writer != Some(group);
            let may_pass = state.compatible(group, Mode::Exclusive)
                && (upgrade || state.waiters.is_empty() || state.writer == Some(group));
            if may_pass {
                state.take(group, Mode::Exclusive);
                drop(state);
                return Ok(CoRwLockWriteGuard::held(self));
            }
            let conflict = upgrade
                && state
                    .waiters
                    .iter()
                    .any(|waiter| waiter.upgrade && waiter.group != group);
            if conflict {
                return Err(LockError::UpgradeConflict);
            }
            enqueue(&mut state.waiters, group, Mode::Exclusive, upgrade)
        };
        park_until(&granted, &blocker);
        Ok(CoRwLockWriteGuard::held(self))
    }

    /// The number of tasks parked waiting for this lock.
    pub fn waiting(&self) -> usize {
        lock(&self.state).waiters.len()
    }
}

/// Applies `release` to the state, then grants queued waiters in order while they are
/// compatible with the holders.
fn release_and_grant(state_lock: &Mutex<RwState>, release: impl FnOnce(&mut RwState)) {
    let mut granted = Vec::new();
    {
        let mut state = lock(state_lock);
        release(&mut state);
        while let Some(front) = state.waiters.front() {
            if !state.compatible(front.group, front.mode) {
                break;
            }
            if let Some(waiter) = state.waiters.pop_front() {
                // A queued reader counts as a reader even if its group now writes;
                // its guard releases a reader hold.
                match waiter.mode {
                    Mode::Shared => {
                        match state.readers.iter_mut().find(|(g, _)| *g == waiter.group) {
                            Some((_, count)) => *count += 1,
                            None => state.readers.push((waiter.group, 1)),
                        }
                    }
                    Mode::Exclusive => state.take(waiter.group, Mode::Exclusive),
                }
                granted.push(waiter);
            }
        }
    }
    granted.into_iter().for_each(Waiter::grant);
}

impl<T: ?Sized> Deref for CoRwLockReadGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.lock.data
    }
}

impl<T: ?Sized> Drop for CoRwLockReadGuard<'_, T> {
    fn drop(&mut self) {
        let (group, as_writer) = (self.group, self.counted_as_writer);
        coroutine::let_go(read_release(&self.lock.state, group, as_writer));
        release_and_grant(&self.lock.state, |state| {
            state.release_read(group, as_writer)
        });
    }
}

impl<T: ?Sized> Deref for CoRwLockWriteGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.lock.data
    }
}

impl<T: ?Sized> Drop for CoRwLockWriteGuard<'_, T> {
    fn drop(&mut self) {
        coroutine::let_go(write_release(&self.lock.state));
        release_and_grant(&self.lock.state, RwState::release_write);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    /// Long enough that only a deadlock (the bug these tests pin) reaches it.
    const HANG: Duration = Duration::from_secs(30);

    fn wait_for_waiters(lock: &CoRwLock, count: usize) {
        let deadline = Instant::now() + HANG;
        while lock.waiting() < count {
            assert!(Instant::now() < deadline, "no waiter queued");
            std::thread::yield_now();
        }
    }

    /// Group `group` asks to write on another thread (which a deadlock leaves parked;
    /// the test then fails instead of hanging); the receiver gets whether it was
    /// granted.
    fn write_elsewhere(lock: &Arc<CoRwLock>, group: u64) -> mpsc::Receiver<bool> {
        let (done, granted) = mpsc::channel();
        let lock = lock.clone();
        std::thread::spawn(move || {
            let write = lock.write_for_group(group);
            let _ = done.send(write.is_ok());
        });
        granted
    }

    #[test]
    fn a_sole_reader_upgrades_past_a_queued_writer() {
        let lock = Arc::new(CoRwLock::new(()));
        let read = lock.read_for_group(1);
        let plain_writer = write_elsewhere(&lock, 2);
        wait_for_waiters(&lock, 1);
        // Group 1 reads and asks to write while group 2's writer waits for that read.
        let upgrade = write_elsewhere(&lock, 1);
        assert_eq!(upgrade.recv_timeout(HANG), Ok(true), "upgrade deadlocked");
        drop(read);
        assert_eq!(plain_writer.recv_timeout(HANG), Ok(true));
    }

    #[test]
    fn the_second_of_two_upgrading_readers_fails_and_the_first_goes_through() {
        let lock = Arc::new(CoRwLock::new(()));
        let read_one = lock.read_for_group(1);
        let read_two = lock.read_for_group(2);
        let plain_writer = write_elsewhere(&lock, 3);
        wait_for_waiters(&lock, 1);
        let first = write_elsewhere(&lock, 1);
        wait_for_waiters(&lock, 2);
        let second = write_elsewhere(&lock, 2);
        assert_eq!(
            second.recv_timeout(HANG),
            Ok(false),
            "the second upgrade must fail, not wait"
        );
        assert_eq!(
            lock.write_for_group(2).err(),
            Some(LockError::UpgradeConflict)
        );
        drop(read_two);
        assert_eq!(first.recv_timeout(HANG), Ok(true), "upgrade deadlocked");
        drop(read_one);
        assert_eq!(plain_writer.recv_timeout(HANG), Ok(true));
    }
}
