//! In-process benchmark: a client thread and the runtime in one process.
//!
//! * sync round trip of an empty MOD_NAME `custom` task: 31 samples of 20,000 calls,
//!   median per call;
//! * async throughput: 1,000,000 tasks submitted with a window of 1,024 in flight.
//!
//! Run: `cargo bench --manifest-path chimaera-bench/Cargo.toml --bench inproc`. Last
//! line: `inproc: rtt_median_ns=<n> rtt_p10_ns=<n> rtt_p90_ns=<n> tasks_per_s=<n>`, then
//! `plot: <target dir>/bench-plots/inproc.svg`, the distribution of the 31 samples.
use chimaera::mod_name::{CreateParams, ModNameClient};
use chimaera::prelude::*;
use chimaera_bench::Distribution;
use std::collections::VecDeque;
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let runtime = chimaera::builder().start()?;
    let chi = runtime.client();
    let m = ModNameClient::create(&chi, PoolQuery::local(), "bench", CreateParams::default())?;

    for _ in 0..50_000 {
        m.custom(PoolQuery::local(), "", 0)?;
    }
    let mut samples = Vec::new();
    for _ in 0..31 {
        let calls = 20_000u32;
        let start = Instant::now();
        for i in 0..calls {
            m.custom(PoolQuery::local(), "", i)?;
        }
        samples.push(start.elapsed().as_nanos() as f64 / f64::from(calls));
    }
    samples.sort_by(f64::total_cmp);
    let (p10, median, p90) = (samples[3], samples[15], samples[27]);
    println!("sync round trip: median {median:.0} ns (p10 {p10:.0}, p90 {p90:.0})");

    let total = 1_000_000u32;
    let window = 1024;
    let mut in_flight = VecDeque::with_capacity(window);
    let start = Instant::now();
    for i in 0..total {
        if in_flight.len() == window {
            if let Some(p) = in_flight.pop_front() {
                let _: String = Pending::wait(p)?;
            }
        }
        in_flight.push_back(m.async_custom(PoolQuery::local(), "", i)?);
    }
    for p in in_flight {
        p.wait()?;
    }
    let tasks_per_s = f64::from(total) / start.elapsed().as_secs_f64();
    println!("async: {tasks_per_s:.0} tasks/s (window {window})");
    runtime.stop();
    println!(
        "inproc: rtt_median_ns={median:.0} rtt_p10_ns={p10:.0} rtt_p90_ns={p90:.0} tasks_per_s={tasks_per_s:.0}"
    );
    let plot = chimaera_bench::latency_svg(
        "inproc",
        "in-process sync round trip of an empty task",
        "31 samples of 20,000 calls",
        &[Distribution {
            label: "chimaera, in process",
            samples_ns: &samples,
        }],
    )?;
    println!("plot: {}", plot.display());
    Ok(())
}
