//! A steady load on a runtime started apart, for profiling and for A/B runs of two
//! builds: connects to the instance `CHI_INSTANCE` names (as any client does), runs one
//! workload, and prints one line, `<workload> calls=<n> calls_per_s=<n> ns_per_call=<n>`.
//!
//! ```sh
//! cargo build --release --manifest-path chimaera-bench/Cargo.toml --bin chimaera --example load
//! CHI_INSTANCE=prof taskset -c 1 chimaera-bench/target/release/chimaera runtime start &
//! CHI_INSTANCE=prof taskset -c 0 chimaera-bench/target/release/examples/load sync 2000000
//! ```
//!
//! Workloads (each after a warm-up of its own kind that is not timed):
//! * `sync`: sync MOD_NAME `custom` calls, one at a time (the `ipc` bench's round trip);
//! * `pipelined`: async `custom` calls, 255 in flight, waited in order (its throughput);
//! * `bdev-write`: 4 KiB writes to random blocks of a 256 MiB RAM device, 32 in flight,
//!   from a buffer of the client's data share (the `bdev` bench's RAM writes);
//! * `bdev-read`: 4 KiB reads of random blocks of the same device, 32 in flight, into
//!   slices of a buffer of the client's data share (the `bdev` bench's RAM reads);
//! * `bdev-awf`: allocate 4 KiB, write it, free it, sync (the original's shape).
//!
//! With `LOAD_IN_PROCESS=1` the driver starts a runtime of its own with the built-in
//! defaults and calls it in process instead (its calls take the in-process path: the
//! figures to hold against a client process's).
//!
//! The pools it makes (`load-custom`, `load-ram`) stay in the runtime, so a second run
//! finds them; the RAM device is destroyed at the end of a `bdev-*` run.
use chimaera::bdev::{BdevClient, BdevParams, BdevType};
use chimaera::mod_name::{CreateParams, ModNameClient};
use chimaera::prelude::*;
use chimaera_bench::bdev_load::{allocate_all, write_each, Rng, BLOCK, DEPTH};
use std::collections::VecDeque;
use std::error::Error;
use std::process::ExitCode;
use std::time::Instant;

type Res<T> = Result<T, Box<dyn Error>>;

const USAGE: &str = "usage: load <sync|pipelined|bdev-write|bdev-read|bdev-awf> [calls]
  connects to the runtime of CHI_INSTANCE (or, with LOAD_IN_PROCESS=1, starts one in
  this process) and prints calls_per_s";
/// Async calls in flight: one less than the default `queue_depth`, as in the `ipc` bench.
const WINDOW: usize = 255;
const DEVICE: u64 = 256 << 20;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let (Some(workload), calls) = (args.next(), args.next()) else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let calls = match calls.map(|c| c.parse::<u64>()) {
        None => 1_000_000,
        Some(Ok(calls)) if calls > 0 => calls,
        Some(_) => {
            eprintln!("calls must be a positive whole number\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let run = match workload.as_str() {
        "sync" => sync,
        "pipelined" => pipelined,
        "bdev-write" => bdev_write,
        "bdev-read" => bdev_read,
        "bdev-awf" => bdev_awf,
        other => {
            eprintln!("unknown workload `{other}`\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let in_process = std::env::var_os("LOAD_IN_PROCESS").is_some_and(|v| v == "1");
    let measured = if in_process {
        chimaera::builder()
            .start()
            .map_err(Into::into)
            .and_then(|runtime| {
                let secs = run(&runtime.client(), calls);
                runtime.stop();
                secs
            })
    } else {
        Client::connect()
            .map_err(Into::into)
            .and_then(|chi| run(&chi, calls))
    };
    match measured {
        Ok(secs) => {
            println!(
                "{workload} calls={calls} calls_per_s={:.0} ns_per_call={:.1}",
                calls as f64 / secs,
                secs * 1e9 / calls as f64
            );
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("load {workload}: {err}");
            ExitCode::FAILURE
        }
    }
}

fn custom_pool(chi: &Client) -> Res<ModNameClient> {
    Ok(ModNameClient::create(
        chi,
        PoolQuery::local(),
        "load-custom",
        CreateParams::default(),
    )?)
}

/// Times `calls` sync calls; returns the seconds.
fn sync(chi: &Client, calls: u64) -> Res<f64> {
    let m = custom_pool(chi)?;
    for i in 0..20_000 {
        m.custom(PoolQuery::local(), "", i)?;
    }
    let start = Instant::now();
    for i in 0..calls {
        m.custom(PoolQuery::local(), "", i as u32)?;
    }
    Ok(start.elapsed().as_secs_f64())
}

/// Times `calls` async calls, [`WINDOW`] in flight; returns the seconds.
fn pipelined(chi: &Client, calls: u64) -> Res<f64> {
    let m = custom_pool(chi)?;
    let window = |count: u64| -> Res<()> {
        let mut in_flight = VecDeque::with_capacity(WINDOW);
        for i in 0..count {
            if in_flight.len() == WINDOW {
                if let Some(oldest) = in_flight.pop_front() {
                    let _: String = Pending::wait(oldest)?;
                }
            }
            in_flight.push_back(m.async_custom(PoolQuery::local(), "", i as u32)?);
        }
        for pending in in_flight {
            pending.wait()?;
        }
        Ok(())
    };
    window(20_000)?;
    let start = Instant::now();
    window(calls)?;
    Ok(start.elapsed().as_secs_f64())
}

fn ram_device(chi: &Client) -> Res<BdevClient> {
    let params = BdevParams {
        bdev_type: BdevType::Ram,
        total_size: DEVICE,
        ..BdevParams::default()
    };
    Ok(BdevClient::create(
        chi,
        PoolQuery::local(),
        "load-ram",
        params,
    )?)
}

/// Times `calls` writes of random blocks, 32 in flight, after one untimed write
/// of every block (a fresh device's memory is faulted in on its first writes, which
/// would dominate a short run); returns the seconds.
fn bdev_write(chi: &Client, calls: u64) -> Res<f64> {
    let bdev = ram_device(chi)?;
    let blocks = allocate_all(&bdev, DEVICE)?;
    write_each(&bdev, blocks.iter().copied())?;
    let mut random = Rng(0x1234_5678);
    let start = Instant::now();
    write_each(
        &bdev,
        (0..calls).map(|_| blocks[random.below(blocks.len())]),
    )?;
    let secs = start.elapsed().as_secs_f64();
    bdev.destroy_pool()?;
    Ok(secs)
}

/// Times `calls` reads of random blocks, 32 in flight, each into its own slice of a
/// buffer of the client's data share (after the same untimed write of every block as
/// `bdev-write`); returns the seconds.
fn bdev_read(chi: &Client, calls: u64) -> Res<f64> {
    let bdev = ram_device(chi)?;
    let blocks = allocate_all(&bdev, DEVICE)?;
    write_each(&bdev, blocks.iter().copied())?;
    let mut data = chi.allocate_buffer(BLOCK as usize * (DEPTH + 1))?;
    let mut free: VecDeque<&mut [u8]> = data.chunks_mut(BLOCK as usize).collect();
    let mut random = Rng(0x8765_4321);
    let mut reads = VecDeque::with_capacity(DEPTH);
    let start = Instant::now();
    for _ in 0..calls {
        if reads.len() == DEPTH {
            if let Some(oldest) = reads.pop_front() {
                let pending: Pending<'_, u64> = oldest;
                let (got, slices) = pending.wait_and_return_buffers();
                got?;
                free.extend(slices);
            }
        }
        let slice = free.pop_front().ok_or("one slice more than the window")?;
        let block = blocks[random.below(blocks.len())];
        reads.push_back(bdev.async_read(PoolQuery::local(), block, slice)?);
    }
    for pending in reads {
        pending.wait()?;
    }
    let secs = start.elapsed().as_secs_f64();
    bdev.destroy_pool()?;
    Ok(secs)
}

/// Times `calls` rounds of allocate, write, free (sync); returns the seconds.
fn bdev_awf(chi: &Client, calls: u64) -> Res<f64> {
    let bdev = ram_device(chi)?;
    let mut data = chi.allocate_buffer(BLOCK as usize)?;
    data.fill(0x3c);
    let round = || -> Res<()> {
        let blocks = bdev.allocate_blocks(PoolQuery::local(), BLOCK)?;
        let first = *blocks.first().ok_or("the device allocated no block")?;
        bdev.write(PoolQuery::local(), first, &data)?;
        bdev.free_blocks(PoolQuery::local(), blocks)?;
        Ok(())
    };
    for _ in 0..2_000 {
        round()?;
    }
    let start = Instant::now();
    for _ in 0..calls {
        round()?;
    }
    let secs = start.elapsed().as_secs_f64();
    bdev.destroy_pool()?;
    Ok(secs)
}
