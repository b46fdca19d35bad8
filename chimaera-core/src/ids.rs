//! Identifiers: pools, containers, nodes, methods and task nodes.
//!
//! All are small `Copy` values with an rkyv layout so they can travel inside tasks.
//! A [`PoolId`] is `major.minor` as in the original (`1.0` is the admin pool); pools the
//! runtime creates get a fresh `major` and minor `0`, never reused within one runtime.
use rkyv::{Archive, Deserialize, Serialize};
use std::fmt;

/// A task method id, as listed in a module's `chimaera_mod.yaml` (`kCustom: 10`).
pub type MethodId = u32;
/// Index of a container within its pool (`0..containers`).
pub type ContainerId = u32;
/// A node of the cluster; a single runtime is node `0`.
pub type NodeId = u32;

/// The identity of a pool: `major.minor`.
#[derive(
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Debug,
    Default,
    Archive,
    Serialize,
    Deserialize,
)]
#[rkyv(derive(Debug, PartialEq, Eq))]
pub struct PoolId {
    /// Distinguishes pools; assigned by the runtime.
    pub major: u32,
    /// Reserved for sub-pools; `0` for pools the runtime creates.
    pub minor: u32,
}

impl PoolId {
    /// The admin pool, present in every runtime.
    pub const ADMIN: PoolId = PoolId { major: 1, minor: 0 };

    /// A pool id from its parts.
    pub const fn new(major: u32, minor: u32) -> Self {
        PoolId { major, minor }
    }
}

impl fmt::Display for PoolId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// Groups a task with the subtasks it spawns, recursively.
///
/// `root` is the id of the task that a client submitted from outside the runtime; every
/// task a handler submits through its [`RunContext`](crate::RunContext) inherits `root`
/// and has `depth + 1`. Coroutine locks let tasks of one group through each other
/// (see [`lock`](crate::lock)), so a lock holder's subtasks cannot deadlock on it.
/// `depth` is bounded by the runtime's `max_task_depth`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default, Archive, Serialize, Deserialize)]
#[rkyv(derive(Debug, PartialEq, Eq))]
pub struct TaskNode {
    /// Id of the outermost task of the group.
    pub root: u64,
    /// Nesting depth: `0` for a task a client submitted.
    pub depth: u32,
    /// How many tasks of this chain (the task and those it is nested in) are counted in
    /// each epoch parity of the in-flight counters, so a flush leaves them out (see
    /// `flush.rs`).
    pub(crate) chain: [u32; 2],
}

impl TaskNode {
    /// The node of a subtask of `self` (its own count in `chain` is added when it is
    /// queued).
    pub const fn child(self) -> TaskNode {
        TaskNode {
            root: self.root,
            depth: self.depth.saturating_add(1),
            chain: self.chain,
        }
    }

    /// The node with one more task of its chain counted in `parity`.
    pub(crate) fn counted_in(mut self, parity: u8) -> TaskNode {
        let slot = &mut self.chain[usize::from(parity & 1)];
        *slot = slot.saturating_add(1);
        self
    }

    /// The node with one task of its chain moved from parity `from` to `to` (a periodic
    /// task's next run).
    pub(crate) fn recounted(mut self, from: u8, to: u8) -> TaskNode {
        let slot = &mut self.chain[usize::from(from & 1)];
        *slot = slot.saturating_sub(1);
        self.counted_in(to)
    }
}

impl fmt::Display for TaskNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.root, self.depth)
    }
}
