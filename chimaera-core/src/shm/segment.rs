//! Shared-memory segments: a memfd, or a named file in the user directory, mapped
//! read-write and shared.
//!
//! The runtime makes one memfd segment per client and hands it over the instance's socket
//! ([`crate::transport::shm::handshake`]). Named segments ([`Segment::create`], [`Segment::open`])
//! are the same mapping on a file of the user directory; the runtime creates none, tests
//! build on them. Everything inside a segment is found by offset: a [`Segment`] hands out
//! atomics and byte ranges at offsets it checks, and [`ShmRegion`] is a checked sub-range
//! to give a fixed-layout block (a ring, a slot table) its own coordinates.
//!
//! # Invariants
//!
//! * Segment files live in the verified user directory `/dev/shm/chimaera-{user}` (mode
//!   `0700`) and are created and opened only through [`RuntimeDir`]: created with
//!   `O_CREAT | O_EXCL | O_NOFOLLOW`, mode `0600`; opened with `O_NOFOLLOW | O_NONBLOCK`
//!   and then checked with `fstat` to be a regular file with one link, owned by the
//!   effective user and closed to others. A symlink, FIFO, directory or foreign file at
//!   a segment's name is a [`SegmentError::File`] naming it; nothing is followed or
//!   waited on, so another user cannot plant a segment for our clients to trust or make
//!   them write through a link.
//! * A new segment's whole length is reserved with `fallocate` before it is mapped: a
//!   full `/dev/shm` fails here with [`SegmentError::NoSpace`] instead of killing a
//!   process with SIGBUS at its first touch of a page. New segments read as zeros.
//! * The mapping lives as long as any clone of the [`Segment`] handle (or a region, or a
//!   ring built on it), so references it hands out never dangle. Its length never changes.
//! * Only the creator removes the file on drop, only if asked
//!   ([`Segment::remove_on_drop`]), and only if the name still names the file it created
//!   (a newer runtime's segment of the same name is left alone); removal is `unlinkat` in
//!   the directory the handle was opened in, which never follows a link.
//!
//! # Failure modes
//!
//! Setup failures are a [`SegmentError`] whose message says what to do; a bad offset or
//! length (often read from memory a peer wrote) is an [`AccessError`], never a panic. A
//! peer that truncated a named file under us would make our next touch of the lost pages
//! fault (SIGBUS); the memfds the runtime hands to clients are sealed against shrinking
//! and growing for that reason (see `shm::client_area`).
//!
//! Byte ranges a peer may be writing are only ever copied ([`Segment::read_bytes`],
//! [`Segment::write_bytes`]: atomic word copies); no method returns a `&[u8]` into the
//! mapping.
use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use memmap2::{MmapOptions, MmapRaw};
use std::ptr::NonNull;

use super::dir::{file_identity, Access, DirError, FileError, RuntimeDir};
use super::naming::ShmName;
/// Why a segment could not be created, opened or removed.
#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    /// `create` found a file of that name already there.
    #[error(
        "shared-memory segment {name} already exists: a runtime for instance `{instance}` is \
         running or a dead one left it; stop it with `chimaera runtime stop`, or start the \
         runtime again (it replaces stale segments)",
        instance = name.instance()
    )]
    Exists {
        /// The segment.
        name: ShmName,
    },
    /// `open` found no such file: no runtime serves that instance.
    #[error(
        "no runtime for instance `{instance}` is running ({name} is missing); start one with \
         `chimaera runtime start`",
        instance = name.instance()
    )]
    NotFound {
        /// The segment.
        name: ShmName,
    },
    /// The user directory cannot be used.
    #[error(transparent)]
    Dir(#[from] DirError),
    /// Something other than a segment of ours sits at the name (a link, a FIFO, a file
    /// of another user, …).
    #[error(transparent)]
    File(FileError),
    /// The segment is shorter than needed (or a zero length was asked for).
    #[error(
        "shared-memory segment {name} has {len} bytes but {need} are needed: the runtime may \
         still be starting (retry) or was built with another layout (restart it)"
    )]
    TooSmall {
        /// The segment.
        name: ShmName,
        /// Its length.
        len: u64,
        /// The length needed.
        need: u64,
    },
    /// The file system of the user directory (`/dev/shm` unless `CHI_SHM_DIR` says
    /// otherwise) has no room for the segment.
    #[error(
        "no room for segment {name} of {len} bytes: lower the `shm:` sizes in the config, \
         free space on its file system, or point CHI_SHM_DIR at a larger tmpfs"
    )]
    NoSpace {
        /// The segment.
        name: ShmName,
        /// The length asked for.
        len: u64,
    },
    /// The segment is larger than this process can map.
    #[error("shared-memory segment {name} of {len} bytes does not fit in the address space")]
    TooLarge {
        /// The segment.
        name: ShmName,
        /// Its length.
        len: u64,
    },
    /// Any other I/O failure.
    #[error("{action} shared-memory segment {name} failed: {source}")]
    Io {
        /// What was being done ("creating", "opening", "mapping", …).
        action: &'static str,
        /// The segment.
        name: ShmName,
        /// The system error.
        #[source]
        source: io::Error,
    },
}

/// An offset or length that does not fit a segment or region.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AccessError {
    /// `offset..offset + len` is not inside the segment or region.
    #[error(
        "range {offset}+{len} lies outside the {size}-byte shared-memory area; the offset is \
         bad (written by a faulty peer, or the two sides disagree on the layout)"
    )]
    OutOfBounds {
        /// Start of the range, relative to the segment or region.
        offset: usize,
        /// Length of the range.
        len: usize,
        /// Size of the segment or region.
        size: usize,
    },
    /// The offset is not a multiple of the alignment the type needs.
    #[error("offset {offset} is not aligned to {align} bytes")]
    Misaligned {
        /// The offset.
        offset: usize,
        /// The alignment needed.
        align: usize,
    },
}

/// A mapped shared-memory segment; cheap to clone (clones share one mapping).
#[derive(Clone, Debug)]
pub struct Segment {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    map: MmapRaw,
    /// The directory the file was found in: removal and [`Segment::still_linked`] look
    /// there, never through a path. `None` for a memfd, which has no name.
    dir: Option<RuntimeDir>,
    name: ShmName,
    creator: bool,
    remove_on_drop: AtomicBool,
    /// (device, inode) of the mapped file: tells whether the path still names it.
    identity: (u64, u64),
}

impl Drop for Inner {
    fn drop(&mut self) {
        let Some(dir) = &self.dir else { return };
        if self.creator && self.remove_on_drop.load(Ordering::Relaxed) && self.still_linked() {
            if let Err(err) = dir.remove(&self.name) {
                tracing::warn!(
                    "could not remove shared-memory segment {}: {err}",
                    self.name
                );
            }
        }
    }
}

impl Inner {
    fn still_linked(&self) -> bool {
        self.dir
            .as_ref()
            .is_some_and(|dir| dir.identity_of(&self.name) == Some(self.identity))
    }
}

impl Segment {
    /// Creates the segment `name` of `len` bytes (mode `0600`, zero-filled, fully
    /// reserved) and maps it. Fails with [`SegmentError::Exists`] if anything has the name.
    pub fn create(name: &ShmName, len: usize) -> Result<Segment, SegmentError> {
        if len == 0 {
            return Err(SegmentError::TooSmall {
                name: name.clone(),
                len: 0,
                need: 1,
            });
        }
        let dir = RuntimeDir::for_user()?;
        let file = dir.create_file(name).map_err(|err| match err {
            FileError::Exists { .. } => SegmentError::Exists { name: name.clone() },
            other => SegmentError::File(other),
        })?;
        if let Err(err) = reserve(&file, name, len as u64) {
            // Best effort: the file is ours and useless; a failure here leaves a stale
            // file the next start replaces.
            let _ = dir.remove(name);
            return Err(err);
        }
        map(file, Some(dir), name, len, true)
    }

    /// Opens and maps the existing segment `name`, whatever its length (at least 1).
    pub fn open(name: &ShmName) -> Result<Segment, SegmentError> {
        Segment::open_at_least(name, 1)
    }

    /// Opens and maps the existing segment `name`, which must hold at least `min_len`
    /// bytes.
    pub fn open_at_least(name: &ShmName, min_len: usize) -> Result<Segment, SegmentError> {
        let dir = RuntimeDir::for_user()?;
        let file = dir
            .open_file(name, Access::ReadWrite)
            .map_err(|err| match err {
                FileError::NotFound { .. } => SegmentError::NotFound { name: name.clone() },
                other => SegmentError::File(other),
            })?;
        let size = file.metadata().map_err(|source| SegmentError::Io {
            action: "inspecting",
            name: name.clone(),
            source,
        })?;
        let size = size.len();
        let need = min_len.max(1) as u64;
        if size < need {
            return Err(SegmentError::TooSmall {
                name: name.clone(),
                len: size,
                need,
            });
        }
        let len = usize::try_from(size).map_err(|_| SegmentError::TooLarge {
            name: name.clone(),
            len: size,
        })?;
        map(file, Some(dir), name, len, false)
    }

    /// Maps the whole of `file`, an anonymous memory file (a memfd) this process made or
    /// received over a Unix socket; `name` only labels errors. Nothing is removed on drop
    /// (a memfd has no path), and [`still_linked`](Self::still_linked) is always false.
    pub fn from_memfd(file: File, name: &ShmName) -> Result<Segment, SegmentError> {
        let len = file
            .metadata()
            .map_err(|source| SegmentError::Io {
                action: "inspecting",
                name: name.clone(),
                source,
            })?
            .len();
        let len =
            usize::try_from(len)
                .ok()
                .filter(|len| *len > 0)
                .ok_or(SegmentError::TooSmall {
                    name: name.clone(),
                    len,
                    need: 1,
                })?;
        map(file, None, name, len, false)
    }

    /// Removes the name `name` (whatever it names: `unlinkat` never follows a link); a
    /// missing file is not an error. Processes that mapped it keep their mapping until
    /// they drop it.
    pub fn unlink(name: &ShmName) -> Result<(), SegmentError> {
        RuntimeDir::for_user()?
            .remove(name)
            .map(drop)
            .map_err(SegmentError::File)
    }

    /// Whether the file is removed when the last handle drops. Only the creator's handles
    /// honour this; off by default.
    pub fn remove_on_drop(&self, remove: bool) {
        self.inner.remove_on_drop.store(remove, Ordering::Relaxed);
    }

    /// Whether `name` still names the file this handle mapped. False once the runtime
    /// removed it or a new runtime replaced it: a client whose segment is no longer linked
    /// talks to a runtime that is gone.
    pub fn still_linked(&self) -> bool {
        self.inner.still_linked()
    }

    /// The segment's name.
    pub fn name(&self) -> &ShmName {
        &self.inner.name
    }

    /// Whether this handle created the segment.
    pub fn is_creator(&self) -> bool {
        self.inner.creator
    }

    /// Start of the mapping in this process. Valid for `len()` bytes while any handle
    /// lives; never store it in shared memory.
    pub fn base(&self) -> *mut u8 {
        self.inner.map.as_mut_ptr()
    }

    /// Length of the segment in bytes.
    pub fn len(&self) -> usize {
        self.inner.map.len()
    }

    /// Always false: segments have at least one byte.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Checks that `offset..offset + len` lies in the segment.
    pub fn check_range(&self, offset: usize, len: usize) -> Result<(), AccessError> {
        check_range(self.len(), offset, len)
    }

    /// A pointer to `offset..offset + len`, checked to lie in the segment and to be
    /// aligned to `align`; valid while the segment is mapped.
    pub fn range_ptr(
        &self,
        offset: usize,
        len: usize,
        align: usize,
    ) -> Result<NonNull<u8>, AccessError> {
        let ptr = self.checked_ptr(offset, len, align)?;
        // A mapping never starts at address 0.
        NonNull::new(ptr).ok_or(AccessError::OutOfBounds {
            offset,
            len,
            size: self.len(),
        })
    }

    /// The `AtomicU32` at `offset` (4-byte aligned, in bounds).
    pub fn atomic_u32(&self, offset: usize) -> Result<&AtomicU32, AccessError> {
        self.atomic_u32_slice(offset, 1).map(|words| &words[0])
    }

    /// The `AtomicU64` at `offset` (8-byte aligned, in bounds).
    pub fn atomic_u64(&self, offset: usize) -> Result<&AtomicU64, AccessError> {
        let ptr = self.checked_ptr(offset, size_of::<AtomicU64>(), align_of::<AtomicU64>())?;
        // SAFETY: `checked_ptr` proved the 8 bytes lie in the mapping and are aligned for
        // AtomicU64; the mapping is readable and writable and outlives `&self`; atomics
        // may be accessed concurrently by other threads and processes, and every bit
        // pattern is a valid u64.
        Ok(unsafe { &*ptr.cast::<AtomicU64>() })
    }

    /// `count` consecutive `AtomicU32`s starting at `offset` (4-byte aligned, in bounds).
    pub fn atomic_u32_slice(
        &self,
        offset: usize,
        count: usize,
    ) -> Result<&[AtomicU32], AccessError> {
        let len = count
            .checked_mul(size_of::<AtomicU32>())
            .ok_or(AccessError::OutOfBounds {
                offset,
                len: usize::MAX,
                size: self.len(),
            })?;
        let ptr = self.checked_ptr(offset, len, align_of::<AtomicU32>())?;
        // SAFETY: `checked_ptr` proved the `count * 4` bytes lie in the mapping and are
        // aligned for AtomicU32; the mapping outlives `&self`; atomics tolerate concurrent
        // access from other threads and processes, and every bit pattern is a valid u32.
        Ok(unsafe { std::slice::from_raw_parts(ptr.cast::<AtomicU32>(), count) })
    }

    /// Copies `dst.len()` bytes at `offset` out of the segment. A peer writing the range at
    /// the same time makes the copy's content unspecified, never unsafe for us.
    pub fn read_bytes(&self, offset: usize, dst: &mut [u8]) -> Result<(), AccessError> {
        let src = self.checked_ptr(offset, dst.len(), 1)?;
        // SAFETY: the source range lies in the read-write mapping (checked); `dst` is our
        // own memory and cannot overlap a shared mapping we only reach through raw
        // pointers. The copy is atomic on the shared side, so a racing peer is no data race.
        unsafe { super::atomic_copy::load(src, dst) };
        Ok(())
    }

    /// Copies `src` into the segment at `offset`.
    pub fn write_bytes(&self, offset: usize, src: &[u8]) -> Result<(), AccessError> {
        let dst = self.checked_ptr(offset, src.len(), 1)?;
        // SAFETY: the destination range lies in the writable mapping (checked); `src` is
        // process memory that no `&[u8]` into the mapping can alias here; the copy is
        // atomic on the shared side.
        unsafe { super::atomic_copy::store(dst, src) };
        Ok(())
    }

    /// The checked sub-range `offset..offset + len`, with coordinates of its own.
    pub fn region(&self, offset: usize, len: usize) -> Result<ShmRegion, AccessError> {
        self.check_range(offset, len)?;
        Ok(ShmRegion {
            segment: self.clone(),
            offset,
            len,
        })
    }

    /// The whole segment as a region.
    pub fn whole(&self) -> ShmRegion {
        ShmRegion {
            segment: self.clone(),
            offset: 0,
            len: self.len(),
        }
    }

    /// A pointer to `offset`, after checking that `len` bytes from there lie in the
    /// mapping and that the address is aligned to `align` (a power of two).
    fn checked_ptr(&self, offset: usize, len: usize, align: usize) -> Result<*mut u8, AccessError> {
        self.check_range(offset, len)?;
        // The mapping starts on a page boundary, so the offset's alignment is the
        // address's.
        if !offset.is_multiple_of(align) {
            return Err(AccessError::Misaligned { offset, align });
        }
        // `wrapping_add` keeps this safe; the range check above keeps it in the mapping.
        Ok(self.base().wrapping_add(offset))
    }
}

/// A checked sub-range of a segment, with offsets relative to its start. Keeps the
/// segment mapped while it lives.
#[derive(Clone, Debug)]
pub struct ShmRegion {
    segment: Segment,
    offset: usize,
    len: usize,
}

impl ShmRegion {
    /// The segment this region lies in.
    pub fn segment(&self) -> &Segment {
        &self.segment
    }

    /// Offset of the region's start in its segment.
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// Length of the region in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the region is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The sub-region `offset..offset + len` of this region.
    pub fn sub(&self, offset: usize, len: usize) -> Result<ShmRegion, AccessError> {
        check_range(self.len, offset, len)?;
        Ok(ShmRegion {
            segment: self.segment.clone(),
            offset: self.offset + offset,
            len,
        })
    }

    /// The `AtomicU32` at `offset` in the region.
    pub fn atomic_u32(&self, offset: usize) -> Result<&AtomicU32, AccessError> {
        check_range(self.len, offset, size_of::<AtomicU32>())?;
        self.segment.atomic_u32(self.offset + offset)
    }

    /// The `AtomicU64` at `offset` in the region.
    pub fn atomic_u64(&self, offset: usize) -> Result<&AtomicU64, AccessError> {
        check_range(self.len, offset, size_of::<AtomicU64>())?;
        self.segment.atomic_u64(self.offset + offset)
    }

    /// `count` consecutive `AtomicU32`s at `offset` in the region.
    pub fn atomic_u32_slice(
        &self,
        offset: usize,
        count: usize,
    ) -> Result<&[AtomicU32], AccessError> {
        let len = count.saturating_mul(size_of::<AtomicU32>());
        check_range(self.len, offset, len)?;
        self.segment.atomic_u32_slice(self.offset + offset, count)
    }

    /// Copies bytes at `offset` in the region out into `dst`.
    pub fn read_bytes(&self, offset: usize, dst: &mut [u8]) -> Result<(), AccessError> {
        check_range(self.len, offset, dst.len())?;
        self.segment.read_bytes(self.offset + offset, dst)
    }

    /// Copies `src` into the region at `offset`.
    pub fn write_bytes(&self, offset: usize, src: &[u8]) -> Result<(), AccessError> {
        check_range(self.len, offset, src.len())?;
        self.segment.write_bytes(self.offset + offset, src)
    }
}

fn check_range(size: usize, offset: usize, len: usize) -> Result<(), AccessError> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(AccessError::OutOfBounds { offset, len, size }),
    }
}

/// Reserves `len` bytes for `file` so that touching any page later cannot fail.
fn reserve(file: &File, name: &ShmName, len: u64) -> Result<(), SegmentError> {
    match rustix::fs::fallocate(file, rustix::fs::FallocateFlags::empty(), 0, len) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::NOSPC) => Err(SegmentError::NoSpace {
            name: name.clone(),
            len,
        }),
        // A file system without fallocate: size the file and hope for the best.
        Err(rustix::io::Errno::OPNOTSUPP) => file.set_len(len).map_err(|source| SegmentError::Io {
            action: "sizing",
            name: name.clone(),
            source,
        }),
        Err(errno) => Err(SegmentError::Io {
            action: "reserving",
            name: name.clone(),
            source: errno.into(),
        }),
    }
}

/// Maps `len` bytes of `file`: found in `dir` (removed from it on drop if `creator`
/// asked for that), or a memfd (`dir` is `None`: nothing to remove, never "linked").
fn map(
    file: File,
    dir: Option<RuntimeDir>,
    name: &ShmName,
    len: usize,
    creator: bool,
) -> Result<Segment, SegmentError> {
    let io = |action, source| SegmentError::Io {
        action,
        name: name.clone(),
        source,
    };
    let identity = file_identity(&file).map_err(|source| io("inspecting", source))?;
    let map = MmapOptions::new()
        .len(len)
        .map_raw(&file)
        .map_err(|source| io("mapping", source))?;
    Ok(Segment {
        inner: Arc::new(Inner {
            map,
            dir,
            name: name.clone(),
            creator,
            remove_on_drop: AtomicBool::new(false),
            identity,
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shm::test_util::instance;
    use std::os::unix::fs::MetadataExt;

    fn fresh(tag: &str) -> ShmName {
        ShmName::segment(&instance(tag), "test").unwrap()
    }

    #[test]
    fn create_open_share_and_unlink() {
        let name = fresh("seg");
        let created = Segment::create(&name, 8192).unwrap();
        created.remove_on_drop(true);
        let meta = std::fs::metadata(name.path()).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert_eq!(meta.len(), 8192);
        assert!(created.is_creator());

        let opened = Segment::open_at_least(&name, 4096).unwrap();
        assert_eq!(opened.len(), 8192);
        assert!(!opened.is_creator());
        let mut zeros = [1u8; 16];
        opened.read_bytes(8192 - 16, &mut zeros).unwrap();
        assert_eq!(zeros, [0; 16]);

        created
            .atomic_u64(64)
            .unwrap()
            .store(0xdead_beef_0123, Ordering::Release);
        assert_eq!(
            opened.atomic_u64(64).unwrap().load(Ordering::Acquire),
            0xdead_beef_0123
        );
        opened.write_bytes(100, b"hello").unwrap();
        let mut buf = [0u8; 5];
        created.read_bytes(100, &mut buf).unwrap();
        assert_eq!(&buf, b"hello");

        assert!(opened.still_linked());
        drop(created);
        // The creator's last handle removed the file; the opener's mapping lives on.
        assert!(!name.path().exists());
        assert!(!opened.still_linked());
        assert_eq!(
            opened.atomic_u64(64).unwrap().load(Ordering::Acquire),
            0xdead_beef_0123
        );
        Segment::unlink(&name).unwrap();
    }

    #[test]
    fn create_refuses_an_existing_file_and_open_a_missing_one() {
        let name = fresh("exists");
        let seg = Segment::create(&name, 4096).unwrap();
        seg.remove_on_drop(true);
        let err = Segment::create(&name, 4096).unwrap_err();
        assert!(matches!(err, SegmentError::Exists { .. }), "{err}");
        assert!(err.to_string().contains("chimaera runtime stop"), "{err}");
        drop(seg);

        let err = Segment::open(&name).unwrap_err();
        assert!(matches!(err, SegmentError::NotFound { .. }), "{err}");
        assert!(err.to_string().contains("chimaera runtime start"), "{err}");
        assert!(err.to_string().contains(name.instance().as_str()), "{err}");
        Segment::unlink(&name).unwrap();
        Segment::unlink(&name).unwrap();
    }

    #[test]
    fn without_remove_on_drop_the_file_stays() {
        let name = fresh("keep");
        drop(Segment::create(&name, 4096).unwrap());
        assert!(name.path().exists());
        Segment::unlink(&name).unwrap();
        assert!(!name.path().exists());
    }

    #[test]
    fn too_small_and_zero_length_are_errors() {
        let name = fresh("small");
        assert!(matches!(
            Segment::create(&name, 0),
            Err(SegmentError::TooSmall { .. })
        ));
        let seg = Segment::create(&name, 4096).unwrap();
        seg.remove_on_drop(true);
        let err = Segment::open_at_least(&name, 8192).unwrap_err();
        assert!(
            matches!(
                err,
                SegmentError::TooSmall {
                    len: 4096,
                    need: 8192,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn files_open_to_others_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let name = fresh("perm");
        let seg = Segment::create(&name, 4096).unwrap();
        seg.remove_on_drop(true);
        std::fs::set_permissions(name.path(), std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = Segment::open(&name).unwrap_err();
        assert!(
            matches!(err, SegmentError::File(FileError::OpenToOthers { .. })),
            "{err}"
        );
        assert!(err.to_string().contains("644"), "{err}");
    }

    /// A victim file outside the user directory, 0600, with known content.
    fn victim(tag: &str) -> std::path::PathBuf {
        let path =
            std::env::temp_dir().join(format!("chimaera-ut-victim-{}-{tag}", std::process::id()));
        std::fs::write(&path, "precious").unwrap();
        path
    }

    #[test]
    fn a_symlink_at_a_segment_name_is_not_followed() {
        let name = fresh("link");
        RuntimeDir::for_user().unwrap();
        let victim = victim("seglink");
        std::os::unix::fs::symlink(&victim, name.path()).unwrap();
        let err = Segment::open(&name).unwrap_err();
        assert!(
            matches!(err, SegmentError::File(FileError::Symlink { .. })),
            "{err}"
        );
        assert!(err.to_string().contains(&name.to_string()), "{err}");
        let err = Segment::create(&name, 4096).unwrap_err();
        assert!(matches!(err, SegmentError::Exists { .. }), "{err}");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        Segment::unlink(&name).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        std::fs::remove_file(victim).unwrap();
    }

    #[test]
    fn a_fifo_at_a_segment_name_is_refused_without_blocking() {
        let name = fresh("fifo");
        let dir = RuntimeDir::for_user().unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            dir.path_of(&name),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from(0o600),
            0,
        )
        .unwrap();
        let err = Segment::open(&name).unwrap_err();
        assert!(
            matches!(err, SegmentError::File(FileError::WrongKind { .. })),
            "{err}"
        );
        assert!(err.to_string().contains("FIFO"), "{err}");
        Segment::unlink(&name).unwrap();
    }

    #[test]
    fn a_segment_of_another_user_is_refused() {
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipped: needs root to give a file to uid 65534");
            return;
        }
        let name = fresh("owner");
        drop(Segment::create(&name, 4096).unwrap());
        std::os::unix::fs::chown(name.path(), Some(65534), Some(65534)).unwrap();
        let err = Segment::open(&name).unwrap_err();
        assert!(
            matches!(
                err,
                SegmentError::File(FileError::NotOwned { owner: 65534, .. })
            ),
            "{err}"
        );
        Segment::unlink(&name).unwrap();
    }

    #[test]
    fn accesses_are_checked() {
        let name = fresh("access");
        let seg = Segment::create(&name, 4096).unwrap();
        seg.remove_on_drop(true);
        assert!(seg.atomic_u32(4092).is_ok());
        assert!(matches!(
            seg.atomic_u32(2),
            Err(AccessError::Misaligned { .. })
        ));
        assert!(matches!(
            seg.atomic_u32(4094),
            Err(AccessError::OutOfBounds { .. })
        ));
        assert!(matches!(
            seg.atomic_u32(4096),
            Err(AccessError::OutOfBounds { .. })
        ));
        assert!(matches!(
            seg.atomic_u64(4),
            Err(AccessError::Misaligned { .. })
        ));
        assert!(matches!(
            seg.atomic_u64(usize::MAX - 3),
            Err(AccessError::OutOfBounds { .. })
        ));
        assert!(seg.atomic_u32_slice(0, usize::MAX / 2).is_err());
        assert!(seg.atomic_u32_slice(0, 1024).is_ok());
        let mut buf = [0u8; 8];
        assert!(seg.read_bytes(4090, &mut buf).is_err());
        assert!(seg.write_bytes(usize::MAX, b"x").is_err());
        assert!(seg.read_bytes(4000, &mut [0u8; 97]).is_err());

        let region = seg.region(1024, 128).unwrap();
        assert!(seg.region(4000, 97).is_err());
        region.atomic_u32(124).unwrap().store(7, Ordering::Relaxed);
        assert_eq!(seg.atomic_u32(1148).unwrap().load(Ordering::Relaxed), 7);
        assert!(region.atomic_u32(128).is_err());
        assert!(region.atomic_u32_slice(64, 17).is_err());
        let sub = region.sub(64, 64).unwrap();
        assert_eq!(sub.offset(), 1088);
        assert!(region.sub(64, 65).is_err());
        assert_eq!(seg.whole().len(), 4096);
    }
}
