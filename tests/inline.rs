//! Handlers run inline on the worker's polling coroutine, and a handler that waits hands
//! the polling role on before it parks (runtime/worker.rs). Every test here runs on a
//! runtime with exactly one worker, so a hand-off that did not happen would leave the
//! tasks that must end the wait unpolled: the test would hang (each wait is bounded by
//! `within`, which fails it instead). No timing assertions.
mod probe;

use chimaera::admin_api::PoolOptions;
use chimaera::mod_name::{CreateParams, ModNameClient};
use chimaera::prelude::*;
use probe::{Probe, ProbeClient};
use std::sync::mpsc;
use std::time::Duration;

/// A runtime with one worker for every lane.
fn one_worker() -> Runtime {
    let config = RuntimeConfig {
        workers_low_latency: 1,
        workers_high_latency: 0,
        ..RuntimeConfig::default()
    };
    chimaera::builder()
        .config(config)
        .module::<Probe>()
        .start()
        .expect("runtime starts")
}

fn probe(chi: &Client, name: &str) -> ProbeClient {
    ProbeClient::create_with(chi, PoolQuery::local(), name, PoolOptions::containers(1))
        .expect("create probe pool")
}

/// Runs `call` on a thread and fails the test if it has not returned within a minute
/// (rather than hanging the suite).
fn within<T: Send + 'static>(what: &str, call: impl FnOnce() -> T + Send + 'static) -> T {
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = sender.send(call());
    });
    receiver
        .recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("{what}: no answer within a minute (a hand-off missing?)"))
}

#[test]
fn inline_and_waiting_handlers_mix_on_one_worker() {
    let rt = one_worker();
    let p = probe(&rt.client(), "mix");
    // Parks until 200 ticks have run: the ticks can only run if the waiting handler
    // handed the polling role on.
    let waiting = p.async_await_ticks(PoolQuery::local(), 200).unwrap();
    let fast = p.clone();
    within("inline tasks behind a waiting one", move || {
        for round in 0..200u64 {
            fast.tick(PoolQuery::local()).unwrap();
            if round % 10 == 0 {
                assert_eq!(fast.who_am_i(PoolQuery::local()).unwrap(), 0);
            }
        }
    });
    assert!(within("the waiting task", move || waiting.wait()).unwrap() >= 200);
    // The worker goes on running inline after the hand-off.
    assert_eq!(p.who_am_i(PoolQuery::local()).unwrap(), 0);
}

#[test]
fn a_handler_waiting_on_a_subtask_of_its_own_worker_does_not_deadlock() {
    let rt = one_worker();
    let p = probe(&rt.client(), "own-subtask");
    // The subtask goes to the same container, lane and worker as its parent, which
    // holds the container's lock while it waits for it.
    let lock_holder = p.clone();
    assert_eq!(
        within("lock_then_subtask", move || lock_holder
            .lock_then_subtask(PoolQuery::local())
            .unwrap()),
        7
    );
    // 500 nested tasks on one worker, each parked on its child.
    let m = ModNameClient::create(
        &rt.client(),
        PoolQuery::local(),
        "nest",
        CreateParams::default(),
    )
    .unwrap();
    assert_eq!(
        within("wait_test", move || m
            .wait_test(PoolQuery::local(), 500)
            .unwrap()),
        500
    );
}

#[test]
fn ten_thousand_parked_tasks_while_inline_tasks_keep_flowing() {
    use std::sync::atomic::Ordering;
    let rt = one_worker();
    let p = probe(&rt.client(), "crowd");
    // One task holds the container's lock until told to let go; 10,000 more park on
    // that lock (a coroutine each, nothing polling).
    let holder = p.async_hold_guard(PoolQuery::local()).unwrap();
    within("the lock holder", || {
        while !probe::GUARD_HELD.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(1));
        }
    });
    const PARKED: usize = 10_000;
    let parked: Vec<_> = (0..PARKED)
        .map(|_| p.async_locked_leaf(PoolQuery::local()).unwrap())
        .collect();
    let fast = p.clone();
    within("inline tasks among 10,000 parked ones", move || {
        for _ in 0..300 {
            assert_eq!(fast.who_am_i(PoolQuery::local()).unwrap(), 0);
            fast.tick(PoolQuery::local()).unwrap();
        }
        assert_eq!(fast.ticks(PoolQuery::local()).unwrap(), 300);
    });
    probe::RELEASE_GUARD.store(true, Ordering::SeqCst);
    within("the lock holder lets go", move || holder.wait().unwrap());
    let sevens = within("the parked tasks", move || {
        parked
            .into_iter()
            .map(|pending| pending.wait())
            .filter(|answer| matches!(answer, Ok(7)))
            .count()
    });
    assert_eq!(sevens, PARKED);
}

#[test]
fn a_lane_starts_its_tasks_in_order_around_a_waiting_one() {
    let rt = one_worker();
    let p = probe(&rt.client(), "order");
    // All on the container's default lane. `tick` and `ticks` never wait, so each
    // `ticks` must see exactly the ticks submitted before it; a nap (a waiting task) in
    // the middle hands the polling role on and must not reorder what follows it.
    let mut ticks = Vec::new();
    let mut ticks_seen = Vec::new();
    let mut naps = Vec::new();
    for i in 0..200u64 {
        if i % 50 == 25 {
            naps.push(p.async_nap(PoolQuery::local(), 3).unwrap());
        }
        ticks.push(p.async_tick(PoolQuery::local()).unwrap());
        ticks_seen.push((i + 1, p.async_ticks(PoolQuery::local()).unwrap()));
    }
    within("ordered ticks", move || {
        for (expected, pending) in ticks_seen {
            assert_eq!(
                pending.wait().unwrap(),
                expected,
                "a task started out of order"
            );
        }
        for nap in naps {
            assert_eq!(nap.wait().unwrap(), 3);
        }
        for tick in ticks {
            tick.wait().unwrap();
        }
    });
}

#[test]
fn low_latency_lanes_are_served_before_high_latency_ones() {
    let rt = one_worker();
    let p = probe(&rt.client(), "priority");
    // The one worker is kept busy while tasks queue on a high-latency lane (lane 2),
    // then on a low-latency lane (lane 0): once free, it must start every low-latency
    // task before any high-latency one, although those came first.
    let busy = p.async_spin(PoolQuery::local(), 60_000).unwrap();
    // Only once the worker runs the spin are the others sure to queue behind it (a
    // worker between its inbox and its lanes could otherwise run the first arrivals).
    within("the spin to start", || {
        while !probe::SPIN_STARTED.load(std::sync::atomic::Ordering::SeqCst) {
            std::thread::yield_now();
        }
    });
    let high: Vec<_> = (0..20)
        .map(|_| p.async_stamp(PoolQuery::local(), 2).unwrap())
        .collect();
    let low: Vec<_> = (0..20)
        .map(|_| p.async_stamp(PoolQuery::local(), 0).unwrap())
        .collect();
    probe::RELEASE_SPIN.store(true, std::sync::atomic::Ordering::SeqCst);
    within("prioritised stamps", move || {
        assert!(busy.wait().unwrap(), "the spin was never released");
        let high: Vec<u64> = high.into_iter().map(|s| s.wait().unwrap()).collect();
        let low: Vec<u64> = low.into_iter().map(|s| s.wait().unwrap()).collect();
        let last_low = low.iter().max().unwrap();
        let first_high = high.iter().min().unwrap();
        assert!(
            last_low < first_high,
            "a high-latency task started before a low-latency one: low {low:?}, high {high:?}"
        );
        // Each lane still starts its own tasks in order.
        assert!(low.windows(2).all(|w| w[0] < w[1]), "{low:?}");
        assert!(high.windows(2).all(|w| w[0] < w[1]), "{high:?}");
    });
}
