//! One attached client, as the runtime holds it: its memory, and the truth about it.
//!
//! A [`ClientArea`] is made for one connection and never reused: a new client gets a
//! new memfd, laid out fresh by the runtime (see [`crate::transport::shm::wire`]). Nothing a
//! dead or hostile client wrote survives into another client's area, and no client maps
//! anyone else's. The memfd is sealed against shrinking and growing before it is handed
//! over, so a client cannot `ftruncate` it to make the runtime fault on its pages. (It
//! can still punch holes with `fallocate`: the pages then read as zeros and are
//! allocated again on the runtime's next touch — memfds live on the kernel's internal
//! tmpfs, which has no size limit to run into — so that too only hurts the client.)
//!
//! # Runtime-private truth
//!
//! What a client writes is a request, never the truth. The runtime keeps, in its own
//! memory:
//!
//! * per slot, whether it is in flight ([`SLOT_IDLE`] / [`SLOT_IN_FLIGHT`], and
//!   `ANSWERING` while one answer is being written) and its *generation*, bumped by
//!   every answer: a popped index whose slot is in flight is ignored, so pushing a slot
//!   twice neither runs its task twice nor frees or leaks its output block; a task's
//!   reply carries the generation it was accepted in, so a reply for a call that was
//!   answered already (abandoned: `KIND_ABANDON`) is discarded and never lands in the
//!   slot's next call;
//! * the output space's allocator and which block holds which slot's output (freed when
//!   the runtime accepts that slot again; the whole space goes with the area);
//! * the cancel flags of the client's periodic tasks;
//! * the client's [`Rights`] (uid, admin), fixed from `SO_PEERCRED` at connect.
//!
//! The runtime marks a slot idle *before* it publishes the answer (a new *answer mark* in
//! the slot's `STATE`: the runtime's truth word of the slot's next generation, see
//! [`wire::slot::STATE`]), so a client that reuses a slot as soon as it sees its answer
//! is never ignored. The client never writes `STATE`; the runtime never reads it.
//!
//! # Batches
//!
//! An ingest pops up to `INGEST_BUDGET` slot indices at once (one hold on the ring, one
//! head published), then takes them one by one; whether the ring holds anything is
//! asked of a [`RingWatch`] (no lock) on every poll round. Chimod routing code runs
//! while a batch is taken and may kill the poller (a stack overflow): the batch's
//! indices not taken yet are recorded in the worker's [`Routing`], and the next ingest
//! takes them (they were never accepted, so nothing runs twice). An output-space block
//! is freed when its slot is accepted again; a count of held blocks spares the accept of
//! the common small answer the lock on the output space.
//!
//! # Waking a sleeping client
//!
//! A client waiting for an answer spins, then announces itself in its slot's `WAITING`
//! word and re-reads `STATE` before it sleeps; the runtime publishes the mark, then reads
//! `WAITING` and wakes the sleeper. Each side needs a store-load fence between its
//! store and its load, or both could miss each other. On the runtime's side that fence
//! waits until the slot's line has come back from the client that spins on it: about a
//! fifth of an empty task's time in the runtime (perf, pipelined calls). So an answer
//! from a task that the area's own worker (its *owner*) runs inline in its polling role,
//! other than the first of the poll round (checked at once: in a sync round trip it is
//! the round's only one, and deferring its check only moved the cost), publishes its mark
//! with a plain `Release` store and notes the slot; the poller checks
//! the noted slots' `WAITING` words after one fence for all of them
//! ([`ClientArea::wake_waiters`]) at the end of the poll round that ran those tasks
//! (while the slots' lines are still this CPU's: a check later, after the client took
//! its line back to read the answer and write its next call, costs a miss on the
//! runtime's path and another on the client's), and again at the start of the next
//! round and before it sleeps (a poller killed mid-round leaves its notes to the next
//! one). That poller is the coroutine that answered: it goes back to polling right
//! after the task, so a check is never left behind a sleeping poller. A client that
//! went to sleep just as its answer landed is woken at most one poll round later; a
//! client spinning sees the mark as soon as the store reaches it. Every other answer (a
//! task that waited and finished on another coroutine, another worker, a network
//! thread, a stop) does the fence and the check at once. The owner is told by a
//! thread-local mark its poller sets on every ingest ([`mark_polling`]): a server id
//! and a worker index, so no thread of another server or worker ever notes a slot of
//! this area, and by the coroutine's armed hand-off ([`crate::coroutine::is_armed`]),
//! which says the task runs inline on the poller.
//!
//! Before it sets any `WAITING` bit, the client also raises the control line's sleep
//! count ([`wire::CONTROL_SLEEPERS`]), and lowers it when that sleep is over (a thread's
//! wait returned; a slot a watcher waited on was released). The runtime reads the count
//! where it would read `WAITING` (after the fence, or as the SeqCst pair's load) and
//! skips the `WAITING` words while it is 0: the same handshake, one word further. A
//! client that only spins never writes that line, so the runtime reads it from its own
//! cache, where each deferred `WAITING` read missed (the client had taken the slot's
//! line back to read its answer and write its next call): a twentieth of an empty
//! pipelined task's time in the runtime. A forged count only delays or repeats the
//! wake-ups of the forger's own calls.
//!
//! # Who answers a slot
//!
//! An answer first claims its slot in the runtime's truth (in flight in the answer's
//! generation → `ANSWERING`); an answer that finds anything else is discarded. Of the
//! answers to one generation of a slot, only the task's own can come from a thread
//! other than the owner's (it finishes wherever it ran: another worker, a network
//! thread); the others come from the owner's ingest and poller (`fail_in_flight`: an
//! abandon request, a routing that killed the poller), and the stop's `fail_queued`
//! only answers slots it accepts itself, idle ones. So when the owner runs the task
//! inline, every answer to that generation is on the owner's thread, one after another:
//! that answer claims the slot with a load and a store, no locked step. Every other
//! answer claims it with a compare-and-swap, so that a late answer on another thread
//! and a cancellation on the owner's write one answer only.
//!
//! Only two parties take an idle slot in flight: the owner's ingest (on the owner's
//! thread, one batch after another), with a load and a store, and the stop's
//! `fail_queued`, with a compare-and-swap. They take different indices (each pops its
//! own from the ring), unless the client pushed one index twice and the stop pops the
//! second copy while the owner routes the first: then both may take the slot. The task
//! still runs once (the stop's copy only answers `RuntimeStopped`), output blocks are
//! allocated and freed under the outputs' lock either way, and the two answers may
//! both be written into that slot: a client that pushes a slot twice garbles only its
//! own call, and only at a stop.
//!
//! # Abandoned calls
//!
//! A `KIND_ABANDON` request lists other slots of the client in its payload: if a listed
//! slot's call is in flight, the runtime answers it with `Cancelled` at once (so the client can reuse the
//! slot) and bumps its generation; the task runs on — the runtime cannot stop a handler
//! safely in the middle — and its late reply is discarded. It still holds the data
//! share, so it counts against the quota of tasks in flight until it ends.
//!
//! # Quotas
//!
//! * Tasks in flight (config key `quotas.tasks_in_flight`), fire-and-forget,
//!   periodic and abandoned ones included: every task replica of
//!   the client holds a reference to the area's data share ([`BulkShare`]) for its whole
//!   life, so the count of those references is the count of its live tasks, read with
//!   one atomic load per task. Over the quota, the task fails with
//!   [`TaskError::QuotaExceeded`].
//! * Output bytes: outputs larger than a slot go to the area's own output space, whose
//!   size is the quota; when it is full the task fails with `QuotaExceeded`.
//! * Per uid without admin rights (see `crate::quota`), shared by every area of the uid
//!   for the runtime's life (a client that reconnects finds its counts as they were) and
//!   reached through the data share every task carries (its subtasks carry one made for
//!   them): stack overflows (config key `quotas.stack_overflows`; a handler or a route
//!   that overflows its coroutine's stack leaves that stack behind for good, as it
//!   cannot be unwound and values pinned on it must stay valid), refused here past the
//!   quota; and tasks waiting at once (`quotas.waiting_tasks`; each keeps a coroutine),
//!   refused by the worker about to run one. Either fails with `QuotaExceeded`. Admins
//!   are not counted: they may stop the runtime anyway.
//!
//! # Admin methods
//!
//! StopRuntime and Flush of the admin pool are refused here, at the only door through
//! which another process's tasks enter, with [`TaskError::PermissionDenied`] unless the
//! client's rights say admin. Tasks that modules (code linked into the runtime, trusted)
//! send on their own are not checked. DestroyPool goes through: the runtime lets a uid
//! without admin rights destroy the pools it created, and refuses it the others (the
//! task runs for that uid, see `RuntimeHandle::destroy_pool`).
//!
//! # Disowning
//!
//! A client whose ring is corrupt is disowned: the runtime stores `AREA_DISOWNED` in the
//! control line, wakes every slot the client may sleep on and shuts its socket down. The
//! client's next call (or its current wait) fails with [`TaskError::Disowned`] instead of
//! blocking.
//!
//! # Lifetime
//!
//! Each task of the client holds the area (its reply sink) or its data share; the area's
//! memory is unmapped when the last of them is gone, so a reply never writes freed
//! memory and a new client never receives an old client's memory.
use super::handshake::Rights;
use super::wire::{
    self, read_shared, slot, AreaGeometry, InputPlace, OutputPlace, ReplyStatus, SlotReply,
    SlotRequest, SlotView, TaskRequest, CONTROL_STATE,
};
use crate::admin_api;
use crate::bulk::BulkShare;
use crate::quota::UidQuotas;
use crate::codec::{encode, Bytes};
use crate::error::TaskError;
use crate::ids::{ContainerId, PoolId};
use crate::runtime::pool_table::PoolMemo;
use crate::runtime::task::{
    lock, CancelToken, Origin, ReplyKey, ReplySink, ReplyTo, Schedule, Submission, TaskInput,
};
use crate::shm::arena::{Arena, Extent};
use crate::shm::futex;
use crate::shm::naming::{InstanceName, ShmName};
use crate::shm::ring::{Ring, RingWatch};
use crate::shm::segment::Segment;
use rustix::fs::{FallocateFlags, MemfdFlags, SealFlags};
use std::collections::HashMap;
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::cell::Cell;
use std::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// The client task a worker's poller is routing now (its pool's `Monitor` and
/// `Dynamic` code runs on the poller's stack), so that a poller killed there by a stack
/// overflow can fail that task rather than leave its client waiting; and the slot
/// indices popped with it in one batch and not routed yet, so that they are routed
/// later rather than lost with the poller's stack. Written and read on the worker's own
/// thread only (the read after the poller died), so relaxed atomics suffice; they are
/// atomics only to be shareable.
#[derive(Debug)]
pub struct Routing {
    /// Whether a task is being routed now.
    active: AtomicBool,
    /// The address of its client's area: an identity, never dereferenced (client ids
    /// are reused, areas are not; the task being routed keeps its area alive).
    area: AtomicUsize,
    slot: AtomicU32,
    method: AtomicU32,
    /// The area whose batch is being routed (its address, as `area`), 0 between batches.
    batch_area: AtomicUsize,
    /// The batch: `batch[next..len]` are popped and not yet routed.
    batch: [AtomicU32; INGEST_BUDGET],
    batch_len: AtomicUsize,
    batch_next: AtomicUsize,
}

impl Default for Routing {
    fn default() -> Routing {
        Routing {
            active: AtomicBool::new(false),
            area: AtomicUsize::new(0),
            slot: AtomicU32::new(0),
            method: AtomicU32::new(0),
            batch_area: AtomicUsize::new(0),
            batch: std::array::from_fn(|_| AtomicU32::new(0)),
            batch_len: AtomicUsize::new(0),
            batch_next: AtomicUsize::new(0),
        }
    }
}

/// A task being routed, as [`Routing::take`] returns it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Routed {
    /// The address of its client's area (compare with [`Arc::as_ptr`]).
    pub area: usize,
    /// The slot of its task.
    pub slot: u32,
    /// The task's method.
    pub method: u32,
}

impl Routing {
    fn begin(&self, area: &ClientArea, slot: u32, method: u32) {
        self.area
            .store(area as *const ClientArea as usize, Ordering::Relaxed);
        self.slot.store(slot, Ordering::Relaxed);
        self.method.store(method, Ordering::Relaxed);
        self.active.store(true, Ordering::Relaxed);
    }

    fn end(&self) {
        self.active.store(false, Ordering::Relaxed);
    }

    /// Records the batch of `area` about to be routed (at most `INGEST_BUDGET` indices).
    fn begin_batch(&self, area: &ClientArea, batch: &[u32]) {
        for (kept, &slot_index) in self.batch.iter().zip(batch) {
            kept.store(slot_index, Ordering::Relaxed);
        }
        self.batch_len.store(batch.len(), Ordering::Relaxed);
        self.batch_next.store(0, Ordering::Relaxed);
        self.batch_area
            .store(area as *const ClientArea as usize, Ordering::Relaxed);
    }

    /// The batch's indices before `next` are routed (or being routed).
    fn batch_routed_to(&self, next: usize) {
        self.batch_next.store(next, Ordering::Relaxed);
    }

    fn end_batch(&self) {
        self.batch_area.store(0, Ordering::Relaxed);
    }

    /// The area (its address) and the indices of the batch not routed yet, if a batch
    /// was being routed, clearing the record.
    pub fn take_unrouted(&self) -> Option<(usize, Vec<u32>)> {
        let area = self.batch_area.swap(0, Ordering::Relaxed);
        if area == 0 {
            return None;
        }
        let len = self.batch_len.load(Ordering::Relaxed).min(INGEST_BUDGET);
        let next = self.batch_next.load(Ordering::Relaxed).min(len);
        let rest = self.batch[next..len]
            .iter()
            .map(|index| index.load(Ordering::Relaxed))
            .collect();
        Some((area, rest))
    }

    /// The task being routed, if any, clearing the record.
    pub fn take(&self) -> Option<Routed> {
        self.active.swap(false, Ordering::Relaxed).then(|| Routed {
            area: self.area.load(Ordering::Relaxed),
            slot: self.slot.load(Ordering::Relaxed),
            method: self.method.load(Ordering::Relaxed),
        })
    }
}

/// What the transport needs from the runtime: queue a task, wake a worker.
pub trait Ingress: Send + Sync {
    /// Queues a task decoded from a client slot, taking its input and its origin's
    /// parts (the reply sink of a call, the cancel flag of a periodic task, the
    /// client's data share) out of `submission`; `pools` keeps the pool looked up for
    /// the rest of the ingest batch.
    fn enqueue(&self, submission: &mut Submission, pools: &mut PoolMemo)
        -> Result<(), TaskError>;

    /// Unparks worker `worker` if it sleeps.
    fn wake_worker(&self, worker: usize);
}

/// Runtime truth (the low bits of a slot's word, its generation above them): the slot
/// holds no task of the client.
pub const SLOT_IDLE: u32 = 0;
/// Runtime truth: the slot's task was accepted and not answered yet.
pub const SLOT_IN_FLIGHT: u32 = 1;
/// Runtime truth: one answer is being written into the slot (the others are discarded).
const SLOT_ANSWERING: u32 = 2;
const PHASE_BITS: u32 = 2;
const PHASE_MASK: u32 = (1 << PHASE_BITS) - 1;

/// A slot's word: `generation` and `phase`.
fn slot_word(generation: u32, phase: u32) -> u32 {
    (generation << PHASE_BITS) | phase
}

/// Moves a slot's runtime truth from `from` to `to`, if it is `from`: with a load and a
/// store when the caller is the only party that may move it now (`alone`, see "Who
/// answers a slot" in the module docs: no locked step), else with a compare-and-swap.
fn move_slot(state: &AtomicU32, from: u32, to: u32, alone: bool) -> bool {
    if alone {
        state.load(Ordering::Acquire) == from && {
            state.store(to, Ordering::Release);
            true
        }
    } else {
        state
            .compare_exchange(from, to, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
}

/// Tasks one ingest call takes from one client before moving to the next.
const INGEST_BUDGET: usize = 64;

/// How many slots ahead of the one it routes an ingest fetches (see `route_batch`).
const PREFETCH_AHEAD: usize = 2;

/// `ClientArea::lone_slot` when the last batch was not a lone task.
const NO_LONE_SLOT: u32 = u32::MAX;

/// Counters shared by every area of a server.
#[derive(Debug, Default)]
pub struct ServerCounters {
    /// Ids of periodic tasks.
    pub next_periodic: AtomicU64,
}

/// Why an area could not be made.
#[derive(Debug, thiserror::Error)]
#[error("cannot make a client area: {0}; lower shm sizes or max_clients, or free memory")]
pub struct AreaError(String);

fn area_error(what: &str) -> impl FnOnce(std::io::Error) -> AreaError + '_ {
    move |err| AreaError(format!("{what}: {err}"))
}

/// Output space of an area: its allocator and the block of each slot's output.
struct Outputs {
    arena: Arena,
    blocks: Vec<Option<Extent>>,
}

/// One client's area and the runtime's truth about it.
pub struct ClientArea {
    client: u32,
    rights: Rights,
    pid: i32,
    memfd: OwnedFd,
    /// The client's own doorbell (an eventfd): no other client holds it, so nobody can
    /// drain, block or shut another client's wake-ups.
    bell: OwnedFd,
    memory: Segment,
    geometry: AreaGeometry,
    ring: Mutex<Ring>,
    /// Whether the ring holds tasks, without taking `ring`: looked at on every poll
    /// round of the area's worker.
    ring_watch: RingWatch,
    slots: Box<[AtomicU32]>,
    outputs: Mutex<Outputs>,
    /// Slots whose output lies in an output-space block (`outputs.blocks` not `None`):
    /// while 0, accepting a slot frees nothing and skips the `outputs` lock. Raised
    /// before the answer is published, lowered when the block is freed.
    output_blocks: AtomicUsize,
    periodic: Mutex<HashMap<u64, Arc<CancelToken>>>,
    bulk: Arc<BulkShare>,
    max_tasks: usize,
    /// The per-uid quotas of the client's uid (also in `bulk`, where tasks count them).
    uid_quotas: Option<Arc<UidQuotas>>,
    disowned: AtomicBool,
    /// A handle on the client's socket, to hang up on a disowned client.
    socket: Mutex<Option<UnixStream>>,
    /// Slot indices popped by a poller that died before routing them (see [`Routing`]):
    /// routed by the next ingest, before the ring. `has_carried` says whether any wait,
    /// so an ingest looks at the lock only then.
    carried: Mutex<Vec<u32>>,
    has_carried: AtomicBool,
    /// The slot a lone task came in last: a client waiting for each call reuses one
    /// slot, so an ingest that finds work fetches that slot's request line before it
    /// pops (see `ingest`). [`NO_LONE_SLOT`] after a batch of several tasks. The
    /// runtime's own memory, written by the owner's ingest only; a hint, never trusted.
    lone_slot: AtomicU32,
    counters: Arc<ServerCounters>,
    /// The server and worker whose poller owns the area (see the module docs).
    owner: (u64, usize),
    /// Slots the owner answered without checking `WAITING` yet, a bit each; written by
    /// the owner's thread only (plain loads and stores).
    unchecked: Box<[AtomicU64]>,
    /// Whether any bit of `unchecked` is set (the owner's thread only).
    any_unchecked: AtomicBool,
    /// Whether the owner answered a call since its last check (the owner's thread
    /// only): the first answer of a round is checked at once, as in a sync round trip
    /// that is all the round has.
    answered_in_round: AtomicBool,
}

thread_local! {
    /// The server and worker this thread polls for (set by every ingest), or `(0, 0)`:
    /// server ids start at 1.
    static POLLING_AS: Cell<(u64, usize)> = const { Cell::new((0, 0)) };
}

/// Marks the calling thread as worker `worker` of server `server`, polling its areas:
/// the owner of those areas, whose answers defer the `WAITING` check (see the module
/// docs). Called by the server's ingest, on the worker's own thread.
pub fn mark_polling(server: u64, worker: usize) {
    POLLING_AS.with(|mark| mark.set((server, worker)));
}

impl std::fmt::Debug for ClientArea {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientArea")
            .field("client", &self.client)
            .field("rights", &self.rights)
            .finish_non_exhaustive()
    }
}

/// What a new area needs to know.
pub struct AreaSpec<'a> {
    /// The instance (for names in errors).
    pub instance: &'a InstanceName,
    /// The area's index.
    pub client: u32,
    /// Its layout.
    pub geometry: AreaGeometry,
    /// The client's rights.
    pub rights: Rights,
    /// The client's pid (logs).
    pub pid: i32,
    /// Quota of tasks in flight.
    pub max_tasks: usize,
    /// The per-uid quotas of the client's uid (`None`: an admin, unlimited).
    pub(crate) uid_quotas: Option<Arc<UidQuotas>>,
    /// The client's socket (a clone), to hang up on it when disowned.
    pub socket: Option<UnixStream>,
    /// The server (its id) and the worker whose poller takes the area's tasks.
    pub owner: (u64, usize),
}

impl ClientArea {
    /// Creates, sizes, seals and lays out a fresh memfd for one client.
    pub fn create(
        spec: AreaSpec<'_>,
        counters: Arc<ServerCounters>,
    ) -> Result<ClientArea, AreaError> {
        let geometry = spec.geometry;
        let len = geometry
            .checked_total_len()
            .ok_or_else(|| AreaError("the area's size overflows".into()))?;
        let memfd = rustix::fs::memfd_create(
            "chimaera-client-area",
            MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
        )
        .map_err(|e| area_error("memfd_create")(e.into()))?;
        rustix::fs::ftruncate(&memfd, len as u64).map_err(|e| area_error("sizing")(e.into()))?;
        // Reserve every page now: a full tmpfs fails this connect, instead of a SIGBUS in
        // the runtime at its first touch of a page later.
        rustix::fs::fallocate(&memfd, FallocateFlags::empty(), 0, len as u64)
            .map_err(|e| area_error("reserving memory")(e.into()))?;
        // The client gets a read-write descriptor; without these seals it could shrink
        // the file under the runtime's mapping.
        rustix::fs::fcntl_add_seals(
            &memfd,
            SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL,
        )
        .map_err(|e| area_error("sealing")(e.into()))?;
        let name = ShmName::segment(spec.instance, "area").map_err(|e| AreaError(e.to_string()))?;
        let file = File::from(
            memfd
                .try_clone()
                .map_err(area_error("duplicating the memfd"))?,
        );
        let memory = Segment::from_memfd(file, &name).map_err(|e| AreaError(e.to_string()))?;
        let (ring_offset, ring_len) = geometry.ring_range();
        let ring_region = memory
            .region(ring_offset, ring_len)
            .map_err(|e| AreaError(e.to_string()))?;
        let ring =
            Ring::init(&ring_region, geometry.slots).map_err(|e| AreaError(e.to_string()))?;
        let share = memory
            .range_ptr(geometry.data_offset(), geometry.data_len.max(1), 1)
            .map_err(|e| AreaError(e.to_string()))?;
        let mapping: Arc<dyn Send + Sync> = Arc::new(memory.clone());
        // SAFETY: `range_ptr` proved the data share inside the read-write mapping, which
        // lives while `mapping` (a handle on it) does; this area's share is the only
        // `BulkShare` over it (each area has its own memfd).
        let bulk = unsafe { BulkShare::new(share, geometry.data_len, mapping) };
        let bulk = Arc::new(bulk.with_quotas(spec.uid_quotas.clone()));
        memory
            .atomic_u32(CONTROL_STATE)
            .map_err(|e| AreaError(e.to_string()))?
            .store(wire::AREA_ACTIVE, Ordering::Release);
        let bell = rustix::event::eventfd(
            0,
            rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
        )
        .map_err(|e| area_error("eventfd")(e.into()))?;
        let ring_watch = ring.watch();
        Ok(ClientArea {
            client: spec.client,
            rights: spec.rights,
            pid: spec.pid,
            memfd,
            bell,
            memory,
            geometry,
            ring: Mutex::new(ring),
            ring_watch,
            slots: (0..geometry.slots)
                .map(|_| AtomicU32::new(SLOT_IDLE))
                .collect(),
            outputs: Mutex::new(Outputs {
                arena: Arena::new(geometry.output_len),
                blocks: vec![None; geometry.slots as usize],
            }),
            output_blocks: AtomicUsize::new(0),
            periodic: Mutex::new(HashMap::new()),
            bulk,
            max_tasks: spec.max_tasks,
            uid_quotas: spec.uid_quotas,
            disowned: AtomicBool::new(false),
            socket: Mutex::new(spec.socket),
            carried: Mutex::new(Vec::new()),
            has_carried: AtomicBool::new(false),
            lone_slot: AtomicU32::new(NO_LONE_SLOT),
            counters,
            owner: spec.owner,
            unchecked: (0..geometry.slots.div_ceil(64))
                .map(|_| AtomicU64::new(0))
                .collect(),
            any_unchecked: AtomicBool::new(false),
            answered_in_round: AtomicBool::new(false),
        })
    }

    /// The memfd to hand to the client.
    pub fn memfd(&self) -> BorrowedFd<'_> {
        self.memfd.as_fd()
    }

    /// The client's doorbell eventfd (to hand to the client, and to watch).
    pub fn bell(&self) -> BorrowedFd<'_> {
        self.bell.as_fd()
    }

    /// The area's index.
    pub fn client(&self) -> u32 {
        self.client
    }

    /// The client's rights (its uid, and whether it administers).
    pub fn rights(&self) -> Rights {
        self.rights
    }

    /// The client's pid.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Whether the runtime disowned the client.
    pub fn is_disowned(&self) -> bool {
        self.disowned.load(Ordering::Acquire)
    }

    /// Task replicas of this client still alive: each holds the data share, a periodic
    /// task between its runs by a weak reference only (so a gone client's memory is not
    /// kept by a sleeping task, which then ends), and counts against the quota all the
    /// same.
    pub fn tasks_in_flight(&self) -> usize {
        Arc::strong_count(&self.bulk) - 1 + Arc::weak_count(&self.bulk)
    }

    /// Bytes of the output space holding outputs.
    pub fn output_bytes_in_use(&self) -> usize {
        lock(&self.outputs).arena.in_use()
    }

    /// Whether the ring has a task (the producer's tail against the runtime's own count
    /// of pops: no lock; a forged tail says yes, and the pop then disowns the client),
    /// or a dead poller left popped tasks to route.
    pub fn has_work(&self) -> bool {
        self.ring_watch.has_values() || self.has_carried.load(Ordering::Relaxed)
    }

    /// Cancels every periodic task of the client (it is gone).
    pub fn cancel_periodic(&self) {
        for (_, cancel) in lock(&self.periodic).drain() {
            cancel.cancel();
        }
    }

    /// Stops serving the client: marks the area disowned (the client's calls then fail
    /// with [`TaskError::Disowned`]), wakes its sleeping calls and hangs up its socket.
    pub fn disown(&self, why: &str) {
        if self.disowned.swap(true, Ordering::AcqRel) {
            return;
        }
        tracing::warn!(
            client = self.client,
            pid = self.pid,
            "disowning a client: {why}"
        );
        self.cancel_periodic();
        if let Ok(state) = self.memory.atomic_u32(CONTROL_STATE) {
            state.store(wire::AREA_DISOWNED, Ordering::SeqCst);
        }
        for slot_index in 0..self.geometry.slots {
            if let Ok(view) = SlotView::new(&self.memory, &self.geometry, slot_index) {
                futex::wake_all(view.word(slot::STATE));
            }
        }
        self.ring_reply_bell();
        if let Some(socket) = lock(&self.socket).take() {
            let _ = socket.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Takes up to `INGEST_BUDGET` queued tasks into the runtime, popped in one batch
    /// (one hold on the ring, one head published); returns how many indices it took.
    pub fn ingest(
        self: &Arc<Self>,
        worker: usize,
        ingress: &dyn Ingress,
        routing: &Routing,
    ) -> usize {
        if self.is_disowned() {
            return 0;
        }
        if self.ring_watch.has_values() {
            // Most likely the lone task's slot again: its request line travels from the
            // client's cache while the ring is locked and popped, not after (a hint: a
            // wrong guess fetches one line for nothing).
            if let Ok(view) = SlotView::new(
                &self.memory,
                &self.geometry,
                self.lone_slot.load(Ordering::Relaxed),
            ) {
                view.prefetch_request();
            }
        }
        let mut taken = 0;
        if self.has_carried.load(Ordering::Acquire) {
            let carried = std::mem::take(&mut *lock(&self.carried));
            self.has_carried.store(false, Ordering::Release);
            for batch in carried.chunks(INGEST_BUDGET) {
                self.route_batch(worker, batch, ingress, routing);
            }
            taken += carried.len();
        }
        let mut batch = [0u32; INGEST_BUDGET];
        // The ring's lock is held for the pops only, never while a task is routed
        // (chimod code, which may overflow the poller's stack and leak a guard).
        let Ok(mut ring) = self.ring.try_lock() else {
            return taken;
        };
        let popped = ring.pop_batch(&mut batch);
        ring.update_watch(&self.ring_watch);
        drop(ring);
        match popped {
            Ok(count) => {
                self.route_batch(worker, &batch[..count], ingress, routing);
                taken + count
            }
            Err(corrupt) => {
                self.disown(&format!("its ring is corrupt ({corrupt})"));
                taken
            }
        }
    }

    /// Ingests the popped slot indices `batch` in order, recording in `routing` which
    /// are not routed yet, in case chimod code kills the poller midway.
    fn route_batch(
        self: &Arc<Self>,
        worker: usize,
        batch: &[u32],
        ingress: &dyn Ingress,
        routing: &Routing,
    ) {
        // The slots `PREFETCH_AHEAD` places on are fetched while this one is routed: a
        // slot's lines come from the client's cache, about as long as routing a task
        // takes, and a whole batch asked at once would fill the CPU's miss buffers. The
        // reply lines too, for writing, but the first's: a client waiting for its calls
        // in order spins on that one, and would only take it back at once.
        let prefetch = |at: usize| {
            if let Some(view) = batch
                .get(at)
                .and_then(|&slot| SlotView::new(&self.memory, &self.geometry, slot).ok())
            {
                view.prefetch_request();
                if at > 0 {
                    view.prefetch_reply_for_writing();
                }
            }
        };
        (0..PREFETCH_AHEAD).for_each(prefetch);
        routing.begin_batch(self, batch);
        let mut pools = PoolMemo::of_worker();
        // One for the batch: each task's input is filled into it in place, and a fresh
        // one per task was made and then copied (see `Submission`).
        let mut submission = Submission::default();
        for (at, &slot_index) in batch.iter().enumerate() {
            prefetch(at + PREFETCH_AHEAD);
            routing.batch_routed_to(at + 1);
            self.ingest_slot(worker, slot_index, ingress, routing, &mut submission, &mut pools);
        }
        pools.keep_for_worker();
        routing.end_batch();
        let lone = match batch {
            [slot_index] => *slot_index,
            _ => NO_LONE_SLOT,
        };
        self.lone_slot.store(lone, Ordering::Relaxed);
    }

    /// Keeps slot indices a dead poller popped and never routed, for the next ingest.
    pub fn carry(&self, unrouted: Vec<u32>) {
        if unrouted.is_empty() {
            return;
        }
        lock(&self.carried).extend(unrouted);
        self.has_carried.store(true, Ordering::Release);
    }

    /// Answers the call in slot `slot_index` with `err` if it is still in flight (its
    /// routing killed a poller, or the client abandoned it); the task's own reply,
    /// later, is discarded (its generation is past).
    pub fn fail_in_flight(&self, slot_index: u32, err: &TaskError) {
        let Some(state) = self.slots.get(slot_index as usize) else {
            return;
        };
        let word = state.load(Ordering::Acquire);
        if word & PHASE_MASK == SLOT_IN_FLIGHT {
            self.write_result(slot_index, word >> PHASE_BITS, Err(err));
        }
    }

    /// Counts a stack overflow of this client's task (its route, on the poller's stack)
    /// against its uid's quota.
    pub fn count_overflow(&self) {
        self.bulk.count_overflow();
    }

    /// Fails every task still queued (the runtime is stopping).
    pub fn fail_queued(&self) {
        let carried = std::mem::take(&mut *lock(&self.carried));
        for slot_index in carried {
            if let Some(generation) = self.accept(slot_index, false) {
                self.write_result(slot_index, generation, Err(&TaskError::RuntimeStopped));
            }
        }
        let mut ring = lock(&self.ring);
        // At most one pop per slot: a client that keeps pushing (one slot again and
        // again) must not hold the stop here; what it pushes later is answered by the
        // hang-up that ends its session.
        for _ in 0..self.slots.len() {
            let popped = ring.pop();
            ring.update_watch(&self.ring_watch);
            let Ok(Some(slot_index)) = popped else {
                break;
            };
            if let Some(generation) = self.accept(slot_index, false) {
                self.write_result(slot_index, generation, Err(&TaskError::RuntimeStopped));
            }
        }
    }

    /// Moves a popped slot from idle to in flight in the runtime's truth and returns the
    /// generation its answer must carry; `None` for an index out of range or a slot in
    /// flight (a duplicate push, ignored). `by_owner`: called by the owner's ingest,
    /// which takes the slot with a load and a store (see "Who answers a slot").
    fn accept(&self, slot_index: u32, by_owner: bool) -> Option<u32> {
        let Some(state) = self.slots.get(slot_index as usize) else {
            tracing::debug!(
                client = self.client,
                slot_index,
                "ignored a slot index out of range"
            );
            return None;
        };
        let idle = state.load(Ordering::Acquire);
        let generation = idle >> PHASE_BITS;
        let in_flight = slot_word(generation, SLOT_IN_FLIGHT);
        if idle & PHASE_MASK != SLOT_IDLE || !move_slot(state, idle, in_flight, by_owner) {
            tracing::debug!(
                client = self.client,
                slot_index,
                "ignored a push of a slot in flight"
            );
            return None;
        }
        // The slot's previous output was read (or abandoned) by the client, which pushed
        // the slot again. The count was raised before that answer's idle store, which
        // the `Acquire` load above saw.
        if self.output_blocks.load(Ordering::Acquire) > 0 {
            let mut outputs = lock(&self.outputs);
            if let Some(extent) = outputs.blocks[slot_index as usize].take() {
                outputs.arena.free(extent);
                self.output_blocks.fetch_sub(1, Ordering::Release);
            }
        }
        Some(generation)
    }

    /// Abandons the slots an abandon request lists in its payload (little-endian `u32`s,
    /// copied out first); indices out of range or of slots not in flight are ignored.
    fn abandon_listed(&self, view: &SlotView, list_len: u32) -> Result<(), TaskError> {
        let len = list_len as usize;
        if len > view.payload_len() || !len.is_multiple_of(4) {
            return Err(TaskError::malformed(
                "abandon request",
                format!("{len} bytes is not a list of slot indices in a slot payload"),
            ));
        }
        let mut listed = vec![0u8; len];
        view.read_payload(&mut listed)
            .map_err(|e| TaskError::malformed("abandon request", e))?;
        for index in listed.chunks_exact(4) {
            let slot_index = u32::from_le_bytes([index[0], index[1], index[2], index[3]]);
            self.fail_in_flight(slot_index, &TaskError::Cancelled);
        }
        Ok(())
    }

    /// Takes the task of slot `slot_index` in and queues it through `ingress`, built in
    /// `submission` (the batch's, whatever an earlier slot left in it is replaced).
    fn ingest_slot(
        self: &Arc<Self>,
        worker: usize,
        slot_index: u32,
        ingress: &dyn Ingress,
        routing: &Routing,
        submission: &mut Submission,
        pools: &mut PoolMemo,
    ) {
        let Some(generation) = self.accept(slot_index, true) else {
            return;
        };
        let Ok(view) = SlotView::new(&self.memory, &self.geometry, slot_index) else {
            return;
        };
        let request = match SlotRequest::read(&view) {
            Ok(SlotRequest::Cancel { periodic: id }) => {
                let result = match lock(&self.periodic).remove(&id) {
                    Some(cancel) => {
                        cancel.cancel();
                        Ok(&[][..])
                    }
                    None => Err(TaskError::NoSuchPeriodicTask { id }),
                };
                self.write_result(slot_index, generation, result.as_ref().map(|b| *b));
                return;
            }
            Ok(SlotRequest::Abandon { list_len }) => {
                let result = self.abandon_listed(&view, list_len);
                self.write_result(slot_index, generation, result.as_ref().map(|()| &[][..]));
                return;
            }
            Ok(SlotRequest::Task(request)) => request,
            Err(err) => return self.write_result(slot_index, generation, Err(&err.into())),
        };
        if self.tasks_in_flight() >= self.max_tasks {
            let err = TaskError::QuotaExceeded {
                what: "tasks in flight".into(),
                limit: self.max_tasks as u64,
                config_key: "quotas.tasks_in_flight".into(),
            };
            self.write_result(slot_index, generation, Err(&err));
            return;
        }
        if let Some(quotas) = self.uid_quotas.as_ref().filter(|q| q.overflows_spent()) {
            return self.refuse_past_overflow_quota(slot_index, generation, quotas);
        }
        let TaskRequest {
            pool,
            method,
            query,
            schedule,
            force_net,
            ..
        } = request;
        submission.pool = pool;
        submission.method = method;
        submission.query = query;
        submission.schedule = schedule;
        // Filled where the runtime takes it from.
        if let Err(err) = self.read_input(&view, &request, &mut submission.input) {
            return self.write_result(slot_index, generation, Err(&err));
        }
        if let Err(err) = self.permitted(pool, method) {
            return self.write_result(slot_index, generation, Err(&err));
        }
        let mut periodic_id = None;
        let (sink, cancel) = match schedule {
            None => (
                Some(ReplyTo::new(
                    self.clone(),
                    ReplyKey([slot_index, generation, 0]),
                )),
                None,
            ),
            Some(Schedule::FireAndForget) => (None, None),
            Some(Schedule::Periodic(_)) => {
                let id = self.counters.next_periodic.fetch_add(1, Ordering::Relaxed) + 1;
                let cancel = CancelToken::new();
                lock(&self.periodic).insert(id, cancel.clone());
                periodic_id = Some(id);
                (None, Some(cancel))
            }
        };
        let acknowledge = sink.is_none();
        submission.origin = Origin {
            reply: sink,
            cancel,
            bulk: Some(self.bulk.clone()),
            local_worker: Some(worker),
            force_net,
            slot: None,
            admitted: false,
        };
        routing.begin(self, slot_index, method);
        let enqueued = ingress.enqueue(submission, pools);
        routing.end();
        // What a refused task left of its origin goes now: its data share counts
        // against the quota the next slot is checked against.
        if enqueued.is_err() {
            submission.origin = Origin::default();
        }
        match enqueued {
            Ok(()) if acknowledge => {
                let ack = match periodic_id {
                    Some(id) => encode(&id),
                    None => Ok(Bytes::new()),
                };
                self.write_result(slot_index, generation, ack.as_deref());
            }
            Ok(()) => {}
            Err(err) => {
                if let Some(id) = periodic_id {
                    lock(&self.periodic).remove(&id);
                }
                self.write_result(slot_index, generation, Err(&err));
            }
        }
    }

    /// Answers a task of a uid whose stack-overflow quota is used up. Out of line: the
    /// ingest's common path stays small enough to be inlined whole.
    #[cold]
    #[inline(never)]
    fn refuse_past_overflow_quota(&self, slot_index: u32, generation: u32, quotas: &UidQuotas) {
        self.write_result(slot_index, generation, Err(&quotas.overflow_error()));
    }

    /// Refuses admin methods to a client without admin rights.
    fn permitted(&self, pool: PoolId, method: u32) -> Result<(), TaskError> {
        if pool != PoolId::ADMIN || self.rights.admin {
            return Ok(());
        }
        let action = match method {
            admin_api::STOP_RUNTIME => "StopRuntime",
            admin_api::FLUSH => "Flush",
            _ => return Ok(()),
        };
        Err(TaskError::PermissionDenied {
            action: action.into(),
            uid: self.rights.uid,
        })
    }

    /// Copies a task's input out of the client's memory (with atomic loads) into
    /// `input`, after its length was checked against the place it claims to lie in —
    /// before anything is allocated for it, so a forged length costs the runtime nothing.
    fn read_input(
        &self,
        view: &SlotView,
        request: &TaskRequest,
        input: &mut TaskInput,
    ) -> Result<(), TaskError> {
        let input_len = request.input_len as usize;
        let source = match request.input {
            InputPlace::Slot if input_len <= view.payload_len() => None,
            InputPlace::Slot => {
                return Err(TaskError::malformed(
                    "input",
                    format!(
                        "{input_len} bytes claimed in a slot whose payload holds {}",
                        view.payload_len()
                    ),
                ))
            }
            InputPlace::ClientData { offset } => {
                let share = self.geometry.data_len;
                let start = usize::try_from(offset)
                    .ok()
                    .filter(|start| start.checked_add(input_len).is_some_and(|end| end <= share))
                    .ok_or_else(|| {
                        TaskError::malformed(
                            "input",
                            format!("buffer {offset}+{input_len} lies outside the client's {share}-byte data share"),
                        )
                    })?;
                Some(self.geometry.data_offset() + start)
            }
        };
        // Inside the task when small, else a recycled buffer (the task gives it back when
        // dropped): no allocation per task.
        input.fill(input_len, |bytes| {
            match source {
                None => view.read_payload(bytes),
                Some(at) => read_shared(&self.memory, at, bytes),
            }
            .map_err(|e| TaskError::malformed("input", e))
        })?;
        match &self.uid_quotas {
            Some(quotas) => input.charge(quotas),
            None => Ok(()),
        }
    }

    fn write_result(&self, slot_index: u32, generation: u32, result: Result<&[u8], &TaskError>) {
        match result {
            Ok(bytes) => self.write_output(slot_index, generation, ReplyStatus::Ok, bytes),
            Err(err) => {
                let bytes = encode_error(err);
                self.write_output(slot_index, generation, ReplyStatus::Error, &bytes);
            }
        }
    }

    /// Writes an answer into a slot in flight in `generation`, marks the slot idle (in
    /// the next generation) in the runtime's truth, then publishes that word as the
    /// slot's answer mark and wakes the
    /// client if it sleeps. An answer for another generation, or for a slot another
    /// answer is being written to, is discarded: the call was answered already.
    fn write_output(&self, slot_index: u32, generation: u32, status: ReplyStatus, bytes: &[u8]) {
        let Some(state) = self.slots.get(slot_index as usize) else {
            return;
        };
        let in_flight = slot_word(generation, SLOT_IN_FLIGHT);
        let answering = slot_word(generation, SLOT_ANSWERING);
        // The owner running the task inline is the only one answering this generation
        // of the slot now (see "Who answers a slot" in the module docs).
        let owner = POLLING_AS.with(Cell::get) == self.owner && crate::coroutine::is_armed();
        if !move_slot(state, in_flight, answering, owner) {
            return;
        }
        let next = slot_word(generation.wrapping_add(1), SLOT_IDLE);
        if let Ok(view) = SlotView::new(&self.memory, &self.geometry, slot_index) {
            self.store_output(&view, slot_index, status, bytes);
            // Idle before the mark: a client reusing the slot at once is not ignored.
            state.store(next, Ordering::Release);
            if owner && self.answered_in_round.load(Ordering::Relaxed) {
                // The owner checks `WAITING` later, after one fence for the round's
                // answers after its first (see the module docs).
                view.word(slot::STATE).store(next, Ordering::Release);
                self.note_unchecked(slot_index);
            } else {
                if owner {
                    self.answered_in_round.store(true, Ordering::Relaxed);
                }
                // SeqCst store, then SeqCst load: the client's announcement (SeqCst,
                // before it re-reads `STATE`) and this pair cannot both miss each
                // other, with no fence between them.
                view.word(slot::STATE).store(next, Ordering::SeqCst);
                if self.sleep_announced(Ordering::SeqCst) {
                    self.wake_if_waiting(&view);
                }
            }
        } else {
            state.store(next, Ordering::Release);
        }
    }

    /// Whether the client announced that a call of its may sleep (the control line's
    /// sleep count is not 0): otherwise no slot's `WAITING` needs reading. Loaded after
    /// the store of the answer mark and a fence (or as the SeqCst load of a SeqCst pair); a
    /// hostile value costs that client a late or a spurious wake-up, nothing else.
    fn sleep_announced(&self, order: Ordering) -> bool {
        self.memory
            .atomic_u32(wire::CONTROL_SLEEPERS)
            .map_or(true, |sleepers| sleepers.load(order) != 0)
    }

    /// Wakes whoever the slot's `WAITING` word says sleeps on the slot's answer. A
    /// hostile value costs the client spurious wake-ups, nothing else.
    fn wake_if_waiting(&self, view: &SlotView) {
        let waiting = view.word(slot::WAITING).load(Ordering::SeqCst);
        if waiting & wire::WAITING_THREAD != 0 {
            futex::wake(view.word(slot::STATE), 1);
        }
        if waiting & wire::WAITING_WATCHER != 0 {
            self.ring_reply_bell();
        }
    }

    /// Notes that the owner answered `slot_index` without checking `WAITING`. Called on
    /// the owner's thread only, the one writer of `unchecked`.
    fn note_unchecked(&self, slot_index: u32) {
        let Some(word) = self.unchecked.get(slot_index as usize / 64) else {
            return;
        };
        let bit = 1u64 << (slot_index % 64);
        word.store(word.load(Ordering::Relaxed) | bit, Ordering::Relaxed);
        self.any_unchecked.store(true, Ordering::Relaxed);
    }

    /// Checks `WAITING` of every slot the owner answered since the last check, after
    /// one fence, and wakes the sleepers (see the module docs). Called on the owner's
    /// thread, at the end and the start of every poll round and before the owner sleeps;
    /// a call from any other thread does nothing.
    pub fn wake_waiters(&self) {
        let unchecked = self.any_unchecked.load(Ordering::Relaxed);
        if !(unchecked || self.answered_in_round.load(Ordering::Relaxed))
            || POLLING_AS.with(Cell::get) != self.owner
        {
            return;
        }
        self.answered_in_round.store(false, Ordering::Relaxed);
        if !unchecked {
            return;
        }
        self.any_unchecked.store(false, Ordering::Relaxed);
        // Orders every answer mark published before against the `WAITING` loads below, as
        // the SeqCst pair of an immediate answer does.
        fence(Ordering::SeqCst);
        let announced = self.sleep_announced(Ordering::Relaxed);
        for (index, word) in self.unchecked.iter().enumerate() {
            let mut bits = word.load(Ordering::Relaxed);
            if bits == 0 {
                continue;
            }
            word.store(0, Ordering::Relaxed);
            // Nobody can sleep on these answers: the notes are settled unread (each
            // `WAITING` read would miss, the client having taken the slot's line back).
            if !announced {
                continue;
            }
            while bits != 0 {
                let slot_index = index * 64 + bits.trailing_zeros() as usize;
                bits &= bits - 1;
                if let Ok(view) = SlotView::new(&self.memory, &self.geometry, slot_index as u32) {
                    self.wake_if_waiting(&view);
                }
            }
        }
    }

    /// Bumps the control line's reply bell and wakes the client's reply watcher.
    fn ring_reply_bell(&self) {
        if let Ok(bell) = self.memory.atomic_u32(wire::CONTROL_REPLY_BELL) {
            bell.fetch_add(1, Ordering::SeqCst);
            futex::wake(bell, 1);
        }
    }

    fn store_output(&self, view: &SlotView, slot_index: u32, status: ReplyStatus, bytes: &[u8]) {
        let describe = |status, place| {
            SlotReply {
                status,
                len: bytes.len() as u32,
                place,
            }
            .write(view)
        };
        if view.write_inline(bytes).is_ok() {
            return describe(status, OutputPlace::Line);
        }
        if view.write_payload(bytes).is_ok() {
            return describe(status, OutputPlace::Slot);
        }
        let extent = lock(&self.outputs).arena.alloc(bytes.len(), 16);
        let written = extent.filter(|extent| {
            wire::write_shared(
                &self.memory,
                self.geometry.output_offset() + extent.offset,
                bytes,
            )
            .is_ok()
        });
        match written {
            Some(extent) => {
                let mut outputs = lock(&self.outputs);
                match outputs.blocks[slot_index as usize].replace(extent) {
                    Some(stale) => {
                        outputs.arena.free(stale);
                    }
                    None => {
                        self.output_blocks.fetch_add(1, Ordering::Release);
                    }
                }
                drop(outputs);
                describe(
                    status,
                    OutputPlace::OutputSpace {
                        offset: extent.offset as u64,
                    },
                );
            }
            None => {
                if let Some(extent) = extent {
                    lock(&self.outputs).arena.free(extent);
                }
                let err = encode_error(&TaskError::QuotaExceeded {
                    what: format!("output bytes (a {}-byte output did not fit)", bytes.len()),
                    limit: self.geometry.output_len as u64,
                    config_key: "shm.runtime_data_size (divided among max_clients)".into(),
                });
                let _ = view.write_payload(&err);
                SlotReply {
                    status: ReplyStatus::Error,
                    len: err.len() as u32,
                    place: OutputPlace::Slot,
                }
                .write(view);
            }
        }
    }
}

/// Answers the calls of this client; a key is `[slot, generation, 0]`.
impl ReplySink for ClientArea {
    fn complete_one(
        &self,
        key: ReplyKey,
        _container: ContainerId,
        result: Result<&[u8], TaskError>,
    ) {
        self.write_result(key.0[0], key.0[1], result.as_ref().map(|b| *b));
    }

    fn complete(&self, key: ReplyKey, mut results: Vec<(ContainerId, Result<Bytes, TaskError>)>) {
        let [slot_index, generation, _] = key.0;
        if results.len() == 1 {
            let (_, result) = results.remove(0);
            self.write_result(slot_index, generation, result.as_deref());
            return;
        }
        let replicas: Vec<(u32, Result<Vec<u8>, TaskError>)> = results
            .into_iter()
            .map(|(container, result)| (container, result.map(|bytes| bytes.to_vec())))
            .collect();
        let (status, bytes) = match encode(&replicas) {
            Ok(bytes) => (ReplyStatus::Replicas, bytes),
            Err(err) => (ReplyStatus::Error, encode_error(&err)),
        };
        self.write_output(slot_index, generation, status, &bytes);
    }
}

/// An error as archived bytes (a fixed message if even that fails).
pub fn encode_error(err: &TaskError) -> Bytes {
    encode(err).unwrap_or_else(|_| {
        encode(&TaskError::failed("an error that could not be encoded")).unwrap_or_default()
    })
}
