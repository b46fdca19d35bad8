//! The runtime as one node of a cluster: pools on every node, tasks routed to the node
//! that holds their container, answers back into the caller's completion.
//!
//! # Pools
//!
//! Node 0 is the single writer of pool ids (DESIGN §8: no consensus of our own). A
//! `GetOrCreatePool` on any node asks node 0 ([`Frame::CreatePool`]); node 0 looks the
//! name up in its registry and either answers with the pool it has, queues the request
//! behind a creation of that name in progress, or allocates an id, builds its own
//! containers, and tells every other node ([`Frame::InstallPool`]) — answering every
//! requester once all nodes answered. Two creations of one name from two nodes at once
//! therefore get one pool with one id everywhere. A node that did not answer the install
//! (down) gets the pool when it next asks for it or starts ([`Frame::ListPools`]). A
//! module that fails to build its containers on some node fails the creation, and the
//! pool is removed from every node again. `DestroyPool` goes through node 0 the same way.
//!
//! # Tasks
//!
//! A task's replicas on containers of other nodes are sent as [`Frame::Run`]; the
//! receiver runs those on containers it holds, exactly like local replicas, and answers
//! with every container's output archive or error, which the sender delivers into the
//! caller's completion (or sink) per container. Broadcast and Range go through a tree:
//! the nodes to reach are split into at most `neighborhood_size` runs; the first node of
//! each run gets one frame for the whole run, runs its own containers and splits the
//! rest of its run the same way. No node sends more than `neighborhood_size` frames for
//! one task; a node that does not answer fails its containers' replicas with
//! [`TaskError::NodeTimeout`] or [`TaskError::NodeFailed`] naming it, at the latest by
//! the deadline (a forwarding node waits three quarters of its own deadline, so the
//! failure names the node that failed rather than the one in between).
//!
//! # Bulk data
//!
//! A bulk argument in the client's shared memory (`BulkWire::Shared`) travels with its
//! task: [`check_remote_task`] asks the module which arguments are bulk
//! (`ChiMod::visit_bulk`, generated), claims each referenced range of the client's share
//! ([`CarriedBulk`]), and every frame of the task carries those ranges after its archive
//! (see `cluster::frame`). The receiver resolves the task's references into them in
//! place (`BulkShare::carried`), runs the handlers, and answers with the bytes of the
//! ranges they write; the sender writes those back into the client's buffers before it
//! delivers the results, so a `&mut [u8]` or `BulkOut` argument holds the result when the
//! call completes, as on one node. Copies of the payload, end to end: for data going
//! out, one (client share → frame); for data coming back, one on the remote (its carried
//! bytes → answer) and one here (answer → client share) — plus whatever the network's
//! wire needs (tonic copies a message into its send buffer, and reassembles a frame that
//! came in several chunks). An inline bulk argument (an in-process client's slice, a
//! heap slice) is part of the input archive and comes back inline in the output.
//!
//! A forged reference (outside the client's share) or one overlapping a range a task of
//! this node holds for writing fails the task before anything is queued or sent. An
//! answer whose written ranges do not match what was sent fails the replicas of that
//! frame with [`TaskError::NodeFailed`], writing nothing. Several replicas writing one
//! range (a `Broadcast` with a written buffer) conflict on its claim, as replicas running
//! at once on one node do: replicas on this node fail with `BulkBufferBusy` while
//! replicas on other nodes hold the range.
//!
//! # Invariants
//!
//! * Every replica sent to another node is answered exactly once: the network answers
//!   each call once (see [`crate::peer`]) and the answer delivers one result per
//!   container the frame was for — missing ones as errors.
//! * Frames from peers are decoded with validation; a malformed one is answered with
//!   [`TaskError::Malformed`] and changes nothing.
//! * Only cluster pools run tasks from peers: a node's admin pool (which can stop it)
//!   answers to its own clients only.
//! * Periodic tasks are not sent to other nodes (their cancel handle is local):
//!   [`TaskError::PeriodicAcrossNodes`].
//! * A task that runs for a uid without admin rights (see `crate::quota`) runs for it
//!   on every node: its frame names the uid ([`RunTask::caller`]), and the receiving
//!   node counts it against its own quotas of that uid (refusing it past the uid's stack
//!   overflows) and gives its handlers that caller. The frame comes from an
//!   authenticated peer, which is trusted to name the uid its own client has.
use super::{Replica, Shared};
use crate::admin_api::{CreatePoolRequest, PoolInfo};
use crate::bulk::{ArchivedBulkWire, BulkShare, HeldRange};
use crate::cluster::frame::{
    decode_answer, decode_answer_carrying, decode_frame_carrying, encode_answer,
    encode_answer_carrying, encode_frame, encode_frame_carrying, Answer, BulkSegment, Frame,
    Outcome, PoolRecord, RunTask,
};
use crate::codec::{aligned_copy, Bytes};
use crate::config::NetworkingConfig;
use crate::error::TaskError;
use crate::ids::{ContainerId, MethodId, NodeId, PoolId, TaskNode};
use crate::peer::{
    FrameHandler, NetError, PeerNetwork, Responder, MAX_FRAME_BYTES, MAX_TASK_BULK_BYTES,
};
use crate::query::{Placement, PoolQuery};
use crate::runtime::module::ModuleEntry;
use crate::runtime::pool_table::Lookup;
use crate::runtime::task::{
    lock, Completion, Reply, ReplyKey, ReplySink, ReplyTo, Schedule, TaskInput,
};
use crate::runtime::worker::ThreadRole;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// Room a frame needs besides a task's input (its header fields and container list).
const FRAME_OVERHEAD: usize = 64 << 10;

/// Who waits for a pool request node 0 serves.
type PoolWaiter = Box<dyn FnOnce(Result<PoolRecord, TaskError>) + Send>;

/// A pool name in node 0's registry.
enum Registration {
    /// Being built on the nodes; these requesters wait for it.
    Creating {
        record: PoolRecord,
        waiters: Vec<PoolWaiter>,
    },
    /// Built.
    Ready(PoolRecord),
}

/// This runtime's place in its cluster.
pub(crate) struct ClusterNode {
    pub(crate) net: Arc<dyn PeerNetwork>,
    pub(crate) this_node: NodeId,
    nodes: u32,
    pub(crate) force_net: bool,
    neighborhood: usize,
    pub(crate) timeout: Duration,
    /// Node 0 only: every pool of the cluster, by name.
    registry: Mutex<HashMap<String, Registration>>,
}

impl ClusterNode {
    pub(crate) fn new(net: Arc<dyn PeerNetwork>, config: &NetworkingConfig) -> ClusterNode {
        ClusterNode {
            this_node: net.this_node(),
            nodes: net.nodes().max(1),
            net,
            force_net: config.force_net,
            neighborhood: config.neighborhood_size.max(1) as usize,
            timeout: config.rpc_timeout,
            registry: Mutex::new(HashMap::new()),
        }
    }

    fn placement(&self) -> Placement {
        Placement {
            this_node: self.this_node,
            nodes: self.nodes,
        }
    }

    /// How long a pool request to node 0 may take: node 0 waits up to one deadline for
    /// the other nodes' installs.
    fn pool_timeout(&self) -> Duration {
        self.timeout.saturating_mul(3)
    }
}

/// Refuses, before anything is queued, a task that cannot go to node `node`; claims
/// and returns the ranges of the client's share its bulk arguments reference, which its
/// frames carry (see [`CarriedBulk`]).
pub(super) fn check_remote_task(
    module: &ModuleEntry,
    method: MethodId,
    input: &[u8],
    share: Option<&Arc<BulkShare>>,
    schedule: Option<Schedule>,
    node: NodeId,
) -> Result<Option<Arc<CarriedBulk>>, TaskError> {
    if let Some(Schedule::Periodic(_)) = schedule {
        return Err(TaskError::PeriodicAcrossNodes { node });
    }
    let carried = match share {
        Some(share) => CarriedBulk::of_input(module, method, input, share)?,
        None => None,
    };
    let carried_len = carried.as_ref().map_or(0, |carried| carried.len);
    if carried_len > MAX_TASK_BULK_BYTES {
        return Err(TaskError::FrameTooLarge {
            len: carried_len as u64,
            max: MAX_TASK_BULK_BYTES as u64,
        });
    }
    let max = MAX_FRAME_BYTES - FRAME_OVERHEAD;
    let len = input.len().saturating_add(carried_len);
    if len > max {
        return Err(TaskError::FrameTooLarge {
            len: len as u64,
            max: max as u64,
        });
    }
    Ok(carried)
}

/// The bulk ranges a task's frames carry: the ranges of the submitting client's share
/// (or, on a node that forwards the task, of the ranges carried to it) that its input
/// references, each claimed — exclusively where the handler writes it — from before
/// the first frame is built until every frame is answered. So the bytes a frame carries
/// are what the client's buffers held when the task was sent, no task of this node
/// writes a range that a remote handler writes meanwhile, and the written bytes coming
/// back land in ranges nothing else uses.
pub(super) struct CarriedBulk {
    /// Every range, in the order the frames carry them.
    segments: Vec<BulkSegment>,
    /// The claim on each, in the same order.
    held: Vec<HeldRange>,
    /// Their total length in bytes.
    len: usize,
}

impl CarriedBulk {
    /// The ranges `input`'s bulk arguments reference in `share` (`None` when they
    /// all travel inline). A reference outside the share, or overlapping a range
    /// another task (or argument) holds for writing, fails here: nothing is sent.
    fn of_input(
        module: &ModuleEntry,
        method: MethodId,
        input: &[u8],
        share: &Arc<BulkShare>,
    ) -> Result<Option<Arc<CarriedBulk>>, TaskError> {
        let mut segments = Vec::new();
        (module.visit_bulk)(method, input, &mut |arg, writes| {
            if let ArchivedBulkWire::Shared { offset, len } = arg {
                segments.push(BulkSegment {
                    offset: offset.to_native(),
                    len: len.to_native(),
                    writes,
                });
            }
        })?;
        if segments.is_empty() {
            return Ok(None);
        }
        CarriedBulk::claim(share, segments).map(Some)
    }

    /// Claims `segments` of `share`.
    fn claim(share: &Arc<BulkShare>, segments: Vec<BulkSegment>) -> Result<Arc<Self>, TaskError> {
        let mut held = Vec::with_capacity(segments.len());
        let mut len = 0usize;
        for segment in &segments {
            let range = HeldRange::take(share, segment.offset, segment.len, segment.writes)?;
            len = len
                .checked_add(range.len())
                .ok_or(TaskError::FrameTooLarge {
                    len: u64::MAX,
                    max: MAX_FRAME_BYTES as u64,
                })?;
            held.push(range);
        }
        Ok(Arc::new(CarriedBulk {
            segments,
            held,
            len,
        }))
    }

    /// Copies every range, one after the other, into `dst` (of [`Self::len`] bytes).
    fn copy_to(&self, dst: &mut [u8]) {
        let mut at = 0;
        for range in &self.held {
            let end = at + range.len();
            range.copy_to(&mut dst[at..end]);
            at = end;
        }
    }

    /// The ranges the handler writes, in order.
    fn written(&self) -> impl Iterator<Item = (&BulkSegment, &HeldRange)> {
        self.segments
            .iter()
            .zip(&self.held)
            .filter(|(segment, _)| segment.writes)
    }

    /// Writes the written ranges an answer of `node` carries (`bytes`) back where they
    /// came from. All or nothing: an answer whose ranges are not exactly the written
    /// ones, in order, with their lengths, writes nothing and is an error.
    fn write_back(
        &self,
        node: NodeId,
        written: &[BulkSegment],
        bytes: &[u8],
    ) -> Result<(), TaskError> {
        let expected: Vec<BulkSegment> = self.written().map(|(segment, _)| *segment).collect();
        let expected_len: u64 = expected.iter().map(|segment| segment.len).sum();
        if written != expected.as_slice() || bytes.len() as u64 != expected_len {
            return Err(TaskError::NodeFailed {
                node,
                reason: format!(
                    "its answer carries {} written bulk range(s) of {} bytes in all where {} of {expected_len} bytes were sent; the caller's buffers were left as they were",
                    written.len(),
                    bytes.len(),
                    expected.len(),
                ),
            });
        }
        let mut at = 0;
        for (segment, range) in self.written() {
            let end = at + segment.len as usize;
            if !range.copy_from(&bytes[at..end]) {
                return Err(TaskError::malformed(
                    "bulk result",
                    "a written range was not held for writing",
                ));
            }
            at = end;
        }
        Ok(())
    }
}

/// Where the results of replicas sent to other nodes go.
pub(super) enum RemoteReply {
    /// The task's one replica.
    One(Reply),
    /// A completion gathering every replica's result.
    Many(Arc<Completion>),
    /// Nobody (fire-and-forget).
    Nobody,
}

impl RemoteReply {
    /// The target for one frame's containers: the completion shared, or the one reply.
    fn part(&mut self) -> RemoteReply {
        match self {
            RemoteReply::Many(completion) => RemoteReply::Many(completion.clone()),
            RemoteReply::One(_) => std::mem::replace(self, RemoteReply::Nobody),
            RemoteReply::Nobody => RemoteReply::Nobody,
        }
    }

    fn deliver(&mut self, container: ContainerId, result: Result<&[u8], TaskError>) {
        match self {
            RemoteReply::Many(completion) => {
                completion.deliver(container, result.map(aligned_copy));
            }
            RemoteReply::One(_) => {
                if let RemoteReply::One(reply) = std::mem::replace(self, RemoteReply::Nobody) {
                    reply.deliver(container, result);
                }
            }
            RemoteReply::Nobody => {}
        }
    }
}

/// A task to send: what every frame of it carries.
pub(super) struct Outgoing<'a> {
    pub(super) pool: PoolId,
    pub(super) method: MethodId,
    pub(super) query: PoolQuery,
    pub(super) depth: u32,
    pub(super) input: &'a [u8],
    /// The bulk ranges every frame carries.
    pub(super) carried: Option<&'a Arc<CarriedBulk>>,
    /// The uid without admin rights the task runs for (see [`RunTask::caller`]).
    pub(super) caller: Option<u32>,
    /// The epoch parity the task is counted in: each frame is counted in flight in it
    /// until answered, so a flush (or a stop's drain) on this node waits for it.
    pub(super) parity: u8,
}

/// The task error for a call to `node` the network could not complete.
fn node_error(node: NodeId, error: NetError) -> TaskError {
    match error {
        NetError::DeadlineExceeded { node, timeout_ms } => {
            TaskError::NodeTimeout { node, timeout_ms }
        }
        other => TaskError::NodeFailed {
            node,
            reason: other.to_string(),
        },
    }
}

/// The per-container results of an answer of `head` to a task frame, once the bulk
/// ranges it carries are written back into `carried` (all or nothing); an error for the
/// whole frame otherwise.
fn results_of(
    head: NodeId,
    answer: Result<Vec<u8>, NetError>,
    carried: Option<&CarriedBulk>,
) -> Result<Vec<(ContainerId, Outcome)>, TaskError> {
    let bytes = answer.map_err(|error| node_error(head, error))?;
    let failed = |reason: String| TaskError::NodeFailed { node: head, reason };
    match decode_answer_carrying(&bytes) {
        Ok((Answer::Results { results, written }, carried_bytes)) => {
            match carried {
                Some(carried) => carried.write_back(head, &written, &bytes[carried_bytes])?,
                None if written.is_empty() && carried_bytes.is_empty() => {}
                None => {
                    return Err(failed(
                        "its answer carries bulk bytes for a task that sent none".to_owned(),
                    ))
                }
            }
            Ok(results)
        }
        Ok((Answer::Failed(error), _)) => Err(error),
        Ok(_) => Err(failed(
            "it answered a task with something else than its results".to_owned(),
        )),
        Err(error) => Err(failed(error.to_string())),
    }
}

/// Delivers one frame's answer: writes the bulk ranges it carries back (before anyone
/// hears of the results), releases the frame's claims, then delivers one result per
/// container in `expected`.
fn deliver_answer(
    head: NodeId,
    expected: &[ContainerId],
    answer: Result<Vec<u8>, NetError>,
    mut reply: RemoteReply,
    carried: Option<Arc<CarriedBulk>>,
) {
    let results = results_of(head, answer, carried.as_deref());
    // The claims go before the results, whatever the answer: whoever the results wake
    // may use the ranges at once.
    drop(carried);
    let results = match results {
        Ok(results) => results,
        Err(error) => {
            for &container in expected {
                reply.deliver(container, Err(error.clone()));
            }
            return;
        }
    };
    let mut by_container: HashMap<ContainerId, Outcome> = results.into_iter().collect();
    for &container in expected {
        match by_container.remove(&container) {
            Some(Outcome::Output(output)) => reply.deliver(container, Ok(&output)),
            Some(Outcome::Failed(error)) => reply.deliver(container, Err(error)),
            None => reply.deliver(
                container,
                Err(TaskError::NodeFailed {
                    node: head,
                    reason: format!("its answer has no result for container {container}"),
                }),
            ),
        }
    }
}

/// Answers a peer's frame.
fn respond_with(responder: Responder, answer: &Answer) {
    let bytes = encode_answer(answer)
        .or_else(|error| encode_answer(&Answer::Failed(error)))
        .unwrap_or_default();
    responder.respond(bytes);
}

/// Gathers the results of a task a peer sent and answers it once all are in, with the
/// bytes of the bulk ranges its handlers write.
struct AnswerSink {
    responder: Mutex<Option<Responder>>,
    /// The ranges carried with the task, when it has written ones.
    carried: Option<(Arc<BulkShare>, Vec<BulkSegment>)>,
}

impl AnswerSink {
    fn send(&self, results: Vec<(ContainerId, Outcome)>) {
        let Some(responder) = lock(&self.responder).take() else {
            return;
        };
        let Some((share, segments)) = &self.carried else {
            return respond_with(
                responder,
                &Answer::Results {
                    results,
                    written: Vec::new(),
                },
            );
        };
        // Every replica has delivered, so its claims are gone: these reads conflict with
        // nothing but a runaway handler, which fails the answer rather than race it.
        let written: Vec<BulkSegment> = segments.iter().filter(|s| s.writes).copied().collect();
        let held: Result<Vec<HeldRange>, TaskError> = written
            .iter()
            .map(|segment| HeldRange::take(share, segment.offset, segment.len, false))
            .collect();
        let held = match held {
            Ok(held) => held,
            Err(error) => return respond_with(responder, &Answer::Failed(error)),
        };
        let len = held.iter().map(HeldRange::len).sum();
        let answer = Answer::Results { results, written };
        let bytes = encode_answer_carrying(&answer, len, |dst| {
            let mut at = 0;
            for range in &held {
                let end = at + range.len();
                range.copy_to(&mut dst[at..end]);
                at = end;
            }
        })
        .or_else(|error| encode_answer(&Answer::Failed(error)))
        .unwrap_or_default();
        responder.respond(bytes);
    }
}

fn outcome(result: Result<&[u8], TaskError>) -> Outcome {
    match result {
        Ok(output) => Outcome::Output(output.to_vec()),
        Err(error) => Outcome::Failed(error),
    }
}

impl ReplySink for AnswerSink {
    fn complete(&self, _key: ReplyKey, results: Vec<(ContainerId, Result<Bytes, TaskError>)>) {
        let results = results
            .into_iter()
            .map(|(container, result)| {
                let outcome = match result {
                    Ok(output) => Outcome::Output(output.to_vec()),
                    Err(error) => Outcome::Failed(error),
                };
                (container, outcome)
            })
            .collect();
        self.send(results);
    }

    fn complete_one(
        &self,
        _key: ReplyKey,
        container: ContainerId,
        result: Result<&[u8], TaskError>,
    ) {
        self.send(vec![(container, outcome(result))]);
    }
}

/// A value handed from a network thread to a waiting task or thread, once.
struct Rendezvous<T> {
    value: Mutex<Option<T>>,
    set: AtomicBool,
    done: Arc<Completion>,
}

impl<T: Send + 'static> Rendezvous<T> {
    fn new() -> Arc<Self> {
        Arc::new(Rendezvous {
            value: Mutex::new(None),
            set: AtomicBool::new(false),
            done: Completion::new(1),
        })
    }

    fn set(&self, value: T) {
        if !self.set.swap(true, Ordering::AcqRel) {
            *lock(&self.value) = Some(value);
            self.done.deliver(0, Ok(Bytes::new()));
        }
    }

    /// Waits (parking the coroutine or thread) for the value; the network answers every
    /// call by its deadline, so this ends.
    fn wait(&self) -> Option<T> {
        self.done.wait();
        lock(&self.value).take()
    }
}

/// Checks that a second request for a pool asks for the pool that exists.
fn same_request(record: &PoolRecord, request: &CreatePoolRequest) -> Result<(), TaskError> {
    let have = &record.request;
    let mismatch = |what: &str| {
        Err(TaskError::PoolMismatch {
            name: have.pool_name.clone(),
            what: what.to_owned(),
        })
    };
    if have.module != request.module {
        return mismatch("module");
    }
    if have.containers != request.containers.max(1) {
        return mismatch("container count");
    }
    if have.params != request.params {
        return mismatch("create parameters");
    }
    Ok(())
}

/// Counts the answers of one round of calls to every other node.
struct Round {
    left: AtomicUsize,
    first_error: Mutex<Option<TaskError>>,
}

impl Round {
    fn new(calls: usize) -> Arc<Round> {
        Arc::new(Round {
            left: AtomicUsize::new(calls),
            first_error: Mutex::new(None),
        })
    }

    /// Records one answer; true for the last.
    fn answered(&self, error: Option<TaskError>) -> bool {
        if let Some(error) = error {
            lock(&self.first_error).get_or_insert(error);
        }
        self.left.fetch_sub(1, Ordering::AcqRel) == 1
    }

    fn result(&self) -> Result<(), TaskError> {
        lock(&self.first_error).take().map_or(Ok(()), Err)
    }
}

/// What an answer to an install or uninstall says: a task error of the node's, or
/// nothing (done, or the node could not be asked — it catches up when it next asks).
fn install_error(node: NodeId, answer: Result<Vec<u8>, NetError>, what: &str) -> Option<TaskError> {
    match answer.map(|bytes| decode_answer(&bytes)) {
        Ok(Ok(Answer::Done)) => None,
        Ok(Ok(Answer::Failed(error))) => Some(error),
        Ok(Ok(_)) => Some(TaskError::NodeFailed {
            node,
            reason: format!("it answered a pool {what} with something else"),
        }),
        Ok(Err(error)) => Some(TaskError::NodeFailed {
            node,
            reason: error.to_string(),
        }),
        Err(error) => {
            tracing::warn!(node, "pool {what} did not reach the node ({error}); it catches up when it next asks node 0");
            None
        }
    }
}

/// Receives the frames peers send to this node.
struct NodeHandler(Weak<Shared>);

impl FrameHandler for NodeHandler {
    fn handle(&self, from: NodeId, frame: Vec<u8>, respond: Responder) {
        match self.0.upgrade() {
            Some(shared) => shared.serve_frame(from, frame, respond),
            None => respond_with(respond, &Answer::Failed(TaskError::RuntimeStopped)),
        }
    }

    fn peer_left(&self, node: NodeId) {
        tracing::info!(node, "a peer left the cluster");
    }
}

impl Shared {
    fn cluster_node(&self) -> Option<&ClusterNode> {
        self.cluster.as_deref()
    }

    /// Sends `containers`' replicas of `task` (all on other nodes, or on this one under
    /// force-net) through the tree, delivering their results into `reply`.
    pub(super) fn send_remote(
        &self,
        cluster: &ClusterNode,
        task: &Outgoing<'_>,
        placement: Placement,
        containers: Vec<ContainerId>,
        timeout: Duration,
        mut reply: RemoteReply,
    ) {
        let mut by_node: BTreeMap<NodeId, Vec<ContainerId>> = BTreeMap::new();
        for container in containers {
            by_node
                .entry(placement.node_of(container))
                .or_default()
                .push(container);
        }
        let nodes: Vec<NodeId> = by_node.keys().copied().collect();
        let run = nodes.len().div_ceil(cluster.neighborhood).max(1);
        let fire_and_forget = matches!(reply, RemoteReply::Nobody);
        let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        for chunk in nodes.chunks(run) {
            let expected: Vec<ContainerId> = chunk
                .iter()
                .flat_map(|node| by_node.get(node).into_iter().flatten().copied())
                .collect();
            let head = chunk[0];
            let mut part = reply.part();
            let frame = Frame::Run(RunTask {
                pool: task.pool,
                method: task.method,
                query: task.query,
                depth: task.depth,
                containers: expected.clone(),
                fire_and_forget,
                timeout_ms,
                input: task.input.to_vec(),
                bulk: task
                    .carried
                    .map_or_else(Vec::new, |carried| carried.segments.clone()),
                caller: task.caller,
            });
            let carried = task.carried.cloned();
            let carried_len = carried.as_ref().map_or(0, |carried| carried.len);
            let encoded = encode_frame_carrying(&frame, carried_len, |dst| {
                if let Some(carried) = &carried {
                    carried.copy_to(dst);
                }
            });
            match encoded {
                Ok(bytes) => {
                    self.inflight.started(task.parity, ThreadRole::Other);
                    let (me, parity) = (self.me.clone(), task.parity);
                    cluster.net.call(
                        head,
                        bytes,
                        timeout,
                        Box::new(move |answer| {
                            deliver_answer(head, &expected, answer, part, carried);
                            if let Some(shared) = me.upgrade() {
                                shared.inflight.uncount(parity, ThreadRole::Other);
                            }
                        }),
                    );
                }
                Err(error) => {
                    for &container in &expected {
                        part.deliver(container, Err(error.clone()));
                    }
                }
            }
        }
    }

    /// One frame from a peer (or from this node under force-net).
    fn serve_frame(&self, from: NodeId, bytes: Vec<u8>, respond: Responder) {
        let Some(cluster) = self.cluster_node() else {
            return respond_with(respond, &Answer::Failed(TaskError::RuntimeStopped));
        };
        let (frame, carried) = match decode_frame_carrying(&bytes) {
            Ok(decoded) => decoded,
            Err(error) => {
                tracing::warn!(from, "a peer sent a malformed frame: {error}");
                return respond_with(respond, &Answer::Failed(error));
            }
        };
        let not_node_zero = || {
            Answer::Failed(TaskError::NodeFailed {
                node: cluster.this_node,
                reason: "pools are created and destroyed through node 0, and this is not node 0"
                    .to_owned(),
            })
        };
        if !matches!(frame, Frame::Run(_)) && !carried.is_empty() {
            tracing::warn!(from, "a peer sent bytes after a frame that carries none");
            return respond_with(
                respond,
                &Answer::Failed(TaskError::malformed(
                    "frame",
                    "only a task carries bytes after its archive",
                )),
            );
        }
        match frame {
            Frame::Run(task) => self.serve_run(cluster, task, (bytes, carried), respond),
            Frame::CreatePool(request) if cluster.this_node == 0 => self.cluster_create(
                cluster,
                request,
                Box::new(move |result| {
                    let answer = match result {
                        Ok(record) => Answer::Pool(record),
                        Err(error) => Answer::Failed(error),
                    };
                    respond_with(respond, &answer);
                }),
            ),
            Frame::DestroyPool(id) if cluster.this_node == 0 => self.destroy_everywhere(
                cluster,
                id,
                Box::new(move |result| {
                    let answer = match result {
                        Ok(()) => Answer::Done,
                        Err(error) => Answer::Failed(error),
                    };
                    respond_with(respond, &answer);
                }),
            ),
            Frame::ListPools => respond_with(respond, &Answer::Pools(self.cluster_records())),
            Frame::CreatePool(_) | Frame::DestroyPool(_) => {
                respond_with(respond, &not_node_zero());
            }
            Frame::InstallPool(record) => {
                let answer = match self.install(cluster, &record, true) {
                    Ok(_) => Answer::Done,
                    Err(error) => Answer::Failed(error),
                };
                respond_with(respond, &answer);
            }
            Frame::UninstallPool(id) => {
                let answer = match self.destroy_here((0, TaskNode::default()), id) {
                    Ok(()) | Err(TaskError::UnknownPool { .. }) => Answer::Done,
                    Err(error) => Answer::Failed(error),
                };
                respond_with(respond, &answer);
            }
        }
    }

    /// Runs a task a peer sent on the containers this node holds, forwards the rest
    /// down the tree, and answers with every container's result. `frame` is the frame's
    /// bytes and where the bulk ranges it carries lie in them: the task's handlers (and
    /// the frames forwarding it) use them in place.
    fn serve_run(
        &self,
        cluster: &ClusterNode,
        task: RunTask,
        frame: (Vec<u8>, std::ops::Range<usize>),
        respond: Responder,
    ) {
        let fail = |respond, error| respond_with(respond, &Answer::Failed(error));
        let parent = (task.depth > 0).then(|| TaskNode {
            depth: task.depth - 1,
            ..TaskNode::default()
        });
        if !self.accepts(parent) {
            return fail(respond, TaskError::RuntimeStopped);
        }
        let max = self.config.max_task_depth;
        if task.depth > max {
            return fail(
                respond,
                TaskError::TooDeep {
                    depth: task.depth,
                    max,
                },
            );
        }
        // Only the cluster's pools take tasks from peers: a node's own pools (its admin
        // pool, which can stop it) answer to its own clients only.
        let Some(entry) = self
            .pools
            .get(task.pool)
            .filter(|entry| entry.pool.clustered)
        else {
            return fail(respond, TaskError::UnknownPool { pool: task.pool });
        };
        let pool = &entry.pool;
        let module = pool.module;
        if module.info.method(task.method).is_none() {
            return fail(
                respond,
                TaskError::UnknownMethod {
                    module: module.info.name.to_owned(),
                    method: task.method,
                },
            );
        }
        let placement = pool.placement;
        let count = pool.container_count();
        // A task the sending node runs for a uid without admin rights runs for it here
        // too: counted against this node's quotas of the uid (refused at once past its
        // stack overflows, as its own clients' tasks are), and seen by the handlers as
        // their caller.
        let quotas = task.caller.map(|uid| self.uids.of(uid));
        if let Some(quotas) = quotas.as_ref().filter(|quotas| quotas.overflows_spent()) {
            return fail(respond, quotas.overflow_error());
        }
        let (bytes, carried) = frame;
        let share = if task.bulk.is_empty() {
            if !carried.is_empty() {
                return fail(
                    respond,
                    TaskError::malformed("frame", "a task without bulk ranges carries bytes"),
                );
            }
            quotas.map(BulkShare::for_uid)
        } else {
            let ranges = task
                .bulk
                .iter()
                .map(|segment| (segment.offset, segment.len));
            match BulkShare::carried(bytes, carried, ranges) {
                Ok(share) => Some(Arc::new(share.with_quotas(quotas))),
                Err(error) => return fail(respond, error),
            }
        };
        let mut containers = task.containers;
        containers.sort_unstable();
        containers.dedup();
        let (local, forward): (Vec<ContainerId>, Vec<ContainerId>) = containers
            .iter()
            .partition(|container| placement.is_local(**container));
        let completion = if task.fire_and_forget {
            respond_with(
                respond,
                &Answer::Results {
                    results: Vec::new(),
                    written: Vec::new(),
                },
            );
            None
        } else {
            let writes = task.bulk.iter().any(|segment| segment.writes);
            let sink = AnswerSink {
                responder: Mutex::new(Some(respond)),
                carried: share
                    .clone()
                    .filter(|_| writes)
                    .map(|share| (share, task.bulk.clone())),
            };
            let sink = ReplyTo::new(Arc::new(sink), ReplyKey([0; 3]));
            Some(Completion::with_sink(containers.len() as u32, sink))
        };
        let reply = |completion: &Option<Arc<Completion>>| match completion {
            Some(completion) => RemoteReply::Many(completion.clone()),
            None => RemoteReply::Nobody,
        };
        let forward: Vec<ContainerId> = forward.into_iter().filter(|c| *c < count).collect();
        if !forward.is_empty() {
            // The nodes below get the ranges this node was given, claimed like a client's.
            let carried = share
                .as_ref()
                .map(|share| CarriedBulk::claim(share, task.bulk.clone()))
                .transpose();
            match carried {
                Ok(carried) => {
                    let outgoing = Outgoing {
                        pool: task.pool,
                        method: task.method,
                        query: task.query,
                        depth: task.depth,
                        input: &task.input,
                        carried: carried.as_ref(),
                        caller: task.caller,
                        parity: self.inflight.parity(),
                    };
                    // Three quarters of this node's own deadline: a failure below is
                    // reported (naming the node that failed) before the caller's
                    // deadline passes.
                    let timeout = Duration::from_millis(task.timeout_ms.min(3_600_000) / 4 * 3)
                        .max(Duration::from_millis(1));
                    self.send_remote(
                        cluster,
                        &outgoing,
                        placement,
                        forward,
                        timeout,
                        reply(&completion),
                    );
                }
                Err(error) => {
                    let mut reply = reply(&completion);
                    for container in forward {
                        reply.part().deliver(container, Err(error.clone()));
                    }
                }
            }
        }
        let mut reply = reply(&completion);
        for &container in &containers {
            if container >= count {
                reply.deliver(
                    container,
                    Err(TaskError::NoSuchContainer {
                        pool: task.pool,
                        container,
                        containers: count,
                    }),
                );
            }
        }
        if local.is_empty() {
            return;
        }
        let id = self.next_task_id(ThreadRole::Other);
        let parity = self.inflight.parity();
        let node = TaskNode {
            root: id,
            depth: task.depth,
            ..TaskNode::default()
        }
        .counted_in(parity);
        let replica = Replica {
            entry: &entry,
            id,
            method: task.method,
            query: task.query,
            node,
            parity,
            periodic: None,
            local_worker: None,
        };
        let input = aligned_copy(&task.input);
        let local: Vec<ContainerId> = local.into_iter().filter(|c| *c < count).collect();
        for (index, &container) in local.iter().enumerate() {
            let input = if index + 1 == local.len() {
                input.clone()
            } else {
                match (module.new_copy)(task.method, &input) {
                    Ok(copy) => copy,
                    Err(error) => {
                        reply.part().deliver(container, Err(error));
                        continue;
                    }
                }
            };
            let mut input = TaskInput::from(input);
            // Its copy counts against the uid's memory here too, as on the client's node.
            if let Some(quotas) = share.as_ref().and_then(|share| share.quotas()) {
                if let Err(error) = input.charge(quotas) {
                    reply.part().deliver(container, Err(error));
                    continue;
                }
            }
            let reply = completion.clone().map(Reply::Waiter);
            self.push_replica(&replica, container, &mut input, reply, share.clone());
        }
    }

    /// Gets or creates a cluster pool through node 0 and returns this node's view of it.
    pub(super) fn cluster_get_or_create(
        &self,
        cluster: &ClusterNode,
        request: &CreatePoolRequest,
    ) -> Result<PoolInfo, TaskError> {
        let rendezvous = Rendezvous::new();
        let waiter = {
            let rendezvous = rendezvous.clone();
            Box::new(move |result| rendezvous.set(result)) as PoolWaiter
        };
        if cluster.this_node == 0 {
            self.cluster_create(cluster, request.clone(), waiter);
        } else {
            let frame = encode_frame(&Frame::CreatePool(request.clone()))?;
            cluster.net.call(
                0,
                frame,
                cluster.pool_timeout(),
                Box::new(move |answer| {
                    waiter(match answer {
                        Ok(bytes) => match decode_answer(&bytes) {
                            Ok(Answer::Pool(record)) => Ok(record),
                            Ok(Answer::Failed(error)) => Err(error),
                            Ok(_) => Err(TaskError::NodeFailed {
                                node: 0,
                                reason: "it answered a pool request with something else".to_owned(),
                            }),
                            Err(error) => Err(TaskError::NodeFailed {
                                node: 0,
                                reason: error.to_string(),
                            }),
                        },
                        Err(error) => Err(node_error(0, error)),
                    })
                }),
            );
        }
        let record = rendezvous.wait().unwrap_or(Err(TaskError::NotRun))?;
        // Node 0 installed it here before answering, unless this node missed that call.
        self.install(cluster, &record, true)
    }

    /// Builds this node's part of a cluster pool, unless it has it already. A record
    /// from node 0 (`from_node_zero`) is the truth: a cluster pool of the same name and
    /// another id here is stale (destroyed while this node was cut off) and goes first.
    fn install(
        &self,
        cluster: &ClusterNode,
        record: &PoolRecord,
        from_node_zero: bool,
    ) -> Result<PoolInfo, TaskError> {
        if let Some(entry) = self.pools.get(record.id) {
            return Ok(entry.info());
        }
        let request = &record.request;
        if let Lookup::Existing(entry) = self.pools.by_name(&request.pool_name) {
            if from_node_zero && entry.pool.clustered {
                let stale = entry.pool.id;
                tracing::warn!(pool = %request.pool_name, %stale, id = %record.id, "replacing a stale pool of this name with node 0's");
                let _ = self.destroy_here((0, TaskNode::default()), stale);
                return self.install(cluster, record, false);
            }
            return Err(TaskError::PoolMismatch {
                name: request.pool_name.clone(),
                what: format!(
                    "id (node {} has it as {}, node 0 as {})",
                    cluster.this_node, entry.pool.id, record.id
                ),
            });
        }
        let max = self.config.max_containers_per_pool;
        if request.containers > max {
            return Err(TaskError::TooManyContainers {
                asked: request.containers,
                max,
            });
        }
        self.build_pool(
            (0, TaskNode::default()),
            request,
            record.id,
            cluster.placement(),
            true,
            super::PoolOwner::default(),
        )
    }

    /// Node 0: answers `waiter` with the pool of `request`'s name, creating it on every
    /// node if there is none.
    fn cluster_create(
        &self,
        cluster: &ClusterNode,
        request: CreatePoolRequest,
        waiter: PoolWaiter,
    ) {
        let mut request = request;
        request.containers = request.containers.max(1);
        let max = self.config.max_containers_per_pool;
        if request.containers > max {
            return waiter(Err(TaskError::TooManyContainers {
                asked: request.containers,
                max,
            }));
        }
        if !self.modules.contains_key(request.module.as_str()) {
            return waiter(Err(TaskError::UnknownModule {
                module: request.module,
            }));
        }
        let mut registry = lock(&cluster.registry);
        let record = match registry.get_mut(&request.pool_name) {
            Some(Registration::Ready(record)) => {
                let result = same_request(record, &request).map(|()| record.clone());
                drop(registry);
                return waiter(result);
            }
            Some(Registration::Creating { record, waiters }) => {
                match same_request(record, &request) {
                    Ok(()) => waiters.push(waiter),
                    Err(error) => {
                        drop(registry);
                        waiter(Err(error));
                    }
                }
                return;
            }
            None => PoolRecord {
                id: self.pools.fresh_id(),
                request,
            },
        };
        registry.insert(
            record.request.pool_name.clone(),
            Registration::Creating {
                record: record.clone(),
                waiters: vec![waiter],
            },
        );
        drop(registry);
        // This node first: a module that cannot build its containers fails the pool
        // before any other node builds it.
        if let Err(error) = self.install(cluster, &record, true) {
            return self.finish_creation(cluster, &record, Err(error));
        }
        let others = cluster.nodes.saturating_sub(1) as usize;
        if others == 0 {
            return self.finish_creation(cluster, &record, Ok(()));
        }
        let frame = match encode_frame(&Frame::InstallPool(record.clone())) {
            Ok(frame) => frame,
            Err(error) => return self.finish_creation(cluster, &record, Err(error)),
        };
        let round = Round::new(others);
        for node in 1..cluster.nodes {
            let (round, record, me) = (round.clone(), record.clone(), self.me.clone());
            cluster.net.call(
                node,
                frame.clone(),
                cluster.timeout,
                Box::new(move |answer| {
                    if round.answered(install_error(node, answer, "install")) {
                        if let Some(shared) = me.upgrade() {
                            if let Some(cluster) = shared.cluster_node() {
                                shared.finish_creation(cluster, &record, round.result());
                            }
                        }
                    }
                }),
            );
        }
    }

    /// Node 0: a creation is over; answers its requesters. A failed one is removed from
    /// every node again.
    fn finish_creation(
        &self,
        cluster: &ClusterNode,
        record: &PoolRecord,
        result: Result<(), TaskError>,
    ) {
        let name = &record.request.pool_name;
        let waiters = {
            let mut registry = lock(&cluster.registry);
            let waiters = match registry.remove(name) {
                Some(Registration::Creating { waiters, .. }) => waiters,
                Some(ready @ Registration::Ready(_)) => {
                    registry.insert(name.clone(), ready);
                    Vec::new()
                }
                None => Vec::new(),
            };
            if result.is_ok() {
                registry.insert(name.clone(), Registration::Ready(record.clone()));
            }
            waiters
        };
        if let Err(error) = &result {
            tracing::warn!(pool = %name, id = %record.id, "pool creation failed on a node, removing it everywhere: {error}");
            self.uninstall_everywhere(cluster, record.id, Box::new(|_| {}));
        }
        let result = result.map(|()| record.clone());
        for waiter in waiters {
            waiter(result.clone());
        }
    }

    /// Destroys a cluster pool through node 0.
    pub(super) fn cluster_destroy(
        &self,
        cluster: &ClusterNode,
        id: PoolId,
    ) -> Result<(), TaskError> {
        let rendezvous = Rendezvous::new();
        let done = {
            let rendezvous = rendezvous.clone();
            Box::new(move |result| rendezvous.set(result))
                as Box<dyn FnOnce(Result<(), TaskError>) + Send>
        };
        if cluster.this_node == 0 {
            self.destroy_everywhere(cluster, id, done);
        } else {
            let frame = encode_frame(&Frame::DestroyPool(id))?;
            cluster.net.call(
                0,
                frame,
                cluster.pool_timeout(),
                Box::new(move |answer| {
                    done(match answer {
                        Ok(bytes) => match decode_answer(&bytes) {
                            Ok(Answer::Done) => Ok(()),
                            Ok(Answer::Failed(error)) => Err(error),
                            Ok(_) => Err(TaskError::NodeFailed {
                                node: 0,
                                reason: "it answered a destroy with something else".to_owned(),
                            }),
                            Err(error) => Err(TaskError::NodeFailed {
                                node: 0,
                                reason: error.to_string(),
                            }),
                        },
                        Err(error) => Err(node_error(0, error)),
                    })
                }),
            );
        }
        rendezvous.wait().unwrap_or(Err(TaskError::NotRun))
    }

    /// Node 0: removes pool `id` from the registry and from every node.
    fn destroy_everywhere(
        &self,
        cluster: &ClusterNode,
        id: PoolId,
        done: Box<dyn FnOnce(Result<(), TaskError>) + Send>,
    ) {
        {
            let mut registry = lock(&cluster.registry);
            let name = registry
                .iter()
                .find_map(|(name, registration)| match registration {
                    Registration::Ready(record) if record.id == id => Some(Ok(name.clone())),
                    Registration::Creating { record, .. } if record.id == id => Some(Err(())),
                    _ => None,
                });
            match name {
                Some(Ok(name)) => {
                    registry.remove(&name);
                }
                Some(Err(())) => {
                    drop(registry);
                    return done(Err(TaskError::failed(
                        "the pool is still being created on the cluster's nodes; destroy it once its creation has returned",
                    )));
                }
                None => {
                    drop(registry);
                    return done(Err(TaskError::UnknownPool { pool: id }));
                }
            }
        }
        self.uninstall_everywhere(cluster, id, done);
    }

    /// Destroys this node's part of `id` and tells every other node to do the same.
    fn uninstall_everywhere(
        &self,
        cluster: &ClusterNode,
        id: PoolId,
        done: Box<dyn FnOnce(Result<(), TaskError>) + Send>,
    ) {
        let here = match self.destroy_here((0, TaskNode::default()), id) {
            Err(TaskError::UnknownPool { .. }) => None,
            other => other.err(),
        };
        let others = cluster.nodes.saturating_sub(1) as usize;
        let frame = match encode_frame(&Frame::UninstallPool(id)) {
            Ok(frame) if others > 0 => frame,
            Ok(_) => return done(here.map_or(Ok(()), Err)),
            Err(error) => return done(Err(here.unwrap_or(error))),
        };
        let round = Round::new(others);
        let done = Arc::new(Mutex::new(Some((done, here))));
        for node in 1..cluster.nodes {
            let (round, done) = (round.clone(), done.clone());
            cluster.net.call(
                node,
                frame.clone(),
                cluster.timeout,
                Box::new(move |answer| {
                    if round.answered(install_error(node, answer, "destroy")) {
                        let taken = lock(&done).take();
                        if let Some((done, here)) = taken {
                            done(here.map_or_else(|| round.result(), Err));
                        }
                    }
                }),
            );
        }
    }

    /// The cluster pools this node holds, as records.
    fn cluster_records(&self) -> Vec<PoolRecord> {
        self.pools
            .list()
            .iter()
            .filter(|entry| entry.pool.clustered)
            .map(|entry| {
                let pool = &entry.pool;
                PoolRecord {
                    id: pool.id,
                    request: CreatePoolRequest {
                        module: pool.module_name().to_owned(),
                        pool_name: pool.name.clone(),
                        containers: pool.container_count(),
                        params: pool.params.clone(),
                    },
                }
            })
            .collect()
    }

    /// At start: serve the peers' frames, and build the pools the cluster already has —
    /// asking node 0, or, on node 0 (restarted), up to `neighborhood_size` other nodes,
    /// whose pools it takes back into its registry so no id is handed out twice.
    pub(super) fn join_cluster(&self) {
        let Some(cluster) = self.cluster_node() else {
            return;
        };
        cluster.net.serve(Arc::new(NodeHandler(self.me.clone())));
        let ask: Vec<NodeId> = if cluster.this_node == 0 {
            (1..cluster.nodes).take(cluster.neighborhood).collect()
        } else {
            vec![0]
        };
        if ask.is_empty() {
            return;
        }
        let frame = match encode_frame(&Frame::ListPools) {
            Ok(frame) => frame,
            Err(error) => {
                tracing::warn!("cannot ask for the cluster's pools: {error}");
                return;
            }
        };
        let rendezvous = Rendezvous::new();
        let round = Round::new(ask.len());
        let found: Arc<Mutex<Vec<PoolRecord>>> = Arc::default();
        for node in ask {
            let (round, found, rendezvous) = (round.clone(), found.clone(), rendezvous.clone());
            cluster.net.call(
                node,
                frame.clone(),
                cluster.timeout,
                Box::new(move |answer| {
                    match answer.map(|bytes| decode_answer(&bytes)) {
                        Ok(Ok(Answer::Pools(records))) => lock(&found).extend(records),
                        other => tracing::debug!(node, "no pool list from the node: {other:?}"),
                    }
                    if round.answered(None) {
                        rendezvous.set(());
                    }
                }),
            );
        }
        rendezvous.wait();
        let mut records = std::mem::take(&mut *lock(&found));
        records.sort_by_key(|record| record.id);
        records.dedup_by_key(|record| record.id);
        for record in records {
            if cluster.this_node == 0 {
                self.pools.reserve(record.id);
                lock(&cluster.registry)
                    .entry(record.request.pool_name.clone())
                    .or_insert_with(|| Registration::Ready(record.clone()));
            }
            if let Err(error) = self.install(cluster, &record, cluster.this_node != 0) {
                tracing::warn!(pool = %record.request.pool_name, "cannot build this node's part of a cluster pool: {error}");
            }
        }
    }
}
