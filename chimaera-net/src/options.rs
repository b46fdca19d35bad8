//! How a [`TonicNetwork`](crate::TonicNetwork) is set up: [`NetOptions`], plain values the
//! runtime fills from its `networking:` config, and [`NetSetupError`], why setting up
//! failed.
//!
//! # Invariants
//!
//! * [`NetOptions::validate`] runs before anything binds or spawns: a network exists only
//!   with a node id inside the address list, every address a `host:port`, a non-empty
//!   secret that fits an HTTP header, and backoff bounds in order.
//! * The listen address defaults to this node's own entry of the address list, resolved;
//!   never to the unspecified address (`0.0.0.0`), which would expose the port on every
//!   interface of the machine.

use crate::wire::{MAX_CHUNK_BYTES, MIN_CHUNK_BYTES};
use chimaera_core::ids::NodeId;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

/// The settings of one node's network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetOptions {
    /// This node's id: its index in [`addresses`](Self::addresses).
    pub this_node: NodeId,
    /// Every node's address (`host:port`), in node-id order (the hostfile's order).
    pub addresses: Vec<String>,
    /// Where this node listens; `None`: its own entry of `addresses`, resolved.
    pub listen: Option<SocketAddr>,
    /// The secret every node of the cluster shares; sent with every call and compared in
    /// constant time. Visible ASCII (it travels as an HTTP/2 header).
    pub cluster_secret: String,
    /// How long connecting to a peer may take; also how long an incoming connection may
    /// stay open before it carries its first authenticated call (then it is closed).
    pub connect_timeout: Duration,
    /// The deadline of the calls this network makes on its own (the leave notice).
    pub rpc_timeout: Duration,
    /// The longest an incoming call may wait for this node's answer, whatever deadline the
    /// caller asked for: bounds what a peer that never hangs up can hold.
    pub max_incoming_call: Duration,
    /// The wait before the first reconnect to a peer after a failure; it doubles with
    /// every further failure up to [`backoff_max`](Self::backoff_max).
    pub backoff_min: Duration,
    /// The longest wait between two connection attempts to a peer.
    pub backoff_max: Duration,
    /// Threads of the network's own tokio runtime.
    pub threads: usize,
    /// Refuse a call whose claimed node id belongs to another address than the one it
    /// comes from: a node connects from its own listen address, and a peer's connection
    /// must come from one of the addresses its hostfile entry resolves to. Turn off only
    /// behind address translation (NAT, proxies), where source addresses are rewritten.
    pub verify_peer_address: bool,
    /// How many incoming connections may wait for their first authenticated call at once;
    /// more are closed as soon as they are accepted.
    pub max_pending_connections: usize,
    /// Mutual TLS between the nodes; `None`: plain HTTP/2 (the secret and frames cross
    /// the wire in clear).
    pub tls: Option<PeerTls>,
    /// The largest gRPC message this node sends: a frame (or answer) over this many
    /// bytes travels as a stream of chunks of this size, so no single HTTP/2 message is
    /// huge. Between [`MIN_CHUNK_BYTES`](crate::MIN_CHUNK_BYTES) and
    /// [`MAX_CHUNK_BYTES`](crate::MAX_CHUNK_BYTES) (what every node accepts, whatever its
    /// own setting); 1 MiB by default.
    pub chunk_bytes: usize,
}

/// Mutual TLS between the nodes of a cluster, as PEM text (the runtime reads it from the
/// files its config names). Every node presents its certificate and accepts only peers
/// whose certificate the cluster's authority signed; a client checks that the server's
/// certificate names the host it dialed.
#[derive(Clone, PartialEq, Eq)]
pub struct PeerTls {
    /// The certificate authority that signs every node's certificate.
    pub ca_pem: Vec<u8>,
    /// This node's certificate (chain): its subject alternative names must include the
    /// host of this node's address (a DNS name or an IP address).
    pub cert_pem: Vec<u8>,
    /// This node's private key.
    pub key_pem: Vec<u8>,
}

impl std::fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerTls")
            .field("ca_pem_bytes", &self.ca_pem.len())
            .field("cert_pem_bytes", &self.cert_pem.len())
            .finish_non_exhaustive()
    }
}

impl NetOptions {
    /// Options for node `this_node` of the cluster at `addresses`, with the default
    /// timeouts (connect 1 s, rpc 2 s), backoff (50 ms to 1 s), two threads, and peer
    /// addresses verified, without TLS.
    pub fn new(
        this_node: NodeId,
        addresses: Vec<String>,
        cluster_secret: impl Into<String>,
    ) -> Self {
        NetOptions {
            this_node,
            addresses,
            listen: None,
            cluster_secret: cluster_secret.into(),
            connect_timeout: Duration::from_secs(1),
            rpc_timeout: Duration::from_secs(2),
            max_incoming_call: Duration::from_secs(300),
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(1),
            threads: 2,
            verify_peer_address: true,
            max_pending_connections: 256,
            tls: None,
            chunk_bytes: 1 << 20,
        }
    }

    /// How many nodes the cluster has.
    pub fn nodes(&self) -> u32 {
        u32::try_from(self.addresses.len()).unwrap_or(u32::MAX)
    }

    /// Checks the options (see the module's invariants).
    pub fn validate(&self) -> Result<(), NetSetupError> {
        if self.addresses.is_empty() || self.addresses.len() > u32::MAX as usize {
            return Err(NetSetupError::NoNodes {
                count: self.addresses.len(),
            });
        }
        if self.this_node >= self.nodes() {
            return Err(NetSetupError::ThisNodeOutOfRange {
                node: self.this_node,
                nodes: self.nodes(),
            });
        }
        for (node, address) in self.addresses.iter().enumerate() {
            check_host_port(address).map_err(|reason| NetSetupError::BadAddress {
                node: node as NodeId,
                address: address.clone(),
                reason,
            })?;
        }
        if self.cluster_secret.is_empty() {
            return Err(NetSetupError::EmptySecret);
        }
        if !self
            .cluster_secret
            .bytes()
            .all(|byte| byte.is_ascii_graphic())
        {
            return Err(NetSetupError::SecretNotVisibleAscii);
        }
        if self.backoff_min.is_zero() || self.backoff_min > self.backoff_max {
            return Err(NetSetupError::BackoffBounds {
                min: self.backoff_min,
                max: self.backoff_max,
            });
        }
        if self.threads == 0 {
            return Err(NetSetupError::NoThreads);
        }
        if self.max_pending_connections == 0 {
            return Err(NetSetupError::NoPendingConnections);
        }
        if !(MIN_CHUNK_BYTES..=MAX_CHUNK_BYTES).contains(&self.chunk_bytes) {
            return Err(NetSetupError::ChunkSize {
                chunk_bytes: self.chunk_bytes,
            });
        }
        Ok(())
    }

    /// The address to listen on: [`listen`](Self::listen), else this node's entry
    /// resolved (its first address).
    pub fn listen_address(&self) -> Result<SocketAddr, NetSetupError> {
        if let Some(listen) = self.listen {
            return Ok(listen);
        }
        let own = self.addresses.get(self.this_node as usize).ok_or(
            NetSetupError::ThisNodeOutOfRange {
                node: self.this_node,
                nodes: self.nodes(),
            },
        )?;
        let resolve_error = |reason: String| NetSetupError::BadAddress {
            node: self.this_node,
            address: own.clone(),
            reason,
        };
        own.to_socket_addrs()
            .map_err(|error| resolve_error(error.to_string()))?
            .next()
            .ok_or_else(|| resolve_error("it resolves to no address".to_owned()))
    }
}

/// `address` is `host:port` with a host and a port number.
fn check_host_port(address: &str) -> Result<(), String> {
    let authority: http::uri::Authority = address
        .parse()
        .map_err(|error: http::uri::InvalidUri| error.to_string())?;
    if authority.as_str().contains('@') {
        return Err("user info is not allowed".to_owned());
    }
    if authority.port_u16().is_none() {
        return Err("it has no port (expected host:port)".to_owned());
    }
    if authority.host().is_empty() {
        return Err("it has no host (expected host:port)".to_owned());
    }
    Ok(())
}

/// Why a network could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum NetSetupError {
    /// The address list is empty (or longer than node ids reach).
    #[error("a cluster needs between 1 and 2^32-1 node addresses, not {count}")]
    NoNodes {
        /// How many addresses were given.
        count: usize,
    },
    /// This node's id is not an index of the address list.
    #[error("this node's id {node} is not among the cluster's {nodes} nodes (ids 0..{nodes})")]
    ThisNodeOutOfRange {
        /// The id given.
        node: NodeId,
        /// How many nodes there are.
        nodes: u32,
    },
    /// A node's address is not `host:port`, or this node's does not resolve.
    #[error("node {node}'s address `{address}` is unusable: {reason}")]
    BadAddress {
        /// The node.
        node: NodeId,
        /// Its address as given.
        address: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No cluster secret.
    #[error("the cluster secret is empty; give every node the same non-empty secret")]
    EmptySecret,
    /// The secret has characters an HTTP/2 header cannot carry.
    #[error("the cluster secret must be visible ASCII (no spaces or control characters)")]
    SecretNotVisibleAscii,
    /// The backoff bounds are zero or out of order.
    #[error("the reconnect backoff must satisfy 0 < min <= max, not min {min:?}, max {max:?}")]
    BackoffBounds {
        /// The lower bound given.
        min: Duration,
        /// The upper bound given.
        max: Duration,
    },
    /// Zero threads.
    #[error("the network needs at least one thread")]
    NoThreads,
    /// The chunk size is outside what every node accepts.
    #[error("chunk_bytes is {chunk_bytes}; it must lie between {MIN_CHUNK_BYTES} and {MAX_CHUNK_BYTES} bytes")]
    ChunkSize {
        /// The size given.
        chunk_bytes: usize,
    },
    /// No incoming connection could ever be admitted.
    #[error("max_pending_connections must be at least 1, or no peer could ever connect")]
    NoPendingConnections,
    /// The listen address could not be bound.
    #[error("cannot listen on {address}: {source}; is another runtime using the port?")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// What the system said.
        source: std::io::Error,
    },
    /// The TLS certificate, key or authority is unusable.
    #[error(
        "the peer TLS settings are unusable: {0}; check the PEM certificate, key and authority"
    )]
    Tls(String),
    /// The network's tokio runtime could not start.
    #[error("cannot start the network's threads: {0}")]
    Runtime(std::io::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two_nodes() -> NetOptions {
        NetOptions::new(
            1,
            vec!["127.0.0.1:7500".to_owned(), "localhost:7501".to_owned()],
            "secret",
        )
    }

    #[test]
    fn the_defaults_are_valid_and_listen_on_this_nodes_own_address() {
        let options = two_nodes();
        options.validate().unwrap();
        assert_eq!(options.nodes(), 2);
        let listen = options.listen_address().unwrap();
        assert_eq!(listen.port(), 7501);
        assert!(!listen.ip().is_unspecified());
    }

    #[test]
    fn every_invalid_setting_is_refused_naming_what_is_wrong() {
        let with = |change: fn(&mut NetOptions)| {
            let mut options = two_nodes();
            change(&mut options);
            options.validate().unwrap_err()
        };
        assert!(matches!(
            with(|o| o.addresses.clear()),
            NetSetupError::NoNodes { count: 0 }
        ));
        assert!(matches!(
            with(|o| o.this_node = 2),
            NetSetupError::ThisNodeOutOfRange { node: 2, nodes: 2 }
        ));
        for bad in [
            "127.0.0.1",
            "host:",
            ":7500",
            "user@host:1",
            "host:99999",
            "a b:1",
        ] {
            let mut options = two_nodes();
            options.addresses[0] = bad.to_owned();
            match options.validate() {
                Err(NetSetupError::BadAddress {
                    node: 0, address, ..
                }) => assert_eq!(address, bad),
                other => panic!("`{bad}` accepted: {other:?}"),
            }
        }
        assert!(matches!(
            with(|o| o.cluster_secret.clear()),
            NetSetupError::EmptySecret
        ));
        for bad in ["with space", "tab\t", "caf\u{e9}", "new\nline"] {
            let mut options = two_nodes();
            options.cluster_secret = bad.to_owned();
            assert!(
                matches!(
                    options.validate(),
                    Err(NetSetupError::SecretNotVisibleAscii)
                ),
                "{bad:?} accepted"
            );
        }
        assert!(matches!(
            with(|o| o.backoff_min = Duration::ZERO),
            NetSetupError::BackoffBounds { .. }
        ));
        assert!(matches!(
            with(|o| o.backoff_max = Duration::from_millis(1)),
            NetSetupError::BackoffBounds { .. }
        ));
        assert!(matches!(with(|o| o.threads = 0), NetSetupError::NoThreads));
        assert!(matches!(
            with(|o| o.max_pending_connections = 0),
            NetSetupError::NoPendingConnections
        ));
        for chunk_bytes in [0, MIN_CHUNK_BYTES - 1, MAX_CHUNK_BYTES + 1] {
            let mut options = two_nodes();
            options.chunk_bytes = chunk_bytes;
            assert!(matches!(
                options.validate(),
                Err(NetSetupError::ChunkSize { chunk_bytes: given }) if given == chunk_bytes
            ));
        }
    }

    #[test]
    fn an_explicit_listen_address_wins() {
        let mut options = two_nodes();
        options.listen = Some(([127, 0, 0, 9], 9000).into());
        assert_eq!(options.listen_address().unwrap(), options.listen.unwrap());
    }
}
