//! # bdev — block devices served by the runtime
//!
//! A bdev pool is one block device: a **file** (the pool name is its path) or a region
//! of **RAM**. Clients allocate blocks on it, write and read them, free them, and ask
//! for measured statistics — all as tasks, so a device is shared by every client of the
//! runtime, and file I/O never blocks a runtime worker.
//!
//! The runtime opens a file device with its own rights, so only trusted callers create
//! one: a client process of a uid that is neither the runtime's owner nor an admin uid
//! gets [`CreateError::FileNotPermitted`] (it may open, by name, one its owner made),
//! and such a caller's RAM devices count against its uid's `quotas.memory`
//! ([`CreateError::RamQuota`] past it).
//!
//! ```no_run
//! use chimaera_bdev::{BdevClient, BdevParams, BdevType};
//! use chimaera_core::{Client, PoolQuery};
//! # fn demo(chi: &Client) -> Result<(), chimaera_core::TaskError> {
//! let local = PoolQuery::local();
//! // A 64 MiB RAM device (a file device: BdevType::File, the pool name is the path).
//! let params = BdevParams { bdev_type: BdevType::Ram, total_size: 64 << 20, ..BdevParams::default() };
//! let bdev = BdevClient::create(chi, local, "ram-dev", params)?;
//! let blocks = bdev.allocate_blocks(local, 4096)?;          // one 4 KiB block
//! // Buffers in the client's shared memory travel by reference, not by copy.
//! let mut buffer = chi.allocate_buffer(4096)?;
//! buffer[..5].copy_from_slice(b"hello");
//! assert_eq!(bdev.write(local, blocks[0], &buffer[..5])?, 5);
//! buffer.fill(0);
//! assert_eq!(bdev.read(local, blocks[0], &mut buffer[..5])?, 5);  // filled in place
//! assert_eq!(&buffer[..5], b"hello");
//! bdev.free_blocks(local, blocks)?;
//! let stats = bdev.get_stats(local)?;
//! assert_eq!((stats.write.ops, stats.read.ops), (1, 1));
//! # Ok(()) }
//! ```
//!
//! ## Tasks (`chimaera_mod.yaml`)
//!
//! | id | task | does |
//! |---|---|---|
//! | 0 | `create(params: BdevParams)` | opens the device; see [`BdevParams`] |
//! | 1 | `destroy` | syncs a file device and closes it; later I/O fails |
//! | 10 | `allocate_blocks(size) -> Vec<Block>` | blocks covering `size` bytes: 128 KiB pieces plus the remainder rounded up to a class (256 B, 1 KiB, 4 KiB, 64 KiB, 128 KiB); all or nothing |
//! | 11 | `free_blocks(blocks)` | returns blocks; double frees and foreign blocks are refused, all or nothing |
//! | 12 | `write(block, data: &[u8]) -> u64` | writes `data` at the block's start; bytes written |
//! | 13 | `read(block, data: &mut [u8]) -> u64` | fills min(`data.len()`, block size) bytes of `data` from the block's start; bytes read |
//! | 14 | `get_stats -> BdevStats` | measured ops, bytes, mean latency, bandwidth and IOPS per direction, and the exact remaining space |
//! | 15 | `sync` | `fdatasync`: written data survives a crash (no-op on RAM) |
//!
//! ## Guarantees
//!
//! * **Allocation** ([`allocator`]): blocks are disjoint and aligned to their own size
//!   (so to min(size, alignment); 4 KiB blocks are 4 KiB-aligned); freed space is
//!   reused and coalesced, so a device filled with small blocks and freed serves large
//!   ones again; a failed request changes nothing. The allocator sits behind a
//!   [`short_lock::ShortLock`] held only for its bookkeeping.
//! * **Bounds**: a block that is not inside the device, or data longer than its block,
//!   fails with an error and moves 0 bytes; nothing panics on a bad block.
//! * **No blocked workers** ([`backend`]): RAM I/O is a copy in the task; file I/O goes
//!   through `io_uring` (the task queues its request and parks; the device's I/O thread
//!   issues it and wakes the task on completion), or through the device's I/O threads
//!   where `io_uring` is unavailable — at most `io_depth` operations in flight either
//!   way. `O_DIRECT` is honoured with bounce buffers where the caller's buffer, offset or
//!   length is not aligned.
//! * **Zero-copy, soundly**: `write` takes its `data` as a [`BulkIn`] view and `read` as
//!   a [`BulkOut`] view: a buffer from `Client::allocate_buffer` reaches the handler as a
//!   view of the client's shared memory (never a `&[u8]` into memory the client can
//!   rewrite), and the I/O core ([`BlockDevice::write_at`] / [`BlockDevice::read_into`])
//!   copies from or into it (RAM, atomic copies) or hands its raw address to the kernel
//!   (file: `io_uring`, `pwrite`/`pread`). The one copy left is the device's own (the
//!   RAM copy, or the kernel's page-cache copy without `O_DIRECT`).
//!
//! Reads and writes do not check that a block is currently allocated (only that it lies
//! in the device): like a disk, the device serves any in-range block it is given.
//! A pool should have one container per node: several containers of one pool on one
//! node would each open the same file with an allocator of its own.
#![deny(unsafe_op_in_unsafe_fn)]

pub mod allocator;
pub mod backend;
pub mod compose;
pub mod error;
pub mod permits;
pub mod short_lock;
pub mod stats;
#[cfg(test)]
mod test_executor;

pub use allocator::{Block, BlockAllocator, BLOCK_CLASSES, MAX_BLOCK_SIZE};
pub use backend::{BdevType, BlockDevice, CreateError, IoEngine, IoError};
pub use error::BdevError;
pub use stats::{BdevStats, OpStats};

use backend::{FileDevice, FileOptions, RamDevice};
use chimaera_core::{BulkIn, BulkOut, MemoryReservation, RunContext};
use chimaera_macros::chimod;
use short_lock::ShortLock;
use stats::DeviceStats;

/// Parameters of `Create`, sent once per pool (a re-open must pass the same).
#[derive(Clone, Copy, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct BdevParams {
    /// File (default; the pool name is the path) or RAM.
    pub bdev_type: BdevType,
    /// Bytes. File: 0 = the existing file's size; an absent file is created with this
    /// size, a shorter one extended. RAM: must be > 0.
    pub total_size: u64,
    /// File: operations in flight at most (default 32); at least 1.
    pub io_depth: u32,
    /// A power of two (default 4096); with `direct`, at least 512: buffers, offsets and
    /// lengths of `O_DIRECT` I/O are aligned to it and the capacity rounded down to it.
    pub alignment: u32,
    /// File: open with `O_DIRECT` (bypass the page cache). Ignored for RAM.
    pub direct: bool,
}

impl Default for BdevParams {
    fn default() -> Self {
        BdevParams {
            bdev_type: BdevType::File,
            total_size: 0,
            io_depth: 32,
            alignment: 4096,
            direct: false,
        }
    }
}

/// Opens the device `params` describe; `name` is the pool name (a file device's path).
pub fn open_device(name: &str, params: &BdevParams) -> Result<Box<dyn BlockDevice>, CreateError> {
    let direct = params.direct && params.bdev_type == BdevType::File;
    backend::check_alignment(params.alignment, direct)?;
    if params.io_depth == 0 {
        return Err(CreateError::BadIoDepth);
    }
    Ok(match params.bdev_type {
        BdevType::Ram => Box::new(RamDevice::new(params.total_size)?),
        BdevType::File => Box::new(FileDevice::open(
            name,
            FileOptions {
                total_size: params.total_size,
                io_depth: params.io_depth,
                direct,
                alignment: params.alignment,
                ..FileOptions::default()
            },
        )?),
    })
}

/// One bdev container: a device, its allocator and its statistics.
#[chimod(name = "bdev")]
pub struct Bdev {
    device: Box<dyn BlockDevice>,
    allocator: ShortLock<BlockAllocator>,
    stats: DeviceStats,
    /// The device's capacity (constant), without a call through `device`.
    capacity: u64,
    /// What a RAM device holds of its creator's `quotas.memory` (empty otherwise).
    memory: MemoryReservation,
}

#[chimod]
impl Bdev {
    /// `kCreate`: opens the device (a file's calls run on its I/O thread).
    #[task(method = 0)]
    fn create(ctx: &mut RunContext, params: BdevParams) -> Result<Self, BdevError> {
        if let (BdevType::File, Some(uid)) = (params.bdev_type, ctx.unprivileged_caller()) {
            return Err(CreateError::FileNotPermitted {
                path: ctx.pool_name().to_owned(),
                uid,
            }
            .into());
        }
        // A RAM device's memory is the caller's: counted against an unprivileged one's
        // `quotas.memory` for as long as the device lives.
        let memory = match params.bdev_type {
            BdevType::Ram => {
                ctx.reserve_memory(params.total_size)
                    .map_err(|source| CreateError::RamQuota {
                        size: params.total_size,
                        source,
                    })?
            }
            BdevType::File => MemoryReservation::default(),
        };
        let mut bdev = Bdev::with_device(open_device(ctx.pool_name(), &params)?);
        bdev.memory = memory;
        Ok(bdev)
    }

    /// `kDestroy`: makes written data durable and closes the device.
    #[task(method = 1)]
    fn destroy(&self) -> Result<(), BdevError> {
        Ok(self.device.close()?)
    }

    /// `kAllocateBlocks`: blocks covering `size` bytes, all or nothing.
    #[task(method = 10)]
    fn allocate_blocks(&self, size: u64) -> Result<Vec<Block>, BdevError> {
        let mut allocator = self.allocator.lock();
        let blocks = allocator.allocate(size);
        self.stats.set_remaining(allocator.remaining());
        Ok(blocks?)
    }

    /// `kFreeBlocks`: returns `blocks`, all or nothing.
    #[task(method = 11)]
    fn free_blocks(&self, blocks: Vec<Block>) -> Result<(), BdevError> {
        let mut allocator = self.allocator.lock();
        let freed = allocator.free(&blocks);
        self.stats.set_remaining(allocator.remaining());
        Ok(freed?)
    }

    /// `kWrite`: writes `data` at the start of `block`; returns the bytes written. A
    /// `data` buffer from `Client::allocate_buffer` goes from the client's shared memory
    /// to the device without a copy in between.
    #[task(method = 12)]
    fn write(&self, block: Block, data: BulkIn<'_>) -> Result<u64, BdevError> {
        self.write_block(&block, data)
    }

    /// `kRead`: fills the first min(`data.len()`, block size) bytes of `data` from the
    /// start of `block`; returns the bytes read. A `data` buffer from
    /// `Client::allocate_buffer` is filled in place (the device reads straight into the
    /// client's shared memory); any other comes back in the output.
    #[task(method = 13)]
    fn read(&self, block: Block, data: BulkOut<'_>) -> Result<u64, BdevError> {
        let len = (data.len() as u64).min(block.size) as usize;
        self.read_block(&block, data.truncated(len))
    }

    /// `kGetStats`: measured statistics since the device was created.
    #[task(method = 14)]
    fn get_stats(&self) -> BdevStats {
        self.stats.snapshot()
    }

    /// `kSync`: makes every completed write durable (`fdatasync`; no-op on RAM).
    #[task(method = 15)]
    fn sync(&self) -> Result<(), BdevError> {
        Ok(self.device.sync()?)
    }
}

impl Bdev {
    /// A container around an open device, all of it free.
    pub fn with_device(device: Box<dyn BlockDevice>) -> Self {
        let capacity = device.capacity();
        let allocator = BlockAllocator::new(capacity);
        let stats = DeviceStats::new(allocator.capacity());
        Bdev {
            device,
            capacity,
            allocator: ShortLock::new(allocator),
            stats,
            memory: MemoryReservation::default(),
        }
    }

    /// The device.
    pub fn device(&self) -> &dyn BlockDevice {
        &*self.device
    }

    /// Checks that `block` lies in the device and that `len` bytes fit in it.
    fn check_access(&self, block: &Block, len: usize) -> Result<(), BdevError> {
        if block.size > MAX_BLOCK_SIZE {
            return Err(BdevError::BlockTooLarge { block: *block });
        }
        let capacity = self.capacity;
        match block.end() {
            Some(end) if end <= capacity => {}
            _ => {
                return Err(BdevError::BlockOutsideDevice {
                    block: *block,
                    capacity,
                })
            }
        }
        if len as u64 > block.size {
            return Err(BdevError::LongerThanBlock {
                len: len as u64,
                block_size: block.size,
                offset: block.offset,
            });
        }
        Ok(())
    }

    /// Writes `data` at the start of `block`, measured; the I/O core of `Write`.
    pub fn write_block(&self, block: &Block, data: BulkIn<'_>) -> Result<u64, BdevError> {
        let result = self.check_access(block, data.len()).and_then(|()| {
            let started = self.stats.start();
            let written = self.device.write_at(block.offset, data)?;
            self.stats.record_write_since(written, started);
            Ok(written)
        });
        if result.is_err() {
            self.stats.record_failed_write();
        }
        result
    }

    /// Fills `buf` from the start of `block`, measured; the I/O core of `Read`.
    pub fn read_block(&self, block: &Block, buf: BulkOut<'_>) -> Result<u64, BdevError> {
        let result = self.check_access(block, buf.len()).and_then(|()| {
            let started = self.stats.start();
            let read = self.device.read_into(block.offset, buf)?;
            self.stats.record_read_since(read, started);
            Ok(read)
        });
        if result.is_err() {
            self.stats.record_failed_read();
        }
        result
    }
}
