//! Many nodes: which nodes form the cluster, which one this is, what they say to each
//! other, and an in-memory network that puts a whole cluster in one process.
//!
//! * [`hostfile`]: the node list (`networking.hostfile`), node id = index.
//! * [`Membership`]: the hostfile plus this node's id, resolved as the original does:
//!   `networking.node_id` if given, else the first entry whose address (host and port)
//!   this process can bind now.
//! * `frame`: the runtime's messages between nodes (rkyv archives; task inputs and
//!   outputs inside are the generated archives, carried as they are; a task's bulk
//!   ranges from the client's shared memory follow the archive as raw bytes).
//! * [`memory`]: a [`PeerNetwork`](crate::peer::PeerNetwork) for many nodes in one
//!   process, with faults (a node down, slow, gone) for tests and simulation.
//!
//! This module knows no runtime: the runtime (`runtime::remote`) builds on it.
//!
//! # Invariants
//!
//! * A [`Membership`] names a node that is in its hostfile (`this_node < nodes`).
//! * Placement is one rule everywhere: container `c` of a pool lives on node
//!   `c % nodes` ([`node_of`]), so every node computes the same owner without asking.
crate::internal_mod! {
    /// The runtime's messages between nodes (unstable, for chimaera's own tests).
    mod frame;
}
pub mod hostfile;
pub mod memory;

use crate::config::NetworkingConfig;
use crate::ids::{ContainerId, NodeId};
use hostfile::{Hostfile, HostfileError};
use std::net::{TcpListener, ToSocketAddrs};

/// The node that holds container `container` in a cluster of `nodes` nodes.
pub const fn node_of(container: ContainerId, nodes: u32) -> NodeId {
    if nodes <= 1 {
        0
    } else {
        container % nodes
    }
}

/// The cluster's nodes and which one this is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Membership {
    /// The nodes, in id order.
    pub hostfile: Hostfile,
    /// This node.
    pub this_node: NodeId,
    /// The port of entries without their own.
    pub default_port: u16,
}

/// Why this process cannot take its place in the cluster.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    /// The hostfile is unreadable or malformed.
    #[error(transparent)]
    Hostfile(#[from] HostfileError),
    /// `networking.node_id` is past the hostfile's end.
    #[error("`networking.node_id` is {node} but the hostfile lists {nodes} nodes (ids 0 to {last}); fix one or the other", last = nodes.saturating_sub(1))]
    NodeIdOutOfRange {
        /// The configured id.
        node: NodeId,
        /// How many nodes the hostfile lists.
        nodes: usize,
    },
    /// No hostfile entry is an address this process can bind.
    #[error("no hostfile entry is an address of this machine that is free to bind ({tried}); set `networking.node_id`, or add this machine to the hostfile")]
    NotInHostfile {
        /// The addresses tried.
        tried: String,
    },
}

impl Membership {
    /// The membership `config` describes: `None` without a hostfile (one node, no
    /// network).
    pub fn from_config(config: &NetworkingConfig) -> Result<Option<Membership>, MembershipError> {
        let Some(path) = &config.hostfile else {
            return Ok(None);
        };
        let hostfile = Hostfile::load(path)?;
        Membership::resolve(hostfile, config.node_id, config.port).map(Some)
    }

    /// Picks this node in `hostfile`: `node_id` if given (checked), else the first
    /// entry whose address this process can bind now (a taken port means another node
    /// of this machine already runs there, so that entry is not this one).
    pub fn resolve(
        hostfile: Hostfile,
        node_id: Option<NodeId>,
        default_port: u16,
    ) -> Result<Membership, MembershipError> {
        let this_node = match node_id {
            Some(node) if (node as usize) < hostfile.len() => node,
            Some(node) => {
                return Err(MembershipError::NodeIdOutOfRange {
                    node,
                    nodes: hostfile.len(),
                })
            }
            None => first_bindable(&hostfile, default_port)?,
        };
        Ok(Membership {
            hostfile,
            this_node,
            default_port,
        })
    }

    /// How many nodes.
    pub fn nodes(&self) -> u32 {
        self.hostfile.len() as u32
    }

    /// Node `node`'s `host:port`.
    pub fn address(&self, node: NodeId) -> Option<String> {
        self.hostfile
            .hosts()
            .get(node as usize)
            .map(|entry| entry.address(self.default_port))
    }
}

fn first_bindable(hostfile: &Hostfile, default_port: u16) -> Result<NodeId, MembershipError> {
    let mut tried = Vec::new();
    for (node, entry) in hostfile.hosts().iter().enumerate() {
        let port = entry.port.unwrap_or(default_port);
        // A name that does not resolve is some other machine's (or a typo another node
        // reports): skip it rather than fail, as the original does.
        let Ok(addresses) = (entry.host.as_str(), port).to_socket_addrs() else {
            tried.push(entry.address(default_port));
            continue;
        };
        for address in addresses {
            if TcpListener::bind(address).is_ok() {
                return Ok(node as NodeId);
            }
        }
        tried.push(entry.address(default_port));
    }
    Err(MembershipError::NotInHostfile {
        tried: tried.join(", "),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containers_are_placed_round_robin() {
        assert_eq!(node_of(0, 4), 0);
        assert_eq!(node_of(5, 4), 1);
        assert_eq!(node_of(7, 1), 0);
        assert_eq!(node_of(7, 0), 0);
    }

    #[test]
    fn an_explicit_node_id_is_checked_against_the_hostfile() {
        let hosts = Hostfile::parse("a\nb\n").unwrap();
        let membership = Membership::resolve(hosts.clone(), Some(1), 9000).unwrap();
        assert_eq!(membership.this_node, 1);
        assert_eq!(membership.address(1).as_deref(), Some("b:9000"));
        assert!(matches!(
            Membership::resolve(hosts, Some(2), 9000),
            Err(MembershipError::NodeIdOutOfRange { node: 2, nodes: 2 })
        ));
    }

    #[test]
    fn without_a_node_id_the_first_bindable_entry_is_this_node() {
        // A port held by a listener (another node of this machine) is skipped.
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let free = {
            let probe = TcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap().port()
        };
        let text = format!("192.0.2.1:{free}\n127.0.0.1:{port}\n127.0.0.1:{free}\n");
        let membership = Membership::resolve(Hostfile::parse(&text).unwrap(), None, 1).unwrap();
        assert_eq!(membership.this_node, 2);
        let text = format!("192.0.2.1:{port}\n127.0.0.1:{port}\n");
        let err = Membership::resolve(Hostfile::parse(&text).unwrap(), None, 1).unwrap_err();
        assert!(err.to_string().contains("networking.node_id"), "{err}");
    }
}
