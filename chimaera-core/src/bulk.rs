//! Bulk byte buffers: `&[u8]` and `&mut [u8]` task arguments that travel by reference.
//!
//! A client process allocates a [`Buffer`] in its share of the client-data segment
//! ([`Client::allocate_buffer`](crate::Client::allocate_buffer)). When a `&[u8]` or
//! `&mut [u8]` argument lies inside that share, the typed client sends only its offset and
//! length ([`BulkWire::Shared`]); the handler gets a slice of the runtime's mapping of the
//! same memory, so the bytes are copied by neither side. Any other slice travels inline in
//! the input archive ([`BulkWire::Inline`]) and, for `&mut [u8]`, comes back inline in the
//! output. Handlers see a plain slice either way.
//!
//! Invariants, runtime side:
//! * a shared reference is resolved only against the share of the client that submitted
//!   the task ([`BulkShare`]), bounds-checked without overflow;
//! * the share stays mapped and is not given to another client while a task holds it:
//!   the task keeps an `Arc<BulkShare>`, and the server reclaims a dead client's area only
//!   once it holds the last reference;
//! * inside the runtime no two running tasks (nor two arguments of one task) hold
//!   overlapping ranges of a share when either may write: each range is claimed for the
//!   handler's run — exclusively for `&mut [u8]`, shared for `&[u8]` — and a conflicting
//!   claim fails that task with a clear error instead of aliasing a `&mut`.
//!
//! What no runtime can prevent: the client process writing its buffer while a task in
//! flight uses it. The handler then sees whichever bytes are there; it reads plain bytes
//! and trusts none of them, so the runtime stays sound, only the task's data is garbage.
use crate::codec::SliceRef;
use crate::error::TaskError;
use std::alloc::Layout;
use std::ptr::NonNull;
use std::sync::{Arc, Mutex};

pub use wire::{ArchivedBulkWire, BulkWire};

/// The wire enum and what rkyv derives for it (whose generated items carry no docs).
#[allow(missing_docs)]
mod wire {
    /// A bulk argument on the wire: the bytes themselves, or where they lie in the
    /// submitting client's share of the client-data segment.
    ///
    /// `Bulk` (= `BulkWire<Vec<u8>>`) is the owned form the `TaskIn`/`TaskOut` enums hold;
    /// the typed client archives `BulkWire<SliceRef<u8>>`, which has the same layout, so it
    /// never copies an inline slice into a `Vec` first.
    #[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq, Eq)]
    pub enum BulkWire<B> {
        /// The bytes, in the archive.
        Inline(B),
        /// `len` bytes at `offset` of the submitting client's data share.
        Shared {
            /// From the start of the client's share.
            offset: u64,
            /// Length in bytes.
            len: u64,
        },
    }
}

impl<B> BulkWire<B> {
    /// Whether the bytes travel by reference to the client's data share.
    pub fn is_shared(&self) -> bool {
        matches!(self, BulkWire::Shared { .. })
    }
}

impl ArchivedBulkWire<Vec<u8>> {
    /// The argument's length in bytes, wherever the bytes are (what a `route` or
    /// `dynamic` hook can know of a bulk argument: hooks see the input, not the share).
    pub fn len(&self) -> u64 {
        match self {
            ArchivedBulkWire::Inline(bytes) => bytes.len() as u64,
            ArchivedBulkWire::Shared { len, .. } => len.to_native(),
        }
    }

    /// Whether the argument is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The owned form of a bulk argument.
pub type Bulk = BulkWire<Vec<u8>>;

/// A bulk argument as the client archives it (borrowing an inline slice).
pub type BulkRef<'a> = BulkWire<SliceRef<'a, u8>>;

/// The archived form of [`Bulk`], as a handler's input holds it.
pub type ArchivedBulk = ArchivedBulkWire<Vec<u8>>;

/// One client's share of the client-data segment, as the runtime maps it, and the
/// ranges of it that running tasks hold.
pub struct BulkShare {
    base: NonNull<u8>,
    len: usize,
    claims: Mutex<Vec<Claim>>,
    /// Keeps the mapping alive as long as any task can reach it.
    _mapping: Arc<dyn Send + Sync>,
}

// SAFETY: `base..base + len` is shared memory that lives as long as `_mapping`; every
// access goes through claims under `claims`' lock or through slices whose aliasing the
// claims rule out, so the share can be used from any thread.
unsafe impl Send for BulkShare {}
// SAFETY: as above.
unsafe impl Sync for BulkShare {}

impl std::fmt::Debug for BulkShare {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BulkShare")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Claim {
    start: usize,
    end: usize,
    exclusive: bool,
}

impl BulkShare {
    /// The share `base..base + len`, kept mapped by `mapping`.
    ///
    /// # Safety
    /// `base..base + len` must be readable and writable memory that stays mapped while
    /// `mapping` lives, and no other `BulkShare` may cover any of it.
    pub unsafe fn new(base: NonNull<u8>, len: usize, mapping: Arc<dyn Send + Sync>) -> Self {
        BulkShare {
            base,
            len,
            claims: Mutex::new(Vec::new()),
            _mapping: mapping,
        }
    }

    /// The share's length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the share is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Checks `offset..offset + len` against the share and claims it.
    fn claim(&self, offset: u64, len: u64, exclusive: bool) -> Result<Claim, TaskError> {
        let out_of_bounds = || {
            TaskError::malformed(
                "bulk buffer",
                format!(
                    "{offset}+{len} lies outside the client's {}-byte data share",
                    self.len
                ),
            )
        };
        let start = usize::try_from(offset).map_err(|_| out_of_bounds())?;
        let len = usize::try_from(len).map_err(|_| out_of_bounds())?;
        let end = start
            .checked_add(len)
            .filter(|&end| end <= self.len)
            .ok_or_else(out_of_bounds)?;
        let claim = Claim {
            start,
            end,
            exclusive,
        };
        let mut claims = crate::task::lock(&self.claims);
        let conflict = claims.iter().any(|held| {
            (held.exclusive || exclusive) && held.start < end && start < held.end && len > 0
        });
        if conflict {
            return Err(TaskError::failed(format!(
                "bulk buffer {offset}+{len} overlaps a buffer another running task (or another argument of this task) holds{}; wait for that task before reusing the buffer",
                if exclusive { "" } else { " for writing" }
            )));
        }
        claims.push(claim);
        Ok(claim)
    }

    fn release(&self, claim: Claim) {
        let mut claims = crate::task::lock(&self.claims);
        if let Some(index) = claims.iter().position(|held| *held == claim) {
            claims.swap_remove(index);
        }
    }
}

/// A claimed range of a share, released when the handler's run ends — or, if the
/// handler dies of a stack overflow (its frames never dropped), by the worker through
/// the release it registered with its coroutine (`coroutine::hold`).
struct Held<'s> {
    share: &'s BulkShare,
    claim: Claim,
}

impl Claim {
    /// The release action for this claim of `share`.
    fn release_of(self, share: &BulkShare) -> crate::coroutine::Release {
        /// # Safety
        /// `data` is a live `BulkShare` holding the claim `words` describe.
        unsafe fn release(data: *const (), [start, end, exclusive]: [u64; 3]) {
            // SAFETY: registered by `release_of` from a `&BulkShare` that the claiming
            // task keeps alive (its `Arc`) until the release runs.
            let share = unsafe { &*data.cast::<BulkShare>() };
            share.release(Claim {
                start: start as usize,
                end: end as usize,
                exclusive: exclusive != 0,
            });
        }
        crate::coroutine::Release {
            data: (share as *const BulkShare).cast(),
            words: [
                self.start as u64,
                self.end as u64,
                u64::from(self.exclusive),
            ],
            release,
        }
    }
}

impl<'s> Held<'s> {
    /// Claims `offset..offset + len` of `share` (the submitting client's share, if the
    /// task came from one).
    fn take(
        share: Option<&'s BulkShare>,
        offset: u64,
        len: u64,
        exclusive: bool,
    ) -> Result<Self, TaskError> {
        let share = share.ok_or_else(no_share)?;
        let claim = share.claim(offset, len, exclusive)?;
        crate::coroutine::hold(claim.release_of(share));
        Ok(Held { share, claim })
    }

    fn ptr(&self) -> *mut u8 {
        // SAFETY: the claim was bounds-checked against the share's length, so the offset
        // stays inside the share's mapping.
        unsafe { self.share.base.as_ptr().add(self.claim.start) }
    }

    fn len(&self) -> usize {
        self.claim.end - self.claim.start
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        crate::coroutine::let_go(self.claim.release_of(self.share));
        self.share.release(self.claim);
    }
}

/// A `&[u8]` argument resolved for the handler.
pub struct BulkIn<'a> {
    bytes: &'a [u8],
    _held: Option<Held<'a>>,
}

impl<'a> BulkIn<'a> {
    /// Resolves `wire`: inline bytes are borrowed from the validated input, a shared
    /// reference from `share` (the submitting client's share, if the task came from one).
    pub fn open(share: Option<&'a BulkShare>, wire: &'a ArchivedBulk) -> Result<Self, TaskError> {
        match wire {
            ArchivedBulkWire::Inline(bytes) => Ok(BulkIn {
                bytes: bytes.as_slice(),
                _held: None,
            }),
            ArchivedBulkWire::Shared { offset, len } => {
                let held = Held::take(share, offset.to_native(), len.to_native(), false)?;
                // SAFETY: the claim is in bounds of the mapped share, which outlives
                // `'a` (the task holds the share); no running task holds an overlapping
                // exclusive claim until this one is released with `held`.
                let bytes = unsafe { std::slice::from_raw_parts(held.ptr(), held.len()) };
                Ok(BulkIn {
                    bytes,
                    _held: Some(held),
                })
            }
        }
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        self.bytes
    }
}

/// A `&mut [u8]` argument resolved for the handler.
pub struct BulkMut<'a>(MutBytes<'a>);

enum MutBytes<'a> {
    /// Arrived inline: the handler writes this vector, which goes back in the output.
    Owned(Vec<u8>),
    /// Lies in the client's share: the handler writes it in place.
    Shared {
        bytes: &'a mut [u8],
        /// Offset in the share, echoed in the output.
        offset: u64,
        _held: Held<'a>,
    },
}

impl<'a> BulkMut<'a> {
    /// Resolves `wire` for writing (see [`BulkIn::open`]).
    pub fn open(share: Option<&'a BulkShare>, wire: &ArchivedBulk) -> Result<Self, TaskError> {
        match wire {
            ArchivedBulkWire::Inline(bytes) => {
                Ok(BulkMut(MutBytes::Owned(bytes.as_slice().to_vec())))
            }
            ArchivedBulkWire::Shared { offset, len } => {
                let held = Held::take(share, offset.to_native(), len.to_native(), true)?;
                // SAFETY: in bounds of the mapped share, which outlives `'a`; the claim is
                // exclusive, so no other slice of these bytes exists in the runtime until
                // it is released with `held`.
                let bytes = unsafe { std::slice::from_raw_parts_mut(held.ptr(), held.len()) };
                Ok(BulkMut(MutBytes::Shared {
                    bytes,
                    offset: offset.to_native(),
                    _held: held,
                }))
            }
        }
    }

    /// The bytes the handler writes.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        match &mut self.0 {
            MutBytes::Owned(bytes) => bytes,
            MutBytes::Shared { bytes, .. } => bytes,
        }
    }

    /// What goes back in the output: the bytes when they came inline, else only the
    /// reference (the client's buffer already holds the result).
    pub fn into_wire(self) -> Bulk {
        match self.0 {
            MutBytes::Owned(bytes) => BulkWire::Inline(bytes),
            MutBytes::Shared { bytes, offset, .. } => BulkWire::Shared {
                offset,
                len: bytes.len() as u64,
            },
        }
    }
}

fn no_share() -> TaskError {
    TaskError::malformed(
        "bulk buffer",
        "a buffer reference from a client without a data share (only client processes attached over shared memory send them)",
    )
}

/// Copies a `&mut [u8]` argument's output back into the caller's slice: inline bytes
/// are copied, a shared reference means the runtime wrote the caller's buffer already.
pub fn write_back(dst: &mut [u8], out: Bulk) -> Result<(), TaskError> {
    match out {
        BulkWire::Inline(bytes) if bytes.len() == dst.len() => {
            dst.copy_from_slice(&bytes);
            Ok(())
        }
        BulkWire::Inline(bytes) => Err(TaskError::malformed(
            "output",
            format!(
                "a {}-byte in-out buffer came back with {} bytes",
                dst.len(),
                bytes.len()
            ),
        )),
        BulkWire::Shared { .. } => Ok(()),
    }
}

/// A byte buffer a client can pass as a `&[u8]` / `&mut [u8]` task argument without the
/// bytes being copied: made by [`Client::allocate_buffer`](crate::Client::allocate_buffer).
///
/// Over shared memory it lies in the client's share of the client-data segment, aligned
/// to 4 KiB (fit for `O_DIRECT` devices); through an in-process client it is ordinary
/// heap memory and arguments are copied as any slice. New buffers are zeroed. The memory
/// returns to the share when the buffer is dropped.
///
/// While a task that was given the buffer is in flight, the runtime may read or write it:
/// do not touch it — nor drop it, which would hand its memory to the next buffer — until
/// the task's result is in. (A `Pending` does not borrow the buffer, so the compiler
/// cannot enforce this; the runtime stays safe either way, only the bytes would be wrong.)
pub struct Buffer {
    ptr: NonNull<u8>,
    len: usize,
    owner: BufferOwner,
}

/// Who gets a buffer's memory back.
pub(crate) enum BufferOwner {
    /// Heap memory of this layout.
    Heap(Layout),
    /// Returned to whoever allocated it in a share.
    Share(Box<dyn FnOnce() + Send + Sync>),
}

// SAFETY: a buffer is the only owner of its range (heap allocation or arena extent), so
// moving it or sharing `&Buffer` across threads is as safe as for a `Vec<u8>`.
unsafe impl Send for Buffer {}
// SAFETY: as above; `&Buffer` only gives `&[u8]`.
unsafe impl Sync for Buffer {}

/// Alignment of every buffer: a page, so `O_DIRECT` I/O can use it as it is.
pub const BUFFER_ALIGN: usize = 4096;

impl Buffer {
    /// A zeroed heap buffer of `len` bytes.
    pub(crate) fn heap(len: usize) -> Result<Buffer, TaskError> {
        let layout = Layout::from_size_align(len.max(1), BUFFER_ALIGN)
            .map_err(|e| TaskError::failed(format!("cannot allocate a {len}-byte buffer: {e}")))?;
        // SAFETY: `layout` has a non-zero size.
        let ptr = NonNull::new(unsafe { std::alloc::alloc_zeroed(layout) })
            .ok_or_else(|| TaskError::failed(format!("out of memory for a {len}-byte buffer")))?;
        Ok(Buffer {
            ptr,
            len,
            owner: BufferOwner::Heap(layout),
        })
    }

    /// Wraps `len` bytes at `ptr` of a share; `free` returns them. Zeroes them.
    ///
    /// # Safety
    /// `ptr..ptr + len` must be writable memory owned by nobody else until `free` runs,
    /// and stay mapped until then.
    pub(crate) unsafe fn in_share(
        ptr: NonNull<u8>,
        len: usize,
        free: Box<dyn FnOnce() + Send + Sync>,
    ) -> Buffer {
        // SAFETY: the caller hands over `len` writable bytes at `ptr`.
        unsafe { std::ptr::write_bytes(ptr.as_ptr(), 0, len) };
        Buffer {
            ptr,
            len,
            owner: BufferOwner::Share(free),
        }
    }

    /// Whether the buffer lies in shared memory (arguments backed by it travel by
    /// reference) rather than on the heap.
    pub fn is_shared(&self) -> bool {
        matches!(self.owner, BufferOwner::Share(_))
    }
}

impl std::ops::Deref for Buffer {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        // SAFETY: `ptr..ptr + len` is this buffer's own initialised (zeroed) memory.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl std::ops::DerefMut for Buffer {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as for `deref`, and `&mut self` makes this the only slice of it here.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl AsRef<[u8]> for Buffer {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl AsMut<[u8]> for Buffer {
    fn as_mut(&mut self) -> &mut [u8] {
        self
    }
}

impl std::fmt::Debug for Buffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Buffer")
            .field("len", &self.len)
            .field("shared", &self.is_shared())
            .finish()
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        match std::mem::replace(&mut self.owner, BufferOwner::Heap(Layout::new::<u8>())) {
            // SAFETY: allocated in `heap` with this layout, freed once.
            BufferOwner::Heap(layout) => unsafe { std::alloc::dealloc(self.ptr.as_ptr(), layout) },
            BufferOwner::Share(free) => free(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{access, encode};

    fn share(len: usize) -> (Vec<u8>, BulkShare) {
        let mut memory = vec![0u8; len];
        let base = NonNull::new(memory.as_mut_ptr()).unwrap();
        // SAFETY: the vector outlives the share in every test (returned together, and
        // its heap block does not move).
        let share = unsafe { BulkShare::new(base, len, Arc::new(())) };
        (memory, share)
    }

    #[test]
    fn borrowed_and_owned_bulk_archive_alike() {
        let bytes = [7u8, 8, 9];
        let borrowed = encode(&(BulkRef::Inline(SliceRef(&bytes[..])), 5u32)).unwrap();
        let owned = encode(&(Bulk::Inline(bytes.to_vec()), 5u32)).unwrap();
        assert_eq!(&borrowed[..], &owned[..]);
        let shared = encode(&BulkRef::Shared { offset: 4, len: 9 }).unwrap();
        let shared_owned = encode(&Bulk::Shared { offset: 4, len: 9 }).unwrap();
        assert_eq!(&shared[..], &shared_owned[..]);
    }

    #[test]
    fn shared_references_are_bounds_checked() {
        let (_memory, share) = share(64);
        for (offset, len) in [(60, 8), (u64::MAX, 2), (0, u64::MAX), (65, 0)] {
            let bytes = encode(&Bulk::Shared { offset, len }).unwrap();
            let wire = access::<ArchivedBulk>(&bytes, "input").unwrap();
            let err = BulkIn::open(Some(&share), wire).err().unwrap();
            assert!(
                matches!(err, TaskError::Malformed { .. }),
                "{offset}+{len}: {err}"
            );
        }
        let bytes = encode(&Bulk::Shared { offset: 0, len: 64 }).unwrap();
        let wire = access::<ArchivedBulk>(&bytes, "input").unwrap();
        assert_eq!(
            BulkIn::open(Some(&share), wire).unwrap().as_slice().len(),
            64
        );
        assert!(BulkIn::open(None, wire).is_err(), "no share, no reference");
    }

    #[test]
    fn a_written_range_is_exclusive_until_released() {
        let (_memory, share) = share(64);
        let encoded = |offset, len| encode(&Bulk::Shared { offset, len }).unwrap();
        let (a_bytes, b_bytes, c_bytes) = (encoded(0, 32), encoded(16, 32), encoded(32, 32));
        let a = access::<ArchivedBulk>(&a_bytes, "input").unwrap();
        let b = access::<ArchivedBulk>(&b_bytes, "input").unwrap();
        let c = access::<ArchivedBulk>(&c_bytes, "input").unwrap();
        let mut writer = BulkMut::open(Some(&share), a).unwrap();
        writer.as_mut_slice().fill(1);
        assert!(
            BulkIn::open(Some(&share), b).is_err(),
            "overlaps the writer"
        );
        assert!(
            BulkMut::open(Some(&share), b).is_err(),
            "overlaps the writer"
        );
        let reader = BulkIn::open(Some(&share), c).unwrap();
        let second_reader = BulkIn::open(Some(&share), c).unwrap();
        assert_eq!(reader.as_slice(), second_reader.as_slice());
        assert_eq!(writer.into_wire(), Bulk::Shared { offset: 0, len: 32 });
        drop((reader, second_reader));
        let reader = BulkIn::open(Some(&share), b).unwrap();
        assert_eq!(&reader.as_slice()[..16], &[1; 16]);
    }

    #[test]
    fn inline_in_out_bytes_come_back_inline() {
        let bytes = encode(&Bulk::Inline(vec![1, 2, 3])).unwrap();
        let wire = access::<ArchivedBulk>(&bytes, "input").unwrap();
        let mut arg = BulkMut::open(None, wire).unwrap();
        arg.as_mut_slice()[0] = 9;
        let out = arg.into_wire();
        let mut dst = [0u8; 3];
        write_back(&mut dst, out).unwrap();
        assert_eq!(dst, [9, 2, 3]);
        assert!(write_back(&mut [0u8; 2], Bulk::Inline(vec![1])).is_err());
    }

    #[test]
    fn heap_buffers_are_zeroed_and_aligned() {
        let mut buffer = Buffer::heap(10_000).unwrap();
        assert!(buffer.iter().all(|&b| b == 0));
        assert_eq!(buffer.as_ptr() as usize % BUFFER_ALIGN, 0);
        buffer[9_999] = 1;
        assert!(!buffer.is_shared());
        assert_eq!(Buffer::heap(0).unwrap().len(), 0);
    }
}
