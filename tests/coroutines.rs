//! The runtime's coroutine budget (`max_coroutines`, runtime/worker.rs "Spare
//! coroutines"): every task that waits keeps a coroutine and its stack, and a stack
//! overflow leaks its own, so a runtime left unbounded ran into the kernel's limit of
//! memory mappings and hung (or aborted). A worker with no coroutine to spare fails its
//! tasks with `NoCoroutine` and serves again once a waiting task finishes.
//!
//! Each test has a runtime of its own with one worker and a small budget; every wait is
//! bounded by `within`, which fails the test rather than hang it. No timing assertions.
mod probe;
mod support;

use chimaera::mod_name::{CreateParams, ModNameClient};
use chimaera::prelude::*;
use probe::{Probe, ProbeClient};
use std::sync::atomic::Ordering;
use std::time::Duration;
use support::within;

/// A runtime with one worker and room for `max_coroutines` coroutines.
fn one_worker(max_coroutines: u32) -> Runtime {
    let config = RuntimeConfig {
        workers_low_latency: 1,
        workers_high_latency: 0,
        max_coroutines: Some(max_coroutines),
        ..RuntimeConfig::default()
    };
    chimaera::builder()
        .config(config)
        .module::<Probe>()
        .start()
        .expect("runtime starts")
}

fn is_no_coroutine(result: &Result<impl Sized, TaskError>, max: u64) -> bool {
    matches!(result, Err(TaskError::NoCoroutine { max: m, .. }) if *m == max)
}

#[test]
fn a_worker_out_of_coroutines_refuses_tasks_then_serves_again() {
    const MAX: u32 = 16;
    const LEAVES: usize = 40;
    let rt = one_worker(MAX);
    let p = ProbeClient::create(&rt.client(), PoolQuery::local(), "budget").unwrap();
    // One task holds the container's lock until told to let go; every `locked_leaf`
    // then parks on it, each keeping a coroutine: more than the budget holds.
    let holder = p.async_hold_guard(PoolQuery::local()).unwrap();
    within("the lock holder", || {
        while !probe::GUARD_HELD.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(1));
        }
    });
    let leaves: Vec<_> = (0..LEAVES)
        .map(|_| p.async_locked_leaf(PoolQuery::local()).unwrap())
        .collect();
    // The lane runs its tasks in order: by the time this tick is answered, every leaf
    // has parked or been refused. The worker has no coroutine to spare, so the tick,
    // which would not even wait, is refused too.
    let ticker = p.clone();
    let tick = within("a tick", move || ticker.tick(PoolQuery::local()));
    assert!(is_no_coroutine(&tick, u64::from(MAX)), "tick: {tick:?}");
    let (refused, parked): (Vec<_>, Vec<_>) = leaves.into_iter().partition(|leaf| leaf.is_done());
    assert!(!refused.is_empty(), "no leaf was refused");
    assert!(!parked.is_empty(), "no leaf parked");
    assert!(
        parked.len() < MAX as usize,
        "{} leaves parked",
        parked.len()
    );
    for leaf in refused {
        let answer = leaf.wait();
        assert!(is_no_coroutine(&answer, u64::from(MAX)), "leaf: {answer:?}");
    }
    // The holder lets go: its coroutine is spare again, the parked leaves run, and the
    // worker runs what comes after.
    probe::RELEASE_GUARD.store(true, Ordering::SeqCst);
    within("the lock holder lets go", move || holder.wait().unwrap());
    let parked_count = parked.len();
    let sevens = within("the parked leaves", move || {
        parked
            .into_iter()
            .map(|leaf| leaf.wait())
            .filter(|answer| matches!(answer, Ok(7)))
            .count()
    });
    assert_eq!(sevens, parked_count);
    let after = p.clone();
    within("tasks after the recovery", move || {
        for _ in 0..3 {
            after.tick(PoolQuery::local()).unwrap();
        }
        // The refused tick never ran.
        assert_eq!(after.ticks(PoolQuery::local()).unwrap(), 3);
        // Waiting tasks are made and parked again.
        let naps: Vec<_> = (0..4)
            .map(|_| after.async_nap(PoolQuery::local(), 20).unwrap())
            .collect();
        for nap in naps {
            assert_eq!(nap.wait().unwrap(), 20);
        }
    });
}

#[test]
fn stack_overflows_past_the_budget_leave_a_runtime_that_answers() {
    // Each overflow leaks its coroutine's stack, which stays counted; unbounded, about
    // 32,700 of them stopped a runtime at the kernel's mapping limit, unanswering.
    const MAX: u32 = 8;
    let rt = one_worker(MAX);
    let m = ModNameClient::create(
        &rt.client(),
        PoolQuery::local(),
        "overflows",
        CreateParams::default(),
    )
    .unwrap();
    let answers = within("overflowing calls", move || {
        (0..2 * MAX)
            .map(|_| m.overflow_test(PoolQuery::local(), &mut [0u8; 16], false, 0, true))
            .collect::<Vec<_>>()
    });
    let overflows = answers
        .iter()
        .take_while(|answer| matches!(answer, Err(TaskError::StackOverflow { .. })))
        .count();
    assert!(overflows >= 1, "answers: {answers:?}");
    assert!(overflows < MAX as usize, "answers: {answers:?}");
    // Once the budget is spent on leaked stacks, every task fails at once, saying why.
    for answer in &answers[overflows..] {
        assert!(
            is_no_coroutine(answer, u64::from(MAX)),
            "answers: {answers:?}"
        );
    }
    let chi = rt.client();
    let custom = within("a call after the overflows", move || {
        let m = ModNameClient::create(
            &chi,
            PoolQuery::local(),
            "overflows",
            CreateParams::default(),
        )?;
        m.custom(PoolQuery::local(), "still there", 0)
    });
    assert!(
        is_no_coroutine(&custom, u64::from(MAX)),
        "custom: {custom:?}"
    );
    // The runtime still stops cleanly.
    within("the stop", move || rt.stop());
}
