//! Where the nodes of a local cluster listen: node `i` on its own loopback address
//! `127.0.0.{i+1}` (all of `127.0.0.0/8` is this machine on Linux), all on one port, or,
//! where those addresses cannot be bound, every node on `127.0.0.1` with a port of its
//! own.
//!
//! # Invariants
//!
//! * `auto` probes by binding `127.0.0.2` and says which layout it chose and why
//!   ([`Layout::describe`]); the explicit choices are taken as asked.
//! * Ports chosen here (no `--base-port`) are ones the kernel handed out and that were
//!   free on every node's address at that moment; a node that finds its port taken by
//!   then fails its start, named, like any other node that does not come up.
//! * `--base-port P` with one address gives `P + i`: a base too close to 65535 is an
//!   error, never a wrapped port.
use clap::ValueEnum;
use std::net::{Ipv4Addr, TcpListener};

/// Where the nodes of a cluster listen, as `--addressing` asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(super) enum AddressingChoice {
    Auto,
    Aliases,
    Ports,
}

/// Where the nodes listen.
#[derive(Debug)]
pub(super) enum Layout {
    /// Node `i` on `127.0.0.{i+1}`, all on one port.
    Aliases {
        port: u16,
        nodes: u32,
        why: &'static str,
    },
    /// Every node on `127.0.0.1`, each its own port.
    Ports { ports: Vec<u16>, why: String },
}

impl Layout {
    pub(super) fn choose(
        choice: AddressingChoice,
        nodes: u32,
        base_port: Option<u16>,
    ) -> Result<Layout, String> {
        let aliases = |why| -> Result<Layout, String> {
            let port = match base_port {
                Some(port) => port,
                None => port_free_on_every_alias(nodes)?,
            };
            Ok(Layout::Aliases { port, nodes, why })
        };
        match choice {
            AddressingChoice::Aliases => aliases("--addressing aliases"),
            AddressingChoice::Ports => {
                Layout::ports(nodes, base_port, "--addressing ports".to_owned())
            }
            AddressingChoice::Auto => match alias_probe(nodes) {
                Ok(()) => aliases("127.0.0.2 and up can be bound"),
                Err(err) => Layout::ports(
                    nodes,
                    base_port,
                    format!(
                        "binding 127.0.0.{} failed ({err}); on Linux every 127.x.y.z is this \
                         machine, elsewhere add loopback aliases to give each node its own address",
                        nodes.min(2)
                    ),
                ),
            },
        }
    }

    fn ports(nodes: u32, base_port: Option<u16>, why: String) -> Result<Layout, String> {
        let ports = match base_port {
            Some(base) => (0..nodes)
                .map(|node| {
                    u16::try_from(u32::from(base) + node).map_err(|_| {
                        format!("--base-port {base} leaves no room for {nodes} ports below 65536")
                    })
                })
                .collect::<Result<Vec<_>, _>>()?,
            None => {
                // Held together, so the kernel hands out distinct ports.
                let listeners = (0..nodes)
                    .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|err| format!("cannot find free ports on 127.0.0.1: {err}"))?;
                listeners
                    .iter()
                    .map(|listener| listener.local_addr().map(|address| address.port()))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|err| format!("cannot find free ports on 127.0.0.1: {err}"))?
            }
        };
        Ok(Layout::Ports { ports, why })
    }

    /// Each node's host.
    pub(super) fn hosts(&self) -> Vec<String> {
        match self {
            Layout::Aliases { nodes, .. } => {
                (0..*nodes).map(|node| alias(node).to_string()).collect()
            }
            Layout::Ports { ports, .. } => ports
                .iter()
                .map(|_| Ipv4Addr::LOCALHOST.to_string())
                .collect(),
        }
    }

    /// Each node's `host:port`.
    pub(super) fn addresses(&self) -> Vec<String> {
        match self {
            Layout::Aliases { port, .. } => self
                .hosts()
                .iter()
                .map(|host| format!("{host}:{port}"))
                .collect(),
            Layout::Ports { ports, .. } => ports
                .iter()
                .map(|port| format!("{}:{port}", Ipv4Addr::LOCALHOST))
                .collect(),
        }
    }

    pub(super) fn describe(&self) -> String {
        match self {
            Layout::Aliases { port, nodes, why } => format!(
                "addresses 127.0.0.1-{} port {port}, one per node ({why})",
                alias(nodes.saturating_sub(1))
            ),
            Layout::Ports { ports, why } => {
                let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
                format!(
                    "one address 127.0.0.1, ports {} in node order ({why})",
                    ports.join(", ")
                )
            }
        }
    }
}

/// Node `node`'s loopback alias: `127.0.0.{node+1}`.
fn alias(node: u32) -> Ipv4Addr {
    let [_, _, high, low] = (node + 1).to_be_bytes();
    Ipv4Addr::new(127, 0, high, low)
}

/// Whether this machine lets a process bind `127.0.0.2` (and so every alias).
fn alias_probe(nodes: u32) -> Result<(), std::io::Error> {
    if nodes < 2 {
        return Ok(());
    }
    TcpListener::bind((alias(1), 0)).map(drop)
}

/// A port the kernel hands out on 127.0.0.1 that every other alias can bind too.
fn port_free_on_every_alias(nodes: u32) -> Result<u16, String> {
    const TRIES: usize = 16;
    for _ in 0..TRIES {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .map_err(|err| format!("cannot find a free port on 127.0.0.1: {err}"))?;
        let port = listener
            .local_addr()
            .map_err(|err| format!("cannot find a free port on 127.0.0.1: {err}"))?
            .port();
        let others: Result<Vec<TcpListener>, _> = (1..nodes)
            .map(|node| TcpListener::bind((alias(node), port)))
            .collect();
        if others.is_ok() {
            return Ok(port);
        }
    }
    Err(format!(
        "found no port free on all of 127.0.0.1-{} in {TRIES} tries; give one with --base-port",
        alias(nodes - 1)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_count_from_127_0_0_1() {
        assert_eq!(alias(0), Ipv4Addr::new(127, 0, 0, 1));
        assert_eq!(alias(63), Ipv4Addr::new(127, 0, 0, 64));
        assert_eq!(alias(255), Ipv4Addr::new(127, 0, 1, 0));
    }

    #[test]
    fn layouts_give_each_node_its_address() {
        let aliases = Layout::Aliases {
            port: 7000,
            nodes: 3,
            why: "test",
        };
        assert_eq!(
            aliases.addresses(),
            ["127.0.0.1:7000", "127.0.0.2:7000", "127.0.0.3:7000"]
        );
        assert_eq!(aliases.hosts(), ["127.0.0.1", "127.0.0.2", "127.0.0.3"]);
        let ports = Layout::ports(3, Some(7000), "test".to_owned()).unwrap();
        assert_eq!(
            ports.addresses(),
            ["127.0.0.1:7000", "127.0.0.1:7001", "127.0.0.1:7002"]
        );
        assert_eq!(ports.hosts(), ["127.0.0.1"; 3]);
        let err = Layout::ports(3, Some(65534), "test".to_owned()).unwrap_err();
        assert!(err.contains("--base-port 65534"), "{err}");
        let chosen = Layout::ports(4, None, "test".to_owned())
            .unwrap()
            .addresses();
        let mut distinct = chosen.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), 4, "{chosen:?}");
    }
}
