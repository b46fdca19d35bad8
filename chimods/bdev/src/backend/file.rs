//! The file device: a file, or a block device node, read and written without ever
//! blocking a worker thread.
//!
//! **Engines** ([`IoEngine`]). Reads, writes and syncs go through an `io_uring`
//! ([`UringQueue`]: the task submits on its worker's own ring and parks, and the worker
//! resumes it on completion; callers off a worker use the device's ring and its I/O
//! thread, started on the first such call) where the kernel allows one, else through
//! an [`IoPool`] of I/O threads that run `pread`/`pwrite` for parked tasks.
//! [`IoEngine::Auto`] (the default) picks `io_uring` and falls back to the threads when
//! it cannot be set up; the environment variable `CHIMAERA_BDEV_IO=threads` forces the
//! threads (for comparisons). Either way at most `io_depth` operations are in flight
//! per device. The I/O thread pool is there in both cases for what `io_uring` does not
//! do here: opening and sizing the file, and the read-modify-write of partly covered
//! `O_DIRECT` sectors (below); its threads end when idle, so an idle device keeps none.
//!
//! **Opening** (done on an I/O thread): the pool name is the path. A missing parent
//! directory, a directory, or an empty path is [`CreateError::BadPath`]. With
//! `total_size` 0 the device is the existing file's size (an absent or empty file is an
//! error); otherwise an absent file is created, a shorter regular file is extended with
//! `set_len` (never truncated: a longer file keeps its tail, the device uses only the
//! first `total_size` bytes), and a block device node must be large enough.
//!
//! **Buffered** (`direct: false`): straight from and into the caller's buffer, any
//! offset and length.
//!
//! **Direct** (`direct: true`, `O_DIRECT`): the kernel needs the buffer address, the
//! offset and the length all to be multiples of `alignment`. The capacity is rounded
//! down to a multiple of it. An access whose offset and length are aligned goes to the
//! kernel with the caller's own buffer when that is aligned too, else through an aligned
//! bounce buffer (one copy; the device keeps at most `io_depth` of them for reuse). A
//! read with an unaligned offset or length reads the covering sectors into a bounce
//! buffer and copies the wanted bytes out. A write with an unaligned offset or length
//! read-modify-writes the sectors it covers partly, on an I/O thread.
//!
//! **Invariant for read-modify-write.** A sector partly covered by a write may hold
//! bytes of other blocks (blocks smaller than the alignment share sectors), and two such
//! writes to one sector must not interleave, or one would write back stale bytes of the
//! other's block. Each partly covered sector is therefore locked for the whole
//! read-modify-write, through a fixed table of [`SECTOR_LOCKS`] mutexes chosen by sector
//! number, taken in ascending table order (so two writes cannot deadlock). These are
//! `std` mutexes held by **I/O threads only**, never by a worker. Blocks at least as large
//! as the alignment own their sectors whole (the allocator aligns every block to its
//! size), so aligned writes need no lock.
use super::io_pool::{IoPool, Scratch};
use super::uring::{Permit, UringQueue};
use super::{check_alignment, check_range, BdevType, BlockDevice, CreateError, IoError};
use crate::short_lock::ShortLock;
use chimaera_core::{BulkIn, BulkOut};
use std::alloc::{self, Layout};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

/// Mutexes that serialize read-modify-writes of partly written sectors.
pub const SECTOR_LOCKS: usize = 64;

/// Bounce buffers larger than this are not kept: such accesses go to an I/O thread.
const MAX_BOUNCE: usize = 4 << 20;

/// The environment variable that forces the I/O thread engine (`threads`).
pub const ENGINE_ENV: &str = "CHIMAERA_BDEV_IO";

/// How a file device moves its bytes; see the [module docs](self).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IoEngine {
    /// `io_uring` if it can be set up here (and `CHIMAERA_BDEV_IO` is not `threads`),
    /// else I/O threads.
    #[default]
    Auto,
    /// `io_uring`, or fail to open.
    Uring,
    /// A pool of I/O threads running `pread`/`pwrite`.
    Threads,
}

/// How to open a file device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileOptions {
    /// Bytes; 0 = the existing file's size.
    pub total_size: u64,
    /// Operations in flight at most (and I/O threads at most).
    pub io_depth: u32,
    /// Open with `O_DIRECT`.
    pub direct: bool,
    /// Alignment of buffers, offsets and lengths for `O_DIRECT`: a power of two ≥ 512.
    pub alignment: u32,
    /// `io_uring` or I/O threads.
    pub engine: IoEngine,
}

impl Default for FileOptions {
    fn default() -> Self {
        FileOptions {
            total_size: 0,
            io_depth: 32,
            direct: false,
            alignment: 4096,
            engine: IoEngine::Auto,
        }
    }
}

/// A heap buffer aligned to `align`, for `O_DIRECT` bounce copies.
struct AlignedBuf {
    ptr: NonNull<u8>,
    layout: Layout,
}

// SAFETY: an owned heap allocation, like `Box<[u8]>`.
unsafe impl Send for AlignedBuf {}

impl AlignedBuf {
    fn new(len: usize, align: usize) -> Option<AlignedBuf> {
        let layout = Layout::from_size_align(len.max(1), align).ok()?;
        // SAFETY: the layout has a non-zero size.
        let ptr = NonNull::new(unsafe { alloc::alloc_zeroed(layout) })?;
        Some(AlignedBuf { ptr, layout })
    }

    fn len(&self) -> usize {
        self.layout.size()
    }

    fn as_mut_slice(&mut self, len: usize) -> &mut [u8] {
        assert!(len <= self.len());
        // SAFETY: `len` bytes of this initialized (zeroed) allocation, borrowed mutably
        // through `&mut self`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated by the global allocator with `layout`, once.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

/// Bounce buffers kept for reuse: at most one per operation in flight.
struct BouncePool {
    free: ShortLock<Vec<AlignedBuf>>,
    align: usize,
}

/// A bounce buffer lent to one operation; goes back to its pool when dropped.
struct Bounce<'a> {
    buf: Option<AlignedBuf>,
    pool: &'a BouncePool,
}

impl BouncePool {
    /// A buffer of at least `len` bytes (≤ [`MAX_BOUNCE`]) aligned to the device's
    /// alignment, reused when one is free.
    fn take(&self, len: usize) -> Option<Bounce<'_>> {
        if len > MAX_BOUNCE {
            return None;
        }
        let reused = self.free.lock().pop();
        let buf = match reused {
            Some(buf) if buf.len() >= len => buf,
            _ => AlignedBuf::new(len.max(128 << 10).next_multiple_of(self.align), self.align)?,
        };
        Some(Bounce {
            buf: Some(buf),
            pool: self,
        })
    }
}

impl Bounce<'_> {
    fn slice(&mut self, len: usize) -> &mut [u8] {
        self.buf
            .as_mut()
            .expect("a lent bounce buffer is present until dropped")
            .as_mut_slice(len)
    }
}

impl Drop for Bounce<'_> {
    fn drop(&mut self) {
        if let Some(buf) = self.buf.take() {
            self.pool.free.lock().push(buf);
        }
    }
}

/// A file-backed device; see the [module docs](self).
pub struct FileDevice {
    file: File,
    path: String,
    capacity: u64,
    /// The alignment, when opened with `O_DIRECT`.
    direct: Option<u64>,
    pool: IoPool,
    /// The `io_uring` engine, if used.
    uring: Option<UringQueue>,
    bounces: BouncePool,
    closed: AtomicBool,
    sector_locks: [Mutex<()>; SECTOR_LOCKS],
}

impl FileDevice {
    /// Opens (creating and sizing if needed) the file at `path`. The file system calls run
    /// on the device's own I/O thread.
    pub fn open(path: &str, options: FileOptions) -> Result<Self, CreateError> {
        check_alignment(options.alignment, options.direct)?;
        if options.io_depth == 0 {
            return Err(CreateError::BadIoDepth);
        }
        let pool = IoPool::new("bdev", options.io_depth);
        let forced_threads = std::env::var(ENGINE_ENV).is_ok_and(|v| v == "threads");
        let may_use_uring = match options.engine {
            IoEngine::Threads => false,
            IoEngine::Auto => !forced_threads,
            IoEngine::Uring => true,
        };
        let (file, capacity) = pool
            .run(|_| {
                // Whether `io_uring` works here is found once per process, by making a
                // ring on a thread: here, so a worker never waits for it (`UringQueue::new`
                // below then reads the answer).
                if may_use_uring {
                    let _ = super::uring::probe();
                }
                open_sized(path, &options)
            })
            .map_err(|err| CreateError::NoIoThread {
                path: path.to_owned(),
                source: io::Error::other(err),
            })??;
        let uring = match may_use_uring.then(|| UringQueue::new("bdev", options.io_depth)) {
            None => None,
            Some(Ok(queue)) => Some(queue),
            Some(Err(reason)) if options.engine == IoEngine::Auto => {
                tracing::info!("io_uring unavailable ({reason}); `{path}` uses I/O threads");
                None
            }
            Some(Err(reason)) => {
                return Err(CreateError::UringUnavailable {
                    path: path.to_owned(),
                    reason: reason.to_string(),
                })
            }
        };
        Ok(FileDevice {
            file,
            path: path.to_owned(),
            capacity,
            direct: options.direct.then_some(u64::from(options.alignment)),
            pool,
            uring,
            bounces: BouncePool {
                free: ShortLock::new(Vec::new()),
                align: options.alignment as usize,
            },
            closed: AtomicBool::new(false),
            sector_locks: std::array::from_fn(|_| Mutex::new(())),
        })
    }

    /// The file's path.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Whether the file was opened with `O_DIRECT`.
    pub fn is_direct(&self) -> bool {
        self.direct.is_some()
    }

    /// The bound on operations in flight.
    pub fn io_depth(&self) -> usize {
        self.pool.depth()
    }

    /// The engine in use: [`IoEngine::Uring`] or [`IoEngine::Threads`].
    pub fn engine(&self) -> IoEngine {
        if self.uring.is_some() {
            IoEngine::Uring
        } else {
            IoEngine::Threads
        }
    }

    fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// A write through the ring (`permit` is this operation's slot in the depth bound).
    fn uring_write(
        &self,
        ring: &UringQueue,
        permit: &Permit<'_>,
        offset: u64,
        data: BulkIn<'_>,
    ) -> Result<(), IoError> {
        let len = data.len();
        let io = |source| IoError::Io {
            offset,
            len: len as u64,
            source,
        };
        match self.direct {
            None => ring
                .write_all_at(permit, self.fd(), data, offset)
                .map_err(io),
            Some(align) if is_aligned(offset, align) && is_aligned(len as u64, align) => {
                if is_aligned(data.as_ptr() as u64, align) {
                    return ring
                        .write_all_at(permit, self.fd(), data, offset)
                        .map_err(io);
                }
                match self.bounces.take(len) {
                    Some(mut bounce) => {
                        let aligned = bounce.slice(len);
                        copy_in(data, aligned);
                        ring.write_all_at(permit, self.fd(), BulkIn::from(&aligned[..]), offset)
                            .map_err(io)
                    }
                    None => self.pool_write(offset, data, align),
                }
            }
            Some(align) => self.pool_write(offset, data, align),
        }
    }

    /// A read through the ring; see [`uring_write`](Self::uring_write).
    fn uring_read(
        &self,
        ring: &UringQueue,
        permit: &Permit<'_>,
        offset: u64,
        mut buf: BulkOut<'_>,
    ) -> Result<(), IoError> {
        let len = buf.len() as u64;
        let io = |source| IoError::Io {
            offset,
            len,
            source,
        };
        let Some(align) = self.direct else {
            return ring
                .read_exact_at(permit, self.fd(), buf, offset)
                .map_err(io);
        };
        if is_aligned(offset, align)
            && is_aligned(len, align)
            && is_aligned(buf.as_ptr() as u64, align)
        {
            return ring
                .read_exact_at(permit, self.fd(), buf, offset)
                .map_err(io);
        }
        let first = offset - offset % align;
        let last = (offset + len).div_ceil(align) * align;
        let span = (last - first) as usize;
        let Some(mut bounce) = self.bounces.take(span) else {
            return self.pool_read(offset, buf, align);
        };
        let covering = bounce.slice(span);
        ring.read_exact_at(permit, self.fd(), BulkOut::from(&mut covering[..]), first)
            .map_err(io)?;
        let at = (offset - first) as usize;
        copy_out(&covering[at..at + buf.len()], &mut buf);
        Ok(())
    }

    /// An `O_DIRECT` write on an I/O thread (read-modify-write of partial sectors).
    fn pool_write(&self, offset: u64, data: BulkIn<'_>, align: u64) -> Result<(), IoError> {
        self.pool
            .run(|scratch| self.direct_write(scratch, offset, data, align))?
            .map_err(|source| IoError::Io {
                offset,
                len: data.len() as u64,
                source,
            })
    }

    /// An `O_DIRECT` read on an I/O thread.
    fn pool_read(&self, offset: u64, buf: BulkOut<'_>, align: u64) -> Result<(), IoError> {
        let len = buf.len() as u64;
        self.pool
            .run(move |scratch| self.direct_read(scratch, offset, buf, align))?
            .map_err(|source| IoError::Io {
                offset,
                len,
                source,
            })
    }

    fn check_open(&self) -> Result<(), IoError> {
        if self.closed.load(Ordering::Acquire) {
            Err(IoError::Closed)
        } else {
            Ok(())
        }
    }

    fn sector_lock(&self, sector: u64) -> usize {
        (sector % SECTOR_LOCKS as u64) as usize
    }

    /// Locks the mutexes of the given sectors, each once, in ascending table order.
    fn lock_sectors(&self, sectors: &[u64]) -> Vec<MutexGuard<'_, ()>> {
        let mut slots: Vec<usize> = sectors.iter().map(|&s| self.sector_lock(s)).collect();
        slots.sort_unstable();
        slots.dedup();
        slots
            .into_iter()
            .map(|slot| {
                self.sector_locks[slot]
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
            })
            .collect()
    }

    /// An `O_DIRECT` write of `data` at `offset` (inside the capacity, a multiple of
    /// `align`), on an I/O thread.
    fn direct_write(
        &self,
        scratch: &mut Scratch,
        offset: u64,
        data: BulkIn<'_>,
        align: u64,
    ) -> io::Result<()> {
        let len = data.len() as u64;
        let end = offset + len;
        if is_aligned(offset, align)
            && is_aligned(len, align)
            && is_aligned(data.as_ptr() as u64, align)
        {
            return pwrite_all(&self.file, data, offset);
        }
        let first = offset - offset % align;
        let last = end.div_ceil(align) * align;
        let span = (last - first) as usize;
        let bounce = scratch
            .aligned(span, align as usize)
            .ok_or_else(|| io::Error::other("bounce buffer too large"))?;
        let a = align as usize;
        let head_partial = offset != first || end < first + align;
        let tail_sector = last - align;
        let tail_partial = !is_aligned(end, align) && tail_sector != first;
        let mut partial = Vec::with_capacity(2);
        if head_partial {
            partial.push(first / align);
        }
        if tail_partial {
            partial.push(tail_sector / align);
        }
        let _locks = self.lock_sectors(&partial);
        if head_partial {
            self.file.read_exact_at(&mut bounce[..a], first)?;
        }
        if tail_partial {
            self.file
                .read_exact_at(&mut bounce[span - a..], tail_sector)?;
        }
        let at = (offset - first) as usize;
        copy_in(data, &mut bounce[at..at + data.len()]);
        self.file.write_all_at(bounce, first)
    }

    /// An `O_DIRECT` read into `buf` from `offset` (inside the capacity), on an I/O thread.
    fn direct_read(
        &self,
        scratch: &mut Scratch,
        offset: u64,
        mut buf: BulkOut<'_>,
        align: u64,
    ) -> io::Result<()> {
        let len = buf.len() as u64;
        if is_aligned(offset, align)
            && is_aligned(len, align)
            && is_aligned(buf.as_ptr() as u64, align)
        {
            return pread_exact(&self.file, buf, offset);
        }
        let first = offset - offset % align;
        let last = (offset + len).div_ceil(align) * align;
        let bounce = scratch
            .aligned((last - first) as usize, align as usize)
            .ok_or_else(|| io::Error::other("bounce buffer too large"))?;
        self.file.read_exact_at(bounce, first)?;
        let at = (offset - first) as usize;
        copy_out(&bounce[at..at + buf.len()], &mut buf);
        Ok(())
    }
}

impl BlockDevice for FileDevice {
    fn kind(&self) -> BdevType {
        BdevType::File
    }

    fn capacity(&self) -> u64 {
        self.capacity
    }

    fn write_at(&self, offset: u64, data: BulkIn<'_>) -> Result<u64, IoError> {
        self.check_open()?;
        check_range(offset, data.len(), self.capacity)?;
        if data.is_empty() {
            return Ok(0);
        }
        if let Some(ring) = &self.uring {
            let permit = ring.permit();
            self.uring_write(ring, &permit, offset, data)?;
            return Ok(data.len() as u64);
        }
        self.pool
            .run(|scratch| match self.direct {
                None => pwrite_all(&self.file, data, offset),
                Some(align) => self.direct_write(scratch, offset, data, align),
            })?
            .map_err(|source| IoError::Io {
                offset,
                len: data.len() as u64,
                source,
            })?;
        Ok(data.len() as u64)
    }

    fn read_into(&self, offset: u64, buf: BulkOut<'_>) -> Result<u64, IoError> {
        self.check_open()?;
        check_range(offset, buf.len(), self.capacity)?;
        if buf.is_empty() {
            return Ok(0);
        }
        let len = buf.len() as u64;
        if let Some(ring) = &self.uring {
            let permit = ring.permit();
            self.uring_read(ring, &permit, offset, buf)?;
            return Ok(len);
        }
        self.pool
            .run(move |scratch| match self.direct {
                None => pread_exact(&self.file, buf, offset),
                Some(align) => self.direct_read(scratch, offset, buf, align),
            })?
            .map_err(|source| IoError::Io {
                offset,
                len,
                source,
            })?;
        Ok(len)
    }

    fn sync(&self) -> Result<(), IoError> {
        self.check_open()?;
        self.sync_data()
    }

    fn close(&self) -> Result<(), IoError> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.sync_data()
    }
}

impl FileDevice {
    /// `fdatasync` through the engine.
    fn sync_data(&self) -> Result<(), IoError> {
        let synced = match &self.uring {
            Some(ring) => ring.sync_data(&ring.permit(), self.fd()),
            None => self.pool.run(|_| self.file.sync_data())?,
        };
        synced.map_err(|source| IoError::Sync { source })
    }
}

impl std::fmt::Debug for FileDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileDevice")
            .field("path", &self.path)
            .field("capacity", &self.capacity)
            .field("direct", &self.direct)
            .field("engine", &self.engine())
            .field("pool", &self.pool)
            .finish_non_exhaustive()
    }
}

/// Copies a view's bytes into a private buffer of the same length (atomic copies when
/// the view lies in a client's shared memory).
fn copy_in(data: BulkIn<'_>, dst: &mut [u8]) {
    // The lengths are equal by construction; a mismatch would leave `dst` as it was and
    // be caught by the caller's tests, never read out of bounds.
    let _ = data.read_at(0, dst);
}

/// Copies private bytes into a view of the same length.
fn copy_out(src: &[u8], buf: &mut BulkOut<'_>) {
    let _ = buf.write_at(0, src);
}

/// The file offset `offset` as `pread`/`pwrite` take it.
fn file_offset(offset: u64) -> io::Result<libc::off_t> {
    libc::off_t::try_from(offset).map_err(|_| io::Error::other("offset beyond off_t"))
}

/// `pwrite`s all of `data` at `offset`, retrying short writes and interruptions. The
/// kernel reads straight from the view's memory (no reference is made into it).
fn pwrite_all(file: &File, data: BulkIn<'_>, mut offset: u64) -> io::Result<()> {
    let mut done = 0;
    while done < data.len() {
        let rest = data.len() - done;
        // SAFETY: `as_ptr() + done .. + rest` is the unwritten tail of the view, valid
        // for reads while `data` lives (all of this call); the kernel only reads it.
        let written = unsafe {
            libc::pwrite(
                file.as_raw_fd(),
                data.as_ptr().add(done).cast(),
                rest,
                file_offset(offset)?,
            )
        };
        match written {
            n if n > 0 => {
                done += (n as usize).min(rest);
                offset += n as u64;
            }
            0 => {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "the file took no byte of the write",
                ))
            }
            _ => {
                let err = io::Error::last_os_error();
                if err.kind() != io::ErrorKind::Interrupted {
                    return Err(err);
                }
            }
        }
    }
    Ok(())
}

/// `pread`s all of `buf` from `offset`, retrying short reads and interruptions. The
/// kernel writes straight into the view's memory.
fn pread_exact(file: &File, mut buf: BulkOut<'_>, mut offset: u64) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let rest = buf.len() - done;
        // SAFETY: the unread tail of the view, valid for writes while `buf` lives and
        // accessed by nothing else in this process (`buf` is held by value here).
        let read = unsafe {
            libc::pread(
                file.as_raw_fd(),
                buf.as_mut_ptr().add(done).cast(),
                rest,
                file_offset(offset)?,
            )
        };
        match read {
            n if n > 0 => {
                done += (n as usize).min(rest);
                offset += n as u64;
            }
            0 => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the file ended before the range read",
                ))
            }
            _ => {
                let err = io::Error::last_os_error();
                if err.kind() != io::ErrorKind::Interrupted {
                    return Err(err);
                }
            }
        }
    }
    Ok(())
}

/// Whether `value` is a multiple of `align`, a power of two.
fn is_aligned(value: u64, align: u64) -> bool {
    value & (align - 1) == 0
}

/// Opens, creates and sizes the file; returns it with the device's capacity. Blocking:
/// runs on an I/O thread.
fn open_sized(path: &str, options: &FileOptions) -> Result<(File, u64), CreateError> {
    let bad_path = |reason: String| CreateError::BadPath {
        path: path.to_owned(),
        reason,
    };
    let io_error = |action: &'static str| {
        move |source: io::Error| CreateError::Io {
            action,
            path: path.to_owned(),
            source,
        }
    };
    if path.is_empty() {
        return Err(bad_path(
            "the pool name is the file path, and it is empty".into(),
        ));
    }
    let file_path = Path::new(path);
    if let Some(dir) = file_path.parent().filter(|d| !d.as_os_str().is_empty()) {
        match fs::metadata(dir) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(bad_path(format!("`{}` is not a directory", dir.display())));
            }
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                return Err(bad_path(format!(
                    "directory `{}` does not exist; create it first",
                    dir.display()
                )));
            }
            Err(err) => {
                return Err(bad_path(format!(
                    "cannot reach directory `{}`: {err}",
                    dir.display()
                )));
            }
        }
    }
    let existed = match fs::metadata(file_path) {
        Ok(meta) if meta.is_dir() => {
            return Err(bad_path("it is a directory, not a file".into()));
        }
        Ok(_) => true,
        Err(err) if err.kind() == io::ErrorKind::NotFound => false,
        Err(err) => return Err(io_error("inspect")(err)),
    };
    if !existed && options.total_size == 0 {
        return Err(CreateError::FileSizeUnknown {
            path: path.to_owned(),
            reason: "the file does not exist",
        });
    }
    let mut open = OpenOptions::new();
    open.read(true).write(true).create(true);
    if options.direct {
        open.custom_flags(libc::O_DIRECT);
    }
    let file = match open.open(file_path) {
        Ok(file) => file,
        Err(err) => {
            if !existed {
                // Some file systems create the file before refusing O_DIRECT.
                let _ = fs::remove_file(file_path);
            }
            if options.direct && err.raw_os_error() == Some(libc::EINVAL) {
                return Err(CreateError::DirectUnsupported {
                    path: path.to_owned(),
                    source: err,
                });
            }
            return Err(io_error("open")(err));
        }
    };
    let meta = file.metadata().map_err(io_error("inspect"))?;
    let size = if meta.is_file() {
        meta.len()
    } else {
        (&file)
            .seek(SeekFrom::End(0))
            .map_err(io_error("measure"))?
    };
    let capacity = if options.total_size == 0 {
        if size == 0 {
            return Err(CreateError::FileSizeUnknown {
                path: path.to_owned(),
                reason: "the file is empty",
            });
        }
        size
    } else {
        if size < options.total_size {
            if !meta.is_file() {
                return Err(bad_path(format!(
                    "it is a device of {size} bytes, smaller than total_size {}",
                    options.total_size
                )));
            }
            file.set_len(options.total_size).map_err(io_error("size"))?;
        }
        options.total_size
    };
    let capacity = if options.direct {
        capacity - capacity % u64::from(options.alignment)
    } else {
        capacity
    };
    if capacity == 0 {
        return Err(CreateError::TooSmall {
            path: path.to_owned(),
            size,
            alignment: options.alignment,
        });
    }
    Ok((file, capacity))
}
