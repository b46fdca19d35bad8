//! [`PoolQuery`]: which containers of a pool a task goes to.
//!
//! A pool's containers are placed by a [`Placement`]: container `c` lives on node
//! `c % nodes` of the nodes the pool spans (on one node, or for a node-local pool such as
//! the admin's, every container lives on this node).
//!
//! | query | containers |
//! |---|---|
//! | `Local` | the first container on this node (a node holding none: `this_node % containers`) |
//! | `DirectId(c)` | `c` (error if `c >= containers`) |
//! | `DirectHash(h)` | `h % containers` |
//! | `Range(off, n)` | `off .. off + n` (error if it leaves the pool, or `n == 0`) |
//! | `Broadcast` | all containers |
//! | `Physical(node)` | the first container on `node` (error for a node outside the pool) |
//! | `Dynamic` | the task's `dynamic` hook decides (it may see the [`PoolTopology`]: which node holds which container); without one, as `Local` |
//!
//! A query that selects several containers runs one replica of the task on each, and
//! the caller sees the replicas' results aggregated (first error wins, else the result of
//! the lowest container), or each of them through [`Pending::wait_all`](crate::Pending::wait_all).
// rkyv's derive emits resolver types whose fields cannot carry docs.
#![allow(missing_docs)]
use crate::error::TaskError;
use crate::ids::{ContainerId, NodeId, PoolId};
use rkyv::{Archive, Deserialize, Serialize};
use std::ops::Range;

/// Selects the containers of a pool that run a task.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default, Archive, Serialize, Deserialize)]
#[rkyv(derive(Debug), attr(allow(missing_docs)))]
pub enum PoolQuery {
    /// The container on this node.
    #[default]
    Local,
    /// One container by index.
    DirectId(ContainerId),
    /// The container `hash % containers`.
    DirectHash(u64),
    /// `count` containers from `offset`.
    Range {
        /// First container.
        offset: ContainerId,
        /// Number of containers.
        count: u32,
    },
    /// Every container.
    Broadcast,
    /// The container on one node.
    Physical(NodeId),
    /// The method decides (its `dynamic` hook), else as `Local`.
    Dynamic,
}

impl PoolQuery {
    /// [`PoolQuery::Local`].
    pub const fn local() -> Self {
        PoolQuery::Local
    }
    /// [`PoolQuery::DirectId`].
    pub const fn direct_id(container: ContainerId) -> Self {
        PoolQuery::DirectId(container)
    }
    /// [`PoolQuery::DirectHash`].
    pub const fn direct_hash(hash: u64) -> Self {
        PoolQuery::DirectHash(hash)
    }
    /// [`PoolQuery::Range`].
    pub const fn range(offset: ContainerId, count: u32) -> Self {
        PoolQuery::Range { offset, count }
    }
    /// [`PoolQuery::Broadcast`].
    pub const fn broadcast() -> Self {
        PoolQuery::Broadcast
    }
    /// [`PoolQuery::Physical`].
    pub const fn physical(node: NodeId) -> Self {
        PoolQuery::Physical(node)
    }
    /// [`PoolQuery::Dynamic`].
    pub const fn dynamic() -> Self {
        PoolQuery::Dynamic
    }

    /// Whether this query selects at most one container, whatever the pool (`Range` and
    /// `Broadcast` may select several).
    pub const fn selects_one(self) -> bool {
        !matches!(self, PoolQuery::Range { .. } | PoolQuery::Broadcast)
    }

    /// The containers this query selects in a pool of `containers` containers placed by
    /// `placement`. `dynamic` is the container a `Dynamic` query resolved to, if any.
    pub fn resolve(
        self,
        pool: PoolId,
        containers: u32,
        placement: Placement,
        dynamic: Option<ContainerId>,
    ) -> Result<Range<ContainerId>, TaskError> {
        let one = |c: ContainerId| -> Result<Range<ContainerId>, TaskError> {
            if c < containers {
                Ok(c..c + 1)
            } else {
                Err(TaskError::NoSuchContainer {
                    pool,
                    container: c,
                    containers,
                })
            }
        };
        if containers == 0 {
            return Err(TaskError::EmptyQuery);
        }
        let this_node = placement.this_node;
        let first_on = |node: NodeId| placement.first_container_on(node, containers);
        match self {
            PoolQuery::Local => one(first_on(this_node).unwrap_or(this_node % containers)),
            PoolQuery::DirectId(c) => one(c),
            PoolQuery::DirectHash(h) => one((h % u64::from(containers)) as u32),
            PoolQuery::Range { offset, count } => {
                if count == 0 {
                    return Err(TaskError::EmptyQuery);
                }
                let end = offset.checked_add(count).filter(|end| *end <= containers);
                match end {
                    Some(end) => Ok(offset..end),
                    None => Err(TaskError::NoSuchContainer {
                        pool,
                        container: offset.saturating_add(count - 1),
                        containers,
                    }),
                }
            }
            PoolQuery::Broadcast => Ok(0..containers),
            PoolQuery::Physical(node) => match first_on(node) {
                Some(container) => one(container),
                None => Err(TaskError::NoSuchNode { node }),
            },
            PoolQuery::Dynamic => match dynamic {
                Some(container) => one(container),
                None => one(first_on(this_node).unwrap_or(this_node % containers)),
            },
        }
    }
}

/// Where a pool's containers live: container `c` on node `c % nodes`, or every
/// container on this node when the pool spans one node only.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Placement {
    /// This node.
    pub this_node: NodeId,
    /// The nodes the pool spans (`0..nodes`); 1: every container is on this node.
    pub nodes: u32,
}

impl Placement {
    /// A pool on this one node only (a single runtime, or a node-local pool).
    pub const fn single(this_node: NodeId) -> Self {
        Placement {
            this_node,
            nodes: 1,
        }
    }

    /// The node holding `container`.
    pub const fn node_of(self, container: ContainerId) -> NodeId {
        if self.nodes <= 1 {
            self.this_node
        } else {
            container % self.nodes
        }
    }

    /// Whether `container` lives on this node.
    pub const fn is_local(self, container: ContainerId) -> bool {
        self.node_of(container) == self.this_node
    }

    /// The lowest container of a pool of `containers` that lives on `node`.
    pub fn first_container_on(self, node: NodeId, containers: u32) -> Option<ContainerId> {
        if self.nodes <= 1 {
            return (node == self.this_node && containers > 0).then_some(0);
        }
        (node < self.nodes && node < containers).then_some(node)
    }
}

/// What a `Dynamic` hook sees of its pool: how many containers it has and which node
/// holds each. A hook declared `fn(input, topology: PoolTopology) -> ContainerId` can
/// send a task to a node (`topology.container_on(node)`); one declared
/// `fn(input, containers: u32) -> ContainerId` sees the count only.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct PoolTopology {
    /// The pool's containers (`0..containers`).
    pub containers: u32,
    /// Which node holds which container, and which node this is.
    pub placement: Placement,
}

impl PoolTopology {
    /// A pool of `containers` containers all on this one node.
    pub const fn single(containers: u32) -> Self {
        PoolTopology {
            containers,
            placement: Placement::single(0),
        }
    }

    /// This node.
    pub const fn this_node(&self) -> NodeId {
        self.placement.this_node
    }

    /// How many nodes the pool spans.
    pub const fn nodes(&self) -> u32 {
        self.placement.nodes
    }

    /// The node holding `container`.
    pub const fn node_of(&self, container: ContainerId) -> NodeId {
        self.placement.node_of(container)
    }

    /// The lowest container on `node`, if it holds any.
    pub fn container_on(&self, node: NodeId) -> Option<ContainerId> {
        self.placement.first_container_on(node, self.containers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: PoolId = PoolId::new(7, 0);
    const ONE: Placement = Placement::single(0);

    #[test]
    fn only_range_and_broadcast_may_select_several_containers() {
        for one in [
            PoolQuery::local(),
            PoolQuery::direct_id(3),
            PoolQuery::direct_hash(7),
            PoolQuery::physical(0),
            PoolQuery::dynamic(),
        ] {
            assert!(one.selects_one(), "{one:?}");
        }
        assert!(!PoolQuery::range(0, 1).selects_one());
        assert!(!PoolQuery::broadcast().selects_one());
    }

    #[test]
    fn every_mode_resolves_as_documented() {
        assert_eq!(PoolQuery::local().resolve(P, 4, ONE, None), Ok(0..1));
        assert_eq!(PoolQuery::direct_id(3).resolve(P, 4, ONE, None), Ok(3..4));
        assert_eq!(
            PoolQuery::direct_hash(10).resolve(P, 4, ONE, None),
            Ok(2..3)
        );
        assert_eq!(PoolQuery::range(1, 2).resolve(P, 4, ONE, None), Ok(1..3));
        assert_eq!(PoolQuery::broadcast().resolve(P, 4, ONE, None), Ok(0..4));
        assert_eq!(PoolQuery::physical(0).resolve(P, 4, ONE, None), Ok(0..1));
        assert_eq!(PoolQuery::dynamic().resolve(P, 4, ONE, Some(2)), Ok(2..3));
        assert_eq!(PoolQuery::dynamic().resolve(P, 4, ONE, None), Ok(0..1));
    }

    #[test]
    fn out_of_pool_queries_are_errors() {
        assert!(matches!(
            PoolQuery::direct_id(4).resolve(P, 4, ONE, None),
            Err(TaskError::NoSuchContainer { container: 4, .. })
        ));
        assert!(PoolQuery::range(3, 2).resolve(P, 4, ONE, None).is_err());
        assert!(PoolQuery::range(u32::MAX, 2)
            .resolve(P, 4, ONE, None)
            .is_err());
        assert_eq!(
            PoolQuery::range(0, 0).resolve(P, 4, ONE, None),
            Err(TaskError::EmptyQuery)
        );
        assert_eq!(
            PoolQuery::physical(1).resolve(P, 4, ONE, None),
            Err(TaskError::NoSuchNode { node: 1 })
        );
    }

    #[test]
    fn across_nodes_each_mode_finds_the_container_of_the_right_node() {
        // 6 containers on 4 nodes: node 0 holds 0 and 4, node 1 holds 1 and 5, ...
        let on = |this_node| Placement {
            this_node,
            nodes: 4,
        };
        assert_eq!(PoolQuery::local().resolve(P, 6, on(2), None), Ok(2..3));
        assert_eq!(PoolQuery::physical(3).resolve(P, 6, on(0), None), Ok(3..4));
        assert_eq!(PoolQuery::dynamic().resolve(P, 6, on(1), None), Ok(1..2));
        assert_eq!(PoolQuery::broadcast().resolve(P, 6, on(1), None), Ok(0..6));
        assert_eq!(on(0).node_of(5), 1);
        assert!(on(1).is_local(5));
        // Fewer containers than nodes: node 3 holds none, Local falls back to 3 % 2.
        assert_eq!(PoolQuery::local().resolve(P, 2, on(3), None), Ok(1..2));
        assert_eq!(
            PoolQuery::physical(3).resolve(P, 2, on(0), None),
            Err(TaskError::NoSuchNode { node: 3 })
        );
        assert_eq!(
            PoolQuery::physical(4).resolve(P, 6, on(0), None),
            Err(TaskError::NoSuchNode { node: 4 })
        );
        // A node-local pool (the admin's) keeps every container on its node.
        let local = Placement::single(3);
        assert_eq!(PoolQuery::local().resolve(P, 1, local, None), Ok(0..1));
        assert_eq!(PoolQuery::physical(3).resolve(P, 1, local, None), Ok(0..1));
        assert!(local.is_local(7));
        let topology = PoolTopology {
            containers: 6,
            placement: on(1),
        };
        assert_eq!(topology.container_on(3), Some(3));
        assert_eq!(topology.node_of(5), 1);
        assert_eq!(topology.this_node(), 1);
        assert_eq!(PoolTopology::single(3).container_on(0), Some(0));
    }
}
