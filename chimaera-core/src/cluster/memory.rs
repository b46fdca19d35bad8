//! An in-memory [`PeerNetwork`]: every node of a cluster in one process, for tests and
//! simulation. Same contract as the gRPC network (see [`crate::peer`]), no sockets.
//!
//! A [`MemoryCluster`] is the wire: it owns a few delivery threads and a timer; each
//! node's runtime gets its end from [`MemoryCluster::endpoint`]. A test can make a node
//! [`Fault::Unreachable`] (its frames are lost, callers hear of it at their deadline),
//! [`Fault::Slow`] (frames reach it after a delay) or gone (its runtime stopped: callers
//! hear at once that it left), and bring it back: a new endpoint for the same node id
//! is that node restarted.
//!
//! # Invariants
//!
//! * **One answer per call.** A call is a pending entry keyed by a fresh id; whoever
//!   removes the entry (the answer, the deadline, a shutdown) calls its [`ReplyFn`],
//!   so it is called exactly once, and always by the deadline (the timer thread
//!   expires it).
//! * **Answers and frames are handed over on the cluster's own threads**, never on the
//!   caller's: `call` only queues.
//! * A frame reaches the handler of the endpoint that serves the node when it is
//!   delivered; a stopped endpoint's handler is dropped, so a restarted node never
//!   sees frames meant for its previous run's handler.
//! * A call made after the [`MemoryCluster`] was dropped is answered at once with
//!   [`NetError::Left`]; calls still pending when it drops are answered then.
//! * Counters: [`MemoryCluster::frames_sent`] counts the calls each node made, so a
//!   test can check a fan-out bound.
use crate::ids::NodeId;
use crate::peer::{
    FrameHandler, NetError, PeerInfo, PeerNetwork, PeerState, ReplyFn, Responder, MAX_FRAME_BYTES,
};
use crate::sync::lock;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What is wrong with a node's link, as a test sets it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Frames arrive at once.
    None,
    /// Frames to the node are lost (a partition): callers hear at their deadline.
    Unreachable,
    /// Frames reach the node after this delay.
    Slow(Duration),
}

/// One node's slot on the wire.
struct Slot {
    handler: Option<Arc<dyn FrameHandler>>,
    /// Which endpoint serves the node (a restart makes a new one).
    generation: u64,
    fault: Fault,
    left: bool,
}

enum Job {
    Deliver {
        call: u64,
        from: NodeId,
        to: NodeId,
        frame: Vec<u8>,
    },
    Answer {
        call: u64,
        result: Result<Vec<u8>, NetError>,
    },
    Expire {
        call: u64,
    },
    /// A call already taken out of the pending table, answered on a delivery thread.
    Reply {
        reply: ReplyFn,
        result: Result<Vec<u8>, NetError>,
    },
    Left {
        to: Arc<dyn FrameHandler>,
        node: NodeId,
    },
}

#[derive(Default)]
struct Schedule {
    ready: VecDeque<Job>,
    timed: BinaryHeap<Reverse<(Instant, u64)>>,
    timed_jobs: HashMap<u64, Job>,
    next_timed: u64,
    stop: bool,
}

struct PendingCall {
    reply: ReplyFn,
    from: NodeId,
    to: NodeId,
    timeout: Duration,
}

struct Wire {
    slots: Vec<Mutex<Slot>>,
    sent: Vec<AtomicU64>,
    pending: Mutex<HashMap<u64, PendingCall>>,
    next_call: AtomicU64,
    schedule: Mutex<Schedule>,
    wake: Condvar,
}

impl Wire {
    fn push(&self, job: Job) {
        lock(&self.schedule).ready.push_back(job);
        self.wake.notify_one();
    }

    fn push_at(&self, at: Instant, job: Job) {
        let mut schedule = lock(&self.schedule);
        let key = schedule.next_timed;
        schedule.next_timed += 1;
        schedule.timed.push(Reverse((at, key)));
        schedule.timed_jobs.insert(key, job);
        drop(schedule);
        self.wake.notify_one();
    }

    /// Answers call `call` if nobody has yet.
    fn finish(&self, call: u64, result: Result<Vec<u8>, NetError>) {
        // Taken out in a statement of its own, so the table's lock is released before the
        // reply runs: a reply may well make the next call.
        let pending = lock(&self.pending).remove(&call);
        if let Some(pending) = pending {
            (pending.reply)(result);
        }
    }

    fn run(self: &Arc<Self>, job: Job) {
        match job {
            Job::Deliver {
                call,
                from,
                to,
                frame,
            } => {
                let handler = lock(&self.slots[to as usize]).handler.clone();
                let Some(handler) = handler else {
                    self.finish(
                        call,
                        Err(NetError::Unreachable {
                            node: to,
                            reason: "its runtime is not running".to_owned(),
                        }),
                    );
                    return;
                };
                let guard = AnswerOnce {
                    wire: Arc::downgrade(self),
                    call,
                    node: to,
                    answered: false,
                };
                handler.handle(
                    from,
                    frame,
                    Responder::new(move |answer| guard.answer(answer)),
                );
            }
            Job::Answer { call, result } => self.finish(call, result),
            Job::Expire { call } => {
                let timeout = lock(&self.pending).get(&call).map(|p| (p.to, p.timeout));
                if let Some((node, timeout)) = timeout {
                    self.finish(
                        call,
                        Err(NetError::DeadlineExceeded {
                            node,
                            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
                        }),
                    );
                }
            }
            Job::Reply { reply, result } => reply(result),
            Job::Left { to, node } => to.peer_left(node),
        }
    }

    /// The delivery loop of one thread: runs due timed jobs and ready ones.
    fn serve(self: Arc<Self>) {
        loop {
            let job = {
                let mut schedule = lock(&self.schedule);
                loop {
                    if schedule.stop {
                        return;
                    }
                    let now = Instant::now();
                    while let Some(Reverse((at, key))) = schedule.timed.peek().copied() {
                        if at > now {
                            break;
                        }
                        schedule.timed.pop();
                        if let Some(job) = schedule.timed_jobs.remove(&key) {
                            schedule.ready.push_back(job);
                        }
                    }
                    if let Some(job) = schedule.ready.pop_front() {
                        break job;
                    }
                    let wait = schedule
                        .timed
                        .peek()
                        .map(|Reverse((at, _))| at.saturating_duration_since(now));
                    schedule = match wait {
                        Some(wait) => {
                            self.wake
                                .wait_timeout(schedule, wait)
                                .unwrap_or_else(|poisoned| poisoned.into_inner())
                                .0
                        }
                        None => self
                            .wake
                            .wait(schedule)
                            .unwrap_or_else(|poisoned| poisoned.into_inner()),
                    };
                }
            };
            self.run(job);
        }
    }
}

/// A responder's side of one call: answers once, and a responder dropped unanswered
/// answers with [`NetError::Left`] (as the seam promises).
struct AnswerOnce {
    wire: Weak<Wire>,
    call: u64,
    node: NodeId,
    answered: bool,
}

impl AnswerOnce {
    fn answer(mut self, answer: Vec<u8>) {
        self.answered = true;
        if let Some(wire) = self.wire.upgrade() {
            let result = if answer.len() > MAX_FRAME_BYTES {
                Err(NetError::FrameTooLarge {
                    len: answer.len() as u64,
                    max: MAX_FRAME_BYTES as u64,
                })
            } else {
                Ok(answer)
            };
            wire.push(Job::Answer {
                call: self.call,
                result,
            });
        }
    }
}

impl Drop for AnswerOnce {
    fn drop(&mut self) {
        if !self.answered {
            if let Some(wire) = self.wire.upgrade() {
                wire.push(Job::Answer {
                    call: self.call,
                    result: Err(NetError::Left { node: self.node }),
                });
            }
        }
    }
}

/// Many nodes in one process: the wire between their runtimes.
pub struct MemoryCluster {
    wire: Arc<Wire>,
    threads: Vec<JoinHandle<()>>,
}

impl fmt::Debug for MemoryCluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryCluster")
            .field("nodes", &self.wire.slots.len())
            .finish_non_exhaustive()
    }
}

impl MemoryCluster {
    /// A cluster of `nodes` nodes (at least 1) whose frames `threads` threads (at least
    /// 1) deliver.
    pub fn new(nodes: u32, threads: usize) -> std::io::Result<MemoryCluster> {
        let wire = Arc::new(Wire {
            slots: (0..nodes.max(1))
                .map(|_| {
                    Mutex::new(Slot {
                        handler: None,
                        generation: 0,
                        fault: Fault::None,
                        left: false,
                    })
                })
                .collect(),
            sent: (0..nodes.max(1)).map(|_| AtomicU64::new(0)).collect(),
            pending: Mutex::new(HashMap::new()),
            next_call: AtomicU64::new(1),
            schedule: Mutex::new(Schedule::default()),
            wake: Condvar::new(),
        });
        let mut cluster = MemoryCluster {
            wire,
            threads: Vec::new(),
        };
        for index in 0..threads.max(1) {
            let wire = cluster.wire.clone();
            let thread = std::thread::Builder::new()
                .name(format!("chi-memnet-{index}"))
                .spawn(move || wire.serve())?;
            cluster.threads.push(thread);
        }
        Ok(cluster)
    }

    /// How many nodes.
    pub fn nodes(&self) -> u32 {
        self.wire.slots.len() as u32
    }

    /// Node `node`'s end of the wire, for its runtime
    /// ([`RuntimeBuilder::network`](crate::RuntimeBuilder::network)). A new endpoint for
    /// a node replaces the previous one (the node restarted): its link is healthy again.
    ///
    /// # Panics
    /// If `node` is not below [`nodes`](Self::nodes) (a test's own mistake).
    pub fn endpoint(&self, node: NodeId) -> Arc<MemoryNetwork> {
        assert!(node < self.nodes(), "node {node} is not in this cluster");
        let mut slot = lock(&self.wire.slots[node as usize]);
        slot.generation += 1;
        slot.handler = None;
        slot.fault = Fault::None;
        slot.left = false;
        Arc::new(MemoryNetwork {
            wire: self.wire.clone(),
            node,
            generation: slot.generation,
            shut: AtomicBool::new(false),
        })
    }

    /// Sets what is wrong with `node`'s link from now on.
    pub fn set_fault(&self, node: NodeId, fault: Fault) {
        if let Some(slot) = self.wire.slots.get(node as usize) {
            lock(slot).fault = fault;
        }
    }

    /// Frames node `node` has sent (calls it made) since the last reset.
    pub fn frames_sent(&self, node: NodeId) -> u64 {
        self.wire
            .sent
            .get(node as usize)
            .map_or(0, |sent| sent.load(Ordering::Relaxed))
    }

    /// Sets every node's frame counter to 0.
    pub fn reset_counters(&self) {
        for sent in &self.wire.sent {
            sent.store(0, Ordering::Relaxed);
        }
    }
}

impl Drop for MemoryCluster {
    fn drop(&mut self) {
        lock(&self.wire.schedule).stop = true;
        self.wire.wake.notify_all();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        // No thread delivers any more: whoever still waits hears the network is gone.
        let pending: Vec<_> = lock(&self.wire.pending).drain().collect();
        for (_, call) in pending {
            (call.reply)(Err(NetError::Left { node: call.to }));
        }
    }
}

/// One node's end of a [`MemoryCluster`].
pub struct MemoryNetwork {
    wire: Arc<Wire>,
    node: NodeId,
    generation: u64,
    shut: AtomicBool,
}

impl fmt::Debug for MemoryNetwork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryNetwork")
            .field("node", &self.node)
            .field("nodes", &self.wire.slots.len())
            .finish_non_exhaustive()
    }
}

impl MemoryNetwork {
    /// Whether this endpoint still serves its node (no restart replaced it).
    fn current(&self, slot: &Slot) -> bool {
        slot.generation == self.generation
    }
}

impl PeerNetwork for MemoryNetwork {
    fn this_node(&self) -> NodeId {
        self.node
    }

    fn nodes(&self) -> u32 {
        self.wire.slots.len() as u32
    }

    fn serve(&self, handler: Arc<dyn FrameHandler>) {
        let mut slot = lock(&self.wire.slots[self.node as usize]);
        if self.current(&slot) && !self.shut.load(Ordering::Acquire) {
            slot.handler = Some(handler);
        }
    }

    fn call(&self, node: NodeId, frame: Vec<u8>, timeout: Duration, reply: ReplyFn) {
        if self.shut.load(Ordering::Acquire) {
            reply(Err(NetError::Left { node: self.node }));
            return;
        }
        self.wire.sent[self.node as usize].fetch_add(1, Ordering::Relaxed);
        let call = self.wire.next_call.fetch_add(1, Ordering::Relaxed);
        {
            // Registered under the schedule's lock: either the wire is still running and
            // its drop (which sets `stop` under this lock first) answers the call, or it
            // has stopped and the call is answered here.
            let schedule = lock(&self.wire.schedule);
            if schedule.stop {
                drop(schedule);
                reply(Err(NetError::Left { node: self.node }));
                return;
            }
            lock(&self.wire.pending).insert(
                call,
                PendingCall {
                    reply,
                    from: self.node,
                    to: node,
                    timeout,
                },
            );
        }
        let fail = |error| Job::Answer {
            call,
            result: Err(error),
        };
        let Some(slot) = self.wire.slots.get(node as usize) else {
            self.wire.push(fail(NetError::UnknownNode {
                node,
                nodes: self.nodes(),
            }));
            return;
        };
        if frame.len() > MAX_FRAME_BYTES {
            self.wire.push(fail(NetError::FrameTooLarge {
                len: frame.len() as u64,
                max: MAX_FRAME_BYTES as u64,
            }));
            return;
        }
        let (fault, left) = {
            let slot = lock(slot);
            (slot.fault, slot.left)
        };
        if left {
            self.wire.push(fail(NetError::Left { node }));
            return;
        }
        let now = Instant::now();
        self.wire.push_at(now + timeout, Job::Expire { call });
        let deliver = Job::Deliver {
            call,
            from: self.node,
            to: node,
            frame,
        };
        match fault {
            Fault::None => self.wire.push(deliver),
            Fault::Unreachable => {}
            Fault::Slow(delay) => self.wire.push_at(now + delay, deliver),
        }
    }

    fn peers(&self) -> Vec<PeerInfo> {
        self.wire
            .slots
            .iter()
            .enumerate()
            .map(|(node, slot)| {
                let slot = lock(slot);
                let node = node as NodeId;
                let state = if node == self.node {
                    PeerState::Local
                } else if slot.left {
                    PeerState::Left
                } else if slot.handler.is_none() {
                    PeerState::Connecting
                } else if slot.fault == Fault::Unreachable {
                    PeerState::Down
                } else {
                    PeerState::Up
                };
                PeerInfo {
                    node,
                    address: format!("memory:{node}"),
                    state,
                }
            })
            .collect()
    }

    fn shutdown(&self) {
        if self.shut.swap(true, Ordering::AcqRel) {
            return;
        }
        {
            let mut slot = lock(&self.wire.slots[self.node as usize]);
            if self.current(&slot) {
                slot.handler = None;
                slot.left = true;
            }
        }
        // Calls this node made, and calls made to it, end now.
        let ended: Vec<_> = {
            let mut pending = lock(&self.wire.pending);
            let ids: Vec<u64> = pending
                .iter()
                .filter(|(_, call)| call.from == self.node || call.to == self.node)
                .map(|(id, _)| *id)
                .collect();
            ids.into_iter()
                .filter_map(|id| pending.remove(&id))
                .collect()
        };
        for call in ended {
            let node = if call.from == self.node {
                self.node
            } else {
                call.to
            };
            self.wire.push(Job::Reply {
                reply: call.reply,
                result: Err(NetError::Left { node }),
            });
        }
        for (node, slot) in self.wire.slots.iter().enumerate() {
            if node as NodeId == self.node {
                continue;
            }
            let handler = lock(slot).handler.clone();
            if let Some(handler) = handler {
                self.wire.push(Job::Left {
                    to: handler,
                    node: self.node,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// Echoes a frame back; drops the responder unanswered for an empty frame.
    struct Echo;

    impl FrameHandler for Echo {
        fn handle(&self, _from: NodeId, frame: Vec<u8>, respond: Responder) {
            if !frame.is_empty() {
                respond.respond(frame);
            }
        }
    }

    fn call(
        net: &MemoryNetwork,
        node: NodeId,
        frame: &[u8],
        timeout: Duration,
    ) -> Result<Vec<u8>, NetError> {
        let (send, receive) = mpsc::channel();
        net.call(
            node,
            frame.to_vec(),
            timeout,
            Box::new(move |result| send.send(result).expect("the test waits")),
        );
        let result = receive.recv().expect("answered once");
        assert!(receive.try_recv().is_err(), "answered only once");
        result
    }

    #[test]
    fn every_call_is_answered_once_whatever_happens_to_the_node() {
        let cluster = MemoryCluster::new(3, 1).unwrap();
        let zero = cluster.endpoint(0);
        let one = cluster.endpoint(1);
        one.serve(Arc::new(Echo));
        let long = Duration::from_secs(30);
        assert_eq!(call(&zero, 1, b"hi", long), Ok(b"hi".to_vec()));
        // Node 2 has no runtime serving.
        assert!(matches!(
            call(&zero, 2, b"hi", long),
            Err(NetError::Unreachable { node: 2, .. })
        ));
        assert!(matches!(
            call(&zero, 7, b"hi", long),
            Err(NetError::UnknownNode { node: 7, nodes: 3 })
        ));
        // A responder dropped unanswered.
        assert_eq!(call(&zero, 1, b"", long), Err(NetError::Left { node: 1 }));
        cluster.set_fault(1, Fault::Unreachable);
        assert!(matches!(
            call(&zero, 1, b"lost", Duration::from_millis(20)),
            Err(NetError::DeadlineExceeded { node: 1, .. })
        ));
        assert_eq!(
            one.peers().iter().map(|p| p.state).collect::<Vec<_>>(),
            [
                PeerState::Connecting,
                PeerState::Local,
                PeerState::Connecting
            ]
        );
        cluster.set_fault(1, Fault::None);
        one.shutdown();
        assert_eq!(call(&zero, 1, b"hi", long), Err(NetError::Left { node: 1 }));
        assert_eq!(call(&one, 0, b"hi", long), Err(NetError::Left { node: 1 }));
        // A restart: a new endpoint for node 1 serves again.
        let one_again = cluster.endpoint(1);
        one_again.serve(Arc::new(Echo));
        assert_eq!(call(&zero, 1, b"back", long), Ok(b"back".to_vec()));
        assert_eq!(cluster.frames_sent(0), 7);
        drop(cluster);
        assert_eq!(
            call(&zero, 1, b"late", long),
            Err(NetError::Left { node: 0 })
        );
    }

    #[test]
    fn a_reply_may_make_the_next_call() {
        let cluster = MemoryCluster::new(2, 1).unwrap();
        let zero = cluster.endpoint(0);
        let one = cluster.endpoint(1);
        one.serve(Arc::new(Echo));
        let (send, receive) = mpsc::channel();
        let again = zero.clone();
        zero.call(
            1,
            b"first".to_vec(),
            Duration::from_secs(30),
            Box::new(move |first| {
                // On the delivery thread, inside the first call's answer.
                again.call(
                    1,
                    b"second".to_vec(),
                    Duration::from_secs(30),
                    Box::new(move |second| send.send((first, second)).expect("the test waits")),
                );
            }),
        );
        let (first, second) = receive.recv().expect("both answered");
        assert_eq!(first, Ok(b"first".to_vec()));
        assert_eq!(second, Ok(b"second".to_vec()));
    }
}
