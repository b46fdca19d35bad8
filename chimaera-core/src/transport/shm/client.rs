//! A client process's end of the shared-memory transport.
//!
//! [`ShmConnection::connect`] connects to the runtime's Unix socket and receives an area
//! of its own (a memfd no other client maps), the sealed runtime page and its worker's
//! doorbell eventfd ([`super::handshake`]); it maps the area and attaches as the
//! producer of the area's ring. The socket stays open: it is this client's liveness to
//! the runtime, and the runtime's to this client.
//!
//! **A call**: take a free slot (the slot is the client's until it consumes the result),
//! write the task header and the input (in the slot's payload, or in a buffer of the
//! client's data share when larger), push the slot index, and write the worker's eventfd
//! only if the runtime page says that worker sleeps. Then wait: spin on the slot state
//! for a bounded time, then announce `waiting` and sleep on the slot's futex in short
//! timed waits. The bound is in time, not in spins. The connection's only call in
//! flight (a sync caller) spins up to 200 µs; a call waited on while others are in
//! flight (a pipelined window) only 25 µs: a pipelined client whose oldest call waits
//! behind other clients' tasks sleeps instead of spinning, so on a machine with fewer
//! cores than clients plus workers, more clients do not take the worker's CPU (the
//! runtime wakes a sleeper once, with the answer it waits for, and the client then
//! finds the rest of its window answered or nearly). The sleeps are timed: each timeout checks the socket,
//! so a dead runtime fails the call with `RuntimeStopped`, and a runtime that disowned
//! this client fails it with `Disowned`, within about 100 ms instead of hanging.
//!
//! **Async callers** poll instead of sleeping: [`ShmCall::poll_done`] records the task's
//! waker by slot and sets the slot's `WAITING_WATCHER` bit, then re-checks the slot (the
//! runtime publishes `DONE` before it reads `WAITING`, the client sets `WAITING` before
//! it re-reads `DONE`, both `SeqCst`: one of them sees the other). The first poll starts
//! this connection's one *reply watcher* thread. It sleeps on the control line's reply
//! bell, which the runtime bumps and wakes after answering a slot with that bit set; it
//! then wakes the wakers of every answered slot. It reads the bell before scanning the
//! slots, so a reply posted during the scan makes its next futex wait return at once. It
//! sleeps in the same short timed waits as a blocked caller, to notice a dead runtime
//! (then it wakes every waker: the futures fail with `RuntimeStopped`), and on a condvar,
//! with no timeout, while no call is polled. Sync callers never start it and pay nothing.
//!
//! **Abandoning** (a deadline passed, or the caller dropped the call): the call's slot
//! stays the client's until the runtime answers it, but the client asks the runtime to
//! answer it at once. One slot, the last, is kept out of the free list as this
//! connection's *control slot* (when the ring has more than one): it carries one
//! `KIND_ABANDON` request at a time, whose payload lists abandoned slots (as many as it
//! holds); slots abandoned meanwhile wait in a list, sent as the control slot's
//! previous request is answered (checked whenever slots are harvested or a call is
//! abandoned). Submissions go through the ring in order, so the runtime has taken the
//! abandoned call before it reads the request. An abandoned slot is freed once answered
//! and no request naming it is still in the control slot (a request read late must not
//! abandon the slot's next call). Abandoning never blocks the caller.
//!
//! **Disowned**: a runtime that finds this client's memory broken stores `AREA_DISOWNED`
//! in the control line, wakes every slot and hangs up. Every submission checks that word
//! (one load), so the next call fails with [`TaskError::Disowned`].
//!
//! **Backpressure**: the ring has one entry per slot, so it never overflows; when every
//! slot is taken, a submission waits for one to free (a slot whose call was dropped
//! unanswered frees when its result arrives). The slots are the runtime's
//! `queue_depth` (less the control slot): the bound on this client's calls in flight,
//! besides the runtime's `quotas.tasks_in_flight`, which fails tasks over it with
//! `QuotaExceeded`.
use super::handshake::{self, Grant, HandshakeError, Reply, Request};
use super::runtime_page::RuntimePageView;
use super::wire::{
    self, read_shared, slot, write_shared, AreaGeometry, InputPlace, OutputPlace, ReplyStatus,
    SlotReply, SlotRequest, SlotView, TaskRequest, CONTROL_STATE,
};
use crate::bulk::{Buffer, BufferError, BulkRef, BulkWire, BUFFER_ALIGN};
use crate::codec::{aligned_copy, decode, Bytes, OutputBuffer, SliceRef};
use crate::error::TaskError;
use crate::ids::{ContainerId, MethodId, PoolId};
use crate::query::PoolQuery;
use crate::shm::arena::{Arena, Extent};
use crate::shm::futex;
use crate::shm::naming::{InstanceName, ShmName};
use crate::shm::ring::Ring;
use crate::shm::segment::Segment;
use crate::sync::lock;
use crate::transport::call::{decode_first, Route, Schedule};
use rustix::event::{PollFd, PollFlags};
use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::task::Waker;
use std::time::{Duration, Instant};

/// How long a waiting client sleeps between checks that the runtime is alive.
const LIVENESS_CHECK: Duration = Duration::from_millis(100);
/// How long a call waited on while others of the connection are in flight (a pipelined
/// window) spins on its slot before it sleeps there: many times a round trip, yet short
/// enough that clients whose calls wait behind other clients' tasks give the CPU back
/// to the runtime's worker (on a small machine, more spinning clients would otherwise
/// mean less throughput for all).
const SPIN_WITH_OTHERS_IN_FLIGHT: Duration = Duration::from_micros(25);
/// How long the connection's only call in flight spins before it sleeps: a sync caller
/// waits for nothing else, and a runtime busy for a while (or descheduled on a loaded
/// machine) should not cost every call a sleep and a wake-up.
const SPIN_ALONE: Duration = Duration::from_micros(200);
/// From this long into the spin, each check yields the CPU once (to a runnable thread
/// that may be the one we wait for): after a sync call's usual round trip, so a quick
/// answer costs no system call.
const YIELD_AFTER: Duration = Duration::from_micros(4);
/// Spins between two looks at the clock (and at a harvest taking the call's slot).
const SPINS_PER_CHECK: u32 = 256;
/// How long the runtime may take to answer the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a client could not attach to a runtime.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// No runtime holds the instance.
    #[error("no chimaera runtime is running for instance `{instance}`; start one with `chimaera runtime start` (same CHI_SERVER_CONF / CHI_INSTANCE)")]
    NotRunning {
        /// The instance looked for.
        instance: String,
    },
    /// The configuration could not be read.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// Every client area is taken.
    #[error("all {max_clients} client slots of instance `{instance}` are taken; raise max_clients in the runtime's config")]
    Full {
        /// The instance.
        instance: String,
        /// Its client areas.
        max_clients: u32,
    },
    /// The runtime does not serve this user.
    #[error("the runtime of instance `{instance}` refuses uid {uid} (gid {gid}); ask its owner to list the uid or gid under `access:` in the runtime's config")]
    PermissionDenied {
        /// The instance.
        instance: String,
        /// This process's uid, as the runtime saw it.
        uid: u32,
        /// This process's gid, as the runtime saw it.
        gid: u32,
    },
    /// What is at the runtime's socket cannot be trusted (a planted link or file, a
    /// directory others may write, or a process of another user listening there).
    #[error("refusing to attach to instance `{instance}`: {detail}")]
    Untrusted {
        /// The instance.
        instance: String,
        /// What was found.
        detail: String,
    },
    /// The runtime speaks another handshake.
    #[error("the runtime of instance `{instance}` answered in a way this client does not understand ({detail}); use the same chimaera version on both sides")]
    Incompatible {
        /// The instance.
        instance: String,
        /// What was wrong.
        detail: String,
    },
    /// The runtime is starting or stopping; try again.
    #[error("the runtime of instance `{instance}` is not ready (starting or stopping)")]
    NotReady {
        /// The instance.
        instance: String,
    },
    /// The socket or a mapping failed.
    #[error("cannot attach to the runtime of instance `{instance}`: {detail}")]
    Io {
        /// The instance.
        instance: String,
        /// What failed.
        detail: String,
    },
}

struct Producer {
    ring: Ring,
}

/// An attached client area.
pub struct ShmConnection {
    instance: InstanceName,
    geometry: AreaGeometry,
    grant: Grant,
    main: Segment,
    page: RuntimePageView,
    doorbell: OwnedFd,
    socket: UnixStream,
    producer: Mutex<Producer>,
    free_slots: Mutex<Vec<u32>>,
    /// The state of the latest call of each slot, indexed by slot (slots are dense, so
    /// no hashing); it holds the slot while its `slot` field is `Some`.
    holding: Mutex<Vec<Option<Arc<CallState>>>>,
    slot_freed: Condvar,
    /// Submitters blocked on `slot_freed`; changed under the `free_slots` lock, so a
    /// release that sees 0 there skips the notify (a futex syscall) safely.
    slot_waiters: AtomicUsize,
    data: Mutex<Arena>,
    /// Where typed clients archive inputs before they are copied into a slot.
    encode_buffer: Mutex<OutputBuffer>,
    /// The runtime is gone (`RuntimeStopped`) or disowned us (`Disowned`).
    dead: Mutex<Option<TaskError>>,
    dead_flag: AtomicBool,
    /// The slot that carries abandon requests (`None` with a single slot: abandoned
    /// calls then free their slot when answered).
    control_slot: Option<u32>,
    abandons: Mutex<Abandons>,
    /// Wakers of polled calls and the reply watcher.
    watch: Arc<Watch>,
}

/// Abandoned calls the runtime has not been told about yet, and the one it is being
/// told about in the control slot.
#[derive(Default)]
struct Abandons {
    waiting: Vec<u32>,
    sent: Vec<u32>,
}

/// What the reply watcher shares with the connection's callers.
struct Watch {
    /// The waker of each slot's polled call.
    wakers: Mutex<Vec<Option<Waker>>>,
    /// Signalled when a waker is registered (an idle watcher sleeps on it) and when the
    /// connection closes.
    registered: Condvar,
    /// The watcher sleeps on `registered` (changed under the `wakers` lock, so a
    /// registration that sees `false` needs no notify).
    idle: AtomicBool,
    closed: AtomicBool,
    started: AtomicBool,
}

impl Watch {
    fn new(slots: u32) -> Watch {
        Watch {
            wakers: Mutex::new(vec![None; slots as usize]),
            registered: Condvar::new(),
            idle: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            started: AtomicBool::new(false),
        }
    }

    /// Takes the waker of `slot_index`, if its call registered one.
    fn take(&self, slot_index: u32) -> Option<Waker> {
        if !self.started.load(Ordering::Acquire) {
            return None;
        }
        lock(&self.wakers)
            .get_mut(slot_index as usize)
            .and_then(Option::take)
    }
}

impl ShmConnection {
    /// Attaches to the runtime of `instance`.
    pub fn connect(instance: &InstanceName) -> Result<Arc<ShmConnection>, ConnectError> {
        let io = |detail: String| ConnectError::Io {
            instance: instance.to_string(),
            detail,
        };
        let path = handshake::client_socket_path(instance);
        let runtime_uid =
            handshake::expected_runtime_uid(instance).map_err(|err| ConnectError::Untrusted {
                instance: instance.to_string(),
                detail: err.to_string(),
            })?;
        let socket = match UnixStream::connect(&path) {
            Ok(socket) => socket,
            Err(err)
                if matches!(
                    err.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) =>
            {
                return Err(ConnectError::NotRunning {
                    instance: instance.to_string(),
                })
            }
            // The runtime's directory is closed to this user: a runtime that grants no
            // other user keeps it `0700`, so the refusal comes from the file system.
            Err(err) if err.kind() == std::io::ErrorKind::PermissionDenied => {
                return Err(ConnectError::PermissionDenied {
                    instance: instance.to_string(),
                    uid: rustix::process::geteuid().as_raw(),
                    gid: rustix::process::getegid().as_raw(),
                })
            }
            Err(err) => return Err(io(format!("{}: {err}", path.display()))),
        };
        handshake::check_runtime_peer(&socket, runtime_uid).map_err(|err| {
            ConnectError::Untrusted {
                instance: instance.to_string(),
                detail: err.to_string(),
            }
        })?;
        socket
            .set_read_timeout(Some(HANDSHAKE_TIMEOUT))
            .map_err(|e| io(e.to_string()))?;
        let (reply, fds) = handshake::ask(&socket, Request::Attach).map_err(|err| match err {
            HandshakeError::Malformed(detail) => ConnectError::Incompatible {
                instance: instance.to_string(),
                detail: detail.into(),
            },
            HandshakeError::Io(err) => io(err.to_string()),
        })?;
        let grant = match reply {
            Reply::Attached(grant) => grant,
            Reply::Denied { uid, gid } => {
                return Err(ConnectError::PermissionDenied {
                    instance: instance.to_string(),
                    uid,
                    gid,
                })
            }
            Reply::Full { max_clients } => {
                return Err(ConnectError::Full {
                    instance: instance.to_string(),
                    max_clients,
                })
            }
            Reply::NotReady => {
                return Err(ConnectError::NotReady {
                    instance: instance.to_string(),
                })
            }
            Reply::Usage(_) => {
                return Err(ConnectError::Incompatible {
                    instance: instance.to_string(),
                    detail: "a usage report instead of an area".into(),
                })
            }
        };
        let [area, page, doorbell]: [OwnedFd; 3] = fds
            .try_into()
            .map_err(|_| io("the runtime sent the wrong number of descriptors".into()))?;
        let geometry = grant.geometry;
        let total = geometry
            .checked_total_len()
            .ok_or_else(|| io("the runtime sent an impossible geometry".into()))?;
        let name = ShmName::segment(instance, "area").map_err(|e| io(e.to_string()))?;
        let main = Segment::from_memfd(File::from(area), &name).map_err(|e| io(e.to_string()))?;
        if main.len() < total {
            return Err(io(format!(
                "the area has {} bytes but its geometry needs {total}",
                main.len()
            )));
        }
        let page = RuntimePageView::map(page).map_err(|e| io(e.to_string()))?;
        let (ring_offset, ring_len) = geometry.ring_range();
        let region = main
            .region(ring_offset, ring_len)
            .map_err(|e| io(e.to_string()))?;
        let ring = Ring::attach(&region, geometry.slots).map_err(|e| io(e.to_string()))?;
        let control_slot = (geometry.slots > 1).then(|| geometry.slots - 1);
        let call_slots = control_slot.unwrap_or(geometry.slots);
        Ok(Arc::new(ShmConnection {
            instance: instance.clone(),
            geometry,
            grant,
            page,
            doorbell,
            socket,
            producer: Mutex::new(Producer { ring }),
            free_slots: Mutex::new((0..call_slots).rev().collect()),
            holding: Mutex::new(vec![None; geometry.slots as usize]),
            slot_freed: Condvar::new(),
            slot_waiters: AtomicUsize::new(0),
            data: Mutex::new(Arena::new(geometry.data_len)),
            encode_buffer: Mutex::new(OutputBuffer::reusable()),
            dead: Mutex::new(None),
            dead_flag: AtomicBool::new(false),
            control_slot,
            abandons: Mutex::new(Abandons::default()),
            watch: Arc::new(Watch::new(geometry.slots)),
            main,
        }))
    }

    /// The client area this connection holds.
    pub fn client_index(&self) -> u32 {
        self.grant.client
    }

    /// The instance.
    pub fn instance(&self) -> &InstanceName {
        &self.instance
    }

    /// The grant the runtime gave this client (its area index and serving worker).
    pub fn grant(&self) -> Grant {
        self.grant
    }

    fn control_state(&self) -> &AtomicU32 {
        // The control line starts the area, whose length was checked at connect.
        self.main
            .atomic_u32(CONTROL_STATE)
            .unwrap_or_else(|_| unreachable_word())
    }

    /// Marks the connection dead with `err` (the first reason wins) and returns it.
    fn set_dead(&self, err: TaskError) -> TaskError {
        let mut dead = lock(&self.dead);
        let err = dead.get_or_insert(err).clone();
        self.dead_flag.store(true, Ordering::Release);
        err
    }

    /// Why calls fail, if they do: checked on every submission (a flag and the control
    /// word, no syscall).
    fn failure(&self) -> Option<TaskError> {
        if self.dead_flag.load(Ordering::Acquire) {
            return lock(&self.dead).clone();
        }
        if self.control_state().load(Ordering::Acquire) == wire::AREA_DISOWNED {
            return Some(self.set_dead(TaskError::Disowned));
        }
        None
    }

    /// [`failure`](Self::failure), and whether the runtime hung up our socket (a poll
    /// that does not block): for the slow paths only.
    pub(crate) fn runtime_gone(&self) -> Option<TaskError> {
        if let Some(err) = self.failure() {
            return Some(err);
        }
        let mut fds = [PollFd::new(&self.socket, PollFlags::IN)];
        let zero = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        let hung_up = rustix::event::poll(&mut fds, Some(&zero)).is_ok_and(|ready| ready > 0);
        if !hung_up {
            return None;
        }
        // The runtime never writes after the handshake: readable means it hung up. Look
        // at the control word again: a disowning runtime stores it before hanging up.
        Some(
            self.failure()
                .unwrap_or_else(|| self.set_dead(TaskError::RuntimeStopped)),
        )
    }

    fn take_slot(&self) -> Result<u32, TaskError> {
        let mut free = lock(&self.free_slots);
        loop {
            if let Some(err) = self.failure() {
                return Err(err);
            }
            if let Some(slot_index) = free.pop() {
                return Ok(slot_index);
            }
            drop(free);
            // Every slot holds a call: move the answered ones' results out of shared
            // memory, so results nobody collected yet do not hold the queue.
            self.harvest();
            free = lock(&self.free_slots);
            if !free.is_empty() {
                continue;
            }
            self.slot_waiters.fetch_add(1, Ordering::Relaxed);
            let (guard, timeout) = self
                .slot_freed
                .wait_timeout(free, Duration::from_micros(200))
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            free = guard;
            self.slot_waiters.fetch_sub(1, Ordering::Relaxed);
            if timeout.timed_out() && free.is_empty() {
                drop(free);
                if let Some(err) = self.runtime_gone() {
                    return Err(err);
                }
                free = lock(&self.free_slots);
            }
        }
    }

    /// Copies the results of answered calls out of their slots and frees the slots.
    fn harvest(&self) {
        self.send_abandons();
        let calls: Vec<Arc<CallState>> = lock(&self.holding).iter().flatten().cloned().collect();
        for call in calls {
            let mut held = lock(&call.slot);
            let Some((slot_index, input)) = *held else {
                continue;
            };
            let Ok(view) = self.view(slot_index) else {
                continue;
            };
            if view.word(slot::STATE).load(Ordering::Acquire) != wire::SLOT_DONE {
                continue;
            }
            let abandoned = call.abandoned.load(Ordering::Acquire);
            if abandoned && !self.forget_abandon(slot_index) {
                continue;
            }
            let results = self.read_results(&view);
            if !abandoned {
                *lock(&call.harvested) = Some(results);
            }
            *held = None;
            drop(held);
            // A polled call whose answer was just moved out of its slot: its waker is
            // taken before the slot frees (and may get the next call's waker).
            let waker = self.watch.take(slot_index);
            self.release_slot(slot_index, input);
            if let Some(waker) = waker {
                waker.wake();
            }
        }
    }

    /// Gives up on the call in `slot_index` (held by `call`): its answer will be
    /// discarded, and the runtime is asked to answer it at once. Never blocks.
    fn abandon(&self, call: &CallState) {
        let held = lock(&call.slot);
        call.abandoned.store(true, Ordering::Release);
        let Some((slot_index, _)) = *held else {
            return;
        };
        let answered = self
            .view(slot_index)
            .is_ok_and(|v| v.word(slot::STATE).load(Ordering::Acquire) == wire::SLOT_DONE);
        drop(held);
        if answered || self.control_slot.is_none() {
            // Freed by the next harvest (or, with no control slot, once answered).
            return;
        }
        lock(&self.abandons).waiting.push(slot_index);
        self.send_abandons();
    }

    /// Whether the abandoned, answered slot `slot_index` may be freed: no abandon request
    /// naming it waits in the control slot (one still waiting to be sent is dropped).
    fn forget_abandon(&self, slot_index: u32) -> bool {
        let mut abandons = lock(&self.abandons);
        if abandons.sent.contains(&slot_index) {
            return false;
        }
        abandons.waiting.retain(|&waiting| waiting != slot_index);
        true
    }

    /// Sends the next abandon request if the control slot is free (its previous request
    /// answered).
    fn send_abandons(&self) {
        let Some(control) = self.control_slot else {
            return;
        };
        let Ok(view) = self.view(control) else {
            return;
        };
        let mut abandons = lock(&self.abandons);
        if !abandons.sent.is_empty() {
            if view.word(slot::STATE).load(Ordering::Acquire) != wire::SLOT_DONE {
                return;
            }
            abandons.sent.clear();
        }
        if abandons.waiting.is_empty() {
            return;
        }
        // As many as the payload holds, as little-endian `u32`s; the rest go next time.
        let batch = abandons.waiting.len().min(view.payload_len() / 4);
        let sent: Vec<u32> = abandons.waiting.drain(..batch).collect();
        let bytes: Vec<u8> = sent.iter().flat_map(|slot| slot.to_le_bytes()).collect();
        if view.write_payload(&bytes).is_err() {
            // Cannot happen (the batch fits the payload); the calls then free their slots
            // when answered.
            return;
        }
        let set = |field, value: u32| view.word(field).store(value, Ordering::Relaxed);
        SlotRequest::Abandon {
            list_len: bytes.len() as u32,
        }
        .write(&view);
        set(slot::WAITING, 0);
        set(slot::STATE, wire::SLOT_SUBMITTED);
        abandons.sent = sent;
        drop(abandons);
        // The ring has an entry for every slot, the control slot's included.
        self.queue(control);
    }

    /// Calls of this connection in flight: call slots not in the free list.
    fn calls_in_flight(&self) -> usize {
        let call_slots = self.control_slot.unwrap_or(self.geometry.slots) as usize;
        call_slots.saturating_sub(lock(&self.free_slots).len())
    }

    fn release_slot(&self, slot_index: u32, input: Option<Extent>) {
        // The table keeps the call's state (its `slot` is already `None`) for `hold` to
        // reuse once the call is dropped.
        if let Some(extent) = input {
            self.free_data(extent);
        }
        if let Ok(view) = self.view(slot_index) {
            view.word(slot::WAITING).store(0, Ordering::Relaxed);
            view.word(slot::STATE)
                .store(wire::SLOT_FREE, Ordering::Relaxed);
        }
        if self.watch.started.load(Ordering::Acquire) {
            // The waker of the call that held the slot is stale now.
            if let Some(waker) = lock(&self.watch.wakers).get_mut(slot_index as usize) {
                *waker = None;
            }
        }
        let mut free = lock(&self.free_slots);
        free.push(slot_index);
        // Read under the lock: a submitter that will wait has not looked at the list yet
        // and will find this slot; one that waits already has counted itself.
        if self.slot_waiters.load(Ordering::Relaxed) > 0 {
            self.slot_freed.notify_one();
        }
        drop(free);
    }

    fn view(&self, slot_index: u32) -> Result<SlotView<'_>, TaskError> {
        SlotView::new(&self.main, &self.geometry, slot_index)
            .map_err(|e| TaskError::malformed("slot", e))
    }

    fn alloc_data(&self, len: usize) -> Option<Extent> {
        lock(&self.data).alloc(len, 64)
    }

    /// Allocates in the data share; while it is full of inputs of calls in flight, frees
    /// the buffers of answered calls and waits for more answers. `None` only when the
    /// input cannot fit even with no call in flight.
    fn alloc_data_waiting(&self, len: usize) -> Option<Extent> {
        self.alloc_waiting(|| self.alloc_data(len))
    }

    fn alloc_waiting(&self, alloc: impl Fn() -> Option<Extent>) -> Option<Extent> {
        loop {
            if let Some(extent) = alloc() {
                return Some(extent);
            }
            self.harvest();
            if let Some(extent) = alloc() {
                return Some(extent);
            }
            let waiting_on_others = lock(&self.holding)
                .iter()
                .flatten()
                .any(|call| lock(&call.slot).is_some_and(|(_, input)| input.is_some()));
            if !waiting_on_others || self.runtime_gone().is_some() {
                return None;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// A zeroed, page-aligned buffer of `len` bytes in this client's data share, which
    /// bulk arguments reference instead of copying (see [`crate::bulk`]). Waits while the
    /// share is full of inputs of calls in flight.
    pub fn allocate_buffer(self: &Arc<Self>, len: usize) -> Result<Buffer, BufferError> {
        if let Some(err) = self.failure() {
            return Err(BufferError::ConnectionLost(err));
        }
        let share = self.geometry.data_len;
        if len > share {
            return Err(BufferError::TooLarge {
                len: len as u64,
                share: share as u64,
            });
        }
        let extent = self
            .alloc_buffer_waiting(len)
            .ok_or_else(|| BufferError::ShareFull {
                len: len as u64,
                share: share as u64,
                in_use: lock(&self.data).in_use() as u64,
            })?;
        let ptr = match self.main.range_ptr(
            self.geometry.data_offset() + extent.offset,
            extent.len,
            BUFFER_ALIGN,
        ) {
            Ok(ptr) => ptr,
            Err(_) => {
                let outside = BufferError::OutsideShare {
                    offset: extent.offset as u64,
                    len: extent.len as u64,
                };
                self.free_data(extent);
                return Err(outside);
            }
        };
        let connection = self.clone();
        let free = Box::new(move || connection.free_data(extent));
        // SAFETY: the arena gave this extent to nobody else until `free` returns it, and
        // the mapping lives while `free` holds the connection.
        Ok(unsafe { Buffer::in_share(ptr, len, free) })
    }

    fn alloc_buffer_waiting(&self, len: usize) -> Option<Extent> {
        self.alloc_waiting(|| lock(&self.data).alloc(len, BUFFER_ALIGN))
    }

    /// How `bytes` travels as a bulk argument: by reference when it lies in this
    /// client's data share (a [`Buffer`] of this connection), inline otherwise.
    pub fn bulk_ref<'a>(&self, bytes: &'a [u8]) -> BulkRef<'a> {
        let share_start = self.main.base() as usize + self.geometry.data_offset();
        let in_share = (bytes.as_ptr() as usize)
            .checked_sub(share_start)
            .filter(|offset| !bytes.is_empty() && offset + bytes.len() <= self.geometry.data_len);
        match in_share {
            Some(offset) => BulkWire::Shared {
                offset: offset as u64,
                len: bytes.len() as u64,
            },
            None => BulkWire::Inline(SliceRef(bytes)),
        }
    }

    fn free_data(&self, extent: Extent) {
        lock(&self.data).free(extent);
    }

    /// Copies `bytes` to `offset` of the data share.
    fn write_data(
        &self,
        offset: usize,
        bytes: &[u8],
    ) -> Result<(), crate::shm::segment::AccessError> {
        if offset
            .checked_add(bytes.len())
            .is_none_or(|end| end > self.geometry.data_len)
        {
            return Err(crate::shm::segment::AccessError::OutOfBounds {
                offset,
                len: bytes.len(),
                size: self.geometry.data_len,
            });
        }
        write_shared(&self.main, self.geometry.data_offset() + offset, bytes)
    }

    /// Queues a task whose input `encode` archives into this connection's reusable
    /// buffer (see [`submit`](Self::submit)).
    pub fn submit_with(
        self: &Arc<Self>,
        pool: PoolId,
        method: MethodId,
        query: PoolQuery,
        encode: &mut dyn FnMut(&mut OutputBuffer) -> Result<(), TaskError>,
    ) -> Result<ShmCall, TaskError> {
        self.submit_routed_with(route(pool, method, query), encode)
    }

    /// [`submit_with`](Self::submit_with) along `route` (its force-net switch included).
    pub(crate) fn submit_routed_with(
        self: &Arc<Self>,
        route: Route,
        encode: &mut dyn FnMut(&mut OutputBuffer) -> Result<(), TaskError>,
    ) -> Result<ShmCall, TaskError> {
        let mut buffer = lock(&self.encode_buffer);
        encode(&mut buffer)?;
        let call = self.submit_routed(route, buffer.as_slice(), None);
        buffer.trim();
        call
    }

    /// Queues a task; the returned call is waited on with [`ShmCall::wait`].
    pub fn submit(
        self: &Arc<Self>,
        pool: PoolId,
        method: MethodId,
        query: PoolQuery,
        input: &[u8],
        schedule: Option<Schedule>,
    ) -> Result<ShmCall, TaskError> {
        self.submit_routed(route(pool, method, query), input, schedule)
    }

    /// [`submit`](Self::submit) along `route` (its force-net switch included).
    pub(crate) fn submit_routed(
        self: &Arc<Self>,
        route: Route,
        input: &[u8],
        schedule: Option<Schedule>,
    ) -> Result<ShmCall, TaskError> {
        let Route {
            pool,
            method,
            query,
            force_net,
        } = route;
        // `take_slot` checks the connection's failure first.
        let slot_index = self.take_slot()?;
        let view = self.view(slot_index)?;
        let set = |field, value: u32| view.word(field).store(value, Ordering::Relaxed);
        let mut input_extent = None;
        let place = if input.len() <= view.payload_len() {
            view.write_payload(input)
                .map_err(|e| TaskError::malformed("input", e))?;
            InputPlace::Slot
        } else {
            let Some(extent) = self.alloc_data_waiting(input.len()) else {
                self.release_slot(slot_index, None);
                return Err(TaskError::InputTooLarge {
                    len: input.len() as u64,
                    share: self.geometry.data_len as u64,
                });
            };
            if let Err(err) = self.write_data(extent.offset, input) {
                self.release_slot(slot_index, Some(extent));
                return Err(TaskError::malformed("input", err));
            }
            input_extent = Some(extent);
            InputPlace::ClientData {
                offset: extent.offset as u64,
            }
        };
        SlotRequest::Task(TaskRequest {
            pool,
            method,
            query,
            schedule,
            input_len: input.len() as u32,
            input: place,
            force_net,
        })
        .write(&view);
        set(slot::WAITING, 0);
        set(slot::STATE, wire::SLOT_SUBMITTED);
        let call = self.hold(slot_index, input_extent);
        if !self.queue(slot_index) {
            // Cannot happen while the runtime keeps one ring entry per slot; treat it as a
            // broken runtime rather than lose the task silently.
            lock(&call.state.slot).take();
            self.release_slot(slot_index, input_extent);
            return Err(TaskError::malformed(
                "submission ring",
                "full although a slot was free",
            ));
        }
        Ok(call)
    }
}

/// A deliberately broken submission, as a faulty or hostile client could write it.
/// For tests of the runtime's defences; not for applications.
#[doc(hidden)]
#[derive(Clone, Copy, Debug)]
pub enum Forgery {
    /// The input claims to lie at `offset..offset + len` of the client's data share.
    InputInClientData {
        /// Claimed offset.
        offset: u64,
        /// Claimed length.
        len: u32,
    },
    /// The input claims `len` bytes in the slot (more than the payload holds).
    InputLength(u32),
    /// An unknown query tag.
    QueryTag(u32),
    /// An unknown task kind.
    Kind(u32),
    /// An unknown input location.
    InputWhere(u32),
}

/// A word of its own area a faulty or hostile client overwrites. For tests of the
/// runtime's defences; not for applications.
#[doc(hidden)]
#[derive(Clone, Copy, Debug)]
pub enum Scribble {
    /// The ring's magic word.
    RingMagic(u32),
    /// The ring's capacity word.
    RingCapacity(u32),
    /// The ring's tail counter (a value far ahead of the head is a corrupt ring).
    RingTail(u32),
    /// The control line's state word.
    ControlState(u32),
}

impl ShmConnection {
    /// Submits a call with a valid input, then breaks its header as `forgery` says
    /// before queuing it. Test support.
    #[doc(hidden)]
    pub fn submit_forged(
        self: &Arc<Self>,
        pool: PoolId,
        method: MethodId,
        input: &[u8],
        forgery: Forgery,
    ) -> Result<ShmCall, TaskError> {
        let slot_index = self.take_slot()?;
        let view = self.view(slot_index)?;
        let set = |field, value: u32| view.word(field).store(value, Ordering::Relaxed);
        SlotRequest::Task(TaskRequest {
            pool,
            method,
            query: PoolQuery::Local,
            schedule: None,
            input_len: input.len() as u32,
            input: InputPlace::Slot,
            force_net: false,
        })
        .write(&view);
        let _ = view.write_payload(&input[..input.len().min(view.payload_len())]);
        // Then the words a well-behaved writer never produces.
        match forgery {
            Forgery::InputInClientData { offset, len } => {
                set(slot::INPUT_WHERE, wire::IN_CLIENT_DATA);
                set(slot::INPUT_LEN, len);
                view.word64(slot::INPUT_OFFSET)
                    .store(offset, Ordering::Relaxed);
            }
            Forgery::InputLength(len) => set(slot::INPUT_LEN, len),
            Forgery::QueryTag(tag) => set(slot::QUERY_TAG, tag),
            Forgery::Kind(kind) => set(slot::KIND, kind),
            Forgery::InputWhere(location) => set(slot::INPUT_WHERE, location),
        }
        set(slot::WAITING, 0);
        set(slot::STATE, wire::SLOT_SUBMITTED);
        let call = self.hold(slot_index, None);
        self.queue(slot_index);
        Ok(call)
    }

    /// Cancels this client's periodic task `id` (as acknowledged by the runtime).
    pub fn cancel_periodic(self: &Arc<Self>, id: u64) -> Result<(), TaskError> {
        let slot_index = self.take_slot()?;
        let view = self.view(slot_index)?;
        SlotRequest::Cancel { periodic: id }.write(&view);
        view.word(slot::WAITING).store(0, Ordering::Relaxed);
        view.word(slot::STATE)
            .store(wire::SLOT_SUBMITTED, Ordering::Relaxed);
        let call = self.hold(slot_index, None);
        self.queue(slot_index);
        for (_, result) in call.wait() {
            result?;
        }
        Ok(())
    }

    /// Records that a new call holds `slot_index`.
    fn hold(self: &Arc<Self>, slot_index: u32, input: Option<Extent>) -> ShmCall {
        let mut holding = lock(&self.holding);
        let state = match holding.get(slot_index as usize) {
            // The slot's previous call is gone (only this table holds its state, and
            // clones are made under this lock): reuse the state instead of allocating.
            Some(Some(previous)) if Arc::strong_count(previous) == 1 => {
                *lock(&previous.slot) = Some((slot_index, input));
                *lock(&previous.harvested) = None;
                previous.abandoned.store(false, Ordering::Relaxed);
                previous.clone()
            }
            _ => {
                let state = Arc::new(CallState {
                    slot: Mutex::new(Some((slot_index, input))),
                    harvested: Mutex::new(None),
                    abandoned: AtomicBool::new(false),
                });
                if let Some(held) = holding.get_mut(slot_index as usize) {
                    *held = Some(state.clone());
                }
                state
            }
        };
        drop(holding);
        ShmCall {
            connection: self.clone(),
            state,
            finished: false,
        }
    }

    /// Writes `scribble` into this client's own area, as a faulty or hostile client
    /// could, then writes the worker's doorbell. Test support.
    #[doc(hidden)]
    pub fn scribble(&self, scribble: Scribble) {
        let (ring, _) = self.geometry.ring_range();
        // Ring offsets, from `ring.rs`'s layout: magic and capacity on the consumer
        // line, tail on the producer line.
        let (offset, value) = match scribble {
            Scribble::RingMagic(value) => (ring + 4, value),
            Scribble::RingCapacity(value) => (ring + 8, value),
            Scribble::RingTail(value) => (ring + 128, value),
            Scribble::ControlState(value) => (CONTROL_STATE, value),
        };
        if let Ok(word) = self.main.atomic_u32(offset) {
            word.store(value, Ordering::SeqCst);
        }
        let _ = rustix::io::write(&self.doorbell, &1u64.to_ne_bytes());
    }

    /// Queues a slot index the runtime must reject (out of range). Test support.
    #[doc(hidden)]
    pub fn queue_raw_index(&self, index: u32) {
        self.queue(index);
    }

    /// Pushes a slot index and rings the worker's doorbell if it sleeps.
    fn queue(&self, slot_index: u32) -> bool {
        let pushed = lock(&self.producer).ring.push(slot_index).is_ok();
        fence(Ordering::SeqCst);
        if self.page.is_sleeping(self.grant.worker as usize) {
            let _ = rustix::io::write(&self.doorbell, &1u64.to_ne_bytes());
        }
        pushed
    }
}

#[cold]
fn unreachable_word() -> &'static AtomicU32 {
    static SPARE: AtomicU32 = AtomicU32::new(0);
    &SPARE
}

type Results = Vec<(ContainerId, Result<Bytes, TaskError>)>;

/// Outputs up to this size are decoded from a copy on the stack.
const SMALL_OUTPUT: usize = 256;

/// A stack buffer aligned for any archived type rkyv reads in place.
#[repr(C, align(16))]
struct SmallOutput([u8; SMALL_OUTPUT]);

/// The error a runtime sent, or why its bytes are not one.
fn decode_error(bytes: &[u8]) -> TaskError {
    decode::<TaskError>(bytes, "error").unwrap_or_else(|e| e)
}

/// A call's hold on its slot, shared with the connection (which may harvest it).
struct CallState {
    /// The slot and the data-share buffer of the input, while held.
    slot: Mutex<Option<(u32, Option<Extent>)>>,
    /// Results moved out of the slot by a harvest.
    harvested: Mutex<Option<Results>>,
    /// The caller dropped the call: results are discarded.
    abandoned: AtomicBool,
}

/// A task submitted over shared memory, not yet answered.
pub struct ShmCall {
    connection: Arc<ShmConnection>,
    state: Arc<CallState>,
    finished: bool,
}

impl ShmCall {
    /// Whether the answer is there.
    pub fn is_done(&self) -> bool {
        match *lock(&self.state.slot) {
            Some((slot_index, _)) => self
                .connection
                .view(slot_index)
                .is_ok_and(|v| v.word(slot::STATE).load(Ordering::Acquire) == wire::SLOT_DONE),
            None => true,
        }
    }

    /// Whether the answer is there (or the runtime is gone); if not, `waker` is woken
    /// when it is, by this connection's reply watcher (started on the first poll).
    pub fn poll_done(&self, waker: &Waker) -> bool {
        let held = lock(&self.state.slot);
        let Some((slot_index, _)) = *held else {
            // A harvest moved the answer out.
            return true;
        };
        let Ok(view) = self.connection.view(slot_index) else {
            return true;
        };
        let watch = &self.connection.watch;
        let mut wakers = lock(&watch.wakers);
        if let Some(registered) = wakers.get_mut(slot_index as usize) {
            match registered {
                Some(registered) if registered.will_wake(waker) => {}
                _ => *registered = Some(waker.clone()),
            }
        }
        let watcher_idle = watch.idle.load(Ordering::Relaxed);
        drop(wakers);
        view.word(slot::WAITING)
            .fetch_or(wire::WAITING_WATCHER, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        let done = view.word(slot::STATE).load(Ordering::SeqCst) == wire::SLOT_DONE
            || self.connection.failure().is_some();
        drop(held);
        if !done {
            if watcher_idle {
                watch.registered.notify_one();
            }
            ShmConnection::start_watcher(&self.connection);
        }
        done
    }

    /// Blocks until the answer is there (or the runtime is gone) or `deadline` passed;
    /// returns whether waiting would no longer block.
    pub fn wait_until(&self, deadline: Instant) -> bool {
        let held = *lock(&self.state.slot);
        let Some((slot_index, _)) = held else {
            return true;
        };
        // An error is a runtime gone: waiting returns it at once.
        self.connection
            .wait_done(slot_index, &self.state, Some(deadline))
            .unwrap_or(true)
    }

    /// Gives up on the call: its answer is discarded, and the runtime is asked to answer
    /// it at once so its slot frees (see the module docs). Never blocks.
    pub fn abandon(mut self) {
        self.finished = true;
        self.connection.abandon(&self.state);
    }

    /// Waits for the answer and returns each replica's result (one for most queries).
    pub fn wait(self) -> Results {
        self.wait_with(
            |connection, view| connection.read_results(view),
            |results| results,
        )
    }

    /// Waits for the answer and decodes it with `decode` (the first error by container wins). A small
    /// output is decoded from a copy on the stack (no allocation).
    pub fn wait_decoded<T>(
        self,
        decode: &dyn Fn(&[u8]) -> Result<T, TaskError>,
    ) -> Result<T, TaskError> {
        self.wait_with(
            |connection, view| {
                connection
                    .read_small_output(view, decode)
                    .unwrap_or_else(|| decode_first(connection.read_results(view), decode))
            },
            |results| decode_first(results, decode),
        )
    }

    /// Waits for the answer and hands it to `decode` once (the first error by container
    /// wins): the typed clients' way, decoding a small output from the stack.
    pub fn wait_first(
        self,
        decode: &mut dyn FnMut(&[u8]) -> Result<(), TaskError>,
    ) -> Result<(), TaskError> {
        // `wait_decoded` takes a `Fn` (it decodes from a stack copy or from the results)
        // and calls it at most once: hand the `FnMut` over on that call.
        let decode = std::cell::Cell::new(Some(decode));
        self.wait_decoded(&|bytes| match decode.take() {
            Some(decode) => decode(bytes),
            None => Err(TaskError::NotRun),
        })
    }

    /// Waits, then `read`s the answer from the slot — or, when there is no slot to read
    /// (a harvest took the answer, or the runtime is gone), makes the value `from`
    /// the results at hand.
    fn wait_with<R>(
        mut self,
        read: impl FnOnce(&ShmConnection, &SlotView) -> R,
        from: impl FnOnce(Results) -> R,
    ) -> R {
        self.finished = true;
        loop {
            let held = *lock(&self.state.slot);
            let Some((slot_index, _)) = held else {
                let harvested = lock(&self.state.harvested).take();
                return from(harvested.unwrap_or_else(|| vec![(0, Err(TaskError::NotRun))]));
            };
            if let Err(err) = self.connection.wait_done(slot_index, &self.state, None) {
                // The runtime is gone: the slot will never be answered.
                return from(vec![(0, Err(err))]);
            }
            let mut held = lock(&self.state.slot);
            if let Some((slot_index, input)) = held.take() {
                drop(held);
                let answer = match self.connection.view(slot_index) {
                    Ok(view) => read(&self.connection, &view),
                    Err(err) => from(vec![(0, Err(err))]),
                };
                self.connection.release_slot(slot_index, input);
                return answer;
            }
        }
    }
}

impl ShmConnection {
    /// Waits until `slot_index` is answered, or `call` no longer holds it (a harvest
    /// took the answer; the slot may already serve another call), or `deadline` passed:
    /// `Ok(false)` only then.
    fn wait_done(
        &self,
        slot_index: u32,
        call: &CallState,
        deadline: Option<Instant>,
    ) -> Result<bool, TaskError> {
        let view = self.view(slot_index)?;
        let state = view.word(slot::STATE);
        let released = || lock(&call.slot).is_none();
        // The clock (and how many calls are in flight) is read from the first check on,
        // not before: a quick answer costs neither.
        let mut spinning = None;
        let mut spin = 0u32;
        loop {
            if state.load(Ordering::Acquire) == wire::SLOT_DONE {
                return Ok(true);
            }
            spin = spin.wrapping_add(1);
            if spin.is_multiple_of(SPINS_PER_CHECK) {
                if released() {
                    return Ok(true);
                }
                let (since, limit) = *spinning.get_or_insert_with(|| {
                    let limit = match self.calls_in_flight() {
                        0 | 1 => SPIN_ALONE,
                        _ => SPIN_WITH_OTHERS_IN_FLIGHT,
                    };
                    (Instant::now(), limit)
                });
                let spun = since.elapsed();
                if spun >= limit {
                    break;
                }
                if spun >= YIELD_AFTER {
                    std::thread::yield_now();
                }
            }
            std::hint::spin_loop();
        }
        let started = Instant::now();
        loop {
            if released() {
                return Ok(true);
            }
            let sleep = match deadline {
                None => LIVENESS_CHECK,
                Some(deadline) => match deadline.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => left.min(LIVENESS_CHECK),
                    _ => return Ok(false),
                },
            };
            view.word(slot::WAITING)
                .fetch_or(wire::WAITING_THREAD, Ordering::SeqCst);
            fence(Ordering::SeqCst);
            if state.load(Ordering::SeqCst) == wire::SLOT_DONE || released() {
                return Ok(true);
            }
            futex::wait(state, wire::SLOT_SUBMITTED, Some(sleep));
            if state.load(Ordering::Acquire) == wire::SLOT_DONE {
                return Ok(true);
            }
            if let Some(err) = self.failure() {
                return Err(err);
            }
            if started.elapsed() >= LIVENESS_CHECK {
                if let Some(err) = self.runtime_gone() {
                    return Err(err);
                }
            }
        }
    }

    /// Starts the reply watcher unless it runs already.
    fn start_watcher(connection: &Arc<ShmConnection>) {
        if connection.watch.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let watch = connection.watch.clone();
        let weak = Arc::downgrade(connection);
        let spawned = std::thread::Builder::new()
            .name("chimaera-reply-watcher".into())
            .spawn(move || watch_replies(&watch, &weak));
        if let Err(err) = spawned {
            // No watcher: polled calls would never be woken. Fail them as a broken
            // connection rather than hang them.
            tracing::warn!("cannot start the reply watcher: {err}");
            connection.set_dead(TaskError::ClientThread {
                thread: "chimaera-reply-watcher".into(),
                detail: err.to_string(),
            });
            connection.wake_polled(true);
        }
    }

    /// Wakes the polled calls whose slot is answered (every one if `all`).
    fn wake_polled(&self, all: bool) {
        let mut woken = Vec::new();
        for (slot_index, registered) in lock(&self.watch.wakers).iter_mut().enumerate() {
            if registered.is_none() {
                continue;
            }
            let answered = all
                || self.view(slot_index as u32).is_ok_and(|view| {
                    view.word(slot::STATE).load(Ordering::Acquire) == wire::SLOT_DONE
                });
            if answered {
                woken.extend(registered.take());
            }
        }
        // Woken outside the lock: a waker may poll (and register) at once.
        for waker in woken {
            waker.wake();
        }
    }

    fn reply_bell(&self) -> &AtomicU32 {
        // The control line starts the area, whose length was checked at connect.
        self.main
            .atomic_u32(wire::CONTROL_REPLY_BELL)
            .unwrap_or_else(|_| unreachable_word())
    }
}

/// The reply watcher: wakes polled calls as the runtime answers them (see the module
/// docs). Holds the connection only while calls are polled, so dropping the last client
/// closes it (at most one liveness period later).
fn watch_replies(watch: &Watch, connection: &Weak<ShmConnection>) {
    loop {
        let mut wakers = lock(&watch.wakers);
        while wakers.iter().all(Option::is_none) {
            if watch.closed.load(Ordering::Acquire) {
                return;
            }
            watch.idle.store(true, Ordering::Relaxed);
            wakers = watch
                .registered
                .wait(wakers)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            watch.idle.store(false, Ordering::Relaxed);
        }
        drop(wakers);
        let Some(connection) = connection.upgrade() else {
            return;
        };
        let bell = connection.reply_bell();
        let rung = bell.load(Ordering::SeqCst);
        let failed = connection.failure().is_some();
        connection.wake_polled(failed);
        if failed {
            continue;
        }
        let outcome = futex::wait(bell, rung, Some(LIVENESS_CHECK));
        if outcome == futex::WaitOutcome::TimedOut && connection.runtime_gone().is_some() {
            connection.wake_polled(true);
        }
    }
}

impl ShmConnection {
    /// Decodes a result or error that fits [`SmallOutput`] from a copy on the stack;
    /// `None` for any other reply (left for [`read_results`](Self::read_results)).
    fn read_small_output<T>(
        &self,
        view: &SlotView,
        decode: &dyn Fn(&[u8]) -> Result<T, TaskError>,
    ) -> Option<Result<T, TaskError>> {
        let reply = SlotReply::read(view).ok()?;
        let len = reply.len as usize;
        if len > SMALL_OUTPUT || reply.status == ReplyStatus::Replicas {
            return None;
        }
        let mut buffer = SmallOutput([0; SMALL_OUTPUT]);
        let bytes = &mut buffer.0[..len];
        if let Err(err) = self.read_output(view, &reply, bytes) {
            return Some(Err(err));
        }
        Some(if reply.status == ReplyStatus::Ok {
            decode(bytes)
        } else {
            Err(decode_error(bytes))
        })
    }

    /// Copies the reply's output bytes, wherever the runtime put them, into `dst`
    /// (`dst.len()` is the output length the reply gives).
    fn read_output(
        &self,
        view: &SlotView,
        reply: &SlotReply,
        dst: &mut [u8],
    ) -> Result<(), TaskError> {
        let copied = match reply.place {
            OutputPlace::Line => view.read_inline(dst).is_ok(),
            OutputPlace::Slot => view.read_payload(dst).is_ok(),
            OutputPlace::OutputSpace { offset } => {
                let space = self.geometry.output_len;
                usize::try_from(offset).is_ok_and(|offset| {
                    offset
                        .checked_add(dst.len())
                        .is_some_and(|end| end <= space)
                        && read_shared(&self.main, self.geometry.output_offset() + offset, dst)
                            .is_ok()
                })
            }
        };
        copied.then_some(()).ok_or_else(|| {
            TaskError::malformed(
                "output",
                "the runtime's reply lies outside this client's area",
            )
        })
    }

    fn read_results(&self, view: &SlotView) -> Results {
        let reply = match SlotReply::read(view) {
            Ok(reply) => reply,
            Err(err) => return vec![(0, Err(TaskError::malformed("output", err)))],
        };
        let len = reply.len as usize;
        if len > self.geometry.output_len.max(view.payload_len()) {
            return vec![(
                0,
                Err(TaskError::malformed(
                    "output",
                    format!("a {len}-byte output is larger than any place it can lie in"),
                )),
            )];
        }
        let mut bytes = Bytes::with_capacity(len);
        bytes.resize(len, 0);
        if let Err(err) = self.read_output(view, &reply, &mut bytes) {
            return vec![(0, Err(err))];
        }
        match reply.status {
            ReplyStatus::Ok => vec![(0, Ok(bytes))],
            ReplyStatus::Error => vec![(0, Err(decode_error(&bytes)))],
            ReplyStatus::Replicas => {
                match decode::<Vec<(u32, Result<Vec<u8>, TaskError>)>>(&bytes, "output") {
                    Ok(replicas) => replicas
                        .into_iter()
                        .map(|(container, result)| {
                            (container, result.map(|raw| aligned_copy(&raw)))
                        })
                        .collect(),
                    Err(err) => vec![(0, Err(err))],
                }
            }
        }
    }
}

impl Drop for ShmCall {
    fn drop(&mut self) {
        if !self.finished {
            // The slot frees when its answer arrives (see `harvest`), which the runtime
            // is asked to send at once.
            self.connection.abandon(&self.state);
        }
    }
}

impl Drop for ShmConnection {
    fn drop(&mut self) {
        // Under the lock: the idle watcher either sees `closed` or is woken.
        let _wakers = lock(&self.watch.wakers);
        self.watch.closed.store(true, Ordering::Release);
        self.watch.registered.notify_all();
    }
}

/// A route without the force-net switch (the connection's own `submit` entry points).
fn route(pool: PoolId, method: MethodId, query: PoolQuery) -> Route {
    Route {
        pool,
        method,
        query,
        force_net: false,
    }
}
