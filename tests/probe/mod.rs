//! The probe chimod: tasks whose answers tell a test where and how they ran.
//! Used by the runtime tests; its manifest sits next to this file.
use chimaera::prelude::*;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Containers destroyed so far, across all probe pools of the process.
pub(crate) static DESTROYED: AtomicU64 = AtomicU64::new(0);
/// The pools whose containers were dropped (freed, not just destroyed), by name.
#[allow(dead_code)] // Not every test file that runs probes asks.
pub(crate) static DROPPED_POOLS: Mutex<Vec<String>> = Mutex::new(Vec::new());
/// Set by `hold_guard` once it holds its container's mutex.
pub(crate) static GUARD_HELD: AtomicBool = AtomicBool::new(false);
/// `hold_guard` lets its container's mutex go once this is set.
pub(crate) static RELEASE_GUARD: AtomicBool = AtomicBool::new(false);
/// Set by `spin` once it runs.
pub(crate) static SPIN_STARTED: AtomicBool = AtomicBool::new(false);
/// `spin` stops spinning once this is set.
pub(crate) static RELEASE_SPIN: AtomicBool = AtomicBool::new(false);

#[chimod(
    name = "probe",
    manifest = "chimaera_mod.yaml",
    lanes(low = 2, high = 1)
)]
pub(crate) struct Probe {
    /// Its pool's name, recorded in [`DROPPED_POOLS`] when the container is dropped.
    pool: String,
    container: u32,
    ticks: AtomicU64,
    guard: CoMutex,
    /// The next number `stamp` hands out.
    stamps: AtomicU64,
}

#[chimod(manifest = "chimaera_mod.yaml")]
impl Probe {
    #[task(method = 0)]
    fn create(ctx: &mut RunContext) -> Self {
        Probe {
            pool: ctx.pool_name().to_owned(),
            container: ctx.container_id(),
            ticks: AtomicU64::new(0),
            guard: CoMutex::new(()),
            stamps: AtomicU64::new(0),
        }
    }

    #[task(method = 1)]
    fn destroy(&self, _ctx: &mut RunContext) {
        DESTROYED.fetch_add(1, Ordering::SeqCst);
    }

    /// The container that ran the task, as the container itself knows it.
    #[task(method = 10)]
    fn who_am_i(&self, ctx: &mut RunContext) -> u32 {
        assert_eq!(ctx.container_id(), self.container);
        self.container
    }

    /// The lane the task was queued on; `key` picks it (see `lane_by_key`).
    #[task(method = 11, route = lane_by_key)]
    fn lane_of(&self, ctx: &mut RunContext, key: u32) -> u32 {
        let _ = key;
        ctx.lane()
    }

    /// The container that ran the task; `Dynamic` queries go to the container `pick` names.
    #[task(method = 12, dynamic = pick_container)]
    fn picked(&self, ctx: &mut RunContext, pick: u32) -> u32 {
        let _ = pick;
        ctx.container_id()
    }

    /// Panics: the task must fail alone.
    #[task(method = 13)]
    fn explode(&self, message: &str) -> u32 {
        panic!("{message}")
    }

    /// Parks for `ms` milliseconds, then returns `ms`.
    #[task(method = 14)]
    fn nap(&self, ctx: &mut RunContext, ms: u64) -> u64 {
        ctx.sleep(Duration::from_millis(ms));
        ms
    }

    /// Adds `by` to the in-out `counter`; returns the old value.
    #[task(method = 15)]
    fn bump(&self, counter: &mut u64, by: u64) -> u64 {
        let old = *counter;
        *counter += by;
        old
    }

    /// Counts one tick.
    #[task(method = 16)]
    fn tick(&self) {
        self.ticks.fetch_add(1, Ordering::SeqCst);
    }

    /// Ticks counted by this container.
    #[task(method = 17)]
    fn ticks(&self) -> u64 {
        self.ticks.load(Ordering::SeqCst)
    }

    /// Sum of the bytes, wrapping.
    #[task(method = 18)]
    fn checksum(&self, data: &[u8]) -> u64 {
        data.iter().map(|b| u64::from(*b)).sum()
    }

    /// Holds the container's mutex while a subtask takes the same mutex: the subtask
    /// shares the TaskNode group, so it must get through.
    #[task(method = 19)]
    fn lock_then_subtask(&self, ctx: &mut RunContext) -> Result<u32, TaskError> {
        let _held = self.guard.lock(ctx);
        let me = ProbeClient::attach(&ctx.client(), ctx.pool_id());
        me.locked_leaf(PoolQuery::local())
    }

    /// Takes the container's mutex and returns 7.
    #[task(method = 20)]
    fn locked_leaf(&self, ctx: &mut RunContext) -> u32 {
        let _held = self.guard.lock(ctx);
        7
    }

    /// Sleeps `ms` holding the container's mutex (`u64::MAX`: as good as forever, and
    /// every `locked_leaf` of the container waits that long).
    #[task(method = 21)]
    fn nap_locked(&self, ctx: &mut RunContext, ms: u64) -> u64 {
        let _held = self.guard.lock(ctx);
        ctx.sleep(Duration::from_millis(ms));
        ms
    }

    /// Waits until the container has been ticked `ticks` times; returns the count.
    #[task(method = 22)]
    fn await_ticks(&self, ctx: &mut RunContext, ticks: u64) -> u64 {
        loop {
            let now = self.ticks.load(Ordering::SeqCst);
            if now >= ticks {
                return now;
            }
            ctx.sleep(Duration::from_millis(1));
        }
    }

    /// Returns `depth`; its route first recurses `depth` frames of 1 KiB: a route whose
    /// stack use a client's input decides.
    #[task(method = 23, route = recurse_then_route)]
    fn deep_route(&self, depth: u32) -> u32 {
        depth
    }

    /// Holds the container's mutex (setting `GUARD_HELD`) until `RELEASE_GUARD` is set,
    /// parking between looks; logs `probe: releasing the guard` before it lets go.
    #[task(method = 24)]
    fn hold_guard(&self, ctx: &mut RunContext) {
        let _held = self.guard.lock(ctx);
        GUARD_HELD.store(true, Ordering::SeqCst);
        while !RELEASE_GUARD.load(Ordering::SeqCst) {
            ctx.sleep(Duration::from_millis(1));
        }
        tracing::info!("probe: releasing the guard");
    }

    /// Takes the container's mutex (waiting while another task holds it), then logs
    /// `probe: after the wait` with `note`; returns `note`.
    #[task(method = 25)]
    fn log_after_lock(&self, ctx: &mut RunContext, note: u32) -> u32 {
        let _held = self.guard.lock(ctx);
        tracing::info!(note, "probe: after the wait");
        note
    }

    /// The node and the container that ran the task.
    #[task(method = 26)]
    fn where_am_i(&self, ctx: &mut RunContext) -> (u32, u32) {
        (ctx.node(), ctx.container_id())
    }

    /// Asks container `container` of this pool, from inside this task (a nested task,
    /// to another node when the container lives there), where it runs.
    #[task(method = 27)]
    fn relay(&self, ctx: &mut RunContext, container: u32) -> Result<(u32, u32), TaskError> {
        let pool = ProbeClient::attach(&ctx.client(), ctx.pool_id());
        pool.where_am_i(PoolQuery::direct_id(container))
    }

    /// The node and container that ran the task; `Dynamic` queries go to a container on
    /// node `node` (the hook sees the pool's topology).
    #[task(method = 28, dynamic = container_on_node)]
    fn on_node(&self, ctx: &mut RunContext, node: u32) -> (u32, u32) {
        let _ = node;
        (ctx.node(), ctx.container_id())
    }

    /// Keeps its worker busy without ever waiting (no hand-off: nothing else runs on
    /// that worker meanwhile) until [`RELEASE_SPIN`] is set, or `ms` passed; returns
    /// whether it was released. Sets [`SPIN_STARTED`] first.
    #[task(method = 29)]
    fn spin(&self, ms: u64) -> bool {
        SPIN_STARTED.store(true, Ordering::SeqCst);
        let until = std::time::Instant::now() + Duration::from_millis(ms);
        while std::time::Instant::now() < until {
            if RELEASE_SPIN.load(Ordering::SeqCst) {
                return true;
            }
            std::hint::spin_loop();
        }
        false
    }

    /// The order in which this container started its `stamp` tasks (0, 1, …), on the
    /// lane `key` picks (`key % 3`: lanes 0 and 1 are low-latency, 2 high-latency).
    #[task(method = 30, route = stamp_lane)]
    fn stamp(&self, key: u32) -> u64 {
        let _ = key;
        self.stamps.fetch_add(1, Ordering::SeqCst)
    }

    /// Starts a `tick` of this container every `period_ms`, as a periodic subtask: it
    /// runs for this task's caller (an unprivileged client's `quotas.periodic_tasks`
    /// counts it) and is not cancelled with it; it ends with its pool.
    #[task(method = 31)]
    fn start_ticking(&self, ctx: &mut RunContext, period_ms: u64) -> Result<(), TaskError> {
        let me = ProbeClient::attach(&ctx.client(), ctx.pool_id());
        let period = Schedule::Periodic(Duration::from_millis(period_ms));
        me.spawn_tick(PoolQuery::direct_id(self.container), period)?;
        Ok(())
    }

    /// Ticks the probe pool named `pool` (container 0), as a subtask: it runs for this
    /// task's caller.
    #[task(method = 32)]
    fn tick_pool(&self, ctx: &mut RunContext, pool: &str) -> Result<(), TaskError> {
        let other = ProbeClient::open(&ctx.client(), pool)
            .map_err(|err| TaskError::failed(err.to_string()))?;
        other.tick(PoolQuery::direct_id(0))
    }
}

impl Probe {
    fn stamp_lane(&self, input: &probe_tasks::ArchivedStampIn) -> LaneChoice {
        LaneChoice::Lane(input.0.to_native())
    }

    fn lane_by_key(&self, input: &probe_tasks::ArchivedLaneOfIn) -> LaneChoice {
        LaneChoice::Lane(input.0.to_native())
    }

    fn container_on_node(
        input: &probe_tasks::ArchivedOnNodeIn,
        topology: chimaera::PoolTopology,
    ) -> ContainerId {
        topology.container_on(input.0.to_native()).unwrap_or(0)
    }

    fn pick_container(input: &probe_tasks::ArchivedPickedIn, containers: u32) -> ContainerId {
        input.0.to_native() % containers
    }

    fn recurse_then_route(&self, input: &probe_tasks::ArchivedDeepRouteIn) -> LaneChoice {
        fn recurse(depth: u32) -> u32 {
            let frame = std::hint::black_box([depth as u8; 1024]);
            match depth {
                0 => u32::from(frame[0]),
                _ => recurse(depth - 1).wrapping_add(u32::from(std::hint::black_box(frame)[1023])),
            }
        }
        LaneChoice::Lane(recurse(input.0.to_native()) % 2)
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        let mut dropped = DROPPED_POOLS
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        dropped.push(std::mem::take(&mut self.pool));
    }
}

/// A batch of `deep_route` calls whose route overflows a 64 KiB stack at place
/// `deep_at` only: `len` depths, the others shallow (a few KiB of stack each).
#[allow(dead_code)] // Used by the test files that overflow a route in a batch.
pub(crate) fn depths_with_one_deep(len: u32, deep_at: usize) -> Vec<u32> {
    (0..len)
        .map(|i| {
            if i as usize == deep_at {
                1_000_000
            } else {
                i % 4
            }
        })
        .collect()
}

/// Makes the `deep_route` calls of `depths` all at once (so they wait together for the
/// worker), then waits for each, in order.
#[allow(dead_code)] // As `depths_with_one_deep`.
pub(crate) fn deep_routes_at_once(
    probe: &ProbeClient,
    depths: &[u32],
) -> Vec<Result<u32, TaskError>> {
    let pending: Vec<_> = depths
        .iter()
        .map(|&depth| probe.async_deep_route(PoolQuery::local(), depth).unwrap())
        .collect();
    pending.into_iter().map(Pending::wait).collect()
}

/// Asserts that of the answers to `depths` (see `depths_with_one_deep`), the call at
/// `deep_at` failed with a stack overflow and every other returned its depth.
#[allow(dead_code)] // As `depths_with_one_deep`.
pub(crate) fn assert_only_the_deep_route_failed(
    results: &[Result<u32, TaskError>],
    depths: &[u32],
    deep_at: usize,
    round: usize,
) {
    assert_eq!(results.len(), depths.len(), "round {round}");
    for (at, (result, depth)) in results.iter().zip(depths).enumerate() {
        if at == deep_at {
            assert!(
                matches!(result, Err(TaskError::StackOverflow { method: 23, .. })),
                "round {round}: call {at}: got {result:?}"
            );
        } else {
            assert_eq!(result, &Ok(*depth), "round {round}: call {at}");
        }
    }
}
