//! A client process talking to a separately started runtime over shared memory.
//!
//! ```sh
//! cargo run --release -- runtime start &        # terminal 1 (or in the background)
//! cargo run --release --example client          # terminal 2
//! cargo run --release -- runtime stop
//! ```
//! Both find each other through the same configuration (`CHI_SERVER_CONF`, or just
//! `CHI_INSTANCE`; the default instance is `default`).
use chimaera::mod_name::{CreateParams, ModNameClient};
use chimaera::prelude::*;
use std::process::ExitCode;
use std::time::Instant;

/// Errors are printed with their message (Display), which says what to do, rather than
/// the `Debug` form `main` returning `Result` would print.
fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("client: {err}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let chi = Client::connect()?;
    let m = ModNameClient::create(
        &chi,
        PoolQuery::local(),
        "client_example",
        CreateParams::default(),
    )?;
    println!("attached; pool `client_example` is {}", m.pool_id());
    println!(
        "custom echoed {:?}",
        m.custom(PoolQuery::local(), "hello from another process", 0)?
    );
    println!(
        "wait_test reached depth {}",
        m.wait_test(PoolQuery::local(), 5)?
    );

    let n = 100_000u32;
    let start = Instant::now();
    for i in 0..n {
        m.custom(PoolQuery::local(), "", i)?;
    }
    println!(
        "{n} sync round trips over shared memory, {:?} each",
        start.elapsed() / n
    );

    let status = AdminClient::attach(&chi, PoolId::ADMIN).status(PoolQuery::local())?;
    println!(
        "runtime pid {}: {} pool(s), {} client(s), {} task(s) completed",
        status.pid,
        status.pools.len(),
        status.clients,
        status.completed
    );
    Ok(())
}
