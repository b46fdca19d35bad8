//! A task's coroutine never leaves its worker thread, and a handler that overflows its
//! stack fails alone. Real runtime processes, real client processes (this test binary
//! re-run as children), real `/dev/shm`; and an in-process runtime. Each test runs its
//! own runtime instance. No timing assertions: the deadlines below only turn a hang
//! (what the old scheduler did after an overflow) into a failure.
mod support;

use chimaera::admin_api::PoolOptions;
use chimaera::mod_name::{CreateParams, ModNameClient};
use chimaera::prelude::*;
use std::collections::{HashSet, VecDeque};
use std::process::{Child, Stdio};
use support::{within, write_config, Launch, RuntimeProcess};

/// Containers of the affinity pool: spread over every worker.
const CONTAINERS: u32 = 6;
/// Runtime settings of these tests: three workers, so tasks wake each other across
/// threads, and a small coroutine stack, so the overflow comes quickly.
const CONFIG: &str = "workers:\n  low_latency: 3\n  high_latency: 0\ncoroutine_stack_size: 64KiB\n";
/// The runtime process of these tests; its stderr reports the overflows they provoke.
const QUIET: Launch = Launch {
    quiet_stderr: true,
    ..Launch::CHIMAERA
};

impl RuntimeProcess {
    /// Runs `chimaera runtime stop` and waits for the runtime to exit; both must end.
    fn stop(&mut self) {
        let mut stop = self.chimaera(&["runtime", "stop"]);
        let stopped = within("`chimaera runtime stop`", move || stop.output().unwrap());
        assert!(
            stopped.status.success(),
            "stop failed: {}",
            String::from_utf8_lossy(&stopped.stderr)
        );
        let mut child = self.child.take().unwrap();
        let status = within("the runtime's exit", move || child.wait().unwrap());
        assert!(status.success(), "the runtime exited with {status}");
    }
}

fn affinity_pool(chi: &Client) -> ModNameClient {
    ModNameClient::create_with(
        chi,
        PoolQuery::local(),
        "affinity",
        PoolOptions::containers(CONTAINERS),
        CreateParams::default(),
    )
    .expect("open the affinity pool")
}

/// Calls `affinity_test` `count` times, up to 16 at once, over every container; checks
/// that each task ran on one thread throughout. Returns the threads seen.
fn affinity_calls(m: &ModNameClient, count: u32) -> HashSet<u64> {
    let mut threads = HashSet::new();
    let mut check = |(started, after_sleep, after_lock): (u64, u64, u64)| {
        assert_eq!(
            (after_sleep, after_lock),
            (started, started),
            "a task moved between threads across its waits"
        );
        threads.insert(started);
    };
    let mut window = VecDeque::new();
    for i in 0..count {
        let query = PoolQuery::direct_id(i % CONTAINERS);
        window.push_back(m.async_affinity_test(query, 100 + i % 7 * 50, 20).unwrap());
        if window.len() >= 16 {
            check(window.pop_front().unwrap().wait().unwrap());
        }
    }
    for pending in window {
        check(pending.wait().unwrap());
    }
    threads
}

/// The entry point of client children; only runs when a test starts it.
#[test]
#[ignore = "entry point of client child processes, started by the tests in this file"]
fn client_child_entry() {
    let Some((role, chi)) = support::client_child() else {
        return;
    };
    let m = affinity_pool(&chi);
    let count: u32 = role
        .strip_prefix("affinity:")
        .and_then(|count| count.parse().ok())
        .unwrap_or_else(|| panic!("unknown role {role:?}"));
    let threads = affinity_calls(&m, count);
    println!("affinity done on {} threads", threads.len());
}

#[test]
fn handlers_resume_on_their_own_thread_under_load_from_client_processes() {
    let runtime = RuntimeProcess::start_with("affinity", CONFIG, QUIET);
    let chi = runtime.client();
    let m = affinity_pool(&chi);
    let mut children: Vec<Child> = (0..3)
        .map(|_| {
            runtime
                .client_child_command("affinity:600")
                .stdout(Stdio::null())
                .spawn()
                .expect("spawn a client child")
        })
        .collect();
    // This process is a fourth client; the tasks it sees ran on every worker.
    let threads = affinity_calls(&m, 600);
    assert_eq!(
        threads.len(),
        3,
        "tasks ran on {threads:?}, not on three workers"
    );
    for child in &mut children {
        let status = child.wait().unwrap();
        assert!(status.success(), "a client child failed: {status}");
    }
}

fn is_overflow<T>(result: &Result<T, TaskError>) -> bool {
    matches!(result, Err(TaskError::StackOverflow { method: 31, .. }))
}

#[test]
fn a_stack_overflow_over_shared_memory_fails_its_task_and_releases_what_it_held() {
    let mut runtime = RuntimeProcess::start_with("overflow", CONFIG, QUIET);
    let chi = runtime.client();
    let m = affinity_pool(&chi);
    let admin = AdminClient::attach(&chi, PoolId::ADMIN);
    // A buffer of the client's data share: the handler's claim on it is a bulk claim.
    let buffer = chi.allocate_buffer(4096).unwrap();

    // The overflowing task holds the process-wide lock and the buffer for a moment, so
    // the waiters below (likely) queue behind it, then dies on its guard page.
    let (result, mut buffer) = within("the overflowing call and its waiters", {
        let m = m.clone();
        let mut buffer = buffer;
        move || {
            let overflowing = std::thread::spawn({
                let m = m.clone();
                move || {
                    let result =
                        m.overflow_test(PoolQuery::direct_id(0), &mut buffer, true, 100, true);
                    (result, buffer)
                }
            });
            let waiters: Vec<_> = (0..CONTAINERS)
                .map(|c| {
                    m.async_affinity_test(PoolQuery::direct_id(c), 0, 0)
                        .unwrap()
                })
                .collect();
            for waiter in waiters {
                let (started, after_sleep, after_lock) = waiter.wait().unwrap();
                assert_eq!((after_sleep, after_lock), (started, started));
            }
            overflowing.join().unwrap()
        }
    });
    assert!(is_overflow(&result), "got {result:?}");
    let message = result.unwrap_err().to_string();
    assert!(message.contains("coroutine stack"), "{message}");

    // The claim on the buffer and the lock are free again: the same buffer, claimed
    // exclusively, with the lock.
    buffer.fill(0);
    let again = within("a call after the overflow", {
        let m = m.clone();
        move || {
            let len = m.overflow_test(PoolQuery::direct_id(1), &mut buffer, true, 0, false);
            (len, buffer.iter().all(|&b| b == 1))
        }
    });
    assert_eq!(again, (Ok(4096), true));

    // It happens again on another worker, and the runtime serves on.
    let result = within("a second overflow", {
        let m = m.clone();
        move || m.overflow_test(PoolQuery::direct_id(2), &mut [0u8; 16], false, 0, true)
    });
    assert!(is_overflow(&result), "got {result:?}");
    assert_eq!(
        m.custom(PoolQuery::local(), "still here", 1).unwrap(),
        "still here"
    );

    // The in-flight count went back down: a flush returns.
    within("a flush after overflows", move || {
        admin.flush(PoolQuery::local()).unwrap()
    });
    drop(chi);
    runtime.stop();
}

#[test]
fn a_stack_overflow_in_process_fails_its_task_and_the_runtime_stops_cleanly() {
    let (config, config_path) = write_config("inproc", CONFIG);
    let _ = std::fs::remove_file(&config_path);
    let runtime = chimaera::builder()
        .config(config)
        .start()
        .expect("runtime starts");
    let chi = runtime.client();
    let m = affinity_pool(&chi);

    let result = within("the overflowing call and a waiter", {
        let m = m.clone();
        move || {
            let overflowing = std::thread::spawn({
                let m = m.clone();
                move || m.overflow_test(PoolQuery::direct_id(0), &mut [0u8; 64], true, 50, true)
            });
            m.affinity_test(PoolQuery::direct_id(1), 0, 0).unwrap();
            overflowing.join().unwrap()
        }
    });
    assert!(is_overflow(&result), "got {result:?}");

    let mut inline = [0u8; 32];
    assert_eq!(
        m.overflow_test(PoolQuery::direct_id(0), &mut inline, true, 0, false),
        Ok(32)
    );
    assert!(inline.iter().all(|&b| b == 1));
    // The in-flight count went back down: a flush returns.
    let admin = AdminClient::attach(&chi, PoolId::ADMIN);
    within("a flush after the overflow", move || {
        admin.flush(PoolQuery::local()).unwrap()
    });
    drop(m);
    drop(chi);
    within("stopping the runtime", move || runtime.stop());
}
