//! The seam between the runtimes of one cluster: a [`PeerNetwork`] carries opaque frames
//! from this node to another and brings back that node's answer.
//!
//! The runtime decides what a frame means (a task to run, its outputs, a pool to create);
//! a network only moves bytes between nodes, so the same runtime code runs over gRPC
//! between processes (the `chimaera-net` crate) and over an in-memory network that puts
//! many nodes in one process for tests and simulation.
//!
//! # Invariants every implementation keeps
//!
//! * **One answer per call.** [`PeerNetwork::call`] hands its [`ReplyFn`] back exactly
//!   once: with the peer's answer, or with a [`NetError`] — at the latest when `timeout`
//!   has passed (plus scheduling slack), and at once after [`PeerNetwork::shutdown`]. A
//!   caller never waits on a frame the network lost.
//! * **Frames are opaque and bounded.** The network neither decodes nor copies a frame
//!   beyond what its wire needs; a frame longer than [`MAX_FRAME_BYTES`] is refused with
//!   [`NetError::FrameTooLarge`] on either side.
//! * **Peers are authenticated.** The `from` node the [`FrameHandler`] is given has proved
//!   it belongs to the cluster (a shared cluster secret or mutual TLS); a connection that
//!   fails the check is refused and logged, and none of its frames reach the handler.
//! * **Never blocking.** `call` queues and returns; answers come on the network's own
//!   threads, so a [`ReplyFn`] must not block for long.
#![allow(clippy::module_name_repetitions)]

use crate::ids::NodeId;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// The most bulk data one task may carry to another node: the bytes of the client-share
/// ranges its arguments reference, or of its inline bulk arguments.
pub const MAX_TASK_BULK_BYTES: usize = 64 << 20;

/// The largest frame a network carries: a task's bulk data ([`MAX_TASK_BULK_BYTES`]) and
/// up to 1 MiB for its other inputs and the frame's header; answers alike. A larger task
/// is refused before it is sent, a larger frame from a peer before it is buffered.
/// Bounded so that what a peer can make this node buffer per call stays modest: a
/// network moves a large frame in chunks (the gRPC one in 1 MiB messages by default),
/// never as one message.
pub const MAX_FRAME_BYTES: usize = MAX_TASK_BULK_BYTES + (1 << 20);

/// Why a frame did not reach its node or no answer came back.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NetError {
    /// The node is not in this cluster's hostfile.
    #[error("node {node} is not part of this cluster (the hostfile lists {nodes} nodes)")]
    UnknownNode {
        /// The node asked for.
        node: NodeId,
        /// How many nodes the cluster has.
        nodes: u32,
    },
    /// No connection to the node could be made (it is down, or not listening yet).
    #[error(
        "node {node} is unreachable: {reason}; check that its runtime runs and its port is open"
    )]
    Unreachable {
        /// The node that could not be reached.
        node: NodeId,
        /// What the connection attempt reported.
        reason: String,
    },
    /// The node did not answer in time.
    #[error("node {node} did not answer within {timeout_ms} ms")]
    DeadlineExceeded {
        /// The node that was asked.
        node: NodeId,
        /// The deadline that passed.
        timeout_ms: u64,
    },
    /// The node refused this node's credentials (or this node refused the peer's).
    #[error(
        "node {node} refused the connection: {reason}; every node needs the same cluster secret"
    )]
    Refused {
        /// The node that refused.
        node: NodeId,
        /// What it said.
        reason: String,
    },
    /// The peer sent bytes that are not a frame of this protocol; its connection was dropped.
    #[error("node {node} sent a malformed frame: {reason}")]
    Malformed {
        /// The node that sent it.
        node: NodeId,
        /// What was wrong.
        reason: String,
    },
    /// A frame over [`MAX_FRAME_BYTES`].
    #[error("a frame of {len} bytes is over the limit of {max} bytes")]
    FrameTooLarge {
        /// The frame's length.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// The node is leaving the cluster (a clean `runtime stop`), or this network was shut
    /// down.
    #[error("node {node} has left the cluster")]
    Left {
        /// The node that left (this node, if this network was shut down).
        node: NodeId,
    },
}

/// Where a call's answer goes: called exactly once, on a network thread.
pub type ReplyFn = Box<dyn FnOnce(Result<Vec<u8>, NetError>) + Send>;

/// What a peer's connection looks like from this node (also in the admin `Status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub enum PeerState {
    /// This node itself.
    Local,
    /// Connected and answering.
    Up,
    /// Not connected yet, or reconnecting after a failure (with backoff).
    Connecting,
    /// Its last connection attempt or call failed.
    Down,
    /// It said it was leaving (a clean stop).
    Left,
}

impl fmt::Display for PeerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PeerState::Local => "local",
            PeerState::Up => "up",
            PeerState::Connecting => "connecting",
            PeerState::Down => "down",
            PeerState::Left => "left",
        })
    }
}

/// One node of the cluster as this node sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerInfo {
    /// Its node id (its line in the hostfile, from 0).
    pub node: NodeId,
    /// The address it listens on (`host:port`).
    pub address: String,
    /// Its connection's state.
    pub state: PeerState,
}

/// The answer to one incoming frame: [`Responder::respond`] sends it back. Dropping a
/// responder without answering answers the caller with [`NetError::Left`].
pub struct Responder(Box<dyn FnOnce(Vec<u8>) + Send>);

impl Responder {
    /// A responder that hands the answer to `send`.
    pub fn new(send: impl FnOnce(Vec<u8>) + Send + 'static) -> Self {
        Responder(Box::new(send))
    }

    /// Sends the answer to the calling node.
    pub fn respond(self, answer: Vec<u8>) {
        (self.0)(answer)
    }
}

impl fmt::Debug for Responder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Responder")
    }
}

/// What receives the frames peers send to this node (the runtime).
pub trait FrameHandler: Send + Sync + 'static {
    /// One frame from `from` (an authenticated member of the cluster). Answer through
    /// `respond`, now or later, from any thread; never block the calling thread on other
    /// nodes.
    fn handle(&self, from: NodeId, frame: Vec<u8>, respond: Responder);

    /// `node` said it is leaving the cluster (a clean stop).
    fn peer_left(&self, node: NodeId) {
        let _ = node;
    }
}

/// How this node reaches the other nodes of its cluster.
pub trait PeerNetwork: Send + Sync + fmt::Debug + 'static {
    /// This node's id.
    fn this_node(&self) -> NodeId;

    /// How many nodes the cluster has (ids `0..nodes`).
    fn nodes(&self) -> u32;

    /// Starts handing incoming frames to `handler`; until then a peer's call is answered
    /// with [`NetError::Unreachable`] ("starting"). Called once, when the runtime is up.
    fn serve(&self, handler: Arc<dyn FrameHandler>);

    /// Sends `frame` to `node` and hands its answer (or why there is none) to `reply`
    /// within `timeout`. `node` may be this node: the frame then goes through the same
    /// path (force-net).
    fn call(&self, node: NodeId, frame: Vec<u8>, timeout: Duration, reply: ReplyFn);

    /// Every node and its connection's state.
    fn peers(&self) -> Vec<PeerInfo>;

    /// Tells the peers this node leaves, answers every outstanding call with
    /// [`NetError::Left`], and stops serving. Idempotent.
    fn shutdown(&self);
}
