//! Mutual TLS between real runtime processes, configured in YAML (`networking.tls`):
//! `chimaera runtime start` nodes on 127.0.0.1 whose certificates come from a test
//! authority, written next to their configs and named by paths relative to them. Each
//! test has its own instances, ports and files. No timing assertions.
mod support;

use chimaera::admin_api::PoolOptions;
use chimaera::mod_name::{CreateParams, ModNameClient};
use chimaera::prelude::*;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;
use support::{within, RuntimeProcess};

const SECRET: &str = "net-tls-test-secret-0123456789abcdef";

/// Where the configs (and so the files they name relatively) live.
fn test_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
}

/// A test authority.
struct Authority(rcgen::CertifiedIssuer<'static, rcgen::KeyPair>);

impl Authority {
    fn new() -> Authority {
        let mut params = rcgen::CertificateParams::new(Vec::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        Authority(
            rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap())
                .unwrap(),
        )
    }

    /// Writes `{stem}.ca`, `{stem}.crt` (naming `host`) and `{stem}.key` into the test
    /// directory; returns the YAML `tls:` block naming them relatively.
    fn write_node_files(&self, stem: &str, host: &str) -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![host.to_owned()])
            .unwrap()
            .signed_by(&key, &self.0)
            .unwrap();
        let dir = test_dir();
        std::fs::write(dir.join(format!("{stem}.ca")), self.0.pem()).unwrap();
        std::fs::write(dir.join(format!("{stem}.crt")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{stem}.key")), key.serialize_pem()).unwrap();
        format!("  tls:\n    cert: {stem}.crt\n    key: {stem}.key\n    ca: {stem}.ca\n")
    }
}

/// The files of one test, removed when dropped.
struct Files(Vec<PathBuf>);

impl Files {
    fn of(test: &str, nodes: u32) -> Files {
        let stem = |node: u32| format!("t{}-{test}-n{node}", std::process::id());
        let mut paths = vec![test_dir().join(format!("t{}-{test}.hosts", std::process::id()))];
        for node in 0..nodes {
            for ext in ["ca", "crt", "key"] {
                paths.push(test_dir().join(format!("{}.{ext}", stem(node))));
            }
        }
        Files(paths)
    }

    fn hostfile(&self) -> &PathBuf {
        &self.0[0]
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        for path in &self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn free_ports(count: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    listeners
        .iter()
        .map(|listener| listener.local_addr().unwrap().port())
        .collect()
}

/// Node `node`'s YAML: the hostfile, its id, the secret and its `tls:` block.
fn node_yaml(files: &Files, node: u32, tls: &str) -> String {
    format!(
        "workers:\n  low_latency: 1\n  high_latency: 0\nstop_grace_period_ms: 500\nnetworking:\n  \
         hostfile: {}\n  node_id: {node}\n  rpc_timeout_ms: 1500\n  secret: {SECRET}\n{tls}",
        files.hostfile().display()
    )
}

/// Two nodes: node 0 with a certificate of `authority`, node 1 of `authority_of_1`.
fn two_nodes(
    test: &str,
    authority: &Authority,
    authority_of_1: &Authority,
) -> (RuntimeProcess, RuntimeProcess, Files) {
    let files = Files::of(test, 2);
    let ports = free_ports(2);
    std::fs::write(
        files.hostfile(),
        format!("127.0.0.1:{}\n127.0.0.1:{}\n", ports[0], ports[1]),
    )
    .unwrap();
    let stem = |node: u32| format!("t{}-{test}-n{node}", std::process::id());
    let tls0 = authority.write_node_files(&stem(0), "127.0.0.1");
    let tls1 = authority_of_1.write_node_files(&stem(1), "127.0.0.1");
    let node0 = RuntimeProcess::start(&format!("{test}-n0"), &node_yaml(&files, 0, &tls0));
    let node1 = RuntimeProcess::start(&format!("{test}-n1"), &node_yaml(&files, 1, &tls1));
    (node0, node1, files)
}

fn pool_on_both(chi: &Client, name: &str) -> ModNameClient {
    ModNameClient::create_with(
        chi,
        PoolQuery::local(),
        name,
        PoolOptions::containers(2),
        CreateParams::default(),
    )
    .expect("a pool on both nodes")
}

#[test]
fn two_nodes_with_tls_from_yaml_serve_a_remote_task() {
    let authority = Authority::new();
    let (node0, _node1, _files) = two_nodes("tls-ok", &authority, &authority);
    let pool = pool_on_both(&node0.client(), "sealed");
    let answer = within("a task over TLS", move || {
        pool.custom(PoolQuery::direct_id(1), "through tls", 0)
    });
    assert_eq!(answer.unwrap(), "through tls");
}

#[test]
fn a_node_with_a_certificate_of_another_authority_is_refused() {
    let authority = Authority::new();
    let stranger = Authority::new();
    let (node0, intruder, _files) = two_nodes("tls-stranger", &authority, &stranger);
    let pool = pool_on_both(&node0.client(), "guarded");
    let error = within("a task to the stranger", {
        let pool = pool.clone();
        move || pool.custom(PoolQuery::direct_id(1), "secret data", 0)
    })
    .unwrap_err();
    assert!(
        matches!(
            error,
            TaskError::NodeFailed { node: 1, .. } | TaskError::NodeTimeout { node: 1, .. }
        ),
        "{error:?}"
    );
    // The stranger got nothing of the cluster, and node 0 serves on.
    let intruder_status = AdminClient::attach(&intruder.client(), PoolId::ADMIN)
        .status(PoolQuery::local())
        .unwrap();
    assert!(
        intruder_status
            .pools
            .iter()
            .all(|info| info.id != pool.pool_id()),
        "{:?}",
        intruder_status.pools
    );
    assert_eq!(
        pool.custom(PoolQuery::direct_id(0), "mine", 0).unwrap(),
        "mine"
    );
}

#[test]
fn unusable_tls_files_fail_the_start_naming_the_key_and_the_path() {
    let test = "tls-bad";
    let files = Files::of(test, 1);
    let port = free_ports(1)[0];
    std::fs::write(files.hostfile(), format!("127.0.0.1:{port}\n")).unwrap();
    let stem = format!("t{}-{test}-n0", std::process::id());
    let config = test_dir().join(format!("{stem}.yaml"));
    let start = |tls: &str| {
        std::fs::write(
            &config,
            format!("instance: {stem}\n{}", node_yaml(&files, 0, tls)),
        )
        .unwrap();
        Command::new(env!("CARGO_BIN_EXE_chimaera"))
            .args(["runtime", "start"])
            .env("CHI_SERVER_CONF", &config)
            .env_remove("CHI_INSTANCE")
            .output()
            .unwrap()
    };
    // A missing certificate: named with its path, resolved next to the config.
    let missing =
        start("  tls:\n    cert: nowhere.crt\n    key: nowhere.key\n    ca: nowhere.ca\n");
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert_eq!(missing.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("networking.tls.cert"), "{stderr}");
    assert!(
        stderr.contains(&test_dir().join("nowhere.crt").display().to_string()),
        "{stderr}"
    );
    // A certificate for another host than this node's hostfile entry.
    let tls = Authority::new().write_node_files(&stem, "10.11.12.13");
    let wrong_host = start(&tls);
    let stderr = String::from_utf8_lossy(&wrong_host.stderr);
    assert_eq!(wrong_host.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("networking.tls.cert"), "{stderr}");
    assert!(
        stderr.contains("does not name this node's host"),
        "{stderr}"
    );
    let _ = std::fs::remove_file(&config);
}

#[test]
fn the_example_node_config_parses_and_its_paths_are_relative_to_it() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/cluster");
    let config = RuntimeConfig::from_file(dir.join("node1.yaml")).expect("the example parses");
    let net = &config.networking;
    assert_eq!(net.hostfile.as_deref(), Some(dir.join("hosts").as_path()));
    assert_eq!(net.node_id, Some(1));
    let tls = net.tls.as_ref().expect("the example sets tls");
    assert_eq!(tls.cert, dir.join("pki/node02.crt"));
    assert_eq!(tls.key, dir.join("pki/node02.key"));
    assert_eq!(tls.ca, dir.join("pki/ca.crt"));
    let hosts = chimaera::cluster::hostfile::Hostfile::load(dir.join("hosts"))
        .expect("the example hostfile parses");
    assert_eq!(hosts.hosts().len(), 4);
}
