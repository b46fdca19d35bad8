//! The layout of one client's memory (its *area*), and typed views of its parts.
//!
//! Every client gets an area of its own: a memfd the runtime creates, lays out and hands
//! to that client alone over the instance's Unix socket ([`crate::transport::shm::handshake`]). No
//! other client maps it, so nothing one client writes can reach another.
//!
//! ```text
//! 0        control line: the area's state and reply bell (runtime-written),
//!          the client's sleep announcements (client-written)                 128 B
//! 128      submission ring (client → runtime, slot indices)                RingLayout::size(slots)
//!          task slots                                                      slots × slot_size
//!          data share (page-aligned): buffers the client allocates         data_len
//!          output space (page-aligned): outputs larger than a slot         output_len
//!
//! task slot:    reply line (state, waiting, output descriptor, ≤ 32 B output)   64 B
//!               request line (target, kind, query, input descriptor)             64 B
//!               payload: the input archive, then a larger output archive  slot_size - 128
//! ```
//!
//! The [`AreaGeometry`] is the runtime's: it travels in the handshake message, never
//! through shared memory, and the runtime never reads it back from anywhere a client can
//! write. Each side reaches words through views built from checked offsets.
//!
//! Who writes what: the client writes the request line and payload of slots it submits,
//! the ring's producer line, its data share, and who sleeps (the slots' `WAITING` words
//! and the control line's sleep announcements); the runtime writes everything else. The
//! runtime reads the client's words once into locals (atomics, or the atomic word copies of
//! [`read_shared`]) and validates the copy; it keeps its own truth (which slots are
//! in flight, which output blocks are whose) in its own memory
//! ([`crate::transport::shm::client_area`]).
//!
//! The *runtime page* is one more memfd, shared by all clients but sealed against writable
//! mappings ([`crate::transport::shm::runtime_page`]): it holds each worker's "sleeping" flag, the
//! only runtime state every client needs to read.
use crate::error::TaskError;
use crate::ids::{MethodId, PoolId};
use crate::query::PoolQuery;
use crate::shm::ring::RingLayout;
use crate::shm::segment::{AccessError, Segment};
use crate::sync::cacheline;
use crate::transport::call::Schedule;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

/// Most shm-serving workers (each has a doorbell eventfd and a sleeping flag).
pub const MAX_DOORBELLS: usize = 32;
const CONTROL_SIZE: usize = 128;
/// Bytes of a slot before its payload.
pub const SLOT_HEADER: usize = 128;

/// Control-line state: the runtime serves the area's client.
pub const AREA_ACTIVE: u32 = 1;
/// Control-line state: the runtime disowned the client (it broke the protocol); the
/// client's calls fail with [`crate::error::TaskError::Disowned`].
pub const AREA_DISOWNED: u32 = 2;


/// Output status: the payload is the task's output archive.
pub const STATUS_OK: u32 = 0;
/// Output status: the payload is an archived `TaskError`.
pub const STATUS_ERROR: u32 = 1;
/// Output status: the payload is an archived list of replica results.
pub const STATUS_REPLICAS: u32 = 2;

/// Where a byte range of a slot lives.
pub const IN_SLOT: u32 = 0;
/// In the client's data share (inputs).
pub const IN_CLIENT_DATA: u32 = 1;
/// In the area's output space (outputs larger than the slot).
pub const IN_OUTPUT_SPACE: u32 = 2;
/// In the slot's reply line (outputs of at most [`slot::INLINE_OUTPUT_LEN`] bytes).
pub const IN_LINE: u32 = 3;

/// Task kinds.
pub const KIND_CALL: u32 = 0;
/// Fire-and-forget.
pub const KIND_FIRE_AND_FORGET: u32 = 1;
/// Periodic (period in `period_ns`); acknowledged with the task's id (a `u64` archive).
pub const KIND_PERIODIC: u32 = 2;
/// Cancels the client's periodic task whose id is in `QUERY_B`.
pub const KIND_CANCEL: u32 = 3;
/// A flag on the kind word of a task (call, fire-and-forget, periodic): the client asked
/// for the network path even to the runtime's own containers (its force-net switch).
pub const KIND_FORCE_NET: u32 = 1 << 31;
/// Abandons the client's calls in the slots its payload lists (`INPUT_LEN` bytes of
/// little-endian `u32` slot indices; their deadline passed, or their caller dropped
/// them): each call still in flight is answered at once with `Cancelled` and its task's
/// late reply discarded; the handler runs on.
pub const KIND_ABANDON: u32 = 4;

/// Bits of a slot's `WAITING` word, written by the client: a thread sleeps on the
/// slot's `STATE` (wake it there).
pub const WAITING_THREAD: u32 = 1;
/// The client's reply watcher waits for this slot: after answering, bump and wake the
/// control line's reply bell ([`CONTROL_REPLY_BELL`]).
pub const WAITING_WATCHER: u32 = 2;

/// Slot header offsets.
///
/// Two cache lines. The first is the *reply line*: the state the client spins on, the
/// output's status and place, and room for a small output — so a client waiting for a
/// short answer reads a single line written by the runtime. The second is the *request
/// line*, written by the client and read by the runtime, which never reads the first
/// line when it takes a task.
pub mod slot {
    /// The slot's *answer mark*, and the client's futex word: written by the runtime
    /// alone, a new value with every answer (never the value it replaces; the runtime's
    /// own count of the slot's answers). A call is answered once the mark differs from
    /// the one the client read before it queued the call. The client never writes it, so
    /// between answers the reply line stays in the runtime's cache or shared, never
    /// taken back for a reset.
    pub const STATE: usize = 0;
    /// Who waits for the answer ([`WAITING_THREAD`](super::WAITING_THREAD),
    /// [`WAITING_WATCHER`](super::WAITING_WATCHER) bits); 0 when nobody sleeps. The
    /// client sets a bit only before it sleeps (or polls), and clears the word when it
    /// frees the slot.
    pub const WAITING: usize = 4;
    /// Output status.
    pub const STATUS: usize = 8;
    /// Output length.
    pub const OUTPUT_LEN: usize = 12;
    /// Output location (`IN_LINE` / `IN_SLOT` / `IN_OUTPUT_SPACE`).
    pub const OUTPUT_WHERE: usize = 16;
    /// Output offset in the area's output space.
    pub const OUTPUT_OFFSET: usize = 24;
    /// A small output, in the reply line itself.
    pub const INLINE_OUTPUT: usize = 32;
    /// Bytes of [`INLINE_OUTPUT`].
    pub const INLINE_OUTPUT_LEN: usize = 32;
    /// Target pool, major.
    pub const POOL_MAJOR: usize = 64;
    /// Target pool, minor.
    pub const POOL_MINOR: usize = 68;
    /// Method id.
    pub const METHOD: usize = 72;
    /// Task kind.
    pub const KIND: usize = 76;
    /// Query tag.
    pub const QUERY_TAG: usize = 80;
    /// Query word a.
    pub const QUERY_A: usize = 84;
    /// Query word b.
    pub const QUERY_B: usize = 88;
    /// Period of a periodic task, ns.
    pub const PERIOD_NS: usize = 96;
    /// Input length.
    pub const INPUT_LEN: usize = 104;
    /// Input location (`IN_SLOT` / `IN_CLIENT_DATA`).
    pub const INPUT_WHERE: usize = 108;
    /// Input offset in the client's data share.
    pub const INPUT_OFFSET: usize = 112;
}

/// Query tags in a slot header.
mod query_tag {
    pub(super) const LOCAL: u32 = 0;
    pub(super) const DIRECT_ID: u32 = 1;
    pub(super) const DIRECT_HASH: u32 = 2;
    pub(super) const RANGE: u32 = 3;
    pub(super) const BROADCAST: u32 = 4;
    pub(super) const PHYSICAL: u32 = 5;
    pub(super) const DYNAMIC: u32 = 6;
}

/// A request or reply line that breaks the protocol: what the reader found.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The task kind word names no kind.
    #[error("unknown task kind {0}")]
    UnknownKind(u32),
    /// A periodic task with period 0.
    #[error("a periodic task with period 0")]
    ZeroPeriod,
    /// The query tag names no query.
    #[error("unknown query tag {0}")]
    UnknownQueryTag(u32),
    /// A `Range` query whose count does not fit 32 bits.
    #[error("range count {0} exceeds u32")]
    RangeCount(u64),
    /// The input location word names no place.
    #[error("unknown input location {0}")]
    UnknownInputPlace(u32),
    /// The output status word names no status.
    #[error("unknown output status {0}")]
    UnknownStatus(u32),
    /// The output location word names no place.
    #[error("unknown output location {0}")]
    UnknownOutputPlace(u32),
}

impl From<WireError> for TaskError {
    fn from(err: WireError) -> TaskError {
        TaskError::malformed("task slot", err)
    }
}

/// Where a task's input lies, as its request line says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputPlace {
    /// In the slot's payload.
    Slot,
    /// At this offset of the client's data share.
    ClientData {
        /// Offset in the data share (unchecked: the reader checks it against the share).
        offset: u64,
    },
}

/// A task as a slot's request line describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskRequest {
    /// Target pool.
    pub pool: PoolId,
    /// Method id.
    pub method: MethodId,
    /// Which containers run it.
    pub query: PoolQuery,
    /// A call (`None`), fire-and-forget or periodic.
    pub schedule: Option<Schedule>,
    /// Input bytes (unchecked: the reader checks them against the place).
    pub input_len: u32,
    /// Where the input lies.
    pub input: InputPlace,
    /// Take the network path even to this node's containers (the kind word's
    /// [`KIND_FORCE_NET`] flag).
    pub force_net: bool,
}

/// What a slot's request line asks for: written by the client with [`write`], read once
/// by the runtime with [`read`] — the one description of the request line's words.
///
/// [`write`]: SlotRequest::write
/// [`read`]: SlotRequest::read
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotRequest {
    /// Run a task.
    Task(TaskRequest),
    /// Cancel this client's periodic task with this id.
    Cancel {
        /// The id the runtime acknowledged the periodic task with.
        periodic: u64,
    },
    /// Answer at once the abandoned calls whose slot indices (`u32`, little-endian) the
    /// payload lists.
    Abandon {
        /// Bytes of the list (unchecked: the reader checks them against the payload).
        list_len: u32,
    },
}

impl SlotRequest {
    /// Writes the request line of `view` (relaxed stores: the client publishes the slot
    /// after, with its state word).
    pub fn write(&self, view: &SlotView) {
        let set = |field, value: u32| view.word(field).store(value, Ordering::Relaxed);
        let set64 = |field, value: u64| view.word64(field).store(value, Ordering::Relaxed);
        let task = match self {
            SlotRequest::Cancel { periodic } => {
                set(slot::KIND, KIND_CANCEL);
                set64(slot::QUERY_B, *periodic);
                return;
            }
            SlotRequest::Abandon { list_len } => {
                set(slot::KIND, KIND_ABANDON);
                set(slot::INPUT_LEN, *list_len);
                set(slot::INPUT_WHERE, IN_SLOT);
                return;
            }
            SlotRequest::Task(task) => task,
        };
        let (kind, period_ns) = match task.schedule {
            None => (KIND_CALL, 0),
            Some(Schedule::FireAndForget) => (KIND_FIRE_AND_FORGET, 0),
            Some(Schedule::Periodic(period)) => (
                KIND_PERIODIC,
                u64::try_from(period.as_nanos()).unwrap_or(u64::MAX).max(1),
            ),
        };
        let (tag, a, b) = encode_query(task.query);
        set(slot::POOL_MAJOR, task.pool.major);
        set(slot::POOL_MINOR, task.pool.minor);
        set(slot::METHOD, task.method);
        let force_net = if task.force_net { KIND_FORCE_NET } else { 0 };
        set(slot::KIND, kind | force_net);
        set(slot::QUERY_TAG, tag);
        set(slot::QUERY_A, a);
        set64(slot::QUERY_B, b);
        set64(slot::PERIOD_NS, period_ns);
        set(slot::INPUT_LEN, task.input_len);
        match task.input {
            InputPlace::Slot => set(slot::INPUT_WHERE, IN_SLOT),
            InputPlace::ClientData { offset } => {
                set(slot::INPUT_WHERE, IN_CLIENT_DATA);
                set64(slot::INPUT_OFFSET, offset);
            }
        }
    }

    /// Reads the request line of `view`, each word once, into a value whose every enum
    /// is valid; lengths and offsets are left to the caller to check against the place
    /// they claim (the client may rewrite the words at any moment: only this copy
    /// counts).
    #[inline]
    pub fn read(view: &SlotView) -> Result<SlotRequest, WireError> {
        let load = |field| view.word(field).load(Ordering::Relaxed);
        let load64 = |field| view.word64(field).load(Ordering::Relaxed);
        let kind = load(slot::KIND);
        let schedule = match kind & !KIND_FORCE_NET {
            KIND_CANCEL => {
                return Ok(SlotRequest::Cancel {
                    periodic: load64(slot::QUERY_B),
                })
            }
            KIND_ABANDON => {
                return Ok(SlotRequest::Abandon {
                    list_len: load(slot::INPUT_LEN),
                })
            }
            KIND_CALL => None,
            KIND_FIRE_AND_FORGET => Some(Schedule::FireAndForget),
            KIND_PERIODIC => match load64(slot::PERIOD_NS) {
                0 => return Err(WireError::ZeroPeriod),
                ns => Some(Schedule::Periodic(Duration::from_nanos(ns))),
            },
            other => return Err(WireError::UnknownKind(other)),
        };
        let query = decode_query(
            load(slot::QUERY_TAG),
            load(slot::QUERY_A),
            load64(slot::QUERY_B),
        )?;
        let input = match load(slot::INPUT_WHERE) {
            IN_SLOT => InputPlace::Slot,
            IN_CLIENT_DATA => InputPlace::ClientData {
                offset: load64(slot::INPUT_OFFSET),
            },
            other => return Err(WireError::UnknownInputPlace(other)),
        };
        Ok(SlotRequest::Task(TaskRequest {
            pool: PoolId::new(load(slot::POOL_MAJOR), load(slot::POOL_MINOR)),
            method: load(slot::METHOD),
            query,
            schedule,
            input_len: load(slot::INPUT_LEN),
            input,
            force_net: kind & KIND_FORCE_NET != 0,
        }))
    }
}

/// What a task's answer is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyStatus {
    /// The output archive.
    Ok,
    /// An archived `TaskError`.
    Error,
    /// An archived list of replica results.
    Replicas,
}

/// Where a task's answer lies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputPlace {
    /// In the reply line (at most [`slot::INLINE_OUTPUT_LEN`] bytes).
    Line,
    /// In the slot's payload.
    Slot,
    /// At this offset of the area's output space.
    OutputSpace {
        /// Offset in the output space (unchecked: the reader checks it).
        offset: u64,
    },
}

/// A slot's reply line (the state word aside): written by the runtime with [`write`],
/// read by the client with [`read`].
///
/// [`write`]: SlotReply::write
/// [`read`]: SlotReply::read
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotReply {
    /// What the bytes are.
    pub status: ReplyStatus,
    /// How many bytes.
    pub len: u32,
    /// Where they lie.
    pub place: OutputPlace,
}

impl SlotReply {
    /// Writes the reply line's descriptor words (relaxed: the runtime publishes the
    /// answer after, with the slot's state word).
    pub fn write(&self, view: &SlotView) {
        let set = |field, value: u32| view.word(field).store(value, Ordering::Relaxed);
        set(
            slot::STATUS,
            match self.status {
                ReplyStatus::Ok => STATUS_OK,
                ReplyStatus::Error => STATUS_ERROR,
                ReplyStatus::Replicas => STATUS_REPLICAS,
            },
        );
        set(slot::OUTPUT_LEN, self.len);
        let place = match self.place {
            OutputPlace::Line => IN_LINE,
            OutputPlace::Slot => IN_SLOT,
            OutputPlace::OutputSpace { offset } => {
                view.word64(slot::OUTPUT_OFFSET)
                    .store(offset, Ordering::Relaxed);
                IN_OUTPUT_SPACE
            }
        };
        set(slot::OUTPUT_WHERE, place);
    }

    /// Reads the reply line's descriptor, each word once.
    pub fn read(view: &SlotView) -> Result<SlotReply, WireError> {
        let load = |field| view.word(field).load(Ordering::Relaxed);
        let status = match load(slot::STATUS) {
            STATUS_OK => ReplyStatus::Ok,
            STATUS_ERROR => ReplyStatus::Error,
            STATUS_REPLICAS => ReplyStatus::Replicas,
            other => return Err(WireError::UnknownStatus(other)),
        };
        let place = match load(slot::OUTPUT_WHERE) {
            IN_LINE => OutputPlace::Line,
            IN_SLOT => OutputPlace::Slot,
            IN_OUTPUT_SPACE => OutputPlace::OutputSpace {
                offset: view.word64(slot::OUTPUT_OFFSET).load(Ordering::Relaxed),
            },
            other => return Err(WireError::UnknownOutputPlace(other)),
        };
        Ok(SlotReply {
            status,
            len: load(slot::OUTPUT_LEN),
            place,
        })
    }
}

/// A query as the three words of a slot header.
fn encode_query(query: PoolQuery) -> (u32, u32, u64) {
    use query_tag::*;
    match query {
        PoolQuery::Local => (LOCAL, 0, 0),
        PoolQuery::DirectId(c) => (DIRECT_ID, c, 0),
        PoolQuery::DirectHash(h) => (DIRECT_HASH, 0, h),
        PoolQuery::Range { offset, count } => (RANGE, offset, u64::from(count)),
        PoolQuery::Broadcast => (BROADCAST, 0, 0),
        PoolQuery::Physical(node) => (PHYSICAL, node, 0),
        PoolQuery::Dynamic => (DYNAMIC, 0, 0),
    }
}

/// The query three slot-header words describe.
fn decode_query(tag: u32, a: u32, b: u64) -> Result<PoolQuery, WireError> {
    use query_tag::*;
    Ok(match tag {
        LOCAL => PoolQuery::Local,
        DIRECT_ID => PoolQuery::DirectId(a),
        DIRECT_HASH => PoolQuery::DirectHash(b),
        RANGE => PoolQuery::Range {
            offset: a,
            count: u32::try_from(b).map_err(|_| WireError::RangeCount(b))?,
        },
        BROADCAST => PoolQuery::Broadcast,
        PHYSICAL => PoolQuery::Physical(a),
        DYNAMIC => PoolQuery::Dynamic,
        other => return Err(WireError::UnknownQueryTag(other)),
    })
}

/// Offset of the control line's state word (`AREA_*`).
pub const CONTROL_STATE: usize = 0;
/// Offset of the control line's sleep announcements: a count the client raises before
/// it sets any slot's `WAITING` bits and lowers once none it raised it for can sleep
/// any more (see `client_area`'s "Waking a sleeping client"). While it reads 0 the
/// runtime skips reading `WAITING` after an answer. Client-written, and written only
/// around sleeps, so a client that spins never takes this line from the runtime; its
/// value steers only the waking of that client's own calls.
pub const CONTROL_SLEEPERS: usize = 4;
/// Offset of the control line's reply bell: a counter the runtime bumps, then wakes (a
/// futex), after answering a slot whose `WAITING` has [`WAITING_WATCHER`], and when it
/// disowns the client. One client thread (its reply watcher) sleeps on it, so async
/// calls need no thread each. Its own cache line: the state word is read per call.
pub const CONTROL_REPLY_BELL: usize = 64;

/// The geometry of one client area: decided by the runtime, sent in the handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AreaGeometry {
    /// Task slots (and ring entries): a power of two.
    pub slots: u32,
    /// Bytes per slot, a multiple of 128, more than [`SLOT_HEADER`].
    pub slot_size: u32,
    /// Bytes of the data share.
    pub data_len: usize,
    /// Bytes of the output space.
    pub output_len: usize,
}

const PAGE: usize = 4096;

impl AreaGeometry {
    /// The geometry for `slots` slots of at most `max_slot` bytes within `queue_bytes`
    /// (control line, ring and slots), plus the two data spaces; `None` if not even a
    /// 256-byte slot fits or a size overflows.
    pub fn fit(
        queue_bytes: usize,
        slots: u32,
        max_slot: u32,
        data_len: usize,
        output_len: usize,
    ) -> Option<AreaGeometry> {
        let ring = RingLayout::size(slots).ok()?.next_multiple_of(128);
        let per_slot = queue_bytes.checked_sub(CONTROL_SIZE + ring)? / slots as usize;
        let size = (per_slot.min(max_slot as usize) / 128) * 128;
        if size < 256 {
            return None;
        }
        let geometry = AreaGeometry {
            slots,
            slot_size: size as u32,
            data_len: data_len.next_multiple_of(PAGE),
            output_len: output_len.next_multiple_of(PAGE),
        };
        geometry.checked_total_len().map(|_| geometry)
    }

    fn ring_size(&self) -> Option<usize> {
        Some(RingLayout::size(self.slots).ok()?.next_multiple_of(128))
    }

    fn slots_offset(&self) -> usize {
        CONTROL_SIZE
    }

    /// Offset and length of the ring.
    pub fn ring_range(&self) -> (usize, usize) {
        (CONTROL_SIZE, self.ring_size().unwrap_or(0))
    }

    /// Offset of slot `slot`.
    pub fn slot_offset(&self, slot: u32) -> usize {
        self.slots_offset()
            + self.ring_size().unwrap_or(0)
            + slot as usize * self.slot_size as usize
    }

    /// Payload bytes of a slot.
    pub fn payload(&self) -> usize {
        (self.slot_size as usize).saturating_sub(SLOT_HEADER)
    }

    /// Offset of the data share (page-aligned).
    pub fn data_offset(&self) -> usize {
        self.slot_offset(self.slots).next_multiple_of(PAGE)
    }

    /// Offset of the output space (page-aligned).
    pub fn output_offset(&self) -> usize {
        self.data_offset() + self.data_len
    }

    /// Bytes of the whole area; `None` if the geometry is not one [`fit`](Self::fit)
    /// could make (a message from a runtime is checked with this).
    pub fn checked_total_len(&self) -> Option<usize> {
        self.ring_size()?;
        if self.slot_size < 256 || !self.slot_size.is_multiple_of(128) {
            return None;
        }
        let slots = (self.slots as usize).checked_mul(self.slot_size as usize)?;
        CONTROL_SIZE
            .checked_add(self.ring_size()?)?
            .checked_add(slots)?
            .checked_next_multiple_of(PAGE)?
            .checked_add(self.data_len)?
            .checked_add(self.output_len)
    }
}

/// A view of one task slot (borrowing its segment, so making one costs no reference
/// count).
#[derive(Clone, Copy, Debug)]
pub struct SlotView<'a> {
    /// The mapping `base` points into, alive while borrowed.
    segment: &'a Segment,
    offset: usize,
    /// The slot's first byte: in the mapping, 8-aligned, with at least `SLOT_HEADER`
    /// bytes after it (checked in `new`), so header words need no further checks.
    base: NonNull<u8>,
    payload: usize,
}

// SAFETY: `base` points into the mapping `segment` keeps alive, reached only through
// atomics or bounds-checked copies; a `SlotView` is as shareable as its `Segment`.
unsafe impl Send for SlotView<'_> {}
// SAFETY: as above.
unsafe impl Sync for SlotView<'_> {}

impl<'a> SlotView<'a> {
    /// The view of slot `slot` of the area in `segment`; checks the whole slot lies in
    /// the segment.
    pub fn new(
        segment: &'a Segment,
        geometry: &AreaGeometry,
        slot: u32,
    ) -> Result<SlotView<'a>, AccessError> {
        let offset = geometry.slot_offset(slot);
        let slot_size = geometry.slot_size as usize;
        if slot_size < SLOT_HEADER || slot >= geometry.slots {
            return Err(AccessError::OutOfBounds {
                offset,
                len: SLOT_HEADER,
                size: slot_size,
            });
        }
        let base = segment.range_ptr(offset, slot_size, 8)?;
        Ok(SlotView {
            segment,
            offset,
            base,
            payload: slot_size - SLOT_HEADER,
        })
    }

    /// Asks the CPU to start fetching the slot's request line and its payload's first
    /// line, which the client just wrote (so they sit in its CPU's cache): a batch's
    /// cache misses then overlap instead of coming one after another as each task is
    /// read. A hint only; nothing is read into the program.
    pub fn prefetch_request(&self) {
        cacheline::prefetch(self.line(slot::POOL_MAJOR));
        if self.payload > 0 {
            cacheline::prefetch(self.line(SLOT_HEADER));
        }
    }

    /// Asks the CPU to take the slot's request line and its payload's first line for
    /// writing (`PREFETCHW`), where the CPU has the instruction: the client calls it
    /// when a slot frees, so the lines come back from the runtime's cache while it reads
    /// the answer and archives its next input, not while its next call waits for them
    /// (the writes before the ring's tail is pushed must reach this CPU's cache first).
    /// A hint only: it changes no memory.
    pub fn prefetch_for_writing(&self) {
        cacheline::prefetch_for_writing(self.line(slot::POOL_MAJOR));
        if self.payload > 0 {
            cacheline::prefetch_for_writing(self.line(SLOT_HEADER));
        }
    }

    /// Asks the CPU to take the slot's reply line for writing (see
    /// [`prefetch_for_writing`](Self::prefetch_for_writing)): the runtime calls it for
    /// tasks it will answer soon, so the answer's stores do not wait for the line to
    /// come back from the client's cache (and the locked steps after them with them).
    pub fn prefetch_reply_for_writing(&self) {
        cacheline::prefetch_for_writing(self.line(slot::STATE));
    }

    /// The address of byte `at` of the slot, for a cache hint; `at` lies in the slot.
    fn line(&self, at: usize) -> *const u8 {
        debug_assert!(at < SLOT_HEADER + self.payload);
        self.base.as_ptr().wrapping_add(at)
    }

    /// A 32-bit word of the slot header (`field` is one of [`slot`]'s offsets).
    pub fn word(&self, field: usize) -> &AtomicU32 {
        assert!(
            field + 4 <= SLOT_HEADER && field.is_multiple_of(4),
            "slot field {field}"
        );
        // SAFETY: `base..base + SLOT_HEADER` lies in the mapping `self.segment` keeps
        // alive and `base` is 8-aligned (both checked in `new`); `field` is in range and
        // 4-aligned (asserted, and constant at every call site, so the check folds away).
        unsafe { &*self.base.as_ptr().add(field).cast::<AtomicU32>() }
    }

    /// A 64-bit word of the slot header.
    pub fn word64(&self, field: usize) -> &AtomicU64 {
        assert!(
            field + 8 <= SLOT_HEADER && field.is_multiple_of(8),
            "slot field {field}"
        );
        // SAFETY: as for `word`, with 8-byte alignment.
        unsafe { &*self.base.as_ptr().add(field).cast::<AtomicU64>() }
    }

    /// Copies `src` (at most [`slot::INLINE_OUTPUT_LEN`] bytes) into the reply line.
    pub fn write_inline(&self, src: &[u8]) -> Result<(), AccessError> {
        let at = self.area(slot::INLINE_OUTPUT, slot::INLINE_OUTPUT_LEN, src.len())?;
        self.write_at(at, src)
    }

    /// Copies the first `dst.len()` bytes of the reply line's output into `dst`.
    pub fn read_inline(&self, dst: &mut [u8]) -> Result<(), AccessError> {
        let at = self.area(slot::INLINE_OUTPUT, slot::INLINE_OUTPUT_LEN, dst.len())?;
        self.read_at(at, dst)
    }

    /// Payload capacity.
    pub fn payload_len(&self) -> usize {
        self.payload
    }

    /// Copies `src` into the payload (`src.len() <= payload_len()`).
    pub fn write_payload(&self, src: &[u8]) -> Result<(), AccessError> {
        let at = self.area(SLOT_HEADER, self.payload, src.len())?;
        self.write_at(at, src)
    }

    /// Copies the first `dst.len()` payload bytes into `dst`.
    pub fn read_payload(&self, dst: &mut [u8]) -> Result<(), AccessError> {
        let at = self.area(SLOT_HEADER, self.payload, dst.len())?;
        self.read_at(at, dst)
    }

    fn read_at(&self, offset: usize, dst: &mut [u8]) -> Result<(), AccessError> {
        read_shared(self.segment, offset, dst)
    }

    fn write_at(&self, offset: usize, src: &[u8]) -> Result<(), AccessError> {
        write_shared(self.segment, offset, src)
    }

    /// The segment offset of `len` bytes at `start` of this slot, in an area of
    /// `capacity` bytes.
    fn area(&self, start: usize, capacity: usize, len: usize) -> Result<usize, AccessError> {
        if len > capacity {
            return Err(AccessError::OutOfBounds {
                offset: start,
                len,
                size: capacity,
            });
        }
        Ok(self.offset + start)
    }
}

/// Copies `dst.len()` bytes at `offset` of `segment`, memory a client may write
/// meanwhile, into `dst` ([`Segment::read_bytes`]: atomic word copies, no reference into
/// the shared bytes; a racing peer makes the copy's content unspecified, never unsafe).
pub fn read_shared(segment: &Segment, offset: usize, dst: &mut [u8]) -> Result<(), AccessError> {
    segment.read_bytes(offset, dst)
}

/// Copies `src` to `offset` of `segment` ([`Segment::write_bytes`], the counterpart of
/// [`read_shared`]).
pub fn write_shared(segment: &Segment, offset: usize, src: &[u8]) -> Result<(), AccessError> {
    segment.write_bytes(offset, src)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_geometry_fits_and_parts_do_not_overlap() {
        let g = AreaGeometry::fit(320 << 10, 256, 1024, 512 << 10, 128 << 10).unwrap();
        assert_eq!(g.slot_size, 1024);
        let (ring, ring_len) = g.ring_range();
        assert!(ring + ring_len <= g.slot_offset(0));
        assert_eq!(g.slot_offset(7) % 128, 0);
        assert!(g.slot_offset(255) + g.slot_size as usize <= g.data_offset());
        assert_eq!(g.data_offset() % 4096, 0);
        assert_eq!(g.output_offset(), g.data_offset() + g.data_len);
        assert_eq!(
            g.checked_total_len(),
            Some(g.output_offset() + g.output_len)
        );
        assert!(AreaGeometry::fit(4096, 256, 1024, 0, 0).is_none());
    }

    #[test]
    fn a_geometry_no_runtime_would_make_is_refused() {
        let g = AreaGeometry::fit(320 << 10, 256, 1024, 4096, 4096).unwrap();
        for bad in [
            AreaGeometry { slots: 3, ..g },
            AreaGeometry {
                slot_size: 100,
                ..g
            },
            AreaGeometry {
                data_len: usize::MAX,
                ..g
            },
        ] {
            assert_eq!(bad.checked_total_len(), None, "{bad:?}");
        }
    }

    /// One area in a memfd, as the runtime makes it, for the line round trips.
    fn area(geometry: &AreaGeometry) -> Segment {
        let len = geometry.checked_total_len().unwrap();
        let memfd =
            rustix::fs::memfd_create("wire-test", rustix::fs::MemfdFlags::CLOEXEC).expect("memfd");
        rustix::fs::ftruncate(&memfd, len as u64).expect("size the memfd");
        let name = label();
        Segment::from_memfd(std::fs::File::from(memfd), &name).expect("map the memfd")
    }

    fn label() -> crate::shm::ShmName {
        let instance = crate::shm::InstanceName::new("wire-test").unwrap();
        crate::shm::ShmName::segment(&instance, "area").unwrap()
    }

    fn geometry() -> AreaGeometry {
        AreaGeometry::fit(320 << 10, 16, 1024, 4096, 4096).unwrap()
    }

    #[test]
    fn every_request_reads_back_as_written() {
        let geometry = geometry();
        let segment = area(&geometry);
        let view = SlotView::new(&segment, &geometry, 3).unwrap();
        let pool = PoolId::new(7, 2);
        let queries = [
            PoolQuery::Local,
            PoolQuery::DirectId(5),
            PoolQuery::DirectHash(u64::MAX - 1),
            PoolQuery::Range {
                offset: 3,
                count: u32::MAX,
            },
            PoolQuery::Broadcast,
            PoolQuery::Physical(9),
            PoolQuery::Dynamic,
        ];
        let schedules = [
            None,
            Some(Schedule::FireAndForget),
            Some(Schedule::Periodic(Duration::from_nanos(1))),
            Some(Schedule::Periodic(Duration::from_secs(3600))),
        ];
        let places = [InputPlace::Slot, InputPlace::ClientData { offset: 4088 }];
        for query in queries {
            for schedule in schedules {
                for input in places {
                    for force_net in [false, true] {
                        let request = SlotRequest::Task(TaskRequest {
                            pool,
                            method: 42,
                            query,
                            schedule,
                            input_len: 17,
                            input,
                            force_net,
                        });
                        request.write(&view);
                        assert_eq!(SlotRequest::read(&view), Ok(request));
                    }
                }
            }
        }
        for control in [
            SlotRequest::Cancel { periodic: u64::MAX },
            SlotRequest::Abandon { list_len: 12 },
        ] {
            control.write(&view);
            assert_eq!(SlotRequest::read(&view), Ok(control));
        }
    }

    #[test]
    fn every_reply_reads_back_as_written() {
        let geometry = geometry();
        let segment = area(&geometry);
        let view = SlotView::new(&segment, &geometry, 0).unwrap();
        for status in [ReplyStatus::Ok, ReplyStatus::Error, ReplyStatus::Replicas] {
            for place in [
                OutputPlace::Line,
                OutputPlace::Slot,
                OutputPlace::OutputSpace { offset: 1 << 40 },
            ] {
                let reply = SlotReply {
                    status,
                    len: 12345,
                    place,
                };
                reply.write(&view);
                assert_eq!(SlotReply::read(&view), Ok(reply));
            }
        }
    }

    #[test]
    fn words_no_writer_makes_are_typed_errors() {
        let geometry = geometry();
        let segment = area(&geometry);
        let view = SlotView::new(&segment, &geometry, 1).unwrap();
        let valid = SlotRequest::Task(TaskRequest {
            pool: PoolId::new(2, 0),
            method: 1,
            query: PoolQuery::Local,
            schedule: None,
            input_len: 0,
            input: InputPlace::Slot,
            force_net: false,
        });
        let set = |field, value: u32| view.word(field).store(value, Ordering::Relaxed);
        let cases: [(&dyn Fn(), WireError); 5] = [
            (&|| set(slot::KIND, 99), WireError::UnknownKind(99)),
            (
                &|| {
                    set(slot::KIND, KIND_PERIODIC);
                    view.word64(slot::PERIOD_NS).store(0, Ordering::Relaxed);
                },
                WireError::ZeroPeriod,
            ),
            (&|| set(slot::QUERY_TAG, 77), WireError::UnknownQueryTag(77)),
            (
                &|| {
                    set(slot::QUERY_TAG, query_tag::RANGE);
                    view.word64(slot::QUERY_B).store(1 << 32, Ordering::Relaxed);
                },
                WireError::RangeCount(1 << 32),
            ),
            (
                &|| set(slot::INPUT_WHERE, 5),
                WireError::UnknownInputPlace(5),
            ),
        ];
        for (forge, expected) in cases {
            valid.write(&view);
            forge();
            assert_eq!(SlotRequest::read(&view), Err(expected));
        }
        SlotReply {
            status: ReplyStatus::Ok,
            len: 0,
            place: OutputPlace::Line,
        }
        .write(&view);
        set(slot::STATUS, 9);
        assert_eq!(SlotReply::read(&view), Err(WireError::UnknownStatus(9)));
        set(slot::STATUS, STATUS_OK);
        set(slot::OUTPUT_WHERE, 8);
        assert_eq!(
            SlotReply::read(&view),
            Err(WireError::UnknownOutputPlace(8))
        );
    }
}
