//! The layout of a runtime's main segment, and typed views of its parts.
//!
//! ```text
//! 0       header (magic, version, state, geometry, counters)            4 KiB
//! 4 KiB   doorbells: per shm worker, a futex word and a "sleeping" flag  4 KiB
//! 8 KiB   client area 0 | client area 1 | …                              max_clients × area
//!
//! client area:  control line (state, generation, pid, data in use)       128 B
//!               submission ring (client → runtime, slot indices)          RingLayout::size(slots)
//!               task slots                                                slots × slot_size
//!
//! task slot:    reply line (state, waiting, output descriptor, ≤ 32 B output)   64 B
//!               request line (target, kind, query, input descriptor)             64 B
//!               payload: the input archive, then a larger output archive  slot_size - 128
//! ```
//!
//! The runtime writes the geometry once, before publishing `state = READY`; a client
//! reads it from the header (never from its own config), so both sides agree. Every
//! view here is created from checked offsets; a [`SlotView`] keeps its segment mapped and
//! reaches its words through pointers whose range was checked when the view was made.
//!
//! Who writes what: a client writes its control line's `pid`, and the header and payload
//! of its free slots; the runtime writes everything else. Each side reads the other's
//! words once into locals and validates them before use.
use super::ring::RingLayout;
use super::segment::{AccessError, Segment};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64};

/// "CHIMAERA" in ASCII, little-endian.
pub const MAGIC: u64 = u64::from_le_bytes(*b"CHIMAERA");
/// Bumped whenever this layout changes.
pub const VERSION: u32 = 2;

/// The segment is being laid out.
pub const STATE_INIT: u32 = 0;
/// The runtime serves clients.
pub const STATE_READY: u32 = 1;
/// The runtime is stopping; no new client may attach.
pub const STATE_STOPPING: u32 = 2;

/// Header offsets.
mod header {
    pub const MAGIC: usize = 0;
    pub const VERSION: usize = 8;
    pub const STATE: usize = 12;
    pub const MAX_CLIENTS: usize = 16;
    pub const SLOTS: usize = 20;
    pub const SLOT_SIZE: usize = 24;
    pub const WORKERS: usize = 28;
    pub const PID: usize = 32;
    pub const CLIENTS_ACTIVE: usize = 36;
    pub const RDATA_IN_USE: usize = 40;
    pub const TASKS_DONE: usize = 48;
    pub const ATTACH_EPOCH: usize = 56;
}

const HEADER_SIZE: usize = 4096;
const DOORBELL_STRIDE: usize = 128;
/// Most shm-serving workers a layout has doorbells for.
pub const MAX_DOORBELLS: usize = 32;
const CLIENTS_START: usize = HEADER_SIZE + MAX_DOORBELLS * DOORBELL_STRIDE;
const CONTROL_SIZE: usize = 128;
/// Bytes of a slot before its payload.
pub const SLOT_HEADER: usize = 128;

/// Control-line states of a client area.
pub const CLIENT_FREE: u32 = 0;
/// A live client owns the area.
pub const CLIENT_ACTIVE: u32 = 1;
/// The runtime found the owner dead and is reclaiming the area.
pub const CLIENT_RECLAIMING: u32 = 2;

/// Slot states (the slot's futex word).
pub const SLOT_FREE: u32 = 0;
/// The client wrote a task and queued the slot.
pub const SLOT_SUBMITTED: u32 = 1;
/// The runtime wrote the result.
pub const SLOT_DONE: u32 = 2;

/// Output status: the payload is the task's output archive.
pub const STATUS_OK: u32 = 0;
/// Output status: the payload is an archived `TaskError`.
pub const STATUS_ERROR: u32 = 1;
/// Output status: the payload is an archived list of replica results.
pub const STATUS_REPLICAS: u32 = 2;

/// Where a byte range of a slot lives.
pub const IN_SLOT: u32 = 0;
/// In the client's share of the client-data segment (inputs).
pub const IN_CLIENT_DATA: u32 = 1;
/// In the runtime-data segment (outputs).
pub const IN_RUNTIME_DATA: u32 = 2;
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

/// Slot header offsets.
///
/// Two cache lines. The first is the *reply line*: the state the client spins on, the
/// output's status and place, and room for a small output — so a client waiting for a
/// short answer reads a single line written by the runtime. The second is the *request
/// line*, written by the client and read by the runtime, which never reads the first
/// line when it takes a task.
pub mod slot {
    /// Slot state, and the client's futex word.
    pub const STATE: usize = 0;
    /// Non-zero while the client sleeps on `STATE`.
    pub const WAITING: usize = 4;
    /// Output status.
    pub const STATUS: usize = 8;
    /// Output length.
    pub const OUTPUT_LEN: usize = 12;
    /// Output location (`IN_LINE` / `IN_SLOT` / `IN_RUNTIME_DATA`).
    pub const OUTPUT_WHERE: usize = 16;
    /// Output offset in the runtime-data segment.
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

/// Client control-line offsets.
mod control {
    pub const STATE: usize = 0;
    pub const GENERATION: usize = 4;
    pub const PID: usize = 8;
    pub const DATA_IN_USE: usize = 16;
}

/// The geometry of a main segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Client areas.
    pub max_clients: u32,
    /// Task slots (and ring entries) per client: a power of two.
    pub slots: u32,
    /// Bytes per slot, a multiple of 128, more than [`SLOT_HEADER`].
    pub slot_size: u32,
    /// Workers that poll client rings (each has a doorbell).
    pub workers: u32,
}

impl Geometry {
    fn ring_offset() -> usize {
        CONTROL_SIZE
    }

    fn ring_size(&self) -> usize {
        RingLayout::size(self.slots)
            .unwrap_or(usize::MAX / 4)
            .next_multiple_of(128)
    }

    fn slots_offset(&self) -> usize {
        Self::ring_offset() + self.ring_size()
    }

    /// Bytes of one client area.
    pub fn client_area_size(&self) -> usize {
        self.slots_offset() + self.slots as usize * self.slot_size as usize
    }

    /// Bytes the whole main segment needs.
    pub fn segment_size(&self) -> usize {
        CLIENTS_START + self.max_clients as usize * self.client_area_size()
    }

    /// Payload bytes of a slot.
    pub fn payload(&self) -> usize {
        self.slot_size as usize - SLOT_HEADER
    }

    /// The largest slot that lets `max_clients × slots` slots fit in `segment_len` bytes,
    /// capped at `max_slot`; `None` if not even a 256-byte slot fits.
    pub fn fit(
        segment_len: usize,
        max_clients: u32,
        slots: u32,
        workers: u32,
        max_slot: u32,
    ) -> Option<Geometry> {
        let mut geometry = Geometry {
            max_clients,
            slots,
            slot_size: 256,
            workers,
        };
        let fixed = CLIENTS_START + max_clients as usize * geometry.slots_offset();
        let per_slot = segment_len.checked_sub(fixed)? / (max_clients as usize * slots as usize);
        let size = (per_slot.min(max_slot as usize) / 128) * 128;
        if size < 256 {
            return None;
        }
        geometry.slot_size = size as u32;
        Some(geometry)
    }

    fn client_offset(&self, client: u32) -> usize {
        CLIENTS_START + client as usize * self.client_area_size()
    }

    /// Offset and length of a client's ring.
    pub fn ring_range(&self, client: u32) -> (usize, usize) {
        (
            self.client_offset(client) + Self::ring_offset(),
            self.ring_size(),
        )
    }

    /// Offset of a slot.
    pub fn slot_offset(&self, client: u32, slot: u32) -> usize {
        self.client_offset(client) + self.slots_offset() + slot as usize * self.slot_size as usize
    }
}

/// The header of a main segment.
#[derive(Clone, Debug)]
pub struct Header {
    segment: Segment,
}

impl Header {
    /// A view of the header of `segment`.
    pub fn new(segment: Segment) -> Self {
        Header { segment }
    }

    fn word(&self, offset: usize) -> &AtomicU32 {
        // The header lies in the first 4 KiB of a segment at least that large (checked
        // by `Layout` before any Header is used), at 4-aligned offsets.
        self.segment
            .atomic_u32(offset)
            .unwrap_or_else(|_| unreachable_word())
    }

    fn word64(&self, offset: usize) -> &AtomicU64 {
        self.segment
            .atomic_u64(offset)
            .unwrap_or_else(|_| unreachable_word64())
    }

    /// Magic and version, as written.
    pub fn identity(&self) -> (u64, u32) {
        (
            self.word64(header::MAGIC)
                .load(std::sync::atomic::Ordering::Acquire),
            self.word(header::VERSION)
                .load(std::sync::atomic::Ordering::Acquire),
        )
    }

    /// Writes magic, version and geometry (runtime, before READY).
    pub fn init(&self, geometry: &Geometry, pid: u32) {
        use std::sync::atomic::Ordering::Relaxed;
        self.word(header::MAX_CLIENTS)
            .store(geometry.max_clients, Relaxed);
        self.word(header::SLOTS).store(geometry.slots, Relaxed);
        self.word(header::SLOT_SIZE)
            .store(geometry.slot_size, Relaxed);
        self.word(header::WORKERS).store(geometry.workers, Relaxed);
        self.word(header::PID).store(pid, Relaxed);
        self.word(header::VERSION).store(VERSION, Relaxed);
        self.word64(header::MAGIC).store(MAGIC, Relaxed);
    }

    /// The geometry as written by the runtime.
    pub fn geometry(&self) -> Geometry {
        use std::sync::atomic::Ordering::Acquire;
        Geometry {
            max_clients: self.word(header::MAX_CLIENTS).load(Acquire),
            slots: self.word(header::SLOTS).load(Acquire),
            slot_size: self.word(header::SLOT_SIZE).load(Acquire),
            workers: self.word(header::WORKERS).load(Acquire),
        }
    }

    /// Segment state (`STATE_*`).
    pub fn state(&self) -> &AtomicU32 {
        self.word(header::STATE)
    }

    /// The runtime's pid.
    pub fn pid(&self) -> u32 {
        self.word(header::PID)
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Clients attached.
    pub fn clients_active(&self) -> &AtomicU32 {
        self.word(header::CLIENTS_ACTIVE)
    }

    /// Bytes of the runtime-data segment in use.
    pub fn runtime_data_in_use(&self) -> &AtomicU64 {
        self.word64(header::RDATA_IN_USE)
    }

    /// Tasks completed for shared-memory clients.
    pub fn tasks_done(&self) -> &AtomicU64 {
        self.word64(header::TASKS_DONE)
    }

    /// Bumped (and futex-woken) whenever a client area changes hands: a client attached,
    /// or the runtime began or finished reclaiming one.
    pub fn attach_epoch(&self) -> &AtomicU32 {
        self.word(header::ATTACH_EPOCH)
    }

    /// The state word of a client's control line.
    pub fn client_state(&self, geometry: &Geometry, client: u32) -> Option<&AtomicU32> {
        self.segment
            .atomic_u32(geometry.client_offset(client) + control::STATE)
            .ok()
    }

    /// Worker `w`'s doorbell (a futex word clients bump) and its sleeping flag.
    pub fn doorbell(&self, worker: u32) -> (&AtomicU32, &AtomicU32) {
        let base = HEADER_SIZE + (worker as usize % MAX_DOORBELLS) * DOORBELL_STRIDE;
        (self.word(base), self.word(base + 64))
    }

    /// A client area's generation word alone (read on every task, so without building the
    /// whole [`Control`]).
    pub fn generation(&self, geometry: &Geometry, client: u32) -> Result<&AtomicU32, AccessError> {
        self.segment
            .atomic_u32(geometry.client_offset(client) + control::GENERATION)
    }

    /// A client's control line: state, generation, pid, data bytes in use.
    pub fn control(&self, geometry: &Geometry, client: u32) -> Result<Control<'_>, AccessError> {
        let base = geometry.client_offset(client);
        Ok(Control {
            state: self.segment.atomic_u32(base + control::STATE)?,
            generation: self.segment.atomic_u32(base + control::GENERATION)?,
            pid: self.segment.atomic_u32(base + control::PID)?,
            data_in_use: self.segment.atomic_u64(base + control::DATA_IN_USE)?,
        })
    }
}

#[cold]
fn unreachable_word() -> &'static AtomicU32 {
    static SPARE: AtomicU32 = AtomicU32::new(0);
    &SPARE
}

#[cold]
fn unreachable_word64() -> &'static AtomicU64 {
    static SPARE: AtomicU64 = AtomicU64::new(0);
    &SPARE
}

/// The words of a client's control line.
#[derive(Clone, Copy, Debug)]
pub struct Control<'a> {
    /// `CLIENT_*`.
    pub state: &'a AtomicU32,
    /// Bumped by the runtime each time it reclaims the area.
    pub generation: &'a AtomicU32,
    /// The owning client's pid (informational).
    pub pid: &'a AtomicU32,
    /// Bytes of the client's data share in use (written by the client).
    pub data_in_use: &'a AtomicU64,
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
    /// The view of `slot` of `client`; checks the whole slot lies in the segment.
    pub fn new(
        segment: &'a Segment,
        geometry: &Geometry,
        client: u32,
        slot: u32,
    ) -> Result<SlotView<'a>, AccessError> {
        let offset = geometry.slot_offset(client, slot);
        let slot_size = geometry.slot_size as usize;
        // The geometry may come from a header a peer wrote: a slot too small for its
        // header, or not 8-aligned, is refused here so that `word` needs no checks.
        if slot_size < SLOT_HEADER {
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
        self.segment.write_bytes(at, src)
    }

    /// Copies the first `dst.len()` bytes of the reply line's output into `dst`.
    pub fn read_inline(&self, dst: &mut [u8]) -> Result<(), AccessError> {
        let at = self.area(slot::INLINE_OUTPUT, slot::INLINE_OUTPUT_LEN, dst.len())?;
        self.segment.read_bytes(at, dst)
    }

    /// Payload capacity.
    pub fn payload_len(&self) -> usize {
        self.payload
    }

    /// Copies `src` into the payload (`src.len() <= payload_len()`).
    pub fn write_payload(&self, src: &[u8]) -> Result<(), AccessError> {
        let at = self.area(SLOT_HEADER, self.payload, src.len())?;
        self.segment.write_bytes(at, src)
    }

    /// Copies the first `dst.len()` payload bytes into `dst`.
    pub fn read_payload(&self, dst: &mut [u8]) -> Result<(), AccessError> {
        let at = self.area(SLOT_HEADER, self.payload, dst.len())?;
        self.segment.read_bytes(at, dst)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_geometry_fits_and_slots_do_not_overlap() {
        let g = Geometry::fit(20 << 20, 64, 256, 1, 1024).unwrap();
        assert_eq!(g.slot_size, 1024);
        assert!(g.segment_size() <= 20 << 20);
        let a = g.slot_offset(0, 255) + g.slot_size as usize;
        assert!(a <= g.ring_range(1).0);
        assert_eq!(g.slot_offset(3, 7) % 128, 0);
        assert_eq!(g.ring_range(5).0 % 64, 0);
        assert!(Geometry::fit(1 << 20, 64, 256, 1, 1024).is_none());
    }
}
