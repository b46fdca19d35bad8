//! One conformance suite, run over every transport: each case below is written once and
//! runs through an in-process client of a runtime in this process, through a
//! shared-memory client of a runtime process (this test binary re-run as a child serving
//! the probe chimods), and through a transport written outside the core on the public
//! seam (`Relay`, as a network transport will be). A transport passes when every case
//! passes over it.
//!
//! Real parts only: real workers and coroutines, a real runtime process, real /dev/shm.
//! Each case has its own runtime (and instance). No timing assertions: deadlines only
//! bound how long a broken build can hang.
mod bulk_probe;
mod probe;
mod support;

use bulk_probe::{pattern_byte, BulkProbe, BulkProbeClient};
use chimaera::admin_api::OpenPoolError;
use chimaera::prelude::*;
use chimaera_core::bulk::{Buffer, BulkRef};
use chimaera_core::client::RawPending;
use chimaera_core::codec::{self, Bytes};
use chimaera_core::transport::{
    Call, CancelPeriodic, LendGuard, PendingCall, Results, Route, Transport, TransportKind,
};
use probe::{Probe, ProbeClient};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::task::Waker;
use std::time::{Duration, Instant};
use support::{block_on, serve_as_runtime_child, within, Launch, RuntimeProcess};

const DEADLINE: Duration = Duration::from_secs(30);

/// What keeps a case's runtime alive.
enum Host {
    InProcess(Runtime),
    Process(Box<RuntimeProcess>),
}

/// A case's runtime and a client of it through the transport under test.
struct Fixture {
    host: Host,
    chi: Client,
}

impl Fixture {
    fn probe(&self, name: &str, containers: u32) -> ProbeClient {
        ProbeClient::create_with(
            &self.chi,
            PoolQuery::local(),
            name,
            chimaera::admin_api::PoolOptions::containers(containers),
        )
        .expect("probe pool")
    }

    fn bulk_probe(&self) -> BulkProbeClient {
        BulkProbeClient::create(&self.chi, PoolQuery::local(), "bulk").expect("bulk pool")
    }

    /// Waits until the runtime is gone (a stopped in-process runtime, an exited process).
    fn wait_runtime_gone(&mut self) {
        match &mut self.host {
            Host::InProcess(runtime) => runtime.wait(),
            Host::Process(process) => {
                if let Some(child) = &mut process.child {
                    let _ = child.wait();
                }
            }
        }
    }
}

fn in_process() -> Fixture {
    let runtime = chimaera::builder()
        .module::<Probe>()
        .module::<BulkProbe>()
        .start()
        .expect("runtime starts");
    let chi = runtime.client();
    Fixture {
        host: Host::InProcess(runtime),
        chi,
    }
}

fn relayed() -> Fixture {
    let Fixture { host, chi } = in_process();
    Fixture {
        host,
        chi: Client::with_transport(Arc::new(Relay { inner: chi })),
    }
}

/// A transport written outside the core, only on the public seam: it relays every
/// operation through another client's public API. It relays an in-process client, whose
/// bulk arguments always travel by copy, so it lends nothing.
#[derive(Debug)]
struct Relay {
    inner: Client,
}

impl Transport for Relay {
    fn kind(&self) -> TransportKind {
        self.inner.transport_kind()
    }

    fn submit(
        &self,
        route: Route,
        input: Bytes,
        schedule: Option<Schedule>,
    ) -> Result<Call, TaskError> {
        let raw = self
            .inner
            .submit(route.pool, route.method, route.query, input, schedule)?;
        Ok(Call::new(RelayedCall(raw)))
    }

    fn spawn(
        &self,
        route: Route,
        input: Bytes,
        schedule: Schedule,
    ) -> Result<Option<Box<dyn CancelPeriodic>>, TaskError> {
        let handle = self
            .inner
            .spawn(route.pool, route.method, route.query, schedule, input)?;
        Ok(Some(Box::new(RelayedHandle(handle))))
    }

    fn allocate_buffer(&self, len: usize) -> Result<Buffer, BufferError> {
        self.inner.allocate_buffer(len)
    }

    fn bulk_ref<'a>(&self, bytes: &'a [u8]) -> BulkRef<'a> {
        self.inner.bulk_ref(bytes)
    }

    fn lend(&self, _bytes: &[u8]) -> Option<LendGuard> {
        None
    }

    fn borrows_caller_memory(&self) -> bool {
        false
    }

    fn peer_gone(&self) -> Option<TaskError> {
        self.inner.runtime_gone()
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

struct RelayedCall(RawPending);

impl PendingCall for RelayedCall {
    fn is_done(&self) -> bool {
        self.0.is_done()
    }

    fn wait(self: Box<Self>) -> Results {
        self.0.wait()
    }

    fn poll_done(&self, waker: &Waker) -> bool {
        self.0.poll_done(waker)
    }

    fn wait_until(&self, deadline: Instant) -> bool {
        self.0.wait_until(deadline)
    }

    fn abandon(self: Box<Self>) {
        self.0.abandon();
    }
}

struct RelayedHandle(TaskHandle);

impl CancelPeriodic for RelayedHandle {
    fn cancel(&self) -> Result<(), TaskError> {
        self.0.cancel()
    }
}

fn shared_memory() -> Fixture {
    shared_memory_with("")
}

/// [`shared_memory`] with `config` (YAML) for the runtime.
fn shared_memory_with(config: &str) -> Fixture {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let case = NEXT.fetch_add(1, Ordering::Relaxed);
    let process = RuntimeProcess::start_with(&case.to_string(), config, Launch::TEST_BINARY);
    let chi = process.client();
    Fixture {
        host: Host::Process(Box::new(process)),
        chi,
    }
}

/// The runtime process of [`shared_memory`]: runs only as a child with the role set.
#[test]
#[ignore = "runs only as the runtime child of the shared-memory cases"]
fn runtime_child_entry() {
    serve_as_runtime_child(|builder| builder.module::<Probe>().module::<BulkProbe>());
}

/// A route (chimod code run while a client's task is taken from its ring, on the
/// worker's poller) that overflows the poller's stack on a client's input fails that
/// task with a typed error; a new poller takes over, so the worker — the only one —
/// serves on. Before, the poller died holding the ring's lock: the call never returned.
#[test]
fn a_route_that_overflows_the_pollers_stack_fails_its_task_and_the_worker_serves_on() {
    let config = "workers:\n  low_latency: 1\n  high_latency: 0\ncoroutine_stack_size: 64KiB\n";
    let launch = Launch {
        quiet_stderr: true,
        ..Launch::TEST_BINARY
    };
    let process = RuntimeProcess::start_with("route-overflow", config, launch);
    let chi = process.client();
    let probe = ProbeClient::create(&chi, PoolQuery::local(), "deep").unwrap();
    for round in 0..3 {
        let result = within("a call whose route overflows", {
            let probe = probe.clone();
            move || probe.deep_route(PoolQuery::local(), 1_000_000)
        });
        assert!(
            matches!(result, Err(TaskError::StackOverflow { method: 23, .. })),
            "round {round}: got {result:?}"
        );
        let after = within("a call after the overflow", {
            let probe = probe.clone();
            move || probe.deep_route(PoolQuery::local(), 3)
        });
        assert_eq!(after, Ok(3), "round {round}");
    }
}

/// A poller pops a client's ring in batches: a route that overflows the poller's stack
/// in the middle of a batch fails that task alone, and the tasks popped with it are all
/// run by the next poller: those after it, which the dead one never routed, and those
/// before it, which it routed but had not run (the first of them staged in its own slot)
/// — none is lost with the dead poller's stack (their calls would hang) or failed in its
/// place.
#[test]
fn the_tasks_popped_in_one_batch_with_an_overflowing_route_are_all_answered() {
    let config = "workers:\n  low_latency: 1\n  high_latency: 0\ncoroutine_stack_size: 64KiB\n";
    let launch = Launch {
        quiet_stderr: true,
        ..Launch::TEST_BINARY
    };
    let process = RuntimeProcess::start_with("route-overflow-batch", config, launch);
    let chi = process.client();
    let probe = ProbeClient::create(&chi, PoolQuery::local(), "deep").unwrap();
    // Where the deep route sits among 41 calls: first, second (right after the staged
    // task), in the middle.
    for (round, deep_at) in [0usize, 1, 20, 0, 1].into_iter().enumerate() {
        // An idle worker sleeps: the calls below are all in the ring when it wakes, so
        // it pops them together.
        std::thread::sleep(Duration::from_millis(50));
        let depths = probe::depths_with_one_deep(41, deep_at);
        let results = within("a batch holding an overflowing route", {
            let probe = probe.clone();
            let depths = depths.clone();
            move || probe::deep_routes_at_once(&probe, &depths)
        });
        probe::assert_only_the_deep_route_failed(&results, &depths, deep_at, round);
    }
}

/// Each case, once per transport: `in_process::case`, `shared_memory::case` and
/// `relayed::case`.
macro_rules! over_every_transport {
    ($($case:ident),* $(,)?) => {
        mod in_process {
            $(#[test]
            fn $case() {
                super::$case(super::in_process());
            })*
        }
        mod shared_memory {
            $(#[test]
            fn $case() {
                super::$case(super::shared_memory());
            })*
        }
        mod relayed {
            $(#[test]
            fn $case() {
                super::$case(super::relayed());
            })*
        }
    };
}

over_every_transport!(
    echo_and_in_out_arguments,
    bulk_arguments_through_plain_slices_and_views,
    bulk_arguments_through_transport_buffers,
    unknown_pool_and_method_are_typed_errors,
    fire_and_forget_tasks_run,
    periodic_task_repeats_until_cancelled,
    a_query_over_several_containers_aggregates_their_replies,
    a_dropped_pending_never_leaves_a_half_written_buffer,
    a_stopped_runtime_is_reported_and_refuses_calls,
    thousands_of_calls_awaited_on_a_tokio_runtime,
    calls_awaited_without_an_executor,
    an_existing_pool_opens_by_name,
    a_late_answer_never_reaches_a_later_call,
    inputs_of_every_size_arrive_whole_also_archived_inside_another_call,
    the_first_done_of_several_calls_is_found_while_the_others_wait,
    first_done_on_a_coroutine_parks_the_coroutine_not_its_thread,
);

/// The deadline case: over shared memory with a small queue and quota, so that a leaked
/// slot or quota unit would make its burst hang (`within` turns that into a failure).
mod deadlines {
    const CONFIG: &str = "queue_depth: 16\nquotas:\n  tasks_in_flight: 18\n";
    /// Calls of the burst: the slots left for calls (one is the connection's control
    /// slot), which is also the quota left beside the three abandoned tasks.
    const BURST: u64 = 15;

    #[test]
    fn in_process() {
        super::a_call_past_its_deadline_is_abandoned_and_the_client_goes_on(
            super::in_process(),
            BURST,
        );
    }

    #[test]
    fn relayed() {
        super::a_call_past_its_deadline_is_abandoned_and_the_client_goes_on(
            super::relayed(),
            BURST,
        );
    }

    #[test]
    fn shared_memory() {
        super::a_call_past_its_deadline_is_abandoned_and_the_client_goes_on(
            super::shared_memory_with(CONFIG),
            BURST,
        );
    }

    /// Room in the quota for a queue full of abandoned tasks and a burst after them.
    const ROOMY: &str = "queue_depth: 16\nquotas:\n  tasks_in_flight: 64\n";

    #[test]
    fn dropped_in_process() {
        super::dropped_calls_free_their_places_at_once(super::in_process(), BURST);
    }

    #[test]
    fn dropped_relayed() {
        super::dropped_calls_free_their_places_at_once(super::relayed(), BURST);
    }

    #[test]
    fn dropped_shared_memory() {
        super::dropped_calls_free_their_places_at_once(super::shared_memory_with(ROOMY), BURST);
    }
}

/// `Pending::first_done` over calls that finish out of order: it finds an answered call
/// behind one that naps, sleeps (woken by the answer, not by a timer) when none is ready,
/// counts a call past its deadline as ready, and every call it passed over is still
/// waited for normally afterwards.
fn the_first_done_of_several_calls_is_found_while_the_others_wait(fixture: Fixture) {
    let p = fixture.probe("first-done", 1);
    within("first_done over calls answered out of order", move || {
        let local = PoolQuery::local;
        assert_eq!(Pending::<u64>::first_done(&[]), None);

        let mut window = vec![
            p.async_nap(local(), 1_500).unwrap(),
            p.async_nap(local(), 0).unwrap(),
        ];
        assert_eq!(Pending::first_done(&window), Some(1));
        assert!(!window[0].is_done(), "it waited for the napping call");
        assert_eq!(window.remove(1).wait(), Ok(0));

        // None ready: it sleeps until the shorter nap answers, before the longer one.
        window.push(p.async_nap(local(), 200).unwrap());
        assert!(!window[1].is_done(), "a call was ready before the wait");
        assert_eq!(Pending::first_done(&window), Some(1));
        assert!(!window[0].is_done(), "it waited for the longer nap");
        assert_eq!(window.remove(1).wait(), Ok(200));
        // The call it registered a waker on is waited for the ordinary way (a nap
        // answers its length only once it has slept it).
        assert_eq!(window.remove(0).wait(), Ok(1_500));

        // A call past its deadline is ready: its `wait` fails at once.
        let hurried = p.with_deadline(Duration::from_millis(100));
        let window = vec![
            p.async_nap(local(), 1_000).unwrap(),
            hurried.async_nap(local(), 1_000).unwrap(),
        ];
        assert_eq!(Pending::first_done(&window), Some(1));
        assert!(!window[0].is_done(), "the deadline did not wake it");
        let mut window = window.into_iter();
        let (patient, late) = (window.next().unwrap(), window.next().unwrap());
        assert_eq!(
            late.wait(),
            Err(TaskError::DeadlineExceeded { waited_ms: 100 })
        );
        assert_eq!(patient.wait(), Ok(1_000));
    });
}

/// `Pending::first_done` called by a coroutine (as a handler would) parks that coroutine,
/// not its thread: another coroutine of the same executor runs while it waits.
fn first_done_on_a_coroutine_parks_the_coroutine_not_its_thread(fixture: Fixture) {
    use chimaera_core::coroutine::{Executor, ExecutorOptions};
    let p = fixture.probe("first-done-coroutine", 1);
    let executor = Executor::start(ExecutorOptions {
        name: "first-done".into(),
        stack_size: 256 * 1024,
        cpu: None,
    })
    .expect("an executor");
    let returned = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let waiting = executor.spawn({
        let returned = returned.clone();
        move || {
            let window = vec![p.async_nap(PoolQuery::local(), 300).unwrap()];
            let ready = Pending::first_done(&window);
            returned.store(true, Ordering::SeqCst);
            (ready, window.into_iter().next().unwrap().wait())
        }
    });
    // Spawned second, on the same thread: it runs only once the first switches out.
    let meanwhile = executor.spawn(move || returned.load(Ordering::SeqCst));
    let ran_after_return = within("the other coroutine", move || meanwhile.join().unwrap());
    let (ready, napped) = within("first_done on a coroutine", move || waiting.join().unwrap());
    assert_eq!((ready, napped), (Some(0), Ok(300)));
    assert!(
        !ran_after_return,
        "the other coroutine ran only after first_done returned: the thread was blocked"
    );
}

/// `Pending::first_done` asleep on calls that will never be answered (their runtime
/// process is killed with SIGKILL mid-call) returns: waiting on a call whose runtime is
/// gone returns at once, with the error.
#[test]
fn first_done_wakes_when_the_runtime_process_is_killed() {
    let mut fixture = shared_memory();
    let p = fixture.probe("first-done-kill", 1);
    let window = vec![
        p.async_nap(PoolQuery::local(), u64::MAX).unwrap(),
        p.async_nap(PoolQuery::local(), u64::MAX).unwrap(),
    ];
    let waiting = std::thread::spawn(move || {
        let ready = Pending::first_done(&window);
        (
            ready,
            window.into_iter().map(Pending::wait).collect::<Vec<_>>(),
        )
    });
    std::thread::sleep(Duration::from_millis(200));
    let Host::Process(process) = &mut fixture.host else {
        unreachable!("a shared-memory fixture has a runtime process")
    };
    process.kill();
    let (ready, results) = within("first_done after the kill", move || waiting.join().unwrap());
    assert_eq!(ready, Some(0));
    assert!(
        results.iter().all(Result::is_err),
        "calls of a killed runtime answered: {results:?}"
    );
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| pattern_byte(seed, i)).collect()
}

fn sum(bytes: &[u8]) -> u64 {
    bytes.iter().map(|&b| u64::from(b)).sum()
}

fn echo_and_in_out_arguments(fixture: Fixture) {
    let p = fixture.probe("echo", 1);
    assert_eq!(p.who_am_i(PoolQuery::local()).unwrap(), 0);
    let mut counter = 40;
    assert_eq!(p.bump(PoolQuery::local(), &mut counter, 2).unwrap(), 40);
    assert_eq!(counter, 42, "an in-out argument comes back");
    let data: Vec<u8> = (0..=255).collect();
    assert_eq!(p.checksum(PoolQuery::local(), &data).unwrap(), sum(&data));
    // A pipeline of calls in flight at once, each answered with its own result.
    let pending: Vec<_> = (0..32u64)
        .map(|ms| p.async_nap(PoolQuery::local(), ms % 2).unwrap())
        .collect();
    for (i, call) in pending.into_iter().enumerate() {
        assert_eq!(call.wait().unwrap(), i as u64 % 2);
    }
}

/// Inputs on both sides of every size a transport treats apart (kept in the task, in a
/// buffer, in a slot, in the data share) arrive whole, also with calls of all sizes in
/// flight at once; and a call made while another call's input is being archived (on the
/// same thread, whose archiving buffer is then in use) goes through, as does the outer
/// call after it.
fn inputs_of_every_size_arrive_whole_also_archived_inside_another_call(fixture: Fixture) {
    let p = fixture.probe("sizes", 1);
    let q = PoolQuery::local();
    let sizes: Vec<usize> = (0..=96).chain([255, 256, 4095, 4096, 70_000]).collect();
    for &len in &sizes {
        let data = pattern(len as u8, len);
        assert_eq!(p.checksum(q, &data).unwrap(), sum(&data), "{len} bytes");
    }
    let inputs: Vec<Vec<u8>> = sizes.iter().map(|&len| pattern(7, len)).collect();
    let pending: Vec<_> = inputs
        .iter()
        .map(|data| p.async_checksum(q, data).unwrap())
        .collect();
    for (call, data) in pending.into_iter().zip(&inputs) {
        assert_eq!(
            call.wait().unwrap(),
            sum(data),
            "{} bytes in flight",
            data.len()
        );
    }
    let nested_input = pattern(9, 40);
    let mut nested = None;
    let raw = fixture
        .chi
        .submit_with(p.pool_id(), 14, q, &mut |buffer| {
            nested = Some(p.checksum(q, &nested_input));
            buffer.encode(&(3u64,))
        })
        .expect("the outer call is submitted");
    assert_eq!(
        nested.expect("archived").unwrap(),
        sum(&nested_input),
        "the call made while archiving"
    );
    let outer = raw.wait().pop().expect("one replica").1.unwrap();
    assert_eq!(codec::decode::<u64>(&outer, "nap output").unwrap(), 3);
}

fn bulk_arguments_through_plain_slices_and_views(fixture: Fixture) {
    let probe = fixture.bulk_probe();
    let q = PoolQuery::local();
    // Larger than a slot's payload, so an inline copy must travel through the data share.
    let input = pattern(3, 64 * 1024);
    assert_eq!(
        probe.sum_plain(q, &input).unwrap(),
        (sum(&input), input.len() as u64)
    );
    assert_eq!(probe.sum_view(q, &input).unwrap(), (sum(&input), false));
    let mut out = vec![1u8; 5000];
    assert_eq!(probe.fill_plain(q, &mut out, 4).unwrap(), 5000);
    assert_eq!(out, pattern(4, 5000));
    let mut out = vec![0u8; 5000];
    assert!(!probe.fill_view(q, &mut out, 5).unwrap());
    assert_eq!(out, pattern(5, 5000));
}

fn bulk_arguments_through_transport_buffers(fixture: Fixture) {
    let chi = &fixture.chi;
    let probe = fixture.bulk_probe();
    let q = PoolQuery::local();
    let mut buffer = chi.allocate_buffer(3 * 4096).unwrap();
    assert!(buffer.iter().all(|&b| b == 0), "a new buffer is zeroed");
    let len = buffer.len();
    buffer.copy_from_slice(&pattern(6, len));
    // The handler sees the buffer shared exactly when this transport says it travels
    // by reference.
    let by_reference = chi.bulk_ref(&buffer).is_shared();
    assert_eq!(
        probe.sum_view(q, &buffer).unwrap(),
        (sum(&pattern(6, buffer.len())), by_reference)
    );
    assert_eq!(
        probe.sum_plain(q, &buffer[100..200]).unwrap(),
        (sum(&buffer[100..200]), 100)
    );
    assert_eq!(probe.fill_view(q, &mut buffer, 7).unwrap(), by_reference);
    assert_eq!(&buffer[..], &pattern(7, buffer.len())[..]);
    probe.fill_plain(q, &mut buffer[4096..8192], 8).unwrap();
    assert_eq!(&buffer[4096..8192], &pattern(8, 4096)[..]);
    assert_eq!(
        &buffer[..4096],
        &pattern(7, 4096)[..],
        "outside the argument"
    );
    // A window of calls over buffers handed back by each completed call.
    let mut window = chi.allocate_buffer(4096).unwrap();
    let (result, mut returned) = probe
        .async_fill_view(q, &mut window, 9)
        .unwrap()
        .wait_and_return_buffers();
    assert_eq!(result.unwrap(), by_reference);
    let again = returned.next().expect("the lent buffer comes back");
    assert_eq!(again, &pattern(9, 4096)[..]);
}

fn unknown_pool_and_method_are_typed_errors(fixture: Fixture) {
    let chi = &fixture.chi;
    let ghost = ProbeClient::attach(chi, PoolId::new(999, 0));
    assert_eq!(
        ghost.who_am_i(PoolQuery::local()).unwrap_err(),
        TaskError::UnknownPool {
            pool: PoolId::new(999, 0)
        }
    );
    let p = fixture.probe("errors", 1);
    let input = codec::encode(&()).unwrap();
    // A transport may refuse at submission or answer the call with the error; either
    // way the task never runs.
    let err = chi
        .submit(p.pool_id(), 77, PoolQuery::local(), input, None)
        .and_then(|call| {
            let (_, result) = call.wait().into_iter().next().expect("one reply");
            result
        })
        .unwrap_err();
    assert_eq!(
        err,
        TaskError::UnknownMethod {
            module: "probe".into(),
            method: 77
        }
    );
    assert!(matches!(
        p.who_am_i(PoolQuery::direct_id(4)),
        Err(TaskError::NoSuchContainer { container: 4, .. })
    ));
    // A failing task fails alone.
    assert_eq!(
        p.explode(PoolQuery::local(), "boom").unwrap_err(),
        TaskError::Panicked {
            message: "boom".into()
        }
    );
    assert_eq!(p.who_am_i(PoolQuery::local()).unwrap(), 0);
    assert_eq!(chi.runtime_gone(), None);
}

fn fire_and_forget_tasks_run(fixture: Fixture) {
    let p = fixture.probe("forget", 1);
    for _ in 0..10 {
        let handle = p
            .spawn_tick(PoolQuery::local(), Schedule::FireAndForget)
            .unwrap();
        handle
            .cancel()
            .expect("cancelling a fire-and-forget task does nothing");
    }
    let deadline = Instant::now() + DEADLINE;
    while p.ticks(PoolQuery::local()).unwrap() < 10 {
        assert!(Instant::now() < deadline, "fire-and-forget tasks never ran");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(p.ticks(PoolQuery::local()).unwrap(), 10, "each ran once");
}

fn periodic_task_repeats_until_cancelled(fixture: Fixture) {
    let p = fixture.probe("periodic", 1);
    let periodic = p
        .spawn_tick(
            PoolQuery::local(),
            Schedule::Periodic(Duration::from_millis(2)),
        )
        .unwrap();
    let deadline = Instant::now() + DEADLINE;
    while p.ticks(PoolQuery::local()).unwrap() < 3 {
        assert!(
            Instant::now() < deadline,
            "the periodic task did not repeat"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    periodic.cancel().unwrap();
    // After cancel the task ends at its next wake-up; then the count stays put.
    let mut settled = p.ticks(PoolQuery::local()).unwrap();
    loop {
        std::thread::sleep(Duration::from_millis(20));
        let now = p.ticks(PoolQuery::local()).unwrap();
        if now == settled {
            break;
        }
        assert!(Instant::now() < deadline, "the cancelled task kept running");
        settled = now;
    }
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(p.ticks(PoolQuery::local()).unwrap(), settled);
}

fn a_query_over_several_containers_aggregates_their_replies(fixture: Fixture) {
    let p = fixture.probe("replicas", 3);
    let replies: Vec<_> = p
        .async_who_am_i(PoolQuery::broadcast())
        .unwrap()
        .wait_all()
        .into_iter()
        .map(|(container, result)| (container, result.unwrap()))
        .collect();
    assert_eq!(replies, vec![(0, 0), (1, 1), (2, 2)]);
    assert_eq!(
        p.who_am_i(PoolQuery::broadcast()).unwrap(),
        0,
        "lowest wins"
    );
    let raw = fixture
        .chi
        .submit(
            p.pool_id(),
            probe::probe_tasks::WHO_AM_I,
            PoolQuery::range(1, 2),
            codec::encode(&()).unwrap(),
            None,
        )
        .unwrap()
        .wait();
    let containers: Vec<_> = raw.iter().map(|(container, _)| *container).collect();
    assert_eq!(containers, vec![1, 2]);
}

/// Dropping a `Pending` whose handler writes a lent buffer later: either the drop waited
/// (the runtime wrote the caller's memory in place) or the result was discarded (the
/// runtime wrote a copy); never a half-written buffer, never a write into a buffer
/// allocated after the drop, and the runtime keeps serving.
fn a_dropped_pending_never_leaves_a_half_written_buffer(fixture: Fixture) {
    let chi = &fixture.chi;
    let probe = fixture.bulk_probe();
    let q = PoolQuery::local();
    let mut buffer = chi.allocate_buffer(4096).unwrap();
    let pending = probe.async_fill_later(q, &mut buffer, 200).unwrap();
    drop(pending);
    let filled = buffer.iter().all(|&b| b == 0xab);
    assert!(
        filled || buffer.iter().all(|&b| b == 0),
        "a dropped call left a half-written buffer"
    );
    if chi.bulk_ref(&buffer).is_shared() {
        assert!(filled, "a call writing caller memory was not waited for");
    }
    drop(buffer);
    let fresh = chi.allocate_buffer(4096).unwrap();
    let deadline = Instant::now() + DEADLINE;
    while probe.finished(q).unwrap() < 1 {
        assert!(Instant::now() < deadline, "the task never finished");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        fresh.iter().all(|&b| b == 0),
        "a buffer passed to no task was written"
    );
}

fn a_stopped_runtime_is_reported_and_refuses_calls(mut fixture: Fixture) {
    let p = fixture.probe("stopping", 1);
    assert_eq!(fixture.chi.runtime_gone(), None);
    chimaera::AdminClient::attach(&fixture.chi, PoolId::ADMIN)
        .stop_runtime(PoolQuery::local(), 1_000)
        .unwrap();
    fixture.wait_runtime_gone();
    let deadline = Instant::now() + DEADLINE;
    while fixture.chi.runtime_gone().is_none() {
        assert!(Instant::now() < deadline, "the transport never noticed");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(fixture.chi.runtime_gone(), Some(TaskError::RuntimeStopped));
    assert_eq!(
        p.who_am_i(PoolQuery::local()),
        Err(TaskError::RuntimeStopped)
    );
}

/// Thousands of calls in flight at once from tasks of a multi-thread tokio runtime, each
/// awaited (no `spawn_blocking`): every one is answered, with the right value.
fn thousands_of_calls_awaited_on_a_tokio_runtime(fixture: Fixture) {
    const CALLS: u32 = 4000;
    let p = fixture.probe("async", 2);
    let executor = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_time()
        .build()
        .unwrap();
    let answers = executor.block_on(async move {
        let calls: Vec<_> = (0..CALLS)
            .map(|i| {
                let p = p.clone();
                tokio::spawn(async move {
                    let container = p.async_who_am_i(PoolQuery::direct_id(i % 2))?.await?;
                    // Some calls wait in the runtime, so their futures are really woken.
                    let napped = p.async_nap(PoolQuery::local(), u64::from(i % 3))?.await?;
                    Ok::<_, TaskError>((i, container, napped))
                })
            })
            .collect();
        let all = async {
            let mut answers = Vec::with_capacity(calls.len());
            for call in calls {
                answers.push(call.await.expect("the task ran to its end"));
            }
            answers
        };
        tokio::time::timeout(DEADLINE, all)
            .await
            .expect("every awaited call is answered")
    });
    assert_eq!(answers.len(), CALLS as usize);
    for answer in answers {
        let (i, container, napped) = answer.expect("call succeeds");
        assert_eq!((container, napped), (i % 2, u64::from(i % 3)));
    }
}

/// `.await` needs no executor: plain threads each poll their calls with a waker that
/// unparks them, several calls in flight per thread.
fn calls_awaited_without_an_executor(fixture: Fixture) {
    let p = fixture.probe("plain", 1);
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let p = p.clone();
            std::thread::spawn(move || {
                block_on(async {
                    let mut sum = 0;
                    for round in 0..50u64 {
                        let first = p.async_nap(PoolQuery::local(), (t + round) % 2).unwrap();
                        let second = p.async_bump(PoolQuery::local(), &round, t).unwrap();
                        let (old, new) = second.await.unwrap();
                        assert_eq!((old, new), (round, round + t));
                        sum += first.await.unwrap();
                    }
                    sum
                })
            })
        })
        .collect();
    for (t, thread) in threads.into_iter().enumerate() {
        let t = t as u64;
        let expected: u64 = (0..50).map(|round| (t + round) % 2).sum();
        assert_eq!(thread.join().unwrap(), expected);
    }
}

/// Calls whose handlers never finish — one sleeps (as good as) forever holding the
/// container's lock, one waits for that lock — fail with `DeadlineExceeded` in time,
/// through the client's default deadline and through a per-call `wait_timeout`. The
/// client goes on, and nothing they held is leaked: a burst of `burst` calls all in
/// flight at once (they wait for a tick sent last) fits the slots and quota left.
fn a_call_past_its_deadline_is_abandoned_and_the_client_goes_on(fixture: Fixture, burst: u64) {
    let stuck = fixture.probe("stuck", 1);
    let hurried = stuck.with_deadline(Duration::from_millis(100));
    let exceeded = |waited_ms| TaskError::DeadlineExceeded { waited_ms };
    let (forever, waits_for_the_lock, overridden) =
        within("calls past their deadline", move || {
            let forever = hurried.nap_locked(PoolQuery::local(), u64::MAX);
            let waits_for_the_lock = hurried.locked_leaf(PoolQuery::local());
            // No default deadline on `stuck`: a deadline for this call only.
            let overridden = stuck
                .async_locked_leaf(PoolQuery::local())
                .unwrap()
                .wait_timeout(Duration::from_millis(50));
            (forever, waits_for_the_lock, overridden)
        });
    assert_eq!(forever, Err(exceeded(100)));
    assert_eq!(waits_for_the_lock, Err(exceeded(100)));
    assert_eq!(overridden, Err(exceeded(50)));

    assert_eq!(
        fixture.probe("after", 1).who_am_i(PoolQuery::local()),
        Ok(0),
        "the client goes on"
    );
    a_burst_fits(&fixture, burst);
}

/// `burst` calls all in flight at once (they wait for a tick sent last) are answered.
fn a_burst_fits(fixture: &Fixture, burst: u64) {
    let chi = fixture.chi.clone();
    let answers = within("a burst after abandoned calls", move || {
        // Made in here: with the client's slots leaked, even this call would wait forever.
        let p = ProbeClient::create(&chi, PoolQuery::local(), "burst").expect("burst pool");
        let waiting: Vec<_> = (1..burst)
            .map(|_| p.async_await_ticks(PoolQuery::local(), 1).unwrap())
            .collect();
        p.tick(PoolQuery::local()).unwrap();
        waiting.into_iter().map(Pending::wait).collect::<Vec<_>>()
    });
    assert_eq!(answers, vec![Ok(1); burst as usize - 1]);
}

/// Dropping a `Pending` before its answer (what an executor's timeout does to a future)
/// abandons the call: a queue full of calls whose handlers never finish, all dropped,
/// leaves room for a burst as large.
fn dropped_calls_free_their_places_at_once(fixture: Fixture, burst: u64) {
    let stuck = fixture.probe("stuck", 1);
    let dropped: Vec<_> = (0..burst)
        .map(|_| stuck.async_nap(PoolQuery::local(), u64::MAX).unwrap())
        .collect();
    drop(dropped);
    a_burst_fits(&fixture, burst);
}

/// A call abandoned past its deadline is answered late while the client goes on calling:
/// the late answer reaches none of the later calls, though the place it was to go to (an
/// in-process call slot, a shared-memory slot) serves them meanwhile.
fn a_late_answer_never_reaches_a_later_call(fixture: Fixture) {
    const LATE_MS: u64 = 200;
    let probe = fixture.probe("late", 1);
    let abandoned = probe
        .async_nap(PoolQuery::local(), LATE_MS)
        .unwrap()
        .wait_timeout(Duration::from_millis(1));
    assert_eq!(abandoned, Err(TaskError::DeadlineExceeded { waited_ms: 1 }));
    let calls = within("calls while a late answer comes", move || {
        // Past the late answer: every call after the abandoned one gets its own.
        let until = Instant::now() + Duration::from_millis(3 * LATE_MS);
        let mut calls = 0u64;
        while Instant::now() < until {
            assert_eq!(
                probe.nap(PoolQuery::local(), 0),
                Ok(0),
                "call {calls} after the abandoned one"
            );
            calls += 1;
        }
        calls
    });
    assert!(calls > 0);
}

/// A typed client opens an existing pool by its name alone; a missing name and a pool
/// of another module are typed errors.
fn an_existing_pool_opens_by_name(fixture: Fixture) {
    let made = fixture.probe("named", 2);
    let opened = ProbeClient::open(&fixture.chi, "named").expect("the pool exists");
    assert_eq!(opened.pool_id(), made.pool_id());
    assert_eq!(opened.who_am_i(PoolQuery::direct_id(1)), Ok(1));
    assert_eq!(
        ProbeClient::open(&fixture.chi, "nameless").unwrap_err(),
        OpenPoolError::NoSuchPool {
            name: "nameless".into()
        }
    );
    assert_eq!(
        BulkProbeClient::open(&fixture.chi, "named").unwrap_err(),
        OpenPoolError::OtherModule {
            name: "named".into(),
            module: "probe".into(),
            expected: "bulk_probe".into(),
        }
    );
}
