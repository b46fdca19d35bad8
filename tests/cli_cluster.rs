//! `chimaera cluster start|status|stop` as a user runs them: real `chimaera` processes,
//! real runtime nodes joined over gRPC, real state directories in the user directory,
//! real kill -9. Each test names its own cluster (`t{pid}-…`, so its own instances and
//! state) and lets the kernel pick its ports, so tests run in parallel. Nothing asserts
//! timing; `within` only catches hangs.
mod support;

use chimaera::admin_api::{PoolOptions, RuntimeStatus};
use chimaera::mod_name::{CreateParams, ModNameClient};
use chimaera::prelude::*;
use chimaera_core::instance::{checked_user_dir, instance_files, runtime_alive, InstanceName};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Output};
use support::{wait_until, within};

/// Runs `chimaera` with `args`, outside any configured instance.
fn chimaera(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_chimaera"))
        .args(args)
        .env_remove("CHI_SERVER_CONF")
        .env_remove("CHI_INSTANCE")
        .output()
        .expect("run chimaera")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A cluster this test started; dropping it stops it (and so cleans up after a failed
/// assertion too).
struct DevCluster {
    name: String,
}

impl DevCluster {
    /// `cluster start --nodes N --name t{pid}-{test}` plus `extra`; the start must succeed.
    fn start(test: &str, nodes: u32, extra: &[&str]) -> (DevCluster, String) {
        let cluster = DevCluster::named(test);
        let output = cluster.start_command(nodes, extra);
        assert!(
            output.status.success(),
            "cluster start failed: {}{}",
            text(&output.stdout),
            text(&output.stderr)
        );
        (cluster, text(&output.stdout))
    }

    fn named(test: &str) -> DevCluster {
        DevCluster {
            name: format!("t{}-{test}", std::process::id()),
        }
    }

    fn start_command(&self, nodes: u32, extra: &[&str]) -> Output {
        let nodes = nodes.to_string();
        let mut args = vec!["cluster", "start", "--nodes", &nodes, "--name", &self.name];
        args.extend_from_slice(extra);
        chimaera(&args)
    }

    fn instance(&self, node: u32) -> InstanceName {
        InstanceName::new(&format!("{}-node{node}", self.name)).unwrap()
    }

    /// A config that reaches node `node` (a client needs only its instance).
    fn node_config(&self, node: u32) -> RuntimeConfig {
        RuntimeConfig {
            instance: self.instance(node),
            ..RuntimeConfig::default()
        }
    }

    fn client(&self, node: u32) -> Client {
        Client::connect_to(&self.node_config(node)).expect("connect to the node")
    }

    fn node_status(&self, node: u32) -> RuntimeStatus {
        AdminClient::attach(&self.client(node), PoolId::ADMIN)
            .status(PoolQuery::local())
            .expect("status")
    }

    fn state_dir(&self) -> PathBuf {
        chimaera_core::instance::user_dir().join(format!("cluster+{}", self.name))
    }

    /// `cluster status --json`: its exit status and document.
    fn status_json(&self) -> (bool, serde_json::Value) {
        let output = chimaera(&["cluster", "status", "--name", &self.name, "--json"]);
        let document = serde_json::from_slice(&output.stdout)
            .unwrap_or_else(|err| panic!("not JSON ({err}): {output:?}"));
        (output.status.success(), document)
    }

    /// Each node's pid, from `cluster status --json`.
    fn pids(&self) -> Vec<u32> {
        let (_, status) = self.status_json();
        status["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|node| node["pid"].as_u64().expect("node up") as u32)
            .collect()
    }

    fn stop(&self) -> Output {
        chimaera(&["cluster", "stop", "--name", &self.name, "--grace-ms", "500"])
    }
}

impl Drop for DevCluster {
    fn drop(&mut self) {
        if self.state_dir().exists() {
            let _ = self.stop();
        }
    }
}

/// Whether process `pid` is gone (a zombie whose parent has not reaped it counts: it
/// holds nothing, and `cluster start`, its parent, has exited).
fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

fn kill_9(pid: u32) {
    let pid = rustix::process::Pid::from_raw(pid as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::KILL).unwrap();
}

#[test]
fn a_three_node_cluster_serves_a_broadcast_shows_its_nodes_and_stops_without_a_trace() {
    let (cluster, stdout) = DevCluster::start("bcast", 3, &[]);
    assert!(stdout.contains("3 node(s) up"), "{stdout}");
    let node0 = cluster.instance(0);
    assert!(
        stdout.contains(&format!("CHI_INSTANCE={node0}")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("cluster stop --name {}", cluster.name)),
        "{stdout}"
    );

    // What the start printed reaches node 0, a member of the three-node cluster.
    let via_env = Command::new(env!("CARGO_BIN_EXE_chimaera"))
        .args(["runtime", "status"])
        .env_remove("CHI_SERVER_CONF")
        .env("CHI_INSTANCE", node0.as_str())
        .output()
        .unwrap();
    assert!(via_env.status.success(), "{via_env:?}");
    assert!(
        text(&via_env.stdout).contains("cluster: node 0 of 3 node(s)"),
        "{via_env:?}"
    );

    // The state: a 0700 directory of ours, a 0600 secret.
    let state = cluster.state_dir();
    let meta = std::fs::symlink_metadata(&state).unwrap();
    assert!(meta.is_dir());
    assert_eq!(meta.permissions().mode() & 0o777, 0o700);
    let secret = std::fs::metadata(state.join("secret")).unwrap();
    assert_eq!(secret.permissions().mode() & 0o777, 0o600);

    // A client of node 0: one Broadcast reaches a container on every node.
    let chi = cluster.client(0);
    let pool = ModNameClient::create_with(
        &chi,
        PoolQuery::local(),
        "everywhere",
        PoolOptions::containers(3),
        CreateParams::default(),
    )
    .expect("a pool across the cluster");
    let replies = within("a broadcast", move || {
        pool.async_custom(PoolQuery::broadcast(), "to all", 1)
            .unwrap()
            .wait_all()
    });
    let mut containers: Vec<ContainerId> = replies.iter().map(|(id, _)| *id).collect();
    containers.sort_unstable();
    assert_eq!(containers, [0, 1, 2]);
    for (container, reply) in replies {
        assert_eq!(reply.unwrap(), "to all", "container {container}");
    }
    for node in 0..3 {
        let runs: u64 = cluster
            .node_status(node)
            .methods
            .iter()
            .filter(|method| method.name == "kCustom")
            .map(|method| method.completed)
            .sum();
        assert_eq!(runs, 1, "node {node} ran its replica");
    }
    drop(chi);

    // Status lists the three nodes, up, each with its own instance.
    let (ok, status) = cluster.status_json();
    assert!(ok, "{status}");
    let nodes = status["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3);
    for (id, node) in nodes.iter().enumerate() {
        assert_eq!(node["id"], id);
        assert_eq!(node["up"], true, "{node}");
        assert_eq!(node["instance"], cluster.instance(id as u32).as_str());
    }
    let text_status = chimaera(&["cluster", "status", "--name", &cluster.name]);
    assert!(text_status.status.success());
    assert!(
        text(&text_status.stdout).contains("3 node(s), 3 up"),
        "{text_status:?}"
    );
    let pids = cluster.pids();

    // Stop: no node process, no instance file, no state left.
    let stopped = cluster.stop();
    assert!(stopped.status.success(), "{stopped:?}");
    for (node, pid) in pids.into_iter().enumerate() {
        wait_until("the node process to be gone", || process_gone(pid));
        let instance = cluster.instance(node as u32);
        assert!(!runtime_alive(&instance).unwrap());
        assert_eq!(instance_files(&instance).unwrap(), [], "node {node}");
    }
    assert!(!state.exists(), "the state stays at {}", state.display());
    let again = chimaera(&["cluster", "status", "--name", &cluster.name]);
    assert_eq!(again.status.code(), Some(1));
    assert!(text(&again.stderr).contains("no cluster"), "{again:?}");
}

#[test]
fn a_second_cluster_of_the_same_name_is_refused_and_the_first_keeps_running() {
    let (cluster, _) = DevCluster::start("clash", 1, &[]);
    let second = cluster.start_command(2, &[]);
    assert_eq!(second.status.code(), Some(1), "{second:?}");
    let stderr = text(&second.stderr);
    assert!(stderr.contains("already running"), "{stderr}");
    assert!(
        stderr.contains(&format!("cluster stop --name {}", cluster.name)),
        "{stderr}"
    );
    let (ok, status) = cluster.status_json();
    assert!(ok, "the first cluster is hurt: {status}");
    assert_eq!(status["nodes"].as_array().unwrap().len(), 1);
}

#[test]
fn stop_after_a_kill_9_of_one_node_stops_the_rest_and_cleans_up() {
    let (cluster, _) = DevCluster::start("kill", 2, &[]);
    let pids = cluster.pids();
    kill_9(pids[1]);
    wait_until("node 1 to be dead", || {
        matches!(runtime_alive(&cluster.instance(1)), Ok(false))
    });
    assert!(
        !instance_files(&cluster.instance(1)).unwrap().is_empty(),
        "a killed node leaves files"
    );
    let (ok, status) = cluster.status_json();
    assert!(!ok, "status exits 1 with a node down");
    assert_eq!(status["nodes"][0]["up"], true);
    assert_eq!(status["nodes"][1]["up"], false);

    let stopped = cluster.stop();
    assert!(stopped.status.success(), "{stopped:?}");
    assert!(
        text(&stopped.stdout).contains("was not running"),
        "{stopped:?}"
    );
    wait_until("node 0 to be gone", || process_gone(pids[0]));
    for node in 0..2 {
        assert_eq!(instance_files(&cluster.instance(node)).unwrap(), []);
    }
    assert!(!cluster.state_dir().exists());
}

#[test]
fn stop_kills_a_node_that_does_not_stop() {
    let (cluster, _) = DevCluster::start("hung", 2, &[]);
    let pids = cluster.pids();
    // Node 1 is frozen (SIGSTOP): it cannot answer the stop request, nor stop.
    let pid = rustix::process::Pid::from_raw(pids[1] as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::STOP).unwrap();
    let stopped = within("cluster stop with a hung node", {
        let name = cluster.name.clone();
        move || chimaera(&["cluster", "stop", "--name", &name, "--grace-ms", "0"])
    });
    assert!(stopped.status.success(), "{stopped:?}");
    let stdout = text(&stopped.stdout);
    assert!(stdout.contains("killed (SIGKILL)"), "{stdout}");
    for (node, pid) in pids.into_iter().enumerate() {
        wait_until("the node process to be gone", || process_gone(pid));
        assert_eq!(instance_files(&cluster.instance(node as u32)).unwrap(), []);
    }
    assert!(!cluster.state_dir().exists());
}

#[test]
fn a_state_directory_open_to_others_is_refused_not_repaired() {
    let cluster = DevCluster::named("openmode");
    checked_user_dir().unwrap();
    let state = cluster.state_dir();
    std::fs::create_dir(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
    let started = cluster.start_command(1, &[]);
    let mode = std::fs::metadata(&state).unwrap().permissions().mode() & 0o777;
    let _ = std::fs::remove_dir(&state);
    assert_eq!(started.status.code(), Some(1), "{started:?}");
    assert!(text(&started.stderr).contains("mode 755"), "{started:?}");
    assert_eq!(mode, 0o755, "the mode was changed");
    assert!(!runtime_alive(&cluster.instance(0)).unwrap());
}

#[test]
fn one_command_at_a_time_per_cluster() {
    let (cluster, _) = DevCluster::start("busy", 1, &[]);
    // Hold the state directory's lock as a running `cluster start` or `stop` would.
    let dir = std::fs::File::open(cluster.state_dir()).unwrap();
    rustix::fs::flock(&dir, rustix::fs::FlockOperation::LockExclusive).unwrap();
    let refused = cluster.stop();
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    assert!(
        text(&refused.stderr).contains("is running; wait for it"),
        "{refused:?}"
    );
    let (ok, _) = cluster.status_json();
    assert!(ok, "status reads without the lock, and the node still runs");
    drop(dir);
    let stopped = cluster.stop();
    assert!(stopped.status.success(), "{stopped:?}");
}

#[test]
fn start_over_a_crashed_cluster_cleans_its_leftovers_and_starts_afresh() {
    let (cluster, _) = DevCluster::start("stale", 1, &[]);
    kill_9(cluster.pids()[0]);
    wait_until("node 0 to be dead", || {
        matches!(runtime_alive(&cluster.instance(0)), Ok(false))
    });
    let output = cluster.start_command(1, &[]);
    assert!(output.status.success(), "{output:?}");
    assert!(text(&output.stdout).contains("had crashed"), "{output:?}");
    let (ok, _) = cluster.status_json();
    assert!(ok);
}

#[test]
fn a_node_that_cannot_come_up_is_named_and_the_others_are_stopped() {
    let cluster = DevCluster::named("noup");
    // Node 1's port is held here: with one address and ports P, P+1, it cannot listen.
    let (base, _held) = loop {
        let first = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = first.local_addr().unwrap().port();
        if let Ok(second) = TcpListener::bind(("127.0.0.1", port + 1)) {
            drop(first);
            break (port, second);
        }
    };
    let base = base.to_string();
    let output = cluster.start_command(2, &["--addressing", "ports", "--base-port", &base]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = text(&output.stderr);
    assert!(stderr.contains("node 1"), "{stderr}");
    assert!(stderr.contains("did not come up"), "{stderr}");
    assert!(
        stderr.contains("cannot listen"),
        "its log is shown: {stderr}"
    );
    assert!(!runtime_alive(&cluster.instance(0)).unwrap());
    for node in 0..2 {
        assert_eq!(instance_files(&cluster.instance(node)).unwrap(), []);
    }
    assert!(!cluster.state_dir().exists());
}

#[test]
fn a_symlink_planted_at_the_state_directory_is_refused_never_followed() {
    let cluster = DevCluster::named("planted");
    checked_user_dir().unwrap();
    let target =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{}-target", cluster.name));
    std::fs::create_dir_all(&target).unwrap();
    std::os::unix::fs::symlink(&target, cluster.state_dir()).unwrap();
    let started = cluster.start_command(1, &[]);
    let stopped = cluster.stop();
    let planted_stays = std::fs::symlink_metadata(cluster.state_dir())
        .map(|meta| meta.file_type().is_symlink())
        .unwrap_or(false);
    let target_files = std::fs::read_dir(&target).unwrap().count();
    let _ = std::fs::remove_file(cluster.state_dir());
    let _ = std::fs::remove_dir_all(&target);

    assert_eq!(started.status.code(), Some(1), "{started:?}");
    assert!(
        text(&started.stderr).contains("symbolic link"),
        "{started:?}"
    );
    assert_eq!(stopped.status.code(), Some(1), "{stopped:?}");
    assert!(planted_stays, "the link was removed or replaced");
    assert_eq!(target_files, 0, "something was written through the link");
    assert!(!runtime_alive(&cluster.instance(0)).unwrap());
}

#[test]
fn a_tls_cluster_with_a_throwaway_authority_serves_across_nodes() {
    let (cluster, stdout) = DevCluster::start("tls", 2, &["--tls"]);
    assert!(stdout.contains("TLS on"), "{stdout}");
    let state = cluster.state_dir();
    assert!(state.join("ca.crt").exists());
    assert!(
        !std::fs::read_dir(&state)
            .unwrap()
            .any(|entry| entry.unwrap().file_name() == "ca.key"),
        "the authority's key is never written"
    );
    let key = std::fs::metadata(state.join("node-1.key")).unwrap();
    assert_eq!(key.permissions().mode() & 0o777, 0o600);
    let chi = cluster.client(0);
    let pool = ModNameClient::create_with(
        &chi,
        PoolQuery::local(),
        "over-tls",
        PoolOptions::containers(2),
        CreateParams::default(),
    )
    .unwrap();
    let remote = within("a task over TLS", move || {
        pool.custom(PoolQuery::direct_id(1), "sealed", 0)
    });
    assert_eq!(remote.unwrap(), "sealed");
}

#[test]
fn the_config_and_instance_flags_are_refused_not_dropped() {
    let cluster = DevCluster::named("flags");
    for flag in [["--config", "/etc/some.yaml"], ["--instance", "elsewhere"]] {
        let output = chimaera(&[
            "cluster",
            "start",
            "--nodes",
            "1",
            "--name",
            &cluster.name,
            flag[0],
            flag[1],
        ]);
        assert_eq!(output.status.code(), Some(2), "{output:?}");
        assert!(text(&output.stderr).contains(flag[0]), "{output:?}");
    }
    assert!(!cluster.state_dir().exists());
}
