//! A single-producer single-consumer ring of `u32` values in shared memory.
//!
//! A client (producer) pushes task-slot indices; the runtime (consumer) pops them. The
//! ring lives in a [`ShmRegion`] at a fixed layout, found by offset:
//!
//! ```text
//! offset 0    consumer line (128 bytes): head: u32 | magic: u32 | capacity: u32
//! offset 128  producer line (128 bytes): tail: u32 | pad | last: u64
//! offset 256  entries: capacity × u32
//! ```
//!
//! `head` and `tail` count pops and pushes since [`Ring::init`] (wrapping); the entry of
//! count `n` is `entries[n % capacity]`. The two counters sit on separate lines, 128 bytes
//! apart rather than 64 because x86's adjacent-line prefetcher pulls cache lines in pairs,
//! so the producer and consumer do not steal each other's line on every operation.
//!
//! # Invariants and memory ordering
//!
//! * Only the producer writes `tail` and the entries; only the consumer writes `head`.
//!   Each side keeps its own counter in process memory and only *stores* it to shared
//!   memory, so a peer scribbling over our counter cannot mislead us.
//! * Producer: store the entry (relaxed), then `tail.store(Release)`. Consumer:
//!   `tail.load(Acquire)` — which makes the entry visible — then load the entry, then
//!   `head.store(Release)`; the producer's `head.load(Acquire)` before it reuses the
//!   entry orders the consumer's read before the overwrite.
//! * Each side caches the other's counter and reloads it only when the ring looks full
//!   (producer) or empty (consumer): one shared-line read per batch, not per value.
//! * `last` repeats the newest push as `count << 32 | value`, stored before `tail`: a
//!   consumer that finds exactly one new value reads it from the line `tail` is on
//!   instead of fetching the entry's line too (one cache-line transfer less per task
//!   when a client waits for each call). It takes `last` only if its count is the one
//!   it pops; anything else (a newer push, a stale or forged word) sends it to the entry.
//! * `magic` and `capacity` are written once by [`Ring::init`]; [`Ring::attach`] checks
//!   them so both sides agree on the layout.
//! * A [`RingWatch`] lets the consumer ask "does a value wait?" without holding the
//!   [`Ring`] (which one thread at a time pops from): it compares the producer's `tail`
//!   (`Acquire`) with the consumer's own count of pops, which the consumer copies into
//!   the watch after popping ([`Ring::update_watch`]) — its own memory, never the shared
//!   `head`, so a producer scribbling there cannot hide or invent values. A forged
//!   `tail` only makes the watch say "yes"; the pop that follows reports it corrupt.
//!
//! # Failure modes
//!
//! The consumer does not trust the producer: a `tail` more than `capacity` ahead of its
//! own `head` (a faulty or hostile producer) makes [`Ring::pop`] return [`RingCorrupt`]
//! rather than read garbage forever; the runtime then treats the client as broken. Popped
//! values are whatever the producer wrote: the caller bounds-checks them. A producer that
//! died leaves its ring as it was; once the runtime knows it is dead
//! ([`crate::shm::liveness`]), [`Ring::reset`] empties it for the next client.
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use super::segment::{AccessError, ShmRegion};

/// Bytes between the starts of the consumer line, the producer line and the entries.
const LINE: usize = 128;
const HEAD: usize = 0;
const MAGIC: usize = 4;
const CAPACITY: usize = 8;
const TAIL: usize = LINE;
const LAST: usize = LINE + 8;
const ENTRIES: usize = 2 * LINE;
/// "CHRG": marks an initialised ring.
const RING_MAGIC: u32 = 0x4348_5247;

/// The layout of a ring in shared memory.
#[derive(Debug, Clone, Copy)]
pub struct RingLayout;

impl RingLayout {
    /// Alignment a ring's region offset needs (a cache line).
    pub const ALIGN: usize = 64;
    /// Largest capacity a ring may have.
    pub const MAX_CAPACITY: u32 = 1 << 24;

    /// Bytes a ring of `capacity` entries occupies; `capacity` must be a power of two in
    /// `1..=MAX_CAPACITY`.
    pub fn size(capacity: u32) -> Result<usize, RingError> {
        if !capacity.is_power_of_two() || capacity > Self::MAX_CAPACITY {
            return Err(RingError::BadCapacity { capacity });
        }
        Ok(ENTRIES + capacity as usize * size_of::<AtomicU32>())
    }
}

/// A ring's region or capacity does not fit, or the region holds no ring of that shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    /// The capacity is zero, not a power of two, or too large.
    #[error(
        "ring capacity {capacity} must be a power of two between 1 and {}",
        RingLayout::MAX_CAPACITY
    )]
    BadCapacity {
        /// The refused capacity.
        capacity: u32,
    },
    /// The region is too short or not cache-line aligned.
    #[error(
        "a ring of capacity {capacity} needs a {need}-byte region aligned to {align} bytes, \
         got {len} bytes at offset {offset}",
        align = RingLayout::ALIGN
    )]
    BadRegion {
        /// The capacity asked for.
        capacity: u32,
        /// Bytes needed.
        need: usize,
        /// The region's length.
        len: usize,
        /// The region's offset in its segment.
        offset: usize,
    },
    /// `attach` found no ring of this capacity: the sides disagree on the layout, or the
    /// memory was overwritten.
    #[error(
        "no ring of capacity {capacity} here (found magic {magic:#x}, capacity {found}): the \
         runtime and client disagree on the layout; restart both from the same build"
    )]
    NotARing {
        /// The capacity expected.
        capacity: u32,
        /// The magic word found.
        magic: u32,
        /// The capacity found.
        found: u32,
    },
    /// The ring's counters are inconsistent (see [`RingCorrupt`]).
    #[error(transparent)]
    Corrupt(#[from] RingCorrupt),
    /// A region access failed.
    #[error(transparent)]
    Access(#[from] AccessError),
}

/// `push` found the ring full; carries the value back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the ring is full (value {0} not pushed); retry after the consumer catches up")]
pub struct Full(pub u32);

/// The producer's `tail` is further from the consumer's `head` than the capacity allows:
/// the producer wrote garbage. The ring stays corrupt until [`Ring::reset`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "corrupt ring: tail {tail} is {} entries past head {head} but the capacity is \
     {capacity}; the producer is faulty, reclaim its ring",
    tail.wrapping_sub(*head)
)]
pub struct RingCorrupt {
    /// The consumer's head.
    pub head: u32,
    /// The tail the producer published.
    pub tail: u32,
    /// The ring's capacity.
    pub capacity: u32,
}

/// One side's handle on a ring in shared memory. The producer process uses
/// [`Ring::push`], the consumer process [`Ring::pop`]; there is one of each.
///
/// ```
/// # use chimaera_core::shm::{InstanceName, Ring, RingLayout, Segment, ShmName};
/// # let instance = InstanceName::new(&format!("doc-ring-{}", std::process::id())).unwrap();
/// # let name = ShmName::segment(&instance, "main").unwrap();
/// let segment = Segment::create(&name, 4096)?;
/// segment.remove_on_drop(true);
/// let region = segment.region(0, RingLayout::size(8)?)?;
/// let mut consumer = Ring::init(&region, 8)?;
/// let mut producer = Ring::attach(&region, 8)?; // in the client process, in practice
/// producer.push(42)?;
/// assert_eq!(consumer.pop()?, Some(42));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Ring {
    /// Keeps the mapping alive; the pointers below point into it.
    region: ShmRegion,
    head: NonNull<AtomicU32>,
    tail: NonNull<AtomicU32>,
    last: NonNull<AtomicU64>,
    entries: NonNull<AtomicU32>,
    mask: u32,
    /// Consumer: its own head. Producer: the last head it read.
    local_head: u32,
    /// Producer: its own tail. Consumer: the last tail it read.
    local_tail: u32,
}

// SAFETY: the pointers point into the mapping that `region` keeps alive wherever the Ring
// goes, and they are only used to reach atomics, which any thread may access.
unsafe impl Send for Ring {}

/// The consumer's look at a ring that needs no hold on the [`Ring`]: whether the producer
/// published values the consumer has not popped (see the module docs). Made by
/// [`Ring::watch`]; kept current by [`Ring::update_watch`] after each batch of pops.
#[derive(Debug)]
pub struct RingWatch {
    /// Keeps the mapping alive; `tail` points into it.
    _region: ShmRegion,
    tail: NonNull<AtomicU32>,
    /// The consumer's head as of its last [`Ring::update_watch`].
    popped: AtomicU32,
}

// SAFETY: `tail` points into the mapping that `region` keeps alive wherever the watch
// goes, and is only used to reach an atomic, which any thread may access.
unsafe impl Send for RingWatch {}
// SAFETY: as above; every field is reached through atomics or shared references.
unsafe impl Sync for RingWatch {}

impl RingWatch {
    /// Whether the producer published a value the consumer has not popped (or a tail
    /// that is not a count at all, which the next pop reports as [`RingCorrupt`]): one
    /// load of the producer's line, one of the consumer's own word.
    pub fn has_values(&self) -> bool {
        // SAFETY: `tail` points at an aligned AtomicU32 inside the mapping that
        // `self._region` keeps alive (checked by `Ring::locate`).
        let tail = unsafe { self.tail.as_ref() }.load(Ordering::Acquire);
        tail != self.popped.load(Ordering::Relaxed)
    }
}

impl Ring {
    /// Consumer: a watch on this ring, current as of now.
    pub fn watch(&self) -> RingWatch {
        RingWatch {
            _region: self.region.clone(),
            tail: self.tail,
            popped: AtomicU32::new(self.local_head),
        }
    }

    /// Consumer: tells `watch` (made by [`watch`](Self::watch) on this ring) how far the
    /// consumer has popped.
    pub fn update_watch(&self, watch: &RingWatch) {
        watch.popped.store(self.local_head, Ordering::Relaxed);
    }

    /// Lays out an empty ring of `capacity` entries in `region` (the consumer does this,
    /// before any producer attaches) and returns a handle on it.
    pub fn init(region: &ShmRegion, capacity: u32) -> Result<Ring, RingError> {
        let ring = Ring::locate(region, capacity)?;
        ring.head().store(0, Ordering::Relaxed);
        ring.tail().store(0, Ordering::Relaxed);
        ring.last().store(u64::MAX, Ordering::Relaxed);
        region
            .atomic_u32(CAPACITY)?
            .store(capacity, Ordering::Relaxed);
        // Release: an attacher that sees the magic sees the zeroed counters too.
        region
            .atomic_u32(MAGIC)?
            .store(RING_MAGIC, Ordering::Release);
        Ok(ring)
    }

    /// Attaches to the ring [`Ring::init`] laid out in `region`, checking that it has this
    /// `capacity` and that its counters are consistent.
    pub fn attach(region: &ShmRegion, capacity: u32) -> Result<Ring, RingError> {
        let mut ring = Ring::locate(region, capacity)?;
        let magic = region.atomic_u32(MAGIC)?.load(Ordering::Acquire);
        let found = region.atomic_u32(CAPACITY)?.load(Ordering::Relaxed);
        if magic != RING_MAGIC || found != capacity {
            return Err(RingError::NotARing {
                capacity,
                magic,
                found,
            });
        }
        ring.local_head = ring.head().load(Ordering::Acquire);
        ring.local_tail = ring.tail().load(Ordering::Acquire);
        ring.check(ring.local_tail)?;
        Ok(ring)
    }

    /// Checks the region and capacity, and points at the ring's words.
    fn locate(region: &ShmRegion, capacity: u32) -> Result<Ring, RingError> {
        let need = RingLayout::size(capacity)?;
        let absolute = region.segment().base() as usize + region.offset();
        if region.len() < need || !absolute.is_multiple_of(RingLayout::ALIGN) {
            return Err(RingError::BadRegion {
                capacity,
                need,
                len: region.len(),
                offset: region.offset(),
            });
        }
        Ok(Ring {
            head: NonNull::from(region.atomic_u32(HEAD)?),
            tail: NonNull::from(region.atomic_u32(TAIL)?),
            last: NonNull::from(region.atomic_u64(LAST)?),
            entries: NonNull::from(region.atomic_u32_slice(ENTRIES, capacity as usize)?).cast(),
            region: region.clone(),
            mask: capacity - 1,
            local_head: 0,
            local_tail: 0,
        })
    }

    /// Producer: appends `value`, or returns it in [`Full`] if the ring is full.
    pub fn push(&mut self, value: u32) -> Result<(), Full> {
        let tail = self.local_tail;
        if tail.wrapping_sub(self.local_head) > self.mask {
            self.local_head = self.head().load(Ordering::Acquire);
            // A head the consumer never published (after `tail`, or more than `capacity`
            // behind) also reads as full: the producer never overwrites unread entries.
            if tail.wrapping_sub(self.local_head) > self.mask {
                return Err(Full(value));
            }
        }
        self.entry(tail).store(value, Ordering::Relaxed);
        self.last()
            .store(u64::from(tail) << 32 | u64::from(value), Ordering::Relaxed);
        self.local_tail = tail.wrapping_add(1);
        self.tail().store(self.local_tail, Ordering::Release);
        Ok(())
    }

    /// Consumer: removes and returns the oldest value, `Ok(None)` if the ring is empty, or
    /// [`RingCorrupt`] if the producer published an impossible tail.
    pub fn pop(&mut self) -> Result<Option<u32>, RingCorrupt> {
        let head = self.local_head;
        if head == self.local_tail {
            self.local_tail = self.tail().load(Ordering::Acquire);
            if head == self.local_tail {
                return Ok(None);
            }
        }
        self.check(self.local_tail)?;
        let value = match self.last().load(Ordering::Relaxed) {
            last if self.local_tail == head.wrapping_add(1) && (last >> 32) as u32 == head => {
                last as u32
            }
            _ => self.entry(head).load(Ordering::Relaxed),
        };
        self.local_head = head.wrapping_add(1);
        self.head().store(self.local_head, Ordering::Release);
        Ok(Some(value))
    }

    /// Consumer: pops up to `out.len()` values into `out`, oldest first, publishing the
    /// new head once for all of them; returns how many (0 if the ring is empty), or
    /// [`RingCorrupt`] if the producer published an impossible tail (nothing is popped).
    pub fn pop_batch(&mut self, out: &mut [u32]) -> Result<usize, RingCorrupt> {
        let head = self.local_head;
        if (self.local_tail.wrapping_sub(head) as usize) < out.len() {
            self.local_tail = self.tail().load(Ordering::Acquire);
        }
        self.check(self.local_tail)?;
        let count = (self.local_tail.wrapping_sub(head) as usize).min(out.len());
        if count == 0 {
            return Ok(0);
        }
        let last = self.last().load(Ordering::Relaxed);
        if count == 1 && self.local_tail == head.wrapping_add(1) && (last >> 32) as u32 == head {
            out[0] = last as u32;
        } else {
            for (value, at) in out[..count].iter_mut().zip(0u32..) {
                *value = self.entry(head.wrapping_add(at)).load(Ordering::Relaxed);
            }
        }
        self.local_head = head.wrapping_add(count as u32);
        self.head().store(self.local_head, Ordering::Release);
        Ok(count)
    }

    /// Consumer: how many values wait, as far as the consumer can tell (the producer may
    /// have pushed more since), or [`RingCorrupt`].
    pub fn len(&self) -> Result<u32, RingCorrupt> {
        let tail = self.tail().load(Ordering::Acquire);
        self.check(tail)?;
        Ok(tail.wrapping_sub(self.local_head))
    }

    /// Consumer: whether no value waits (a corrupt ring counts as not empty).
    pub fn is_empty(&self) -> bool {
        self.len() == Ok(0)
    }

    /// The ring's capacity.
    pub fn capacity(&self) -> u32 {
        self.mask + 1
    }

    /// Consumer: empties the ring for a new producer, dropping whatever a dead producer
    /// left (the caller reclaims the tasks those values named first, if it cares). Only
    /// sound once the producer is known dead: a live one would keep its own tail.
    pub fn reset(&mut self) {
        self.local_head = 0;
        self.local_tail = 0;
        self.tail().store(0, Ordering::Relaxed);
        self.last().store(u64::MAX, Ordering::Relaxed);
        self.head().store(0, Ordering::Release);
    }

    /// The region the ring occupies.
    pub fn region(&self) -> &ShmRegion {
        &self.region
    }

    /// Err if `tail` is more than `capacity` past the consumer's head.
    fn check(&self, tail: u32) -> Result<(), RingCorrupt> {
        if tail.wrapping_sub(self.local_head) > self.capacity() {
            Err(RingCorrupt {
                head: self.local_head,
                tail,
                capacity: self.capacity(),
            })
        } else {
            Ok(())
        }
    }

    fn head(&self) -> &AtomicU32 {
        // SAFETY: `head` points at an aligned AtomicU32 inside the mapping that
        // `self.region` keeps alive (checked in `locate`).
        unsafe { self.head.as_ref() }
    }

    fn tail(&self) -> &AtomicU32 {
        // SAFETY: as for `head`.
        unsafe { self.tail.as_ref() }
    }

    fn last(&self) -> &AtomicU64 {
        // SAFETY: as for `head` (an aligned AtomicU64, checked in `locate`).
        unsafe { self.last.as_ref() }
    }

    fn entry(&self, count: u32) -> &AtomicU32 {
        // SAFETY: `entries` points at `capacity` aligned AtomicU32s inside the mapping
        // that `self.region` keeps alive (checked in `locate`), and `count & mask` is
        // below `capacity`.
        unsafe { self.entries.add((count & self.mask) as usize).as_ref() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shm::naming::ShmName;
    use crate::shm::segment::Segment;
    use crate::shm::test_util::instance;

    fn segment(tag: &str, len: usize) -> Segment {
        let seg = Segment::create(&ShmName::segment(&instance(tag), "test").unwrap(), len).unwrap();
        seg.remove_on_drop(true);
        seg
    }

    #[test]
    fn layout_sizes_and_bad_shapes() {
        assert_eq!(RingLayout::size(1).unwrap(), 260);
        assert_eq!(RingLayout::size(256).unwrap(), 256 + 1024);
        for bad in [0, 3, 100, RingLayout::MAX_CAPACITY * 2] {
            assert_eq!(
                RingLayout::size(bad),
                Err(RingError::BadCapacity { capacity: bad })
            );
        }
        let seg = segment("ringshape", 4096);
        let short = seg.region(0, 256 + 4 * 8 - 1).unwrap();
        assert!(matches!(
            Ring::init(&short, 8),
            Err(RingError::BadRegion { .. })
        ));
        let misaligned = seg.region(4, 1024).unwrap();
        assert!(matches!(
            Ring::init(&misaligned, 8),
            Err(RingError::BadRegion { .. })
        ));
        let fresh = seg.region(1024, 1024).unwrap();
        assert!(matches!(
            Ring::attach(&fresh, 8),
            Err(RingError::NotARing { .. })
        ));
        let region = seg.region(0, 1024).unwrap();
        Ring::init(&region, 8).unwrap();
        let err = Ring::attach(&region, 16).unwrap_err();
        assert!(matches!(err, RingError::NotARing { found: 8, .. }), "{err}");
    }

    #[test]
    fn a_single_new_value_is_read_from_the_tail_line_and_a_forged_copy_is_ignored() {
        let seg = segment("ringlast", 4096);
        let region = seg.region(128, RingLayout::size(8).unwrap()).unwrap();
        let mut consumer = Ring::init(&region, 8).unwrap();
        let mut producer = Ring::attach(&region, 8).unwrap();
        for value in [7u32, 8, 9] {
            producer.push(value).unwrap();
            assert_eq!(consumer.pop(), Ok(Some(value)));
        }
        // A scribbled `last` naming another count: it is ignored and the entry is read.
        producer.push(10).unwrap();
        region
            .atomic_u64(LAST)
            .unwrap()
            .store(u64::from(99u32) << 32 | 5, Ordering::Relaxed);
        assert_eq!(consumer.pop(), Ok(Some(10)));
        // Several new values: the entries, in order.
        for value in 11..15 {
            producer.push(value).unwrap();
        }
        let popped: Vec<_> = (11..15).map(|_| consumer.pop().unwrap().unwrap()).collect();
        assert_eq!(popped, [11, 12, 13, 14]);
    }

    #[test]
    fn a_watch_sees_pushes_and_pops_and_no_scribbled_head_hides_a_value() {
        let seg = segment("ringwatch", 4096);
        let region = seg.region(0, RingLayout::size(4).unwrap()).unwrap();
        let mut consumer = Ring::init(&region, 4).unwrap();
        let mut producer = Ring::attach(&region, 4).unwrap();
        let watch = consumer.watch();
        assert!(!watch.has_values());
        producer.push(1).unwrap();
        assert!(watch.has_values());
        // The producer rewrites the shared head to match its tail: the watch reads the
        // consumer's own count, so the value still shows.
        region.atomic_u32(HEAD).unwrap().store(1, Ordering::Relaxed);
        assert!(watch.has_values());
        assert_eq!(consumer.pop(), Ok(Some(1)));
        consumer.update_watch(&watch);
        assert!(!watch.has_values());
        // A forged tail makes the watch say yes; the pop then reports the corruption.
        region.atomic_u32(TAIL).unwrap().store(77, Ordering::Release);
        assert!(watch.has_values());
        assert!(consumer.pop().is_err());
    }

    #[test]
    fn a_batch_pop_takes_what_waits_in_order_up_to_its_room() {
        let seg = segment("ringbatch", 4096);
        let region = seg.region(0, RingLayout::size(8).unwrap()).unwrap();
        let mut consumer = Ring::init(&region, 8).unwrap();
        let mut producer = Ring::attach(&region, 8).unwrap();
        let mut out = [0u32; 5];
        assert_eq!(consumer.pop_batch(&mut out), Ok(0));
        for round in 0..5u32 {
            for value in 0..7 {
                producer.push(round * 10 + value).unwrap();
            }
            assert_eq!(consumer.pop_batch(&mut out), Ok(5));
            assert_eq!(out, [0, 1, 2, 3, 4].map(|v| round * 10 + v));
            assert_eq!(consumer.pop_batch(&mut out), Ok(2));
            assert_eq!(out[..2], [5, 6].map(|v| round * 10 + v));
        }
        // One new value comes from the tail's line; a forged copy there is ignored.
        producer.push(42).unwrap();
        assert_eq!(consumer.pop_batch(&mut out), Ok(1));
        assert_eq!(out[0], 42);
        producer.push(43).unwrap();
        region
            .atomic_u64(LAST)
            .unwrap()
            .store(u64::from(99u32) << 32 | 5, Ordering::Relaxed);
        assert_eq!(consumer.pop_batch(&mut out), Ok(1));
        assert_eq!(out[0], 43);
        // The producer may fill the ring again at once: the head was published.
        for value in 0..8 {
            producer.push(value).unwrap();
        }
        // A tail more than the capacity ahead pops nothing.
        region.atomic_u32(TAIL).unwrap().store(1000, Ordering::Release);
        assert!(consumer.pop_batch(&mut out).is_err());
    }

    #[test]
    fn push_pop_wraps_and_fills() {
        let seg = segment("ringbasic", 4096);
        let region = seg.region(128, RingLayout::size(4).unwrap()).unwrap();
        let mut consumer = Ring::init(&region, 4).unwrap();
        let mut producer = Ring::attach(&region, 4).unwrap();
        assert_eq!(consumer.pop(), Ok(None));
        assert!(consumer.is_empty());
        for round in 0..10u32 {
            for i in 0..4 {
                producer.push(round * 10 + i).unwrap();
            }
            assert_eq!(producer.push(99), Err(Full(99)));
            assert_eq!(consumer.len(), Ok(4));
            for i in 0..4 {
                assert_eq!(consumer.pop(), Ok(Some(round * 10 + i)));
            }
            assert_eq!(consumer.pop(), Ok(None));
        }
        assert_eq!(consumer.capacity(), 4);
    }

    #[test]
    fn counters_wrap_around_u32() {
        let seg = segment("ringwrap", 4096);
        let region = seg.region(0, RingLayout::size(4).unwrap()).unwrap();
        let mut consumer = Ring::init(&region, 4).unwrap();
        // Start both counters just below the wrap, as after 2^32 - 2 values.
        let start = u32::MAX - 1;
        region
            .atomic_u32(HEAD)
            .unwrap()
            .store(start, Ordering::Relaxed);
        region
            .atomic_u32(TAIL)
            .unwrap()
            .store(start, Ordering::Relaxed);
        consumer.local_head = start;
        consumer.local_tail = start;
        let mut producer = Ring::attach(&region, 4).unwrap();
        for v in 0..4 {
            producer.push(v).unwrap();
        }
        assert_eq!(producer.push(4), Err(Full(4)));
        assert_eq!(consumer.len(), Ok(4));
        for v in 0..4 {
            assert_eq!(consumer.pop(), Ok(Some(v)));
        }
        assert_eq!(consumer.pop(), Ok(None));
    }

    #[test]
    fn a_lying_producer_is_reported_not_trusted() {
        let seg = segment("ringcorrupt", 4096);
        let region = seg.region(0, RingLayout::size(8).unwrap()).unwrap();
        let mut consumer = Ring::init(&region, 8).unwrap();
        let tail = region.atomic_u32(TAIL).unwrap();
        // Scribbling on the consumer's head changes nothing for the consumer.
        tail.store(1, Ordering::Release);
        region
            .atomic_u32(HEAD)
            .unwrap()
            .store(500, Ordering::Relaxed);
        assert_eq!(consumer.pop(), Ok(Some(0)));
        assert_eq!(consumer.pop(), Ok(None));

        tail.store(10, Ordering::Release);
        let err = consumer.pop().unwrap_err();
        assert_eq!(
            err,
            RingCorrupt {
                head: 1,
                tail: 10,
                capacity: 8
            }
        );
        assert!(err.to_string().contains("reclaim"), "{err}");
        assert!(consumer.len().is_err());
        assert!(!consumer.is_empty());
        // Stays corrupt, never reads garbage, even if the producer backs off.
        tail.store(2, Ordering::Release);
        assert!(consumer.pop().is_err());
        assert!(Ring::attach(&region, 8).is_ok());

        // A tail behind the head is as bad.
        let region2 = seg.region(2048, RingLayout::size(8).unwrap()).unwrap();
        let mut other = Ring::init(&region2, 8).unwrap();
        region2
            .atomic_u32(TAIL)
            .unwrap()
            .store(u32::MAX, Ordering::Release);
        assert!(other.pop().is_err());
        assert!(matches!(
            Ring::attach(&region2, 8),
            Err(RingError::Corrupt(_))
        ));

        consumer.reset();
        let mut producer = Ring::attach(&region, 8).unwrap();
        producer.push(7).unwrap();
        assert_eq!(consumer.pop(), Ok(Some(7)));
    }

    #[test]
    fn reset_reclaims_a_dead_producers_ring() {
        let seg = segment("ringreset", 4096);
        let region = seg.region(0, RingLayout::size(8).unwrap()).unwrap();
        let mut consumer = Ring::init(&region, 8).unwrap();
        let mut dead = Ring::attach(&region, 8).unwrap();
        for v in 0..5 {
            dead.push(v).unwrap();
        }
        drop(dead);
        assert_eq!(consumer.pop(), Ok(Some(0)));
        consumer.reset();
        assert_eq!(consumer.len(), Ok(0));
        let mut next = Ring::attach(&region, 8).unwrap();
        for v in 0..8 {
            next.push(100 + v).unwrap();
        }
        assert_eq!(next.push(0), Err(Full(0)));
        for v in 0..8 {
            assert_eq!(consumer.pop(), Ok(Some(100 + v)));
        }
    }

    #[test]
    fn two_threads_keep_a_million_values_in_order() {
        const N: u32 = 1_000_000;
        let seg = segment("ringstress", 1 << 16);
        let region = seg.region(4096, RingLayout::size(64).unwrap()).unwrap();
        let mut consumer = Ring::init(&region, 64).unwrap();
        // The producer maps the segment on its own, as a client process would.
        let other = Segment::open(seg.name()).unwrap();
        let producer_region = other.region(4096, RingLayout::size(64).unwrap()).unwrap();
        let producer = std::thread::spawn(move || {
            let mut ring = Ring::attach(&producer_region, 64).unwrap();
            for v in 0..N {
                while ring.push(v).is_err() {
                    std::hint::spin_loop();
                    std::thread::yield_now();
                }
            }
        });
        let mut expected = 0;
        while expected < N {
            match consumer.pop().unwrap() {
                Some(v) => {
                    assert_eq!(v, expected);
                    expected += 1;
                }
                None => std::thread::yield_now(),
            }
        }
        producer.join().unwrap();
        assert_eq!(consumer.pop(), Ok(None));
    }
}
