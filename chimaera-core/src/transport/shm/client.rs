//! A client process's end of the shared-memory transport.
//!
//! [`ShmConnection::connect`] connects to the runtime's Unix socket and receives an area
//! of its own (a memfd no other client maps), the sealed runtime page and its worker's
//! doorbell eventfd ([`super::handshake`]); it maps the area and attaches as the
//! producer of the area's ring. The socket stays open: it is this client's liveness to
//! the runtime, and the runtime's to this client.
//!
//! **A call**: take a free slot (the slot is the client's until it consumes the
//! result), write the task header and the input (in the slot's payload, or in a buffer
//! of the client's data share when larger), push the slot index, and write the worker's
//! eventfd only if the runtime page says that worker sleeps. Then wait: spin on the
//! slot's *answer mark* (`STATE`: the runtime writes a new value with each answer, so
//! the call is answered once it differs from the value read before the call was
//! queued; the client never writes it, so the slot's reply line is never taken back
//! from the runtime between answers) for a bounded time, then announce `waiting` (the
//! area's sleep count, then the slot's `WAITING` word: while the count is 0 the runtime
//! reads no `WAITING` word) and sleep on the slot's futex in short timed waits. The bound is in time, not in
//! spins. The connection's only call in flight (a sync caller) spins up to 200 µs; a
//! call waited on while others are in flight (a pipelined window) only 25 µs: a
//! pipelined client whose oldest call waits behind other clients' tasks sleeps instead
//! of spinning, so on a machine with fewer cores than clients plus workers, more
//! clients do not take the worker's CPU (the runtime wakes a sleeper once, with the
//! answer it waits for, and the client then finds the rest of its window answered or
//! nearly). The sleeps are timed: each timeout checks the socket, so a dead runtime
//! fails the call with `RuntimeStopped`, and a runtime that disowned this client fails
//! it with `Disowned`, within about 100 ms instead of hanging.
//!
//! **Threads share a connection**, and the cost of a call is on every round trip's
//! critical path, so a call's bookkeeping is lock-free: the free slots are a lock-free
//! queue plus the slot released last (a sync caller keeps reusing one warm slot), the
//! input is archived in a buffer of the calling thread's own, and each slot has a
//! process-private *claim* word (generation and state, see [`SlotClaim`]) instead of a
//! lock. A sync call takes one lock, the ring's producer lock (the ring has one
//! producer), uncontended unless threads submit at the same instant (besides the data
//! share's allocator for an input too large for its slot, and the wakers' lock on
//! release once a call of the connection was polled). The claim settles
//! the only race there is: the call's waiter and a harvest (another thread's submission
//! finding every slot taken) may both see the slot answered; whoever moves the claim
//! from held to *reading* by compare-exchange alone reads the answer and frees the slot.
//! A harvest files the results it took by slot and generation, under a lock (held for
//! its whole scan), in the same critical section where the claim leaves *reading*; a
//! waiter that lost the race waits for that (the harvest copies the results, briefly)
//! and takes them from the file. A submission that finds every slot taken harvests
//! one answered slot, not all: an abandoned call's if there is one, else that of the
//! answered call pushed last (each claim is stamped under the ring's producer lock). In
//! a window one call wider than the slots, waited in order, the call whose answer was
//! moved out is then the only one without a slot, and near the back of the window: the
//! next harvest comes when it reaches the front, about once per lap of the window (a
//! harvest of every answered slot made most calls of the window collect from the file).
//! Harvests closer together than half the slots' submissions (a window much wider than
//! the slots) free every answered slot instead: one scan for many calls. An answer of
//! at most the reply line's 32 bytes is filed inline and the per-slot lists keep their
//! capacity, so harvests allocate nothing for the usual small answer. An
//! abandon sets a flag on the claim by compare-exchange: on a held claim (the slot frees
//! when answered, as below), or on one being read (the harvest drops the results), or it
//! finds the claim gone and drops the filed results. The claims never live in the area:
//! the runtime cannot touch them, and the slot words the client reads there are only
//! compared (answered or not), never trusted as indices or lengths.
//!
//! **Async callers** poll instead of sleeping: [`ShmCall::poll_done`] records the task's
//! waker by slot and sets the slot's `WAITING_WATCHER` bit, then re-checks the slot (the
//! runtime publishes the answer before it reads `WAITING`, the client sets `WAITING`
//! before it re-reads the slot's answer mark, both `SeqCst`: one of them sees the
//! other). The first poll starts this connection's one *reply watcher* thread. It sleeps on the control line's reply
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
use crossbeam_queue::ArrayQueue;
use std::cell::RefCell;
use std::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
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
    /// This user has as many connections to the runtime as its quota allows.
    #[error("uid {uid} has all the {limit} connections its quota allows to instance `{instance}`; close some (a client process needs one), or ask the runtime's owner to raise quotas.connections")]
    TooManyConnections {
        /// The instance.
        instance: String,
        /// This process's uid, as the runtime saw it.
        uid: u32,
        /// The uid's quota of connections.
        limit: u32,
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
    /// Submissions pushed so far: each call's stamp (see [`SlotClaim`]).
    pushed: u64,
}

/// The call slots no call holds: a lock-free queue, plus the slot released last, which
/// a submitter takes back first. A connection with one call at a time (a sync caller)
/// thus reuses one slot, whose lines stay warm, at one atomic swap per take and one
/// compare-exchange per release. Every free slot index is in exactly one of the two
/// (a slot index leaves them only through `take`, which hands it to one caller).
struct FreeSlots {
    /// The slot released last, or [`NO_SLOT`].
    recent: AtomicU32,
    /// The others; room for every call slot, so a push never fails.
    others: ArrayQueue<u32>,
}

/// `FreeSlots::recent` when empty (no slot has this index: the count is a `u32`).
const NO_SLOT: u32 = u32::MAX;

impl FreeSlots {
    fn new(call_slots: u32) -> FreeSlots {
        let others = ArrayQueue::new(call_slots.max(1) as usize);
        for slot_index in 0..call_slots {
            // Within capacity: the queue has room for every call slot.
            let _ = others.push(slot_index);
        }
        FreeSlots {
            recent: AtomicU32::new(NO_SLOT),
            others,
        }
    }

    /// A free slot, now the caller's alone.
    #[inline(always)]
    fn take(&self) -> Option<u32> {
        // A load first: a pipelined window that drained `recent` pays no swap for it.
        if self.recent.load(Ordering::Relaxed) != NO_SLOT {
            let slot_index = self.recent.swap(NO_SLOT, Ordering::AcqRel);
            if slot_index != NO_SLOT {
                return Some(slot_index);
            }
        }
        self.others.pop()
    }

    /// Returns `slot_index` (taken with `take`, not yet returned). `SeqCst`, as is the
    /// queue's push: `take_slot`'s waiters rely on it.
    #[inline(always)]
    fn put(&self, slot_index: u32) {
        if self
            .recent
            .compare_exchange(NO_SLOT, slot_index, Ordering::SeqCst, Ordering::Relaxed)
            .is_err()
        {
            // Never full: it has room for every call slot, and each index is in at most
            // one place.
            let _ = self.others.push(slot_index);
        }
    }

    /// How many slots are free (a snapshot).
    fn len(&self) -> usize {
        self.others.len() + usize::from(self.recent.load(Ordering::Relaxed) != NO_SLOT)
    }
}

/// This client's claim on one slot: process-private bookkeeping (never in the area), so
/// only this process's threads race on it. `word` packs the slot's *generation*, bumped
/// by each call that takes the slot (a call knows its claim by it even after a harvest
/// freed the slot and another call took it), with a state: `CLAIM_FREE` (in the free
/// list, or taken from it by a submitter that has not published its call yet),
/// `CLAIM_HELD` (a call waits for its answer) or `CLAIM_READING` (one thread, the call's
/// waiter or a harvest, won the compare-exchange from `CLAIM_HELD` and alone reads the
/// answer and frees the slot), plus the `CLAIM_ABANDONED` flag (the call was dropped).
#[derive(Default)]
struct SlotClaim {
    word: AtomicU64,
    /// The data-share buffer of the held call's input (`input_len` 0: none). Written by
    /// the submitter before it publishes `CLAIM_HELD` (release), read by the thread that
    /// took the claim to `CLAIM_READING` (acquire).
    input_offset: AtomicUsize,
    input_len: AtomicUsize,
    /// When the held call was pushed (the connection's count of pushes, stamped under
    /// the ring's producer lock): which answered call is the newest, for a harvest
    /// that frees one slot (a hint only).
    stamp: AtomicU64,
    /// A poll of the slot's call raised the area's sleep count before it set the slot's
    /// `WAITING_WATCHER` bit; the slot's release lowers it again.
    watch_announced: AtomicBool,
    /// The slot's answer mark (its `STATE` word) when the held call was queued: the call
    /// is answered once the mark differs. Written by the submitter before it publishes
    /// `CLAIM_HELD` (release).
    submitted_mark: AtomicU32,
    /// A bit of the slot's `WAITING` word was set during this hold (stored after the
    /// bit): the slot's release clears the word. A call that never slept leaves the
    /// slot's reply line alone.
    waiting_set: AtomicBool,
}

const CLAIM_FREE: u64 = 0;
const CLAIM_HELD: u64 = 1;
const CLAIM_READING: u64 = 2;
const CLAIM_STATE: u64 = 3;
const CLAIM_ABANDONED: u64 = 4;
const CLAIM_GENERATION_SHIFT: u32 = 3;

/// The claim word of `generation` in `state`.
fn claim_word(generation: u64, state: u64) -> u64 {
    (generation << CLAIM_GENERATION_SHIFT) | state
}

fn claim_generation(word: u64) -> u64 {
    word >> CLAIM_GENERATION_SHIFT
}

impl SlotClaim {
    /// Records the slot's answer mark as it is before the call is queued (the runtime
    /// writes the mark only once it has taken the slot: after the queueing).
    #[inline(always)]
    fn mark_submitted(&self, view: &SlotView) {
        let mark = view.word(slot::STATE).load(Ordering::Relaxed);
        self.submitted_mark.store(mark, Ordering::Relaxed);
    }

    /// Whether the runtime answered the held call: the slot's answer mark moved on from
    /// the one the call was queued with (loaded with `order`). A mark no answer wrote (a
    /// thread of this process scribbling) only makes the call read its slot early: the
    /// reply's descriptor is checked before it is used, as every reply's is.
    #[inline(always)]
    fn answered(&self, view: &SlotView, order: Ordering) -> bool {
        view.word(slot::STATE).load(order) != self.submitted_mark.load(Ordering::Relaxed)
    }

    /// The held call's input buffer in the data share, if it has one.
    fn input(&self) -> Option<Extent> {
        let len = self.input_len.load(Ordering::Relaxed);
        (len != 0).then(|| Extent {
            offset: self.input_offset.load(Ordering::Relaxed),
            len,
        })
    }
}

/// A thread's announcement, in the area's sleep count, that it may sleep on a slot's
/// `STATE`: raised (SeqCst) before it sets the slot's `WAITING_THREAD` bit, lowered
/// when the wait is over, whichever way it ends.
struct SleepAnnouncement<'a>(&'a AtomicU32);

impl<'a> SleepAnnouncement<'a> {
    fn raise(sleepers: &'a AtomicU32) -> SleepAnnouncement<'a> {
        sleepers.fetch_add(1, Ordering::SeqCst);
        SleepAnnouncement(sleepers)
    }
}

impl Drop for SleepAnnouncement<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An answer moved out of its slot (by a harvest), or the reason there is none.
enum Moved {
    /// An output or error of at most [`MOVED_INLINE`] bytes, copied whole: a harvest
    /// moves the usual small answer without allocating.
    Small {
        /// Whether the bytes are the output (else an archived error).
        ok: bool,
        len: usize,
        bytes: MovedBytes,
    },
    /// Any other answer, as every replica's result.
    Results(Results),
    /// No answer: the call failed with this.
    Failed(TaskError),
}

/// Answers up to this size are moved out of their slot inline (the reply line's room).
const MOVED_INLINE: usize = slot::INLINE_OUTPUT_LEN;

/// The bytes of a [`Moved::Small`] answer, aligned so rkyv can read them in place.
#[derive(Clone, Copy)]
#[repr(C, align(16))]
struct MovedBytes([u8; MOVED_INLINE]);

impl Moved {
    /// Every replica's result.
    fn into_results(self) -> Results {
        match self {
            Moved::Small { ok, len, bytes } => {
                let bytes = bytes.0.get(..len).unwrap_or_default();
                vec![(
                    0,
                    if ok {
                        Ok(aligned_copy(bytes))
                    } else {
                        Err(decode_error(bytes))
                    },
                )]
            }
            Moved::Results(results) => results,
            Moved::Failed(err) => vec![(0, Err(err))],
        }
    }

    /// The answer `decode`d (the first error by container wins).
    fn decode<T>(self, decode: &dyn Fn(&[u8]) -> Result<T, TaskError>) -> Result<T, TaskError> {
        match self {
            Moved::Small { ok, len, bytes } => {
                let bytes = bytes.0.get(..len).unwrap_or_default();
                if ok {
                    decode(bytes)
                } else {
                    Err(decode_error(bytes))
                }
            }
            Moved::Results(results) => decode_first(results, decode),
            Moved::Failed(err) => Err(err),
        }
    }
}

/// The answers a harvest moved out of one slot, by the generation of their calls.
type Filed = Vec<(u64, Moved)>;

/// How a call's waiter finds its answer.
enum Answer {
    /// In the slot, which the waiter now reads and frees (its claim is `CLAIM_READING`).
    InSlot,
    /// Moved out by a harvest (the slot may already serve another call).
    Harvested(Moved),
}

thread_local! {
    /// Where typed clients archive a call's input before it is copied into a slot: one
    /// per thread, so threads sharing a connection neither wait for nor lock it.
    static ENCODE_BUFFER: RefCell<OutputBuffer> = RefCell::new(OutputBuffer::reusable());
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
    free_slots: FreeSlots,
    /// This client's claim on each slot, indexed by slot (see [`SlotClaim`]).
    claims: Box<[SlotClaim]>,
    /// Answers a harvest moved out of answered slots, until their calls collect them
    /// (or drop them): by slot (the index), then by generation (a slot may be harvested
    /// again, for its next call, before the previous call collects its answer). The
    /// lists keep their capacity, so a steady pipeline files answers without allocating.
    harvested: Mutex<Box<[Filed]>>,
    /// The count of pushes (see [`Producer`]) when a submission last harvested.
    last_harvest: AtomicU64,
    /// Where a submitter that found no free slot waits (with `slot_freed`).
    slot_wait: Mutex<()>,
    slot_freed: Condvar,
    /// Submitters waiting on `slot_freed`: a release that sees 0 skips the notify (and
    /// its lock) safely, as `take_slot` explains.
    slot_waiters: AtomicUsize,
    data: Mutex<Arena>,
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
    /// A call of this connection was polled (set before its first look at its claim,
    /// never cleared): until then a harvest takes no waker, and skips their lock.
    polled: AtomicBool,
}

impl Watch {
    fn new(slots: u32) -> Watch {
        Watch {
            wakers: Mutex::new(vec![None; slots as usize]),
            registered: Condvar::new(),
            idle: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            started: AtomicBool::new(false),
            polled: AtomicBool::new(false),
        }
    }

    /// Takes the waker of `slot_index`, if its call registered one. Always under the
    /// lock (harvests only, a slow path): a poll registers its waker before its first
    /// poll starts the watcher, so `started` may still read `false` here although a
    /// waker waits (and, its slot freed, no watcher would ever find it answered).
    fn take(&self, slot_index: u32) -> Option<Waker> {
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
            Reply::UidFull { uid, limit } => {
                return Err(ConnectError::TooManyConnections {
                    instance: instance.to_string(),
                    uid,
                    limit,
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
            producer: Mutex::new(Producer { ring, pushed: 0 }),
            free_slots: FreeSlots::new(call_slots),
            claims: (0..geometry.slots).map(|_| SlotClaim::default()).collect(),
            // Room for one answer per slot from the start: a harvest that frees one slot
            // picks whichever fits best, so a steady pipeline reaches slots it has not
            // used before long after its start (and would allocate there).
            last_harvest: AtomicU64::new(0),
            harvested: Mutex::new(
                (0..geometry.slots)
                    .map(|_| Vec::with_capacity(1))
                    .collect(),
            ),
            slot_wait: Mutex::new(()),
            slot_freed: Condvar::new(),
            slot_waiters: AtomicUsize::new(0),
            data: Mutex::new(Arena::new(geometry.data_len)),
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

    #[inline(always)]
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
    #[inline(always)]
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

    #[inline(always)]
    fn take_slot(&self) -> Result<u32, TaskError> {
        if let Some(err) = self.failure() {
            return Err(err);
        }
        match self.free_slots.take() {
            Some(slot_index) => Ok(slot_index),
            None => self.take_slot_waiting(),
        }
    }

    /// [`take_slot`](Self::take_slot) once every slot holds a call.
    #[cold]
    fn take_slot_waiting(&self) -> Result<u32, TaskError> {
        loop {
            if let Some(err) = self.failure() {
                return Err(err);
            }
            if let Some(slot_index) = self.free_slots.take() {
                return Ok(slot_index);
            }
            // Every slot holds a call: move an answered one's answer out of shared
            // memory, so answers nobody collected yet do not hold the queue. One is
            // enough (see the module docs): in a window of calls one wider than the
            // slots, waited in order, this runs about once per lap of the window. Had
            // the last harvest come fewer than half the slots' submissions ago (a
            // window much wider than the slots), every answered slot is freed: one
            // scan for many calls.
            let pushed = lock(&self.producer).pushed;
            let last = self.last_harvest.swap(pushed, Ordering::Relaxed);
            let often = pushed.wrapping_sub(last) < u64::from(self.call_slots() / 2);
            self.harvest_up_to(if often { u32::MAX } else { 1 });
            if let Some(slot_index) = self.free_slots.take() {
                return Ok(slot_index);
            }
            // Count ourselves, then look once more, all under `slot_wait`: a release
            // either put its slot before our count (the look finds it: its `SeqCst`
            // put precedes our fence) or reads the count after it and notifies under
            // this lock, which we hold until the wait gives it up. The timeout bounds
            // the wait anyway.
            let guard = lock(&self.slot_wait);
            self.slot_waiters.fetch_add(1, Ordering::SeqCst);
            fence(Ordering::SeqCst);
            if let Some(slot_index) = self.free_slots.take() {
                self.slot_waiters.fetch_sub(1, Ordering::Relaxed);
                return Ok(slot_index);
            }
            let (guard, timeout) = self
                .slot_freed
                .wait_timeout(guard, Duration::from_micros(200))
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            self.slot_waiters.fetch_sub(1, Ordering::Relaxed);
            drop(guard);
            if timeout.timed_out() {
                if let Some(err) = self.runtime_gone() {
                    return Err(err);
                }
            }
        }
    }

    /// The slots calls use (all but the control slot).
    fn call_slots(&self) -> u32 {
        self.control_slot.unwrap_or(self.geometry.slots)
    }

    /// Copies the results of answered calls out of their slots and frees the slots.
    fn harvest(&self) {
        self.harvest_up_to(u32::MAX);
    }

    /// The slot a harvest for one slot frees best: an abandoned call's, answered (no
    /// answer to move), else the answered call submitted last (in a window waited in
    /// order it is waited for last, so it is long before a harvest is needed again).
    /// A heuristic: the claims and stamps it reads may change meanwhile.
    fn harvest_first(&self, slots: u32) -> Option<u32> {
        let mut newest: Option<(u64, u32)> = None;
        for slot_index in 0..slots {
            let Some(claim) = self.claims.get(slot_index as usize) else {
                continue;
            };
            let held = claim.word.load(Ordering::Relaxed);
            if held & CLAIM_STATE != CLAIM_HELD
                || !self
                    .view(slot_index)
                    .is_ok_and(|view| claim.answered(&view, Ordering::Relaxed))
            {
                continue;
            }
            if held & CLAIM_ABANDONED != 0 {
                return Some(slot_index);
            }
            let stamp = claim.stamp.load(Ordering::Relaxed);
            if newest.is_none_or(|(newest, _)| stamp > newest) {
                newest = Some((stamp, slot_index));
            }
        }
        newest.map(|(_, slot_index)| slot_index)
    }

    /// [`harvest`](Self::harvest) until `wanted` slots are freed (the best one first
    /// when it is one, see [`harvest_first`](Self::harvest_first)).
    fn harvest_up_to(&self, wanted: u32) {
        self.send_abandons();
        // One lock for the whole scan (lock order: `harvested`, then `abandons`, `data`,
        // `wakers`, `slot_wait`); the wakers of polled calls whose answers it moved are
        // woken after it is let go (a waker may poll its call at once, which may take it).
        let mut harvested = lock(&self.harvested);
        let mut woken = Vec::new();
        let slots = self.call_slots();
        // For one slot, the best one first: see `harvest_first`. Then every slot in
        // order (that one again, found no longer held, is skipped).
        let first = (wanted == 1).then(|| self.harvest_first(slots)).flatten();
        let mut released = 0;
        for slot_index in first.into_iter().chain(0..slots) {
            let Some(claim) = self.claims.get(slot_index as usize) else {
                continue;
            };
            let held = claim.word.load(Ordering::Acquire);
            if held & CLAIM_STATE != CLAIM_HELD {
                continue;
            }
            let Ok(view) = self.view(slot_index) else {
                continue;
            };
            if !claim.answered(&view, Ordering::Acquire) {
                continue;
            }
            let reading = (held & !CLAIM_STATE) | CLAIM_READING;
            if claim
                .word
                .compare_exchange(held, reading, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
            {
                // Its waiter took the answer first, or its call was abandoned since
                // (then a later harvest frees it).
                continue;
            }
            let generation = claim_generation(held);
            if held & CLAIM_ABANDONED != 0 && !self.forget_abandon(slot_index) {
                // Still named by the request in the control slot: a later harvest.
                claim.word.store(held, Ordering::Release);
                continue;
            }
            let moved = (held & CLAIM_ABANDONED == 0).then(|| self.move_answer(&view));
            let freed = claim_word(generation, CLAIM_FREE);
            // The claim leaves `CLAIM_READING` under the `harvested` lock, with the
            // answer filed: a call that finds its claim gone takes the lock after and
            // finds it (see `take_answer`, `abandon`).
            match claim
                .word
                .compare_exchange(reading, freed, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => {
                    if let (Some(moved), Some(filed)) =
                        (moved, harvested.get_mut(slot_index as usize))
                    {
                        filed.push((generation, moved));
                    }
                }
                // The call was abandoned while we read: its answer is dropped.
                Err(_) => claim.word.store(freed, Ordering::Release),
            }
            // A polled call whose answer was just moved out of its slot: its waker is
            // taken before the slot frees (and may get the next call's waker). Only if
            // a call of this connection was ever polled: `polled` is set (then a fence)
            // before a poll looks at its claim, and read here after a fence that follows
            // the claim's move to `CLAIM_READING`, so either that poll saw its claim gone
            // (and registered nothing) or this sees `polled`.
            fence(Ordering::SeqCst);
            if self.watch.polled.load(Ordering::Relaxed) {
                woken.extend(self.watch.take(slot_index));
            }
            self.release_viewed(slot_index, Some(&view));
            released += 1;
            if released >= wanted {
                break;
            }
        }
        drop(harvested);
        for waker in woken {
            waker.wake();
        }
    }

    /// Whether the call of `generation` still holds `slot_index`, unanswered or not yet
    /// taken by a reader.
    fn holds(&self, slot_index: u32, generation: u64) -> bool {
        self.claims.get(slot_index as usize).is_some_and(|claim| {
            claim.word.load(Ordering::Acquire) == claim_word(generation, CLAIM_HELD)
        })
    }

    /// Takes the claim of the call of `generation` on `slot_index` to `CLAIM_READING`:
    /// whether it held it (then the caller reads the answer and frees the slot).
    #[inline(always)]
    fn claim_answer(&self, slot_index: u32, generation: u64) -> bool {
        self.claims.get(slot_index as usize).is_some_and(|claim| {
            claim
                .word
                .compare_exchange(
                    claim_word(generation, CLAIM_HELD),
                    claim_word(generation, CLAIM_READING),
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                )
                .is_ok()
        })
    }

    /// The answer of the call of `generation` on `slot_index`, which its waiter saw
    /// answered (or harvested).
    #[inline(always)]
    fn take_answer(&self, slot_index: u32, generation: u64) -> Answer {
        if self.claim_answer(slot_index, generation) {
            return Answer::InSlot;
        }
        // A harvest took the answer. While it copies the results out (briefly, with no
        // lock held that we need), the claim stays `CLAIM_READING`.
        let reading = claim_word(generation, CLAIM_READING);
        if let Some(claim) = self.claims.get(slot_index as usize) {
            while claim.word.load(Ordering::Acquire) == reading {
                std::thread::yield_now();
            }
        }
        let mut harvested = lock(&self.harvested);
        let filed = harvested.get_mut(slot_index as usize).and_then(|filed| {
            let at = filed.iter().position(|(filed, _)| *filed == generation)?;
            Some(filed.swap_remove(at).1)
        });
        // Not `unwrap_or`: the error would be made (and dropped) on every call.
        Answer::Harvested(match filed {
            Some(moved) => moved,
            None => Moved::Failed(TaskError::NotRun),
        })
    }

    /// Gives up on the call of `generation` on `slot_index`: its answer will be
    /// discarded, and the runtime is asked to answer it at once. Never blocks.
    fn abandon(&self, slot_index: u32, generation: u64) {
        let Some(claim) = self.claims.get(slot_index as usize) else {
            return;
        };
        let mut word = claim.word.load(Ordering::Acquire);
        loop {
            if claim_generation(word) != generation || word & CLAIM_STATE == CLAIM_FREE {
                // A harvest freed the slot and filed the results (before the claim
                // left `CLAIM_READING`, under the lock taken here): drop them.
                if let Some(filed) = lock(&self.harvested).get_mut(slot_index as usize) {
                    filed.retain(|(filed, _)| *filed != generation);
                }
                return;
            }
            match claim.word.compare_exchange_weak(
                word,
                word | CLAIM_ABANDONED,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(actual) => word = actual,
            }
        }
        if word & CLAIM_STATE == CLAIM_READING {
            // A harvest is reading the answer: it drops it.
            return;
        }
        let answered = self
            .view(slot_index)
            .is_ok_and(|view| claim.answered(&view, Ordering::Acquire));
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
        let Some(claim) = self.claims.get(control as usize) else {
            return;
        };
        let mut abandons = lock(&self.abandons);
        if !abandons.sent.is_empty() {
            if !claim.answered(&view, Ordering::Acquire) {
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
        SlotRequest::Abandon {
            list_len: bytes.len() as u32,
        }
        .write(&view);
        // Only this thread (under the `abandons` lock) reads the control slot's mark.
        claim.mark_submitted(&view);
        abandons.sent = sent;
        drop(abandons);
        // The ring has an entry for every slot, the control slot's included.
        self.queue(control);
    }

    /// Calls of this connection in flight: call slots not in the free list.
    fn calls_in_flight(&self) -> usize {
        (self.call_slots() as usize).saturating_sub(self.free_slots.len())
    }

    /// Frees `slot_index`, which the caller alone holds (its claim `CLAIM_READING`, or
    /// `CLAIM_FREE` and taken from the free list): its input buffer, its words, a stale
    /// waker, then the claim (generation kept) and the free list.
    fn release_slot(&self, slot_index: u32) {
        self.release_viewed(slot_index, self.view(slot_index).ok().as_ref());
    }

    /// [`release_slot`](Self::release_slot) with the slot's view at hand (`None`: the
    /// slot has none, its words are left).
    #[inline]
    fn release_viewed(&self, slot_index: u32, view: Option<&SlotView>) {
        let Some(claim) = self.claims.get(slot_index as usize) else {
            return;
        };
        if let Some(extent) = claim.input() {
            claim.input_len.store(0, Ordering::Relaxed);
            self.free_data(extent);
        }
        if let Some(view) = view {
            view.prefetch_for_writing();
            // The reply line is the runtime's to write next: only a call that slept (or
            // was polled) left a bit there, and clears it.
            if claim.waiting_set.load(Ordering::Relaxed)
                && claim.waiting_set.swap(false, Ordering::Relaxed)
            {
                view.word(slot::WAITING).store(0, Ordering::Relaxed);
            }
        }
        if claim.watch_announced.load(Ordering::Relaxed)
            && claim.watch_announced.swap(false, Ordering::Relaxed)
        {
            self.sleepers().fetch_sub(1, Ordering::Relaxed);
        }
        if self.watch.started.load(Ordering::Acquire) {
            // The waker of the call that held the slot is stale now.
            if let Some(waker) = lock(&self.watch.wakers).get_mut(slot_index as usize) {
                *waker = None;
            }
        }
        let generation = claim_generation(claim.word.load(Ordering::Relaxed));
        // Before the slot is in the free list: its next taker writes the claim without
        // a compare-exchange.
        claim
            .word
            .store(claim_word(generation, CLAIM_FREE), Ordering::Release);
        self.free_slots.put(slot_index);
        // After the `SeqCst` put: see `take_slot`.
        if self.slot_waiters.load(Ordering::SeqCst) > 0 {
            let _waiting = lock(&self.slot_wait);
            self.slot_freed.notify_one();
        }
    }

    #[inline(always)]
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
            let waiting_on_others = self.claims.iter().any(|claim| {
                claim.word.load(Ordering::Acquire) & CLAIM_STATE != CLAIM_FREE
                    && claim.input_len.load(Ordering::Relaxed) != 0
            });
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
        let (slot_index, generation) = self.queue_encoded(route, encode)?;
        Ok(self.call_of(slot_index, generation))
    }

    /// Runs a call start to finish on this thread, with no handle (no reference to the
    /// connection taken, none dropped): `encode` archives its input, `decode` gets its
    /// result (the first error by container wins). Past `deadline` the call is abandoned
    /// (as a dropped [`ShmCall`] is) and this returns `Ok(false)`.
    pub(crate) fn call_routed_with(
        &self,
        route: Route,
        encode: &mut dyn FnMut(&mut OutputBuffer) -> Result<(), TaskError>,
        deadline: Option<Instant>,
        decode: &mut dyn FnMut(&[u8]) -> Result<(), TaskError>,
    ) -> Result<bool, TaskError> {
        let (slot_index, generation) = self.queue_encoded(route, encode)?;
        let Some(result) = self.collect_first(slot_index, generation, deadline, decode) else {
            self.abandon(slot_index, generation);
            return Ok(false);
        };
        result.map(|()| true)
    }

    /// Encodes a call's input with `encode` into this thread's reusable buffer and queues
    /// it: its slot and claim generation.
    fn queue_encoded(
        &self,
        route: Route,
        encode: &mut dyn FnMut(&mut OutputBuffer) -> Result<(), TaskError>,
    ) -> Result<(u32, u64), TaskError> {
        let mut submit = |buffer: &mut OutputBuffer| {
            encode(buffer)?;
            let queued = self.queue_call(route, buffer.as_slice(), None);
            buffer.trim();
            queued
        };
        ENCODE_BUFFER
            .try_with(|buffer| match buffer.try_borrow_mut() {
                Ok(mut buffer) => Some(submit(&mut buffer)),
                Err(_) => None,
            })
            .ok()
            .flatten()
            // The thread's buffer is in use (`encode` submitted a call itself) or gone
            // (the thread is ending): a one-off buffer.
            .unwrap_or_else(|| submit(&mut OutputBuffer::reusable()))
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
        let (slot_index, generation) = self.queue_call(route, input, schedule)?;
        Ok(self.call_of(slot_index, generation))
    }

    /// The handle of the call of `generation` this thread just queued in `slot_index`.
    fn call_of(self: &Arc<Self>, slot_index: u32, generation: u64) -> ShmCall {
        ShmCall {
            connection: self.clone(),
            slot_index,
            generation,
            finished: false,
        }
    }

    /// Writes a call into a free slot and queues it: the slot and the claim's generation.
    fn queue_call(
        &self,
        route: Route,
        input: &[u8],
        schedule: Option<Schedule>,
    ) -> Result<(u32, u64), TaskError> {
        let Route {
            pool,
            method,
            query,
            force_net,
        } = route;
        // `take_slot` checks the connection's failure first.
        let slot_index = self.take_slot()?;
        let view = self.view(slot_index)?;
        let mut input_extent = None;
        let place = if input.len() <= view.payload_len() {
            view.write_payload(input)
                .map_err(|e| TaskError::malformed("input", e))?;
            InputPlace::Slot
        } else {
            let Some(extent) = self.alloc_data_waiting(input.len()) else {
                self.release_slot(slot_index);
                return Err(TaskError::InputTooLarge {
                    len: input.len() as u64,
                    share: self.geometry.data_len as u64,
                });
            };
            if let Err(err) = self.write_data(extent.offset, input) {
                self.free_data(extent);
                self.release_slot(slot_index);
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
        let generation = self.hold(slot_index, input_extent, &view);
        if !self.queue(slot_index) {
            // Cannot happen while the runtime keeps one ring entry per slot; treat it as a
            // broken runtime rather than lose the task silently.
            if self.claim_answer(slot_index, generation) {
                self.release_slot(slot_index);
            }
            return Err(TaskError::malformed(
                "submission ring",
                "full although a slot was free",
            ));
        }
        Ok((slot_index, generation))
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
    /// The control line's sleep count.
    ControlSleepers(u32),
    /// A slot's answer mark (`STATE`), which only the runtime writes.
    SlotMark {
        /// The slot.
        slot: u32,
        /// The value written.
        value: u32,
    },
    /// A slot's `WAITING` word.
    SlotWaiting {
        /// The slot.
        slot: u32,
        /// The value written.
        value: u32,
    },
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
        let generation = self.hold(slot_index, None, &view);
        self.queue(slot_index);
        Ok(self.call_of(slot_index, generation))
    }

    /// Cancels this client's periodic task `id` (as acknowledged by the runtime).
    pub fn cancel_periodic(self: &Arc<Self>, id: u64) -> Result<(), TaskError> {
        let slot_index = self.take_slot()?;
        let view = self.view(slot_index)?;
        SlotRequest::Cancel { periodic: id }.write(&view);
        let generation = self.hold(slot_index, None, &view);
        self.queue(slot_index);
        let call = self.call_of(slot_index, generation);
        for (_, result) in call.wait() {
            result?;
        }
        Ok(())
    }

    /// Records that a new call holds `slot_index` (just taken from the free list, its
    /// request written to `view`, not queued yet): the claim's new generation.
    fn hold(&self, slot_index: u32, input: Option<Extent>, view: &SlotView) -> u64 {
        match self.claims.get(slot_index as usize) {
            Some(claim) => {
                let (offset, len) = input.map_or((0, 0), |extent| (extent.offset, extent.len));
                claim.input_offset.store(offset, Ordering::Relaxed);
                claim.input_len.store(len, Ordering::Relaxed);
                claim.mark_submitted(view);
                // A store, no compare-exchange: the slot came from the free list, and no
                // other thread changes a `CLAIM_FREE` claim.
                let generation = claim_generation(claim.word.load(Ordering::Relaxed))
                    .wrapping_add(1)
                    & (u64::MAX >> CLAIM_GENERATION_SHIFT);
                claim
                    .word
                    .store(claim_word(generation, CLAIM_HELD), Ordering::Release);
                generation
            }
            // Not a slot (`take_slot` only gives slots): the call finds no claim and
            // fails with `NotRun`.
            None => 0,
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
            Scribble::ControlSleepers(value) => (wire::CONTROL_SLEEPERS, value),
            Scribble::SlotMark { slot: index, value } => {
                (self.geometry.slot_offset(index) + slot::STATE, value)
            }
            Scribble::SlotWaiting { slot: index, value } => {
                (self.geometry.slot_offset(index) + slot::WAITING, value)
            }
        };
        if let Ok(word) = self.main.atomic_u32(offset) {
            word.store(value, Ordering::SeqCst);
        }
        let _ = rustix::io::write(&self.doorbell, &1u64.to_ne_bytes());
    }

    /// Writes `bytes` at `offset` of this client's data share, whatever its allocator
    /// holds there (a hostile client points many tasks at one region). Test support.
    #[doc(hidden)]
    pub fn scribble_data(&self, offset: usize, bytes: &[u8]) {
        let _ = self.write_data(offset, bytes);
    }

    /// Queues a slot index the runtime must reject (out of range). Test support.
    #[doc(hidden)]
    pub fn queue_raw_index(&self, index: u32) {
        self.queue(index);
    }

    /// Pushes a slot index and rings the worker's doorbell if it sleeps.
    #[inline]
    fn queue(&self, slot_index: u32) -> bool {
        let pushed = {
            let mut producer = lock(&self.producer);
            producer.pushed = producer.pushed.wrapping_add(1);
            if let Some(claim) = self.claims.get(slot_index as usize) {
                claim.stamp.store(producer.pushed, Ordering::Relaxed);
            }
            producer.ring.push(slot_index).is_ok()
        };
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

/// A task submitted over shared memory, not yet answered: its claim on its slot (see
/// [`SlotClaim`]), known by the slot and the generation.
pub struct ShmCall {
    connection: Arc<ShmConnection>,
    slot_index: u32,
    generation: u64,
    finished: bool,
}

impl ShmCall {
    /// Marks this call answered with a reply descriptor of `status` (a wire word) and
    /// `len` bytes at `offset` of the output space, as a faulty thread of this client
    /// could before the runtime answers. Test support.
    #[doc(hidden)]
    pub fn forge_reply(&self, status: u32, offset: u64, len: u32) {
        let (Ok(view), Some(claim)) = (
            self.connection.view(self.slot_index),
            self.connection.claims.get(self.slot_index as usize),
        ) else {
            return;
        };
        view.word(slot::STATUS).store(status, Ordering::Relaxed);
        view.word(slot::OUTPUT_LEN).store(len, Ordering::Relaxed);
        view.word(slot::OUTPUT_WHERE)
            .store(wire::IN_OUTPUT_SPACE, Ordering::Relaxed);
        view.word64(slot::OUTPUT_OFFSET)
            .store(offset, Ordering::Relaxed);
        let mark = claim.submitted_mark.load(Ordering::Relaxed);
        view.word(slot::STATE)
            .store(mark.wrapping_add(1), Ordering::Release);
    }

    /// Whether the answer is there.
    pub fn is_done(&self) -> bool {
        if !self.connection.holds(self.slot_index, self.generation) {
            // A harvest took (or takes) the answer.
            return true;
        }
        let connection = &self.connection;
        match (
            connection.view(self.slot_index),
            connection.claims.get(self.slot_index as usize),
        ) {
            (Ok(view), Some(claim)) => claim.answered(&view, Ordering::Acquire),
            _ => false,
        }
    }

    /// Whether the answer is there (or the runtime is gone); if not, `waker` is woken
    /// when it is, by this connection's reply watcher (started on the first poll).
    pub fn poll_done(&self, waker: &Waker) -> bool {
        let connection = &self.connection;
        let slot_index = self.slot_index;
        let (Ok(view), Some(claim)) = (
            connection.view(slot_index),
            connection.claims.get(slot_index as usize),
        ) else {
            return true;
        };
        let watch = &connection.watch;
        // Before the claim is looked at (see `harvest`).
        if !watch.polled.load(Ordering::Relaxed) {
            watch.polled.store(true, Ordering::Relaxed);
        }
        fence(Ordering::SeqCst);
        let mut wakers = lock(&watch.wakers);
        // Looked at under the lock: a harvest takes the slot's waker under it after
        // the claim left this call, so a waker registered while the claim is still the
        // call's is woken, and none is registered after.
        if !connection.holds(slot_index, self.generation) {
            return true;
        }
        if let Some(registered) = wakers.get_mut(slot_index as usize) {
            match registered {
                Some(registered) if registered.will_wake(waker) => {}
                _ => *registered = Some(waker.clone()),
            }
        }
        let watcher_idle = watch.idle.load(Ordering::Relaxed);
        drop(wakers);
        // The slot may serve another call by now (a harvest): then the bit costs the
        // runtime one needless bell, and the claim's check below answers.
        connection.announce_watched(slot_index);
        view.word(slot::WAITING)
            .fetch_or(wire::WAITING_WATCHER, Ordering::SeqCst);
        claim.waiting_set.store(true, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        let done = !connection.holds(slot_index, self.generation)
            || claim.answered(&view, Ordering::SeqCst)
            || connection.failure().is_some();
        if !done {
            if watcher_idle {
                watch.registered.notify_one();
            }
            ShmConnection::start_watcher(connection);
        }
        done
    }

    /// Blocks until the answer is there (or the runtime is gone) or `deadline` passed;
    /// returns whether waiting would no longer block.
    pub fn wait_until(&self, deadline: Instant) -> bool {
        // An error is a runtime gone: waiting returns it at once.
        self.connection
            .view(self.slot_index)
            .and_then(|view| {
                self.connection
                    .wait_done(&view, self.slot_index, self.generation, Some(deadline))
            })
            .unwrap_or(true)
    }

    /// Gives up on the call: its answer is discarded, and the runtime is asked to answer
    /// it at once so its slot frees (see the module docs). Never blocks.
    pub fn abandon(mut self) {
        self.finished = true;
        self.connection.abandon(self.slot_index, self.generation);
    }

    /// Waits for the answer and returns each replica's result (one for most queries).
    pub fn wait(mut self) -> Results {
        self.finished = true;
        self.connection
            .wait_slot(
                self.slot_index,
                self.generation,
                None,
                |connection, view| connection.read_results(view),
                Moved::into_results,
            )
            // No deadline: the wait ends with an answer or with the runtime gone.
            .unwrap_or_else(|| vec![(0, Err(TaskError::NotRun))])
    }

    /// Waits for the answer and decodes it with `decode` (the first error by container wins). A small
    /// output is decoded from a copy on the stack (no allocation).
    pub fn wait_decoded<T>(
        mut self,
        decode: &dyn Fn(&[u8]) -> Result<T, TaskError>,
    ) -> Result<T, TaskError> {
        self.finished = true;
        self.connection
            .wait_decoded(self.slot_index, self.generation, None, decode)
            .unwrap_or(Err(TaskError::NotRun))
    }

    /// Waits for the answer and hands it to `decode` once (the first error by container
    /// wins): the typed clients' way, decoding a small output from the stack.
    pub fn wait_first(
        mut self,
        decode: &mut dyn FnMut(&[u8]) -> Result<(), TaskError>,
    ) -> Result<(), TaskError> {
        self.finished = true;
        self.connection
            .collect_first(self.slot_index, self.generation, None, decode)
            .unwrap_or(Err(TaskError::NotRun))
    }
}

impl ShmConnection {
    /// [`ShmCall::wait_decoded`] for the call of `generation` in `slot_index`, or `None`
    /// once `deadline` passed (the call is still held: abandon it).
    fn wait_decoded<T>(
        &self,
        slot_index: u32,
        generation: u64,
        deadline: Option<Instant>,
        decode: &dyn Fn(&[u8]) -> Result<T, TaskError>,
    ) -> Option<Result<T, TaskError>> {
        self.wait_slot(
            slot_index,
            generation,
            deadline,
            |connection, view| {
                connection
                    .read_small_output(view, decode)
                    .unwrap_or_else(|| decode_first(connection.read_results(view), decode))
            },
            |moved| moved.decode(decode),
        )
    }

    /// [`ShmCall::wait_first`] for the call of `generation` in `slot_index`, or `None`
    /// once `deadline` passed (the call is still held: abandon it).
    fn collect_first(
        &self,
        slot_index: u32,
        generation: u64,
        deadline: Option<Instant>,
        decode: &mut dyn FnMut(&[u8]) -> Result<(), TaskError>,
    ) -> Option<Result<(), TaskError>> {
        // `wait_decoded` takes a `Fn` (it decodes from a stack copy or from the results)
        // and calls it at most once: hand the `FnMut` over on that call.
        let decode = std::cell::Cell::new(Some(decode));
        self.wait_decoded(slot_index, generation, deadline, &|bytes| {
            match decode.take() {
                Some(decode) => decode(bytes),
                None => Err(TaskError::NotRun),
            }
        })
    }

    /// Waits for the call of `generation` in `slot_index`, then `read`s the answer from
    /// the slot — or, when there is no slot to read (a harvest took the answer, or the
    /// runtime is gone), makes the value `from` the results at hand. `None` once
    /// `deadline` passed (the call is still held: abandon it).
    fn wait_slot<R>(
        &self,
        slot_index: u32,
        generation: u64,
        deadline: Option<Instant>,
        read: impl FnOnce(&ShmConnection, &SlotView) -> R,
        from: impl FnOnce(Moved) -> R,
    ) -> Option<R> {
        // One view for the wait, the read and the release.
        let waited = self.view(slot_index).and_then(|view| {
            self.wait_done(&view, slot_index, generation, deadline)
                .map(|answered| (view, answered))
        });
        let view = match waited {
            Ok((view, true)) => view,
            Ok((_, false)) => return None,
            // The runtime is gone: the slot will never be answered.
            Err(err) => return Some(from(Moved::Failed(err))),
        };
        Some(match self.take_answer(slot_index, generation) {
            Answer::InSlot => {
                let answer = read(self, &view);
                self.release_viewed(slot_index, Some(&view));
                answer
            }
            Answer::Harvested(moved) => from(moved),
        })
    }
}

impl ShmConnection {
    /// Waits until `slot_index` is answered, or the call of `generation` no longer
    /// holds it (a harvest took the answer; the slot may already serve another call),
    /// or `deadline` passed: `Ok(false)` only then.
    fn wait_done(
        &self,
        view: &SlotView,
        slot_index: u32,
        generation: u64,
        deadline: Option<Instant>,
    ) -> Result<bool, TaskError> {
        let Some(claim) = self.claims.get(slot_index as usize) else {
            // Not a slot: nothing will answer it.
            return Err(TaskError::NotRun);
        };
        let state = view.word(slot::STATE);
        // The call's, unless a harvest took its answer and another call holds the slot
        // by now: then `released` ends the wait.
        let submitted = claim.submitted_mark.load(Ordering::Relaxed);
        let released = || !self.holds(slot_index, generation);
        // The clock (and how many calls are in flight) is read from the first check on,
        // not before: a quick answer costs neither.
        let mut spinning = None;
        let mut spin = 0u32;
        loop {
            if state.load(Ordering::Acquire) != submitted {
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
        // Raised before any `WAITING` bit below, lowered on every way out.
        let _announced = SleepAnnouncement::raise(self.sleepers());
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
            claim.waiting_set.store(true, Ordering::Relaxed);
            fence(Ordering::SeqCst);
            if state.load(Ordering::SeqCst) != submitted || released() {
                return Ok(true);
            }
            futex::wait(state, submitted, Some(sleep));
            if state.load(Ordering::Acquire) != submitted {
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
                || match (
                    self.view(slot_index as u32),
                    self.claims.get(slot_index),
                ) {
                    (Ok(view), Some(claim)) => claim.answered(&view, Ordering::Acquire),
                    _ => false,
                };
            if answered {
                woken.extend(registered.take());
            }
        }
        // Woken outside the lock: a waker may poll (and register) at once.
        for waker in woken {
            waker.wake();
        }
    }

    /// The control line's sleep count (see `client_area`'s "Waking a sleeping client").
    fn sleepers(&self) -> &AtomicU32 {
        // The control line starts the area, whose length was checked at connect.
        self.main
            .atomic_u32(wire::CONTROL_SLEEPERS)
            .unwrap_or_else(|_| unreachable_word())
    }

    /// Raises the sleep count for the reply watcher's wait on `slot_index`, once per
    /// hold of the slot (lowered when the slot is released).
    fn announce_watched(&self, slot_index: u32) {
        if let Some(claim) = self.claims.get(slot_index as usize) {
            if !claim.watch_announced.swap(true, Ordering::Relaxed) {
                self.sleepers().fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    /// Each slot's `WAITING` word, as the runtime reads them. Test support.
    #[doc(hidden)]
    pub fn waiting_words(&self) -> Vec<u32> {
        (0..self.geometry.slots)
            .map(|index| {
                self.view(index)
                    .map_or(0, |view| view.word(slot::WAITING).load(Ordering::SeqCst))
            })
            .collect()
    }

    /// The sleep count as the runtime reads it. Test support.
    #[doc(hidden)]
    pub fn sleepers_announced(&self) -> u32 {
        self.sleepers().load(Ordering::SeqCst)
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
        // The usual answer fits the reply line: a copy the size of the line, not of
        // the larger buffer, is zeroed first.
        if len <= MOVED_INLINE {
            let mut buffer = MovedBytes([0; MOVED_INLINE]);
            return Some(self.decode_copy(view, &reply, buffer.0.get_mut(..len)?, decode));
        }
        let mut buffer = SmallOutput([0; SMALL_OUTPUT]);
        Some(self.decode_copy(view, &reply, buffer.0.get_mut(..len)?, decode))
    }

    /// Copies the output `reply` describes into `dst` (of its length), then decodes it
    /// (an output) or returns the error it archives.
    fn decode_copy<T>(
        &self,
        view: &SlotView,
        reply: &SlotReply,
        dst: &mut [u8],
        decode: &dyn Fn(&[u8]) -> Result<T, TaskError>,
    ) -> Result<T, TaskError> {
        self.read_output(view, reply, dst)?;
        if reply.status == ReplyStatus::Ok {
            decode(dst)
        } else {
            Err(decode_error(dst))
        }
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

    /// The answer in `view`'s slot, moved out of shared memory: a small one inline.
    fn move_answer(&self, view: &SlotView) -> Moved {
        let reply = match SlotReply::read(view) {
            Ok(reply) => reply,
            Err(err) => return Moved::Failed(TaskError::malformed("output", err)),
        };
        let len = reply.len as usize;
        if len > MOVED_INLINE || reply.status == ReplyStatus::Replicas {
            return Moved::Results(self.read_results(view));
        }
        let mut bytes = MovedBytes([0; MOVED_INLINE]);
        let Some(dst) = bytes.0.get_mut(..len) else {
            return Moved::Results(self.read_results(view));
        };
        match self.read_output(view, &reply, dst) {
            Ok(()) => Moved::Small {
                ok: reply.status == ReplyStatus::Ok,
                len,
                bytes,
            },
            Err(err) => Moved::Failed(err),
        }
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
            self.connection.abandon(self.slot_index, self.generation);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_slots_hand_each_slot_to_one_taker_at_a_time() {
        let free = FreeSlots::new(3);
        let taken: Vec<AtomicBool> = (0..3).map(|_| AtomicBool::new(false)).collect();
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for _ in 0..20_000 {
                        if let Some(slot_index) = free.take() {
                            let mine = &taken[slot_index as usize];
                            assert!(
                                !mine.swap(true, Ordering::SeqCst),
                                "slot {slot_index} handed out twice"
                            );
                            mine.store(false, Ordering::SeqCst);
                            free.put(slot_index);
                        }
                    }
                });
            }
        });
        assert_eq!(free.len(), 3);
        let mut left: Vec<u32> = std::iter::from_fn(|| free.take()).collect();
        left.sort_unstable();
        assert_eq!(left, [0, 1, 2]);
    }

    #[test]
    fn a_claim_keeps_its_generation_apart_from_its_state() {
        let top = u64::MAX >> CLAIM_GENERATION_SHIFT;
        for generation in [0, 1, 7, top] {
            for state in [CLAIM_FREE, CLAIM_HELD, CLAIM_READING] {
                let word = claim_word(generation, state) | CLAIM_ABANDONED;
                assert_eq!(claim_generation(word), generation);
                assert_eq!(word & CLAIM_STATE, state);
            }
        }
    }
}
