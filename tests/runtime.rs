//! The in-process runtime, end to end: real workers, real coroutines, real chimods
//! (admin, MOD_NAME and the probe chimod of `tests/probe`). No timing assertions.
mod probe;

use chimaera::admin_api::{
    self, CreatePoolRequest, PoolInfo, PoolOptions, RuntimeStatus, WorkerStatus,
};
use chimaera::mod_name::{mod_name_tasks, CreateParams, ModName, ModNameClient};
use chimaera::prelude::*;
use chimaera::{admin::admin_tasks, admin::Admin};
use chimaera_core::codec;
use chimaera_core::MAX_PERIOD;
use probe::{Probe, ProbeClient};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

fn start() -> Runtime {
    chimaera::builder()
        .module::<Probe>()
        .start()
        .expect("runtime starts")
}

fn mod_name(chi: &Client, name: &str) -> ModNameClient {
    ModNameClient::create(chi, PoolQuery::local(), name, CreateParams::default()).expect("create")
}

fn probe_pool(chi: &Client, name: &str, containers: u32) -> ProbeClient {
    ProbeClient::create_with(
        chi,
        PoolQuery::local(),
        name,
        PoolOptions::containers(containers),
    )
    .expect("create probe pool")
}

#[test]
fn custom_round_trip_returns_its_input() {
    let rt = start();
    let m = mod_name(&rt.client(), "echo");
    for text in [
        "hello",
        "",
        "ünïcødé and a longer string past the inline size",
    ] {
        assert_eq!(m.custom(PoolQuery::local(), text, 7).unwrap(), text);
    }
    let pending: Vec<_> = (0..100)
        .map(|i| {
            m.async_custom(PoolQuery::dynamic(), &i.to_string(), i)
                .unwrap()
        })
        .collect();
    for (i, p) in pending.into_iter().enumerate() {
        assert_eq!(p.wait().unwrap(), i.to_string());
    }
}

#[test]
fn get_or_create_by_name_is_idempotent_and_checks_params() {
    let rt = start();
    let chi = rt.client();
    let first = mod_name(&chi, "same");
    let second = mod_name(&chi, "same");
    assert_eq!(first.pool_id(), second.pool_id());
    let other = mod_name(&chi, "other");
    assert_ne!(first.pool_id(), other.pool_id());

    let different = CreateParams {
        label: "another label".into(),
    };
    let err = ModNameClient::create(&chi, PoolQuery::local(), "same", different).unwrap_err();
    assert!(
        matches!(err, TaskError::PoolMismatch { ref what, .. } if what == "create parameters"),
        "{err}"
    );
    let err = ProbeClient::create(&chi, PoolQuery::local(), "same").unwrap_err();
    assert!(
        matches!(err, TaskError::PoolMismatch { ref what, .. } if what == "module"),
        "{err}"
    );
}

#[test]
fn unknown_pool_method_and_module_are_typed_errors() {
    let rt = start();
    let chi = rt.client();
    let m = mod_name(&chi, "typed_errors");

    let ghost = ModNameClient::attach(&chi, PoolId::new(999, 0));
    assert_eq!(
        ghost.custom(PoolQuery::local(), "x", 0).unwrap_err(),
        TaskError::UnknownPool {
            pool: PoolId::new(999, 0)
        }
    );

    let input = codec::encode(&(codec::StrRef("x"), codec::ByRef(&0u32))).unwrap();
    // Refused at submission, or (a call its worker routes) answered with the error.
    let err = chi
        .submit(m.pool_id(), 77, PoolQuery::local(), input, None)
        .and_then(|call| {
            let (_, result) = call.wait().into_iter().next().expect("one reply");
            result
        })
        .unwrap_err();
    assert_eq!(
        err,
        TaskError::UnknownMethod {
            module: "MOD_NAME".into(),
            method: 77
        }
    );

    let err = admin_api::get_or_create_pool(
        &chi,
        PoolQuery::local(),
        "no_such_module",
        "p",
        PoolOptions::default(),
        &[],
    )
    .unwrap_err();
    assert_eq!(
        err,
        TaskError::UnknownModule {
            module: "no_such_module".into()
        }
    );
}

#[test]
fn malformed_input_fails_alone() {
    let rt = start();
    let chi = rt.client();
    let m = mod_name(&chi, "malformed");
    let mut garbage = codec::Bytes::new();
    garbage.extend_from_slice(&[0xAB; 5]);
    let completion = chi
        .submit(
            m.pool_id(),
            mod_name_tasks::CUSTOM,
            PoolQuery::local(),
            garbage,
            None,
        )
        .unwrap();
    let results = completion.wait();
    assert!(matches!(results[0].1, Err(TaskError::Malformed { .. })));
    assert_eq!(
        m.custom(PoolQuery::local(), "still here", 1).unwrap(),
        "still here"
    );
}

#[test]
fn wait_test_recurses_inside_the_runtime() {
    let rt = start();
    let m = mod_name(&rt.client(), "waits");
    for depth in [1, 3, 5, 10] {
        assert_eq!(m.wait_test(PoolQuery::local(), depth).unwrap(), depth);
    }
    // 1,000 nested tasks, each parked on its child: coroutines, not threads.
    assert_eq!(m.wait_test(PoolQuery::local(), 1000).unwrap(), 1000);
}

#[test]
fn co_mutex_holders_never_overlap() {
    let rt = start();
    let m = mod_name(&rt.client(), "mutex");
    let pending: Vec<_> = (0..32)
        .map(|i| m.async_co_mutex_test(PoolQuery::local(), i, 2).unwrap())
        .collect();
    let inside: Vec<u32> = pending.into_iter().map(|p| p.wait().unwrap()).collect();
    assert_eq!(
        inside.iter().max(),
        Some(&1),
        "holders overlapped: {inside:?}"
    );
}

#[test]
fn ten_thousand_tasks_parked_on_one_co_mutex_all_complete() {
    let rt = start();
    let m = mod_name(&rt.client(), "crowd");
    let holder = m.async_co_mutex_test(PoolQuery::local(), 0, 300).unwrap();
    let waiters: Vec<_> = (1..=10_000)
        .map(|i| m.async_co_mutex_test(PoolQuery::local(), i, 0).unwrap())
        .collect();
    assert_eq!(holder.wait().unwrap(), 1);
    for w in waiters {
        assert_eq!(w.wait().unwrap(), 1);
    }
}

#[test]
fn co_rw_lock_readers_overlap_and_writers_are_alone() {
    let rt = start();
    let m = mod_name(&rt.client(), "rw");
    let readers: Vec<_> = (0..8)
        .map(|i| {
            m.async_co_rw_lock_test(PoolQuery::local(), i, 100, false)
                .unwrap()
        })
        .collect();
    let seen: Vec<(u32, u32)> = readers.into_iter().map(|p| p.wait().unwrap()).collect();
    assert!(seen.iter().all(|(_, writers)| *writers == 0), "{seen:?}");
    assert!(
        seen.iter().any(|(readers, _)| *readers > 1),
        "readers never overlapped: {seen:?}"
    );

    let mixed: Vec<_> = (0..24)
        .map(|i| {
            m.async_co_rw_lock_test(PoolQuery::local(), i, 3, i % 3 == 0)
                .unwrap()
        })
        .collect();
    for (i, p) in mixed.into_iter().enumerate() {
        let (readers, writers) = p.wait().unwrap();
        if i % 3 == 0 {
            assert_eq!((readers, writers), (0, 1), "writer {i} was not alone");
        } else {
            assert_eq!(writers, 0, "reader {i} overlapped a writer");
        }
    }
}

#[test]
fn subtasks_of_a_lock_holder_pass_its_lock() {
    let rt = start();
    let p = probe_pool(&rt.client(), "tasknode", 1);
    assert_eq!(p.lock_then_subtask(PoolQuery::local()).unwrap(), 7);
}

#[test]
fn flush_returns_after_in_flight_tasks_are_done() {
    let rt = start();
    let chi = rt.client();
    let p = probe_pool(&chi, "flush", 2);
    // The count covers completions after the flush task starts: naps long enough that
    // the flush starts first even when the other tests load the shared scheduler.
    let pending: Vec<_> = (0..64)
        .map(|i| p.async_nap(PoolQuery::direct_hash(i), 300).unwrap())
        .collect();
    let completed = chimaera::AdminClient::attach(&chi, PoolId::ADMIN)
        .flush(PoolQuery::local())
        .unwrap();
    assert!(
        pending.iter().all(Pending::is_done),
        "flush returned with tasks in flight"
    );
    assert!(completed >= 64, "flush counted {completed} completions");
    for p in pending {
        assert_eq!(p.wait().unwrap(), 300);
    }
}

#[test]
fn a_panicking_task_fails_alone() {
    let rt = start();
    let chi = rt.client();
    let p = probe_pool(&chi, "panics", 1);
    let err = p.explode(PoolQuery::local(), "boom").unwrap_err();
    assert_eq!(
        err,
        TaskError::Panicked {
            message: "boom".into()
        }
    );
    assert_eq!(p.who_am_i(PoolQuery::local()).unwrap(), 0);
    assert_eq!(
        mod_name(&chi, "after_panic")
            .custom(PoolQuery::local(), "ok", 0)
            .unwrap(),
        "ok"
    );
}

#[test]
fn every_pool_query_mode_routes_as_documented() {
    let rt = start();
    let p = probe_pool(&rt.client(), "routing", 4);
    let containers = |pending: Pending<u32>| -> Vec<u32> {
        pending
            .wait_all()
            .into_iter()
            .map(|(c, r)| {
                assert_eq!(
                    r.as_ref().ok(),
                    Some(&c),
                    "replica of container {c} answered {r:?}"
                );
                c
            })
            .collect()
    };
    assert_eq!(p.who_am_i(PoolQuery::local()).unwrap(), 0);
    assert_eq!(p.who_am_i(PoolQuery::direct_id(2)).unwrap(), 2);
    assert_eq!(p.who_am_i(PoolQuery::direct_hash(7)).unwrap(), 3);
    assert_eq!(
        containers(p.async_who_am_i(PoolQuery::range(1, 2)).unwrap()),
        vec![1, 2]
    );
    assert_eq!(
        containers(p.async_who_am_i(PoolQuery::broadcast()).unwrap()),
        vec![0, 1, 2, 3]
    );
    assert_eq!(p.who_am_i(PoolQuery::physical(0)).unwrap(), 0);
    assert_eq!(p.picked(PoolQuery::dynamic(), 6).unwrap(), 2);
    assert_eq!(
        p.who_am_i(PoolQuery::dynamic()).unwrap(),
        0,
        "no dynamic hook: as Local"
    );

    assert!(matches!(
        p.who_am_i(PoolQuery::direct_id(4)),
        Err(TaskError::NoSuchContainer { container: 4, .. })
    ));
    assert!(matches!(
        p.who_am_i(PoolQuery::range(3, 2)),
        Err(TaskError::NoSuchContainer { .. })
    ));
    assert_eq!(
        p.who_am_i(PoolQuery::physical(1)),
        Err(TaskError::NoSuchNode { node: 1 })
    );
    // A broadcast's single answer is the lowest container's.
    assert_eq!(p.who_am_i(PoolQuery::broadcast()).unwrap(), 0);
}

#[test]
fn monitor_routes_to_the_lane_the_chimod_picks() {
    // Only modules with a `route` hook are asked for a lane; the others' tasks go to
    // lane 0 with no call (checked when this test compiles).
    const {
        assert!(<Probe as ChiMod>::LANE_HOOKS);
        assert!(!<ModName as ChiMod>::LANE_HOOKS);
        assert!(!<Admin as ChiMod>::LANE_HOOKS);
    }
    let rt = start();
    let p = probe_pool(&rt.client(), "lanes", 1);
    for key in 0..6 {
        assert_eq!(p.lane_of(PoolQuery::local(), key).unwrap(), key % 3);
    }
    assert_eq!(p.who_am_i(PoolQuery::local()).unwrap(), 0);
}

#[test]
fn in_out_and_borrowed_bytes_arguments() {
    let rt = start();
    let p = probe_pool(&rt.client(), "args", 1);
    let mut counter = 40;
    assert_eq!(p.bump(PoolQuery::local(), &mut counter, 2).unwrap(), 40);
    assert_eq!(counter, 42);
    let data: Vec<u8> = (0..=255).collect();
    assert_eq!(
        p.checksum(PoolQuery::local(), &data).unwrap(),
        255 * 256 / 2
    );
}

#[test]
fn fire_and_forget_and_periodic_tasks_run() {
    let rt = start();
    let chi = rt.client();
    let p = probe_pool(&chi, "ticks", 1);
    for _ in 0..10 {
        p.spawn_tick(PoolQuery::local(), Schedule::FireAndForget)
            .unwrap();
    }
    chimaera::AdminClient::attach(&chi, PoolId::ADMIN)
        .flush(PoolQuery::local())
        .unwrap();
    assert_eq!(p.ticks(PoolQuery::local()).unwrap(), 10);

    let periodic = p
        .spawn_tick(
            PoolQuery::local(),
            Schedule::Periodic(Duration::from_millis(2)),
        )
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while p.ticks(PoolQuery::local()).unwrap() < 13 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(
        p.ticks(PoolQuery::local()).unwrap() >= 13,
        "periodic task did not repeat"
    );
    periodic.cancel().unwrap();
    // After cancel the task ends (at once if it sleeps); then the count stays put.
    std::thread::sleep(Duration::from_millis(20));
    let settled = p.ticks(PoolQuery::local()).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(p.ticks(PoolQuery::local()).unwrap(), settled);
}

#[test]
fn destroy_pool_fails_or_finishes_in_flight_tasks_cleanly() {
    let rt = start();
    let chi = rt.client();
    let p = probe_pool(&chi, "doomed", 2);
    let survivor = mod_name(&chi, "survivor");
    let before = probe::DESTROYED.load(Ordering::SeqCst);
    let pending: Vec<_> = (0..200)
        .map(|i| p.async_nap(PoolQuery::direct_hash(i), 10).unwrap())
        .collect();
    p.destroy_pool().unwrap();
    assert!(
        probe::DESTROYED.load(Ordering::SeqCst) >= before + 2,
        "kDestroy ran per container"
    );
    for pending in pending {
        match pending.wait() {
            Ok(10) | Err(TaskError::PoolDestroyed { .. }) => {}
            other => panic!("unexpected outcome {other:?}"),
        }
    }
    assert_eq!(
        p.who_am_i(PoolQuery::local()),
        Err(TaskError::UnknownPool { pool: p.pool_id() })
    );
    assert_eq!(
        survivor.custom(PoolQuery::local(), "alive", 0).unwrap(),
        "alive"
    );
    // The name is free again.
    let again = probe_pool(&chi, "doomed", 1);
    assert_ne!(again.pool_id(), p.pool_id());
    // The admin pool is not: it lives as long as the runtime.
    assert_eq!(
        chimaera::admin_api::destroy_pool(&chi, PoolId::ADMIN),
        Err(TaskError::AdminPoolIndestructible)
    );
    assert!(chimaera::AdminClient::attach(&chi, PoolId::ADMIN)
        .status(PoolQuery::local())
        .is_ok());
}

#[test]
fn stop_runtime_drains_then_refuses_new_tasks() {
    let rt = start();
    let chi = rt.client();
    let p = probe_pool(&chi, "stop", 1);
    let naps: Vec<_> = (0..20)
        .map(|_| p.async_nap(PoolQuery::local(), 30).unwrap())
        .collect();
    chimaera::AdminClient::attach(&chi, PoolId::ADMIN)
        .stop_runtime(PoolQuery::local(), 5_000)
        .unwrap();
    rt.wait();
    for nap in naps {
        assert_eq!(
            nap.wait().unwrap(),
            30,
            "in-flight tasks are drained, not dropped"
        );
    }
    assert_eq!(
        p.who_am_i(PoolQuery::local()),
        Err(TaskError::RuntimeStopped)
    );
}

#[test]
fn save_and_load_round_trip_every_mod_name_task() {
    use mod_name_tasks::{TaskIn, TaskOut};
    let params = CreateParams { label: "l".into() };
    let inputs = [
        TaskIn::Create((params.clone(),)),
        TaskIn::Custom(("data".into(), 9)),
        TaskIn::CoMutexTest((1, 2)),
        TaskIn::CoRwLockTest((3, 4, true)),
        TaskIn::WaitTest((5,)),
    ];
    let methods = [
        mod_name_tasks::CREATE,
        mod_name_tasks::CUSTOM,
        mod_name_tasks::CO_MUTEX_TEST,
        mod_name_tasks::CO_RW_LOCK_TEST,
        mod_name_tasks::WAIT_TEST,
    ];
    for (input, method) in inputs.iter().zip(methods) {
        let bytes = ModName::save_in(input).unwrap();
        let copy = ModName::new_copy(method, &bytes).unwrap();
        assert_eq!(&bytes[..], &copy[..]);
        let loaded = ModName::load_in(method, &copy).unwrap();
        let same = match (input, &loaded) {
            (TaskIn::Create(a), TaskIn::Create(b)) => a == b,
            (TaskIn::Custom(a), TaskIn::Custom(b)) => a == b,
            (TaskIn::CoMutexTest(a), TaskIn::CoMutexTest(b)) => a == b,
            (TaskIn::CoRwLockTest(a), TaskIn::CoRwLockTest(b)) => a == b,
            (TaskIn::WaitTest(a), TaskIn::WaitTest(b)) => a == b,
            _ => false,
        };
        assert!(same, "input of method {method} did not round-trip");
    }
    let outputs = [
        (mod_name_tasks::CUSTOM, TaskOut::Custom(("echo".into(),))),
        (mod_name_tasks::CO_MUTEX_TEST, TaskOut::CoMutexTest((1,))),
        (
            mod_name_tasks::CO_RW_LOCK_TEST,
            TaskOut::CoRwLockTest(((2, 0),)),
        ),
        (mod_name_tasks::WAIT_TEST, TaskOut::WaitTest((10,))),
    ];
    for (method, output) in outputs {
        let bytes = ModName::save_out(&output).unwrap();
        let loaded = ModName::load_out(method, &bytes).unwrap();
        let same = match (&output, &loaded) {
            (TaskOut::Custom(a), TaskOut::Custom(b)) => a == b,
            (TaskOut::CoMutexTest(a), TaskOut::CoMutexTest(b)) => a == b,
            (TaskOut::CoRwLockTest(a), TaskOut::CoRwLockTest(b)) => a == b,
            (TaskOut::WaitTest(a), TaskOut::WaitTest(b)) => a == b,
            _ => false,
        };
        assert!(same, "output of method {method} did not round-trip");
    }
    assert!(matches!(
        ModName::load_in(99, &[]),
        Err(TaskError::UnknownMethod { method: 99, .. })
    ));
}

#[test]
fn save_and_load_round_trip_every_admin_task() {
    use admin_tasks::{TaskIn, TaskOut};
    let request = CreatePoolRequest {
        module: "MOD_NAME".into(),
        pool_name: "p".into(),
        containers: 3,
        params: vec![1, 2, 3],
    };
    let inputs = [
        (admin_tasks::CREATE, TaskIn::Create(())),
        (
            admin_tasks::GET_OR_CREATE_POOL,
            TaskIn::GetOrCreatePool((request.clone(),)),
        ),
        (
            admin_tasks::DESTROY_POOL,
            TaskIn::DestroyPool((PoolId::new(4, 0),)),
        ),
        (admin_tasks::STOP_RUNTIME, TaskIn::StopRuntime((250,))),
        (admin_tasks::FLUSH, TaskIn::Flush(())),
        (admin_tasks::STATUS, TaskIn::Status(())),
    ];
    for (method, input) in &inputs {
        let bytes = Admin::save_in(input).unwrap();
        let loaded = Admin::load_in(*method, &Admin::new_copy(*method, &bytes).unwrap()).unwrap();
        let same = match (input, &loaded) {
            (TaskIn::Create(a), TaskIn::Create(b)) => a == b,
            (TaskIn::GetOrCreatePool(a), TaskIn::GetOrCreatePool(b)) => a == b,
            (TaskIn::DestroyPool(a), TaskIn::DestroyPool(b)) => a == b,
            (TaskIn::StopRuntime(a), TaskIn::StopRuntime(b)) => a == b,
            (TaskIn::Flush(a), TaskIn::Flush(b)) => a == b,
            (TaskIn::Status(a), TaskIn::Status(b)) => a == b,
            _ => false,
        };
        assert!(same, "input of admin method {method} did not round-trip");
    }
    let info = PoolInfo {
        id: PoolId::new(4, 0),
        name: "p".into(),
        module: "MOD_NAME".into(),
        containers: 3,
        queued: 0,
        private_to: Some(1001),
    };
    let status = RuntimeStatus {
        pid: 42,
        instance: "lab-1".into(),
        workers: vec![
            WorkerStatus {
                id: 0,
                tasks_run: 7,
                queued: 2,
            },
            WorkerStatus {
                id: 1,
                tasks_run: 0,
                queued: 0,
            },
        ],
        pools: vec![info.clone()],
        inflight: 1,
        completed: 99,
        clients: 3,
        periodic: 2,
        coroutines: admin_api::CoroutineStatus { live: 6, max: 100 },
        uids: vec![admin_api::UidStatus {
            uid: 65534,
            connections: admin_api::QuotaUse { used: 2, max: 48 },
            memory_bytes: admin_api::QuotaUse {
                used: 1 << 20,
                max: 4 << 30,
            },
            ..admin_api::UidStatus::default()
        }],
        containers: vec![admin_api::ContainerStatus {
            pool: PoolId::new(4, 0),
            container: 0,
            lanes: vec![admin_api::LaneStatus {
                worker: 1,
                high_latency: true,
                queued: 5,
            }],
        }],
        methods: vec![admin_api::MethodStatus {
            pool: PoolId::new(4, 0),
            method: 25,
            name: "kCustom".into(),
            completed: 10,
            failed: 1,
            in_flight: 2,
            latency: admin_api::LatencySummary {
                count: 11,
                sum_ns: 16_500,
                mean_ns: 1_500,
                p50_ns: 1_000,
                p90_ns: 2_000,
                p99_ns: 3_000,
                max_ns: 4_095,
            },
        }],
        shm: admin_api::ShmStatus {
            serving: true,
            max_clients: 8,
            per_client_bytes: 4096,
            ..Default::default()
        },
        node: 1,
        nodes: vec![
            admin_api::NodeStatus {
                node: 0,
                address: "10.0.0.1:9513".into(),
                state: chimaera::peer::PeerState::Up,
            },
            admin_api::NodeStatus {
                node: 1,
                address: "10.0.0.2:9513".into(),
                state: chimaera::peer::PeerState::Local,
            },
        ],
    };
    let outputs = [
        (
            admin_tasks::GET_OR_CREATE_POOL,
            TaskOut::GetOrCreatePool((info,)),
        ),
        (admin_tasks::DESTROY_POOL, TaskOut::DestroyPool(((),))),
        (admin_tasks::STOP_RUNTIME, TaskOut::StopRuntime(((),))),
        (admin_tasks::FLUSH, TaskOut::Flush((12,))),
        (admin_tasks::STATUS, TaskOut::Status((status,))),
    ];
    for (method, output) in &outputs {
        let loaded = Admin::load_out(*method, &Admin::save_out(output).unwrap()).unwrap();
        let same = match (output, &loaded) {
            (TaskOut::GetOrCreatePool(a), TaskOut::GetOrCreatePool(b)) => a == b,
            (TaskOut::DestroyPool(a), TaskOut::DestroyPool(b)) => a == b,
            (TaskOut::StopRuntime(a), TaskOut::StopRuntime(b)) => a == b,
            (TaskOut::Flush(a), TaskOut::Flush(b)) => a == b,
            (TaskOut::Status(a), TaskOut::Status(b)) => a == b,
            _ => false,
        };
        assert!(same, "output of admin method {method} did not round-trip");
    }
}

#[test]
fn admin_manifest_ids_match_the_core_protocol() {
    assert_eq!(
        admin_tasks::GET_OR_CREATE_POOL,
        admin_api::GET_OR_CREATE_POOL
    );
    assert_eq!(admin_tasks::DESTROY_POOL, admin_api::DESTROY_POOL);
    assert_eq!(admin_tasks::STOP_RUNTIME, admin_api::STOP_RUNTIME);
    assert_eq!(admin_tasks::FLUSH, admin_api::FLUSH);
    assert_eq!(admin_tasks::STATUS, admin_api::STATUS);
}

/// A pool destroyed after calls over shared memory is freed (its containers dropped)
/// soon after, with nothing else arriving: the worker that ingested the calls keeps the
/// last pool it looked up across ingest batches, and lets it go when it goes idle.
#[test]
fn a_worker_that_ingested_a_pools_calls_does_not_keep_it_once_destroyed() {
    let instance = format!("t{}-memo", std::process::id());
    let config = RuntimeConfig {
        instance: chimaera_core::shm::InstanceName::new(&instance).unwrap(),
        ..RuntimeConfig::default()
    };
    let runtime = chimaera::builder()
        .config(config.clone())
        .module::<Probe>()
        .serve()
        .expect("runtime serves");
    let local = runtime.client();
    let name = format!("memo_pool_{}", std::process::id());
    let probe = probe_pool(&local, &name, 1);
    {
        let over_shm = Client::connect_to(&config).expect("attach over shared memory");
        let remote = ProbeClient::attach(&over_shm, probe.pool_id());
        for _ in 0..10 {
            remote.who_am_i(PoolQuery::local()).unwrap();
        }
        // The shared-memory calls' last lookup was this pool; the destroy below goes
        // in process, so no later ingest replaces it.
    }
    probe.destroy_pool().unwrap();
    drop(probe);
    wait_until("the destroyed pool's container to be dropped", || {
        probe::DROPPED_POOLS.lock().unwrap().contains(&name)
    });
    runtime.stop();
}

/// Every run is counted, but past a method's first 1,024 runs on a worker only a
/// sample is timed, one in `metrics.latency_sample` (8 by default); 1 times them all.
#[test]
fn run_counts_are_exact_and_latency_is_sampled_as_configured() {
    let runs = chimaera_core::stats::ALWAYS_TIMED_RUNS + 4_000;
    for (sample, timed) in [(8, 1_024..=runs / 2), (1, runs..=runs)] {
        let config = RuntimeConfig {
            metrics_latency_sample: sample,
            ..RuntimeConfig::default()
        };
        let runtime = chimaera::builder()
            .config(config)
            .start()
            .expect("runtime starts");
        let chi = runtime.client();
        let m = mod_name(&chi, "sampled_pool");
        for i in 0..runs {
            m.custom(PoolQuery::local(), "x", i as u32).unwrap();
        }
        let status = chimaera::AdminClient::attach(&chi, PoolId::ADMIN)
            .status(PoolQuery::local())
            .unwrap();
        let custom = status
            .methods
            .iter()
            .find(|method| method.pool == m.pool_id() && method.name == "kCustom")
            .expect("the pool's methods are listed");
        assert_eq!((custom.completed, custom.in_flight), (runs, 0));
        assert!(
            timed.contains(&custom.latency.count),
            "1 in {sample}: {} of {runs} runs timed",
            custom.latency.count
        );
        runtime.stop();
    }
}

#[test]
fn status_reports_pools_workers_and_task_counts() {
    let runtime = start();
    let chi = runtime.client();
    let m = mod_name(&chi, "status_pool");
    for i in 0..10 {
        m.custom(PoolQuery::local(), "x", i).unwrap();
    }
    let status = chimaera::AdminClient::attach(&chi, PoolId::ADMIN)
        .status(PoolQuery::local())
        .unwrap();
    assert_eq!(status.pid, std::process::id());
    assert_eq!(status.instance, RuntimeConfig::default().instance.as_str());
    assert_eq!(status.workers.len(), RuntimeConfig::default().workers());
    let ids: Vec<u32> = status.workers.iter().map(|w| w.id).collect();
    assert_eq!(ids, (0..status.workers.len() as u32).collect::<Vec<_>>());
    let run: u64 = status.workers.iter().map(|w| w.tasks_run).sum();
    assert!(run >= 10, "workers ran {run} tasks: {status:?}");
    assert!(status.completed >= 10, "{status:?}");
    // The status task leaves itself out.
    assert_eq!(status.inflight, 0, "{status:?}");
    let custom = status
        .methods
        .iter()
        .find(|method| method.pool == m.pool_id() && method.name == "kCustom")
        .expect("the pool's methods are listed");
    assert_eq!((custom.completed, custom.in_flight), (10, 0));
    assert_eq!(custom.latency.count, 10);
    assert!(custom.latency.p50_ns > 0 && custom.latency.p50_ns <= custom.latency.max_ns);
    let own = status
        .methods
        .iter()
        .find(|method| method.pool == PoolId::ADMIN && method.name == "kStatus")
        .expect("admin methods are listed");
    assert_eq!(own.in_flight, 0, "the status task leaves itself out");
    assert!(status
        .containers
        .iter()
        .any(|container| container.pool == m.pool_id() && !container.lanes.is_empty()));
    let pool = status
        .pools
        .iter()
        .find(|p| p.name == "status_pool")
        .expect("the pool is listed");
    assert_eq!((pool.id, pool.module.as_str()), (m.pool_id(), "MOD_NAME"));
    assert!(status.pools.iter().any(|p| p.id == PoolId::ADMIN));
}

/// Waits for `done`, failing the test (not hanging it) if a broken build never gets there.
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Runs `call` on another thread and returns its result, failing the test if it does not
/// return within a bound only a hang reaches.
fn returns<T: Send + 'static>(what: &str, call: impl FnOnce() -> T + Send + 'static) -> T {
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = sender.send(call());
    });
    receiver
        .recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| panic!("{what} never returned"))
}

#[test]
fn a_pool_of_u32_max_containers_is_refused_before_anything_is_allocated() {
    let rt = start();
    let chi = rt.client();
    for containers in [u32::MAX, 4097] {
        let err = admin_api::get_or_create_pool(
            &chi,
            PoolQuery::local(),
            "MOD_NAME",
            "huge",
            PoolOptions::containers(containers),
            &codec::encode(&(CreateParams::default(),)).unwrap(),
        )
        .unwrap_err();
        assert_eq!(
            err,
            TaskError::TooManyContainers {
                asked: containers,
                max: 4096
            }
        );
    }
    // The runtime serves on, and the name was never taken.
    assert!(rt.handle().pools().iter().all(|pool| pool.name != "huge"));
    let m = mod_name(&chi, "after-huge");
    assert_eq!(m.custom(PoolQuery::local(), "alive", 0).unwrap(), "alive");
}

#[test]
fn max_containers_per_pool_is_configurable() {
    let config = RuntimeConfig::from_yaml_str("max_containers_per_pool: 3").unwrap();
    let rt = chimaera::builder()
        .module::<Probe>()
        .config(config)
        .start()
        .unwrap();
    let chi = rt.client();
    assert_eq!(probe_pool(&chi, "three", 3).pool_id().minor, 0);
    let err =
        ProbeClient::create_with(&chi, PoolQuery::local(), "four", PoolOptions::containers(4))
            .unwrap_err();
    assert_eq!(err, TaskError::TooManyContainers { asked: 4, max: 3 });
}

#[test]
fn wait_test_at_depth_u32_max_fails_with_too_deep() {
    let rt = start();
    let m = mod_name(&rt.client(), "bottomless");
    let err = returns("wait_test(u32::MAX)", move || {
        m.wait_test(PoolQuery::local(), u32::MAX)
    })
    .unwrap_err();
    assert_eq!(
        err,
        TaskError::TooDeep {
            depth: 1025,
            max: 1024
        }
    );
    // Nothing is left in flight but the status task, and the runtime serves on.
    let m = mod_name(&rt.client(), "bottomless");
    assert_eq!(m.wait_test(PoolQuery::local(), 5).unwrap(), 5);
    wait_until("the failed chain to unwind", || rt.handle().inflight() == 0);
}

#[test]
fn max_task_depth_bounds_nesting_exactly() {
    let config = RuntimeConfig::from_yaml_str("max_task_depth: 10").unwrap();
    let rt = chimaera::builder().config(config).start().unwrap();
    let m = mod_name(&rt.client(), "shallow");
    // wait_test(d) nests d - 1 subtasks below the client's task: depth 10 is the last.
    assert_eq!(m.wait_test(PoolQuery::local(), 11).unwrap(), 11);
    assert_eq!(
        m.wait_test(PoolQuery::local(), 12),
        Err(TaskError::TooDeep { depth: 11, max: 10 })
    );
}

#[test]
fn a_period_too_long_for_the_timers_is_refused() {
    let rt = start();
    let p = probe_pool(&rt.client(), "forever", 1);
    for period in [Duration::MAX, MAX_PERIOD + Duration::from_nanos(1)] {
        let err = p
            .spawn_tick(PoolQuery::local(), Schedule::Periodic(period))
            .unwrap_err();
        assert!(
            matches!(err, TaskError::PeriodTooLong { max_ms, .. } if max_ms == MAX_PERIOD.as_millis() as u64),
            "{err}"
        );
    }
    // The longest allowed period is accepted, and the workers are all alive.
    let longest = p
        .spawn_tick(PoolQuery::local(), Schedule::Periodic(MAX_PERIOD))
        .unwrap();
    wait_until("the first run", || {
        p.ticks(PoolQuery::local()).unwrap() == 1
    });
    longest.cancel().unwrap();
    for i in 0..32 {
        assert_eq!(p.who_am_i(PoolQuery::direct_hash(i)).unwrap(), 0);
    }
}

#[test]
fn cancel_wakes_a_periodic_task_sleeping_a_long_period() {
    let rt = start();
    let p = probe_pool(&rt.client(), "sleeper", 1);
    let hour = Duration::from_secs(3600);
    let periodic = p
        .spawn_tick(PoolQuery::local(), Schedule::Periodic(hour))
        .unwrap();
    wait_until("the first run", || {
        p.ticks(PoolQuery::local()).unwrap() == 1
    });
    assert_eq!(rt.handle().periodic_tasks(), 1);
    periodic.cancel().unwrap();
    // Asleep for an hour, it must end now, not after its period.
    wait_until("the cancelled task to end", || {
        rt.handle().periodic_tasks() == 0
    });
    assert_eq!(p.ticks(PoolQuery::local()).unwrap(), 1);
}

#[test]
fn destroying_a_pool_or_stopping_ends_its_sleeping_periodic_tasks() {
    let rt = start();
    let chi = rt.client();
    let hour = Duration::from_secs(3600);
    let doomed = probe_pool(&chi, "doomed-periodic", 2);
    let kept = probe_pool(&chi, "kept-periodic", 1);
    let _on_doomed = doomed
        .spawn_tick(PoolQuery::broadcast(), Schedule::Periodic(hour))
        .unwrap();
    let _on_kept = kept
        .spawn_tick(PoolQuery::local(), Schedule::Periodic(hour))
        .unwrap();
    wait_until("three replicas asleep", || {
        rt.handle().periodic_tasks() == 3
    });
    doomed.destroy_pool().unwrap();
    wait_until("the doomed pool's replicas to end", || {
        rt.handle().periodic_tasks() == 1
    });
    let handle = rt.handle();
    rt.stop();
    wait_until("the stop to end the last one", || {
        handle.periodic_tasks() == 0
    });
}

#[test]
fn flush_returns_while_another_client_keeps_submitting() {
    let rt = start();
    let chi = rt.client();
    let p = probe_pool(&chi, "busy", 2);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let submitters: Vec<_> = (0..2)
        .map(|_| {
            let p = p.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut window = std::collections::VecDeque::new();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    // Naps long enough that the runtime is never idle between two
                    // submissions: an old flush waiting for an idle runtime never returns.
                    window.push_back(p.async_nap(PoolQuery::direct_hash(i), 50).unwrap());
                    i = i.wrapping_add(1);
                    if window.len() > 16 {
                        assert_eq!(window.pop_front().unwrap().wait().unwrap(), 50);
                    }
                }
                for pending in window {
                    assert_eq!(pending.wait().unwrap(), 50);
                }
            })
        })
        .collect();
    wait_until("the submitters to fill the runtime", || {
        rt.handle().inflight() > 8
    });
    let before: Vec<_> = (0..16)
        .map(|i| p.async_nap(PoolQuery::direct_hash(i), 20).unwrap())
        .collect();
    let admin = chimaera::AdminClient::attach(&chi, PoolId::ADMIN);
    for _ in 0..3 {
        let admin = admin.clone();
        returns("flush under load", move || admin.flush(PoolQuery::local())).unwrap();
    }
    assert!(
        before.iter().all(Pending::is_done),
        "flush returned before the tasks in flight when it started were done"
    );
    stop.store(true, Ordering::Relaxed);
    for submitter in submitters {
        submitter.join().unwrap();
    }
}

#[test]
fn concurrent_flushes_do_not_wait_for_each_other() {
    let rt = start();
    let chi = rt.client();
    let admin = chimaera::AdminClient::attach(&chi, PoolId::ADMIN);
    let flushes: Vec<_> = (0..8)
        .map(|_| admin.async_flush(PoolQuery::local()).unwrap())
        .collect();
    returns("eight concurrent flushes", move || {
        for flush in flushes {
            flush.wait().unwrap();
        }
    });
}

#[test]
fn a_broadcast_copying_too_much_input_is_refused() {
    let rt = start();
    let p = probe_pool(&rt.client(), "wide", 1024);
    // 300 KiB to 1,024 containers would copy 300 MiB of input.
    let data = vec![1u8; 300 << 10];
    let err = p.checksum(PoolQuery::broadcast(), &data).unwrap_err();
    assert!(
        matches!(
            err,
            TaskError::FanOutTooLarge {
                replicas: 1024,
                input_bytes,
                ..
            } if input_bytes >= 300 << 10
        ),
        "{err}"
    );
    // A small input reaches every container.
    assert_eq!(p.checksum(PoolQuery::broadcast(), &[7]).unwrap(), 7);
    assert_eq!(p.checksum(PoolQuery::local(), &data).unwrap(), 300 << 10);
}

#[test]
fn max_periodic_tasks_bounds_the_periodic_tasks_alive() {
    let config = RuntimeConfig::from_yaml_str("max_periodic_tasks: 2").unwrap();
    let rt = chimaera::builder()
        .module::<Probe>()
        .config(config)
        .start()
        .unwrap();
    let p = probe_pool(&rt.client(), "few", 1);
    let hour = Schedule::Periodic(Duration::from_secs(3600));
    let first = p.spawn_tick(PoolQuery::local(), hour).unwrap();
    let _second = p.spawn_tick(PoolQuery::local(), hour).unwrap();
    assert_eq!(
        p.spawn_tick(PoolQuery::local(), hour).unwrap_err(),
        TaskError::TooManyPeriodicTasks { max: 2 }
    );
    // Fire-and-forget tasks are not periodic: still accepted.
    p.spawn_tick(PoolQuery::local(), Schedule::FireAndForget)
        .unwrap();
    first.cancel().unwrap();
    let _third = p.spawn_tick(PoolQuery::local(), hour).unwrap();
}

/// A runtime with `low_latency` workers and no high-latency one, hosting the probe.
fn with_workers(low_latency: usize, yaml: &str) -> Runtime {
    let mut config = RuntimeConfig::from_yaml_str(yaml).unwrap();
    config.workers_low_latency = low_latency;
    config.workers_high_latency = 0;
    chimaera::builder()
        .module::<Probe>()
        .config(config)
        .start()
        .unwrap()
}

/// Ten naps of `nap_ms` posted behind a `spin` of `spin_ms` on `p`'s one container: the
/// spin keeps its worker busy, so the naps wait in its request inbox, not routed yet.
fn naps_behind_a_spin(
    p: &ProbeClient,
    spin_ms: u64,
    nap_ms: u64,
) -> (Pending<'_, bool>, Vec<Pending<'_, u64>>) {
    let busy = p.async_spin(PoolQuery::local(), spin_ms).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let naps = (0..10)
        .map(|_| p.async_nap(PoolQuery::local(), nap_ms).unwrap())
        .collect();
    (busy, naps)
}

/// An in-process call is routed by the worker it is posted to. A flush must count the
/// calls posted before it even when their worker has not routed them yet (it is busy
/// running a task that never waits) and the flush runs on another worker: else those
/// calls land in the epoch after the one it drains, and it returns before they ran.
#[test]
fn flush_waits_for_calls_posted_before_it_that_are_not_routed_yet() {
    let rt = with_workers(2, "{}");
    let chi = rt.client();
    let p = probe_pool(&chi, "posted_flush", 1);
    let (busy, naps) = naps_behind_a_spin(&p, 300, 50);
    returns("a flush behind unrouted calls", move || {
        chimaera::AdminClient::attach(&chi, PoolId::ADMIN)
            .flush(PoolQuery::local())
            .unwrap()
    });
    assert!(
        naps.iter().all(Pending::is_done),
        "flush returned before the calls posted before it ran"
    );
    assert!(!busy.wait().unwrap(), "the spin was released early");
    for nap in naps {
        assert_eq!(nap.wait().unwrap(), 50);
    }
}

/// In-process calls posted to a busy worker, not routed yet, show in its status's
/// `queued` (no lane counts them yet).
#[test]
fn calls_posted_to_a_busy_worker_count_as_queued() {
    let rt = with_workers(2, "{}");
    let chi = rt.client();
    let p = probe_pool(&chi, "posted_queued", 1);
    let (busy, naps) = naps_behind_a_spin(&p, 2_000, 1);
    let status = chimaera::AdminClient::attach(&chi, PoolId::ADMIN)
        .status(PoolQuery::local())
        .unwrap();
    let queued: u64 = status.workers.iter().map(|worker| worker.queued).sum();
    assert!(
        queued >= 10,
        "10 calls wait behind the spin, the workers report {:?}",
        status.workers
    );
    assert!(!busy.wait().unwrap(), "the spin was released early");
    for nap in naps {
        assert_eq!(nap.wait().unwrap(), 1);
    }
}

/// A stop runs the in-process calls posted while the runtime ran, although their worker
/// routes them only once the stop has begun (it was busy); calls after it are refused.
#[test]
fn a_stop_runs_the_calls_posted_before_it() {
    let rt = with_workers(1, "{}");
    let p = probe_pool(&rt.client(), "posted_stop", 1);
    let (busy, naps) = naps_behind_a_spin(&p, 300, 5);
    returns("a stop behind unrouted calls", move || rt.stop());
    assert!(!busy.wait().unwrap(), "the spin was released early");
    for nap in naps {
        assert_eq!(
            nap.wait(),
            Ok(5),
            "a call posted before the stop was refused"
        );
    }
    assert_eq!(
        p.who_am_i(PoolQuery::local()),
        Err(TaskError::RuntimeStopped)
    );
}

/// Chimod routing code (a task's `route` hook) runs on the worker's poller, never on
/// the in-process caller's thread: a route that overflows the poller's stack fails its
/// call with a typed error, and a new poller takes over, so the worker — the only one —
/// serves on.
#[test]
fn an_in_process_call_whose_route_overflows_the_pollers_stack_fails_alone() {
    let rt = with_workers(1, "coroutine_stack_size: 64KiB");
    let p = probe_pool(&rt.client(), "deep_in_process", 1);
    for round in 0..3 {
        let deep = p.clone();
        let result = returns("a call whose route overflows", move || {
            deep.deep_route(PoolQuery::local(), 1_000_000)
        });
        assert!(
            matches!(result, Err(TaskError::StackOverflow { method: 23, .. })),
            "round {round}: got {result:?}"
        );
        assert_eq!(p.deep_route(PoolQuery::local(), 3), Ok(3), "round {round}");
    }
}

/// In-process calls posted together are routed in one round by the worker's poller: a
/// route that overflows its stack among them fails that call alone, and the calls
/// routed before it (the first staged in the dead poller's slot, not started) and after
/// it all run on the next poller.
#[test]
fn posted_calls_routed_with_an_overflowing_route_are_all_answered() {
    let rt = with_workers(1, "coroutine_stack_size: 64KiB");
    let p = probe_pool(&rt.client(), "deep_batch_in_process", 1);
    for (round, deep_at) in [1usize, 0, 10, 1].into_iter().enumerate() {
        // An idle worker sleeps: the calls below all wait in its request inbox when it
        // wakes, so it routes them in one round.
        std::thread::sleep(Duration::from_millis(50));
        let depths = probe::depths_with_one_deep(21, deep_at);
        let results = returns("posted calls around an overflowing route", {
            let p = p.clone();
            let depths = depths.clone();
            move || probe::deep_routes_at_once(&p, &depths)
        });
        probe::assert_only_the_deep_route_failed(&results, &depths, deep_at, round);
    }
}

/// A call that cannot be posted (a broadcast) is queued by its caller: it must still
/// start after the calls the same thread posted before it, which wait to be routed
/// (their worker is busy). The caller first waits until they are routed.
#[test]
fn a_broadcast_after_posted_calls_starts_after_them() {
    let rt = with_workers(1, "{}");
    let p = probe_pool(&rt.client(), "posted_then_broadcast", 1);
    // One thread makes every call: the order holds per thread.
    returns("a broadcast behind posted calls", move || {
        let busy = p.async_spin(PoolQuery::local(), 300).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let ticks: Vec<_> = (0..20)
            .map(|_| p.async_tick(PoolQuery::local()).unwrap())
            .collect();
        let seen = p.ticks(PoolQuery::broadcast());
        assert_eq!(seen, Ok(20), "the broadcast overtook calls made before it");
        assert!(!busy.wait().unwrap(), "the spin was released early");
        for tick in ticks {
            tick.wait().unwrap();
        }
    });
}

/// Pools given to `RuntimeBuilder::boot_pools` exist as soon as the start returns (a
/// client process connects only after that), and one that cannot be created fails the
/// start, naming the pool.
#[test]
fn boot_pools_exist_when_the_runtime_starts_and_one_that_fails_fails_the_start() {
    let compose = |entries: &str| {
        let config = RuntimeConfig::from_yaml_str(&format!("compose:\n{entries}")).unwrap();
        let builder = chimaera::builder();
        let pools = chimaera::compose::prepare(builder.modules(), &config.compose).unwrap();
        builder.boot_pools(pools)
    };
    let runtime =
        compose("  - module: MOD_NAME\n    name: booted\n    params:\n      label: boot\n")
            .start()
            .unwrap();
    let booted = ModNameClient::open(&runtime.client(), "booted").unwrap();
    assert_eq!(booted.custom(PoolQuery::local(), "hi", 1).unwrap(), "hi");
    runtime.stop();

    // `admin` is the admin module's pool: MOD_NAME cannot have it.
    let failed = compose("  - module: MOD_NAME\n    name: admin\n").start();
    let Err(err) = failed else {
        panic!("a boot pool that cannot be created must fail the start");
    };
    assert!(matches!(err, chimaera::StartError::Compose(_)), "{err:?}");
    assert!(err.to_string().contains("`admin`"), "{err}");
}
