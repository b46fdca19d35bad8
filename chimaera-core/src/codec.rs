//! rkyv encoding of task inputs and outputs.
//!
//! A task's inputs travel as the rkyv archive of a tuple of its arguments' owned forms
//! (`&str` → `String`, `&[u8]`/`&mut [u8]` → [`Bulk`](crate::bulk::Bulk) (the bytes, or
//! a reference into the client's shared memory), `&[T]` → `Vec<T>`, `&T`/`&mut T`/`T` →
//! `T`); its outputs as the
//! archive of `(return value, in-out values…)`. Using tuples of the argument types (not
//! generated structs) means two crates that agree on the argument types agree on the
//! layout, checked by the type system.
//!
//! The client side never copies a borrowed argument into an owned value first: the
//! wrappers [`StrRef`], [`SliceRef`] and [`ByRef`] archive *borrowed* data with exactly
//! the archived type of the owned form (`ArchivedString`, `ArchivedVec<T::Archived>`,
//! `T::Archived`), so `(StrRef(s), ByRef(&n))` and `(String, u32)` have one layout.
//!
//! Reading: [`access`] validates bytes with rkyv's checked access (bytecheck) before any
//! field is read; the runtime never reads an archive it has not validated.
//!
//! **Recycled input buffers.** A task's input bytes are taken with [`recycled_bytes`]
//! (where the input is made: an in-process client archiving it, the shared-memory server
//! copying it out of a client's slot) and given back with [`recycle`]: at once, by the
//! same thread, when the input is small enough to travel inside its task
//! (`runtime::task::TaskInput`), else when the task is dropped. So a steady stream of
//! tasks allocates no input. The buffers are the
//! runtime's own heap memory, never shared memory; a recycled buffer is cleared before
//! it is handed out again, and every user reads only the bytes written since, so no
//! input is ever seen by another task. At most [`RECYCLED_BUFFERS`] buffers of at most
//! [`RECYCLED_CAPACITY`] bytes are kept (a larger one is freed): what a burst leaves
//! behind is bounded. Each thread keeps up to [`LOCAL_RECYCLED_BUFFERS`] of them in
//! front of the process-wide queue, so a worker that copies a client's task in and runs
//! it (the shared-memory path), or an in-process caller whose input is small, takes and
//! gives back its buffer without an atomic; what crosses threads (a large in-process
//! input, dropped by a worker) goes through the queue once the thread's own stack is
//! full.
use crate::error::TaskError;
use rkyv::api::high::{HighDeserializer, HighSerializer, HighValidator};
use rkyv::rancor::{Fallible, Source};
use rkyv::ser::allocator::ArenaHandle;
use rkyv::ser::sharing::Share;
use rkyv::ser::{Allocator, Serializer, Writer};
use rkyv::string::{ArchivedString, StringResolver};
use rkyv::vec::{ArchivedVec, VecResolver};
use rkyv::{Archive, Place, Portable, Serialize, SerializeUnsized};

/// The bytes of one archive, aligned so any archived type can be read in place.
pub type Bytes = rkyv::util::AlignedVec;

/// The error type rkyv reports through; converted to [`TaskError::Malformed`] at the edge.
pub type CodecError = rkyv::rancor::Error;

/// A type that can travel in a task: archived, validated and deserialized with rkyv.
///
/// Implemented for every type with the rkyv derives (`#[chimaera::wire]` adds them).
/// The generated `ChiMod` impl and typed client require it of each task's argument and
/// return types, spanned at the type as written, so a type without the derives is one
/// error at the argument, naming the type and the fix, instead of a cascade of rkyv
/// bounds across the generated code.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot travel in a task: it has no wire layout",
    label = "a task argument or output of type `{Self}`",
    note = "mark `{Self}` with `#[chimaera::wire]`, or derive `rkyv::Archive`, `rkyv::Serialize` and `rkyv::Deserialize` on it"
)]
pub trait Wire:
    Sized
    + Archive<
        Archived: for<'a> rkyv::bytecheck::CheckBytes<HighValidator<'a, CodecError>>
                      + rkyv::Deserialize<Self, HighDeserializer<CodecError>>,
    > + for<'a> Serialize<HighSerializer<Bytes, ArenaHandle<'a>, CodecError>>
{
}

impl<T> Wire for T
where
    T: Archive + for<'a> Serialize<HighSerializer<Bytes, ArenaHandle<'a>, CodecError>>,
    T::Archived: for<'a> rkyv::bytecheck::CheckBytes<HighValidator<'a, CodecError>>
        + rkyv::Deserialize<T, HighDeserializer<CodecError>>,
{
}

/// Archives `value` into fresh aligned bytes.
pub fn encode<T>(value: &T) -> Result<Bytes, TaskError>
where
    T: for<'a> Serialize<HighSerializer<Bytes, ArenaHandle<'a>, CodecError>>,
{
    rkyv::to_bytes::<CodecError>(value).map_err(|e| TaskError::malformed("input", e))
}

/// Where a task coroutine archives its tasks' outputs (and a shared-memory connection
/// its calls' inputs): the bytes and rkyv's scratch arena, kept from one archive to the
/// next so that archiving allocates nothing once they have grown to fit (a buffer that
/// grew past [`OutputBuffer::KEEP`] is let go after its use).
pub struct OutputBuffer {
    bytes: Bytes,
    /// Own scratch space, or `None` to borrow rkyv's shared one (a one-off buffer).
    arena: Option<rkyv::ser::allocator::Arena>,
    /// rkyv's shared-pointer table, cleared and kept between archives of a reusable
    /// buffer (making and dropping one per archive showed in profiles); see
    /// [`Self::SHARING_KEEP`].
    sharing: Share,
}

impl Default for OutputBuffer {
    /// A one-off buffer: allocates nothing until it encodes.
    fn default() -> Self {
        OutputBuffer {
            bytes: Bytes::new(),
            arena: None,
            sharing: Share::new(),
        }
    }
}

impl std::fmt::Debug for OutputBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutputBuffer")
            .field("len", &self.bytes.len())
            .finish_non_exhaustive()
    }
}

impl OutputBuffer {
    /// Capacity kept between tasks; a larger buffer is freed once its task is done.
    pub const KEEP: usize = 64 * 1024;
    /// Archives up to this long keep rkyv's shared-pointer table for the next one
    /// (cleared); a longer one's table, which may have grown with it, is dropped.
    const SHARING_KEEP: usize = 1024;

    /// A one-off buffer that archives into `bytes` (cleared first) with rkyv's
    /// per-thread scratch space: with a recycled buffer ([`recycled_bytes`]) archiving a
    /// small value allocates nothing.
    pub fn in_bytes(bytes: Bytes) -> Self {
        OutputBuffer {
            bytes,
            arena: None,
            sharing: Share::new(),
        }
    }

    /// A buffer to reuse for many archives: with room and scratch space of its own.
    pub fn reusable() -> Self {
        OutputBuffer {
            bytes: Bytes::with_capacity(256),
            arena: Some(rkyv::ser::allocator::Arena::new()),
            sharing: Share::new(),
        }
    }

    /// Replaces the contents with the archive of `value`.
    pub fn encode<T>(&mut self, value: &T) -> Result<(), TaskError>
    where
        T: for<'a> Serialize<HighSerializer<Bytes, ArenaHandle<'a>, CodecError>>,
    {
        let mut bytes = std::mem::take(&mut self.bytes);
        bytes.clear();
        let archived = match &mut self.arena {
            Some(arena) => {
                // What `rkyv::api::high::to_bytes_in_with_alloc` does, with this buffer's
                // sharing table instead of a fresh one; cleared before it is kept, so no
                // archive sees another's shared pointers.
                let sharing = std::mem::take(&mut self.sharing);
                let mut serializer = Serializer::new(bytes, arena.acquire(), sharing);
                let done = rkyv::api::serialize_using::<_, CodecError>(value, &mut serializer);
                let (bytes, _, mut sharing) = serializer.into_raw_parts();
                // A table has at most an entry for every 4 bytes archived (a relative
                // pointer each): one filled by a large archive is let go, not kept.
                if bytes.len() <= Self::SHARING_KEEP {
                    sharing.clear();
                    self.sharing = sharing;
                }
                done.map(|_| bytes)
            }
            None => rkyv::api::high::to_bytes_in::<_, CodecError>(value, bytes),
        };
        self.bytes = archived.map_err(|e| TaskError::malformed("archive", e))?;
        Ok(())
    }

    /// The archive last encoded.
    pub fn as_slice(&self) -> &[u8] {
        &self.bytes
    }

    /// The archive last encoded, taking the buffer's bytes.
    pub fn into_bytes(self) -> Bytes {
        self.bytes
    }

    /// Exchanges the archive last encoded with `other`'s bytes: a large output handed
    /// over to where its reader looks for it, without a copy. The buffer then holds
    /// whatever `other` held (cleared by the next [`encode`](Self::encode)).
    pub(crate) fn swap_bytes(&mut self, other: &mut Bytes) {
        std::mem::swap(&mut self.bytes, other);
    }

    /// Lets go of memory a large output made the buffer grow to.
    pub fn trim(&mut self) {
        if self.bytes.capacity() > Self::KEEP {
            self.bytes = Bytes::with_capacity(256);
        }
        if let Some(arena) = &mut self.arena {
            if arena.capacity() > Self::KEEP {
                arena.shrink();
            }
        }
    }
}

/// How many idle input buffers are kept for reuse, process-wide.
pub const RECYCLED_BUFFERS: usize = 512;
/// The largest buffer kept for reuse: larger inputs are rare and freed after use. Room
/// for a 4 KiB block and its archive's framing (an archive that outgrows 4 KiB doubles
/// its buffer to 8 KiB), so block-sized bulk arguments reuse their buffers too.
pub const RECYCLED_CAPACITY: usize = 8192;

/// How many idle input buffers each thread keeps for itself, before the shared queue.
pub const LOCAL_RECYCLED_BUFFERS: usize = 32;

thread_local! {
    /// This thread's idle input buffers (borrowed only inside `recycle` and
    /// `recycled_bytes`, which never yield, so a coroutine cannot interleave).
    static LOCAL_RECYCLED: std::cell::RefCell<Vec<Bytes>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// The idle input buffers (a bounded lock-free queue: taking and giving back allocate
/// nothing once it exists).
fn recycled() -> &'static crossbeam_queue::ArrayQueue<Bytes> {
    static RECYCLED: std::sync::OnceLock<crossbeam_queue::ArrayQueue<Bytes>> =
        std::sync::OnceLock::new();
    RECYCLED.get_or_init(|| crossbeam_queue::ArrayQueue::new(RECYCLED_BUFFERS))
}

/// An empty buffer for a task's input: a recycled one when one is idle (no allocation),
/// else a new one with room for a small input.
pub fn recycled_bytes() -> Bytes {
    // `try_with`: a thread being torn down has no stack of its own any more.
    let local = LOCAL_RECYCLED.try_with(|local| local.borrow_mut().pop());
    local
        .ok()
        .flatten()
        .or_else(|| recycled().pop())
        .unwrap_or_else(|| Bytes::with_capacity(256))
}

/// Gives a task's input buffer back for reuse (cleared), unless it is too large to keep
/// or enough are idle already.
pub fn recycle(mut bytes: Bytes) {
    if bytes.capacity() == 0 || bytes.capacity() > RECYCLED_CAPACITY {
        return;
    }
    bytes.clear();
    let overflow = LOCAL_RECYCLED.try_with(|local| {
        let mut local = local.borrow_mut();
        if local.len() >= LOCAL_RECYCLED_BUFFERS {
            return Some(bytes);
        }
        // Room for the whole stack at once: pushing never allocates after the first.
        local.reserve_exact(LOCAL_RECYCLED_BUFFERS);
        local.push(bytes);
        None
    });
    // A thread being torn down dropped the buffer with the closure (it is freed).
    if let Some(bytes) = overflow.ok().flatten() {
        // The queue full: enough are idle; this one is freed.
        let _ = recycled().push(bytes);
    }
}

/// An owned copy of archived bytes, aligned so they can be read in place.
pub fn aligned_copy(bytes: &[u8]) -> Bytes {
    let mut copy = Bytes::with_capacity(bytes.len());
    copy.extend_from_slice(bytes);
    copy
}

/// Validates `bytes` as an archived `T` and returns a reference into them.
///
/// `what` names the bytes in the error (`"input"`, `"output"`). Always inlined: when
/// the generated dispatch called it out of line, each task ran about 30 more
/// instructions (callgrind).
#[inline(always)]
pub fn access<'b, T>(bytes: &'b [u8], what: &str) -> Result<&'b T, TaskError>
where
    T: Portable + for<'a> rkyv::bytecheck::CheckBytes<HighValidator<'a, CodecError>>,
{
    rkyv::access::<T, CodecError>(bytes).map_err(|e| TaskError::malformed(what, e))
}

/// Deserializes an already validated archived value into its owned form.
pub fn deserialize<T, A>(archived: &A, what: &str) -> Result<T, TaskError>
where
    A: rkyv::Deserialize<T, HighDeserializer<CodecError>>,
{
    rkyv::deserialize::<T, CodecError>(archived).map_err(|e| TaskError::malformed(what, e))
}

/// Validates and deserializes `bytes` as an archived `T`.
pub fn decode<T>(bytes: &[u8], what: &str) -> Result<T, TaskError>
where
    T: Archive,
    T::Archived: for<'a> rkyv::bytecheck::CheckBytes<HighValidator<'a, CodecError>>
        + rkyv::Deserialize<T, HighDeserializer<CodecError>>,
{
    deserialize(access::<T::Archived>(bytes, what)?, what)
}

/// Archives a borrowed `&str` as an `ArchivedString`, the archived form of `String`.
pub struct StrRef<'a>(pub &'a str);

impl Archive for StrRef<'_> {
    type Archived = ArchivedString;
    type Resolver = StringResolver;

    fn resolve(&self, resolver: Self::Resolver, out: Place<Self::Archived>) {
        ArchivedString::resolve_from_str(self.0, resolver, out);
    }
}

impl<S: Fallible + ?Sized> Serialize<S> for StrRef<'_>
where
    S::Error: Source,
    str: SerializeUnsized<S>,
{
    fn serialize(&self, serializer: &mut S) -> Result<Self::Resolver, S::Error> {
        ArchivedString::serialize_from_str(self.0, serializer)
    }
}

/// Archives a borrowed `&[T]` as an `ArchivedVec<T::Archived>`, the archived form of `Vec<T>`.
pub struct SliceRef<'a, T>(pub &'a [T]);

impl<T: Archive> Archive for SliceRef<'_, T> {
    type Archived = ArchivedVec<T::Archived>;
    type Resolver = VecResolver;

    fn resolve(&self, resolver: Self::Resolver, out: Place<Self::Archived>) {
        ArchivedVec::resolve_from_slice(self.0, resolver, out);
    }
}

impl<T, S> Serialize<S> for SliceRef<'_, T>
where
    T: Serialize<S>,
    S: Fallible + Allocator + Writer + ?Sized,
{
    fn serialize(&self, serializer: &mut S) -> Result<Self::Resolver, S::Error> {
        ArchivedVec::serialize_from_slice(self.0, serializer)
    }
}

/// Archives a borrowed `&T` exactly as `T` would be archived.
pub struct ByRef<'a, T>(pub &'a T);

impl<T: Archive> Archive for ByRef<'_, T> {
    type Archived = T::Archived;
    type Resolver = T::Resolver;

    fn resolve(&self, resolver: Self::Resolver, out: Place<Self::Archived>) {
        self.0.resolve(resolver, out);
    }
}

impl<T: Serialize<S>, S: Fallible + ?Sized> Serialize<S> for ByRef<'_, T> {
    fn serialize(&self, serializer: &mut S) -> Result<Self::Resolver, S::Error> {
        self.0.serialize(serializer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_reused_buffer_shares_no_pointer_between_archives() {
        // Each round's `Arc` is freed before the next is made, so its address comes
        // back: a sharing table kept uncleared would point the next archive at a
        // position in the previous one.
        // Every third archive is past `SHARING_KEEP`, so its table is dropped.
        let mut out = OutputBuffer::reusable();
        for round in 0..9 {
            let pad = if round % 3 == 2 { 2000 } else { 0 };
            let expected = format!("round {round}: longer than an inline string{}", ".".repeat(pad));
            let text = Arc::new(expected.clone());
            out.encode(&(text.clone(), text)).unwrap();
            let (first, second): (Arc<String>, Arc<String>) =
                decode(out.as_slice(), "output").unwrap();
            assert_eq!(*first, expected);
            assert!(Arc::ptr_eq(&first, &second), "shared within one archive");
        }
    }

    #[test]
    fn borrowed_wrappers_archive_like_owned_values() {
        let text = "hello, chimod";
        let payload = [1u8, 2, 3, 250];
        let borrowed = encode(&(StrRef(text), SliceRef(&payload[..]), ByRef(&42u32))).unwrap();
        let owned: (String, Vec<u8>, u32) = decode(&borrowed, "input").unwrap();
        assert_eq!(owned, (text.to_owned(), payload.to_vec(), 42));
    }

    #[test]
    fn an_output_buffer_is_reused_and_trimmed() {
        let mut out = OutputBuffer::reusable();
        out.encode(&(7u64, String::from("seven"))).unwrap();
        let decoded: (u64, String) = decode(out.as_slice(), "output").unwrap();
        assert_eq!(decoded, (7, "seven".to_owned()));
        out.encode(&vec![1u8; 100_000]).unwrap();
        assert_eq!(
            decode::<Vec<u8>>(out.as_slice(), "output").unwrap().len(),
            100_000
        );
        out.trim();
        assert!(out.bytes.capacity() <= OutputBuffer::KEEP);
        out.encode(&3u32).unwrap();
        assert_eq!(decode::<u32>(out.as_slice(), "output").unwrap(), 3);
        let mut one_off = OutputBuffer::default();
        one_off.encode(&(1u8, 2u16)).unwrap();
        assert_eq!(
            decode::<(u8, u16)>(&one_off.into_bytes(), "output").unwrap(),
            (1, 2)
        );
    }

    #[test]
    fn garbage_is_a_malformed_error() {
        let mut bytes = Bytes::new();
        bytes.extend_from_slice(&[0xff; 7]);
        let err = decode::<(String, u32)>(&bytes, "input").unwrap_err();
        assert!(matches!(err, TaskError::Malformed { ref what, .. } if what == "input"));
    }
}
