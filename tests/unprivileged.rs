//! What a task of a client without admin rights starts on that client's behalf: a
//! periodic subtask runs for the same uid (counted in its `quotas.periodic_tasks`), keeps
//! running from one period to the next, references none of the client's memory (the
//! client's area is reclaimed when it leaves while the subtask goes on), and ends with
//! its pool; any subtask runs for its task's uid, so a pool private to another uid stays
//! out of reach through a shared pool's handler.
//!
//! Real parts: a runtime process (this test binary re-run as a child serving the probe
//! chimod) and a client child process run as uid 65534 (`nobody`), listed in the
//! runtime's `access.uids`. No timing assertions: deadlines only bound hangs.
mod probe;
mod support;

use chimaera::admin_api::{QuotaUse, UidStatus};
use chimaera::prelude::*;
use probe::{Probe, ProbeClient};
use support::{serve_as_runtime_child, wait_for_success, wait_until, Launch, RuntimeProcess};

/// The runtime child: serves the probe until killed. Only runs when a test starts it.
#[test]
#[ignore = "entry point of the runtime child process, started by the tests in this file"]
fn runtime_child_entry() {
    serve_as_runtime_child(|builder| builder.module::<Probe>());
}

/// The client children of the tests below. Only runs when a test starts it.
#[test]
#[ignore = "entry point of the client child process, started by the tests in this file"]
fn client_child_entry() {
    let Some((role, chi)) = support::client_child() else {
        return;
    };
    let probe = ProbeClient::create(&chi, PoolQuery::local(), "ticks").expect("opens the pool");
    match role.as_str() {
        "ticker" => ticker_child(&probe),
        "private-maker" => {
            let mine = ProbeClient::create(&chi, PoolQuery::local(), "private").unwrap();
            // Its own tasks' subtasks reach its own pool.
            probe.tick_pool(PoolQuery::local(), "private").unwrap();
            assert_eq!(mine.ticks(PoolQuery::local()).unwrap(), 1);
            println!("made");
        }
        "relayer" => {
            // A subtask runs for the uid of the task that made it: no way around
            // another uid's private pool through a shared pool's handler.
            match probe.tick_pool(PoolQuery::local(), "private") {
                Err(TaskError::PrivatePool { name, owner: 65534 }) => assert_eq!(name, "private"),
                other => panic!("expected PrivatePool, got {other:?}"),
            }
            println!("refused");
        }
        other => panic!("unknown role {other}"),
    }
}

/// The `ticker` child (uid 65534, `quotas.periodic_tasks: 2`): starts two ticking
/// subtasks, then a third past its quota.
fn ticker_child(probe: &ProbeClient) {
    for _ in 0..2 {
        probe.start_ticking(PoolQuery::local(), 2).unwrap();
    }
    match probe.start_ticking(PoolQuery::local(), 2) {
        Err(TaskError::QuotaExceeded {
            limit: 2,
            config_key,
            ..
        }) => assert_eq!(config_key, "quotas.periodic_tasks"),
        other => panic!("expected the periodic quota, got {other:?}"),
    }
    println!("ticking");
}

/// Uid 65534's entry in the runtime's status (the owner asks, and sees every uid).
fn uid_status(admin: &AdminClient) -> UidStatus {
    let status = admin.status(PoolQuery::local()).expect("status");
    status
        .uids
        .into_iter()
        .find(|entry| entry.uid == 65534)
        .expect("uid 65534 is listed")
}

#[test]
fn a_periodic_subtask_runs_for_its_uid_outlives_the_client_and_ends_with_its_pool() {
    let runtime = RuntimeProcess::start_with(
        "periodic-subtask",
        "access:\n  uids: [65534]\nquotas:\n  periodic_tasks: 2\n",
        Launch::TEST_BINARY,
    );
    let chi = runtime.client();
    let admin = AdminClient::attach(&chi, PoolId::ADMIN);
    let probe = ProbeClient::create(&chi, PoolQuery::local(), "ticks").unwrap();
    wait_for_success(runtime.client_child_as_nobody("ticker", &[]), "ticking");

    // Both subtasks tick on, run after run: a subtask's share (its caller's quotas, no
    // memory) is kept while it sleeps between runs; before, it was held weakly there
    // like a client's memory, nothing else held it, and each subtask ended after its
    // first run.
    let ticks = || probe.ticks(PoolQuery::local()).unwrap();
    wait_until("the subtasks to tick 100 times", || ticks() >= 100);
    // The client is gone and its area reclaimed (the subtasks hold none of its memory);
    // the subtasks still count against the uid.
    wait_until("the child's area to be reclaimed", || {
        uid_status(&admin).connections.used == 0
    });
    let uid = uid_status(&admin);
    assert_eq!(uid.periodic_tasks, QuotaUse { used: 2, max: 2 });
    let before = ticks();
    wait_until("the subtasks to tick on", || ticks() >= before + 20);

    // They end with their pool, and the uid's quota is free again.
    admin
        .destroy_pool(PoolQuery::local(), probe.pool_id())
        .unwrap();
    wait_until("the subtasks to end", || {
        uid_status(&admin).periodic_tasks.used == 0
    });
    wait_until("no periodic task to be alive", || {
        admin.status(PoolQuery::local()).unwrap().periodic == 0
    });
}

/// A subtask runs for the uid of the task that made it: a uid without admin rights
/// cannot reach a pool private to another uid through a shared pool's handler (the
/// handler's subtask is refused as a call of its own would be), while the owner of the
/// private pool reaches it that way.
#[test]
fn a_subtask_reaches_a_private_pool_only_for_its_owner() {
    let runtime = RuntimeProcess::start_with(
        "private-subtask",
        "access:\n  uids: [65534, 65533]\n",
        Launch::TEST_BINARY,
    );
    let chi = runtime.client();
    ProbeClient::create(&chi, PoolQuery::local(), "ticks").unwrap();
    wait_for_success(runtime.client_child_as(65534, "private-maker", &[]), "made");
    wait_for_success(runtime.client_child_as(65533, "relayer", &[]), "refused");
    // The owner's task may tick it (trusted callers use every pool).
    let shared = ProbeClient::open(&chi, "ticks").unwrap();
    shared.tick_pool(PoolQuery::local(), "private").unwrap();
    let private = ProbeClient::open(&chi, "private").unwrap();
    assert_eq!(private.ticks(PoolQuery::local()).unwrap(), 2);
}
