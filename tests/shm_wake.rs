//! Waking a shared-memory client that sleeps on its answer, when the runtime's polling
//! worker answered it from a task it ran inline: that worker publishes `DONE` without a
//! fence and checks who sleeps on the slot once per poll round (see `client_area`'s
//! module docs). A real runtime process (this test binary re-run as a child serving the
//! probe chimod) and real futex sleeps.
//!
//! One timing check, on purpose: a client asleep also wakes on its own every 100 ms to
//! check the runtime is alive, so a missed wake-up does not hang a call, it makes it
//! late by most of that tick. So the median lateness of a few calls is checked against
//! half the tick. The file is its own test binary so that no other test's runtime
//! competes for the CPUs meanwhile.
mod probe;
mod support;

use chimaera::prelude::*;
use probe::{Probe, ProbeClient};
use std::time::{Duration, Instant};
use support::{block_on, serve_as_runtime_child, within, Launch, RuntimeProcess};

/// The runtime process: runs only as a child with the role set.
#[test]
#[ignore = "runs only as the runtime child of the tests in this file"]
fn runtime_child_entry() {
    serve_as_runtime_child(|builder| builder.module::<Probe>());
}

/// A client asleep on its answer is woken when the handler ran inline on the worker
/// that polls the client: that worker checks who sleeps on the round's answers after
/// the first once, at the end of the round (`client_area`'s module docs). Four calls
/// to a busy handler (5 ms each, never waiting) are pipelined: the first is taken
/// alone, the other three in one round while it runs, so the third and fourth answers
/// take the deferred path. Each busy run outlasts the client's spin, so the client
/// sleeps on every answer — as a thread, then as an awaiting task (its reply watcher) —
/// and must be woken within about a round. A missed wake-up shows as calls late by
/// most of the client's 100 ms liveness tick, so the median lateness is what is
/// checked.
#[test]
fn a_client_asleep_on_an_answer_given_inline_is_woken_at_once() {
    const RUN: Duration = Duration::from_millis(5);
    const CALLS: u32 = 4;
    let runtime = RuntimeProcess::start_with("asleep", "", Launch::TEST_BINARY);
    let chi = runtime.client();
    let probe = ProbeClient::create(&chi, PoolQuery::local(), "asleep").expect("probe pool");
    let median_lateness = |awaited: bool| {
        let mut late: Vec<Duration> = (0..7)
            .map(|_| {
                let start = Instant::now();
                let released = within("pipelined calls to a busy inline handler", {
                    let probe = probe.clone();
                    let ms = RUN.as_millis() as u64;
                    move || -> Result<Vec<bool>, TaskError> {
                        let calls = (0..CALLS)
                            .map(|_| probe.async_spin(PoolQuery::local(), ms))
                            .collect::<Result<Vec<_>, _>>()?;
                        match awaited {
                            false => calls.into_iter().map(|call| call.wait()).collect(),
                            true => block_on(async {
                                let mut released = Vec::new();
                                for call in calls {
                                    released.push(call.await?);
                                }
                                Ok(released)
                            }),
                        }
                    }
                });
                assert_eq!(
                    released,
                    Ok(vec![false; CALLS as usize]),
                    "awaited: {awaited}"
                );
                start.elapsed().saturating_sub(RUN * CALLS)
            })
            .collect();
        late.sort();
        late[late.len() / 2]
    };
    for awaited in [false, true] {
        let late = median_lateness(awaited);
        assert!(
            late < Duration::from_millis(50),
            "awaited: {awaited}: answers reached the sleeping client {late:?} late (median)"
        );
    }
    // Calls flowing meanwhile from other threads keep being answered too.
    let threads: Vec<_> = (0..3u64)
        .map(|t| {
            let probe = probe.clone();
            std::thread::spawn(move || {
                for round in 0..200u64 {
                    let ms = if round % 50 == 0 { 15 } else { 0 };
                    assert_eq!(probe.spin(PoolQuery::local(), ms), Ok(false), "{t}/{round}");
                }
            })
        })
        .collect();
    for thread in threads {
        within("calls beside sleeping ones", move || thread.join()).expect("a caller failed");
    }
}
