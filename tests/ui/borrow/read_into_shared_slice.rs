//! The reproduction as the issue wrote it: a read handed a `&[u8]`. The handler writes
//! the buffer, so the client method takes `&mut [u8]`.
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
    let buf = chi.allocate_buffer(4096)?;
    let pending = bdev.async_read(q, block, &buf[..])?;
    pending.wait()?;
    Ok(())
}
