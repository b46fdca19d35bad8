//! Bulk byte buffers: task arguments that may travel by reference into a client's
//! shared memory, and the views handlers read and write them through.
//!
//! A client process allocates a [`Buffer`] in its data share, in the memfd the runtime
//! made for it ([`Client::allocate_buffer`](crate::Client::allocate_buffer)). When a bulk
//! argument lies inside that share, the typed client sends only its offset and length
//! ([`BulkWire::Shared`]); any other slice travels inline in the input archive
//! ([`BulkWire::Inline`]) and, when the handler writes it, comes back inline in the
//! output.
//!
//! **No reference into memory another process can write.** The client may rewrite its
//! share at any moment, so the runtime never makes a `&[u8]` / `&mut [u8]` over it
//! (under Rust's rules that is a data race: the compiler may read a byte twice and see
//! two values). A handler declares what it wants:
//!
//! * `&[u8]` / `&mut [u8]`: **one copy** each way. A shared reference is copied into
//!   runtime-private memory before the handler runs, and a `&mut [u8]`'s bytes are
//!   copied back out to the client's buffer after it (or returned inline) — both copies
//!   atomic on the shared side (`crate::shm::atomic_copy`). Simple and safe.
//! * [`BulkIn`] / [`BulkOut`]: **zero-copy views**. Their API never hands out a
//!   reference into the bytes: length, copies into and out of private slices at an
//!   offset (atomic on shared memory, plain on private memory), and a raw pointer for
//!   the kernel (`io_uring`, `pwrite`), which copies from or into client memory
//!   directly. An inline argument (and every argument of an in-process client) gives the
//!   same views over runtime-private bytes, so one handler signature serves both.
//!
//! Invariants, runtime side:
//! * a shared reference is resolved only against the share of the client that submitted
//!   the task ([`BulkShare`]), bounds-checked without overflow;
//! * the share stays mapped and is not given to another client while a task holds it:
//!   the task keeps an `Arc<BulkShare>`, and the server reclaims a dead client's area only
//!   once it holds the last reference;
//! * inside the runtime no two running tasks (nor two arguments of one task) use
//!   overlapping ranges of a share when either may write: each range is claimed — for the
//!   handler's run for views and `&mut [u8]`, for the copy-in only for `&[u8]` (for the
//!   handler's run when it borrows carried bytes), until the answer for a task sent to
//!   another node — exclusively for writers, shared for readers, and a conflicting claim
//!   fails that task with a clear error. So this process never races with itself on a
//!   share, and never mixes access sizes on a range being written;
//! * a carried share resolves a reference only inside one of its ranges, and exists
//!   only if its ranges add up exactly to the bytes carried.
//!
//! **Across nodes** (`runtime::remote`). A task sent to another node carries the ranges of
//! the client's share its references point at, not the references alone: the origin
//! claims each range (a `HeldRange`: exclusively where the handler writes it, shared
//! where it only reads) from before the frame is built until the answer is in, copies it
//! (atomically) straight into the frame after its archive, and, when the answer comes,
//! writes the written ranges back into the client's buffers — all or nothing, checked
//! against what was sent — before the caller hears of the result. The receiver makes a
//! carried share (`BulkShare::carried`) of the frame's bytes: the same references (offsets in the
//! sender's share) resolve inside the carried ranges, in runtime-private memory (views
//! are not `is_shared`, a `&[u8]` is borrowed in place), claimed exactly as above; what
//! the handlers wrote goes back in the answer. A node that forwards the task down the
//! broadcast tree carries the ranges on the same way.
//!
//! What no runtime can prevent: the client process writing its buffer while a task in
//! flight uses it. The handler then sees whichever bytes are there; it reads copies and
//! trusts none of them, so the runtime stays sound, only the task's data is garbage.
//! The typed client makes that impossible in safe code: the `Pending` of a call borrows
//! its bulk arguments until the call completes, and waits for the call when dropped
//! (see [`crate::client::Pending`]); `spawn_*` and `create` send copies. A buffer
//! dropped while a call has it lent (possible only by leaking that call's `Pending`)
//! keeps its memory out of the share until the call is over ([`Buffer`]'s lending
//! table), so a call never writes another buffer. Two ways remain, both affecting only
//! the client that takes them: touching a live buffer after leaking the `Pending` that
//! borrowed it, and a raw [`Client::submit`] whose hand-made input references the
//! client's own buffers.
//!
//! [`Client::submit`]: crate::Client::submit
use crate::codec::{Bytes, SliceRef};
use crate::error::TaskError;
use crate::quota::UidQuotas;
use std::alloc::Layout;
use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::ptr::NonNull;
use std::sync::{Arc, Mutex, Weak};

pub use wire::{ArchivedBulkWire, BulkWire};

/// The wire enum and what rkyv derives for it (whose generated items carry no docs).
#[allow(missing_docs)]
mod wire {
    /// A bulk argument on the wire: the bytes themselves, or where they lie in the
    /// submitting client's data share.
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

/// One client's data share (in its memfd), as the runtime maps it, and the
/// ranges of it that running tasks hold — or, on a node a task was sent to, the bulk
/// ranges that travelled with the task (`BulkShare::carried`).
pub struct BulkShare {
    base: NonNull<u8>,
    len: usize,
    /// How a reference's offset finds its bytes.
    layout: ShareLayout,
    claims: Mutex<Vec<Claim>>,
    /// The per-uid quotas of the client's uid, if it has them (see `crate::quota`):
    /// every task of a client process carries its share, and its subtasks a share made
    /// for them ([`BulkShare::for_subtasks`]), so what a task holds or overflows is
    /// counted through it.
    quotas: Option<Arc<UidQuotas>>,
    /// Keeps the mapping alive as long as any task can reach it.
    _mapping: Arc<dyn Send + Sync>,
}

/// Where the bytes of a [`BulkWire::Shared`] reference lie in a [`BulkShare`].
enum ShareLayout {
    /// A client's share, mapped whole: offset `o` is byte `o`; the client may write it
    /// at any moment, so every copy is atomic.
    Client,
    /// Copies of some ranges of a client's share (on another node), one after the
    /// other in runtime-private memory: a reference must lie inside one of them.
    Carried(Vec<CarriedRange>),
}

/// One range of a client's share carried with a task, and where its copy starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct CarriedRange {
    /// Offset in the client's share.
    offset: u64,
    /// Length in bytes.
    len: u64,
    /// Where the copy starts in the carried bytes.
    at: usize,
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
            layout: ShareLayout::Client,
            claims: Mutex::new(Vec::new()),
            quotas: None,
            _mapping: mapping,
        }
    }

    /// Counts what this client's tasks hold and overflow against `quotas`.
    pub(crate) fn with_quotas(mut self, quotas: Option<Arc<UidQuotas>>) -> Self {
        self.quotas = quotas;
        self
    }

    /// The per-uid quotas of the client's uid, if it has them.
    #[inline]
    pub(crate) fn quotas(&self) -> Option<&Arc<UidQuotas>> {
        self.quotas.as_ref()
    }

    /// The uid without admin rights the tasks holding this share run for (the one its
    /// quotas are of); `None` for a trusted caller's.
    #[inline]
    pub(crate) fn unprivileged_uid(&self) -> Option<u32> {
        self.quotas.as_ref().map(|quotas| quotas.uid())
    }

    /// Counts a stack overflow of one of this client's tasks against its uid's quota.
    pub(crate) fn count_overflow(&self) {
        if let Some(quotas) = &self.quotas {
            quotas.count_overflow();
        }
    }

    /// What the subtasks of a task holding this share carry, so that they are counted
    /// against the same uid's quotas: `None` for a share without quotas; else a share of
    /// no bytes (a subtask, made inside the runtime, passes its bulk arguments inline,
    /// and none can reference the client's memory) with the same quotas — this share
    /// itself when it is already one. It is not the client's share, so subtasks do not
    /// count against the client's tasks in flight, and a client made for subtasks that
    /// a module keeps does not keep the client's memory mapped.
    pub(crate) fn for_subtasks(self: &Arc<Self>) -> Option<Arc<BulkShare>> {
        let quotas = self.quotas.as_ref()?;
        if self.len == 0
            && matches!(&self.layout, ShareLayout::Carried(ranges) if ranges.is_empty())
        {
            return Some(self.clone());
        }
        Some(BulkShare::for_uid(quotas.clone()))
    }

    /// A share of no bytes that carries `quotas`: what a task runs with that runs for a
    /// uid without admin rights and references no memory (a subtask of such a task, or
    /// a task a peer node sent for such a uid with no bulk range).
    pub(crate) fn for_uid(quotas: Arc<UidQuotas>) -> Arc<BulkShare> {
        Arc::new(BulkShare {
            base: NonNull::dangling(),
            len: 0,
            layout: ShareLayout::Carried(Vec::new()),
            claims: Mutex::new(Vec::new()),
            quotas: Some(quotas.clone()),
            // No memory to keep mapped; any `Arc` will do, and this one is at hand.
            _mapping: quotas,
        })
    }

    /// The bulk ranges that travelled with a task from another node: `ranges` (offset
    /// and length in the sending client's share) are copied one after the other in
    /// `bytes[carried]`, which this share owns from now on. References of the task
    /// resolve inside these ranges, in private memory (no atomic copies needed).
    pub(crate) fn carried(
        mut bytes: Vec<u8>,
        carried: std::ops::Range<usize>,
        ranges: impl IntoIterator<Item = (u64, u64)>,
    ) -> Result<BulkShare, TaskError> {
        let available = carried.end.saturating_sub(carried.start);
        if carried.end > bytes.len() {
            return Err(TaskError::malformed(
                "bulk data",
                "the carried bytes lie past the end of the frame",
            ));
        }
        let mut table = Vec::new();
        let mut at = 0usize;
        for (offset, len) in ranges {
            let end = usize::try_from(len)
                .ok()
                .and_then(|len| at.checked_add(len))
                .filter(|&end| end <= available)
                .ok_or_else(|| {
                    TaskError::malformed(
                        "bulk data",
                        format!("its ranges announce more than the {available} bytes carried"),
                    )
                })?;
            offset.checked_add(len).ok_or_else(|| {
                TaskError::malformed("bulk data", format!("the range {offset}+{len} overflows"))
            })?;
            table.push(CarriedRange { offset, len, at });
            at = end;
        }
        if at != available {
            return Err(TaskError::malformed(
                "bulk data",
                format!("{available} bytes carried for ranges of {at} bytes"),
            ));
        }
        // SAFETY: `carried` lies inside `bytes` (checked above); the pointer is taken
        // once, and the vector (moved, its heap block staying put) is reached through
        // nothing else until it is dropped with the last reference to this share.
        let base = unsafe { bytes.as_mut_ptr().add(carried.start) };
        let base = NonNull::new(base).unwrap_or(NonNull::dangling());
        Ok(BulkShare {
            base,
            len: available,
            layout: ShareLayout::Carried(table),
            claims: Mutex::new(Vec::new()),
            // Counted on the node the client is attached to, if anywhere.
            quotas: None,
            _mapping: Arc::new(bytes),
        })
    }

    /// Whether the bytes lie in a client's shared memory (views copy atomically) rather
    /// than in this runtime's memory (carried from another node).
    pub(crate) fn is_client_memory(&self) -> bool {
        matches!(self.layout, ShareLayout::Client)
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
                match self.layout {
                    ShareLayout::Client => format!(
                        "{offset}+{len} lies outside the client's {}-byte data share",
                        self.len
                    ),
                    ShareLayout::Carried(_) => format!(
                        "{offset}+{len} lies outside the bulk ranges that came with the task"
                    ),
                },
            )
        };
        let position = match &self.layout {
            ShareLayout::Client => offset,
            ShareLayout::Carried(ranges) => {
                let end = offset.checked_add(len).ok_or_else(out_of_bounds)?;
                let range = ranges
                    .iter()
                    .find(|range| range.offset <= offset && end <= range.offset + range.len)
                    .ok_or_else(out_of_bounds)?;
                range.at as u64 + (offset - range.offset)
            }
        };
        let start = usize::try_from(position).map_err(|_| out_of_bounds())?;
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
        let mut claims = crate::sync::lock(&self.claims);
        let conflict = claims.iter().any(|held| {
            (held.exclusive || exclusive) && held.start < end && start < held.end && len > 0
        });
        if conflict {
            return Err(TaskError::BulkBufferBusy {
                offset,
                len: len as u64,
                held_for_writing: !exclusive,
            });
        }
        claims.push(claim);
        Ok(claim)
    }

    fn release(&self, claim: Claim) {
        let mut claims = crate::sync::lock(&self.claims);
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

    /// Whether another process may write the bytes (copies must be atomic).
    fn shared(&self) -> bool {
        self.share.is_client_memory()
    }

    /// Copies the whole range into `dst` (of its length).
    fn load(&self, dst: &mut [u8]) {
        debug_assert_eq!(dst.len(), self.len());
        // SAFETY: the claim is in bounds of the mapped share, which the holder keeps
        // mapped; no task of this runtime writes it while the claim is held, and `dst`
        // is private memory of its length.
        unsafe { read_raw(self.ptr(), dst, self.shared()) };
    }

    /// Copies `src` (of the range's length) over the range, which must be claimed
    /// exclusively.
    fn store(&self, src: &[u8]) {
        debug_assert!(self.claim.exclusive && src.len() == self.len());
        // SAFETY: the claimed range, exclusively ours, of the mapped share; `src` is a
        // live private slice of its length, so it cannot alias the range.
        unsafe { write_raw(self.ptr(), src, self.shared()) };
    }
}

/// A claimed range of a share held outside any handler's run: the range a task sent to
/// another node reads or writes, held (with the share) until that node has answered.
/// Released when dropped.
pub(crate) struct HeldRange {
    share: Arc<BulkShare>,
    claim: Claim,
}

impl HeldRange {
    /// Claims `offset..offset + len` of `share`: exclusively when the handler writes
    /// it, shared when it only reads it.
    pub(crate) fn take(
        share: &Arc<BulkShare>,
        offset: u64,
        len: u64,
        exclusive: bool,
    ) -> Result<HeldRange, TaskError> {
        let claim = share.claim(offset, len, exclusive)?;
        Ok(HeldRange {
            share: share.clone(),
            claim,
        })
    }

    fn held(&self) -> std::mem::ManuallyDrop<Held<'_>> {
        // Borrowed for one copy, never dropped: the claim is released by `HeldRange`.
        std::mem::ManuallyDrop::new(Held {
            share: &self.share,
            claim: self.claim,
        })
    }

    /// Length in bytes.
    pub(crate) fn len(&self) -> usize {
        self.claim.end - self.claim.start
    }

    /// Copies the range into `dst`, which has its length (atomically on a client's
    /// memory).
    pub(crate) fn copy_to(&self, dst: &mut [u8]) {
        self.held().load(dst);
    }

    /// Copies `src` over the range; `false` (nothing written) unless the range is
    /// claimed exclusively and `src` has its length.
    pub(crate) fn copy_from(&self, src: &[u8]) -> bool {
        if !self.claim.exclusive || src.len() != self.len() {
            return false;
        }
        self.held().store(src);
        true
    }
}

impl Drop for HeldRange {
    fn drop(&mut self) {
        self.share.release(self.claim);
    }
}

impl std::fmt::Debug for HeldRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeldRange")
            .field("start", &self.claim.start)
            .field("len", &self.len())
            .field("exclusive", &self.claim.exclusive)
            .finish()
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        crate::coroutine::let_go(self.claim.release_of(self.share));
        self.share.release(self.claim);
    }
}

/// Why a view access did not happen: the range does not lie inside the bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{len} bytes at offset {offset} do not fit in a {available}-byte bulk buffer; keep offset + len within len()")]
pub struct BulkRangeError {
    /// Offset asked for.
    pub offset: usize,
    /// Length asked for.
    pub len: usize,
    /// The view's length.
    pub available: usize,
}

impl From<BulkRangeError> for TaskError {
    fn from(err: BulkRangeError) -> Self {
        TaskError::BulkOutOfRange {
            offset: err.offset as u64,
            len: err.len as u64,
            available: err.available as u64,
        }
    }
}

/// Checks `offset..offset + len` against `available` bytes.
fn check_range(offset: usize, len: usize, available: usize) -> Result<(), BulkRangeError> {
    match offset.checked_add(len) {
        Some(end) if end <= available => Ok(()),
        _ => Err(BulkRangeError {
            offset,
            len,
            available,
        }),
    }
}

/// Bytes a handler reads without copying them first: a task argument declared as
/// `data: BulkIn<'_>` (the client passes a `&[u8]`).
///
/// The bytes may lie in a client's shared memory, which that client can rewrite at any
/// moment, so the view never hands out a reference into them: read them with
/// [`read_at`](Self::read_at) / [`to_vec`](Self::to_vec) / [`get`](Self::get) (atomic
/// copies on shared memory, plain ones on private memory), or give the kernel
/// [`as_ptr`](Self::as_ptr). Validate what you copied, not the view: the next read may
/// differ.
#[derive(Clone, Copy)]
pub struct BulkIn<'a> {
    ptr: *const u8,
    len: usize,
    /// Another process may write the bytes: copies are atomic.
    shared: bool,
    _bytes: PhantomData<&'a [u8]>,
}

// SAFETY: a `BulkIn` only reads its range, like a `&[u8]` (which is `Send` and `Sync`);
// reads of shared memory are atomic, so reading from several threads is no data race.
unsafe impl Send for BulkIn<'_> {}
// SAFETY: as above.
unsafe impl Sync for BulkIn<'_> {}

impl<'a> BulkIn<'a> {
    /// A view of private bytes (what an inline argument gives, and what tests and
    /// callers outside a task pass).
    pub fn from_slice(bytes: &'a [u8]) -> Self {
        BulkIn {
            ptr: bytes.as_ptr(),
            len: bytes.len(),
            shared: false,
            _bytes: PhantomData,
        }
    }

    /// A view of `len` bytes at `ptr` of memory another process may write (a shared
    /// mapping): every copy of it is atomic.
    ///
    /// # Safety
    /// `ptr..ptr + len` must stay mapped and readable for `'a`, no reference to it may
    /// exist in this process, and nothing in this process may write it during `'a`.
    pub unsafe fn from_raw_shared(ptr: *const u8, len: usize) -> Self {
        BulkIn {
            ptr,
            len,
            shared: true,
            _bytes: PhantomData,
        }
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the bytes lie in a client's shared memory (rather than the runtime's).
    pub fn is_shared(&self) -> bool {
        self.shared
    }

    /// Copies `dst.len()` bytes starting at `offset` into `dst`.
    pub fn read_at(&self, offset: usize, dst: &mut [u8]) -> Result<(), BulkRangeError> {
        check_range(offset, dst.len(), self.len)?;
        // SAFETY: the range was checked against the view, which is valid for reads for
        // `'a`; `dst` is the caller's own memory, not part of the view (a `&mut [u8]`
        // cannot alias shared memory, nor private bytes the view borrows immutably).
        unsafe { read_raw(self.ptr.add(offset), dst, self.shared) };
        Ok(())
    }

    /// As [`read_at`](Self::read_at), writing `dst` around the cache (non-temporal
    /// stores, where the CPU has them) when it is long enough to pay: for a destination
    /// not read again soon, such as a RAM device's block. A write then neither waits for
    /// each destination line to be read into the cache nor evicts what the worker uses
    /// next; the copy ends with a store fence, so its bytes are ordered before the
    /// caller's next store.
    pub fn read_at_streaming(&self, offset: usize, dst: &mut [u8]) -> Result<(), BulkRangeError> {
        check_range(offset, dst.len(), self.len)?;
        // SAFETY: as in `read_at`: a checked range of a view readable for `'a` (shared
        // or private: a streaming copy reads either in an `asm!` block, no reference
        // made), into the caller's own, separate `dst`.
        unsafe { crate::shm::atomic_copy::load_streaming(self.ptr.add(offset), dst) };
        Ok(())
    }

    /// The byte at `index`, if there is one.
    pub fn get(&self, index: usize) -> Option<u8> {
        let mut byte = [0u8];
        self.read_at(index, &mut byte).ok().map(|()| byte[0])
    }

    /// A private copy of all the bytes.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut copy = vec![0u8; self.len];
        // SAFETY: the whole view, into a fresh vector of its length.
        unsafe { read_raw(self.ptr, &mut copy, self.shared) };
        copy
    }

    /// The `len` bytes at `offset`, as a view of their own.
    pub fn subslice(&self, offset: usize, len: usize) -> Result<BulkIn<'a>, BulkRangeError> {
        check_range(offset, len, self.len)?;
        Ok(BulkIn {
            // SAFETY: `offset <= self.len`, so the pointer stays inside (or one past)
            // the view's range.
            ptr: unsafe { self.ptr.add(offset) },
            len,
            ..*self
        })
    }

    /// The address of the first byte, for the kernel (`io_uring`, `pwrite`) to read
    /// `len()` bytes from. Never make a reference from it: another process may write
    /// the bytes meanwhile.
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr
    }
}

impl<'a> From<&'a [u8]> for BulkIn<'a> {
    fn from(bytes: &'a [u8]) -> Self {
        BulkIn::from_slice(bytes)
    }
}

impl std::fmt::Debug for BulkIn<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BulkIn")
            .field("len", &self.len)
            .field("shared", &self.shared)
            .finish()
    }
}

/// Bytes a handler writes in place, and may read: a task argument declared as
/// `data: BulkOut<'_>` (the client passes a `&mut [u8]`, which holds the result when
/// the call returns).
///
/// As with [`BulkIn`], no reference into the bytes is ever handed out: write with
/// [`write_at`](Self::write_at) / [`fill`](Self::fill), read with
/// [`read_at`](Self::read_at), or give the kernel [`as_mut_ptr`](Self::as_mut_ptr) to
/// fill. Shared bytes are claimed exclusively for the handler's run, so no other task of
/// this runtime touches them meanwhile.
pub struct BulkOut<'a> {
    ptr: *mut u8,
    len: usize,
    shared: bool,
    _bytes: PhantomData<&'a mut [u8]>,
}

// SAFETY: a `BulkOut` is the runtime's only handle on its range, like a `&mut [u8]`
// (`Send`, and `Sync` since `&BulkOut` only reads); shared memory is accessed atomically.
unsafe impl Send for BulkOut<'_> {}
// SAFETY: as above.
unsafe impl Sync for BulkOut<'_> {}

impl<'a> BulkOut<'a> {
    /// A view of private bytes (what an inline argument gives, and what tests and
    /// callers outside a task pass).
    pub fn from_slice(bytes: &'a mut [u8]) -> Self {
        BulkOut {
            ptr: bytes.as_mut_ptr(),
            len: bytes.len(),
            shared: false,
            _bytes: PhantomData,
        }
    }

    /// A view of `len` bytes at `ptr` of memory another process may access (a shared
    /// mapping): every copy of it is atomic.
    ///
    /// # Safety
    /// `ptr..ptr + len` must stay mapped and writable for `'a`, no reference to it may
    /// exist in this process, and nothing else in this process may access it during `'a`.
    pub unsafe fn from_raw_shared(ptr: *mut u8, len: usize) -> Self {
        BulkOut {
            ptr,
            len,
            shared: true,
            _bytes: PhantomData,
        }
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the bytes lie in a client's shared memory (rather than the runtime's).
    pub fn is_shared(&self) -> bool {
        self.shared
    }

    /// A read-only view of the same bytes, for as long as this one is borrowed.
    pub fn as_in(&self) -> BulkIn<'_> {
        BulkIn {
            ptr: self.ptr,
            len: self.len,
            shared: self.shared,
            _bytes: PhantomData,
        }
    }

    /// Copies `dst.len()` bytes starting at `offset` into `dst`.
    pub fn read_at(&self, offset: usize, dst: &mut [u8]) -> Result<(), BulkRangeError> {
        self.as_in().read_at(offset, dst)
    }

    /// The byte at `index`, if there is one.
    pub fn get(&self, index: usize) -> Option<u8> {
        self.as_in().get(index)
    }

    /// A private copy of all the bytes.
    pub fn to_vec(&self) -> Vec<u8> {
        self.as_in().to_vec()
    }

    /// Copies `src` into the bytes starting at `offset`.
    pub fn write_at(&mut self, offset: usize, src: &[u8]) -> Result<(), BulkRangeError> {
        check_range(offset, src.len(), self.len)?;
        // SAFETY: checked range of a view valid for writes for `'a`, which `&mut self`
        // makes this the only user of; `src` cannot alias it (it is a live `&[u8]`,
        // and the view's bytes are reached through no reference).
        unsafe {
            let dst = self.ptr.add(offset);
            if self.shared {
                crate::shm::atomic_copy::store(dst, src);
            } else {
                std::ptr::copy_nonoverlapping(src.as_ptr(), dst, src.len());
            }
        }
        Ok(())
    }

    /// Sets every byte to `value`.
    pub fn fill(&mut self, value: u8) {
        // SAFETY: the whole view, valid for writes, used by nobody else (`&mut self`).
        unsafe {
            if self.shared {
                crate::shm::atomic_copy::fill(self.ptr, self.len, value);
            } else {
                std::ptr::write_bytes(self.ptr, value, self.len);
            }
        }
    }

    /// The `len` bytes at `offset`, as a view of their own for as long as this one is
    /// borrowed.
    pub fn subslice_mut(
        &mut self,
        offset: usize,
        len: usize,
    ) -> Result<BulkOut<'_>, BulkRangeError> {
        check_range(offset, len, self.len)?;
        Ok(BulkOut {
            // SAFETY: `offset <= self.len`: inside (or one past) the view's range.
            ptr: unsafe { self.ptr.add(offset) },
            len,
            shared: self.shared,
            _bytes: PhantomData,
        })
    }

    /// The first min(`len`, `self.len()`) bytes, as the view itself.
    pub fn truncated(self, len: usize) -> BulkOut<'a> {
        BulkOut {
            len: len.min(self.len),
            ..self
        }
    }

    /// The same bytes for a shorter borrow, so the view can be passed on and used again.
    pub fn reborrow(&mut self) -> BulkOut<'_> {
        BulkOut {
            ptr: self.ptr,
            len: self.len,
            shared: self.shared,
            _bytes: PhantomData,
        }
    }

    /// The address of the first byte, for the kernel to read `len()` bytes from.
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr
    }

    /// The address of the first byte, for the kernel (`io_uring`, `pread`) to write
    /// `len()` bytes to. Never make a reference from it: another process may access
    /// the bytes meanwhile.
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr
    }
}

impl<'a> From<&'a mut [u8]> for BulkOut<'a> {
    fn from(bytes: &'a mut [u8]) -> Self {
        BulkOut::from_slice(bytes)
    }
}

impl std::fmt::Debug for BulkOut<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BulkOut")
            .field("len", &self.len)
            .field("shared", &self.shared)
            .finish()
    }
}

/// Copies `src` into a view's memory at `dst`: atomically when `shared`.
///
/// # Safety
/// `dst..dst + src.len()` must be writable, used by nothing else meanwhile, and not
/// part of `src`.
unsafe fn write_raw(dst: *mut u8, src: &[u8], shared: bool) {
    if shared {
        // SAFETY: the caller's promise.
        unsafe { crate::shm::atomic_copy::store(dst, src) };
    } else {
        // SAFETY: the caller's promise.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst, src.len()) };
    }
}

/// Copies from a view's memory at `src` into `dst`: atomically when `shared`.
///
/// # Safety
/// `src..src + dst.len()` must be readable and not part of `dst`.
unsafe fn read_raw(src: *const u8, dst: &mut [u8], shared: bool) {
    if shared {
        // SAFETY: the caller's promise.
        unsafe { crate::shm::atomic_copy::load(src, dst) };
    } else {
        // SAFETY: the caller's promise; private bytes nobody writes while the view lives.
        unsafe { std::ptr::copy_nonoverlapping(src, dst.as_mut_ptr(), dst.len()) };
    }
}

/// A `&[u8]` handler argument: the bytes in runtime-private memory. Inline bytes are
/// borrowed from the validated input (itself a private copy); a reference into a
/// client's share is claimed, copied once (atomically), and released; a reference into
/// the ranges carried with a task from another node (private memory already) is
/// borrowed in place, claimed for reading for as long as the handler has it.
pub fn copy_in<'a>(
    share: Option<&'a BulkShare>,
    wire: &'a ArchivedBulk,
) -> Result<BulkBytes<'a>, TaskError> {
    match wire {
        ArchivedBulkWire::Inline(bytes) => Ok(BulkBytes(BytesOf::Borrowed(bytes.as_slice()))),
        ArchivedBulkWire::Shared { offset, len } => {
            let held = Held::take(share, offset.to_native(), len.to_native(), false)?;
            if held.shared() {
                let mut copy = vec![0u8; held.len()];
                held.load(&mut copy);
                return Ok(BulkBytes(BytesOf::Owned(copy)));
            }
            Ok(BulkBytes(BytesOf::Carried(held)))
        }
    }
}

/// The bytes of a `&[u8]` handler argument, in runtime-private memory (see [`copy_in`]).
pub struct BulkBytes<'a>(BytesOf<'a>);

enum BytesOf<'a> {
    /// Inline in the validated input.
    Borrowed(&'a [u8]),
    /// Copied out of a client's share.
    Owned(Vec<u8>),
    /// In the ranges carried with the task, claimed for reading.
    Carried(Held<'a>),
}

impl std::ops::Deref for BulkBytes<'_> {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match &self.0 {
            BytesOf::Borrowed(bytes) => bytes,
            BytesOf::Owned(bytes) => bytes,
            // SAFETY: a carried share is this runtime's private memory (no other process
            // maps it), the claim is in bounds of it and keeps it alive (the task holds
            // the share), and the claim, held as long as `self`, keeps every writer of
            // this runtime out of the range while the slice lives.
            BytesOf::Carried(held) => unsafe { std::slice::from_raw_parts(held.ptr(), held.len()) },
        }
    }
}

impl std::fmt::Debug for BulkBytes<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BulkBytes")
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

/// A [`BulkIn`] argument resolved for the handler: the bytes, and the claim on them
/// when they lie in the client's share.
pub struct BulkInArg<'a> {
    view: BulkIn<'a>,
    _held: Option<Held<'a>>,
}

impl<'a> BulkInArg<'a> {
    /// Resolves `wire`: inline bytes are viewed in the validated input, a shared
    /// reference in `share` (the submitting client's share, if the task came from one).
    pub fn open(share: Option<&'a BulkShare>, wire: &'a ArchivedBulk) -> Result<Self, TaskError> {
        match wire {
            ArchivedBulkWire::Inline(bytes) => Ok(BulkInArg {
                view: BulkIn::from_slice(bytes.as_slice()),
                _held: None,
            }),
            ArchivedBulkWire::Shared { offset, len } => {
                let held = Held::take(share, offset.to_native(), len.to_native(), false)?;
                let view = BulkIn {
                    ptr: held.ptr(),
                    len: held.len(),
                    shared: held.shared(),
                    _bytes: PhantomData,
                };
                // The view is sound: the claim is in bounds of the mapped share, which
                // outlives `'a` (the task holds the share); the runtime makes no
                // reference into shares, and no task writes this range until the claim
                // is released with `held`, which lives as long as the view can.
                Ok(BulkInArg {
                    view,
                    _held: Some(held),
                })
            }
        }
    }

    /// The view the handler gets.
    pub fn view(&self) -> BulkIn<'_> {
        self.view
    }
}

/// A `&mut [u8]` or [`BulkOut`] argument resolved for the handler.
///
/// Private bytes (an inline argument's, or a `&mut [u8]` handler's copy of shared ones)
/// live in a recycled input buffer (`codec::recycled_bytes`), given back for reuse when
/// the argument is dropped, after its output is archived: a steady stream of block-sized
/// in-process reads allocates nothing.
pub struct BulkOutArg<'a>(OutBytes<'a>);

enum OutBytes<'a> {
    /// Arrived inline: the handler writes these bytes, which go back in the output.
    Owned(Bytes),
    /// Lies in the client's share, claimed exclusively.
    Shared {
        held: Held<'a>,
        /// Offset in the share, echoed in the output.
        offset: u64,
        /// For a `&mut [u8]` handler: the private copy it writes, copied back out when
        /// the handler is done. `None` for a view, which writes in place (and once the
        /// copy went back).
        copy: Option<Bytes>,
    },
}

impl Drop for BulkOutArg<'_> {
    fn drop(&mut self) {
        match &mut self.0 {
            OutBytes::Owned(bytes) => crate::codec::recycle(std::mem::take(bytes)),
            OutBytes::Shared { copy, .. } => {
                if let Some(copy) = copy.take() {
                    crate::codec::recycle(copy);
                }
            }
        }
    }
}

/// A recycled buffer holding a copy of `bytes`.
fn private_copy_of(bytes: &[u8]) -> Bytes {
    let mut copy = crate::codec::recycled_bytes();
    copy.extend_from_slice(bytes);
    copy
}

impl<'a> BulkOutArg<'a> {
    /// Resolves `wire` for a [`BulkOut`] handler argument: shared bytes are written in
    /// place (see [`BulkInArg::open`]).
    pub fn open_view(share: Option<&'a BulkShare>, wire: &ArchivedBulk) -> Result<Self, TaskError> {
        Self::open(share, wire, false)
    }

    /// Resolves `wire` for a `&mut [u8]` handler argument: shared bytes are copied into
    /// private memory now and back out by [`wire`](Self::wire).
    pub fn open_copy(share: Option<&'a BulkShare>, wire: &ArchivedBulk) -> Result<Self, TaskError> {
        Self::open(share, wire, true)
    }

    fn open(
        share: Option<&'a BulkShare>,
        wire: &ArchivedBulk,
        private_copy: bool,
    ) -> Result<Self, TaskError> {
        match wire {
            ArchivedBulkWire::Inline(bytes) => Ok(BulkOutArg(OutBytes::Owned(private_copy_of(
                bytes.as_slice(),
            )))),
            ArchivedBulkWire::Shared { offset, len } => {
                let held = Held::take(share, offset.to_native(), len.to_native(), true)?;
                let copy = private_copy.then(|| {
                    let mut copy = crate::codec::recycled_bytes();
                    copy.resize(held.len(), 0);
                    held.load(&mut copy);
                    copy
                });
                Ok(BulkOutArg(OutBytes::Shared {
                    held,
                    offset: offset.to_native(),
                    copy,
                }))
            }
        }
    }

    /// The view a [`BulkOut`] handler gets.
    pub fn view(&mut self) -> BulkOut<'_> {
        match &mut self.0 {
            OutBytes::Owned(bytes) => BulkOut::from_slice(bytes),
            OutBytes::Shared {
                copy: Some(copy), ..
            } => BulkOut::from_slice(copy),
            OutBytes::Shared {
                held, copy: None, ..
            } => {
                // Sound: in bounds of the mapped share, which outlives `'a`; the claim
                // is exclusive and lives as long as the view can (it borrows `self`),
                // and the runtime makes no reference into shares.
                BulkOut {
                    ptr: held.ptr(),
                    len: held.len(),
                    shared: held.shared(),
                    _bytes: PhantomData,
                }
            }
        }
    }

    /// The private bytes a `&mut [u8]` handler gets (opened with
    /// [`open_copy`](Self::open_copy)).
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        match &mut self.0 {
            OutBytes::Owned(bytes)
            | OutBytes::Shared {
                copy: Some(bytes), ..
            } => bytes,
            // Opened for a view: there are no private bytes to lend.
            OutBytes::Shared { copy: None, .. } => &mut [],
        }
    }

    /// What goes back in the output, borrowed for archiving (the same layout as
    /// [`Bulk`]'s): the bytes when they came inline, else only the reference, once a
    /// private copy has been copied back into the client's buffer (on the first call).
    pub fn wire(&mut self) -> BulkRef<'_> {
        match &mut self.0 {
            OutBytes::Owned(bytes) => BulkWire::Inline(SliceRef(bytes)),
            OutBytes::Shared { held, offset, copy } => {
                if let Some(copy) = copy.take() {
                    held.store(&copy);
                    crate::codec::recycle(copy);
                }
                BulkWire::Shared {
                    offset: *offset,
                    len: held.len() as u64,
                }
            }
        }
    }
}

fn no_share() -> TaskError {
    TaskError::malformed(
        "bulk buffer",
        "a buffer reference from a client without a data share (only client processes attached over shared memory send them)",
    )
}

/// Copies a `&mut [u8]` argument's output back into the caller's slice, straight from
/// the validated output archive: inline bytes are copied, a shared reference means the
/// runtime wrote the caller's buffer already.
pub fn write_back(dst: &mut [u8], out: &ArchivedBulk) -> Result<(), TaskError> {
    match out {
        ArchivedBulkWire::Inline(bytes) if bytes.len() == dst.len() => {
            dst.copy_from_slice(bytes.as_slice());
            Ok(())
        }
        ArchivedBulkWire::Inline(bytes) => Err(TaskError::malformed(
            "output",
            format!(
                "a {}-byte in-out buffer came back with {} bytes",
                dst.len(),
                bytes.len()
            ),
        )),
        ArchivedBulkWire::Shared { .. } => Ok(()),
    }
}

/// A byte buffer a client can pass as a `&[u8]` / `&mut [u8]` task argument without the
/// bytes being copied: made by [`Client::allocate_buffer`](crate::Client::allocate_buffer).
///
/// Over shared memory it lies in the client's data share (in its own memfd), aligned
/// to 4 KiB (fit for `O_DIRECT` devices); through an in-process client it is ordinary
/// heap memory and arguments are copied as any slice. New buffers are zeroed. The memory
/// returns to the share when the buffer is dropped.
///
/// While a task that was given the buffer is in flight, the runtime may read or write it.
/// The typed client's `async_*` methods return a `Pending` that borrows the buffer
/// (mutably where the handler writes) until the call completes, and dropping that
/// `Pending` waits for the call, so safe code can neither touch nor free the buffer
/// meanwhile. `spawn_*` methods send a copy of the bytes instead. A buffer dropped while
/// a call still has it lent (its `Pending` leaked) gives its memory back only once that
/// call is over — never, for a leaked call — so no call ever writes another buffer.
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

/// Why [`Client::allocate_buffer`](crate::Client::allocate_buffer) gave no buffer.
/// Converts into a [`TaskError`], so `?` works in a handler or a function returning one.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BufferError {
    /// The buffer is larger than this client's whole data share: it can never fit.
    #[error("a {len}-byte buffer is larger than this client's whole {share}-byte data share; allocate smaller buffers, or raise `shm.client_data_size` (divided among `max_clients`) in the runtime's config")]
    TooLarge {
        /// The size asked for.
        len: u64,
        /// The size of the client's data share.
        share: u64,
    },
    /// The data share has no room left for the buffer: buffers still held fill it.
    #[error("no room for a {len}-byte buffer in this client's {share}-byte data share ({in_use} bytes held by buffers); drop unused buffers, or raise `shm.client_data_size` (divided among `max_clients`) in the runtime's config")]
    ShareFull {
        /// The size asked for.
        len: u64,
        /// The size of the client's data share.
        share: u64,
        /// Bytes the client's live buffers hold.
        in_use: u64,
    },
    /// The process could not allocate the buffer's memory (an in-process client's
    /// buffers are heap memory).
    #[error("out of memory for a {len}-byte buffer")]
    OutOfMemory {
        /// The size asked for.
        len: u64,
    },
    /// The extent the allocator chose does not lie in the mapped data share (the
    /// client's view of its memory is inconsistent); nothing was handed out.
    #[error("the {len}-byte extent at offset {offset} of the data share is not mapped in this client; drop this Client and connect again")]
    OutsideShare {
        /// Offset of the extent in the data share.
        offset: u64,
        /// Its length.
        len: u64,
    },
    /// The connection is over (the runtime stopped, or disowned this client): no buffer
    /// could be used with it.
    #[error("no buffer from a connection that is over: {0}")]
    ConnectionLost(#[source] TaskError),
}

impl From<BufferError> for TaskError {
    fn from(err: BufferError) -> TaskError {
        match err {
            BufferError::TooLarge { len, share } => TaskError::BufferTooLarge { len, share },
            BufferError::ShareFull { len, share, in_use } => {
                TaskError::DataShareFull { len, share, in_use }
            }
            BufferError::OutOfMemory { len } => TaskError::OutOfMemory { len },
            BufferError::OutsideShare { offset, len } => TaskError::malformed(
                "buffer",
                format!("the {len}-byte extent at offset {offset} of the data share is not mapped"),
            ),
            BufferError::ConnectionLost(err) => err,
        }
    }
}

/// Alignment of every buffer: a page, so `O_DIRECT` I/O can use it as it is.
pub const BUFFER_ALIGN: usize = 4096;

impl Buffer {
    /// A zeroed heap buffer of `len` bytes.
    pub(crate) fn heap(len: usize) -> Result<Buffer, BufferError> {
        let layout = Layout::from_size_align(len.max(1), BUFFER_ALIGN)
            .map_err(|_| BufferError::OutOfMemory { len: len as u64 })?;
        // SAFETY: `layout` has a non-zero size.
        let ptr = NonNull::new(unsafe { std::alloc::alloc_zeroed(layout) })
            .ok_or(BufferError::OutOfMemory { len: len as u64 })?;
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
        // SAFETY: the caller hands over `len` writable bytes at `ptr`; shared memory, so
        // zeroed with atomic stores like every other access the runtime side may race.
        unsafe { crate::shm::atomic_copy::fill(ptr.as_ptr(), len, 0) };
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

impl Buffer {
    /// Makes this shared buffer known to `table` (its memory starts at `offset` of the
    /// share): from now on, dropping it while a call has it lent gives the memory back
    /// only once the last such call is over.
    pub(crate) fn track_lending(mut self, table: &Arc<LendingTable>, offset: u64) -> Buffer {
        let BufferOwner::Share(free) =
            std::mem::replace(&mut self.owner, BufferOwner::Heap(Layout::new::<u8>()))
        else {
            return self;
        };
        let state = Arc::new(LendState::default());
        crate::sync::lock(&table.buffers).insert(offset, (self.len as u64, Arc::downgrade(&state)));
        let table = table.clone();
        self.owner = BufferOwner::Share(Box::new(move || {
            state.free_when_returned(Box::new(move || {
                // The entry is this buffer's until its memory goes back: no other buffer
                // can start at `offset` before `free` runs.
                crate::sync::lock(&table.buffers).remove(&offset);
                free();
            }));
        }));
        self
    }
}

/// The shared buffers of one client connection, by where they start in its share, so
/// that a call can mark the buffers its arguments lie in as lent.
///
/// Why: a `Pending` that borrowed a buffer waits for its call when dropped, but one that
/// is leaked (`mem::forget`) does not, and its buffer may then be dropped while the
/// runtime still writes it. A buffer dropped while lent keeps its memory out of the
/// share until every call that has it lent is over — forever, for a leaked call — so
/// the runtime's late write never lands in another buffer.
#[derive(Default)]
pub(crate) struct LendingTable {
    /// Start offset → (length, lending state of the live buffer there).
    buffers: Mutex<BTreeMap<u64, (u64, Weak<LendState>)>>,
}

impl LendingTable {
    /// The lending state of the live buffer holding `offset..offset + len`, marked lent
    /// once more.
    pub(crate) fn lend(&self, offset: u64, len: u64) -> Option<Arc<LendState>> {
        let buffers = crate::sync::lock(&self.buffers);
        let (start, (buffer_len, state)) = buffers.range(..=offset).next_back()?;
        let end = offset.checked_add(len)?;
        if end > start.checked_add(*buffer_len)? {
            return None;
        }
        let state = state.upgrade()?;
        crate::sync::lock(&state.inner).lent += 1;
        Some(state)
    }
}

/// How many calls in flight have a buffer lent, and what to do once none has.
#[derive(Default)]
pub(crate) struct LendState {
    inner: Mutex<LendInner>,
}

#[derive(Default)]
struct LendInner {
    lent: u32,
    /// The buffer was dropped while lent: this gives its memory back.
    deferred_free: Option<Box<dyn FnOnce() + Send + Sync>>,
}

impl LendState {
    /// One call that had the buffer lent is over.
    pub(crate) fn give_back(&self) {
        let mut inner = crate::sync::lock(&self.inner);
        inner.lent = inner.lent.saturating_sub(1);
        if inner.lent == 0 {
            if let Some(free) = inner.deferred_free.take() {
                drop(inner);
                free();
            }
        }
    }

    /// The buffer was dropped: `free` runs now, or once no call has it lent.
    fn free_when_returned(&self, free: Box<dyn FnOnce() + Send + Sync>) {
        let mut inner = crate::sync::lock(&self.inner);
        if inner.lent == 0 {
            drop(inner);
            free();
        } else {
            inner.deferred_free = Some(free);
        }
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

    /// The owned form of an output's borrowed bulk argument, to compare.
    fn owned(wire: BulkRef<'_>) -> Bulk {
        match wire {
            BulkWire::Inline(bytes) => BulkWire::Inline(bytes.0.to_vec()),
            BulkWire::Shared { offset, len } => BulkWire::Shared { offset, len },
        }
    }

    fn share(len: usize) -> (Vec<u8>, BulkShare) {
        let mut memory = vec![0u8; len];
        let base = NonNull::new(memory.as_mut_ptr()).unwrap();
        // SAFETY: the vector outlives the share in every test (returned together, and
        // its heap block does not move); the tests reach it only through the share.
        let share = unsafe { BulkShare::new(base, len, Arc::new(())) };
        (memory, share)
    }

    fn wire(offset: u64, len: u64) -> Bytes {
        encode(&Bulk::Shared { offset, len }).unwrap()
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
            let bytes = wire(offset, len);
            let wire = access::<ArchivedBulk>(&bytes, "input").unwrap();
            let err = BulkInArg::open(Some(&share), wire).err().unwrap();
            assert!(
                matches!(err, TaskError::Malformed { .. }),
                "{offset}+{len}: {err}"
            );
            assert!(copy_in(Some(&share), wire).is_err());
            assert!(BulkOutArg::open_copy(Some(&share), wire).is_err());
        }
        let bytes = wire(0, 64);
        let wire = access::<ArchivedBulk>(&bytes, "input").unwrap();
        let arg = BulkInArg::open(Some(&share), wire).unwrap();
        assert_eq!(arg.view().len(), 64);
        assert!(arg.view().is_shared());
        assert!(
            BulkInArg::open(None, wire).is_err(),
            "no share, no reference"
        );
    }

    #[test]
    fn a_written_range_is_exclusive_until_released() {
        let (_memory, share) = share(64);
        let (a_bytes, b_bytes, c_bytes) = (wire(0, 32), wire(16, 32), wire(32, 32));
        let a = access::<ArchivedBulk>(&a_bytes, "input").unwrap();
        let b = access::<ArchivedBulk>(&b_bytes, "input").unwrap();
        let c = access::<ArchivedBulk>(&c_bytes, "input").unwrap();
        let mut writer = BulkOutArg::open_view(Some(&share), a).unwrap();
        writer.view().fill(1);
        assert!(
            BulkInArg::open(Some(&share), b).is_err(),
            "overlaps the writer"
        );
        assert!(copy_in(Some(&share), b).is_err(), "overlaps the writer");
        assert!(
            BulkOutArg::open_copy(Some(&share), b).is_err(),
            "overlaps the writer"
        );
        let reader = BulkInArg::open(Some(&share), c).unwrap();
        let second_reader = BulkInArg::open(Some(&share), c).unwrap();
        assert_eq!(reader.view().to_vec(), second_reader.view().to_vec());
        assert_eq!(owned(writer.wire()), Bulk::Shared { offset: 0, len: 32 });
        drop((writer, reader, second_reader));
        let copied = copy_in(Some(&share), b).unwrap();
        assert_eq!(&copied[..16], &[1; 16]);
        drop(copied);
        assert!(
            BulkOutArg::open_copy(Some(&share), b).is_ok(),
            "a copy-in holds its claim only while it copies"
        );
    }

    #[test]
    fn a_private_copy_goes_back_to_the_share_when_the_handler_is_done() {
        let (_memory, share) = share(64);
        let bytes = wire(8, 8);
        let wire = access::<ArchivedBulk>(&bytes, "input").unwrap();
        let mut arg = BulkOutArg::open_copy(Some(&share), wire).unwrap();
        arg.as_mut_slice().copy_from_slice(b"written!");
        let reader_bytes = super::tests::wire(0, 64);
        let whole = access::<ArchivedBulk>(&reader_bytes, "input").unwrap();
        assert!(
            BulkInArg::open(Some(&share), whole).is_err(),
            "still claimed"
        );
        assert_eq!(owned(arg.wire()), Bulk::Shared { offset: 8, len: 8 });
        drop(arg);
        let after = copy_in(Some(&share), whole).unwrap();
        assert_eq!(&after[8..16], b"written!");
        assert_eq!(&after[..8], &[0; 8]);
    }

    #[test]
    fn inline_in_out_bytes_come_back_inline() {
        let bytes = encode(&Bulk::Inline(vec![1, 2, 3])).unwrap();
        let wire = access::<ArchivedBulk>(&bytes, "input").unwrap();
        let mut arg = BulkOutArg::open_copy(None, wire).unwrap();
        arg.as_mut_slice()[0] = 9;
        let out = encode(&arg.wire()).unwrap();
        let out = access::<ArchivedBulk>(&out, "output").unwrap();
        let mut dst = [0u8; 3];
        write_back(&mut dst, out).unwrap();
        assert_eq!(dst, [9, 2, 3]);
        assert!(write_back(&mut [0u8; 2], out).is_err(), "a length mismatch");
        let mut view_arg = BulkOutArg::open_view(None, wire).unwrap();
        assert!(!view_arg.view().is_shared());
        view_arg.view().write_at(2, &[7]).unwrap();
        assert_eq!(owned(view_arg.wire()), Bulk::Inline(vec![1, 2, 7]));
        assert_eq!(&*copy_in(None, wire).unwrap(), &[1, 2, 3]);
    }

    #[test]
    fn views_check_every_range_and_hand_out_no_reference() {
        let mut bytes = *b"0123456789";
        let mut out = BulkOut::from_slice(&mut bytes);
        out.write_at(8, b"xy").unwrap();
        assert_eq!(
            out.write_at(9, b"xy"),
            Err(BulkRangeError {
                offset: 9,
                len: 2,
                available: 10
            })
        );
        assert!(out.write_at(usize::MAX, b"x").is_err());
        assert_eq!(out.reborrow().truncated(99).len(), 10);
        assert_eq!(out.reborrow().truncated(4).to_vec(), b"0123");
        let mut part = out.subslice_mut(2, 3).unwrap();
        part.fill(b'-');
        assert!(part.subslice_mut(1, 3).is_err());
        let view = out.as_in();
        assert_eq!(view.to_vec(), b"01---567xy");
        let mut two = [0u8; 2];
        view.subslice(3, 4).unwrap().read_at(2, &mut two).unwrap();
        assert_eq!(&two, b"56");
        assert_eq!((view.get(9), view.get(10)), (Some(b'y'), None));
        assert!(view.read_at(9, &mut two).is_err());
        let in_view = BulkIn::from(&b"abc"[..]);
        assert_eq!((in_view.len(), in_view.is_shared()), (3, false));
        assert!(in_view.subslice(4, 0).is_err());
    }

    #[test]
    fn shared_views_copy_atomically_and_in_bounds() {
        let (_memory, share) = share(64);
        let bytes = wire(3, 20);
        let wire = access::<ArchivedBulk>(&bytes, "input").unwrap();
        let mut arg = BulkOutArg::open_view(Some(&share), wire).unwrap();
        let mut view = arg.view();
        assert!(view.is_shared());
        view.fill(5);
        view.write_at(17, b"end").unwrap();
        assert!(view.write_at(18, b"end").is_err());
        assert_eq!(&view.to_vec()[15..], &[5, 5, b'e', b'n', b'd']);
        drop(arg);
        let whole = super::tests::wire(0, 64);
        let all = copy_in(
            Some(&share),
            access::<ArchivedBulk>(&whole, "input").unwrap(),
        )
        .unwrap();
        assert_eq!(&all[..3], &[0; 3], "nothing before the range");
        assert_eq!(&all[23..], &[0; 41], "nothing after the range");
    }

    /// A buffer dropped while lent gives its memory back once the last call that has
    /// it lent is over; a range not inside one live buffer is lent by no buffer.
    #[test]
    fn a_buffer_dropped_while_lent_is_freed_when_given_back() {
        let table = Arc::new(LendingTable::default());
        let freed = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let mut memory = vec![0u8; 8192];
        let base = memory.as_mut_ptr();
        let buffer_at = |offset: usize| {
            let freed = freed.clone();
            // SAFETY: `offset` is 0 or 4096, inside `memory`.
            let ptr = NonNull::new(unsafe { base.add(offset) }).unwrap();
            // SAFETY: 4096 bytes of `memory`, which outlives the buffers, given to one
            // buffer each.
            let buffer = unsafe {
                Buffer::in_share(
                    ptr,
                    4096,
                    Box::new(move || {
                        freed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }),
                )
            };
            buffer.track_lending(&table, offset as u64)
        };
        let (first, second) = (buffer_at(0), buffer_at(4096));
        assert!(table.lend(4000, 200).is_none(), "spans two buffers");
        assert!(table.lend(8000, 200).is_none(), "runs past the last one");
        let lent_twice = (table.lend(10, 20).unwrap(), table.lend(0, 4096).unwrap());
        drop(first);
        let count = || freed.load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(count(), 0, "still lent");
        lent_twice.0.give_back();
        assert_eq!(count(), 0, "still lent once");
        lent_twice.1.give_back();
        assert_eq!(count(), 1, "freed with the last give-back");
        assert!(
            table.lend(0, 10).is_none(),
            "the freed buffer left the table"
        );
        drop(second);
        assert_eq!(count(), 2, "never lent: freed at once");
    }

    /// Ranges carried from another node: references resolve inside them (at their own
    /// offsets in the sender's share), in private memory, claimed like a client's share;
    /// carried bytes that do not add up to the ranges are refused.
    #[test]
    fn carried_ranges_resolve_references_in_place_and_are_claimed() {
        let mut frame = b"header".to_vec();
        frame.extend_from_slice(b"abcdefgh0123");
        let carried = 6..frame.len();
        let share = BulkShare::carried(frame, carried, [(4096, 8), (100, 4)]).unwrap();
        let first = wire(4098, 3);
        let first = access::<ArchivedBulk>(&first, "input").unwrap();
        let bytes = copy_in(Some(&share), first).unwrap();
        assert_eq!(&*bytes, b"cde");
        let view = BulkInArg::open(Some(&share), first).unwrap();
        assert!(!view.view().is_shared(), "carried bytes are private memory");
        assert_eq!(view.view().to_vec(), b"cde");
        assert!(
            BulkOutArg::open_view(Some(&share), first).is_err(),
            "read while a handler holds it"
        );
        drop((bytes, view));
        let second = wire(100, 4);
        let second = access::<ArchivedBulk>(&second, "input").unwrap();
        let mut writer = BulkOutArg::open_view(Some(&share), second).unwrap();
        writer.view().write_at(0, b"WXYZ").unwrap();
        assert_eq!(
            owned(writer.wire()),
            Bulk::Shared {
                offset: 100,
                len: 4
            }
        );
        drop(writer);
        let share = Arc::new(share);
        let held = HeldRange::take(&share, 100, 4, false).unwrap();
        let mut out = [0u8; 4];
        held.copy_to(&mut out);
        assert_eq!(&out, b"WXYZ");
        assert!(!held.copy_from(b"nope"), "a read claim writes nothing");
        drop(held);
        for (offset, len) in [(4095, 2), (4100, 5), (96, 4), (u64::MAX, 1), (0, 0)] {
            let bytes = wire(offset, len);
            let reference = access::<ArchivedBulk>(&bytes, "input").unwrap();
            assert!(
                matches!(
                    copy_in(Some(&share), reference),
                    Err(TaskError::Malformed { .. })
                ),
                "{offset}+{len} lies outside the carried ranges"
            );
        }
        for ranges in [vec![(0, 8)], vec![(0, 13)], vec![(u64::MAX, 12)], vec![]] {
            let frame = vec![0u8; 18];
            assert!(
                BulkShare::carried(frame, 6..18, ranges.clone()).is_err(),
                "{ranges:?} for 12 bytes"
            );
        }
        assert!(BulkShare::carried(vec![0; 4], 2..9, [(0, 7)]).is_err());
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

    #[test]
    fn an_impossible_heap_buffer_is_a_typed_error() {
        let len = usize::MAX - 10;
        let Err(err) = Buffer::heap(len) else {
            panic!("a heap buffer of {len} bytes cannot exist");
        };
        assert_eq!(err, BufferError::OutOfMemory { len: len as u64 });
        assert_eq!(
            TaskError::from(err),
            TaskError::OutOfMemory { len: len as u64 }
        );
    }

    #[test]
    fn buffer_errors_keep_their_sizes_as_task_errors() {
        assert_eq!(
            TaskError::from(BufferError::TooLarge { len: 9, share: 8 }),
            TaskError::BufferTooLarge { len: 9, share: 8 }
        );
        assert_eq!(
            TaskError::from(BufferError::ConnectionLost(TaskError::Disowned)),
            TaskError::Disowned
        );
        assert!(matches!(
            TaskError::from(BufferError::OutsideShare { offset: 4096, len: 8192 }),
            TaskError::Malformed { what, .. } if what == "buffer"
        ));
    }
}
