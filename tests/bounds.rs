//! Resource bounds and faults that need real processes: a runtime process, client
//! processes (this test binary re-run as children) and real SIGKILLs. Each test runs its
//! own runtime instance. No timing assertions: deadlines only bound how long a broken
//! build can hang.
mod support;

use chimaera::admin_api::{self, PoolOptions};
use chimaera::mod_name::{CreateParams, ModNameClient};
use chimaera::prelude::*;
use chimaera_core::codec;
use chimaera_core::transport::shm::client::Forgery;
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};
use support::{wait_for_line, wait_until, Launch, RuntimeProcess, HANG};

impl RuntimeProcess {
    fn client_areas_in_use(&self) -> u32 {
        self.usage().client_areas_in_use
    }

    /// Waits for the runtime process to exit on its own.
    fn wait_exit(&mut self) -> ExitStatus {
        let child = self.child.as_mut().expect("runtime started");
        exited(child, "the runtime process")
    }
}

/// Waits for `child` to exit, killing it and failing the test if it hangs.
fn exited(child: &mut Child, what: &str) -> ExitStatus {
    let deadline = Instant::now() + HANG;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{what} hung");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
#[ignore = "entry point of client child processes, started by the tests in this file"]
fn client_child_entry() {
    let Some((role, chi)) = support::client_child() else {
        return;
    };
    let m = ModNameClient::create(&chi, PoolQuery::local(), "shared", CreateParams::default())
        .expect("child opens the pool");
    match role.as_str() {
        "periodic-sleeper" => {
            // A periodic task that sleeps an hour between runs, then this process is
            // killed: its area must be reclaimed without waiting for the hour.
            let _periodic = m
                .spawn_custom(
                    PoolQuery::local(),
                    Schedule::Periodic(Duration::from_secs(3600)),
                    "tick",
                    0,
                )
                .unwrap();
            println!("periodic started");
            loop {
                std::thread::park();
            }
        }
        "hammer" => {
            // Keep the ring full, without pause, through a runtime stop; every call must
            // end with its result or a typed `RuntimeStopped`, never hang.
            let instance = RuntimeConfig::from_env().unwrap().instance;
            let mut window = std::collections::VecDeque::new();
            let mut calls = 0u32;
            let mut stopped_in_a_row = 0u32;
            loop {
                window.push_back(m.async_custom(PoolQuery::local(), "h", calls));
                calls = calls.wrapping_add(1);
                if calls == 64 {
                    println!("hammering");
                }
                if window.len() < 32 {
                    continue;
                }
                let oldest = window.pop_front().unwrap();
                match oldest.and_then(|call| call.wait()) {
                    Ok(echo) => {
                        assert_eq!(echo, "h");
                        stopped_in_a_row = 0;
                    }
                    Err(TaskError::RuntimeStopped) => stopped_in_a_row += 1,
                    Err(other) => panic!("an untyped failure during stop: {other}"),
                }
                if stopped_in_a_row >= 1024
                    && !chimaera_core::shm::liveness::runtime_alive(&instance).unwrap_or(false)
                {
                    println!("the runtime is gone; every failure was RuntimeStopped");
                    return;
                }
            }
        }
        "flooder" => {
            // A hostile client: pushes slot 0 into its ring again and again, without
            // ever waiting for an answer, until killed.
            let connection = chi.shm_connection().expect("shared-memory client").clone();
            for _ in 0..1024 {
                connection.queue_raw_index(0);
            }
            println!("flooding");
            loop {
                connection.queue_raw_index(0);
            }
        }
        other => panic!("unknown role {other:?}"),
    }
}

#[test]
fn u32_max_containers_from_a_client_process_is_a_typed_error() {
    let runtime = RuntimeProcess::start("containers", "");
    let chi = runtime.client();
    let err = admin_api::get_or_create_pool(
        &chi,
        PoolQuery::local(),
        "MOD_NAME",
        "huge",
        PoolOptions::containers(u32::MAX),
        &codec::encode(&(CreateParams::default(),)).unwrap(),
    )
    .unwrap_err();
    assert_eq!(
        err,
        TaskError::TooManyContainers {
            asked: u32::MAX,
            max: 4096
        }
    );
    let m = ModNameClient::create(&chi, PoolQuery::local(), "after", CreateParams::default())
        .expect("the runtime serves on");
    assert_eq!(m.custom(PoolQuery::local(), "alive", 0).unwrap(), "alive");
}

#[test]
fn a_killed_client_with_a_sleeping_periodic_task_is_reclaimed() {
    let runtime = RuntimeProcess::start("periodic-kill", "");
    let observer = runtime.client();
    let m = ModNameClient::create(
        &observer,
        PoolQuery::local(),
        "shared",
        CreateParams::default(),
    )
    .unwrap();
    assert_eq!(m.custom(PoolQuery::local(), "warm", 0).unwrap(), "warm");
    // Only this observer is attached (the readiness probe's area is reclaimed too).
    wait_until("a settled baseline", || runtime.client_areas_in_use() == 1);

    let mut sleeper = runtime.client_child("periodic-sleeper");
    wait_for_line(&mut sleeper, "periodic started");
    assert_eq!(runtime.client_areas_in_use(), 2);
    sleeper.kill().unwrap();
    sleeper.wait().unwrap();
    // Its periodic task sleeps for an hour: the area comes back only because the task
    // holds none of the client's memory while it sleeps, and is woken by its cancel.
    wait_until("the dead client's area to be reclaimed", || {
        runtime.client_areas_in_use() == 1
    });
    assert_eq!(m.custom(PoolQuery::local(), "after", 1).unwrap(), "after");
}

#[test]
fn a_stop_ends_at_its_grace_period_while_clients_keep_calling() {
    let mut runtime = RuntimeProcess::start("stop-hammer", "");
    let mut hammers: Vec<Child> = (0..2).map(|_| runtime.client_child("hammer")).collect();
    for hammer in &mut hammers {
        wait_for_line(hammer, "hammering");
    }
    let mut stop = runtime
        .chimaera(&["runtime", "stop", "--grace-ms", "200"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run `chimaera runtime stop`");
    assert!(
        exited(&mut stop, "`chimaera runtime stop`").success(),
        "the stop did not complete while clients kept calling"
    );
    assert!(runtime.wait_exit().success(), "the runtime did not exit 0");
    for hammer in &mut hammers {
        assert!(
            exited(hammer, "a calling client").success(),
            "a calling client saw something other than results and RuntimeStopped"
        );
    }
}

#[test]
fn client_controlled_lengths_and_periods_are_bounded_before_anything_is_allocated() {
    // With 2 GiB of address space, allocating a claimed 4 GiB would abort the runtime.
    let runtime = RuntimeProcess::start_with(
        "lengths",
        "",
        Launch {
            address_space_kib: Some(2 << 20),
            ..Launch::CHIMAERA
        },
    );
    let chi = runtime.client();
    let m = ModNameClient::create(&chi, PoolQuery::local(), "p", CreateParams::default()).unwrap();
    let custom = chimaera::mod_name::mod_name_tasks::CUSTOM;
    let connection = chi.shm_connection().expect("shared-memory client").clone();
    let good = codec::encode(&(codec::StrRef("ok"), codec::ByRef(&1u32))).unwrap();
    // Four gigabytes claimed: refused from the length alone, not after allocating it.
    for forgery in [
        Forgery::InputLength(u32::MAX),
        Forgery::InputInClientData {
            offset: 0,
            len: u32::MAX,
        },
    ] {
        let result = connection
            .submit_forged(m.pool_id(), custom, &good, forgery)
            .unwrap()
            .wait();
        assert!(
            matches!(result[0].1, Err(TaskError::Malformed { .. })),
            "{forgery:?}: {result:?}"
        );
    }
    let ten_years = Duration::from_secs(10 * 365 * 24 * 60 * 60);
    let err = m
        .spawn_custom(PoolQuery::local(), Schedule::Periodic(ten_years), "x", 0)
        .unwrap_err();
    assert!(matches!(err, TaskError::PeriodTooLong { .. }), "{err}");
    assert_eq!(
        m.custom(PoolQuery::local(), "still serving", 2).unwrap(),
        "still serving"
    );
}

#[test]
fn a_stop_ends_while_a_hostile_client_floods_its_ring() {
    let mut runtime = RuntimeProcess::start("stop-flood", "");
    let mut flooders: Vec<Child> = (0..2).map(|_| runtime.client_child("flooder")).collect();
    for flooder in &mut flooders {
        wait_for_line(flooder, "flooding");
    }
    let mut stop = runtime
        .chimaera(&["runtime", "stop", "--grace-ms", "200"])
        .stdout(Stdio::null())
        .spawn()
        .expect("run `chimaera runtime stop`");
    let stopped = exited(&mut stop, "`chimaera runtime stop`").success();
    for flooder in &mut flooders {
        let _ = flooder.kill();
        let _ = flooder.wait();
    }
    assert!(
        stopped,
        "the stop did not complete while a client flooded its ring"
    );
    assert!(runtime.wait_exit().success(), "the runtime did not exit 0");
}
