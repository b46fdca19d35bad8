//! [`PoolQuery`]: which containers of a pool a task goes to.
//!
//! Resolution on one node (container `i` of a pool lives on node 0 for every `i`):
//!
//! | query | containers |
//! |---|---|
//! | `Local` | the first container on this node |
//! | `DirectId(c)` | `c` (error if `c >= containers`) |
//! | `DirectHash(h)` | `h % containers` |
//! | `Range(off, n)` | `off .. off + n` (error if it leaves the pool, or `n == 0`) |
//! | `Broadcast` | all containers |
//! | `Physical(node)` | the first container on `node` (error for another node) |
//! | `Dynamic` | the task's `dynamic` hook decides; without one, as `Local` |
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

    /// The containers this query selects in a pool of `containers` containers on node
    /// `this_node`. `dynamic` is the container a `Dynamic` query resolved to, if any.
    pub fn resolve(
        self,
        pool: PoolId,
        containers: u32,
        this_node: NodeId,
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
        match self {
            PoolQuery::Local => one(0),
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
            PoolQuery::Physical(node) if node == this_node => one(0),
            PoolQuery::Physical(node) => Err(TaskError::NoSuchNode { node }),
            PoolQuery::Dynamic => one(dynamic.unwrap_or(0)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: PoolId = PoolId::new(7, 0);

    #[test]
    fn every_mode_resolves_as_documented() {
        assert_eq!(PoolQuery::local().resolve(P, 4, 0, None), Ok(0..1));
        assert_eq!(PoolQuery::direct_id(3).resolve(P, 4, 0, None), Ok(3..4));
        assert_eq!(PoolQuery::direct_hash(10).resolve(P, 4, 0, None), Ok(2..3));
        assert_eq!(PoolQuery::range(1, 2).resolve(P, 4, 0, None), Ok(1..3));
        assert_eq!(PoolQuery::broadcast().resolve(P, 4, 0, None), Ok(0..4));
        assert_eq!(PoolQuery::physical(0).resolve(P, 4, 0, None), Ok(0..1));
        assert_eq!(PoolQuery::dynamic().resolve(P, 4, 0, Some(2)), Ok(2..3));
        assert_eq!(PoolQuery::dynamic().resolve(P, 4, 0, None), Ok(0..1));
    }

    #[test]
    fn out_of_pool_queries_are_errors() {
        assert!(matches!(
            PoolQuery::direct_id(4).resolve(P, 4, 0, None),
            Err(TaskError::NoSuchContainer { container: 4, .. })
        ));
        assert!(PoolQuery::range(3, 2).resolve(P, 4, 0, None).is_err());
        assert!(PoolQuery::range(u32::MAX, 2)
            .resolve(P, 4, 0, None)
            .is_err());
        assert_eq!(
            PoolQuery::range(0, 0).resolve(P, 4, 0, None),
            Err(TaskError::EmptyQuery)
        );
        assert_eq!(
            PoolQuery::physical(1).resolve(P, 4, 0, None),
            Err(TaskError::NoSuchNode { node: 1 })
        );
    }
}
