//! The use-after-free the safe client API used to allow: a buffer lent to an async read
//! is dropped, and its memory handed to a new buffer, before the read completes; the
//! runtime would then write the read's bytes into the new buffer. The `Pending` borrows
//! the buffer until `wait`, so this no longer compiles.
use chimaera::bdev::{BdevClient, BdevParams, BdevType};
use chimaera::prelude::*;

fn main() -> Result<(), TaskError> {
    let chi = Client::connect().expect("a running runtime");
    let q = PoolQuery::local();
    let params = BdevParams {
        bdev_type: BdevType::Ram,
        total_size: 1 << 20,
        ..BdevParams::default()
    };
    let bdev = BdevClient::create(&chi, q, "ram", params)?;
    let block = bdev.allocate_blocks(q, 4096)?[0];
    let mut buf = chi.allocate_buffer(4096)?;
    let pending = bdev.async_read(q, block, &mut buf[..])?;
    drop(buf);
    let fresh = chi.allocate_buffer(4096)?;
    pending.wait()?;
    assert!(fresh.iter().all(|&b| b == 0));
    Ok(())
}
