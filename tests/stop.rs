//! A stop ends even when a handler never returns (runtime/worker.rs, `Worker::shutdown`):
//! the worker running it is left to finish it on its own thread, everything the handler
//! uses stays alive, and once it returns a reaper stops that worker. The tests of this
//! binary run one at a time (`ONE_AT_A_TIME`): they count the process's worker threads.
mod probe;

use chimaera::admin_api::PoolOptions;
use chimaera::prelude::*;
use probe::{Probe, ProbeClient};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

/// Held by each test: they count this process's threads.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// A runtime with one worker and a 200 ms grace period, and a probe pool on it.
fn runtime_and_probe(pool: &str) -> (Runtime, ProbeClient) {
    let config = RuntimeConfig {
        workers_low_latency: 1,
        workers_high_latency: 0,
        stop_grace_period: Duration::from_millis(200),
        ..RuntimeConfig::default()
    };
    let rt = chimaera::builder()
        .config(config)
        .module::<Probe>()
        .start()
        .expect("runtime starts");
    let p = ProbeClient::create_with(
        &rt.client(),
        PoolQuery::local(),
        pool,
        PoolOptions::containers(1),
    )
    .expect("create probe pool");
    (rt, p)
}

/// Waits until the probe sets `flag`, failing with `never` after 30 s.
fn wait_for(flag: &AtomicBool, never: &str) {
    let started = Instant::now();
    while !flag.load(Ordering::SeqCst) {
        assert!(started.elapsed() < Duration::from_secs(30), "{never}");
        std::thread::yield_now();
    }
}

/// Stops `rt` on a thread of its own: the stop must end within two grace periods (the
/// drain, then the workers) and some slack for a busy machine, leaving the worker that
/// runs the stuck handler alive.
fn stops_leaving_its_worker(rt: Runtime) {
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let stopping = Instant::now();
        rt.stop();
        let _ = sender.send(stopping.elapsed());
    });
    let took = receiver
        .recv_timeout(Duration::from_secs(30))
        .expect("the stop hung on a handler that never returns");
    assert!(took < Duration::from_secs(10), "the stop took {took:?}");
    assert!(
        !threads_named("chimaera-worker").is_empty(),
        "the worker running the handler was stopped under it"
    );
}

/// Waits until this process has no worker or reaper thread left.
fn workers_gone() {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(threads_named("chimaera-worker").is_empty()
        && threads_named("chimaera-reaper").is_empty())
    {
        assert!(
            Instant::now() < deadline,
            "threads left after the handler returned: {:?} {:?}",
            threads_named("chimaera-worker"),
            threads_named("chimaera-reaper")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Names of this process's threads that start with `prefix`.
fn threads_named(prefix: &str) -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| name.starts_with(prefix))
        .collect()
}

#[test]
fn a_stop_returns_although_a_handler_never_does() {
    let _one = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let (rt, p) = runtime_and_probe("stuck");
    // Ten minutes of spinning without a wait: as good as never returning.
    let stuck = p.async_spin(PoolQuery::local(), 600_000).unwrap();
    wait_for(&probe::SPIN_STARTED, "the spin never started");
    stops_leaving_its_worker(rt);

    // Released, the handler returns on its worker, which then stops.
    probe::RELEASE_SPIN.store(true, Ordering::SeqCst);
    assert!(
        stuck
            .wait()
            .expect("the handler's answer reaches its caller"),
        "the spin ended by its clock, not by the release"
    );
    workers_gone();
}

/// A handler that waits in a loop (its sleeps return at once once the worker stops) on
/// a coroutine of its own, while the poller finished: the worker's thread never runs
/// out of ready coroutines, and the stop, which joined it, hung.
#[test]
fn a_stop_returns_although_a_waiting_handler_loops_forever() {
    let _one = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let (rt, p) = runtime_and_probe("looping");
    // Loops on 1 ms sleeps until `RELEASE_GUARD` is set: its first sleep hands the
    // polling role on, so the poller is free to finish at the stop.
    let looping = p.async_hold_guard(PoolQuery::local()).unwrap();
    wait_for(&probe::GUARD_HELD, "the loop never started");
    stops_leaving_its_worker(rt);
    // Released, the handler returns on its worker, which then stops.
    probe::RELEASE_GUARD.store(true, Ordering::SeqCst);
    let answer = looping.wait();
    assert!(
        matches!(answer, Ok(()) | Err(TaskError::RuntimeStopped)),
        "{answer:?}"
    );
    workers_gone();
}
