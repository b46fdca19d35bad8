//! Many nodes as real processes: `chimaera runtime start` runtimes on 127.0.0.1, each with
//! its own shm instance, config and port, joined over gRPC (chimaera-net) by one hostfile.
//! This test process is a client of node 0 (and looks at the other nodes through their
//! own instances to see which node ran what). No timing assertions: fault tests check the
//! typed error, and `within` only catches hangs.
mod support;

use chimaera::admin_api::{PoolOptions, RuntimeStatus};
use chimaera::bdev::{BdevClient, BdevParams, BdevType};
use chimaera::mod_name::{CreateParams, ModNameClient};
use chimaera::prelude::*;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;
use support::{wait_for_success, wait_until, within, RuntimeProcess};

const SECRET: &str = "net-cluster-test-secret-0123456789";

/// `count` ports free on 127.0.0.1 right now (each bound once by the kernel's choice).
fn free_ports(count: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port"))
        .collect();
    listeners
        .iter()
        .map(|listener| listener.local_addr().unwrap().port())
        .collect()
}

/// The hostfile of a cluster on `ports`, removed when dropped.
struct Hostfile(PathBuf);

impl Hostfile {
    fn write(test: &str, ports: &[u16]) -> Hostfile {
        let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("t{}-{test}.hosts", std::process::id()));
        let text: String = ports
            .iter()
            .map(|port| format!("127.0.0.1:{port}\n"))
            .collect();
        std::fs::write(&path, format!("# {test}\n{text}")).unwrap();
        Hostfile(path)
    }
}

impl Drop for Hostfile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn node_yaml(hostfile: &Hostfile, node: u32, secret: &str) -> String {
    format!(
        "workers:\n  low_latency: 1\n  high_latency: 0\nstop_grace_period_ms: 500\nnetworking:\n  hostfile: {}\n  \
         node_id: {node}\n  rpc_timeout_ms: 1500\n  secret: {secret}\n",
        hostfile.0.display()
    )
}

/// A cluster of `chimaera runtime start` processes, node 0 first (the others ask it for
/// the cluster's pools as they start).
struct Cluster {
    nodes: Vec<RuntimeProcess>,
    ports: Vec<u16>,
    _hostfile: Hostfile,
}

impl Cluster {
    fn start(test: &str, count: u32) -> Cluster {
        Cluster::start_with(test, count, "")
    }

    /// A cluster whose nodes' configs all end with `extra_yaml` (top-level keys).
    fn start_with(test: &str, count: u32, extra_yaml: &str) -> Cluster {
        let ports = free_ports(count as usize);
        let hostfile = Hostfile::write(test, &ports);
        let nodes = (0..count)
            .map(|node| {
                RuntimeProcess::start(
                    &format!("{test}-n{node}"),
                    &(node_yaml(&hostfile, node, SECRET) + extra_yaml),
                )
            })
            .collect();
        Cluster {
            nodes,
            ports,
            _hostfile: hostfile,
        }
    }

    fn client(&self, node: usize) -> Client {
        self.nodes[node].client()
    }

    /// Node `node`'s own status, asked through its own instance.
    fn status(&self, node: usize) -> RuntimeStatus {
        AdminClient::attach(&self.client(node), PoolId::ADMIN)
            .status(PoolQuery::local())
            .expect("status")
    }

    /// How many `kCustom` runs node `node` completed for `pool`.
    fn custom_runs(&self, node: usize, pool: PoolId) -> u64 {
        self.status(node)
            .methods
            .iter()
            .filter(|method| method.pool == pool && method.name == "kCustom")
            .map(|method| method.completed)
            .sum()
    }
}

/// The client children of the tests below, run as uid 65534 (listed in `access.uids`,
/// not an admin) against one node. Only runs when a test starts it.
#[test]
#[ignore = "entry point of the client child process, started by the tests in this file"]
fn client_child_entry() {
    let Some((role, chi)) = support::client_child() else {
        return;
    };
    match role.as_str() {
        "unprivileged" => creates_no_pool_child(&chi),
        "overflower" => overflows_on_node_1_child(&chi),
        other => panic!("unknown role {other}"),
    }
}

/// The child of `a_client_without_admin_rights_opens_cluster_pools_but_creates_none`.
fn creates_no_pool_child(chi: &Client) {
    // Creating is refused, spread over the nodes or not: the other nodes would build
    // their containers without knowing who asked, so they could neither count them in
    // the uid's quotas nor let a module refuse it (a bdev file device's path, say).
    for containers in [2, 1] {
        let created = ModNameClient::create_with(
            chi,
            PoolQuery::local(),
            "mine",
            PoolOptions::containers(containers),
            CreateParams::default(),
        );
        match created {
            Err(TaskError::PermissionDenied { action, uid: 65534 }) => {
                assert!(
                    action.contains("create the pool `mine` in a cluster"),
                    "{action}"
                );
            }
            other => panic!("expected PermissionDenied, got {:?}", other.map(|_| ())),
        }
    }
    // The owner's pool opens by name, and its containers on both nodes serve the uid.
    let owned = spread_pool(chi, "owned", 2);
    for container in 0..2u32 {
        let text = format!("nobody to container {container}");
        assert_eq!(
            owned.custom(PoolQuery::direct_id(container), &text, container),
            Ok(text)
        );
    }
    println!("cluster checks done");
}

/// The child of `a_client_without_admin_rights_is_counted_on_the_node_that_runs_its_task`
/// (`quotas.stack_overflows: 2`), a client of node 0.
fn overflows_on_node_1_child(chi: &Client) {
    let owned = spread_pool(chi, "owned", 2);
    let on_node_1 = PoolQuery::direct_id(1);
    for round in 0..2 {
        let result = owned.overflow_test(on_node_1, &mut [0u8; 16], false, 0, true);
        assert!(
            matches!(result, Err(TaskError::StackOverflow { method: 31, .. })),
            "overflow {round}: {result:?}"
        );
    }
    // Node 1 counted both against the uid: it refuses its tasks now, overflowing or not.
    let spent = |result: Result<String, TaskError>| match result {
        Err(TaskError::QuotaExceeded {
            limit: 2,
            config_key,
            ..
        }) => assert_eq!(config_key, "quotas.stack_overflows"),
        other => panic!("expected the overflow quota, got {other:?}"),
    };
    let third = owned.overflow_test(on_node_1, &mut [0u8; 16], false, 0, true);
    spent(third.map(|len| len.to_string()));
    spent(owned.custom(on_node_1, "after", 1));
    // Node 0, where no task of the uid overflowed, still serves it.
    assert_eq!(
        owned.custom(PoolQuery::direct_id(0), "on node 0", 0),
        Ok("on node 0".to_owned())
    );
    println!("overflow checks done");
}

/// A MOD_NAME pool with one container per node, created by a client of node 0.
fn spread_pool(chi: &Client, name: &str, nodes: u32) -> ModNameClient {
    ModNameClient::create_with(
        chi,
        PoolQuery::local(),
        name,
        PoolOptions::containers(nodes),
        CreateParams::default(),
    )
    .expect("pool created across the cluster")
}

#[test]
fn tasks_from_a_client_of_node_0_run_on_every_node_and_bdev_data_round_trips() {
    let cluster = Cluster::start("reach", 3);
    let chi = cluster.client(0);
    let pool = spread_pool(&chi, "spread", 3);

    // The pool exists on every node, under one id.
    for node in 0..3 {
        let status = cluster.status(node);
        assert!(
            status.pools.iter().any(|info| info.id == pool.pool_id()),
            "node {node} lacks the pool: {:?}",
            status.pools
        );
    }

    // DirectId(k): container k lives on node k, and only node k runs it.
    for container in 0..3u32 {
        let text = format!("to container {container}");
        assert_eq!(
            pool.custom(PoolQuery::direct_id(container), &text, container)
                .unwrap(),
            text
        );
        for node in 0..3 {
            assert_eq!(
                cluster.custom_runs(node, pool.pool_id()),
                u64::from(node as u32 <= container),
                "after DirectId({container}), node {node}"
            );
        }
    }

    // Broadcast: one replica per container, each on its node, every answer back.
    let replies = pool
        .async_custom(PoolQuery::broadcast(), "everyone", 7)
        .unwrap()
        .wait_all();
    let mut containers: Vec<ContainerId> = replies.iter().map(|(id, _)| *id).collect();
    containers.sort_unstable();
    assert_eq!(containers, [0, 1, 2]);
    for (container, reply) in replies {
        assert_eq!(reply.unwrap(), "everyone", "container {container}");
    }
    for node in 0..3 {
        assert_eq!(cluster.custom_runs(node, pool.pool_id()), 2, "node {node}");
    }

    // Range(1, 2): containers 1 and 2, on nodes 1 and 2; DirectHash(h): container h % 3.
    let replies = pool
        .async_custom(PoolQuery::range(1, 2), "some", 0)
        .unwrap()
        .wait_all();
    let mut containers: Vec<ContainerId> = replies.iter().map(|(id, _)| *id).collect();
    containers.sort_unstable();
    assert_eq!(containers, [1, 2]);
    assert!(replies
        .iter()
        .all(|(_, reply)| reply.as_deref() == Ok("some")));
    assert_eq!(
        pool.custom(PoolQuery::direct_hash(5), "hashed", 0).unwrap(),
        "hashed"
    );
    let runs: Vec<u64> = (0..3)
        .map(|node| cluster.custom_runs(node, pool.pool_id()))
        .collect();
    assert_eq!(runs, [2, 3, 4], "Range on nodes 1 and 2, hash 5 on node 2");

    // A RAM bdev on every node; blocks on the remote ones written through this client's
    // shared buffers and read back.
    let params = BdevParams {
        bdev_type: BdevType::Ram,
        total_size: 4 << 20,
        ..BdevParams::default()
    };
    let bdev = BdevClient::create_with(
        &chi,
        PoolQuery::local(),
        "ram-everywhere",
        PoolOptions::containers(3),
        params,
    )
    .unwrap();
    for container in [1u32, 2] {
        let query = PoolQuery::direct_id(container);
        let blocks = bdev.allocate_blocks(query, 16384).unwrap();
        let pattern: Vec<u8> = (0..16384u32)
            .map(|i| (i * 31 + container * 7) as u8)
            .collect();
        assert_eq!(bdev.write(query, blocks[0], &pattern).unwrap(), 16384);
        let mut read_back = vec![0u8; 16384];
        assert_eq!(bdev.read(query, blocks[0], &mut read_back).unwrap(), 16384);
        assert_eq!(read_back, pattern, "container {container}");
    }
}

/// Fills `bytes` with a pattern that differs per `seed` and per position.
fn fill_pattern(bytes: &mut [u8], seed: u32) {
    for (i, byte) in bytes.iter_mut().enumerate() {
        *byte = (i as u32)
            .wrapping_mul(31)
            .wrapping_add(seed.wrapping_mul(7)) as u8;
    }
}

/// Blocks of RAM bdevs on nodes 1 and 2 written from this client's shared buffers (by
/// reference: node 0 copies the range into the frame) and read back into another
/// shared buffer (node 0 writes the returned bytes into it before the call completes).
#[test]
fn shared_buffers_of_a_client_of_node_0_move_bdev_blocks_on_other_nodes() {
    let ports = free_ports(3);
    let hostfile = Hostfile::write("sharedbulk", &ports);
    let nodes: Vec<RuntimeProcess> = (0..3)
        .map(|node| {
            let yaml = node_yaml(&hostfile, node, SECRET)
                + "max_clients: 4\nshm:\n  client_data_size: 64MiB\n";
            RuntimeProcess::start(&format!("sharedbulk-n{node}"), &yaml)
        })
        .collect();
    let chi = nodes[0].client();
    let bdev = BdevClient::create_with(
        &chi,
        PoolQuery::local(),
        "ram-shared",
        PoolOptions::containers(3),
        BdevParams {
            bdev_type: BdevType::Ram,
            total_size: 16 << 20,
            ..BdevParams::default()
        },
    )
    .unwrap();
    for (container, len) in [(1u32, 4096usize), (2, 100_000), (1, 1 << 20)] {
        let query = PoolQuery::direct_id(container);
        let mut data = chi.allocate_buffer(len).unwrap();
        let mut back = chi.allocate_buffer(len).unwrap();
        assert!(data.is_shared() && back.is_shared());
        fill_pattern(&mut data, container + len as u32);
        // Blocks of at most 128 KiB: each written from, and read into, its part of the
        // buffers (references at offsets inside them).
        let blocks = bdev.allocate_blocks(query, len as u64).unwrap();
        let mut at = 0usize;
        for block in blocks {
            let part = (block.size as usize).min(len - at);
            let range = at..at + part;
            assert_eq!(
                bdev.write(query, block, &data[range.clone()]).unwrap(),
                part as u64
            );
            assert_eq!(
                bdev.read(query, block, &mut back[range]).unwrap(),
                part as u64
            );
            at += part;
        }
        assert_eq!(at, len);
        assert!(
            back[..] == data[..],
            "container {container}, {len} bytes: read back differs"
        );
    }
}

#[test]
fn force_net_sends_one_nodes_own_tasks_through_grpc_with_the_same_results() {
    // A cluster of one node whose tasks all take the network path: SaveIn, a gRPC call
    // to itself, LoadIn, run, SaveOut back.
    let hostfile = Hostfile::write("forcenet", &free_ports(1));
    let yaml = node_yaml(&hostfile, 0, SECRET) + "  force_net: true\n";
    let node = RuntimeProcess::start("forcenet", &yaml);
    let chi = node.client();
    let pool = spread_pool(&chi, "looped", 1);
    let long = "x".repeat(100_000);
    assert_eq!(pool.custom(PoolQuery::local(), &long, 3).unwrap(), long);
    let bdev = BdevClient::create_with(
        &chi,
        PoolQuery::local(),
        "ram-looped",
        PoolOptions::containers(1),
        BdevParams {
            bdev_type: BdevType::Ram,
            total_size: 4 << 20,
            ..BdevParams::default()
        },
    )
    .unwrap();
    let blocks = bdev.allocate_blocks(PoolQuery::local(), 65536).unwrap();
    let pattern: Vec<u8> = (0..65536u32).map(|i| (i * 13 + 5) as u8).collect();
    assert_eq!(
        bdev.write(PoolQuery::local(), blocks[0], &pattern).unwrap(),
        65536
    );
    let mut read_back = vec![0u8; 65536];
    assert_eq!(
        bdev.read(PoolQuery::local(), blocks[0], &mut read_back)
            .unwrap(),
        65536
    );
    assert_eq!(read_back, pattern);
    // The same through shared buffers: by reference into the frame and back.
    let mut data = chi.allocate_buffer(65536).unwrap();
    data.copy_from_slice(&pattern);
    let mut back = chi.allocate_buffer(65536).unwrap();
    let blocks = bdev.allocate_blocks(PoolQuery::local(), 65536).unwrap();
    assert_eq!(
        bdev.write(PoolQuery::local(), blocks[0], &data).unwrap(),
        65536
    );
    assert_eq!(
        bdev.read(PoolQuery::local(), blocks[0], &mut back).unwrap(),
        65536
    );
    assert!(back[..] == pattern[..]);
}

/// One client of a node whose config does not force the network asks for it itself
/// (`Client::with_force_net`): its tasks go through gRPC to its own node, with the same
/// results as the direct client's, shared buffers included.
#[test]
fn one_client_forces_the_network_path_through_grpc_with_the_same_results() {
    let hostfile = Hostfile::write("ownforce", &free_ports(1));
    let node = RuntimeProcess::start("ownforce", &node_yaml(&hostfile, 0, SECRET));
    let direct = node.client();
    let forced = direct.with_force_net(true);
    let pool = spread_pool(&direct, "own", 1);
    let forced_pool = ModNameClient::attach(&forced, pool.pool_id());
    let long = "y".repeat(50_000);
    assert_eq!(
        forced_pool.custom(PoolQuery::local(), &long, 3).unwrap(),
        pool.custom(PoolQuery::local(), &long, 3).unwrap()
    );
    let bdev = BdevClient::create_with(
        &direct,
        PoolQuery::local(),
        "ram-own",
        PoolOptions::containers(1),
        BdevParams {
            bdev_type: BdevType::Ram,
            total_size: 4 << 20,
            ..BdevParams::default()
        },
    )
    .unwrap();
    let forced_bdev = BdevClient::attach(&forced, bdev.pool_id());
    let mut data = direct.allocate_buffer(65536).unwrap();
    fill_pattern(&mut data, 77);
    let mut back = direct.allocate_buffer(65536).unwrap();
    let q = PoolQuery::local();
    let blocks = bdev.allocate_blocks(q, 65536).unwrap();
    assert_eq!(forced_bdev.write(q, blocks[0], &data).unwrap(), 65536);
    assert_eq!(bdev.read(q, blocks[0], &mut back).unwrap(), 65536);
    assert!(back[..] == data[..], "written forced, read direct");
    fill_pattern(&mut data, 78);
    assert_eq!(bdev.write(q, blocks[0], &data).unwrap(), 65536);
    back.fill(0);
    assert_eq!(forced_bdev.read(q, blocks[0], &mut back).unwrap(), 65536);
    assert!(back[..] == data[..], "written direct, read forced");
}

#[test]
fn a_killed_node_fails_its_tasks_alone_and_serves_again_after_a_restart() {
    let mut cluster = Cluster::start("kill", 3);
    let chi = cluster.client(0);
    let pool = spread_pool(&chi, "survivor", 3);
    assert_eq!(pool.custom(PoolQuery::direct_id(1), "up", 0).unwrap(), "up");

    cluster.nodes[1].kill();
    let dead = pool.clone();
    let error = within("a task to a killed node", move || {
        dead.custom(PoolQuery::direct_id(1), "anyone?", 0)
    })
    .unwrap_err();
    assert!(
        matches!(
            error,
            TaskError::NodeFailed { node: 1, .. } | TaskError::NodeTimeout { node: 1, .. }
        ),
        "{error:?}"
    );
    // The others keep serving, a broadcast included (node 1's replica fails alone).
    for container in [0u32, 2] {
        assert_eq!(
            pool.custom(PoolQuery::direct_id(container), "alive", 0)
                .unwrap(),
            "alive"
        );
    }
    let fanned = pool.clone();
    let replies = within("a broadcast with a node down", move || {
        fanned
            .async_custom(PoolQuery::broadcast(), "all", 0)
            .unwrap()
            .wait_all()
    });
    assert_eq!(replies.len(), 3);
    for (container, reply) in replies {
        match container {
            1 => assert!(
                matches!(
                    reply,
                    Err(TaskError::NodeFailed { node: 1, .. }
                        | TaskError::NodeTimeout { node: 1, .. })
                ),
                "{reply:?}"
            ),
            _ => assert_eq!(reply.unwrap(), "all", "container {container}"),
        }
    }

    // Restarted, node 1 gets the pool from node 0 and serves its container again (the
    // caller's link to it reconnects with backoff, so the first tries may still fail).
    cluster.nodes[1].spawn();
    wait_until("node 1 to serve again", || {
        pool.custom(PoolQuery::direct_id(1), "back", 0).as_deref() == Ok("back")
    });
    assert!(cluster.custom_runs(1, pool.pool_id()) >= 1);
}

#[test]
fn a_clean_stop_tells_the_peers_the_node_left() {
    let mut cluster = Cluster::start("leave", 2);
    let chi = cluster.client(0);
    let pool = spread_pool(&chi, "leaving", 2);
    assert_eq!(pool.custom(PoolQuery::direct_id(1), "hi", 0).unwrap(), "hi");

    let status = cluster.nodes[1]
        .chimaera(&["runtime", "stop"])
        .status()
        .expect("run runtime stop");
    assert!(status.success());
    if let Some(mut child) = cluster.nodes[1].child.take() {
        assert!(child.wait().unwrap().success());
    }
    // Node 0 heard it leave: the task fails at once as "left", not by a deadline.
    let error = pool
        .custom(PoolQuery::direct_id(1), "gone?", 0)
        .unwrap_err();
    match error {
        TaskError::NodeFailed { node: 1, reason } => {
            assert!(reason.contains("left"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        pool.custom(PoolQuery::direct_id(0), "still", 0).unwrap(),
        "still"
    );
}

/// `chimaera runtime status --json` of `node`, parsed.
fn status_json(node: &RuntimeProcess) -> serde_json::Value {
    let output = node
        .chimaera(&["runtime", "status", "--json"])
        .output()
        .expect("run runtime status");
    assert!(output.status.success(), "{output:?}");
    serde_json::from_slice(&output.stdout).expect("valid JSON")
}

#[test]
fn runtime_status_lists_the_cluster_nodes_and_their_state() {
    let cluster = Cluster::start("status", 2);
    let pool = spread_pool(&cluster.client(0), "seen", 2);
    assert_eq!(pool.custom(PoolQuery::direct_id(1), "hi", 0).unwrap(), "hi");

    let address = |node: usize| format!("127.0.0.1:{}", cluster.ports[node]);
    let status = status_json(&cluster.nodes[0]);
    assert_eq!(status["schema"], 1);
    assert_eq!(status["node"], 0);
    assert_eq!(
        status["nodes"],
        serde_json::json!([
            { "id": 0, "address": address(0), "state": "local" },
            { "id": 1, "address": address(1), "state": "up" },
        ])
    );
    let status = status_json(&cluster.nodes[1]);
    assert_eq!(status["node"], 1);
    assert_eq!(status["nodes"][1]["state"], "local");

    let text = cluster.nodes[0]
        .chimaera(&["runtime", "status"])
        .output()
        .expect("run runtime status");
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("cluster: node 0 of 2 node(s)"), "{text}");
    assert!(text.contains(&format!("{}  up", address(1))), "{text}");

    // A clean stop of node 1: node 0 shows it left.
    let stopped = cluster.nodes[1]
        .chimaera(&["runtime", "stop"])
        .status()
        .expect("run runtime stop");
    assert!(stopped.success());
    let status = status_json(&cluster.nodes[0]);
    assert_eq!(status["nodes"][1]["state"], "left", "{status}");
}

#[test]
fn a_node_with_the_wrong_secret_is_refused() {
    let ports = free_ports(2);
    let hostfile = Hostfile::write("secret", &ports);
    let node0 = RuntimeProcess::start("secret-n0", &node_yaml(&hostfile, 0, SECRET));
    let intruder = RuntimeProcess::start(
        "secret-n1",
        &node_yaml(&hostfile, 1, "not-the-cluster-secret-at-all-99"),
    );
    let pool = spread_pool(&node0.client(), "guarded", 2);
    // Node 0 refuses the intruder's calls, and the intruder node 0's: no task crosses.
    let error = pool
        .custom(PoolQuery::direct_id(1), "secret data", 0)
        .unwrap_err();
    match error {
        TaskError::NodeFailed { node: 1, reason } => {
            assert!(reason.contains("refused"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    let intruder_status = AdminClient::attach(&intruder.client(), PoolId::ADMIN)
        .status(PoolQuery::local())
        .unwrap();
    assert!(
        intruder_status
            .pools
            .iter()
            .all(|info| info.id != pool.pool_id()),
        "the intruder got the cluster's pool: {:?}",
        intruder_status.pools
    );
    assert_eq!(
        pool.custom(PoolQuery::direct_id(0), "mine", 0).unwrap(),
        "mine"
    );
}

#[test]
fn a_bad_cluster_config_fails_the_start_naming_what_is_wrong() {
    let (port,) = (free_ports(1)[0],);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let instance = format!("t{}-badnet", std::process::id());
    let hostfile = dir.join(format!("{instance}.hosts"));
    let config = dir.join(format!("{instance}.yaml"));
    let cases = [
        (
            format!("127.0.0.1:{port}\nnode[9-2]\n"),
            format!("node_id: 0\n  secret: {SECRET}"),
            "line 2",
        ),
        (
            format!("127.0.0.1:{port}\n"),
            "node_id: 0".to_owned(),
            "networking.secret",
        ),
        (
            format!("127.0.0.1:{port}\n"),
            format!("node_id: 5\n  secret: {SECRET}"),
            "networking.node_id",
        ),
    ];
    for (hosts, networking, expected) in cases {
        std::fs::write(&hostfile, hosts).unwrap();
        std::fs::write(
            &config,
            format!(
                "instance: {instance}\nnetworking:\n  hostfile: {}\n  {networking}\n",
                hostfile.display()
            ),
        )
        .unwrap();
        let output = Command::new(env!("CARGO_BIN_EXE_chimaera"))
            .args(["runtime", "start"])
            .env("CHI_SERVER_CONF", &config)
            .env_remove("CHI_INSTANCE")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        // Exit 2: bad configuration (never a panic's 101).
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(expected), "{expected}: {stderr}");
    }
    // This node's port is taken: the start fails (exit 1), naming the address.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    std::fs::write(&hostfile, format!("127.0.0.1:{taken_port}\n")).unwrap();
    std::fs::write(
        &config,
        format!(
            "instance: {instance}\nnetworking:\n  hostfile: {}\n  node_id: 0\n  secret: {SECRET}\n",
            hostfile.display()
        ),
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_chimaera"))
        .args(["runtime", "start"])
        .env("CHI_SERVER_CONF", &config)
        .env_remove("CHI_INSTANCE")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on 127.0.0.1:{taken_port}")),
        "{stderr}"
    );
    let _ = std::fs::remove_file(&hostfile);
    let _ = std::fs::remove_file(&config);
}

/// A client without admin rights may use a cluster's pools but not create one, through
/// either node: the refusal is a typed error, nothing is built on any node, and the
/// pool the owner made serves it on both nodes.
#[test]
fn a_client_without_admin_rights_opens_cluster_pools_but_creates_none() {
    let cluster = Cluster::start_with("unprivileged", 2, "access:\n  uids: [65534]\n");
    let owned = spread_pool(&cluster.client(0), "owned", 2);
    for node in 0..2 {
        wait_for_success(
            cluster.nodes[node].client_child_as_nobody("unprivileged", &[]),
            "cluster checks done",
        );
    }
    for node in 0..2 {
        let pools = cluster.status(node).pools;
        let names: Vec<&str> = pools.iter().map(|info| info.name.as_str()).collect();
        assert!(!names.contains(&"mine"), "node {node} built it: {names:?}");
        assert_eq!(
            cluster.custom_runs(node, owned.pool_id()),
            2,
            "node {node} ran one call of each child"
        );
    }
}

/// The tasks a client without admin rights sends to another node's container run there
/// for its uid: that node counts them against its own quotas of the uid (here its stack
/// overflows, after which it refuses the uid's tasks) and lists the uid in its status.
/// Before, they ran there as if for a trusted caller: counted nowhere, so a uid could
/// leave any number of dead stacks on every node but its own.
#[test]
fn a_client_without_admin_rights_is_counted_on_the_node_that_runs_its_task() {
    let cluster = Cluster::start_with(
        "uid-across",
        2,
        "access:\n  uids: [65534]\nquotas:\n  stack_overflows: 2\ncoroutine_stack_size: 64KiB\n",
    );
    let chi = cluster.client(0);
    let owned = spread_pool(&chi, "owned", 2);
    wait_for_success(
        cluster.nodes[0].client_child_as_nobody("overflower", &[]),
        "overflow checks done",
    );
    let overflows = |node: usize| {
        cluster
            .status(node)
            .uids
            .iter()
            .find(|uid| uid.uid == 65534)
            .map(|uid| uid.stack_overflows.used)
    };
    assert_eq!(overflows(1), Some(2), "node 1 counts the uid's overflows");
    assert_eq!(overflows(0), Some(0), "node 0 ran none of them");
    // The owner is not limited by the uid's quota on either node.
    for container in 0..2u32 {
        assert_eq!(
            owned.custom(PoolQuery::direct_id(container), "owner", container),
            Ok("owner".to_owned())
        );
    }
}
