//! Where a device's bytes live: the [`BlockDevice`] trait and its two backends.
//!
//! * [`RamDevice`]: a zeroed heap buffer; a read or write is a copy done right in the
//!   calling task, no system call, no hand-off.
//! * [`FileDevice`]: a file (or a block device node) read and written through
//!   `io_uring` ([`uring`]: the task submits and parks, a reaper thread wakes it) or,
//!   where `io_uring` is unavailable, with `pread`/`pwrite` on a small pool of I/O
//!   threads ([`io_pool`]); either way no blocking system call ever runs on a runtime
//!   worker. Optionally with `O_DIRECT`.
//!
//! **The I/O core is independent of where the caller's bytes live.** Both backends take
//! a [`BulkIn`] to write and a [`BulkOut`] to fill — views that may lie in a client's
//! shared memory, and that never give a reference into it — and copy straight between
//! that memory and the device (RAM, atomically on the shared side) or hand the very
//! same memory to the kernel by raw pointer (file: `io_uring`, `pwrite`/`pread`): a
//! client's buffer reaches the device without an extra copy. Private bytes are passed
//! as `BulkIn::from(&bytes[..])` / `BulkOut::from(&mut bytes[..])`.
//!
//! **Invariants every backend keeps:**
//! * An access is checked against the device's capacity before any byte moves: an
//!   access that does not lie wholly inside `[0, capacity)` fails with
//!   [`IoError::OutOfBounds`] and moves 0 bytes. Nothing panics on a bad offset or length.
//! * Success means every byte was transferred; there are no short reads or writes.
//! * Methods take `&self` and may be called from many tasks on many workers at once.
//!   Disjoint ranges never interfere. Overlapping concurrent accesses are never
//!   undefined behaviour: on RAM they are serialized page by page, on a file they
//!   interleave as two `pwrite`s would.
pub mod file;
pub mod io_pool;
pub mod ram;
pub mod uring;

pub use file::{FileDevice, FileOptions, IoEngine};
pub use ram::RamDevice;

use chimaera_core::{BulkIn, BulkOut};
use std::io;

/// Which kind of device a pool is.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[rkyv(derive(Debug))]
pub enum BdevType {
    /// A file, or a block device node; the pool name is its path.
    #[default]
    File,
    /// A buffer in the runtime's memory; its contents end with the pool.
    Ram,
}

/// A device that blocks are read from and written to.
pub trait BlockDevice: Send + Sync {
    /// Its kind.
    fn kind(&self) -> BdevType;
    /// Bytes that may be accessed: offsets `0..capacity`.
    fn capacity(&self) -> u64;
    /// Writes all of `data` at `offset`; returns the number of bytes written.
    fn write_at(&self, offset: u64, data: BulkIn<'_>) -> Result<u64, IoError>;
    /// Fills all of `buf` from `offset`; returns the number of bytes read.
    fn read_into(&self, offset: u64, buf: BulkOut<'_>) -> Result<u64, IoError>;
    /// Makes every completed write durable (`fdatasync`); a no-op where nothing is
    /// durable (RAM).
    fn sync(&self) -> Result<(), IoError>;
    /// Makes writes durable, then refuses every later access with [`IoError::Closed`].
    fn close(&self) -> Result<(), IoError>;
}

/// Why a device could not be created. Every variant names the parameter at fault.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    /// A RAM device of size 0.
    #[error("bad size: a RAM device needs total_size > 0 (it has no file to take its size from)")]
    RamSizeZero,
    /// A file device of size 0 whose file cannot give a size.
    #[error("bad size for `{path}`: total_size is 0 (use the file's size) but {reason}; give total_size > 0 to create and size it")]
    FileSizeUnknown {
        /// The file's path.
        path: String,
        /// Why the file has no usable size.
        reason: &'static str,
    },
    /// A device too small to hold one block once rounded down to its alignment.
    #[error("bad size for `{path}`: {size} bytes leave no whole block once rounded down to the alignment {alignment}")]
    TooSmall {
        /// The device's path or `ram`.
        path: String,
        /// Its size in bytes.
        size: u64,
        /// The alignment it was rounded to.
        alignment: u32,
    },
    /// A client without admin rights asked for a file device: the runtime would open
    /// (create, size, write) a path of its choosing with the runtime's own rights.
    #[error("uid {uid} may not create the file device `{path}`: the runtime would open that path with its own rights; ask the runtime's owner (or an admin uid) to create the pool, then open it by name")]
    FileNotPermitted {
        /// The path (the pool name).
        path: String,
        /// The client's uid.
        uid: u32,
    },
    /// A RAM device larger than what its unprivileged caller may have modules hold.
    #[error("a RAM device of {size} bytes: {source}")]
    RamQuota {
        /// The size asked for.
        size: u64,
        /// The quota's error (`quotas.memory`).
        source: chimaera_core::TaskError,
    },
    /// The pool name is not a usable file path.
    #[error("bad path `{path}`: {reason}")]
    BadPath {
        /// The path (the pool name).
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An alignment that cannot be honoured.
    #[error("bad alignment {alignment}: {reason}")]
    BadAlignment {
        /// The alignment asked for.
        alignment: u32,
        /// Why it is refused.
        reason: &'static str,
    },
    /// `io_depth` 0.
    #[error("bad io_depth 0: at least one operation must be allowed in flight (default 32)")]
    BadIoDepth,
    /// The file system refused `O_DIRECT`.
    #[error("O_DIRECT is not supported for `{path}` by its file system ({source}); create the device with direct: false, or put the file on a disk file system such as ext4 or xfs")]
    DirectUnsupported {
        /// The file's path.
        path: String,
        /// What `open` said.
        source: io::Error,
    },
    /// The memory of a RAM device could not be allocated.
    #[error("bad size: cannot allocate {size} bytes of memory for a RAM device; use a smaller total_size or a file device")]
    OutOfMemory {
        /// The size asked for.
        size: u64,
    },
    /// Opening, sizing or measuring the file failed.
    #[error("cannot {action} `{path}`: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file's path.
        path: String,
        /// The system's error.
        source: io::Error,
    },
    /// `io_uring` was asked for explicitly ([`IoEngine::Uring`]) but cannot be used.
    #[error("cannot use io_uring for `{path}`: {reason}; use IoEngine::Auto or Threads")]
    UringUnavailable {
        /// The file's path.
        path: String,
        /// Why (for instance a seccomp filter, or a kernel without it).
        reason: String,
    },
    /// No I/O thread could be started.
    #[error("cannot start an I/O thread for `{path}`: {source}")]
    NoIoThread {
        /// The file's path.
        path: String,
        /// Why the thread did not start.
        source: io::Error,
    },
}

/// Why a read, write or sync failed.
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    /// The access does not lie wholly inside the device; no byte moved.
    #[error("out of bounds: {len} bytes at offset {offset} do not fit in the device's {capacity} bytes; nothing was transferred")]
    OutOfBounds {
        /// Offset of the access.
        offset: u64,
        /// Its length.
        len: u64,
        /// The device's capacity.
        capacity: u64,
    },
    /// The system call failed.
    #[error("I/O error on {len} bytes at offset {offset}: {source}")]
    Io {
        /// Offset of the access.
        offset: u64,
        /// Its length.
        len: u64,
        /// The system's error.
        source: io::Error,
    },
    /// `fdatasync` failed.
    #[error("cannot sync the device: {source}")]
    Sync {
        /// The system's error.
        source: io::Error,
    },
    /// The device was closed (its pool is being destroyed).
    #[error("the device is closed: its pool was destroyed")]
    Closed,
    /// The device's I/O threads are gone, or one failed while running this access.
    #[error("the device's I/O thread failed or is gone ({0}); the access may not have completed")]
    Pool(#[from] io_pool::PoolError),
}

/// Checks that `len` bytes at `offset` lie inside a device of `capacity` bytes.
pub(crate) fn check_range(offset: u64, len: usize, capacity: u64) -> Result<(), IoError> {
    let len = len as u64;
    match offset.checked_add(len) {
        Some(end) if end <= capacity => Ok(()),
        _ => Err(IoError::OutOfBounds {
            offset,
            len,
            capacity,
        }),
    }
}

/// Checks an alignment parameter: a power of two, at least 512 for `O_DIRECT` (the
/// smallest logical sector), and at most 1 MiB (bounce buffers are that large).
pub fn check_alignment(alignment: u32, direct: bool) -> Result<(), CreateError> {
    let reason = if !alignment.is_power_of_two() {
        "it must be a power of two (default 4096)"
    } else if direct && alignment < 512 {
        "O_DIRECT needs at least 512, the smallest logical sector size (default 4096)"
    } else if alignment > 1 << 20 {
        "it must be at most 1 MiB"
    } else {
        return Ok(());
    };
    Err(CreateError::BadAlignment { alignment, reason })
}

#[cfg(test)]
mod tests;
