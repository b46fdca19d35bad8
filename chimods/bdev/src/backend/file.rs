//! The file device: a file, or a block device node, read and written through an
//! [`IoPool`] so that no worker thread ever blocks in a system call.
//!
//! **Opening** (done on an I/O thread too): the pool name is the path. A missing parent
//! directory, a directory, or an empty path is [`CreateError::BadPath`]. With
//! `total_size` 0 the device is the existing file's size (an absent or empty file is an
//! error); otherwise an absent file is created, a shorter regular file is extended with
//! `set_len` (never truncated: a longer file keeps its tail, the device uses only the
//! first `total_size` bytes), and a block device node must be large enough.
//!
//! **Buffered** (`direct: false`): `pread`/`pwrite` straight from and into the caller's
//! buffer, any offset and length.
//!
//! **Direct** (`direct: true`, `O_DIRECT`): the kernel needs the buffer address, the
//! offset and the length all to be multiples of `alignment`. The capacity is rounded
//! down to a multiple of it. An access that is fully aligned goes to the kernel with
//! the caller's own buffer; any other goes through an aligned bounce buffer of the I/O
//! thread: reads read the covering sectors and copy the wanted bytes out; writes that
//! cover part of a sector read-modify-write it.
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
use super::{check_alignment, check_range, BdevType, BlockDevice, CreateError, IoError};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

/// Mutexes that serialize read-modify-writes of partly written sectors.
pub const SECTOR_LOCKS: usize = 64;

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
}

impl Default for FileOptions {
    fn default() -> Self {
        FileOptions {
            total_size: 0,
            io_depth: 32,
            direct: false,
            alignment: 4096,
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
        let (file, capacity) =
            pool.run(|_| open_sized(path, &options))
                .map_err(|err| CreateError::NoIoThread {
                    path: path.to_owned(),
                    source: io::Error::other(err),
                })??;
        Ok(FileDevice {
            file,
            path: path.to_owned(),
            capacity,
            direct: options.direct.then_some(u64::from(options.alignment)),
            pool,
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
        data: &[u8],
        align: u64,
    ) -> io::Result<()> {
        let len = data.len() as u64;
        let end = offset + len;
        if is_aligned(offset, align)
            && is_aligned(len, align)
            && is_aligned(data.as_ptr() as u64, align)
        {
            return self.file.write_all_at(data, offset);
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
        bounce[at..at + data.len()].copy_from_slice(data);
        self.file.write_all_at(bounce, first)
    }

    /// An `O_DIRECT` read into `buf` from `offset` (inside the capacity), on an I/O thread.
    fn direct_read(
        &self,
        scratch: &mut Scratch,
        offset: u64,
        buf: &mut [u8],
        align: u64,
    ) -> io::Result<()> {
        let len = buf.len() as u64;
        if is_aligned(offset, align)
            && is_aligned(len, align)
            && is_aligned(buf.as_ptr() as u64, align)
        {
            return self.file.read_exact_at(buf, offset);
        }
        let first = offset - offset % align;
        let last = (offset + len).div_ceil(align) * align;
        let bounce = scratch
            .aligned((last - first) as usize, align as usize)
            .ok_or_else(|| io::Error::other("bounce buffer too large"))?;
        self.file.read_exact_at(bounce, first)?;
        let at = (offset - first) as usize;
        buf.copy_from_slice(&bounce[at..at + buf.len()]);
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

    fn write_at(&self, offset: u64, data: &[u8]) -> Result<u64, IoError> {
        self.check_open()?;
        check_range(offset, data.len(), self.capacity)?;
        if data.is_empty() {
            return Ok(0);
        }
        self.pool
            .run(|scratch| match self.direct {
                None => self.file.write_all_at(data, offset),
                Some(align) => self.direct_write(scratch, offset, data, align),
            })?
            .map_err(|source| IoError::Io {
                offset,
                len: data.len() as u64,
                source,
            })?;
        Ok(data.len() as u64)
    }

    fn read_into(&self, offset: u64, buf: &mut [u8]) -> Result<u64, IoError> {
        self.check_open()?;
        check_range(offset, buf.len(), self.capacity)?;
        if buf.is_empty() {
            return Ok(0);
        }
        let len = buf.len() as u64;
        self.pool
            .run(|scratch| match self.direct {
                None => self.file.read_exact_at(buf, offset),
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
        self.pool
            .run(|_| self.file.sync_data())?
            .map_err(|source| IoError::Sync { source })
    }

    fn close(&self) -> Result<(), IoError> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.pool
            .run(|_| self.file.sync_data())?
            .map_err(|source| IoError::Sync { source })
    }
}

impl std::fmt::Debug for FileDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileDevice")
            .field("path", &self.path)
            .field("capacity", &self.capacity)
            .field("direct", &self.direct)
            .field("pool", &self.pool)
            .finish_non_exhaustive()
    }
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
