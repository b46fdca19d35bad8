//! The task whose subtasks a client submits, when a handler made that client
//! ([`RunContext::client`](crate::runtime::context::RunContext::client)).
//!
//! Its own module, importing only ids and the bulk share, so that the task, the
//! context and the in-process transport all use it without an import cycle.
//!
//! Invariant: a subtask is one level deeper than `node`, in its group, and carries
//! `charge` as its data share: so the quotas of the uid whose task made it (see
//! `crate::quota`) count it too, while it can reference none of that client's memory.
use crate::bulk::BulkShare;
use crate::ids::TaskNode;
use std::sync::Arc;

/// The task whose subtasks a client made inside it submits.
#[derive(Clone, Debug)]
pub(crate) struct Parent {
    /// The parent's group and depth: its subtasks are one level deeper.
    pub(crate) node: TaskNode,
    /// What its subtasks carry so that they count against the quotas of the uid whose
    /// task made them (`BulkShare::for_subtasks`); `None` when that uid has none.
    pub(crate) charge: Option<Arc<BulkShare>>,
}

impl Parent {
    /// What a subtask carries as its data share (a clone of `charge`).
    pub(crate) fn charge(&self) -> Option<Arc<BulkShare>> {
        self.charge.clone()
    }
}
