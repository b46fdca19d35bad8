//! In-process benchmark: a client thread and the runtime in one process, next to a client
//! process of the same runtime and a cache-line floor, measured in the same run.
//!
//! * (a) sync round trip of an empty MOD_NAME `custom` task from this process's main
//!   thread (the in-process transport): 31 samples of 20,000 calls, median per call;
//! * (b) the same calls from a child process over shared memory to the same runtime (this
//!   process serves a fresh instance `inprocbench-<pid>`), the same pool and worker: 31
//!   samples of 20,000 calls;
//! * (c) the floor between two threads: this thread and another ping-pong one `AtomicU64`,
//!   both spinning; 31 samples of 100,000 round trips;
//! * (d) async throughput in process: 1,000,000 tasks with a window of 1,024 in flight.
//!
//! (a), (b) and (c) are sampled in turn, one sample of each per round (the order turning
//! with the round), each after a pause that lets the worker's idle spinning end: the two
//! vCPUs of the development VM change their placement within seconds (the floor moves
//! between about 70 and 370 ns from one run to the next), so a figure measured alone says
//! more about the placement than about the code. `inproc_ipc_ratio` is the median of the
//! per-round ratios a / b: issue 10's "in-process calls no slower than calls from another
//! process", measured where a change in the machine's state hits both alike.
//!
//! Run: `cargo bench --manifest-path chimaera-bench/Cargo.toml --bench inproc`. Last
//! lines: `inproc: rtt_median_ns=<n> rtt_p10_ns=<n> rtt_p90_ns=<n> tasks_per_s=<n>
//! ipc_rtt_median_ns=<n> inproc_ipc_ratio=<r> floor_rtt_ns=<n> floor_ratio=<r>` (one line),
//! then `plot: <target dir>/bench-plots/inproc.svg`, the distributions of the three round
//! trips' samples.
//!
//! The child (`shm-client`, see `chimaera_bench::child`) dies with this process; the
//! runtime is stopped at the end, and the run fails if the instance's files are left.
use chimaera::mod_name::{CreateParams, ModNameClient};
use chimaera::prelude::*;
use chimaera::RuntimeConfig;
use chimaera_bench::child::{self, die_with_parent, say, wait_for_go, ChildProc};
use chimaera_bench::{sync_sample, Distribution, Percentiles};
use std::collections::VecDeque;
use std::error::Error;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

type Res<T> = Result<T, Box<dyn Error>>;

const SAMPLES: usize = 31;
const RTT_CALLS: u32 = 20_000;
const WARM_CALLS: u32 = 50_000;
/// Untimed calls at the start of each round-trip sample.
const SAMPLE_WARM: u32 = 2_000;
const FLOOR_ROUNDS: u64 = 100_000;
/// Untimed floor round trips at the start of each floor sample, once the peer spins.
const FLOOR_WARM: u64 = 2_000;
/// Pause before each sample, so the worker's idle spinning after the previous one (or the
/// floor peer's) is over when the next one is timed.
const GAP: Duration = Duration::from_millis(10);
const ASYNC_TASKS: u32 = 1_000_000;
const WINDOW: usize = 1024;

fn main() -> Res<()> {
    match child::role().as_deref() {
        Some("shm-client") => shm_client(),
        Some(other) => Err(format!("unknown {}={other}", child::ROLE_ENV).into()),
        None => coordinator(),
    }
}

fn coordinator() -> Res<()> {
    let instance = format!("inprocbench-{}", std::process::id());
    let config = RuntimeConfig {
        instance: instance.parse()?,
        ..RuntimeConfig::default()
    };
    let runtime = chimaera::builder().config(config).serve()?;
    let chi = runtime.client();
    let m = ModNameClient::create(&chi, PoolQuery::local(), "bench", CreateParams::default())?;
    for _ in 0..WARM_CALLS {
        m.custom(PoolQuery::local(), "", 0)?;
    }
    let mut cmd = child::command("shm-client")?;
    cmd.env("CHI_INSTANCE", &instance)
        .env_remove("CHI_SERVER_CONF");
    let mut peer = ChildProc::spawn(cmd, "shm-client")?;
    peer.expect_line("ready")?;

    let mut rounds = Vec::with_capacity(SAMPLES);
    for round in 0..SAMPLES {
        let mut sample = [0.0; 3];
        for turn in 0..3 {
            let which = (round + turn) % 3;
            std::thread::sleep(GAP);
            sample[which] = match which {
                0 => sync_sample(&m, SAMPLE_WARM, RTT_CALLS)?,
                1 => {
                    peer.send_line("go")?;
                    let line = peer.expect_line("sample")?;
                    let ns = line
                        .split_whitespace()
                        .nth(1)
                        .ok_or("an empty sample line")?;
                    ns.parse()?
                }
                _ => floor_sample(),
            };
        }
        rounds.push(sample);
    }
    peer.finish()?;

    let column = |i: usize| rounds.iter().map(|r| r[i]).collect::<Vec<f64>>();
    let (inproc, ipc, floor) = (column(0), column(1), column(2));
    let Percentiles { p10, median, p90 } = Percentiles::of(&inproc);
    let ipc_median = Percentiles::median_of(&ipc);
    let floor_median = Percentiles::median_of(&floor);
    let per_round = |of: usize| {
        Percentiles::median_of(&rounds.iter().map(|r| r[0] / r[of]).collect::<Vec<_>>())
    };
    let (ipc_ratio, floor_ratio) = (per_round(1), per_round(2));
    println!("(a) in process, sync round trip: median {median:.0} ns (p10 {p10:.0}, p90 {p90:.0})");
    println!("(b) from a client process to the same runtime: median {ipc_median:.0} ns");
    println!("(c) floor, two threads ping-pong one cache line: median {floor_median:.0} ns");
    println!("    medians of the per-round ratios: a/b {ipc_ratio:.2}, a/c {floor_ratio:.2}");

    let tasks_per_s = throughput(&m)?;
    println!("(d) async: {tasks_per_s:.0} tasks/s (window {WINDOW})");
    drop(m);
    drop(chi);
    runtime.stop();
    let left = chimaera_bench::instance_files(&instance);
    if !left.is_empty() {
        return Err(format!("the runtime left {left:?} behind").into());
    }
    println!(
        "inproc: rtt_median_ns={median:.0} rtt_p10_ns={p10:.0} rtt_p90_ns={p90:.0} \
         tasks_per_s={tasks_per_s:.0} ipc_rtt_median_ns={ipc_median:.0} \
         inproc_ipc_ratio={ipc_ratio:.2} floor_rtt_ns={floor_median:.0} \
         floor_ratio={floor_ratio:.2}"
    );
    let plot = chimaera_bench::latency_svg(
        "inproc",
        "sync round trip of an empty task: in process, from a client process, floor",
        "31 samples each, taken in turn",
        &[
            Distribution {
                label: "chimaera, in process",
                samples_ns: &inproc,
            },
            Distribution {
                label: "chimaera, from a client process",
                samples_ns: &ipc,
            },
            Distribution {
                label: "cache-line ping-pong between threads (floor)",
                samples_ns: &floor,
            },
        ],
    )?;
    println!("plot: {}", plot.display());
    Ok(())
}

/// One sample of (c): ns per round trip of one cache line between this thread and a peer
/// thread, both spinning.
fn floor_sample() -> f64 {
    let cell = AtomicU64::new(0);
    let total = FLOOR_WARM + FLOOR_ROUNDS;
    let spin_for = |want: u64| {
        let mut spins = 0u32;
        while cell.load(Ordering::Acquire) != want {
            spins = spins.wrapping_add(1);
            // Should the scheduler put both threads on one CPU, a yield now and then
            // lets the other run instead of waiting out a time slice per round trip.
            if spins.is_multiple_of(1 << 10) {
                std::thread::yield_now();
            }
            std::hint::spin_loop();
        }
    };
    std::thread::scope(|scope| {
        scope.spawn(|| {
            for i in 0..total {
                spin_for(2 * i + 1);
                cell.store(2 * i + 2, Ordering::Release);
            }
        });
        let mut start = Instant::now();
        for i in 0..total {
            if i == FLOOR_WARM {
                start = Instant::now();
            }
            cell.store(2 * i + 1, Ordering::Release);
            spin_for(2 * i + 2);
        }
        start.elapsed().as_nanos() as f64 / FLOOR_ROUNDS as f64
    })
}

/// (d): tasks per second with `WINDOW` async calls in flight, waited for in order.
fn throughput(m: &ModNameClient) -> Res<f64> {
    let mut in_flight = VecDeque::with_capacity(WINDOW);
    let start = Instant::now();
    for i in 0..ASYNC_TASKS {
        if in_flight.len() == WINDOW {
            if let Some(p) = in_flight.pop_front() {
                let _: String = Pending::wait(p)?;
            }
        }
        in_flight.push_back(m.async_custom(PoolQuery::local(), "", i)?);
    }
    for p in in_flight {
        p.wait()?;
    }
    Ok(f64::from(ASYNC_TASKS) / start.elapsed().as_secs_f64())
}

/// Child: connect to the coordinator's runtime, open its pool, warm up, say `ready`; on
/// each `go`, time one sample of sync calls and say `sample <ns per call>`.
fn shm_client() -> Res<()> {
    die_with_parent()?;
    let chi = Client::connect()?;
    let m = ModNameClient::create(&chi, PoolQuery::local(), "bench", CreateParams::default())?;
    for _ in 0..WARM_CALLS {
        m.custom(PoolQuery::local(), "", 0)?;
    }
    say("ready")?;
    while wait_for_go()? {
        say(&format!(
            "sample {}",
            sync_sample(&m, SAMPLE_WARM, RTT_CALLS)?
        ))?;
    }
    Ok(())
}
