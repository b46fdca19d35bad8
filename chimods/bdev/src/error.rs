//! [`BdevError`]: every way a bdev task can fail, one variant per operation's error.
//!
//! Each variant wraps the typed error of the layer that failed (device creation,
//! allocation, free, I/O) or says which block check failed. At the task boundary it
//! becomes [`TaskError::Failed`] whose message is this error's `Display`: what failed
//! and what to do.
use crate::allocator::{AllocError, Block, FreeError};
use crate::backend::{CreateError, IoError};
use chimaera_core::TaskError;

/// Why a bdev task failed.
#[derive(Debug, thiserror::Error)]
pub enum BdevError {
    /// `Create`: the device could not be made.
    #[error("cannot create the block device: {0}")]
    Create(#[from] CreateError),
    /// `AllocateBlocks`.
    #[error("cannot allocate blocks: {0}")]
    Allocate(#[from] AllocError),
    /// `FreeBlocks`.
    #[error("cannot free blocks: {0}")]
    Free(#[from] FreeError),
    /// `Write`, `Read` or `Sync` at the device.
    #[error("{0}")]
    Io(#[from] IoError),
    /// A block that does not lie inside the device.
    #[error("out of bounds: block {block:?} does not lie inside the device's {capacity} bytes; nothing was transferred")]
    BlockOutsideDevice {
        /// The block given.
        block: Block,
        /// The device's capacity.
        capacity: u64,
    },
    /// A block larger than the largest block class.
    #[error("not a block: {block:?} is larger than the largest block (128 KiB); use the blocks AllocateBlocks returned")]
    BlockTooLarge {
        /// The block given.
        block: Block,
    },
    /// Write data longer than its block.
    #[error("out of bounds: {len} bytes do not fit in the {block_size}-byte block at offset {offset}; nothing was written (split the data over several blocks)")]
    LongerThanBlock {
        /// Bytes given.
        len: u64,
        /// The block's size.
        block_size: u64,
        /// The block's offset.
        offset: u64,
    },
}

impl From<BdevError> for TaskError {
    fn from(err: BdevError) -> Self {
        TaskError::failed(err.to_string())
    }
}
