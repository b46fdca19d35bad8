//! Many nodes in one process: every node its own runtime (real workers, real
//! coroutines, the admin and probe chimods), joined by the in-memory network of
//! `chimaera::cluster::memory`, which can make a node unreachable, slow or gone.
//! No timing assertions: a fault test checks the typed error and that nothing hangs.
//! Bulk data across nodes: node 0 can also serve this process as a shared-memory client
//! ([`TestCluster::start_serving`]), whose buffers lie in a real data share in /dev/shm.
mod bulk_probe;
mod probe;
mod support;

use bulk_probe::{pattern_byte, BulkProbe, BulkProbeClient};
use chimaera::admin_api::{self, PoolOptions};
use chimaera::bdev::{BdevClient, BdevParams, BdevType};
use chimaera::cluster::memory::{Fault, MemoryCluster};
use chimaera::config::{NetworkingConfig, RuntimeConfig};
use chimaera::mod_name::{CreateParams, ModNameClient};
use chimaera::peer::PeerNetwork;
use chimaera::prelude::*;
use chimaera_core::bulk::{Bulk, BulkWire};
use chimaera_core::cluster::frame::{decode_answer, encode_frame, Answer, Frame, RunTask};
use chimaera_core::cluster::frame::{
    decode_frame_carrying, encode_answer, encode_answer_carrying, encode_frame_carrying,
    BulkSegment, Outcome,
};
use chimaera_core::peer::{FrameHandler, Responder};
use probe::{Probe, ProbeClient};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{wait_until, within};

fn node_config(rpc_timeout_ms: u64, neighborhood_size: u32, force_net: bool) -> RuntimeConfig {
    RuntimeConfig {
        workers_low_latency: 1,
        workers_high_latency: 0,
        stop_grace_period: Duration::from_millis(500),
        networking: NetworkingConfig {
            rpc_timeout: Duration::from_millis(rpc_timeout_ms),
            neighborhood_size,
            force_net,
            ..NetworkingConfig::default()
        },
        ..RuntimeConfig::default()
    }
}

/// A cluster of runtimes in this process. Runtimes are dropped before the wire.
struct TestCluster {
    runtimes: Vec<Option<Runtime>>,
    wire: MemoryCluster,
    config: RuntimeConfig,
    /// Node 0 also serves client processes over shared memory (for its `instance`).
    serving: bool,
}

impl TestCluster {
    fn start(nodes: u32, config: RuntimeConfig) -> TestCluster {
        TestCluster::boot_all(nodes, config, false)
    }

    /// A cluster whose node 0 serves shared-memory clients for the instance of `test`;
    /// connect one with `Client::connect_to(&cluster.config)`.
    fn start_serving(test: &str, nodes: u32, mut config: RuntimeConfig) -> TestCluster {
        config.instance = format!("t{}-{test}", std::process::id())
            .parse()
            .expect("a valid instance name");
        TestCluster::boot_all(nodes, config, true)
    }

    fn boot_all(nodes: u32, config: RuntimeConfig, serving: bool) -> TestCluster {
        let mut cluster = TestCluster {
            runtimes: Vec::new(),
            wire: MemoryCluster::new(nodes, 2).expect("the wire's threads start"),
            config,
            serving,
        };
        // Node 0 first: the others ask it for the cluster's pools as they start.
        for node in 0..nodes {
            let runtime = cluster.boot(node);
            cluster.runtimes.push(Some(runtime));
        }
        cluster
    }

    fn boot(&self, node: u32) -> Runtime {
        let builder = chimaera::builder()
            .module::<Probe>()
            .module::<BulkProbe>()
            .config(self.config.clone())
            .network(self.wire.endpoint(node));
        if self.serving && node == 0 {
            builder.serve()
        } else {
            builder.start()
        }
        .expect("node starts")
    }

    /// A client of node 0 over shared memory (see [`Self::start_serving`]).
    fn shm_client(&self) -> Client {
        assert!(self.serving, "start the cluster with start_serving");
        Client::connect_to(&self.config).expect("a shared-memory client of node 0")
    }

    fn restart(&mut self, node: u32) {
        let runtime = self.boot(node);
        self.runtimes[node as usize] = Some(runtime);
    }

    fn stop(&mut self, node: u32) {
        if let Some(runtime) = self.runtimes[node as usize].take() {
            runtime.stop();
        }
    }

    fn client(&self, node: u32) -> Client {
        self.runtimes[node as usize]
            .as_ref()
            .expect("node runs")
            .client()
    }

    fn probe(&self, node: u32, name: &str, containers: u32) -> ProbeClient {
        ProbeClient::create_with(
            &self.client(node),
            PoolQuery::local(),
            name,
            PoolOptions::containers(containers),
        )
        .expect("pool created")
    }
}

#[test]
fn every_query_mode_reaches_the_node_that_holds_its_container() {
    let cluster = TestCluster::start(4, node_config(2000, 32, false));
    let created = cluster.probe(0, "modes", 8);
    // The same pool seen from node 2.
    let pool = ProbeClient::attach(&cluster.client(2), created.pool_id());
    for container in 0..8 {
        assert_eq!(
            pool.where_am_i(PoolQuery::direct_id(container)).unwrap(),
            (container % 4, container),
            "DirectId({container})"
        );
    }
    assert_eq!(pool.where_am_i(PoolQuery::local()).unwrap(), (2, 2));
    assert_eq!(pool.where_am_i(PoolQuery::physical(3)).unwrap(), (3, 3));
    assert_eq!(pool.where_am_i(PoolQuery::physical(0)).unwrap(), (0, 0));
    assert!(matches!(
        pool.where_am_i(PoolQuery::physical(4)),
        Err(TaskError::NoSuchNode { node: 4 })
    ));
    // Dynamic: the probe's hook picks container `pick % containers`, wherever it lives.
    assert_eq!(pool.picked(PoolQuery::dynamic(), 13).unwrap(), 5);
    // A hook that sees the topology sends the task to a node.
    for node in 0..4 {
        assert_eq!(
            pool.on_node(PoolQuery::dynamic(), node).unwrap(),
            (node, node)
        );
    }
    // DirectHash spreads over every node.
    let mut nodes_seen = [false; 4];
    for hash in 0..16u64 {
        let (node, container) = pool.where_am_i(PoolQuery::direct_hash(hash)).unwrap();
        assert_eq!(u64::from(container), hash % 8);
        assert_eq!(node, container % 4);
        nodes_seen[node as usize] = true;
    }
    assert_eq!(nodes_seen, [true; 4]);
}

#[test]
fn broadcast_and_range_run_one_replica_per_container_on_its_node() {
    // A generous deadline: panicking replicas print backtraces, slow on a loaded machine.
    let cluster = TestCluster::start(4, node_config(10_000, 2, false));
    let pool = cluster.probe(1, "fan", 10);
    let pool = ProbeClient::attach(&cluster.client(3), pool.pool_id());
    let replicas = pool
        .async_where_am_i(PoolQuery::broadcast())
        .unwrap()
        .wait_all();
    let expected: Vec<_> = (0..10).map(|c| (c, Ok((c % 4, c)))).collect();
    assert_eq!(replicas, expected);
    // Aggregated: the lowest container's result.
    assert_eq!(pool.where_am_i(PoolQuery::broadcast()).unwrap(), (0, 0));
    let range = pool
        .async_where_am_i(PoolQuery::range(3, 5))
        .unwrap()
        .wait_all();
    let expected: Vec<_> = (3..8).map(|c| (c, Ok((c % 4, c)))).collect();
    assert_eq!(range, expected);
    // A replica that fails on its node fails alone, and the aggregate reports it.
    let exploded = pool
        .async_explode(PoolQuery::broadcast(), "boom")
        .unwrap()
        .wait_all();
    assert_eq!(exploded.len(), 10);
    assert!(
        exploded
            .iter()
            .all(|(_, result)| matches!(result, Err(TaskError::Panicked { .. }))),
        "{exploded:?}"
    );
    assert_eq!(pool.where_am_i(PoolQuery::direct_id(9)).unwrap(), (1, 9));
}

#[test]
fn one_name_created_from_two_nodes_at_once_is_one_pool_everywhere_and_destroyed_everywhere() {
    let cluster = TestCluster::start(4, node_config(2000, 32, false));
    let (first, second) = std::thread::scope(|scope| {
        let a = scope.spawn(|| cluster.probe(1, "shared", 4).pool_id());
        let b = scope.spawn(|| cluster.probe(3, "shared", 4).pool_id());
        (a.join().unwrap(), b.join().unwrap())
    });
    assert_eq!(first, second);
    for node in 0..4 {
        let found = admin_api::find_pool(&cluster.client(node), "shared").unwrap();
        assert_eq!(found.map(|info| info.id), Some(first), "node {node}");
    }
    // Asking for it with another container count is refused, from any node.
    let mismatch = ProbeClient::create_with(
        &cluster.client(2),
        PoolQuery::local(),
        "shared",
        PoolOptions::containers(5),
    );
    assert!(matches!(mismatch, Err(TaskError::PoolMismatch { .. })));

    admin_api::destroy_pool(&cluster.client(2), first).unwrap();
    for node in 0..4 {
        assert_eq!(
            admin_api::find_pool(&cluster.client(node), "shared").unwrap(),
            None,
            "node {node}"
        );
    }
    let gone = ProbeClient::attach(&cluster.client(0), first);
    assert!(matches!(
        gone.where_am_i(PoolQuery::direct_id(1)),
        Err(TaskError::UnknownPool { .. })
    ));
    // The name is free again: a new pool with a new id.
    let again = cluster.probe(2, "shared", 4).pool_id();
    assert_ne!(again, first);
}

#[test]
fn a_node_that_starts_late_gets_the_existing_pools() {
    let wire_nodes = 4;
    let mut cluster = TestCluster::start(wire_nodes, node_config(1000, 32, false));
    cluster.stop(3);
    let pool = cluster.probe(0, "early", 4);
    // Container 3's node is not running: its replica fails at once, naming it.
    assert!(matches!(
        pool.where_am_i(PoolQuery::direct_id(3)),
        Err(TaskError::NodeFailed { node: 3, .. })
    ));
    cluster.restart(3);
    assert_eq!(pool.where_am_i(PoolQuery::direct_id(3)).unwrap(), (3, 3));
    let seen_from_3 = admin_api::find_pool(&cluster.client(3), "early").unwrap();
    assert_eq!(seen_from_3.map(|info| info.id), Some(pool.pool_id()));
}

#[test]
fn a_handler_on_one_node_calls_a_container_on_another() {
    let cluster = TestCluster::start(3, node_config(2000, 32, false));
    let pool = cluster.probe(0, "nested", 3);
    // Node 0 → container 1 on node 1, whose handler asks container 2 on node 2.
    assert_eq!(pool.relay(PoolQuery::direct_id(1), 2).unwrap(), (2, 2));
    // And back to node 0.
    assert_eq!(pool.relay(PoolQuery::direct_id(2), 0).unwrap(), (0, 0));
}

#[test]
fn an_unreachable_or_stopped_node_fails_its_replicas_with_its_id_and_the_rest_serve() {
    let mut cluster = TestCluster::start(4, node_config(300, 32, false));
    let pool = cluster.probe(0, "faults", 4);

    cluster.wire.set_fault(2, Fault::Unreachable);
    let peers = cluster.runtimes[0].as_ref().unwrap().handle().peers();
    let states: Vec<_> = peers.iter().map(|peer| peer.state.to_string()).collect();
    assert_eq!(states, ["local", "up", "down", "up"]);
    assert_eq!(cluster.runtimes[3].as_ref().unwrap().handle().node(), 3);
    let started = Instant::now();
    assert!(matches!(
        pool.where_am_i(PoolQuery::direct_id(2)),
        Err(TaskError::NodeTimeout { node: 2, .. })
    ));
    let replicas = pool
        .async_where_am_i(PoolQuery::broadcast())
        .unwrap()
        .wait_all();
    for (container, result) in replicas {
        match container {
            2 => assert!(
                matches!(result, Err(TaskError::NodeTimeout { node: 2, .. })),
                "{result:?}"
            ),
            c => assert_eq!(result, Ok((c, c))),
        }
    }
    // Returned at all (not hanging) is the property; the elapsed time is only reported.
    eprintln!(
        "two calls to an unreachable node took {:?}",
        started.elapsed()
    );
    cluster.wire.set_fault(2, Fault::None);
    assert_eq!(pool.where_am_i(PoolQuery::direct_id(2)).unwrap(), (2, 2));

    // A slow link within the deadline still answers.
    cluster
        .wire
        .set_fault(1, Fault::Slow(Duration::from_millis(20)));
    assert_eq!(pool.where_am_i(PoolQuery::direct_id(1)).unwrap(), (1, 1));
    cluster.wire.set_fault(1, Fault::None);

    // Stopped: it told its peers it left.
    cluster.stop(2);
    assert!(matches!(
        pool.where_am_i(PoolQuery::direct_id(2)),
        Err(TaskError::NodeFailed { node: 2, .. })
    ));
    assert_eq!(pool.where_am_i(PoolQuery::direct_id(3)).unwrap(), (3, 3));
    cluster.restart(2);
    assert_eq!(pool.where_am_i(PoolQuery::direct_id(2)).unwrap(), (2, 2));
}

#[test]
fn a_peer_sending_garbage_gets_a_malformed_answer_and_the_node_serves_on() {
    let cluster = TestCluster::start(2, node_config(2000, 32, false));
    let pool = cluster.probe(0, "garbage", 2);
    // Node 1's runtime stops; a hostile process takes its place on the wire.
    let mut cluster = cluster;
    cluster.stop(1);
    let hostile = cluster.wire.endpoint(1);
    let frames: [&[u8]; 3] = [&[], &[0xff; 7], &[0x5a; 300]];
    for frame in frames {
        let (send, answer) = mpsc::channel();
        hostile.call(
            0,
            frame.to_vec(),
            Duration::from_secs(5),
            Box::new(move |result| {
                let _ = send.send(result);
            }),
        );
        let bytes = answer.recv().unwrap().expect("node 0 answers");
        assert!(matches!(
            decode_answer(&bytes),
            Ok(Answer::Failed(TaskError::Malformed { .. }))
        ));
    }
    // A well-formed frame for node 0's own admin pool (StopRuntime) is refused: only
    // the cluster's pools take tasks from peers.
    let stop = encode_frame(&Frame::Run(RunTask {
        pool: PoolId::ADMIN,
        method: chimaera::admin_api::STOP_RUNTIME,
        query: PoolQuery::local(),
        depth: 0,
        containers: vec![0],
        fire_and_forget: false,
        timeout_ms: 1000,
        input: Vec::new(),
        bulk: Vec::new(),
        caller: None,
    }))
    .unwrap();
    let (send, answer) = mpsc::channel();
    hostile.call(
        0,
        stop,
        Duration::from_secs(5),
        Box::new(move |result| {
            let _ = send.send(result);
        }),
    );
    let bytes = answer.recv().unwrap().expect("node 0 answers");
    assert!(matches!(
        decode_answer(&bytes),
        Ok(Answer::Failed(TaskError::UnknownPool { .. }))
    ));
    assert_eq!(pool.where_am_i(PoolQuery::direct_id(0)).unwrap(), (0, 0));
    hostile.shutdown();
}

#[test]
fn force_net_gives_the_same_results_as_the_direct_path() {
    let direct = chimaera::builder()
        .module::<Probe>()
        .config(node_config(2000, 32, false))
        .start()
        .unwrap();
    let net = TestCluster::start(1, node_config(2000, 32, true));
    let via_net = net.client(0);
    let runs = every_kind_of_task;
    net.wire.reset_counters();
    let through_frames = runs(&via_net);
    assert!(
        net.wire.frames_sent(0) >= 6,
        "force-net sent tasks as frames ({} sent)",
        net.wire.frames_sent(0)
    );
    assert_eq!(through_frames, runs(&direct.client()));
}

/// Builds an `n`-node cluster, creates a pool of one container per node and broadcasts
/// to it; checks every node answered and no node sent more than `k` frames. Reports
/// (does not assert) the times.
fn simulate(n: u32, k: u32) {
    let started = Instant::now();
    let cluster = TestCluster::start(n, node_config(30_000, k, false));
    let booted = started.elapsed();
    let pool = cluster.probe(n / 2, "sim", n);
    let created = started.elapsed() - booted;
    cluster.wire.reset_counters();
    let broadcast = Instant::now();
    let replicas = pool
        .async_where_am_i(PoolQuery::broadcast())
        .unwrap()
        .wait_all();
    let broadcast = broadcast.elapsed();
    assert_eq!(replicas.len(), n as usize);
    for (container, result) in &replicas {
        assert_eq!(*result, Ok((*container, *container)));
    }
    let sent: Vec<u64> = (0..n).map(|node| cluster.wire.frames_sent(node)).collect();
    let origin = sent[(n / 2) as usize];
    assert!(
        origin <= u64::from(k),
        "the originating node sent {origin} frames"
    );
    let busiest = *sent.iter().max().unwrap();
    assert!(busiest <= u64::from(k), "a node sent {busiest} frames");
    let total: u64 = sent.iter().sum();
    assert_eq!(total, u64::from(n - 1), "one frame reaches each other node");
    cluster.wire.reset_counters();
    let range = pool
        .async_where_am_i(PoolQuery::range(1, n - 1))
        .unwrap()
        .wait_all();
    assert_eq!(range.len(), (n - 1) as usize);
    assert!(range.iter().all(|(c, r)| *r == Ok((*c, *c))));
    eprintln!(
        "simulation n={n} k={k}: boot {booted:?}, create {created:?}, broadcast {broadcast:?}, frames: origin {origin}, busiest node {busiest}, total {total}"
    );
}

#[test]
fn simulated_clusters_of_10_and_100_nodes_fan_out_through_a_tree() {
    simulate(10, 3);
    simulate(100, 8);
}

/// The simulation at scale: 1,000 runtimes of one worker each in this process.
#[test]
fn a_simulated_cluster_of_1000_nodes_keeps_the_originating_node_within_its_neighborhood() {
    let threads_before = process_threads();
    simulate(1000, 16);
    eprintln!(
        "simulation n=1000: threads before {threads_before:?}, resident {:?}",
        resident_kib()
    );
}

fn status_field(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn process_threads() -> Option<u64> {
    status_field("Threads:")
}

fn resident_kib() -> Option<u64> {
    status_field("VmHWM:")
}

#[test]
fn a_restarted_node_0_takes_the_pools_back_and_hands_out_no_id_twice() {
    let mut cluster = TestCluster::start(3, node_config(1000, 32, false));
    let before = cluster.probe(1, "kept", 3);
    cluster.stop(0);
    cluster.restart(0);
    // Node 0 holds its container again, with the same id everywhere.
    assert_eq!(before.where_am_i(PoolQuery::direct_id(0)).unwrap(), (0, 0));
    let found = admin_api::find_pool(&cluster.client(0), "kept").unwrap();
    assert_eq!(found.map(|info| info.id), Some(before.pool_id()));
    // Asking node 0 for the name again gets the same pool, and a new name a new id.
    assert_eq!(cluster.probe(2, "kept", 3).pool_id(), before.pool_id());
    let fresh = cluster.probe(2, "fresh", 3);
    assert_ne!(fresh.pool_id(), before.pool_id());
    assert_eq!(fresh.where_am_i(PoolQuery::direct_id(1)).unwrap(), (1, 1));
}

#[test]
fn a_node_cut_off_while_its_pool_was_destroyed_takes_the_new_pool_of_that_name() {
    let cluster = TestCluster::start(3, node_config(200, 32, false));
    let old = cluster.probe(0, "reused", 3).pool_id();
    cluster.wire.set_fault(2, Fault::Unreachable);
    admin_api::destroy_pool(&cluster.client(0), old).unwrap();
    cluster.wire.set_fault(2, Fault::None);
    // Node 2 still holds the old pool; creating the name again replaces it there.
    let new = cluster.probe(1, "reused", 3);
    assert_ne!(new.pool_id(), old);
    assert_eq!(new.where_am_i(PoolQuery::direct_id(2)).unwrap(), (2, 2));
    let on_2 = admin_api::find_pool(&cluster.client(2), "reused").unwrap();
    assert_eq!(on_2.map(|info| info.id), Some(new.pool_id()));
}

/// Sends `frame` from `from` to node 0 and decodes node 0's answer.
fn ask_node_0(from: &dyn PeerNetwork, frame: &Frame) -> Answer {
    let (send, answer) = mpsc::channel();
    from.call(
        0,
        encode_frame(frame).unwrap(),
        Duration::from_secs(10),
        Box::new(move |result| {
            let _ = send.send(result);
        }),
    );
    let bytes = answer.recv().unwrap().expect("node 0 answers");
    decode_answer(&bytes).expect("node 0's answer is well formed")
}

#[test]
fn well_formed_but_hostile_frames_fail_alone_with_typed_errors() {
    let mut cluster = TestCluster::start(2, node_config(500, 32, false));
    let pool = cluster.probe(0, "hostile", 2);
    cluster.stop(1);
    let hostile = cluster.wire.endpoint(1);
    let run = |containers: Vec<u32>, method: u32, depth: u32, input: Vec<u8>| {
        Frame::Run(RunTask {
            pool: pool.pool_id(),
            method,
            query: PoolQuery::broadcast(),
            depth,
            containers,
            fire_and_forget: false,
            timeout_ms: 500,
            input,
            bulk: Vec::new(),
            caller: None,
        })
    };
    let who_am_i = chimaera_core::codec::encode(&()).unwrap().to_vec();
    // Repeated, out-of-pool and other nodes' containers: one result each, in order.
    let answer = ask_node_0(&*hostile, &run(vec![99, 0, 0, 1], 10, 0, who_am_i.clone()));
    let Answer::Results { results, .. } = answer else {
        panic!("expected results, got {answer:?}");
    };
    let containers: Vec<u32> = results.iter().map(|(c, _)| *c).collect();
    assert_eq!(containers, [0, 1, 99]);
    assert!(matches!(
        results[0].1,
        chimaera_core::cluster::frame::Outcome::Output(_)
    ));
    assert!(matches!(
        &results[1].1,
        chimaera_core::cluster::frame::Outcome::Failed(TaskError::NodeFailed { node: 1, .. })
    ));
    assert!(matches!(
        &results[2].1,
        chimaera_core::cluster::frame::Outcome::Failed(TaskError::NoSuchContainer {
            container: 99,
            ..
        })
    ));
    // Too deep, an unknown method, an input that is no archive of the method's inputs.
    assert!(matches!(
        ask_node_0(&*hostile, &run(vec![0], 10, u32::MAX, who_am_i.clone())),
        Answer::Failed(TaskError::TooDeep { .. })
    ));
    assert!(matches!(
        ask_node_0(&*hostile, &run(vec![0], 9999, 0, who_am_i)),
        Answer::Failed(TaskError::UnknownMethod { method: 9999, .. })
    ));
    let Answer::Results {
        results: garbage, ..
    } = ask_node_0(&*hostile, &run(vec![0], 18, 0, vec![0xee; 40]))
    else {
        panic!("expected results");
    };
    assert!(matches!(
        &garbage[0].1,
        chimaera_core::cluster::frame::Outcome::Failed(TaskError::Malformed { .. })
    ));
    // A pool request over the limit; pool requests only node 0 serves.
    let huge = chimaera::admin_api::CreatePoolRequest {
        module: "probe".to_owned(),
        pool_name: "huge".to_owned(),
        containers: u32::MAX,
        params: Vec::new(),
    };
    assert!(matches!(
        ask_node_0(&*hostile, &Frame::CreatePool(huge)),
        Answer::Failed(TaskError::TooManyContainers { .. })
    ));
    assert_eq!(pool.where_am_i(PoolQuery::direct_id(0)).unwrap(), (0, 0));
    hostile.shutdown();
}

#[test]
fn bdev_pools_on_other_nodes_are_written_and_read_back() {
    for force_net in [false, true] {
        let nodes = if force_net { 1 } else { 4 };
        let cluster = TestCluster::start(nodes, node_config(2000, 32, force_net));
        let params = BdevParams {
            bdev_type: BdevType::Ram,
            total_size: 4 << 20,
            ..BdevParams::default()
        };
        let created = BdevClient::create_with(
            &cluster.client(0),
            PoolQuery::local(),
            "ram-everywhere",
            PoolOptions::containers(4),
            params,
        )
        .unwrap();
        // Used from the last node: containers 0..4 live on nodes 0..4.
        let bdev = BdevClient::attach(&cluster.client(nodes - 1), created.pool_id());
        for container in 0..4u32 {
            let query = PoolQuery::direct_id(container);
            let blocks = bdev.allocate_blocks(query, 8192).unwrap();
            let pattern: Vec<u8> = (0..8192u32)
                .map(|i| (i * 31 + container * 7) as u8)
                .collect();
            assert_eq!(bdev.write(query, blocks[0], &pattern).unwrap(), 8192);
            let mut read_back = vec![0u8; 8192];
            assert_eq!(bdev.read(query, blocks[0], &mut read_back).unwrap(), 8192);
            assert_eq!(
                read_back, pattern,
                "container {container}, force_net {force_net}"
            );
        }
        let per_container = bdev
            .async_get_stats(PoolQuery::broadcast())
            .unwrap()
            .wait_all();
        assert_eq!(per_container.len(), 4);
        assert!(per_container.iter().all(|(_, stats)| stats.is_ok()));
    }
}

/// A RAM block device with a container on each of `containers` nodes.
fn ram_bdev(chi: &Client, name: &str, containers: u32) -> BdevClient {
    BdevClient::create_with(
        chi,
        PoolQuery::local(),
        name,
        PoolOptions::containers(containers),
        BdevParams {
            bdev_type: BdevType::Ram,
            total_size: 4 << 20,
            ..BdevParams::default()
        },
    )
    .expect("bdev pool created")
}

fn sum(bytes: &[u8]) -> u64 {
    bytes.iter().map(|&b| u64::from(b)).sum()
}

/// Where `bytes` lie in the data share of `chi` (they must lie in one of its buffers).
fn shared_reference(chi: &Client, bytes: &[u8]) -> Bulk {
    match chi.bulk_ref(bytes) {
        BulkWire::Shared { offset, len } => Bulk::Shared { offset, len },
        BulkWire::Inline(_) => panic!("bytes of a shared buffer travel by reference"),
    }
}

/// A shared-memory client's buffers reach containers on other nodes (and, under
/// force-net, its own node through the network) by reference: every argument form sees
/// the bytes the buffer held, and what a handler writes is in the client's buffer when
/// the call returns. Blocks of a bdev on each node are written from one buffer and read
/// back into another.
#[test]
fn shared_buffers_reach_other_nodes_and_come_back_written() {
    for force_net in [false, true] {
        let nodes = if force_net { 1 } else { 3 };
        let cluster = TestCluster::start_serving(
            &format!("bulk-reach-{force_net}"),
            nodes,
            node_config(5000, 32, force_net),
        );
        let chi = cluster.shm_client();
        let bdev = ram_bdev(&chi, "ram", 3);
        let mut data = chi.allocate_buffer(3 * 8192).unwrap();
        let mut back = chi.allocate_buffer(8192).unwrap();
        assert!(data.is_shared() && back.is_shared());
        for container in 0..3u32 {
            let query = PoolQuery::direct_id(container);
            let range = container as usize * 8192..(container as usize + 1) * 8192;
            for (i, byte) in data[range.clone()].iter_mut().enumerate() {
                *byte = pattern_byte(container as u8 + 1, i);
            }
            let blocks = bdev.allocate_blocks(query, 8192).unwrap();
            assert_eq!(
                bdev.write(query, blocks[0], &data[range.clone()]).unwrap(),
                8192
            );
            back.fill(0);
            assert_eq!(bdev.read(query, blocks[0], &mut back).unwrap(), 8192);
            assert!(
                back[..] == data[range],
                "container {container} (node {}), force_net {force_net}: read back differs",
                container % nodes
            );
        }

        // Every argument form, on the last node's container (remote unless force-net,
        // which sends it through the network all the same).
        let probe = BulkProbeClient::create_with(
            &chi,
            PoolQuery::local(),
            "forms",
            PoolOptions::containers(nodes),
        )
        .unwrap();
        let query = PoolQuery::direct_id(nodes - 1);
        let mut buffer = chi.allocate_buffer(10_000).unwrap();
        for (i, byte) in buffer.iter_mut().enumerate() {
            *byte = pattern_byte(9, i);
        }
        let part = &buffer[3..4099];
        assert_eq!(
            probe.sum_plain(query, part).unwrap(),
            (sum(part), part.len() as u64)
        );
        // The handler reads the carried copy: private memory of its node.
        assert_eq!(
            probe.sum_view(query, &buffer).unwrap(),
            (sum(&buffer), false)
        );
        let before = sum(&buffer[..5000]);
        assert_eq!(
            probe.fill_plain(query, &mut buffer[..5000], 4).unwrap(),
            before
        );
        assert!(!probe.fill_view(query, &mut buffer[5000..], 6).unwrap());
        for (i, &byte) in buffer.iter().enumerate() {
            let expected = if i < 5000 {
                pattern_byte(4, i)
            } else {
                pattern_byte(6, i - 5000)
            };
            assert_eq!(byte, expected, "byte {i}, force_net {force_net}");
        }
        // Two arguments in one buffer, one read and one written, travel together.
        let (head, tail) = buffer.split_at_mut(100);
        head.fill(1);
        let pending = probe.async_fill_view(query, tail, 2).unwrap();
        assert!(!pending.wait().unwrap());
        assert_eq!(probe.sum_plain(query, &buffer[..100]).unwrap(), (100, 100));

        // An in-process client's plain slices travel inline and come back the same way.
        let local = BulkProbeClient::attach(&cluster.client(0), probe.pool_id());
        let mut heap = vec![0u8; 3000];
        assert_eq!(local.fill_plain(query, &mut heap, 8).unwrap(), 0);
        assert!(heap
            .iter()
            .enumerate()
            .all(|(i, &b)| b == pattern_byte(8, i)));
        assert_eq!(local.sum_view(query, &heap).unwrap(), (sum(&heap), false));
    }
}

/// A client that forges a reference — outside its data share, or over a range a task
/// of its own sent to another node still writes — gets a typed error, and no frame
/// leaves the node.
#[test]
fn a_forged_or_busy_shared_range_fails_before_any_frame_is_sent() {
    let cluster = TestCluster::start_serving("bulk-forged", 2, node_config(1500, 32, false));
    let chi = cluster.shm_client();
    let probe = BulkProbeClient::create_with(
        &chi,
        PoolQuery::local(),
        "forged",
        PoolOptions::containers(2),
    )
    .unwrap();
    let remote = PoolQuery::direct_id(1);
    let sum_plain = 10;
    let sent = cluster.wire.frames_sent(0);
    for (offset, len) in [(1u64 << 40, 16u64), (u64::MAX - 4, 8), (0, u64::MAX)] {
        let input = chimaera_core::codec::encode(&(Bulk::Shared { offset, len },)).unwrap();
        let results = chi
            .submit(probe.pool_id(), sum_plain, remote, input, None)
            .unwrap()
            .wait();
        assert!(
            matches!(&results[0].1, Err(TaskError::Malformed { what, .. }) if what == "bulk buffer"),
            "{offset}+{len}: {results:?}"
        );
    }
    assert_eq!(
        cluster.wire.frames_sent(0),
        sent,
        "a forged range sent a frame"
    );

    // Node 1 loses its frames: a task writing `buffer` there holds it until its deadline.
    cluster.wire.set_fault(1, Fault::Unreachable);
    let mut buffer = chi.allocate_buffer(4096).unwrap();
    let overlapping = shared_reference(&chi, &buffer[100..200]);
    let sent = cluster.wire.frames_sent(0);
    let pending = probe.async_fill_view(remote, &mut buffer, 7).unwrap();
    wait_until("the writing task to be sent", || {
        cluster.wire.frames_sent(0) > sent
    });
    let sent = cluster.wire.frames_sent(0);
    let input = chimaera_core::codec::encode(&(overlapping,)).unwrap();
    let results = chi
        .submit(probe.pool_id(), sum_plain, remote, input, None)
        .unwrap()
        .wait();
    assert!(
        matches!(
            results[0].1,
            Err(TaskError::BulkBufferBusy {
                held_for_writing: true,
                ..
            })
        ),
        "{results:?}"
    );
    assert_eq!(
        cluster.wire.frames_sent(0),
        sent,
        "a busy range sent a frame"
    );
    let error = pending.wait().unwrap_err();
    assert!(
        matches!(error, TaskError::NodeTimeout { node: 1, .. }),
        "{error:?}"
    );
    assert!(buffer.iter().all(|&b| b == 0), "an unanswered task wrote");
    // The range is free again once the task is over.
    cluster.wire.set_fault(1, Fault::None);
    assert_eq!(
        probe.sum_plain(PoolQuery::direct_id(0), &buffer).unwrap(),
        (0, 4096)
    );
}

/// What a lying node answers a task that writes a bulk range.
#[derive(Clone, Copy)]
enum Lie {
    /// The written bytes, one short.
    ShortBytes,
    /// The right number of bytes for a range at another offset.
    OtherRange,
    /// No written range at all.
    NoRange,
}

/// Node 1 as a peer that answers tasks with written bulk ranges that do not match what
/// was sent, and every pool request with "done".
struct LyingNode(Lie);

impl FrameHandler for LyingNode {
    fn handle(&self, _from: u32, frame: Vec<u8>, respond: Responder) {
        let answer = match decode_frame_carrying(&frame) {
            Ok((Frame::Run(task), carried)) => {
                let results = task
                    .containers
                    .iter()
                    .map(|&container| (container, Outcome::Output(Vec::new())))
                    .collect();
                let mut written: Vec<BulkSegment> =
                    task.bulk.iter().filter(|s| s.writes).copied().collect();
                let mut len = carried.len();
                match self.0 {
                    Lie::ShortBytes => len -= 1,
                    Lie::OtherRange => written[0].offset += 1,
                    Lie::NoRange => {
                        written.clear();
                        len = 0;
                    }
                }
                encode_answer_carrying(&Answer::Results { results, written }, len, |dst| {
                    dst.fill(0xee)
                })
            }
            Ok((Frame::ListPools, _)) => encode_answer(&Answer::Pools(Vec::new())),
            _ => encode_answer(&Answer::Done),
        };
        respond.respond(answer.expect("the lie encodes"));
    }
}

/// A remote answer whose written bulk ranges do not match the ranges sent (too few
/// bytes, another range, none) fails the call with a typed error naming the node, and
/// the caller's buffer keeps what it held.
#[test]
fn a_reply_with_a_wrong_bulk_result_is_a_typed_error_and_the_buffer_is_untouched() {
    let mut cluster = TestCluster::start_serving("bulk-liar", 2, node_config(3000, 32, false));
    let chi = cluster.shm_client();
    let probe = BulkProbeClient::create_with(
        &chi,
        PoolQuery::local(),
        "lied-to",
        PoolOptions::containers(2),
    )
    .unwrap();
    cluster.stop(1);
    let liar = cluster.wire.endpoint(1);
    let mut buffer = chi.allocate_buffer(8192).unwrap();
    for (i, byte) in buffer.iter_mut().enumerate() {
        *byte = pattern_byte(3, i);
    }
    let kept = buffer.to_vec();
    for lie in [Lie::ShortBytes, Lie::OtherRange, Lie::NoRange] {
        liar.serve(Arc::new(LyingNode(lie)));
        for error in [
            probe
                .fill_view(PoolQuery::direct_id(1), &mut buffer, 5)
                .unwrap_err(),
            probe
                .fill_plain(PoolQuery::direct_id(1), &mut buffer[..10], 5)
                .unwrap_err(),
        ] {
            match error {
                TaskError::NodeFailed { node: 1, reason } => {
                    assert!(reason.contains("written bulk range"), "{reason}")
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(buffer[..] == kept[..], "a wrong answer wrote the buffer");
    }
    // Node 0 serves on.
    assert_eq!(
        probe.sum_plain(PoolQuery::direct_id(0), &buffer).unwrap(),
        (sum(&kept), 8192)
    );
    liar.shutdown();
}

/// A peer's task whose carried bytes do not match its ranges, or whose reference lies
/// outside them, fails alone with a typed error.
#[test]
fn a_frame_with_forged_carried_ranges_fails_alone() {
    let mut cluster = TestCluster::start(2, node_config(1000, 32, false));
    let probe = BulkProbeClient::create_with(
        &cluster.client(0),
        PoolQuery::local(),
        "carried",
        PoolOptions::containers(2),
    )
    .unwrap();
    cluster.stop(1);
    let hostile = cluster.wire.endpoint(1);
    let ask = |bulk: Vec<BulkSegment>, reference: Bulk, carried: &[u8]| {
        let frame = Frame::Run(RunTask {
            pool: probe.pool_id(),
            method: 10,
            query: PoolQuery::direct_id(0),
            depth: 0,
            containers: vec![0],
            fire_and_forget: false,
            timeout_ms: 1000,
            input: chimaera_core::codec::encode(&(reference,))
                .unwrap()
                .to_vec(),
            bulk,
            caller: None,
        });
        let bytes =
            encode_frame_carrying(&frame, carried.len(), |dst| dst.copy_from_slice(carried))
                .unwrap();
        let (send, answer) = mpsc::channel();
        hostile.call(
            0,
            bytes,
            Duration::from_secs(10),
            Box::new(move |result| {
                let _ = send.send(result);
            }),
        );
        decode_answer(&answer.recv().unwrap().expect("node 0 answers")).unwrap()
    };
    let segment = |offset, len| BulkSegment {
        offset,
        len,
        writes: false,
    };
    // An honest one first: the reference resolves inside the carried range.
    let honest = ask(
        vec![segment(4096, 4)],
        Bulk::Shared {
            offset: 4097,
            len: 2,
        },
        &[1, 2, 3, 4],
    );
    let Answer::Results { results, .. } = honest else {
        panic!("{honest:?}");
    };
    let Outcome::Output(output) = &results[0].1 else {
        panic!("{results:?}");
    };
    assert_eq!(
        chimaera_core::codec::decode::<(u64, u64)>(
            &chimaera_core::codec::aligned_copy(output),
            "output"
        )
        .unwrap(),
        (5, 2)
    );
    // More or fewer bytes than the ranges announce.
    for (bulk, carried) in [
        (vec![segment(0, 8)], &[0u8; 4][..]),
        (vec![segment(0, 2)], &[0u8; 4][..]),
        (vec![segment(0, u64::MAX)], &[0u8; 4][..]),
        (Vec::new(), &[0u8; 4][..]),
    ] {
        let answer = ask(bulk, Bulk::Shared { offset: 0, len: 1 }, carried);
        assert!(
            matches!(answer, Answer::Failed(TaskError::Malformed { .. })),
            "{answer:?}"
        );
    }
    // A reference outside the carried ranges fails the task.
    let answer = ask(
        vec![segment(4096, 4)],
        Bulk::Shared {
            offset: 4098,
            len: 4,
        },
        &[0; 4],
    );
    let Answer::Results { results, .. } = answer else {
        panic!("{answer:?}");
    };
    assert!(
        matches!(&results[0].1, Outcome::Failed(TaskError::Malformed { what, .. }) if what == "bulk buffer"),
        "{results:?}"
    );
    let node_0 = BulkProbeClient::attach(&cluster.client(0), probe.pool_id());
    assert_eq!(
        within("node 0 serves on", move || node_0
            .sum_plain(PoolQuery::direct_id(0), &[7])
            .unwrap()),
        (7, 1)
    );
    hostile.shutdown();
}

/// Runs MOD_NAME and probe tasks of every shape (in-out argument, subtasks, broadcast,
/// range, a failure) through `chi`; their results, printed.
fn every_kind_of_task(chi: &Client) -> String {
    let probe = ProbeClient::create_with(
        chi,
        PoolQuery::local(),
        "both-ways",
        PoolOptions::containers(3),
    )
    .unwrap();
    let m = ModNameClient::create(
        chi,
        PoolQuery::local(),
        "both-ways-m",
        CreateParams::default(),
    )
    .unwrap();
    let mut counter = 5u64;
    let bumped = probe.bump(PoolQuery::direct_id(1), &mut counter, 7);
    format!(
        "{:?}",
        (
            m.custom(PoolQuery::local(), "hello ünïcødé", 3),
            m.wait_test(PoolQuery::local(), 5),
            probe.where_am_i(PoolQuery::direct_id(2)),
            probe
                .async_who_am_i(PoolQuery::broadcast())
                .unwrap()
                .wait_all(),
            probe.checksum(PoolQuery::range(1, 2), &[1, 2, 3, 250]),
            (bumped, counter),
            probe
                .explode(PoolQuery::local(), "same failure")
                .map_err(|e| e.to_string()),
        )
    )
}

/// A client of its own takes the network path when it asks (`with_force_net`), in
/// process and over shared memory, on a node whose config does not force it: its tasks
/// go out as frames (and nobody else's do), with the same results as the direct path —
/// bulk data in shared buffers included.
#[test]
fn one_client_can_force_the_network_path_with_the_same_results() {
    let cluster = TestCluster::start_serving("own-force-net", 1, node_config(2000, 32, false));
    for direct in [cluster.client(0), cluster.shm_client()] {
        let forced = direct.with_force_net(true);
        assert!(forced.force_net() && !direct.force_net());
        cluster.wire.reset_counters();
        let through_frames = every_kind_of_task(&forced);
        let sent = cluster.wire.frames_sent(0);
        assert!(sent >= 6, "force-net sent tasks as frames ({sent} sent)");
        assert_eq!(through_frames, every_kind_of_task(&direct));
        assert_eq!(
            cluster.wire.frames_sent(0),
            sent,
            "the direct client sent frames"
        );

        let bdev = ram_bdev(&direct, "own-force-net", 1);
        let forced_bdev = BdevClient::attach(&forced, bdev.pool_id());
        let mut data = direct.allocate_buffer(8192).unwrap();
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = pattern_byte(11, i);
        }
        let mut back = direct.allocate_buffer(8192).unwrap();
        let mine = bdev.allocate_blocks(PoolQuery::local(), 8192).unwrap()[0];
        let theirs = bdev.allocate_blocks(PoolQuery::local(), 8192).unwrap()[0];
        let sent = cluster.wire.frames_sent(0);
        assert_eq!(
            forced_bdev.write(PoolQuery::local(), mine, &data).unwrap(),
            8192
        );
        assert_eq!(bdev.write(PoolQuery::local(), theirs, &data).unwrap(), 8192);
        for block in [mine, theirs] {
            back.fill(0);
            assert_eq!(
                forced_bdev
                    .read(PoolQuery::local(), block, &mut back)
                    .unwrap(),
                8192
            );
            assert!(back[..] == data[..], "forced read back differs");
            back.fill(0);
            assert_eq!(
                bdev.read(PoolQuery::local(), block, &mut back).unwrap(),
                8192
            );
            assert!(back[..] == data[..], "direct read back differs");
        }
        assert_eq!(
            cluster.wire.frames_sent(0),
            sent + 3,
            "one frame per forced task"
        );
    }
}

/// A flush on a node returns once the tasks it sent to other nodes before the flush are
/// done, not only those it runs itself.
#[test]
fn a_flush_waits_for_the_tasks_this_node_sent_to_other_nodes() {
    let cluster = TestCluster::start(3, node_config(5000, 32, false));
    let pool = cluster.probe(0, "flush-remote", 3);
    // Naps long enough that the flush starts while they run.
    let pending: Vec<_> = [1u32, 2, 1, 2]
        .iter()
        .map(|&container| {
            pool.async_nap(PoolQuery::direct_id(container), 300)
                .unwrap()
        })
        .collect();
    chimaera::AdminClient::attach(&cluster.client(0), PoolId::ADMIN)
        .flush(PoolQuery::local())
        .unwrap();
    assert!(
        pending.iter().all(|pending| pending.is_done()),
        "the flush returned with tasks on other nodes in flight"
    );
    for pending in pending {
        assert_eq!(pending.wait().unwrap(), 300);
    }
}

/// A task whose shared buffers hold more than a task may carry to another node
/// (`MAX_TASK_BULK_BYTES`) is refused before anything is sent; the limit itself crosses.
#[test]
fn more_bulk_than_a_task_may_carry_is_refused_before_sending() {
    use chimaera::peer::MAX_TASK_BULK_BYTES;
    let mut config = node_config(20_000, 32, false);
    config.max_clients = 2;
    config.shm.client_data_size = 2 * (MAX_TASK_BULK_BYTES + (1 << 20));
    let cluster = TestCluster::start_serving("bulk-limit", 2, config);
    let chi = cluster.shm_client();
    let probe = BulkProbeClient::create_with(
        &chi,
        PoolQuery::local(),
        "limit",
        PoolOptions::containers(2),
    )
    .unwrap();
    let mut buffer = chi.allocate_buffer(MAX_TASK_BULK_BYTES + 1).unwrap();
    buffer[MAX_TASK_BULK_BYTES] = 3;
    let sent = cluster.wire.frames_sent(0);
    let error = probe
        .sum_plain(PoolQuery::direct_id(1), &buffer)
        .unwrap_err();
    assert_eq!(
        error,
        TaskError::FrameTooLarge {
            len: MAX_TASK_BULK_BYTES as u64 + 1,
            max: MAX_TASK_BULK_BYTES as u64
        }
    );
    assert_eq!(cluster.wire.frames_sent(0), sent);
    assert_eq!(
        probe
            .sum_plain(PoolQuery::direct_id(1), &buffer[1..])
            .unwrap(),
        (3, MAX_TASK_BULK_BYTES as u64)
    );
}
