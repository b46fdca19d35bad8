//! The manifest of a local cluster: `cluster.json` in its state directory, saying which
//! instance, address, config file and log each node has — everything `status` and `stop`
//! need to find the nodes.
//!
//! # Invariants
//!
//! * `start` writes it last, after every other file and before any node starts: a state
//!   directory without one holds no node that `start` could have started.
//! * It is read back only from the cluster's own state directory (`0700`, ours) and still
//!   checked, not trusted: a schema number this program knows, and every node's instance
//!   a valid instance name, before any liveness lock or instance file is touched by it.
use super::state::StateDir;
use chimaera_core::instance::InstanceName;
use serde::{Deserialize, Serialize};

/// The manifest's file and its schema number.
pub(super) const MANIFEST: &str = "cluster.json";
pub(super) const SCHEMA: u32 = 1;

/// What `cluster.json` holds: everything `status` and `stop` need.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Manifest {
    pub(super) schema: u32,
    pub(super) name: String,
    /// How the addresses were chosen, for `status`.
    pub(super) addressing: String,
    pub(super) tls: bool,
    pub(super) nodes: Vec<NodeRecord>,
}

/// One node of the manifest.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct NodeRecord {
    pub(super) id: u32,
    pub(super) instance: String,
    pub(super) address: String,
    /// Its config file, in the state directory.
    pub(super) config: String,
    /// Its log file, in the state directory.
    pub(super) log: String,
}

impl NodeRecord {
    /// The node's instance name (checked when the manifest is read).
    pub(super) fn instance(&self) -> Result<InstanceName, String> {
        InstanceName::new(&self.instance)
            .map_err(|err| format!("node {}'s instance `{}`: {err}", self.id, self.instance))
    }
}

/// The manifest in `state`; `None` if there is none (a start that died before writing it).
pub(super) fn read(state: &StateDir) -> Result<Option<Manifest>, String> {
    let Some(bytes) = state.read_file(MANIFEST).map_err(|err| err.to_string())? else {
        return Ok(None);
    };
    let manifest: Manifest = serde_json::from_slice(&bytes).map_err(|err| {
        format!(
            "{} is not a cluster manifest: {err}",
            state.path_of(MANIFEST).display()
        )
    })?;
    if manifest.schema != SCHEMA {
        return Err(format!(
            "{} has schema {}, this program knows {SCHEMA}",
            state.path_of(MANIFEST).display(),
            manifest.schema
        ));
    }
    for node in &manifest.nodes {
        node.instance()?;
    }
    Ok(Some(manifest))
}
