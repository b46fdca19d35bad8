//! A buffer lent to an async write is rewritten before the write completes: the runtime
//! may be reading it in place. The `Pending` borrows it (shared) until `wait`.
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
    buf.fill(0xab);
    let pending = bdev.async_write(q, block, &buf[..])?;
    buf.fill(0);
    pending.wait()?;
    Ok(())
}
