//! Quickstart: start a runtime inside this process with built-in defaults, create a
//! MOD_NAME pool and call its tasks — sync, async, nested, under a coroutine lock —
//! then stop the runtime cleanly.
//!
//! Run: `cargo run --release --example quickstart`
use chimaera::mod_name::{CreateParams, ModNameClient};
use chimaera::prelude::*;
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let runtime = chimaera::builder().start()?;
    let chi = runtime.client();

    let params = CreateParams {
        label: "quickstart".into(),
    };
    let m = ModNameClient::create(&chi, PoolQuery::local(), "my_pool", params)?;
    println!("pool `my_pool` is {}", m.pool_id());

    let echoed = m.custom(PoolQuery::local(), "hello", 0)?;
    println!("custom (sync) echoed {echoed:?}");

    let pending = m.async_custom(PoolQuery::dynamic(), "x", 1)?;
    println!("custom (async) echoed {:?}", pending.wait()?);

    let depth = m.wait_test(PoolQuery::local(), 10)?;
    println!("wait_test nested {depth} tasks inside the runtime");

    let holders: Vec<_> = (0..8)
        .map(|i| m.async_co_mutex_test(PoolQuery::local(), i, 5))
        .collect::<Result<_, _>>()?;
    let most = holders
        .into_iter()
        .map(|p| p.wait())
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .max();
    println!("co_mutex_test: at most {most:?} task(s) inside the lock at once");

    // One batch can land on a moment when the machine is busy elsewhere: the median of
    // many batches says what a round trip costs here, the spread how steady that was.
    let (batches, calls) = (21usize, 5_000u32);
    let mut per_call = Vec::with_capacity(batches);
    for _ in 0..batches {
        let start = Instant::now();
        for i in 0..calls {
            m.custom(PoolQuery::local(), "ping", i)?;
        }
        per_call.push(start.elapsed() / calls);
    }
    per_call.sort();
    let (fastest, median, slowest) = (per_call[0], per_call[batches / 2], per_call[batches - 1]);
    println!(
        "sync round trips: median {median:?} per call over {batches} batches of {calls} \
         (fastest batch {fastest:?}, slowest {slowest:?})"
    );

    let admin = AdminClient::attach(&chi, PoolId::ADMIN);
    println!(
        "flush: {} task(s) completed while flushing",
        admin.flush(PoolQuery::local())?
    );
    runtime.stop();
    println!("runtime stopped cleanly");
    Ok(())
}
