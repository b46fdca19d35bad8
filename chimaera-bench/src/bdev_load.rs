//! The block-device workloads' shared pieces: the `bdev` bench and the `load` example
//! both fill a device with 4 KiB blocks, write each block once before timing (so the
//! RAM device's memory is faulted in, as the memcpy floor's is), and pick blocks at
//! random.
use chimaera::bdev::{BdevClient, Block};
use chimaera::prelude::*;
use std::collections::VecDeque;
use std::error::Error;

/// Bytes of a block.
pub const BLOCK: u64 = 4096;
/// Calls in flight.
pub const DEPTH: usize = 32;

/// xorshift64*: random block indices without a dependency.
pub struct Rng(pub u64);

impl Rng {
    /// The next pseudo-random word.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A pseudo-random index below `n` (which is not 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// Every block of a `device_size`-byte device, allocated one [`BLOCK`] request at a
/// time, [`DEPTH`] in flight.
pub fn allocate_all(bdev: &BdevClient, device_size: u64) -> Result<Vec<Block>, Box<dyn Error>> {
    let mut blocks = Vec::with_capacity((device_size / BLOCK) as usize);
    let mut window = VecDeque::with_capacity(DEPTH);
    for _ in 0..device_size / BLOCK {
        if window.len() == DEPTH {
            if let Some(oldest) = window.pop_front() {
                let got: Vec<Block> = Pending::wait(oldest)?;
                blocks.extend(got);
            }
        }
        window.push_back(bdev.async_allocate_blocks(PoolQuery::local(), BLOCK)?);
    }
    for pending in window {
        blocks.extend(pending.wait()?);
    }
    Ok(blocks)
}

/// Writes a [`BLOCK`] to each of `blocks` in turn, [`DEPTH`] in flight, from one slice
/// more than the window of a buffer of the client's data share (no slice is reused
/// while a write reads it).
pub fn write_each(
    bdev: &BdevClient,
    blocks: impl IntoIterator<Item = Block>,
) -> Result<(), Box<dyn Error>> {
    let block = BLOCK as usize;
    let mut data = bdev.client().allocate_buffer(block * (DEPTH + 1))?;
    data.fill(0x5a);
    let mut writes = VecDeque::with_capacity(DEPTH);
    for (i, target) in blocks.into_iter().enumerate() {
        let slice = &data[(i % (DEPTH + 1)) * block..][..block];
        if writes.len() == DEPTH {
            if let Some(oldest) = writes.pop_front() {
                Pending::wait(oldest)?;
            }
        }
        writes.push_back(bdev.async_write(PoolQuery::local(), target, slice)?);
    }
    for pending in writes {
        pending.wait()?;
    }
    Ok(())
}
