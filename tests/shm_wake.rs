//! Waking a shared-memory client that sleeps on its answer, when the runtime's polling
//! worker answered it from a task it ran inline: that worker publishes its answer
//! without a fence and checks who sleeps on the slot once per poll round (see
//! `client_area`'s module docs). A real runtime process (this test binary re-run as a child serving the
//! probe chimod) and real futex sleeps.
//!
//! Timing checks, on purpose: a client asleep also wakes on its own every 100 ms to
//! check the runtime is alive, so a missed wake-up does not hang a call, it makes it
//! late by most of that tick. So the median lateness of a few calls is checked against
//! half the tick. The file is its own test binary, and its tests run one at a time, so
//! that no other test's runtime competes for the CPUs meanwhile.
mod probe;
mod support;

use chimaera::prelude::*;
use chimaera_core::transport::shm::client::{Scribble, ShmConnection};
use probe::{Probe, ProbeClient};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
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
/// Tests of this file run one at a time: each checks timings against a runtime of its
/// own, which another test's runtime must not compete with for the CPUs.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A thread of a hostile client writing over words of its own area, every `every`, until
/// stopped.
struct Scribbler {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl Scribbler {
    fn start(
        connection: &Arc<ShmConnection>,
        every: Duration,
        mut scribble: impl FnMut(&ShmConnection) + Send + 'static,
    ) -> Scribbler {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::spawn({
            let stop = stop.clone();
            let connection = connection.clone();
            move || {
                while !stop.load(Ordering::Relaxed) {
                    scribble(&connection);
                    std::thread::sleep(every);
                }
            }
        });
        Scribbler { stop, thread }
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("the scribbler");
    }
}

/// A new client of `runtime`, as its probe pool `name` and its connection.
fn probe_of_new_client(runtime: &RuntimeProcess, name: &str) -> (ProbeClient, Arc<ShmConnection>) {
    let chi = runtime.client();
    let probe = ProbeClient::create(&chi, PoolQuery::local(), name).expect("probe pool");
    let connection = chi.shm_connection().expect("an shm client").clone();
    (probe, connection)
}

/// A client sleeping on its answers is woken at once (median lateness under 50 ms, as a
/// thread and as an awaiting task) while `meanwhile` happens.
fn assert_woken_at_once(probe: &ProbeClient, meanwhile: &str) {
    for awaited in [false, true] {
        let late = median_lateness(probe, awaited);
        assert!(
            late < Duration::from_millis(50),
            "awaited: {awaited}: a bystander's answers came {late:?} late while {meanwhile}"
        );
    }
}

/// How long a busy handler runs for each call of [`median_lateness`].
const RUN: Duration = Duration::from_millis(5);

/// Four calls to a busy handler ([`RUN`] each, never waiting), pipelined: the first is
/// taken alone, the other three in one round while it runs, so the third and fourth
/// answers take the deferred path. Each busy run outlasts the client's spin, so the
/// client sleeps on every answer (as a thread, or as an awaiting task: its reply
/// watcher). Returns the median, over seven batches, of how much later than the runs
/// the batch was done: a missed wake-up shows as most of the client's 100 ms
/// liveness tick.
fn median_lateness(probe: &ProbeClient, awaited: bool) -> Duration {
    const CALLS: u32 = 4;
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
}

/// A client asleep on its answer is woken when the handler ran inline on the worker
/// that polls the client: that worker checks who sleeps on the round's answers after
/// the first once, at the end of the round (`client_area`'s module docs); see
/// [`median_lateness`]. Once every sleep is over, the client's sleep count is back to 0
/// (so the runtime skips reading who sleeps again).
#[test]
fn a_client_asleep_on_an_answer_given_inline_is_woken_at_once() {
    let _alone = one_at_a_time();
    let runtime = RuntimeProcess::start_with("asleep", "", Launch::TEST_BINARY);
    let chi = runtime.client();
    let probe = ProbeClient::create(&chi, PoolQuery::local(), "asleep").expect("probe pool");
    for awaited in [false, true] {
        let late = median_lateness(&probe, awaited);
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
    let connection = chi.shm_connection().expect("an shm client").clone();
    assert_eq!(
        connection.sleepers_announced(),
        0,
        "sleeps over, the client still announces sleepers"
    );
    // Each call that slept set a `WAITING` bit in its slot; the slot's release cleared it
    // (a client that only spins never writes its slots' reply lines).
    assert!(
        connection.waiting_words().iter().all(|&word| word == 0),
        "sleeps over, slots still say who waits: {:?}",
        connection.waiting_words()
    );
}

/// The sleep count is the client's to write, so a hostile client may forge it; that
/// must only ever cost the forger its own wake-ups. A client that keeps writing 0 over
/// its count while its calls sleep gets every answer all the same (at worst a liveness
/// tick late), the runtime keeps serving it, and another client sleeping on answers
/// meanwhile is still woken at once. A count forged high (the runtime then reads who
/// sleeps on every answer, as without the count) wakes the forger's sleeping calls at
/// once.
#[test]
fn a_forged_sleep_count_costs_only_the_forger_its_wake_ups() {
    let _alone = one_at_a_time();
    let runtime = RuntimeProcess::start_with("forged-sleepers", "", Launch::TEST_BINARY);
    let (forger_probe, connection) = probe_of_new_client(&runtime, "forged");
    let scribbler = Scribbler::start(&connection, Duration::from_micros(200), |connection| {
        connection.scribble(Scribble::ControlSleepers(0));
    });
    for awaited in [false, true] {
        // Late or not, every answer arrives (`median_lateness` checks each result).
        let late = median_lateness(&forger_probe, awaited);
        assert!(
            late < Duration::from_secs(2),
            "awaited: {awaited}: the forger's answers came {late:?} late"
        );
    }
    let (bystander_probe, bystander) = probe_of_new_client(&runtime, "bystander");
    assert_woken_at_once(&bystander_probe, "another client forged its sleep count");
    scribbler.stop();
    // Forged high: the runtime reads who sleeps after every answer.
    connection.scribble(Scribble::ControlSleepers(1 << 30));
    for awaited in [false, true] {
        let late = median_lateness(&forger_probe, awaited);
        assert!(
            late < Duration::from_millis(50),
            "awaited: {awaited}: with the count forged high, answers came {late:?} late"
        );
    }
    assert_eq!(forger_probe.spin(PoolQuery::local(), 0), Ok(false));
    assert_eq!(bystander.sleepers_announced(), 0);
}

/// The answer marks and `WAITING` words of a client's slots are in its own area, so a
/// hostile client may overwrite them at any moment (the runtime only writes the marks,
/// and only reads `WAITING` to wake). That must only ever garble the forger's own
/// calls: while a thread of the forger scribbles random words over every slot's mark
/// and `WAITING` (and announces sleepers, so the runtime reads those words after every
/// answer), the forger's calls still all return, a sleeping bystander is still woken at
/// once, and once the scribbling stops the forger is served again.
#[test]
fn scribbled_answer_marks_garble_only_the_forgers_calls() {
    let _alone = one_at_a_time();
    let runtime = RuntimeProcess::start_with("scribbled-marks", "", Launch::TEST_BINARY);
    let (forger_probe, connection) = probe_of_new_client(&runtime, "forger");
    let slots = connection.waiting_words().len() as u32;
    let mut word = 0x9e37_79b9_u32;
    let scribbler = Scribbler::start(&connection, Duration::from_micros(100), move |connection| {
        for slot in 0..slots {
            // xorshift: a different word each time, never equal to the one a call waits
            // to see change (but for a 2^-32 chance).
            word ^= word << 13;
            word ^= word >> 17;
            word ^= word << 5;
            connection.scribble(Scribble::SlotMark { slot, value: word });
            connection.scribble(Scribble::SlotWaiting { slot, value: word });
        }
        connection.scribble(Scribble::ControlSleepers(1 << 30));
    });
    let forged_calls = std::thread::spawn({
        let forger_probe = forger_probe.clone();
        move || {
            for round in 0..300u64 {
                // Any result: an answer read early is the forger's own garbling.
                let _ = forger_probe.spin(PoolQuery::local(), round % 2);
            }
        }
    });
    let (bystander_probe, _) = probe_of_new_client(&runtime, "bystander");
    assert_woken_at_once(
        &bystander_probe,
        "another client scribbled over its answer marks",
    );
    within("the forger's calls while it scribbles", move || {
        forged_calls.join()
    })
    .expect("a forged call panicked");
    scribbler.stop();
    // Every slot may hold one garbled call (read early, its task answered later into
    // the next call that took the slot): a lap of the slots and more puts them right.
    let last = within("the forger's calls once it stopped", {
        let forger_probe = forger_probe.clone();
        move || {
            let mut last = Err(TaskError::NotRun);
            for _ in 0..2 * slots + 8 {
                last = forger_probe.spin(PoolQuery::local(), 0);
            }
            last
        }
    });
    assert_eq!(last, Ok(false), "the forger is served again");
    assert_eq!(bystander_probe.spin(PoolQuery::local(), 0), Ok(false));
}
