//! bdev benchmark: the file and RAM devices through the runtime, against fio and a bare
//! memory copy, in one run (about a minute once built).
//!
//! * **File device**, a 256 MiB file under `target/` opened with `O_DIRECT` (filled with
//!   data first, so reads really read): random 4 KiB writes, then reads, of blocks
//!   allocated on the device, at queue depth 1 (sync calls) and 32 (a window of 32 async
//!   calls, reaped as they complete), each against fio on the same file with the same
//!   flags (`--direct=1 --bs=4k`, `psync` at depth 1, `io_uring` at depth 32, same
//!   duration). fio missing: a note, and its figures are 0.
//!   The disk's own rate drifts a lot on a shared host (fio at depth 32 moved between
//!   23 K and 68 K ops/s within one hour on the development VM), so the client-process
//!   run then alternates with fio at depth 32 for three more rounds of 1 s per
//!   direction, fio first in one round and last in the next; `ratio_qd32` is the median
//!   of those rounds' ratios, each of two neighbouring measurements.
//! * **RAM device** of 256 MiB: random 4 KiB writes, then reads, at depth 32, after one
//!   untimed write of every block (so its memory is faulted in, as the floor's is); the
//!   physical floor for that (one thread copying random 4 KiB blocks into and out of a
//!   256 MiB buffer, mapped and advised for huge pages as the device's is); the
//!   original's shape (one client thread, sync: allocate 4 KiB, write it, free it = one
//!   op).
//!
//! Writes and reads pass 4 KiB slices of a buffer from `Client::allocate_buffer`, one
//! slice per call in flight: over shared memory they travel by reference (the device
//! copies straight from and into the client's memory); in process they are copied.
//!
//! The measured client is a separate process's runtime (`chimaera runtime start` with a
//! unique `CHI_INSTANCE`, reached with `Client::connect`, stopped with `chimaera runtime
//! stop` at the end) when that works, else the in-process runtime; an in-process run of
//! the same measurements is printed too. Each `*_iops` figure of the last line is the
//! mean of the write and read rates. Last line:
//! `bdev: qd1_iops=<n> fio_qd1_iops=<n> qd32_iops=<n> fio_qd32_iops=<n> ratio_qd32=<r>
//! ram_qd32_iops=<n> ram_floor_ops=<n> ram_ratio=<r> ram_alloc_write_free_ops=<n>`
//!
//! After the last line, a picture of the same figures (ops/s per workload, ours next to
//! fio and the memcpy floor): `plot: <target dir>/bench-plots/bdev.svg`.
//!
//! Run: `cargo bench --manifest-path chimaera-bench/Cargo.toml --bench bdev`.
//! `BDEV_BENCH_SECS` sets the seconds per phase (default 2); `BDEV_BENCH_ONLY=awf,ram`
//! (say) runs only those parts (`fio`, `file`, `floor`, `awf`, `ram`, `remote`), for
//! profiling.
use chimaera::bdev::{BdevClient, BdevParams, BdevType, Block};
use chimaera::prelude::*;
use chimaera_bench::bdev_load::{allocate_all, write_each, Rng, BLOCK, DEPTH};
use chimaera_bench::{Percentiles, Series};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const DEVICE_SIZE: u64 = 256 * MIB;

type Result<T, E = Box<dyn std::error::Error>> = std::result::Result<T, E>;

fn local() -> PoolQuery {
    PoolQuery::local()
}

/// Write and read rates of one configuration, ops per second.
#[derive(Clone, Copy, Default)]
struct Rates {
    write: f64,
    read: f64,
}

impl Rates {
    fn mean(&self) -> f64 {
        (self.write + self.read) / 2.0
    }
}

impl std::fmt::Display for Rates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "write {:>9.0}  read {:>9.0}  mean {:>9.0} ops/s",
            self.write,
            self.read,
            self.mean()
        )
    }
}

/// Sync random writes (`write`) or reads for `secs`: ops per second.
fn run_qd1(bdev: &BdevClient, blocks: &[Block], write: bool, secs: Duration) -> Result<f64> {
    // A buffer of the client's data share: passed by reference, not copied.
    let mut data = bdev.client().allocate_buffer(BLOCK as usize)?;
    data.fill(0xa5);
    let mut rng = Rng(0x1234_5678 + u64::from(write));
    let start = Instant::now();
    let mut ops = 0u64;
    while start.elapsed() < secs {
        for _ in 0..16 {
            let block = blocks[rng.below(blocks.len())];
            if write {
                bdev.write(local(), block, &data)?;
            } else {
                let got = bdev.read(local(), block, &mut data)?;
                debug_assert_eq!(got, BLOCK);
            }
            ops += 1;
        }
    }
    Ok(ops as f64 / start.elapsed().as_secs_f64())
}

/// Random writes or reads with `DEPTH` async calls in flight for `secs`: ops per second.
/// Calls are reaped in the order they complete (`Pending::first_done`), each replaced at
/// once, as fio's `io_uring` engine reaps its completions: the window stays full (reaped
/// oldest first, one slow disk read held every answer behind it back).
fn run_qd32(bdev: &BdevClient, blocks: &[Block], write: bool, secs: Duration) -> Result<f64> {
    // One 4 KiB slice of a shared buffer per call in flight (reads into one range at
    // once would be refused: the runtime never lends a range to two writers).
    let mut data = bdev
        .client()
        .allocate_buffer(BLOCK as usize * (DEPTH + 1))?;
    data.fill(0x5a);
    let mut rng = Rng(0x8765_4321 + u64::from(write));
    let start = Instant::now();
    let mut ops = 0u64;
    if write {
        let mut next_slice = 0usize;
        let mut writes = Vec::with_capacity(DEPTH);
        while start.elapsed() < secs {
            for _ in 0..64 {
                let block = blocks[rng.below(blocks.len())];
                next_slice = (next_slice + 1) % (DEPTH + 1);
                let slice = &data[next_slice * BLOCK as usize..][..BLOCK as usize];
                if writes.len() == DEPTH {
                    let ready = Pending::first_done(&writes).expect("full window");
                    Pending::wait(writes.remove(ready))?;
                    ops += 1;
                }
                writes.push(bdev.async_write(local(), block, slice)?);
            }
        }
        for pending in writes {
            pending.wait()?;
            ops += 1;
        }
    } else {
        // A read borrows its slice mutably until it completes (the runtime fills it in
        // place), then hands it back for the next read.
        let mut free: VecDeque<&mut [u8]> = data.chunks_mut(BLOCK as usize).collect();
        let mut reads = Vec::with_capacity(DEPTH);
        while start.elapsed() < secs {
            for _ in 0..64 {
                let block = blocks[rng.below(blocks.len())];
                if reads.len() == DEPTH {
                    let ready = Pending::first_done(&reads).expect("full window");
                    let pending: Pending<'_, u64> = reads.remove(ready);
                    let (got, slices) = pending.wait_and_return_buffers();
                    debug_assert_eq!(got?, BLOCK);
                    free.extend(slices);
                    ops += 1;
                }
                let slice = free.pop_front().expect("one slice more than the window");
                reads.push(bdev.async_read(local(), block, slice)?);
            }
        }
        for pending in reads {
            pending.wait()?;
            ops += 1;
        }
    }
    Ok(ops as f64 / start.elapsed().as_secs_f64())
}

/// The original's shape: allocate 4 KiB, write it, free it, sync, one thread.
fn run_alloc_write_free(bdev: &BdevClient, secs: Duration) -> Result<f64> {
    let mut data = bdev.client().allocate_buffer(BLOCK as usize)?;
    data.fill(0x3c);
    let start = Instant::now();
    let mut ops = 0u64;
    while start.elapsed() < secs {
        for _ in 0..256 {
            let blocks = bdev.allocate_blocks(local(), BLOCK)?;
            bdev.write(local(), blocks[0], &data)?;
            bdev.free_blocks(local(), blocks)?;
            ops += 1;
        }
    }
    Ok(ops as f64 / start.elapsed().as_secs_f64())
}

/// Figures of one client (in-process or from another process).
#[derive(Default)]
struct Figures {
    qd1: Rates,
    qd32: Rates,
    /// The median ratio to fio at depth 32 of the alternating rounds, if run.
    paired_qd32: Option<f64>,
    ram_qd32: Rates,
    ram_awf: f64,
}

/// Every runtime measurement through `chi`; the file device is the file at `file`.
fn measure(
    chi: &Client,
    label: &str,
    file: &Path,
    secs: Duration,
    paired: bool,
) -> Result<Figures> {
    let (qd1, qd32, paired_qd32) = if enabled("file") {
        measure_file(chi, label, file, secs, paired)?
    } else {
        (Rates::default(), Rates::default(), None)
    };
    let ram_params = BdevParams {
        bdev_type: BdevType::Ram,
        total_size: DEVICE_SIZE,
        ..BdevParams::default()
    };
    let ram = BdevClient::create(chi, local(), &format!("bdev-bench-ram-{label}"), ram_params)?;
    let mut ram_awf = 0.0;
    if enabled("awf") {
        ram_awf = run_alloc_write_free(&ram, secs)?;
        println!("[{label}] RAM allocate+write+free (sync, 1 thread): {ram_awf:.0} ops/s");
    }
    let mut ram_qd32 = Rates::default();
    if enabled("ram") {
        let blocks = allocate_all(&ram, DEVICE_SIZE)?;
        // Untimed: the device's memory is faulted in now, as the floor's is (left out,
        // that cost the write phase about a third of its rate on the development VM).
        write_each(&ram, blocks.iter().copied())?;
        ram_qd32 = Rates {
            write: run_qd32(&ram, &blocks, true, secs)?,
            read: run_qd32(&ram, &blocks, false, secs)?,
        };
        println!("[{label}] RAM qd32: {ram_qd32}");
    }
    ram.destroy_pool()?;
    Ok(Figures {
        qd1,
        qd32,
        paired_qd32,
        ram_qd32,
        ram_awf,
    })
}

/// Whether a part of the bench runs: all of them, unless `BDEV_BENCH_ONLY` lists some
/// (comma-separated: `fio`, `file`, `floor`, `awf`, `ram`, `remote`), for profiling.
fn enabled(part: &str) -> bool {
    std::env::var("BDEV_BENCH_ONLY").map_or(true, |only| only.split(',').any(|p| p == part))
}

/// Rounds in which the file device and fio alternate at depth 32 (see the module docs).
const PAIRED_ROUNDS: usize = 3;
/// Seconds per direction of a paired round (fio's `--runtime` counts whole seconds).
const PAIRED_SECS: Duration = Duration::from_secs(1);

/// The file device at depth 1 and 32, and (when `paired` and fio is there) the median
/// ratio to fio of the alternating rounds: (qd1, qd32, paired ratio).
fn measure_file(
    chi: &Client,
    label: &str,
    file: &Path,
    secs: Duration,
    paired: bool,
) -> Result<(Rates, Rates, Option<f64>)> {
    let path = file.to_string_lossy().into_owned();
    let params = BdevParams {
        bdev_type: BdevType::File,
        total_size: DEVICE_SIZE,
        io_depth: DEPTH as u32,
        alignment: 4096,
        direct: true,
    };
    let bdev = BdevClient::create(chi, local(), &path, params)?;
    let blocks = allocate_all(&bdev, DEVICE_SIZE)?;
    let qd1 = Rates {
        write: run_qd1(&bdev, &blocks, true, secs)?,
        read: run_qd1(&bdev, &blocks, false, secs)?,
    };
    println!("[{label}] file O_DIRECT qd1:  {qd1}");
    let stats = bdev.get_stats(local())?;
    println!(
        "[{label}]   device-measured mean latency at qd1: write {:.1} us, read {:.1} us",
        stats.write.mean_latency_ns as f64 / 1e3,
        stats.read.mean_latency_ns as f64 / 1e3
    );
    let qd32 = Rates {
        write: run_qd32(&bdev, &blocks, true, secs)?,
        read: run_qd32(&bdev, &blocks, false, secs)?,
    };
    println!("[{label}] file O_DIRECT qd32: {qd32}");
    let paired = if paired && enabled("fio") && fio_available() {
        paired_qd32(&bdev, &blocks, label, file)?
    } else {
        None
    };
    bdev.destroy_pool()?;
    Ok((qd1, qd32, paired))
}

/// [`PAIRED_ROUNDS`] rounds of the device and fio at depth 32, in turn: the median of
/// the rounds' ratios (ours / fio, each the mean of write and read), `None` if fio
/// failed.
fn paired_qd32(
    bdev: &BdevClient,
    blocks: &[Block],
    label: &str,
    file: &Path,
) -> Result<Option<f64>> {
    let mut ratios = Vec::with_capacity(PAIRED_ROUNDS);
    for round in 0..PAIRED_ROUNDS {
        let run_fio = || -> Option<Rates> {
            Some(Rates {
                write: fio(file, DEPTH, true, PAIRED_SECS)?,
                read: fio(file, DEPTH, false, PAIRED_SECS)?,
            })
        };
        let run_ours = || -> Result<Rates> {
            Ok(Rates {
                write: run_qd32(bdev, blocks, true, PAIRED_SECS)?,
                read: run_qd32(bdev, blocks, false, PAIRED_SECS)?,
            })
        };
        // Whichever goes first alternates, so a steady drift favours neither.
        let (theirs, ours) = if round % 2 == 0 {
            let theirs = run_fio();
            (theirs, run_ours()?)
        } else {
            let ours = run_ours()?;
            (run_fio(), ours)
        };
        let Some(theirs) = theirs.filter(|rates| rates.mean() > 0.0) else {
            return Ok(None);
        };
        let ratio = ours.mean() / theirs.mean();
        println!(
            "[{label}] paired qd32 round {round}: ours {:.0}  fio {:.0}  ratio {ratio:.2}",
            ours.mean(),
            theirs.mean()
        );
        ratios.push(ratio);
    }
    Ok((!ratios.is_empty()).then(|| Percentiles::median_of(&ratios)))
}

/// One thread copying random 4 KiB blocks into (write) and out of (read) a 256 MiB
/// buffer: ops per second, the mean of both directions.
fn memcpy_floor(secs: Duration) -> Result<Rates> {
    // The same memory as the RAM device's: an anonymous mapping advised for huge pages.
    let mut device = memmap2::MmapMut::map_anon(DEVICE_SIZE as usize)?;
    #[cfg(target_os = "linux")]
    let _ = device.advise(memmap2::Advice::HugePage);
    // Touch every page first, as the RAM device's buffer is before it is timed (see
    // `bdev_load::write_each`).
    device.iter_mut().step_by(4096).for_each(|b| *b = 1);
    let blocks = (DEVICE_SIZE / BLOCK) as usize;
    let mut rng = Rng(0x0bad_cafe);
    let mut buf = vec![0x77u8; BLOCK as usize];
    let mut run = |write: bool| {
        let start = Instant::now();
        let mut ops = 0u64;
        while start.elapsed() < secs {
            for _ in 0..1024 {
                let at = rng.below(blocks) * BLOCK as usize;
                let block = &mut device[at..at + BLOCK as usize];
                if write {
                    block.copy_from_slice(std::hint::black_box(&buf));
                } else {
                    buf.copy_from_slice(std::hint::black_box(block));
                }
                std::hint::black_box(&mut buf);
            }
            ops += 1024;
        }
        ops as f64 / start.elapsed().as_secs_f64()
    };
    Ok(Rates {
        write: run(true),
        read: run(false),
    })
}

/// fio on `file` with the bench's flags: ops per second, or `None` if fio is missing
/// or failed.
fn fio(file: &Path, depth: usize, write: bool, secs: Duration) -> Option<f64> {
    let engine = if depth == 1 { "psync" } else { "io_uring" };
    let output = Command::new("fio")
        .args([
            "--name=bdev",
            &format!("--filename={}", file.display()),
            &format!("--size={DEVICE_SIZE}"),
            "--bs=4k",
            &format!("--rw={}", if write { "randwrite" } else { "randread" }),
            "--direct=1",
            &format!("--ioengine={engine}"),
            &format!("--iodepth={depth}"),
            &format!("--runtime={}", secs.as_secs().max(1)),
            "--time_based",
            "--output-format=terse",
            "--terse-version=3",
        ])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    // Terse v3: field 8 is read IOPS, field 49 write IOPS (1-based).
    let line = String::from_utf8_lossy(&output.stdout);
    let fields: Vec<&str> = line.trim().split(';').collect();
    let at = if write { 48 } else { 7 };
    fields.get(at)?.parse().ok()
}

fn fio_available() -> bool {
    Command::new("fio")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Writes the whole file with data (so reads read the disk, not holes), then syncs.
fn fill_file(file: &Path) -> Result<()> {
    use std::io::Write;
    let mut out = std::fs::File::create(file)?;
    let chunk = vec![0xc3u8; MIB as usize];
    for _ in 0..DEVICE_SIZE / MIB {
        out.write_all(&chunk)?;
    }
    out.sync_all()?;
    Ok(())
}

/// A runtime in another process, stopped (and waited for) when dropped.
struct RuntimeProcess {
    child: Child,
    instance: String,
}

impl RuntimeProcess {
    fn start(instance: &str) -> Result<(RuntimeProcess, Client)> {
        let exe = env!("CARGO_BIN_EXE_chimaera");
        let child = Command::new(exe)
            .args(["runtime", "start"])
            .env("CHI_INSTANCE", instance)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()?;
        let mut process = RuntimeProcess {
            child,
            instance: instance.to_owned(),
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let config = RuntimeConfig {
                instance: instance.parse()?,
                ..RuntimeConfig::default()
            };
            match Client::connect_to(&config) {
                Ok(client) => return Ok((process, client)),
                Err(err) => {
                    if let Some(status) = process.child.try_wait()? {
                        return Err(format!("the runtime exited ({status}): {err}").into());
                    }
                    if Instant::now() > deadline {
                        return Err(format!("cannot connect to the runtime: {err}").into());
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }
}

impl Drop for RuntimeProcess {
    fn drop(&mut self) {
        let stopped = Command::new(env!("CARGO_BIN_EXE_chimaera"))
            .args(["runtime", "stop"])
            .env("CHI_INSTANCE", &self.instance)
            .stdout(Stdio::null())
            .status();
        if !stopped.is_ok_and(|s| s.success()) {
            eprintln!("note: `chimaera runtime stop` failed; killing the runtime");
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// Removes the bench's directory when dropped.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn main() -> Result<()> {
    let secs = Duration::from_secs(
        std::env::var("BDEV_BENCH_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(2),
    );
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    let scratch = Scratch(target.join(format!("bdev-bench-{}", std::process::id())));
    std::fs::create_dir_all(&scratch.0)?;
    let file = scratch.0.join("device");
    let file = std::fs::canonicalize(&scratch.0)?.join(file.file_name().expect("a file name"));
    if enabled("fio") || enabled("file") {
        fill_file(&file)?;
    }
    println!(
        "bdev bench: {} s per phase, 4 KiB random I/O, file {} (O_DIRECT)",
        secs.as_secs(),
        file.display()
    );

    // fio first on the freshly filled file, then the runtime on the same file.
    let (fio_qd1, fio_qd32) = if !enabled("fio") {
        (Rates::default(), Rates::default())
    } else if fio_available() {
        let qd1 = Rates {
            write: fio(&file, 1, true, secs).unwrap_or(0.0),
            read: fio(&file, 1, false, secs).unwrap_or(0.0),
        };
        let qd32 = Rates {
            write: fio(&file, DEPTH, true, secs).unwrap_or(0.0),
            read: fio(&file, DEPTH, false, secs).unwrap_or(0.0),
        };
        println!("[fio] psync qd1:     {qd1}");
        println!("[fio] io_uring qd32: {qd32}");
        (qd1, qd32)
    } else {
        println!("note: fio is not installed (apt-get install -y fio): its figures are 0");
        (Rates::default(), Rates::default())
    };

    let floor = if enabled("floor") {
        memcpy_floor(secs)?
    } else {
        Rates::default()
    };
    println!("[floor] memcpy of random 4 KiB blocks in 256 MiB: {floor}");

    let runtime = chimaera::builder().start()?;
    // The alternating rounds with fio run for the figures of the last line only: the
    // client process's, unless there is none (then an in-process run of its own).
    let remote_planned = enabled("remote");
    let in_process = measure(
        &runtime.client(),
        "in-process",
        &file,
        secs,
        !remote_planned,
    )?;
    runtime.stop();

    let instance = format!("bdev-bench-{}", std::process::id());
    let remote = if !enabled("remote") {
        None
    } else {
        match RuntimeProcess::start(&instance) {
            Ok((process, chi)) => {
                let figures = measure(&chi, "client process", &file, secs, true);
                drop(chi);
                drop(process);
                match figures {
                    Ok(figures) => Some(figures),
                    Err(err) => {
                        println!("note: the client-process run failed ({err})");
                        None
                    }
                }
            }
            Err(err) => {
                println!("note: no runtime process ({err}); reporting in-process figures");
                None
            }
        }
    };
    let (shown, how) = match &remote {
        Some(figures) => (figures, "client process"),
        None => (&in_process, "in-process"),
    };
    drop(scratch);

    let ratio = |ours: f64, theirs: f64| if theirs > 0.0 { ours / theirs } else { 0.0 };
    println!("last line: {how} figures; each *_iops is the mean of write and read");
    println!(
        "bdev: qd1_iops={:.0} fio_qd1_iops={:.0} qd32_iops={:.0} fio_qd32_iops={:.0} ratio_qd32={:.2} ram_qd32_iops={:.0} ram_floor_ops={:.0} ram_ratio={:.2} ram_alloc_write_free_ops={:.0}",
        shown.qd1.mean(),
        fio_qd1.mean(),
        shown.qd32.mean(),
        fio_qd32.mean(),
        shown
            .paired_qd32
            .unwrap_or_else(|| ratio(shown.qd32.mean(), fio_qd32.mean())),
        shown.ram_qd32.mean(),
        floor.mean(),
        ratio(shown.ram_qd32.mean(), floor.mean()),
        shown.ram_awf,
    );

    let measured = |ops: f64| (ops > 0.0).then_some(ops);
    let workloads = [
        "file qd1 write",
        "file qd1 read",
        "file qd32 write",
        "file qd32 read",
        "RAM qd32 write",
        "RAM qd32 read",
        "RAM allocate+write+free",
    ];
    let ours = [
        shown.qd1.write,
        shown.qd1.read,
        shown.qd32.write,
        shown.qd32.read,
        shown.ram_qd32.write,
        shown.ram_qd32.read,
        shown.ram_awf,
    ]
    .map(measured);
    let fio = [fio_qd1.write, fio_qd1.read, fio_qd32.write, fio_qd32.read]
        .map(measured)
        .into_iter()
        .chain([None; 3])
        .collect::<Vec<_>>();
    let memcpy = [
        None,
        None,
        None,
        None,
        measured(floor.write),
        measured(floor.read),
        None,
    ];
    let ours_label = format!("chimaera ({how})");
    let plot = chimaera_bench::workloads_svg(
        "bdev",
        "bdev: 4 KiB random I/O, ops/s (fio on the same O_DIRECT file; one thread's memcpy)",
        &workloads,
        &[
            Series {
                label: &ours_label,
                ops_per_s: &ours,
            },
            Series {
                label: "fio",
                ops_per_s: &fio,
            },
            Series {
                label: "memcpy floor",
                ops_per_s: &memcpy,
            },
        ],
    )?;
    println!("plot: {}", plot.display());
    Ok(())
}
