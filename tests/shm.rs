//! Client processes and a runtime process over shared memory: real processes (the
//! `chimaera` binary, and this test binary re-run as client children, some as uid
//! `nobody`), real memfds handed over a real Unix socket, real SIGKILLs. Each test runs
//! its own runtime instance. Hostile clients are played through hidden test hooks that
//! write what a faulty client could (`Forgery`, `Scribble`, raw slot indices). No timing
//! assertions: deadlines below only bound how long a broken build can hang.
mod support;

use chimaera::mod_name::{CreateParams, ModNameClient};
use chimaera::prelude::*;
use chimaera_core::transport::shm::client::{Forgery, Scribble};
use std::future::Future;
use std::path::PathBuf;
use std::process::Child;
use std::time::Duration;
use support::{
    free_port, http_get, wait_for_line, wait_for_success, wait_until, within, Launch,
    RuntimeProcess, ROLE,
};

/// The entry point of client children; only runs when a test starts it.
#[test]
#[ignore = "entry point of client child processes, started by the tests in this file"]
fn client_child_entry() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    if role == "refused" {
        // Runs as uid 65534, which the runtime's config does not list.
        match Client::connect() {
            Err(chimaera::ConnectError::PermissionDenied { uid: 65534, .. }) => {
                println!("refused as expected");
                return;
            }
            Err(other) => panic!("expected PermissionDenied, got {other}"),
            Ok(_) => panic!("a uid the config does not list was served"),
        }
    }
    let chi = Client::connect().expect("child connects");
    let m = ModNameClient::create(&chi, PoolQuery::local(), "shared", CreateParams::default())
        .expect("child opens the pool");
    if role == "overflower" {
        // Runs as uid 65534, listed in `access.uids`, with `quotas.stack_overflows: 3`.
        let overflow =
            |m: &ModNameClient| m.overflow_test(PoolQuery::local(), &mut [0u8; 16], false, 0, true);
        for round in 0..3 {
            let result = overflow(&m);
            assert!(
                matches!(result, Err(TaskError::StackOverflow { method: 31, .. })),
                "overflow {round}: {result:?}"
            );
        }
        let spent = |result: Result<String, TaskError>| match result {
            Err(TaskError::QuotaExceeded {
                what,
                limit: 3,
                config_key,
            }) => {
                assert_eq!(
                    (what.as_str(), config_key.as_str()),
                    ("stack overflows", "quotas.stack_overflows")
                );
            }
            other => panic!("expected the overflow quota, got {other:?}"),
        };
        spent(overflow(&m).map(|len| len.to_string()));
        spent(m.custom(PoolQuery::local(), "after", 0));
        // The quota is the uid's: a new connection finds it spent.
        let again = Client::connect().expect("the child connects again");
        let m = ModNameClient::attach(&again, m.pool_id());
        spent(m.custom(PoolQuery::local(), "reconnected", 0));
        println!("overflow quota checks done");
        return;
    }
    #[cfg(feature = "bdev")]
    if role == "devices" {
        file_device_child(&chi);
        return;
    }
    if role == "pools" {
        containers_quota_child(&chi);
        return;
    }
    if role == "periodic" {
        periodic_quota_child(&m);
        return;
    }
    if role == "connector" {
        connections_quota_child(chi);
        return;
    }
    if role == "waiter" {
        waiting_quota_child(&m);
        return;
    }
    if role == "hoarder" {
        input_hoarder_child(&chi, &m);
        return;
    }
    if role == "names" {
        pool_names_child(&chi);
        return;
    }
    if role == "private-owner" || role == "private-intruder" {
        private_pool_child(&chi, &role);
        return;
    }
    if role == "granted" {
        // Runs as uid 65534, listed in `access.uids` but not in `access.admin_uids`.
        assert_eq!(m.custom(PoolQuery::local(), "hi", 0).unwrap(), "hi");
        let admin = AdminClient::attach(&chi, PoolId::ADMIN);
        let denied = |result: Result<(), TaskError>, action: &str| match result {
            Err(TaskError::PermissionDenied {
                action: refused,
                uid: 65534,
            }) => {
                assert_eq!(refused, action)
            }
            other => panic!("{action}: expected PermissionDenied, got {other:?}"),
        };
        denied(admin.flush(PoolQuery::local()).map(|_| ()), "Flush");
        denied(
            admin.destroy_pool(PoolQuery::local(), m.pool_id()),
            "DestroyPool on a pool it did not create",
        );
        denied(admin.stop_runtime(PoolQuery::local(), 0), "StopRuntime");
        assert_eq!(m.custom(PoolQuery::local(), "still", 1).unwrap(), "still");
        println!("granted checks done");
        return;
    }
    let mut parts = role.split(':');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("echo"), Some(id), Some(count)) => {
            let count: u32 = count.parse().unwrap();
            let mut window = std::collections::VecDeque::new();
            for i in 0..count {
                let text = format!("c{id}-{i}");
                if i % 3 == 0 {
                    assert_eq!(m.custom(PoolQuery::local(), &text, i).unwrap(), text);
                } else {
                    window.push_back((
                        text.clone(),
                        m.async_custom(PoolQuery::dynamic(), &text, i).unwrap(),
                    ));
                    if window.len() > 32 {
                        let (expected, pending) = window.pop_front().unwrap();
                        assert_eq!(pending.wait().unwrap(), expected);
                    }
                }
            }
            for (expected, pending) in window {
                assert_eq!(pending.wait().unwrap(), expected);
            }
            println!("echo {id} done");
        }
        (Some("victim"), _, _) => {
            // Keep tasks in flight, with large inputs and outputs, until killed, and
            // hold buffers in the data share.
            let _buffers: Vec<_> = (0..3)
                .map(|_| chi.allocate_buffer(64 * 1024).unwrap())
                .collect();
            let big = "v".repeat(64 * 1024);
            println!("victim ready");
            loop {
                let pending: Vec<_> = (0..16)
                    .map(|i| {
                        m.async_custom(PoolQuery::local(), if i % 2 == 0 { &big } else { "x" }, i)
                            .unwrap()
                    })
                    .collect();
                let _holder = m.async_co_mutex_test(PoolQuery::local(), 0, 5).unwrap();
                drop(pending);
            }
        }
        (Some("bdev-victim"), _, _) => {
            // Keep 32 O_DIRECT writes and reads of the file device in flight, all on
            // buffers of this client's data share (the kernel reads and writes them in
            // place), until killed.
            use chimaera::bdev::{BdevClient, BdevParams};
            let path = std::env::var("CHI_TEST_BDEV").expect("device path");
            let params = BdevParams {
                total_size: 16 << 20,
                direct: true,
                ..BdevParams::default()
            };
            let bdev = BdevClient::create(&chi, PoolQuery::local(), &path, params).unwrap();
            let blocks: Vec<_> = (0..64)
                .map(|_| bdev.allocate_blocks(PoolQuery::local(), 4096).unwrap()[0])
                .collect();
            let mut share = chi.allocate_buffer(64 * 4096).unwrap();
            share.fill(0x5a);
            let mut ready = false;
            loop {
                let (writes, reads) = share.split_at_mut(32 * 4096);
                let mut pending = Vec::new();
                for (slice, block) in writes.chunks(4096).zip(&blocks[..32]) {
                    pending.push(bdev.async_write(PoolQuery::local(), *block, slice).unwrap());
                }
                let mut read_pending = Vec::new();
                for (slice, block) in reads.chunks_mut(4096).zip(&blocks[32..]) {
                    read_pending.push(bdev.async_read(PoolQuery::local(), *block, slice).unwrap());
                }
                if !ready {
                    println!("bdev victim ready");
                    ready = true;
                }
                drop(pending);
                drop(read_pending);
            }
        }
        (Some("bdev"), Some(id), Some(count)) => {
            use chimaera::bdev::{BdevClient, BdevParams};
            let path = std::env::var("CHI_TEST_BDEV").expect("device path");
            let params = BdevParams {
                total_size: 32 << 20,
                ..BdevParams::default()
            };
            let bdev = BdevClient::create(&chi, PoolQuery::local(), &path, params).unwrap();
            let blocks: Vec<_> = (0..16)
                .map(|_| bdev.allocate_blocks(PoolQuery::local(), 4096).unwrap()[0])
                .collect();
            let mut written: Vec<Option<Vec<u8>>> = vec![None; blocks.len()];
            let id_number = id.parse::<u64>().unwrap();
            // Even clients pass buffers of their data share (by reference, zero-copy),
            // odd ones ordinary heap slices (carried inline).
            let zero_copy = id_number % 2 == 0;
            let mut out = chi.allocate_buffer(4096).unwrap();
            let mut back = chi.allocate_buffer(4096).unwrap();
            let (mut heap_out, mut heap_back) = (vec![0u8; 4096], vec![0u8; 4096]);
            let mut seed: u64 = id_number * 7919 + 1;
            let mut next = || {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed
            };
            for _ in 0..count.parse::<u32>().unwrap() {
                let k = (next() % blocks.len() as u64) as usize;
                if next() % 2 == 0 {
                    let fill = next();
                    let data: &mut [u8] = if zero_copy { &mut out } else { &mut heap_out };
                    for (i, byte) in data.iter_mut().enumerate() {
                        *byte = (fill >> (i % 8 * 8)) as u8 ^ i as u8;
                    }
                    assert_eq!(
                        bdev.write(PoolQuery::local(), blocks[k], data).unwrap(),
                        4096
                    );
                    written[k] = Some(data.to_vec());
                } else if let Some(expected) = &written[k] {
                    let data: &mut [u8] = if zero_copy { &mut back } else { &mut heap_back };
                    data.fill(0);
                    assert_eq!(
                        bdev.read(PoolQuery::local(), blocks[k], data).unwrap(),
                        4096
                    );
                    assert!(data == &expected[..], "client {id} block {k}");
                }
            }
            println!("bdev {id} done");
        }
        other => panic!("unknown role {other:?}"),
    }
}

#[test]
fn four_client_processes_get_every_result_right() {
    let runtime = RuntimeProcess::start("four", "");
    let mut children: Vec<Child> = (0..4)
        .map(|id| runtime.client_child(&format!("echo:{id}:10000")))
        .collect();
    for child in &mut children {
        let status = child.wait().unwrap();
        assert!(status.success(), "a client child failed: {status}");
    }
}

#[test]
fn a_killed_client_disturbs_no_one_and_is_reclaimed() {
    let runtime = RuntimeProcess::start("victim", "");
    let observer = runtime.client();
    let m = ModNameClient::create(
        &observer,
        PoolQuery::local(),
        "shared",
        CreateParams::default(),
    )
    .unwrap();
    assert_eq!(m.custom(PoolQuery::local(), "warm", 0).unwrap(), "warm");
    // Only this observer is attached (the readiness probe's area is reclaimed too),
    // and its call is over: a task counts in flight until it is dropped, just after its
    // answer is written, so the answer can arrive a moment before the count drops.
    wait_until("a settled baseline", || {
        let usage = runtime.usage();
        usage.client_areas_in_use == 1 && usage.tasks_in_flight == 0
    });
    let baseline = runtime.usage();
    assert_eq!(baseline.tasks_in_flight, 0);

    let mut victim = runtime.client_child("victim");
    wait_for_line(&mut victim, "victim ready");
    let mut others: Vec<Child> = (0..2)
        .map(|id| runtime.client_child(&format!("echo:{id}:3000")))
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    victim.kill().unwrap();
    victim.wait().unwrap();
    for child in &mut others {
        assert!(child.wait().unwrap().success(), "a bystander client failed");
    }
    wait_until("the runtime to reclaim the dead client", || {
        runtime.usage() == baseline
    });
    assert_eq!(m.custom(PoolQuery::local(), "after", 1).unwrap(), "after");
}

#[test]
fn a_killed_runtime_fails_waiting_calls_and_a_new_one_takes_over() {
    let mut runtime = RuntimeProcess::start("phoenix", "");
    let chi = runtime.client();
    let m = ModNameClient::create(&chi, PoolQuery::local(), "p", CreateParams::default()).unwrap();
    let _holder = m
        .async_co_mutex_test(PoolQuery::local(), 0, 60_000)
        .unwrap();
    let waiting = m.async_co_mutex_test(PoolQuery::local(), 1, 0).unwrap();
    // Polled once, so the connection's reply watcher waits for it.
    let mut awaited = Box::pin(m.async_co_mutex_test(PoolQuery::local(), 2, 0).unwrap());
    let polled = support::block_on(std::future::poll_fn(|cx| {
        std::task::Poll::Ready(awaited.as_mut().poll(cx).is_ready())
    }));
    assert!(!polled, "the call waits behind the holder");
    runtime.kill();
    // Awaited before anything else notices: the watcher finds the dead runtime and
    // wakes the awaiting task.
    assert_eq!(
        within("an awaited call of a killed runtime", move || {
            support::block_on(awaited)
        }),
        Err(TaskError::RuntimeStopped)
    );
    assert_eq!(waiting.wait(), Err(TaskError::RuntimeStopped));
    assert_eq!(
        m.custom(PoolQuery::local(), "x", 0),
        Err(TaskError::RuntimeStopped)
    );
    assert_eq!(
        chi.allocate_buffer(4096).unwrap_err(),
        BufferError::ConnectionLost(TaskError::RuntimeStopped)
    );

    runtime.spawn();
    let chi = runtime.client();
    let m = ModNameClient::create(&chi, PoolQuery::local(), "p", CreateParams::default()).unwrap();
    assert_eq!(m.custom(PoolQuery::local(), "again", 0).unwrap(), "again");
}

#[test]
fn malformed_tasks_fail_alone_and_the_runtime_goes_on() {
    let runtime = RuntimeProcess::start("malformed", "");
    let chi = runtime.client();
    let m = ModNameClient::create(&chi, PoolQuery::local(), "p", CreateParams::default()).unwrap();
    let pool = m.pool_id();
    let custom = chimaera::mod_name::mod_name_tasks::CUSTOM;
    let connection = chi.shm_connection().expect("shared-memory client").clone();

    let mut garbage = chimaera_core::codec::Bytes::new();
    garbage.extend_from_slice(&[0xEE; 40]);
    let result = chi
        .submit(pool, custom, PoolQuery::local(), garbage, None)
        .unwrap()
        .wait();
    assert!(
        matches!(result[0].1, Err(TaskError::Malformed { .. })),
        "{result:?}"
    );

    let good = chimaera_core::codec::encode(&(
        chimaera_core::codec::StrRef("ok"),
        chimaera_core::codec::ByRef(&1u32),
    ))
    .unwrap();
    for forgery in [
        Forgery::InputInClientData {
            offset: u64::MAX - 3,
            len: 64,
        },
        Forgery::InputInClientData {
            offset: 1 << 40,
            len: 16,
        },
        Forgery::InputLength(1 << 30),
        Forgery::QueryTag(99),
        Forgery::Kind(7),
        Forgery::InputWhere(42),
    ] {
        let result = connection
            .submit_forged(pool, custom, &good, forgery)
            .unwrap()
            .wait();
        assert!(
            matches!(result[0].1, Err(TaskError::Malformed { .. })),
            "{forgery:?}: {result:?}"
        );
    }
    connection.queue_raw_index(u32::MAX);
    connection.queue_raw_index(1_000_000);

    assert_eq!(
        ModNameClient::attach(&chi, PoolId::new(4242, 0)).custom(PoolQuery::local(), "x", 0),
        Err(TaskError::UnknownPool {
            pool: PoolId::new(4242, 0)
        })
    );
    let unknown = chi
        .submit(pool, 99, PoolQuery::local(), good.clone(), None)
        .unwrap()
        .wait();
    assert!(matches!(
        unknown[0].1,
        Err(TaskError::UnknownMethod { method: 99, .. })
    ));
    assert_eq!(
        m.custom(PoolQuery::local(), "still serving", 2).unwrap(),
        "still serving"
    );
}

#[test]
fn a_tiny_queue_applies_backpressure_and_loses_nothing() {
    let runtime = RuntimeProcess::start("tiny", "queue_depth: 2\n");
    let chi = runtime.client();
    let m = ModNameClient::create(&chi, PoolQuery::local(), "p", CreateParams::default()).unwrap();
    let admin = AdminClient::attach(&chi, PoolId::ADMIN);
    let before = admin.status(PoolQuery::local()).unwrap().completed;
    let per_thread = 300u32;
    std::thread::scope(|scope| {
        for t in 0..4u32 {
            let m = m.clone();
            scope.spawn(move || {
                for i in 0..per_thread {
                    let text = format!("{t}-{i}");
                    if i % 2 == 0 {
                        assert_eq!(m.custom(PoolQuery::local(), &text, i).unwrap(), text);
                    } else {
                        let a = m.async_custom(PoolQuery::local(), &text, i).unwrap();
                        let b = m.async_custom(PoolQuery::local(), &text, i).unwrap();
                        assert_eq!(a.wait().unwrap(), text);
                        assert_eq!(b.wait().unwrap(), text);
                    }
                }
            });
        }
    });
    let after = admin.status(PoolQuery::local()).unwrap().completed;
    // Every task ran exactly once: the ones above, plus the first status call.
    let issued = u64::from(4 * (per_thread / 2 + 2 * (per_thread / 2)));
    assert_eq!(after - before, issued + 1);
}

#[test]
fn a_clean_stop_exits_zero_and_leaves_no_segment() {
    let mut runtime = RuntimeProcess::start("stop", "");
    let chi = runtime.client();
    ModNameClient::create(&chi, PoolQuery::local(), "p", CreateParams::default()).unwrap();
    drop(chi);
    let stop = runtime.chimaera(&["runtime", "stop"]).output().unwrap();
    assert!(
        stop.status.success(),
        "stop failed: {}",
        String::from_utf8_lossy(&stop.stderr)
    );
    let status = runtime.child.take().unwrap().wait().unwrap();
    assert!(status.success(), "the runtime exited with {status}");
    let left = chimaera_core::shm::dir::instance_files(runtime.instance()).unwrap();
    assert!(left.is_empty(), "left in /dev/shm: {left:?}");
}

#[test]
fn fire_and_forget_and_periodic_tasks_from_a_client_process() {
    let runtime = RuntimeProcess::start("spawn", "");
    let chi = runtime.client();
    let m = ModNameClient::create(&chi, PoolQuery::local(), "p", CreateParams::default()).unwrap();
    let admin = AdminClient::attach(&chi, PoolId::ADMIN);
    let completed = || admin.status(PoolQuery::local()).unwrap().completed;

    let before = completed();
    for i in 0..10 {
        m.spawn_custom(PoolQuery::local(), Schedule::FireAndForget, "ff", i)
            .unwrap();
    }
    admin.flush(PoolQuery::local()).unwrap();
    // The ten tasks, the flush and the first status call.
    assert!(completed() >= before + 12);

    let periodic = m
        .spawn_custom(
            PoolQuery::local(),
            Schedule::Periodic(Duration::from_millis(2)),
            "tick",
            0,
        )
        .unwrap();
    let start = completed();
    wait_until("the periodic task to repeat", || completed() >= start + 20);
    periodic.cancel().unwrap();
    assert!(
        matches!(periodic.cancel(), Err(TaskError::NoSuchPeriodicTask { .. })),
        "cancelled twice"
    );
    // Once cancelled, only this test's own status calls complete.
    std::thread::sleep(Duration::from_millis(30));
    let settled = completed();
    std::thread::sleep(Duration::from_millis(30));
    assert_eq!(completed(), settled + 1);
}

#[test]
fn a_bdev_pool_composed_at_boot_serves_a_client_process() {
    use chimaera::bdev::{BdevClient, BdevParams, BdevType};
    let runtime = RuntimeProcess::start(
        "bdev",
        "compose:\n  - module: bdev\n    name: ram0\n    params: { bdev_type: ram, capacity: 64MiB }\n",
    );
    let chi = runtime.client();
    let params = BdevParams {
        bdev_type: BdevType::Ram,
        total_size: 64 << 20,
        ..BdevParams::default()
    };
    // Re-opening with the composed parameters yields the composed pool.
    let bdev = BdevClient::create(&chi, PoolQuery::local(), "ram0", params).unwrap();
    let blocks = bdev.allocate_blocks(PoolQuery::local(), 300 << 10).unwrap();
    let sizes: Vec<u64> = blocks.iter().map(|b| b.size).collect();
    assert_eq!(sizes, vec![128 << 10, 128 << 10, 64 << 10]);
    let pattern: Vec<u8> = (0..4096u32).map(|i| (i * 7 % 251) as u8).collect();
    assert_eq!(
        bdev.write(PoolQuery::local(), blocks[2], &pattern).unwrap(),
        4096
    );
    let mut read_back = vec![0u8; 4096];
    bdev.read(PoolQuery::local(), blocks[2], &mut read_back)
        .unwrap();
    assert_eq!(read_back, pattern);

    // Zero-copy: a buffer of the client's data share travels as a reference both ways.
    let mut buffer = chi.allocate_buffer(8192).unwrap();
    assert!(buffer.is_shared());
    assert!(chi.bulk_ref(&buffer[4096..]).is_shared());
    buffer[..4096].copy_from_slice(&pattern);
    assert_eq!(
        bdev.write(PoolQuery::local(), blocks[0], &buffer[..4096])
            .unwrap(),
        4096
    );
    let read = bdev
        .async_read(PoolQuery::local(), blocks[0], &mut buffer[4096..])
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!(read, 4096);
    assert_eq!(&buffer[4096..], &pattern[..]);
    drop(buffer);

    // A reference outside the client's share fails that task alone.
    let forged = chimaera_core::codec::encode(&(
        blocks[0],
        chimaera_core::bulk::Bulk::Shared {
            offset: u64::MAX - 8,
            len: 4096,
        },
    ))
    .unwrap();
    let write = chimaera::bdev::bdev_tasks::WRITE;
    let result = chi
        .submit(bdev.pool_id(), write, PoolQuery::local(), forged, None)
        .unwrap()
        .wait();
    assert!(
        matches!(result[0].1, Err(TaskError::Malformed { .. })),
        "{result:?}"
    );
    bdev.free_blocks(PoolQuery::local(), blocks).unwrap();
    let mismatch = BdevClient::create(&chi, PoolQuery::local(), "ram0", BdevParams::default());
    assert!(matches!(mismatch, Err(TaskError::PoolMismatch { .. })));
}

#[test]
fn four_client_processes_check_their_own_blocks_on_a_file_device() {
    let runtime = RuntimeProcess::start("bdev4", "");
    let path =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{}.img", runtime.instance()));
    let _ = std::fs::remove_file(&path);
    let path_text = path.to_str().unwrap().to_owned();
    let mut children: Vec<Child> = (0..4)
        .map(|id| {
            runtime.client_child_with(&format!("bdev:{id}:2000"), &[("CHI_TEST_BDEV", &path_text)])
        })
        .collect();
    for child in &mut children {
        assert!(child.wait().unwrap().success(), "a bdev client failed");
    }
    let _ = std::fs::remove_file(&path);
}

#[test]
fn a_client_killed_with_file_io_in_flight_harms_nobody_and_the_runtime_stops() {
    // The kernel reads and writes a client's shared buffers in place while its I/O is
    // in flight on a worker's ring: killed meanwhile, the client's memory must stay
    // mapped until the kernel is done, other clients keep their device, and the
    // runtime, asked to stop, waits for what is in flight and exits.
    use chimaera::bdev::{BdevClient, BdevParams};
    let mut runtime = RuntimeProcess::start("bdevkill", "");
    let path =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{}.img", runtime.instance()));
    let _ = std::fs::remove_file(&path);
    let path_text = path.to_str().unwrap().to_owned();
    for round in 0..3 {
        let mut victim = runtime.client_child_with("bdev-victim", &[("CHI_TEST_BDEV", &path_text)]);
        wait_for_line(&mut victim, "bdev victim ready");
        std::thread::sleep(Duration::from_millis(50 + 30 * round));
        victim.kill().unwrap();
        victim.wait().unwrap();
    }
    let chi = runtime.client();
    let params = BdevParams {
        total_size: 16 << 20,
        direct: true,
        ..BdevParams::default()
    };
    let bdev = BdevClient::create(&chi, PoolQuery::local(), &path_text, params).unwrap();
    let block = bdev.allocate_blocks(PoolQuery::local(), 4096).unwrap()[0];
    let pattern: Vec<u8> = (0..4096u32).map(|i| (i * 31 % 251) as u8).collect();
    let mut data = chi.allocate_buffer(4096).unwrap();
    data.copy_from_slice(&pattern);
    assert_eq!(bdev.write(PoolQuery::local(), block, &data).unwrap(), 4096);
    data.fill(0);
    assert_eq!(
        bdev.read(PoolQuery::local(), block, &mut data).unwrap(),
        4096
    );
    assert_eq!(&data[..], &pattern[..]);
    drop(data);
    drop(chi);
    let status = runtime
        .chimaera(&["runtime", "stop"])
        .status()
        .expect("run runtime stop");
    assert!(status.success());
    let mut child = runtime.child.take().expect("the runtime runs");
    let exited = within("the runtime to exit", move || child.wait().unwrap());
    assert!(exited.success(), "{exited:?}");
    let _ = std::fs::remove_file(&path);
}

#[test]
fn synced_data_survives_a_killed_runtime() {
    use chimaera::bdev::{BdevClient, BdevParams};
    use std::io::{Read, Seek, SeekFrom};
    let mut runtime = RuntimeProcess::start("durable", "");
    let path =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{}.img", runtime.instance()));
    let _ = std::fs::remove_file(&path);
    let chi = runtime.client();
    let params = BdevParams {
        total_size: 8 << 20,
        ..BdevParams::default()
    };
    let bdev =
        BdevClient::create(&chi, PoolQuery::local(), path.to_str().unwrap(), params).unwrap();
    let block = bdev.allocate_blocks(PoolQuery::local(), 4096).unwrap()[0];
    let pattern: Vec<u8> = (0..4096u32).map(|i| (i * 13 % 256) as u8).collect();
    bdev.write(PoolQuery::local(), block, &pattern).unwrap();
    bdev.sync(PoolQuery::local()).unwrap();
    runtime.kill();
    let mut file = std::fs::File::open(&path).unwrap();
    file.seek(SeekFrom::Start(block.offset)).unwrap();
    let mut on_disk = vec![0u8; 4096];
    file.read_exact(&mut on_disk).unwrap();
    assert_eq!(on_disk, pattern);
    let _ = std::fs::remove_file(&path);
}

#[test]
fn no_client_can_reach_another_clients_memory() {
    let runtime = RuntimeProcess::start("private", "");
    let first = runtime.client();
    let second = runtime.client();
    let a =
        ModNameClient::create(&first, PoolQuery::local(), "p", CreateParams::default()).unwrap();
    let b =
        ModNameClient::create(&second, PoolQuery::local(), "p", CreateParams::default()).unwrap();
    assert_eq!(a.custom(PoolQuery::local(), "a", 0).unwrap(), "a");
    assert_eq!(b.custom(PoolQuery::local(), "b", 0).unwrap(), "b");
    // Each client's memory is a memfd handed to it alone: the instance has no file a
    // process could open to map clients' rings, slots or data (only the runtime's lock
    // and its socket).
    let files = chimaera_core::shm::dir::instance_files(runtime.instance()).unwrap();
    let mappable: Vec<_> = files
        .iter()
        .filter(|path| {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            !name.ends_with(".lock") && !name.ends_with(".sock")
        })
        .collect();
    assert!(
        mappable.is_empty(),
        "files any client could map: {mappable:?}"
    );
    let first_area = first.shm_connection().unwrap().client_index();
    let second_area = second.shm_connection().unwrap().client_index();
    assert_ne!(first_area, second_area);
}

#[test]
fn pushing_a_slot_again_leaks_no_output_space_and_starves_no_one() {
    // Per client: 64 KiB of output space; the old shared runtime-data segment was 256 KiB.
    let runtime = RuntimeProcess::start(
        "duplicate",
        "max_clients: 4\nshm:\n  runtime_data_size: 256KiB\n",
    );
    let hostile = runtime.client();
    let honest = runtime.client();
    let h =
        ModNameClient::create(&hostile, PoolQuery::local(), "p", CreateParams::default()).unwrap();
    let o =
        ModNameClient::create(&honest, PoolQuery::local(), "p", CreateParams::default()).unwrap();
    let connection = hostile.shm_connection().unwrap().clone();
    let admin = AdminClient::attach(&honest, PoolId::ADMIN);
    // A fresh connection's first call takes slot 0. Pushing that index again while its
    // task runs (it sleeps 100 ms) must not run the task again.
    let before = admin.status(PoolQuery::local()).unwrap().completed;
    let slow = h.async_co_mutex_test(PoolQuery::local(), 0, 100).unwrap();
    for _ in 0..20 {
        connection.queue_raw_index(0);
    }
    slow.wait().unwrap();
    wait_until("the hostile client's tasks to settle", || {
        runtime.usage().tasks_in_flight == 0
    });
    let after = admin.status(PoolQuery::local()).unwrap().completed;
    assert_eq!(
        after - before,
        2,
        "the first status call and the task, once"
    );
    // Push the slot of a large output again and again, while it is in flight and after
    // it was answered: each answer's output block is freed before the next is taken.
    let big = "d".repeat(6000);
    let pending = h.async_custom(PoolQuery::local(), &big, 0).unwrap();
    for _ in 0..200 {
        connection.queue_raw_index(0);
    }
    assert_eq!(pending.wait().unwrap(), big);
    wait_until("the hostile client's tasks to settle", || {
        runtime.usage().tasks_in_flight == 0
    });
    let usage = runtime.usage();
    assert!(
        usage.output_bytes_in_use <= 64 << 10,
        "output space in use beyond one client's share: {usage:?}"
    );
    let honest_text = "k".repeat(8 << 10);
    assert_eq!(
        o.custom(PoolQuery::local(), &honest_text, 1).unwrap(),
        honest_text
    );
}

#[test]
fn a_forged_input_length_costs_the_runtime_no_memory() {
    let runtime = RuntimeProcess::start("huge", "");
    let chi = runtime.client();
    let m = ModNameClient::create(&chi, PoolQuery::local(), "p", CreateParams::default()).unwrap();
    let good = chimaera_core::codec::encode(&(
        chimaera_core::codec::StrRef("ok"),
        chimaera_core::codec::ByRef(&1u32),
    ))
    .unwrap();
    let result = chi
        .shm_connection()
        .unwrap()
        .submit_forged(
            m.pool_id(),
            chimaera::mod_name::mod_name_tasks::CUSTOM,
            &good,
            Forgery::InputLength(1 << 31),
        )
        .unwrap()
        .wait();
    assert!(
        matches!(result[0].1, Err(TaskError::Malformed { .. })),
        "{result:?}"
    );
    // The length was refused before anything was allocated for it: the runtime's peak
    // resident memory stayed far below the 2 GiB the header claimed.
    let pid = runtime.child.as_ref().unwrap().id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let peak_kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status");
    assert!(peak_kib < 1 << 20, "the runtime peaked at {peak_kib} KiB");
    assert_eq!(m.custom(PoolQuery::local(), "after", 0).unwrap(), "after");
}

#[test]
fn a_client_that_breaks_its_own_ring_and_leaves_harms_no_later_client() {
    let runtime = RuntimeProcess::start("poison", "max_clients: 1\n");
    wait_until("the readiness probe to leave", || {
        runtime.usage().client_areas_in_use == 0
    });
    {
        let chi = runtime.client();
        let connection = chi.shm_connection().unwrap().clone();
        connection.scribble(Scribble::RingMagic(0xdead));
        connection.scribble(Scribble::RingCapacity(u32::MAX));
        connection.scribble(Scribble::ControlState(u32::MAX));
    }
    wait_until("the poisoner to be gone", || {
        runtime.usage().client_areas_in_use == 0
    });
    for attempt in 0..5 {
        let chi = within("connect", {
            let config = runtime.config.clone();
            move || Client::connect_to(&config)
        })
        .unwrap_or_else(|err| panic!("connect {attempt} after a poisoned area: {err}"));
        let m =
            ModNameClient::create(&chi, PoolQuery::local(), "p", CreateParams::default()).unwrap();
        assert_eq!(
            m.custom(PoolQuery::local(), "fine", attempt).unwrap(),
            "fine"
        );
    }
    assert!(runtime.usage().client_areas_in_use <= 1);
}

#[test]
fn a_client_the_runtime_disowns_gets_a_typed_error_not_a_hang() {
    let runtime = RuntimeProcess::start("disown", "");
    let bystander = runtime.client();
    let b = ModNameClient::create(&bystander, PoolQuery::local(), "p", CreateParams::default())
        .unwrap();
    let chi = runtime.client();
    let m = ModNameClient::create(&chi, PoolQuery::local(), "p", CreateParams::default()).unwrap();
    assert_eq!(m.custom(PoolQuery::local(), "ok", 0).unwrap(), "ok");
    // A call that will still be waiting when the runtime gives up on the client.
    let _holder = m
        .async_co_mutex_test(PoolQuery::local(), 0, 60_000)
        .unwrap();
    let waiting = m.async_co_mutex_test(PoolQuery::local(), 1, 0).unwrap();
    // A tail far ahead of the head: the runtime finds the ring corrupt.
    chi.shm_connection()
        .unwrap()
        .scribble(Scribble::RingTail(1 << 30));
    let waited = within("the waiting call", move || waiting.wait());
    assert_eq!(waited, Err(TaskError::Disowned));
    let next = within("the next call", move || {
        m.custom(PoolQuery::local(), "x", 1)
    });
    assert_eq!(next, Err(TaskError::Disowned));
    assert_eq!(
        chi.allocate_buffer(4096).unwrap_err(),
        BufferError::ConnectionLost(TaskError::Disowned)
    );
    assert_eq!(b.custom(PoolQuery::local(), "on", 2).unwrap(), "on");
}

#[test]
fn only_listed_uids_connect_and_only_admins_administer() {
    let closed = RuntimeProcess::start("closed", "");
    wait_for_success(
        closed.client_child_as_nobody("refused", &[]),
        "refused as expected",
    );

    let open = RuntimeProcess::start("granted", "access:\n  uids: [65534]\n");
    // The owner's pool, which every allowed uid may use but only admins destroy.
    let chi = open.client();
    ModNameClient::create(&chi, PoolQuery::local(), "shared", CreateParams::default()).unwrap();
    wait_for_success(
        open.client_child_as_nobody("granted", &[]),
        "granted checks done",
    );
    // The owner still administers a runtime that served the refused calls.
    let admin = AdminClient::attach(&chi, PoolId::ADMIN);
    admin.flush(PoolQuery::local()).unwrap();
}

/// A uid without admin rights may make handlers overflow their stacks only
/// `quotas.stack_overflows` times (each leaves its dead stack behind for good): then its
/// tasks fail with `QuotaExceeded`, on every connection of that uid, while the runtime's
/// owner is served (and not counted).
#[test]
fn a_uid_past_its_stack_overflow_quota_is_refused_and_the_owner_served() {
    let runtime = RuntimeProcess::start_with(
        "overflow-quota",
        "access:\n  uids: [65534]\nquotas:\n  stack_overflows: 3\ncoroutine_stack_size: 64KiB\n",
        Launch {
            quiet_stderr: true,
            ..Launch::CHIMAERA
        },
    );
    wait_for_success(
        runtime.client_child_as_nobody("overflower", &[]),
        "overflow quota checks done",
    );
    let chi = runtime.client();
    let m = ModNameClient::open(&chi, "shared").unwrap();
    for _ in 0..4 {
        let result = m.overflow_test(PoolQuery::local(), &mut [0u8; 16], false, 0, true);
        assert!(
            matches!(result, Err(TaskError::StackOverflow { .. })),
            "{result:?}"
        );
    }
    assert_eq!(m.custom(PoolQuery::local(), "owner", 0).unwrap(), "owner");
}

/// The child of `a_uid_without_admin_rights_cannot_make_the_runtime_open_a_path`: runs
/// as uid 65534; `CHILD_PATH` names a file it must not get the runtime to create, and
/// `CHILD_OWNED` a file device the owner made (its pool name, which is its path).
#[cfg(feature = "bdev")]
fn file_device_child(chi: &Client) {
    use chimaera::bdev::{BdevClient, BdevParams, BdevType};
    let path = std::env::var("CHILD_PATH").expect("CHILD_PATH");
    let file = BdevParams {
        bdev_type: BdevType::File,
        total_size: 1 << 20,
        ..BdevParams::default()
    };
    let err = BdevClient::create(chi, PoolQuery::local(), &path, file).unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("uid 65534 may not create the file device"),
        "{message}"
    );
    // RAM devices are allowed, as far as the uid's `quotas.memory` (3 MiB and 16 KiB)
    // goes.
    let ram = |size: u64| BdevParams {
        bdev_type: BdevType::Ram,
        total_size: size,
        ..BdevParams::default()
    };
    BdevClient::create(chi, PoolQuery::local(), "child-ram", ram(1 << 20)).unwrap();
    let over = BdevClient::create(chi, PoolQuery::local(), "child-ram-big", ram(4 << 20));
    let message = over.unwrap_err().to_string();
    assert!(
        message.contains("RAM device of 4194304 bytes") && message.contains("quotas.memory"),
        "{message}"
    );
    BdevClient::create(chi, PoolQuery::local(), "child-ram-rest", ram(2 << 20)).unwrap();
    // The owner's file device opens by name and serves.
    let owned = std::env::var("CHILD_OWNED").expect("CHILD_OWNED");
    let owned = BdevClient::create(chi, PoolQuery::local(), &owned, file).unwrap();
    let block = owned.allocate_blocks(PoolQuery::local(), 4096).unwrap()[0];
    assert_eq!(
        owned
            .write(PoolQuery::local(), block, &[7u8; 4096])
            .unwrap(),
        4096
    );
    println!("file device checks done");
}

/// A client process of a uid without admin rights cannot have the runtime create a
/// file device: the pool name is a path the runtime would open, size and write with its
/// own rights (any file the runtime's user may write). It is refused, nothing is
/// created, and it may still use a file device the owner made. Its RAM devices are
/// bounded by `quotas.memory`.
#[cfg(feature = "bdev")]
#[test]
fn a_uid_without_admin_rights_cannot_make_the_runtime_open_a_path() {
    use chimaera::bdev::{BdevClient, BdevParams, BdevType};
    let runtime = RuntimeProcess::start(
        "file-device",
        // 3 MiB for devices, and room for what their pools keep of names and parameters
        // and for the inputs of its calls (a 4 KiB write).
        "access:\n  uids: [65534]\nquotas:\n  memory: 3162112\n",
    );
    let dir = std::env::temp_dir().join(format!("chimaera-file-device-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let target = dir.join("owner-only");
    let owned = dir.join("owned-device");
    let chi = runtime.client();
    ModNameClient::create(&chi, PoolQuery::local(), "shared", CreateParams::default()).unwrap();
    let file = BdevParams {
        bdev_type: BdevType::File,
        total_size: 1 << 20,
        ..BdevParams::default()
    };
    let owned_name = owned.to_str().unwrap();
    BdevClient::create(&chi, PoolQuery::local(), owned_name, file).unwrap();
    let target_name = target.to_str().unwrap();
    let env = [("CHILD_PATH", target_name), ("CHILD_OWNED", owned_name)];
    wait_for_success(
        runtime.client_child_as_nobody("devices", &env),
        "file device checks done",
    );
    assert!(!target.exists(), "the runtime created {}", target.display());
    std::fs::remove_dir_all(&dir).unwrap();
    // The child's RAM devices hold 3 MiB of its quota until they are destroyed.
    let admin = AdminClient::attach(&chi, PoolId::ADMIN);
    let memory = || {
        let status = admin.status(PoolQuery::local()).unwrap();
        let [nobody] = status.uids.as_slice() else {
            panic!("{:?}", status.uids);
        };
        nobody.memory_bytes.used
    };
    // Their sizes, and the few bytes of their pools' names and parameters.
    let held = memory();
    assert!((3 << 20..(3 << 20) + 4096).contains(&held), "{held}");
    // The child's pool is private to it: the owner opens it explicitly (an admin may).
    let device = BdevClient::open(&chi, "child-ram-rest").unwrap();
    admin
        .destroy_pool(PoolQuery::local(), device.pool_id())
        .unwrap();
    wait_until(
        "the destroyed device's memory to be the uid's again",
        || memory() <= held - (2 << 20),
    );
}

/// The child of `the_inputs_a_uid_has_queued_count_against_its_memory_quota` (uid 65534,
/// `quotas.memory: 2MiB`): points 64 tasks at one 128 KiB input in its data share, which
/// the runtime copies for each; they wait on one lock, each holding its copy.
fn input_hoarder_child(chi: &Client, m: &ModNameClient) {
    use chimaera_core::__private::{bulk_inline, encode, ByRef};
    let buffer = vec![7u8; 128 << 10];
    let tuple = (
        bulk_inline(&buffer),
        ByRef(&true),
        ByRef(&50u32),
        ByRef(&false),
    );
    let input = encode(&tuple).unwrap();
    let connection = chi.shm_connection().unwrap().clone();
    connection.scribble_data(0, &input);
    let forgery = Forgery::InputInClientData {
        offset: 0,
        len: input.len() as u32,
    };
    let method = chimaera::mod_name::mod_name_tasks::OVERFLOW_TEST;
    let calls: Vec<_> = (0..64)
        .map(|_| {
            connection
                .submit_forged(m.pool_id(), method, &[], forgery)
                .unwrap()
        })
        .collect();
    let (mut ran, mut refused) = (0, 0);
    for call in calls {
        match &call.wait()[0].1 {
            Ok(_) => ran += 1,
            Err(TaskError::QuotaExceeded { config_key, .. }) if config_key == "quotas.memory" => {
                refused += 1
            }
            // It ran; its 128 KiB answer (the buffer written back) waited for room in
            // the client's output space, which this child does not read in time.
            Err(TaskError::QuotaExceeded { config_key, .. })
                if config_key.starts_with("shm.runtime_data_size") =>
            {
                ran += 1
            }
            other => panic!("expected a run or the memory quota, got {other:?}"),
        }
    }
    // 2 MiB holds at most 16 of the 128 KiB copies at once; the 64 arrive within
    // milliseconds and each accepted one keeps its copy for 50 ms or more. (A bound well
    // below 48 refusals, so a slow host does not fail it; without the quota there are
    // none.)
    assert!(ran >= 1 && refused >= 16, "ran {ran}, refused {refused}");
    println!("hoarded: ran {ran}, refused {refused}");
}

/// A task's input is copied out of the client's memory and kept until the task ends, so
/// a client pointing many tasks that wait at one large region of its data share (its
/// allocator is its own) made the runtime hold a copy each: up to `tasks_in_flight`
/// (1,024) times the share, per connection. The copies a uid without admin rights has
/// alive count against its `quotas.memory`; past it a task fails alone.
#[test]
fn the_inputs_a_uid_has_queued_count_against_its_memory_quota() {
    let runtime = RuntimeProcess::start(
        "input-hoard",
        "access:\n  uids: [65534]\nquotas:\n  memory: 2MiB\n",
    );
    let chi = runtime.client();
    let m =
        ModNameClient::create(&chi, PoolQuery::local(), "shared", CreateParams::default()).unwrap();
    wait_for_success(runtime.client_child_as_nobody("hoarder", &[]), "hoarded");
    // Every copy was given back with its task.
    let status = AdminClient::attach(&chi, PoolId::ADMIN)
        .status(PoolQuery::local())
        .unwrap();
    let [nobody] = status.uids.as_slice() else {
        panic!("{:?}", status.uids);
    };
    assert_eq!(nobody.memory_bytes.used, 0);
    assert_eq!(m.custom(PoolQuery::local(), "after", 0).unwrap(), "after");
}

/// The child of `what_a_pool_keeps_of_its_name_and_parameters_is_bounded` (uid 65534,
/// `quotas.memory: 14000`: two pools of 4,000-byte names and the input of a third
/// create, not three).
fn pool_names_child(chi: &Client) {
    let create =
        |name: &str| ModNameClient::create(chi, PoolQuery::local(), name, CreateParams::default());
    let too_long = create(&"n".repeat(4097)).map(|_| ()).unwrap_err();
    assert!(
        matches!(
            too_long,
            TaskError::PoolNameTooLong {
                len: 4097,
                max: 4096
            }
        ),
        "{too_long:?}"
    );
    // Each pool keeps its name and parameters: 4,000-byte names spend the quota fast.
    let name = |c: char| c.to_string().repeat(4000);
    let first = create(&name('a')).unwrap();
    create(&name('b')).unwrap();
    let over = create(&name('c')).map(|_| ()).unwrap_err();
    assert!(
        matches!(&over, TaskError::QuotaExceeded { config_key, .. } if config_key == "quotas.memory"),
        "{over:?}"
    );
    // A pool of its own it may destroy, which gives the bytes back.
    AdminClient::attach(chi, PoolId::ADMIN)
        .destroy_pool(PoolQuery::local(), first.pool_id())
        .unwrap();
    wait_until("room after its pool is destroyed", || {
        create(&name('c')).is_ok()
    });
    println!("names checked");
}

/// A pool keeps its name and create parameters for its life: names are bounded for
/// everyone, and the bytes count against the `quotas.memory` of a uid without admin
/// rights (else 16,384 pools of long names, as many as `quotas.containers` allows, held
/// gigabytes for good).
#[test]
fn what_a_pool_keeps_of_its_name_and_parameters_is_bounded() {
    let runtime = RuntimeProcess::start(
        "pool-names",
        "access:\n  uids: [65534]\nquotas:\n  memory: 14000\n",
    );
    let chi = runtime.client();
    ModNameClient::create(&chi, PoolQuery::local(), "shared", CreateParams::default()).unwrap();
    wait_for_success(
        runtime.client_child_as_nobody("names", &[]),
        "names checked",
    );
    // The owner's names are bounded too, and its pools count against nothing.
    let too_long = ModNameClient::create(
        &chi,
        PoolQuery::local(),
        &"o".repeat(5000),
        CreateParams::default(),
    );
    assert!(matches!(
        too_long,
        Err(TaskError::PoolNameTooLong { len: 5000, .. })
    ));
    for c in ['x', 'y', 'z'] {
        ModNameClient::create(
            &chi,
            PoolQuery::local(),
            &c.to_string().repeat(4000),
            CreateParams::default(),
        )
        .unwrap();
    }
}

/// The children of `a_pool_a_uid_without_admin_rights_creates_is_its_own`: the
/// `private-owner` (uid 65534) creates the pool `mine` and uses it; the
/// `private-intruder` (uid 65533, also listed in `access.uids`) is refused it by name
/// and by id.
fn private_pool_child(chi: &Client, role: &str) {
    let create = || ModNameClient::create(chi, PoolQuery::local(), "mine", CreateParams::default());
    let admin = AdminClient::attach(chi, PoolId::ADMIN);
    let pools_seen = || -> Vec<String> {
        let status = admin.status(PoolQuery::local()).unwrap();
        status.pools.into_iter().map(|info| info.name).collect()
    };
    if role == "private-owner" {
        let mine = create().unwrap();
        assert_eq!(mine.custom(PoolQuery::local(), "mine", 0).unwrap(), "mine");
        // Its own pool opens again by name.
        assert_eq!(create().unwrap().pool_id(), mine.pool_id());
        assert!(pools_seen().contains(&"mine".to_owned()));
        // It may destroy a pool of its own, and only that.
        let scratch =
            ModNameClient::create(chi, PoolQuery::local(), "scratch", CreateParams::default())
                .unwrap();
        admin
            .destroy_pool(PoolQuery::local(), scratch.pool_id())
            .unwrap();
        assert!(matches!(
            scratch.custom(PoolQuery::local(), "gone", 0),
            Err(TaskError::UnknownPool { .. } | TaskError::PoolDestroyed { .. })
        ));
        let shared = ModNameClient::open(chi, "shared").unwrap();
        assert!(matches!(
            admin.destroy_pool(PoolQuery::local(), shared.pool_id()),
            Err(TaskError::PermissionDenied { uid: 65534, .. })
        ));
        println!("made");
        return;
    }
    let private = |what: &str, err: TaskError| match err {
        TaskError::PrivatePool { name, owner: 65534 } => assert_eq!(name, "mine", "{what}"),
        other => panic!("{what}: expected PrivatePool, got {other:?}"),
    };
    private("create", create().map(|_| ()).unwrap_err());
    // Its status shows the shared pools, not the other uid's.
    let seen = pools_seen();
    assert!(
        seen.contains(&"shared".to_owned()) && !seen.contains(&"mine".to_owned()),
        "{seen:?}"
    );
    // Looking the name up is allowed (it tells no more than the error), running its
    // tasks is not (nor through subtasks: `tests/unprivileged.rs`).
    let found = ModNameClient::open(chi, "mine").expect("the lookup");
    private(
        "a call",
        found.custom(PoolQuery::local(), "in", 0).unwrap_err(),
    );
    private(
        "a call in a window",
        found
            .async_custom(PoolQuery::local(), "in", 1)
            .unwrap()
            .wait()
            .unwrap_err(),
    );
    // Nor may it destroy the pool.
    assert!(matches!(
        admin.destroy_pool(PoolQuery::local(), found.pool_id()),
        Err(TaskError::PermissionDenied { uid: 65533, .. })
    ));
    println!("refused");
}

/// A pool a uid without admin rights creates is private to it: another such uid can
/// neither get it by name nor run its tasks (so it cannot read what the first uid keeps
/// there), and a trusted caller's `GetOrCreatePool` of the name is refused rather than
/// handed the uid's pool (a name squatted before the owner's program asked for it);
/// admins may still open it explicitly, use it and destroy it.
#[test]
fn a_pool_a_uid_without_admin_rights_creates_is_its_own() {
    let runtime = RuntimeProcess::start("private-pool", "access:\n  uids: [65534, 65533]\n");
    let chi = runtime.client();
    ModNameClient::create(&chi, PoolQuery::local(), "shared", CreateParams::default()).unwrap();
    wait_for_success(runtime.client_child_as(65534, "private-owner", &[]), "made");
    wait_for_success(
        runtime.client_child_as(65533, "private-intruder", &[]),
        "refused",
    );

    // The owner's status says whose each pool is.
    let pools = AdminClient::attach(&chi, PoolId::ADMIN)
        .status(PoolQuery::local())
        .unwrap()
        .pools;
    let private_to = |name: &str| {
        let pool = pools.iter().find(|pool| pool.name == name).unwrap();
        pool.private_to
    };
    assert_eq!(
        (private_to("mine"), private_to("shared")),
        (Some(65534), None)
    );
    let squatted = ModNameClient::create(&chi, PoolQuery::local(), "mine", CreateParams::default());
    assert!(
        matches!(&squatted, Err(TaskError::PrivatePool { owner: 65534, .. })),
        "{:?}",
        squatted.map(|_| ())
    );
    let mine = ModNameClient::open(&chi, "mine").unwrap();
    assert_eq!(
        mine.custom(PoolQuery::local(), "admin", 0).unwrap(),
        "admin"
    );
    AdminClient::attach(&chi, PoolId::ADMIN)
        .destroy_pool(PoolQuery::local(), mine.pool_id())
        .unwrap();
    // Destroyed, the name is free for anyone, and a trusted caller's pool is shared.
    ModNameClient::create(&chi, PoolQuery::local(), "mine", CreateParams::default()).unwrap();
}

/// The child of `a_uid_at_its_container_quota_is_refused_until_a_pool_goes`: runs as uid
/// 65534 with `quotas.containers: 10`.
fn containers_quota_child(chi: &Client) {
    let create = |name: &str, containers: u32| {
        ModNameClient::create_with(
            chi,
            PoolQuery::local(),
            name,
            PoolOptions::containers(containers),
            CreateParams::default(),
        )
        .map(|_| ())
    };
    create("q-a", 4).unwrap();
    create("q-b", 4).unwrap();
    let over = create("q-c", 4);
    assert!(
        matches!(&over, Err(TaskError::QuotaExceeded { what, limit: 10, config_key }) if what == "pool containers" && config_key == "quotas.containers"),
        "{over:?}"
    );
    // What is left of the quota still serves; opening an existing pool takes nothing.
    create("q-d", 2).unwrap();
    create("q-a", 4).unwrap();
    assert!(create("q-e", 1).is_err());
    println!("at quota");
    // The owner destroys `q-a`: its four containers are the uid's again.
    wait_until("room after a pool is destroyed", || {
        create("q-e", 4).is_ok()
    });
}

/// A uid without admin rights may have pools of only `quotas.containers` containers
/// alive (each keeps its state and lanes): a pool past it fails with `QuotaExceeded`,
/// re-opening a pool costs nothing, the owner's pools are not counted, and a destroyed
/// pool gives its containers back. The owner sees the uid's use in the status and in
/// Prometheus.
#[test]
fn a_uid_at_its_container_quota_is_refused_until_a_pool_goes() {
    let port = free_port();
    let runtime = RuntimeProcess::start(
        "container-quota",
        &format!("access:\n  uids: [65534]\nquotas:\n  containers: 10\nmetrics:\n  prometheus: 127.0.0.1:{port}\n"),
    );
    // The owner's (not counted): the child only opens it.
    let chi = runtime.client();
    ModNameClient::create(&chi, PoolQuery::local(), "shared", CreateParams::default()).unwrap();
    let mut creator = runtime.client_child_as_nobody("pools", &[]);
    wait_for_line(&mut creator, "at quota");
    // The owner sees the uid at its quota (and is not listed itself).
    let status = AdminClient::attach(&chi, PoolId::ADMIN)
        .status(PoolQuery::local())
        .unwrap();
    let [nobody] = status.uids.as_slice() else {
        panic!("{:?}", status.uids);
    };
    assert_eq!(
        (nobody.uid, nobody.containers.used, nobody.containers.max),
        (65534, 10, 10)
    );
    assert_eq!(nobody.connections.used, 1);
    let (_, metrics) = http_get(port, "/metrics");
    for wanted in [
        "chimaera_uid_quota_used{uid=\"65534\",quota=\"containers\"} 10\n",
        "chimaera_uid_quota_max{uid=\"65534\",quota=\"containers\"} 10\n",
        "chimaera_uid_quota_used{uid=\"65534\",quota=\"connections\"} 1\n",
    ] {
        assert!(metrics.contains(wanted), "no {wanted:?} in:\n{metrics}");
    }
    ModNameClient::create_with(
        &chi,
        PoolQuery::local(),
        "q-owner",
        PoolOptions::containers(64),
        CreateParams::default(),
    )
    .unwrap();
    let a = ModNameClient::open(&chi, "q-a").unwrap();
    AdminClient::attach(&chi, PoolId::ADMIN)
        .destroy_pool(PoolQuery::local(), a.pool_id())
        .unwrap();
    let status = within("the child", move || creator.wait().unwrap());
    assert!(status.success(), "the child's checks failed: {status}");
}

/// The child of `a_uid_at_its_periodic_quota_is_refused_and_the_owner_served`: runs as
/// uid 65534 with `quotas.periodic_tasks: 3`.
fn periodic_quota_child(m: &ModNameClient) {
    let hourly = Schedule::Periodic(Duration::from_secs(3600));
    let second = Client::connect().expect("the child connects again");
    let m2 = ModNameClient::attach(&second, m.pool_id());
    let first = m.spawn_custom(PoolQuery::local(), hourly, "a", 0).unwrap();
    let _others = [
        m.spawn_custom(PoolQuery::local(), hourly, "b", 0).unwrap(),
        m2.spawn_custom(PoolQuery::local(), hourly, "c", 0).unwrap(),
    ];
    // The quota is the uid's, over both connections.
    let over = m2.spawn_custom(PoolQuery::local(), hourly, "d", 0);
    assert!(
        matches!(&over, Err(TaskError::QuotaExceeded { what, limit: 3, config_key }) if what == "periodic tasks" && config_key == "quotas.periodic_tasks"),
        "{over:?}"
    );
    // Other tasks still run.
    assert_eq!(m.custom(PoolQuery::local(), "x", 1).unwrap(), "x");
    println!("at quota");
    // A cancelled one makes room.
    first.cancel().unwrap();
    let _again = m2.spawn_custom(PoolQuery::local(), hourly, "e", 0).unwrap();
}

/// A uid without admin rights may have only `quotas.periodic_tasks` periodic tasks alive
/// at once, over all its connections (each keeps a coroutine between runs, and the
/// runtime keeps at most `max_periodic_tasks`): one more fails with `QuotaExceeded`,
/// while the owner's are accepted.
#[test]
fn a_uid_at_its_periodic_quota_is_refused_and_the_owner_served() {
    let runtime = RuntimeProcess::start(
        "periodic-quota",
        "access:\n  uids: [65534]\nquotas:\n  periodic_tasks: 3\n",
    );
    let mut spawner = runtime.client_child_as_nobody("periodic", &[]);
    wait_for_line(&mut spawner, "at quota");
    let chi = runtime.client();
    let m = ModNameClient::open(&chi, "shared").unwrap();
    let hourly = Schedule::Periodic(Duration::from_secs(3600));
    let owned: Vec<_> = (0..4)
        .map(|n| {
            m.spawn_custom(PoolQuery::local(), hourly, "owner", n)
                .unwrap()
        })
        .collect();
    let status = within("the child", move || spawner.wait().unwrap());
    assert!(status.success(), "the child's checks failed: {status}");
    for handle in owned {
        handle.cancel().unwrap();
    }
}

/// The child of `a_uid_at_its_connection_quota_is_refused_and_others_connect`: runs as
/// uid 65534 with `quotas.connections: 2`, `chi` its first connection.
fn connections_quota_child(chi: Client) {
    let second = Client::connect().expect("a second connection is within the quota");
    match Client::connect() {
        Err(chimaera::ConnectError::TooManyConnections {
            uid: 65534,
            limit: 2,
            ..
        }) => {}
        Err(other) => panic!("expected TooManyConnections, got {other}"),
        Ok(_) => panic!("a third connection was served past the uid's quota of 2"),
    }
    // The uid sees itself at its quota in the runtime's status (and no other uid).
    let status = AdminClient::attach(&chi, PoolId::ADMIN)
        .status(PoolQuery::local())
        .unwrap();
    let [me] = status.uids.as_slice() else {
        panic!("{:?}", status.uids);
    };
    assert_eq!(me.uid, 65534);
    assert_eq!((me.connections.used, me.connections.max), (2, 2));
    println!("at quota");
    // Both connections still work.
    let pools = [&chi, &second].map(|chi| ModNameClient::open(chi, "shared").unwrap());
    for (n, m) in pools.iter().enumerate() {
        assert_eq!(
            m.custom(PoolQuery::local(), "mine", n as u32).unwrap(),
            "mine"
        );
    }
    // One leaves: its place is the uid's again.
    drop(pools);
    drop(second);
    let again = Client::connect().expect("a connection in place of one that left");
    let m = ModNameClient::open(&again, "shared").unwrap();
    assert_eq!(m.custom(PoolQuery::local(), "again", 0).unwrap(), "again");
}

/// A uid without admin rights may have only `quotas.connections` client processes
/// attached at once: one more is refused with `TooManyConnections` (naming the uid and
/// the quota), while the owner still connects — one user cannot take every connection.
#[test]
fn a_uid_at_its_connection_quota_is_refused_and_others_connect() {
    let runtime = RuntimeProcess::start(
        "connection-quota",
        "access:\n  uids: [65534]\nmax_clients: 8\nquotas:\n  connections: 2\n",
    );
    let mut connector = runtime.client_child_as_nobody("connector", &[]);
    wait_for_line(&mut connector, "at quota");
    let owners: Vec<Client> = (0..3).map(|_| runtime.client()).collect();

    for (n, chi) in owners.iter().enumerate() {
        let m = ModNameClient::open(chi, "shared").unwrap();
        assert_eq!(
            m.custom(PoolQuery::local(), "owner", n as u32).unwrap(),
            "owner"
        );
    }
    let status = within("the child", move || connector.wait().unwrap());
    assert!(status.success(), "the child's checks failed: {status}");
}

/// The `QuotaExceeded` of `quotas.waiting_tasks: 8`.
fn is_waiting_quota<T>(result: &Result<T, TaskError>) -> bool {
    matches!(result, Err(TaskError::QuotaExceeded { limit: 8, config_key, .. }) if config_key == "quotas.waiting_tasks")
}

/// The child of `a_uid_at_its_waiting_quota_is_refused_and_the_owner_served`: runs as uid
/// 65534 against a runtime with one worker and `quotas.waiting_tasks: 8`.
fn waiting_quota_child(m: &ModNameClient) {
    // Twenty calls over two connections that each hold the container's lock 300 ms: all
    // but the first wait for it, a coroutine each, and the uid may have 8 waiting.
    let second = Client::connect().expect("the child connects again");
    let m2 = ModNameClient::attach(&second, m.pool_id());
    let mut calls: Vec<_> = (0..20)
        .map(|id| {
            let m = if id % 2 == 0 { m } else { &m2 };
            m.async_co_mutex_test(PoolQuery::local(), id, 300).unwrap()
        })
        .collect();
    // A refused call is answered at once, long before the first holder lets go.
    let mut answers = Vec::new();
    while let Some(done) = Pending::first_done(&calls) {
        let answer = calls.swap_remove(done).wait();
        let refused = is_waiting_quota(&answer);
        answers.push(answer);
        if refused {
            break;
        }
    }
    println!("at quota");
    answers.extend(calls.into_iter().map(Pending::wait));
    let ran = answers.iter().filter(|answer| answer.is_ok()).count();
    let refused = answers
        .iter()
        .filter(|answer| is_waiting_quota(answer))
        .count();
    assert_eq!(ran + refused, 20, "{answers:?}");
    // Tasks already running when the count is read may still wait, one per worker.
    assert!((1..=9).contains(&ran), "{ran} ran: {answers:?}");
    // A chain of subtasks each waiting on the next counts against the uid too: the
    // ninth level is refused, and the refusal comes back up the chain.
    let chain = m.wait_test(PoolQuery::local(), 30);
    assert!(is_waiting_quota(&chain), "{chain:?}");
    // Every count came back: a chain within the quota runs.
    assert_eq!(m.wait_test(PoolQuery::local(), 6), Ok(6));
}

/// A uid without admin rights may have only `quotas.waiting_tasks` tasks waiting at once
/// (each keeps a coroutine), over all its connections and counting the subtasks of its
/// tasks: past it its new tasks fail with `QuotaExceeded`, while the runtime's owner is
/// served (and not counted) — one user cannot take every coroutine from the others.
#[test]
fn a_uid_at_its_waiting_quota_is_refused_and_the_owner_served() {
    let runtime = RuntimeProcess::start_with(
        "waiting-quota",
        "access:\n  uids: [65534]\nquotas:\n  waiting_tasks: 8\nworkers:\n  low_latency: 1\n  high_latency: 0\n",
        Launch {
            quiet_stderr: true,
            ..Launch::CHIMAERA
        },
    );
    let mut waiter = runtime.client_child_as_nobody("waiter", &[]);
    wait_for_line(&mut waiter, "at quota");
    // While the uid's waiting tasks hold the lock, the owner's chain of 30 waiting
    // subtasks runs.
    let chi = runtime.client();
    let m = ModNameClient::open(&chi, "shared").unwrap();
    assert_eq!(
        within("the owner's chain", move || m
            .wait_test(PoolQuery::local(), 30)),
        Ok(30)
    );
    let status = within("the child", move || waiter.wait().unwrap());
    assert!(status.success(), "the child's checks failed: {status}");
}

#[test]
fn a_client_over_its_quotas_fails_alone() {
    let runtime = RuntimeProcess::start(
        "quota",
        "max_clients: 4\nshm:\n  runtime_data_size: 64KiB\nquotas:\n  tasks_in_flight: 4\n",
    );
    let greedy = runtime.client();
    let other = runtime.client();
    let g =
        ModNameClient::create(&greedy, PoolQuery::local(), "p", CreateParams::default()).unwrap();
    let o =
        ModNameClient::create(&other, PoolQuery::local(), "p", CreateParams::default()).unwrap();
    // Outputs larger than the client's 16 KiB output space.
    let large = "q".repeat(32 << 10);
    assert!(matches!(
        g.custom(PoolQuery::local(), &large, 0),
        Err(TaskError::QuotaExceeded { .. })
    ));
    // Four fire-and-forget tasks that queue on one lock stay in flight for seconds.
    for id in 0..4 {
        g.spawn_co_mutex_test(PoolQuery::local(), Schedule::FireAndForget, id, 1000)
            .unwrap();
    }
    let over = g.custom(PoolQuery::local(), "one more", 1).unwrap_err();
    assert!(
        matches!(&over, TaskError::QuotaExceeded { limit: 4, config_key, .. } if config_key == "quotas.tasks_in_flight"),
        "{over:?}"
    );
    // The message names the limit, its value and the key that raises it.
    let message = over.to_string();
    assert!(
        message.contains("4 tasks in flight") && message.contains("quotas.tasks_in_flight"),
        "{message}"
    );
    assert_eq!(o.custom(PoolQuery::local(), "other", 2).unwrap(), "other");
    wait_until("the greedy client's tasks to end", || {
        runtime.usage().tasks_in_flight == 0
    });
    assert_eq!(g.custom(PoolQuery::local(), "again", 3).unwrap(), "again");
}

/// Tasks that wait keep a coroutine each, and the runtime holds at most `max_coroutines`:
/// past it a worker fails its tasks with `NoCoroutine` (every call answered, no hang, a
/// second client's too) and, once the waiting tasks are done, serves again.
#[test]
fn a_crowd_of_waiting_tasks_past_max_coroutines_is_refused_then_served() {
    const MAX: u64 = 24;
    let runtime = RuntimeProcess::start_with(
        "coroutine-crowd",
        "max_coroutines: 24\nworkers:\n  low_latency: 1\n  high_latency: 0\n",
        Launch {
            quiet_stderr: true,
            ..Launch::CHIMAERA
        },
    );
    let crowd = runtime.client();
    let other = runtime.client();
    let c =
        ModNameClient::create(&crowd, PoolQuery::local(), "p", CreateParams::default()).unwrap();
    let o =
        ModNameClient::create(&other, PoolQuery::local(), "p", CreateParams::default()).unwrap();
    // Each holds the container's lock 20 ms: all but the first wait for it, a coroutine
    // each.
    let calls: Vec<_> = (0..120)
        .map(|id| c.async_co_mutex_test(PoolQuery::local(), id, 20).unwrap())
        .collect();
    // Submitted after all of them, on the same lane: answered after each was started
    // or refused. The worker has no coroutine to spare: refused.
    let refused = within("the other client's call", move || {
        o.custom(PoolQuery::local(), "other", 1)
    });
    assert!(
        matches!(refused, Err(TaskError::NoCoroutine { max: MAX, .. })),
        "{refused:?}"
    );
    let answers = within("the crowd's calls", move || {
        calls
            .into_iter()
            .map(|call| call.wait())
            .collect::<Vec<_>>()
    });
    let ran = answers
        .iter()
        .filter(|answer| matches!(answer, Ok(1)))
        .count();
    let no_coroutine = answers
        .iter()
        .filter(|answer| matches!(answer, Err(TaskError::NoCoroutine { max: MAX, .. })))
        .count();
    assert_eq!(ran + no_coroutine, answers.len(), "{answers:?}");
    assert!(ran >= 1 && ran < MAX as usize, "{ran} ran");
    // The waiting tasks are done: their coroutines are spare again.
    let again = ModNameClient::open(&crowd, "p").unwrap();
    assert_eq!(
        again.custom(PoolQuery::local(), "again", 2).unwrap(),
        "again"
    );
}

#[test]
fn a_pool_composed_at_boot_opens_by_name() {
    let runtime = RuntimeProcess::start(
        "openbooted",
        "compose:\n  - module: MOD_NAME\n    name: booted\n    params:\n      label: from-boot\n",
    );
    let chi = runtime.client();
    // No create parameters repeated: the name is enough.
    let m = ModNameClient::open(&chi, "booted").unwrap();
    assert_eq!(m.custom(PoolQuery::local(), "hi", 1).unwrap(), "hi");
    assert!(matches!(
        AdminClient::open(&chi, "booted"),
        Err(chimaera::admin_api::OpenPoolError::OtherModule { .. })
    ));
}

#[test]
fn forged_abandon_requests_hurt_only_their_sender() {
    use chimaera_core::transport::shm::wire::KIND_ABANDON;
    let runtime = RuntimeProcess::start("abandonforge", "");
    let chi = runtime.client();
    let m = ModNameClient::create(&chi, PoolQuery::local(), "p", CreateParams::default()).unwrap();
    let connection = chi.shm_connection().unwrap();
    let list = |slots: &mut dyn Iterator<Item = u32>| -> Vec<u8> {
        slots.flat_map(u32::to_le_bytes).collect()
    };
    let cases: [(Vec<u8>, bool); 4] = [
        // Not a list of u32s.
        (vec![1, 2, 3], true),
        // More indices than a slot's payload holds.
        (list(&mut (0..256)), true),
        // Every slot, this request's own included (answered first, so the request's own
        // answer is discarded for a later generation: it reads `Cancelled`).
        (list(&mut (0..200)), false),
        // Indices no slot has.
        (list(&mut [u32::MAX, 1_000_000].into_iter()), false),
    ];
    for (input, malformed) in cases {
        let result = connection
            .submit_forged(PoolId::ADMIN, 0, &input, Forgery::Kind(KIND_ABANDON))
            .unwrap()
            .wait();
        if malformed {
            assert!(
                matches!(result[0].1, Err(TaskError::Malformed { .. })),
                "{result:?}"
            );
        } else {
            assert!(
                matches!(result[0].1, Ok(_) | Err(TaskError::Cancelled)),
                "{result:?}"
            );
        }
    }
    assert_eq!(m.custom(PoolQuery::local(), "on", 1).unwrap(), "on");
    let other = runtime.client();
    let o = ModNameClient::attach(&other, m.pool_id());
    assert_eq!(o.custom(PoolQuery::local(), "other", 2).unwrap(), "other");
}

/// The runtime copies a client's input into a recycled buffer (no allocation per task):
/// a later client's empty, cut or oversized-looking input must be read as exactly its
/// own bytes, never completed with what an earlier client's task left in that buffer.
#[test]
fn an_input_never_shows_bytes_an_earlier_clients_task_left_in_a_reused_buffer() {
    let runtime = RuntimeProcess::start("recycled", "");
    let secret = "A-secret-".repeat(40);
    let pool = {
        let first = runtime.client();
        let m = ModNameClient::create(&first, PoolQuery::local(), "p", CreateParams::default())
            .unwrap();
        // Enough calls to leave the secret in every buffer the runtime keeps idle.
        for i in 0..600 {
            assert_eq!(m.custom(PoolQuery::local(), &secret, i).unwrap(), secret);
        }
        m.pool_id()
    };
    let second = runtime.client();
    let connection = second.shm_connection().unwrap().clone();
    let own = chimaera_core::codec::encode(&(
        chimaera_core::codec::StrRef(&"b".repeat(360)),
        chimaera_core::codec::ByRef(&7u32),
    ))
    .unwrap();
    let custom = chimaera::mod_name::mod_name_tasks::CUSTOM;
    for cut in (0..own.len())
        .step_by(7)
        .chain([1, own.len() - 4, own.len() - 1])
    {
        let results = connection
            .submit(pool, custom, PoolQuery::Local, &own[..cut], None)
            .unwrap()
            .wait();
        for (_, result) in results {
            if let Ok(output) = result {
                let echoed = String::from_utf8_lossy(&output).into_owned();
                assert!(
                    !echoed.contains("A-secret"),
                    "a {cut}-byte input ran with an earlier client's bytes: {echoed:?}"
                );
            }
        }
    }
    let m = ModNameClient::attach(&second, pool);
    assert_eq!(m.custom(PoolQuery::local(), "after", 0).unwrap(), "after");
}

/// Threads sharing one connection race over its three call slots: sync calls, windows
/// wider than the slots (a submission harvests answered slots while their waiters spin
/// or sleep on them), calls dropped unanswered (abandoned) or past their deadline, and
/// awaited calls. Every call collected gets its own answer, and afterwards no slot is
/// lost: more sync calls in a row than there are slots, then a full window, answered.
#[test]
fn threads_sharing_three_slots_race_harvests_abandons_and_polls_without_loss() {
    let runtime = RuntimeProcess::start("slotrace", "queue_depth: 4\n");
    let chi = runtime.client();
    let m = ModNameClient::create(&chi, PoolQuery::local(), "p", CreateParams::default()).unwrap();
    within("threads racing over three slots", move || {
        std::thread::scope(|scope| {
            for t in 0..4u32 {
                let m = m.clone();
                scope.spawn(move || {
                    let big = format!("{t}{}", "v".repeat(16 * 1024));
                    for i in 0..150u32 {
                        let text = format!("{t}-{i}");
                        let local = PoolQuery::local();
                        match i % 4 {
                            0 => assert_eq!(m.custom(local, &text, i).unwrap(), text),
                            1 => {
                                let a = m.async_custom(local, &big, i).unwrap();
                                let b = m.async_custom(local, &text, i).unwrap();
                                let c = m.async_custom(local, "c", i).unwrap();
                                let d = m.async_custom(local, "d", i).unwrap();
                                assert_eq!(c.wait().unwrap(), "c");
                                assert_eq!(d.wait().unwrap(), "d");
                                if i % 8 == 1 {
                                    // Answered by now, and maybe harvested: dropped.
                                    drop(b);
                                } else {
                                    assert_eq!(b.wait().unwrap(), text);
                                }
                                assert_eq!(a.wait().unwrap(), big);
                            }
                            2 => {
                                drop(m.async_custom(local, &big, i).unwrap());
                                let awaited = m.async_custom(local, &text, i).unwrap();
                                assert_eq!(support::block_on(awaited).unwrap(), text);
                            }
                            _ => {
                                let late = m.async_co_mutex_test(local, i, 2).unwrap();
                                match late.wait_timeout(Duration::from_micros(300)) {
                                    Ok(inside) => assert_eq!(inside, 1),
                                    Err(err) => assert!(
                                        matches!(err, TaskError::DeadlineExceeded { .. }),
                                        "{err}"
                                    ),
                                }
                            }
                        }
                    }
                });
            }
        });
        for i in 0..8 {
            assert_eq!(m.custom(PoolQuery::local(), "after", i).unwrap(), "after");
        }
        let window: Vec<_> = (0..3)
            .map(|i| m.async_custom(PoolQuery::local(), "window", i).unwrap())
            .collect();
        for call in window {
            assert_eq!(call.wait().unwrap(), "window");
        }
    });
}

/// Replies a thread of the client forges for its own calls, then moved out of their
/// slots by a harvest (another submission found every slot taken) before the calls are
/// waited for: each call fails with a typed `Malformed` error, decoded (as typed clients
/// wait) or raw, whether the forged output is small enough to be moved inline or not.
#[test]
fn forged_replies_moved_out_by_a_harvest_fail_their_calls_with_a_typed_error() {
    let runtime = RuntimeProcess::start("forgedharvest", "queue_depth: 8\n");
    let chi = runtime.client();
    let m = ModNameClient::create(&chi, PoolQuery::local(), "p", CreateParams::default()).unwrap();
    let connection = chi.shm_connection().unwrap().clone();
    let method = chimaera::mod_name::mod_name_tasks::CO_MUTEX_TEST;
    // The first holds the container's lock for a minute; the others queue behind it, so
    // the runtime answers none of them before the test is over.
    let slow = chimaera_core::codec::encode(&(
        chimaera_core::codec::ByRef(&0u32),
        chimaera_core::codec::ByRef(&60_000u32),
    ))
    .unwrap();
    let forgeries = [
        // Small enough to be moved inline: outside the area, an unknown status, and
        // an error whose bytes are no archived error.
        (0, u64::MAX - 3, 8),
        (0, 1 << 40, 1),
        (99, 0, 4),
        (1, 0, 24),
        // Larger than the line: moved as results.
        (0, 0, u32::MAX),
        (1, u64::MAX, 200),
    ];
    // Seven call slots: the holder and six forged calls take them all.
    let holder = connection
        .submit(m.pool_id(), method, PoolQuery::Local, &slow, None)
        .unwrap();
    let forged: Vec<_> = forgeries
        .iter()
        .map(|&(status, offset, len)| {
            let call = connection
                .submit(m.pool_id(), method, PoolQuery::Local, &slow, None)
                .unwrap();
            call.forge_reply(status, offset, len);
            call
        })
        .collect();
    // Every slot is taken: this submission harvests the forged answers before any of
    // their calls is waited for (its own call is dropped unanswered).
    {
        let connection = connection.clone();
        let pool = m.pool_id();
        within("a submission that harvests", move || {
            drop(connection.submit(pool, method, PoolQuery::Local, &slow, None))
        });
    }
    for (k, (call, (status, offset, len))) in forged.into_iter().zip(forgeries).enumerate() {
        let what = format!("status {status}, {len} bytes at {offset}");
        let failed = if k % 2 == 0 {
            within("a harvested forged call, decoded", move || {
                call.wait_decoded(&|bytes| chimaera_core::codec::decode::<u32>(bytes, "output"))
            })
        } else {
            let results = within("a harvested forged call, raw", move || call.wait());
            assert_eq!(results.len(), 1, "{what}");
            results.into_iter().next().unwrap().1.map(|_| 0)
        };
        assert!(
            matches!(failed, Err(TaskError::Malformed { .. })),
            "{what}: {failed:?}"
        );
    }
    drop(holder);
    let other = runtime.client();
    let m =
        ModNameClient::create(&other, PoolQuery::local(), "q", CreateParams::default()).unwrap();
    assert_eq!(m.custom(PoolQuery::local(), "next", 0).unwrap(), "next");
}

/// A window of calls wider than the connection's slots, waited in order: submissions
/// harvest answered slots, and a slot is harvested again for its next call before the
/// previous one collects its answer. Each call gets its own answer (small outputs moved
/// inline, large ones as results, errors), through every way of waiting.
#[test]
fn a_window_wider_than_the_slots_gets_each_call_its_own_answer() {
    let runtime = RuntimeProcess::start("widewindow", "queue_depth: 4\n");
    let chi = runtime.client();
    let m = ModNameClient::create(&chi, PoolQuery::local(), "p", CreateParams::default()).unwrap();
    let connection = chi.shm_connection().unwrap().clone();
    within("a window wider than the slots", move || {
        let text = |i: u32| match i % 5 {
            // Larger than the reply line (and than a slot), then small.
            0 => format!("{i}{}", "w".repeat(5000)),
            _ => format!("w{i}"),
        };
        let mut window: std::collections::VecDeque<(u32, Pending<'static, String>)> =
            std::collections::VecDeque::new();
        for i in 0..400u32 {
            if window.len() == 9 {
                let (i, pending) = window.pop_front().unwrap();
                match i % 3 {
                    0 => assert_eq!(pending.wait().unwrap(), text(i)),
                    1 => assert_eq!(support::block_on(pending).unwrap(), text(i)),
                    _ => drop(pending),
                }
            }
            if i % 7 == 0 {
                // An unknown method: the runtime answers with an error.
                let failed = connection
                    .submit(m.pool_id(), 999, PoolQuery::Local, &[], None)
                    .unwrap();
                let err = failed.wait_decoded(&|_| Ok(())).unwrap_err();
                assert!(matches!(err, TaskError::UnknownMethod { .. }), "{err}");
            }
            window.push_back((i, m.async_custom(PoolQuery::local(), &text(i), i).unwrap()));
        }
        for (i, pending) in window {
            assert_eq!(pending.wait().unwrap(), text(i));
        }
    });
}

/// A thread of a client scribbles over its own call's reply before the runtime answers
/// (an output far outside the area, of every length, or an unknown status): the call
/// fails with a typed `Malformed` error instead of a panic or a read out of bounds, and
/// the runtime serves the next client.
#[test]
fn a_reply_the_client_forges_for_itself_fails_its_call_with_a_typed_error() {
    let runtime = RuntimeProcess::start("forgedreply", "");
    let chi = runtime.client();
    let m = ModNameClient::create(&chi, PoolQuery::local(), "p", CreateParams::default()).unwrap();
    let connection = chi.shm_connection().unwrap().clone();
    // `co_mutex_test` holding the lock for a minute: the runtime answers none of these
    // before the forgery (they queue on the container's lock).
    let slow = chimaera_core::codec::encode(&(
        chimaera_core::codec::ByRef(&0u32),
        chimaera_core::codec::ByRef(&60_000u32),
    ))
    .unwrap();
    let method = chimaera::mod_name::mod_name_tasks::CO_MUTEX_TEST;
    // The input is the task's (not an input error, which would be `Malformed` too).
    let quick = chimaera_core::codec::encode(&(
        chimaera_core::codec::ByRef(&0u32),
        chimaera_core::codec::ByRef(&1u32),
    ))
    .unwrap();
    let answer = connection
        .submit(m.pool_id(), method, PoolQuery::Local, &quick, None)
        .unwrap()
        .wait();
    let inside = answer[0].1.as_ref().expect("a well-formed co_mutex_test");
    assert_eq!(
        chimaera_core::codec::decode::<u32>(inside, "output").unwrap(),
        1
    );
    let forgeries = [
        (0, u64::MAX - 3, 8),
        (0, 0, u32::MAX),
        (0, 1 << 40, 1),
        (1, u64::MAX, 200),
        (99, 0, 4),
    ];
    for (status, offset, len) in forgeries {
        let call = connection
            .submit(m.pool_id(), method, PoolQuery::Local, &slow, None)
            .unwrap();
        call.forge_reply(status, offset, len);
        let results = within("a call with a forged reply", move || call.wait());
        assert_eq!(results.len(), 1);
        assert!(
            matches!(results[0].1, Err(TaskError::Malformed { .. })),
            "status {status}, {len} bytes at {offset}: {:?}",
            results[0].1
        );
    }
    let other = runtime.client();
    let m =
        ModNameClient::create(&other, PoolQuery::local(), "q", CreateParams::default()).unwrap();
    assert_eq!(m.custom(PoolQuery::local(), "next", 0).unwrap(), "next");
}
