//! With mutual TLS, a node id is bound to its certificate: a caller whose certificate the
//! cluster's authority signed, but for another node's host, cannot claim that node's id.
//! Two `TonicNetwork`s in this process on `127.0.0.1` and `127.0.0.2` (every 127.x
//! address is this machine on Linux), source-address checks off as behind address
//! translation, so only the certificate can tell the nodes apart. Ephemeral ports; no
//! timing assertions.

use chimaera_core::ids::NodeId;
use chimaera_core::peer::{FrameHandler, NetError, PeerNetwork, Responder};
use chimaera_net::{NetOptions, PeerTls, TonicNetwork};
use std::net::TcpListener;
use std::sync::{mpsc, Arc};
use std::time::Duration;

const SECRET: &str = "tls-identity-test-secret";
/// Only bounds how long a broken build can hang.
const HANG: Duration = Duration::from_secs(30);

/// Answers every frame with the caller's node id.
struct Echo;

impl FrameHandler for Echo {
    fn handle(&self, from: NodeId, _frame: Vec<u8>, respond: Responder) {
        respond.respond(from.to_le_bytes().to_vec());
    }
}

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

    /// TLS settings with a certificate naming `host`.
    fn tls_for(&self, host: &str) -> PeerTls {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![host.to_owned()])
            .unwrap()
            .signed_by(&key, &self.0)
            .unwrap();
        PeerTls {
            ca_pem: self.0.pem().into_bytes(),
            cert_pem: cert.pem().into_bytes(),
            key_pem: key.serialize_pem().into_bytes(),
        }
    }
}

/// Node 0 on 127.0.0.1 with a proper certificate, node 1 on 127.0.0.2 with a
/// certificate naming `node1_names`; returns both networks.
fn pair(authority: &Authority, node1_names: &str) -> (TonicNetwork, TonicNetwork) {
    let listeners = [
        TcpListener::bind("127.0.0.1:0").unwrap(),
        TcpListener::bind("127.0.0.2:0").unwrap(),
    ];
    let addresses: Vec<String> = listeners
        .iter()
        .map(|listener| listener.local_addr().unwrap().to_string())
        .collect();
    let names = ["127.0.0.1", node1_names];
    let mut networks = listeners.into_iter().enumerate().map(|(node, listener)| {
        let mut options = NetOptions::new(node as NodeId, addresses.clone(), SECRET);
        options.verify_peer_address = false;
        options.backoff_min = Duration::from_millis(10);
        options.backoff_max = Duration::from_millis(100);
        options.tls = Some(authority.tls_for(names[node]));
        let network = TonicNetwork::with_listener(options, listener).unwrap();
        network.serve(Arc::new(Echo));
        network
    });
    (networks.next().unwrap(), networks.next().unwrap())
}

fn call(network: &TonicNetwork, node: NodeId) -> Result<Vec<u8>, NetError> {
    let (send, receive) = mpsc::channel();
    network.call(
        node,
        b"who am i".to_vec(),
        HANG,
        Box::new(move |answer| {
            let _ = send.send(answer);
        }),
    );
    receive.recv_timeout(HANG).expect("every call is answered")
}

#[test]
fn a_certificate_naming_the_callers_host_backs_its_node_id() {
    let authority = Authority::new();
    let (_node0, node1) = pair(&authority, "127.0.0.2");
    assert_eq!(call(&node1, 0), Ok(1u32.to_le_bytes().to_vec()));
}

#[test]
fn a_certificate_of_another_nodes_host_cannot_claim_this_node_id() {
    let authority = Authority::new();
    // Node 1 holds a valid certificate of the cluster, but one issued for node 0's host.
    let (node0, node1) = pair(&authority, "127.0.0.1");
    match call(&node1, 0) {
        Err(NetError::Refused { node: 0, reason }) => {
            assert!(reason.contains("certificate"), "{reason}")
        }
        other => panic!("node 0 accepted a certificate for its own host as node 1: {other:?}"),
    }
    // Node 0 itself is unharmed: it calls itself as before.
    assert_eq!(call(&node0, 0), Ok(0u32.to_le_bytes().to_vec()));
}
