//! `TonicNetwork` over real sockets on 127.0.0.1: networks in this process calling each
//! other, a peer in a child process killed with SIGKILL and restarted, and hostile
//! clients (wrong secret, garbage bytes, a stalled handshake, lying length prefixes)
//! speaking to the port directly.
//!
//! Every test binds its own ephemeral ports, so the tests run in parallel. Deadlines only
//! bound how long a broken build can hang; nothing here asserts timing.

use bytes::Bytes;
use chimaera_core::ids::NodeId;
use chimaera_core::peer::{
    FrameHandler, NetError, PeerNetwork, PeerState, Responder, MAX_FRAME_BYTES,
};
use chimaera_net::{NetOptions, PeerTls, TonicNetwork, MIN_CHUNK_BYTES};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

const SECRET: &str = "test-cluster-secret";
/// How long a broken build may hang before a test gives up.
const HANG: Duration = Duration::from_secs(30);
/// The deadline of calls that are expected to be answered.
const ANSWERED: Duration = Duration::from_secs(20);
/// The environment variable that tells a re-run of this binary it plays a peer node.
const ROLE: &str = "CHI_NET_TEST_PEER";

/// Answers `[its node, the caller's node, frame...]`; frames starting with `hold` are
/// kept unanswered until [`Node::release`]; `drop` drops the responder; `panic` panics;
/// `huge` answers one byte over the frame limit.
#[derive(Default)]
struct Node {
    node: NodeId,
    frames: AtomicUsize,
    held: Mutex<Vec<(Vec<u8>, Responder)>>,
    held_changed: Condvar,
    left: Mutex<Vec<NodeId>>,
    /// Hold every frame until this many are held, then answer them all.
    gate: Option<usize>,
}

impl Node {
    fn new(node: NodeId) -> Arc<Node> {
        Arc::new(Node {
            node,
            ..Node::default()
        })
    }

    fn answer(&self, from: NodeId, frame: &[u8]) -> Vec<u8> {
        let mut answer = vec![self.node as u8, from as u8];
        answer.extend_from_slice(frame);
        answer
    }

    /// Waits until `count` frames are held.
    fn wait_held(&self, count: usize) {
        let held = self.held.lock().unwrap();
        let (held, timeout) = self
            .held_changed
            .wait_timeout_while(held, HANG, |held| held.len() < count)
            .unwrap();
        assert!(
            !timeout.timed_out(),
            "{} frames held, expected {count}",
            held.len()
        );
    }
}

impl FrameHandler for Node {
    fn handle(&self, from: NodeId, frame: Vec<u8>, respond: Responder) {
        self.frames.fetch_add(1, Ordering::SeqCst);
        if let Some(gate) = self.gate {
            let mut held = self.held.lock().unwrap();
            held.push((frame, respond));
            if held.len() == gate {
                for (frame, respond) in held.drain(..) {
                    respond.respond(self.answer(from, &frame));
                }
            }
            return;
        }
        if frame.starts_with(b"hold") {
            self.held.lock().unwrap().push((frame, respond));
            self.held_changed.notify_all();
        } else if frame == b"drop" {
            drop(respond);
        } else if frame == b"panic" {
            panic!("a handler that panics on purpose");
        } else if frame == b"huge" {
            respond.respond(vec![0; MAX_FRAME_BYTES + 1]);
        } else if frame == b"big" {
            respond.respond(patterned(BIG_ANSWER, 7));
        } else if frame.starts_with(b"later") {
            let answer = self.answer(from, &frame);
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(20));
                respond.respond(answer);
            });
        } else {
            respond.respond(self.answer(from, &frame));
        }
    }

    fn peer_left(&self, node: NodeId) {
        self.left.lock().unwrap().push(node);
    }
}

fn options(node: NodeId, addresses: &[SocketAddr], secret: &str) -> NetOptions {
    let mut options = NetOptions::new(
        node,
        addresses.iter().map(ToString::to_string).collect(),
        secret,
    );
    options.backoff_min = Duration::from_millis(10);
    options.backoff_max = Duration::from_millis(200);
    options
}

fn ephemeral_listeners(count: usize) -> (Vec<TcpListener>, Vec<SocketAddr>) {
    let listeners: Vec<_> = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let addresses = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
    (listeners, addresses)
}

/// `count` networks on ephemeral ports, each serving its own [`Node`].
fn cluster(count: usize) -> (Vec<TonicNetwork>, Vec<Arc<Node>>) {
    cluster_with(count, |_, _| {})
}

fn cluster_with(
    count: usize,
    adjust: impl Fn(NodeId, &mut NetOptions),
) -> (Vec<TonicNetwork>, Vec<Arc<Node>>) {
    let (listeners, addresses) = ephemeral_listeners(count);
    let mut networks = Vec::new();
    let mut nodes = Vec::new();
    for (node, listener) in listeners.into_iter().enumerate() {
        let node = node as NodeId;
        let mut options = options(node, &addresses, SECRET);
        adjust(node, &mut options);
        let network = TonicNetwork::with_listener(options, listener).unwrap();
        let handler = Node::new(node);
        network.serve(handler.clone());
        networks.push(network);
        nodes.push(handler);
    }
    (networks, nodes)
}

/// Starts a call; its answer arrives on the returned channel.
fn start_call(
    network: &TonicNetwork,
    node: NodeId,
    frame: &[u8],
    timeout: Duration,
) -> mpsc::Receiver<Result<Vec<u8>, NetError>> {
    let (send, receive) = mpsc::channel();
    network.call(
        node,
        frame.to_vec(),
        timeout,
        Box::new(move |answer| {
            let _ = send.send(answer);
        }),
    );
    receive
}

fn answer_of(pending: &mpsc::Receiver<Result<Vec<u8>, NetError>>) -> Result<Vec<u8>, NetError> {
    let answer = pending
        .recv_timeout(HANG)
        .expect("the network answers every call");
    assert!(
        pending.try_recv().is_err(),
        "a call is answered exactly once"
    );
    answer
}

fn call(
    network: &TonicNetwork,
    node: NodeId,
    frame: &[u8],
    timeout: Duration,
) -> Result<Vec<u8>, NetError> {
    answer_of(&start_call(network, node, frame, timeout))
}

fn echoed(node: NodeId, from: NodeId, frame: &[u8]) -> Vec<u8> {
    let mut answer = vec![node as u8, from as u8];
    answer.extend_from_slice(frame);
    answer
}

/// The node an error names.
fn node_named(error: &NetError) -> Option<NodeId> {
    match error {
        NetError::UnknownNode { node, .. }
        | NetError::Unreachable { node, .. }
        | NetError::DeadlineExceeded { node, .. }
        | NetError::Refused { node, .. }
        | NetError::Malformed { node, .. }
        | NetError::Left { node } => Some(*node),
        NetError::FrameTooLarge { .. } => None,
    }
}

#[test]
fn two_nodes_call_each_other_and_themselves() {
    let (networks, _) = cluster(2);
    assert_eq!(
        call(&networks[0], 1, b"ping", ANSWERED),
        Ok(echoed(1, 0, b"ping"))
    );
    assert_eq!(
        call(&networks[1], 0, b"pong", ANSWERED),
        Ok(echoed(0, 1, b"pong"))
    );
    // Force-net: a call to this node goes through the same wire.
    assert_eq!(
        call(&networks[0], 0, b"self", ANSWERED),
        Ok(echoed(0, 0, b"self"))
    );
    assert_eq!(call(&networks[0], 1, b"", ANSWERED), Ok(echoed(1, 0, b"")));
    // No deadline to speak of (more than `grpc-timeout` can express).
    assert_eq!(
        call(&networks[0], 1, b"forever", Duration::MAX),
        Ok(echoed(1, 0, b"forever"))
    );
    let peers = networks[0].peers();
    assert_eq!(peers[0].state, PeerState::Local);
    assert_eq!(peers[1].state, PeerState::Up);
    assert_eq!(peers[1].address, networks[1].local_addr().to_string());
}

#[test]
fn four_nodes_reach_every_node() {
    let (networks, handlers) = cluster(4);
    let pending: Vec<_> = (0..4)
        .flat_map(|from| (0..4).map(move |to| (from, to)))
        .map(|(from, to)| {
            let frame = [from as u8 * 4 + to as u8];
            (
                from,
                to,
                frame,
                start_call(&networks[from as usize], to, &frame, ANSWERED),
            )
        })
        .collect();
    for (from, to, frame, answer) in pending {
        assert_eq!(answer_of(&answer), Ok(echoed(to, from, &frame)));
    }
    for handler in handlers {
        assert_eq!(handler.frames.load(Ordering::SeqCst), 4);
    }
}

#[test]
fn a_handler_may_answer_later_from_another_thread() {
    let (networks, _) = cluster(2);
    let pending: Vec<_> = (0..8u8)
        .map(|i| {
            start_call(
                &networks[0],
                1,
                &[b'l', b'a', b't', b'e', b'r', i],
                ANSWERED,
            )
        })
        .collect();
    for (i, answer) in pending.iter().enumerate() {
        assert_eq!(
            answer_of(answer),
            Ok(echoed(1, 0, &[b'l', b'a', b't', b'e', b'r', i as u8]))
        );
    }
}

#[test]
fn concurrent_calls_are_all_in_flight_at_once() {
    // Node 1 answers nothing until it holds all 64 frames: the calls complete only if
    // the network carries them concurrently, not one after the other.
    const CALLS: usize = 64;
    let (listeners, addresses) = ephemeral_listeners(2);
    let mut listeners = listeners.into_iter();
    let caller =
        TonicNetwork::with_listener(options(0, &addresses, SECRET), listeners.next().unwrap())
            .unwrap();
    let callee =
        TonicNetwork::with_listener(options(1, &addresses, SECRET), listeners.next().unwrap())
            .unwrap();
    callee.serve(Arc::new(Node {
        node: 1,
        gate: Some(CALLS),
        ..Node::default()
    }));
    let pending: Vec<_> = (0..CALLS)
        .map(|i| start_call(&caller, 1, &(i as u32).to_le_bytes(), ANSWERED))
        .collect();
    for (i, answer) in pending.iter().enumerate() {
        assert_eq!(
            answer_of(answer),
            Ok(echoed(1, 0, &(i as u32).to_le_bytes()))
        );
    }
}

#[test]
fn an_unanswered_call_fails_by_its_deadline_naming_the_node() {
    let (networks, handlers) = cluster(2);
    let answer = call(&networks[0], 1, b"hold", Duration::from_millis(300));
    assert_eq!(
        answer,
        Err(NetError::DeadlineExceeded {
            node: 1,
            timeout_ms: 300
        })
    );
    assert_eq!(handlers[1].held.lock().unwrap().len(), 1);
    assert_eq!(
        call(&networks[0], 1, b"after", ANSWERED),
        Ok(echoed(1, 0, b"after"))
    );
}

#[test]
fn a_dropped_responder_or_a_panicking_handler_answers_left() {
    let (networks, _) = cluster(2);
    assert_eq!(
        call(&networks[0], 1, b"drop", ANSWERED),
        Err(NetError::Left { node: 1 })
    );
    assert_eq!(
        call(&networks[0], 1, b"panic", ANSWERED),
        Err(NetError::Left { node: 1 })
    );
    assert_eq!(
        call(&networks[0], 1, b"still", ANSWERED),
        Ok(echoed(1, 0, b"still"))
    );
}

#[test]
fn unknown_nodes_and_oversized_frames_are_refused_before_sending() {
    let (networks, handlers) = cluster(2);
    assert_eq!(
        call(&networks[0], 7, b"x", ANSWERED),
        Err(NetError::UnknownNode { node: 7, nodes: 2 })
    );
    // Zeroed pages: the frame costs address space, not memory.
    let (send, receive) = mpsc::channel();
    networks[0].call(
        1,
        vec![0; MAX_FRAME_BYTES + 1],
        ANSWERED,
        Box::new(move |answer| send.send(answer).unwrap()),
    );
    assert_eq!(
        answer_of(&receive),
        Err(NetError::FrameTooLarge {
            len: MAX_FRAME_BYTES as u64 + 1,
            max: MAX_FRAME_BYTES as u64
        })
    );
    assert_eq!(handlers[1].frames.load(Ordering::SeqCst), 0);
}

#[test]
fn an_oversized_answer_is_refused_by_the_answering_node() {
    let (networks, _) = cluster(2);
    assert_eq!(
        call(&networks[0], 1, b"huge", ANSWERED),
        Err(NetError::FrameTooLarge {
            len: MAX_FRAME_BYTES as u64 + 1,
            max: MAX_FRAME_BYTES as u64
        })
    );
    assert_eq!(
        call(&networks[0], 1, b"next", ANSWERED),
        Ok(echoed(1, 0, b"next"))
    );
}

/// `len` bytes of a pattern that differs per `seed` and position.
fn patterned(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 11) as u8)
        .collect()
}

#[test]
fn large_frames_and_answers_travel_in_chunks_between_nodes_of_different_chunk_sizes() {
    // Node 0 sends 4 KiB chunks, node 1 answers in its default 1 MiB ones.
    let (networks, handlers) = cluster_with(2, |node, options| {
        if node == 0 {
            options.chunk_bytes = MIN_CHUNK_BYTES;
        }
    });
    for (len, seed) in [
        (0, 1),
        (MIN_CHUNK_BYTES, 2),
        (MIN_CHUNK_BYTES + 1, 3),
        (3 << 20, 4),
        ((5 << 20) + 17, 5),
    ] {
        let frame = patterned(len, seed);
        for (from, to) in [(0, 1), (1, 0), (1, 1)] {
            let answer = call(&networks[from], to, &frame, ANSWERED).unwrap();
            assert!(
                answer == echoed(to, from as NodeId, &frame),
                "{len} bytes from {from} to {to}"
            );
        }
    }
    assert_eq!(handlers[1].frames.load(Ordering::SeqCst), 10);
}

/// The length of the answer to `big`: several chunks.
const BIG_ANSWER: usize = (5 << 20) + 3;

#[test]
fn a_large_answer_to_a_small_frame_comes_back_in_parts_on_the_call_stream() {
    // Node 1 answers in 64 KiB parts, node 0 in its default 1 MiB ones.
    let (networks, _) = cluster_with(2, |node, options| {
        if node == 1 {
            options.chunk_bytes = 64 << 10;
        }
    });
    for (from, to) in [(0, 1), (1, 0), (0, 0)] {
        let answer = call(&networks[from], to, b"big", ANSWERED).unwrap();
        assert!(
            answer == patterned(BIG_ANSWER, 7),
            "from {from} to {to}: {} bytes",
            answer.len()
        );
    }
    // Small answers on the same stream still come whole, in order with the parts.
    assert_eq!(
        call(&networks[0], 1, b"small", ANSWERED),
        Ok(echoed(1, 0, b"small"))
    );
}

#[test]
fn a_large_frame_is_many_grpc_messages_on_the_wire_both_ways() {
    let (networks, handlers) = cluster(2);
    let address = networks[1].local_addr();
    let frame = patterned((2 << 20) + 100, 9);
    let mut headers = authenticated(0);
    headers.push(("chimaera-frame-len", frame.len().to_string()));
    // Three messages of at most 1 MiB, as a peer's network sends it.
    let body: Vec<Vec<u8>> = frame.chunks(1 << 20).map(grpc_message).collect();
    let body: Vec<&[u8]> = body.iter().map(Vec::as_slice).collect();
    let (status, messages) = block_on(async {
        let mut client = raw_connection(address).await;
        raw_call_messages(&mut client, address, &headers, &body).await
    });
    assert_eq!(status.as_deref(), Some("0"));
    assert_eq!(handlers[1].frames.load(Ordering::SeqCst), 1);
    assert!(messages.len() >= 3, "{} answer messages", messages.len());
    assert!(messages.iter().all(|m| m.len() <= 1 << 20));
    assert!(messages.concat() == echoed(1, 0, &frame));
}

/// Request metadata: names and values.
type Headers = Vec<(&'static str, String)>;

/// Credentials of node `node` as metadata.
fn authenticated(node: NodeId) -> Headers {
    vec![
        ("chimaera-node", node.to_string()),
        ("chimaera-secret", SECRET.to_owned()),
    ]
}

#[test]
fn a_peer_announcing_streaming_more_or_less_than_it_should_loses_its_connection() {
    let (networks, handlers) = cluster(2);
    let address = networks[1].local_addr();
    let announcing = |len: u64| {
        let mut headers = authenticated(0);
        headers.push(("chimaera-frame-len", len.to_string()));
        headers
    };
    let half = grpc_message(&[7; 15]);
    let cases: [(Headers, Vec<&[u8]>, &str); 5] = [
        // Over the limit: refused on the announcement alone (out of range).
        (
            announcing(MAX_FRAME_BYTES as u64 + 1),
            vec![&half],
            "announced over the limit",
        ),
        (announcing(u64::MAX), vec![&half], "announced 2^64 - 1"),
        // 30 bytes streamed for 20 announced.
        (announcing(20), vec![&half, &half], "more than announced"),
        // 15 bytes, then the end, for 100 announced.
        (announcing(100), vec![&half], "truncated"),
        (
            {
                let mut headers = authenticated(0);
                headers.push(("chimaera-frame-len", "many".to_owned()));
                headers
            },
            vec![&half],
            "an announcement that is no number",
        ),
    ];
    for (headers, body, why) in cases {
        let (first, second) = block_on(async {
            let mut client = raw_connection(address).await;
            let first = raw_call_messages_checked(&mut client, address, &headers, &body).await;
            // The same connection again, with a good call: it is gone.
            let good = grpc_message(b"after");
            let mut good_headers = authenticated(0);
            good_headers.push(("chimaera-frame-len", "5".to_owned()));
            let second =
                raw_call_messages_checked(&mut client, address, &good_headers, &[&good]).await;
            (first, second)
        });
        assert!(
            matches!(&first, Ok((status, _)) if status.as_deref() != Some("0")) || first.is_err(),
            "{why}: {first:?}"
        );
        assert!(
            !matches!(&second, Ok((status, _)) if status.as_deref() == Some("0")),
            "{why}: the connection still carried a call: {second:?}"
        );
    }
    assert_eq!(handlers[1].frames.load(Ordering::SeqCst), 0);
    // The node serves on, for its peers and on a new connection.
    assert_eq!(
        call(&networks[0], 1, b"alive", ANSWERED),
        Ok(echoed(1, 0, b"alive"))
    );
    let status = raw_grpc_call(
        address,
        "/chimaera.Peer/Call",
        &authenticated(0),
        &[&half],
        true,
    );
    assert_eq!(status.as_deref(), Some("0"));
}

/// A fake node 1 speaking raw HTTP/2: it answers every call with `answer_len` announced
/// and `sent` bytes of chunks.
fn lying_answerer(listener: TcpListener, announced: u64, sent: usize) {
    std::thread::spawn(move || {
        block_on(async move {
            listener.set_nonblocking(true).unwrap();
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let Ok(mut connection) = h2::server::handshake(socket).await else {
                        return;
                    };
                    while let Some(Ok((request, mut respond))) = connection.accept().await {
                        drop(request);
                        let response = http::Response::builder()
                            .header("content-type", "application/grpc")
                            .header("chimaera-frame-len", announced.to_string())
                            .body(())
                            .unwrap();
                        let Ok(mut stream) = respond.send_response(response, false) else {
                            continue;
                        };
                        let _ = stream.send_data(Bytes::from(grpc_message(&vec![1; sent])), false);
                        let mut trailers = http::HeaderMap::new();
                        trailers.insert("grpc-status", "0".parse().unwrap());
                        let _ = stream.send_trailers(trailers);
                    }
                });
            }
        })
    });
}

/// A fake node 1 speaking raw HTTP/2 that answers every request (the call stream
/// included), once its first message came, with `messages` (each a gRPC message) and
/// then ends it.
fn scripted_answerer(listener: TcpListener, messages: Vec<Vec<u8>>) {
    std::thread::spawn(move || {
        block_on(async move {
            listener.set_nonblocking(true).unwrap();
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    return;
                };
                let messages = messages.clone();
                tokio::spawn(async move {
                    let Ok(mut connection) = h2::server::handshake(socket).await else {
                        return;
                    };
                    // `accept` drives the connection: each request is answered apart.
                    while let Some(Ok((request, respond))) = connection.accept().await {
                        tokio::spawn(answer_scripted(request, respond, messages.clone()));
                    }
                });
            }
        })
    });
}

/// Answers `request` with headers at once, then, once its first message came (the
/// call's id is registered by then), with `messages`, then ends it.
async fn answer_scripted(
    request: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    messages: Vec<Vec<u8>>,
) {
    let response = http::Response::builder()
        .header("content-type", "application/grpc")
        .body(())
        .unwrap();
    let Ok(mut stream) = respond.send_response(response, false) else {
        return;
    };
    let mut body = request.into_body();
    let _ = body.data().await;
    for message in &messages {
        let _ = stream.send_data(Bytes::from(grpc_message(message)), false);
    }
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", "0".parse().unwrap());
    let _ = stream.send_trailers(trailers);
}

/// An answer message of the call stream: call `id`, `kind`, `value`, then `frame`.
fn stream_answer(id: u64, kind: u8, value: u64, frame: &[u8]) -> Vec<u8> {
    let mut message = id.to_le_bytes().to_vec();
    message.push(kind);
    message.extend_from_slice(&value.to_le_bytes());
    message.extend_from_slice(frame);
    message
}

#[test]
fn an_answer_in_parts_that_brings_more_or_less_than_announced_is_a_typed_error() {
    const PART: u8 = 4;
    const FRAME: u8 = 0;
    let cases = [
        (
            vec![
                stream_answer(0, PART, 100, &[1; 10]),
                stream_answer(0, FRAME, 0, &[1; 10]),
            ],
            "ended after 20 of the 100",
        ),
        (
            vec![
                stream_answer(0, PART, 10, &[1; 8]),
                stream_answer(0, PART, 10, &[1; 8]),
            ],
            "more than the 10",
        ),
        (
            vec![stream_answer(0, PART, 10, &[1; 12])],
            "more than the 10",
        ),
    ];
    for (messages, says) in cases {
        let (mut listeners, addresses) = ephemeral_listeners(2);
        scripted_answerer(listeners.pop().unwrap(), messages);
        let network =
            TonicNetwork::with_listener(options(0, &addresses, SECRET), listeners.pop().unwrap())
                .unwrap();
        match call(&network, 1, b"small question", ANSWERED) {
            Err(NetError::Malformed { node: 1, reason }) => {
                assert!(reason.contains(says), "{says}: {reason}")
            }
            other => panic!("{says}: expected a malformed answer from node 1, got {other:?}"),
        }
    }
    // An announcement over the limit is refused at the first part.
    let (mut listeners, addresses) = ephemeral_listeners(2);
    scripted_answerer(
        listeners.pop().unwrap(),
        vec![stream_answer(0, PART, MAX_FRAME_BYTES as u64 + 1, &[1; 8])],
    );
    let network =
        TonicNetwork::with_listener(options(0, &addresses, SECRET), listeners.pop().unwrap())
            .unwrap();
    assert!(matches!(
        call(&network, 1, b"small question", ANSWERED),
        Err(NetError::FrameTooLarge { len, .. }) if len == MAX_FRAME_BYTES as u64 + 1
    ));
}

#[test]
fn an_answer_streaming_more_or_less_than_announced_is_a_typed_error() {
    // Large enough to go as a call of its own (small frames share the call stream).
    let question = vec![5u8; 300 << 10];
    for (announced, sent, says) in [(100, 10, "truncated"), (10, 100, "more than")] {
        let (mut listeners, addresses) = ephemeral_listeners(2);
        lying_answerer(listeners.pop().unwrap(), announced, sent);
        let network =
            TonicNetwork::with_listener(options(0, &addresses, SECRET), listeners.pop().unwrap())
                .unwrap();
        network.serve(Node::new(0));
        match call(&network, 1, &question, ANSWERED) {
            Err(NetError::Malformed { node: 1, reason }) => {
                assert!(reason.contains(says), "{reason}")
            }
            other => panic!("expected a malformed answer from node 1, got {other:?}"),
        }
    }
    let (mut listeners, addresses) = ephemeral_listeners(2);
    lying_answerer(listeners.pop().unwrap(), MAX_FRAME_BYTES as u64 + 1, 1);
    let network =
        TonicNetwork::with_listener(options(0, &addresses, SECRET), listeners.pop().unwrap())
            .unwrap();
    assert!(matches!(
        call(&network, 1, &question, ANSWERED),
        Err(NetError::FrameTooLarge { len, .. }) if len == MAX_FRAME_BYTES as u64 + 1
    ));
}

#[test]
fn a_node_not_serving_yet_is_unreachable_until_it_serves() {
    let (listeners, addresses) = ephemeral_listeners(2);
    let mut listeners = listeners.into_iter();
    let caller =
        TonicNetwork::with_listener(options(0, &addresses, SECRET), listeners.next().unwrap())
            .unwrap();
    let starting =
        TonicNetwork::with_listener(options(1, &addresses, SECRET), listeners.next().unwrap())
            .unwrap();
    match call(&caller, 1, b"early", ANSWERED) {
        Err(NetError::Unreachable { node: 1, reason }) => {
            assert!(reason.contains("not started serving"), "{reason}")
        }
        other => panic!("expected Unreachable naming node 1, got {other:?}"),
    }
    starting.serve(Node::new(1));
    assert_eq!(call(&caller, 1, b"now", ANSWERED), Ok(echoed(1, 0, b"now")));
}

#[test]
fn a_wrong_secret_is_refused_and_never_reaches_the_handler() {
    let (networks, handlers) = cluster_with(2, |node, options| {
        if node == 0 {
            options.cluster_secret = "not-the-cluster-secret".to_owned();
        }
    });
    match call(&networks[0], 1, b"intruder", ANSWERED) {
        Err(NetError::Refused { node: 1, reason }) => {
            assert!(reason.contains("secret"), "{reason}")
        }
        other => panic!("expected Refused by node 1, got {other:?}"),
    }
    let address = networks[1].local_addr();
    let auth = |secret: Option<&str>, node: &str| {
        let mut headers = vec![("chimaera-node", node.to_owned())];
        if let Some(secret) = secret {
            headers.push(("chimaera-secret", secret.to_owned()));
        }
        headers
    };
    let frame = grpc_message(b"intruder");
    for (headers, why) in [
        (auth(None, "0"), "no secret"),
        (auth(Some(""), "0"), "empty secret"),
        (
            auth(Some("test-cluster-secreT"), "0"),
            "secret differing in its last byte",
        ),
        (
            auth(Some("test-cluster-secret-and-more"), "0"),
            "secret with a suffix",
        ),
        (auth(Some(SECRET), "99"), "node id outside the cluster"),
        (auth(Some(SECRET), "-1"), "node id not a number"),
        (vec![("chimaera-secret", SECRET.to_owned())], "no node id"),
    ] {
        let status = raw_grpc_call(address, "/chimaera.Peer/Call", &headers, &[&frame], true);
        assert_eq!(
            status.as_deref(),
            Some("16"),
            "{why}: expected unauthenticated"
        );
    }
    assert_eq!(handlers[1].frames.load(Ordering::SeqCst), 0);
    // The right secret still gets through the same port.
    let status = raw_grpc_call(
        address,
        "/chimaera.Peer/Call",
        &auth(Some(SECRET), "0"),
        &[&frame],
        true,
    );
    assert_eq!(status.as_deref(), Some("0"));
    assert_eq!(handlers[1].frames.load(Ordering::SeqCst), 1);
}

#[test]
fn a_peer_claiming_another_nodes_id_is_refused() {
    // Three nodes on three loopback addresses: a node id belongs to its address.
    let listeners: Vec<_> = (1..=3)
        .map(|host| TcpListener::bind(SocketAddr::from(([127, 0, 0, host], 0))).unwrap())
        .collect();
    let addresses: Vec<_> = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
    let mut networks = Vec::new();
    let mut handlers = Vec::new();
    for (node, listener) in listeners.into_iter().enumerate() {
        let network =
            TonicNetwork::with_listener(options(node as NodeId, &addresses, SECRET), listener)
                .unwrap();
        let handler = Node::new(node as NodeId);
        network.serve(handler.clone());
        networks.push(network);
        handlers.push(handler);
    }
    // Every node connects from its own address, so honest calls pass the check.
    for from in 0..3 {
        for to in 0..3 {
            assert_eq!(
                call(&networks[from as usize], to, b"hi", ANSWERED),
                Ok(echoed(to, from, b"hi"))
            );
        }
    }
    // A holder of the secret on 127.0.0.1 (node 0's address) claiming to be node 2.
    let claim = |node: &str| {
        [
            ("chimaera-node", node.to_owned()),
            ("chimaera-secret", SECRET.to_owned()),
        ]
    };
    let frame = grpc_message(b"impostor");
    let status = raw_grpc_call(
        addresses[1],
        "/chimaera.Peer/Call",
        &claim("2"),
        &[&frame],
        true,
    );
    assert_eq!(status.as_deref(), Some("16"), "expected unauthenticated");
    let status = raw_grpc_call(addresses[1], "/chimaera.Peer/Leave", &claim("2"), &[], true);
    assert_eq!(status.as_deref(), Some("16"), "expected unauthenticated");
    assert!(handlers[1].left.lock().unwrap().is_empty());
    assert_eq!(networks[1].peers()[2].state, PeerState::Up);
    // Claiming its own id passes.
    let status = raw_grpc_call(
        addresses[1],
        "/chimaera.Peer/Call",
        &claim("0"),
        &[&frame],
        true,
    );
    assert_eq!(status.as_deref(), Some("0"));
    assert_eq!(handlers[1].frames.load(Ordering::SeqCst), 4);
}

#[test]
fn a_peer_that_never_speaks_fails_calls_by_their_deadline() {
    // Node 1's port accepts connections and never says a word: only the caller's own
    // timer can end the call.
    let (listeners, addresses) = ephemeral_listeners(2);
    let mut listeners = listeners.into_iter();
    let mut options = options(0, &addresses, SECRET);
    options.connect_timeout = HANG;
    let caller = TonicNetwork::with_listener(options, listeners.next().unwrap()).unwrap();
    let black_hole = listeners.next().unwrap();
    let answer = call(&caller, 1, b"anyone?", Duration::from_millis(200));
    assert_eq!(
        answer,
        Err(NetError::DeadlineExceeded {
            node: 1,
            timeout_ms: 200
        })
    );
    drop(black_hole);
}

#[test]
fn a_peer_whose_port_never_completes_a_connection_fails_calls_by_their_deadline() {
    // Node 1's accept queue is full and nobody accepts: the kernel drops the caller's
    // SYNs, so the connection attempt itself hangs (longer than its connect timeout
    // here); the call's own deadline must still end it.
    let (listeners, mut addresses) = ephemeral_listeners(1);
    let full = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    full.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    full.listen(0).unwrap();
    let full_address = full.local_addr().unwrap().as_socket().unwrap();
    let queued: Vec<_> = (0..2)
        .filter_map(|_| TcpStream::connect_timeout(&full_address, Duration::from_millis(100)).ok())
        .collect();
    addresses.push(full_address);
    let mut options = options(0, &addresses, SECRET);
    options.connect_timeout = HANG;
    let caller =
        TonicNetwork::with_listener(options, listeners.into_iter().next().unwrap()).unwrap();
    let answer = call(&caller, 1, b"anyone?", Duration::from_millis(200));
    assert_eq!(
        answer,
        Err(NetError::DeadlineExceeded {
            node: 1,
            timeout_ms: 200
        })
    );
    drop(queued);
}

/// A certificate authority made for one test.
struct TestAuthority {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl TestAuthority {
    fn new() -> TestAuthority {
        let mut params = rcgen::CertificateParams::new(Vec::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let key = rcgen::KeyPair::generate().unwrap();
        TestAuthority {
            issuer: rcgen::CertifiedIssuer::self_signed(params, key).unwrap(),
        }
    }

    /// A node's TLS settings: a certificate for 127.0.0.1 signed by this authority.
    fn node(&self) -> PeerTls {
        let key = rcgen::KeyPair::generate().unwrap();
        let certificate = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .unwrap()
            .signed_by(&key, &self.issuer)
            .unwrap();
        PeerTls {
            ca_pem: self.issuer.pem().into_bytes(),
            cert_pem: certificate.pem().into_bytes(),
            key_pem: key.serialize_pem().into_bytes(),
        }
    }
}

#[test]
fn mutual_tls_nodes_talk_and_refuse_strangers() {
    let authority = TestAuthority::new();
    let stranger_authority = TestAuthority::new();
    // Node 2 belongs to another authority; node 3 trusts this cluster's authority but its
    // own certificate is the other's; node 4 speaks no TLS at all.
    let (networks, handlers) = cluster_with(5, |node, options| {
        options.tls = match node {
            0 | 1 => Some(authority.node()),
            2 => Some(stranger_authority.node()),
            3 => Some(PeerTls {
                ca_pem: authority.node().ca_pem,
                ..stranger_authority.node()
            }),
            _ => None,
        };
    });
    assert_eq!(
        call(&networks[0], 1, b"tls", ANSWERED),
        Ok(echoed(1, 0, b"tls"))
    );
    assert_eq!(
        call(&networks[1], 0, b"back", ANSWERED),
        Ok(echoed(0, 1, b"back"))
    );
    assert_eq!(
        call(&networks[1], 1, b"self", ANSWERED),
        Ok(echoed(1, 1, b"self"))
    );
    // Node 2 refuses node 1's certificate, node 0 node 2's.
    for (from, to) in [(2, 1), (0, 2)] {
        match call(&networks[from], to, b"let me in", ANSWERED) {
            Err(NetError::Refused { node, .. }) => assert_eq!(node, to),
            other => panic!("expected node {from}'s call to {to} refused, got {other:?}"),
        }
    }
    // Node 1 refuses node 3's certificate after node 3 has accepted node 1's; TLS 1.3
    // tells node 3 only that the connection closed.
    match call(&networks[3], 1, b"let me in", ANSWERED) {
        Err(NetError::Refused { node: 1, .. } | NetError::Unreachable { node: 1, .. }) => {}
        other => panic!("expected node 3's call to 1 refused, got {other:?}"),
    }
    match call(&networks[4], 1, b"plain", ANSWERED) {
        Err(error) => assert_eq!(node_named(&error), Some(1), "{error}"),
        Ok(answer) => panic!("a node without TLS got through: {answer:?}"),
    }
    // Plain bytes on the TLS port end that connection only.
    let mut plain = TcpStream::connect(networks[1].local_addr()).unwrap();
    let _ = plain.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n garbage");
    plain.set_read_timeout(Some(HANG)).unwrap();
    let _ = plain.read_to_end(&mut Vec::new());
    assert_eq!(
        call(&networks[0], 1, b"still", ANSWERED),
        Ok(echoed(1, 0, b"still"))
    );
    assert_eq!(handlers[1].frames.load(Ordering::SeqCst), 3);
    assert_eq!(handlers[2].frames.load(Ordering::SeqCst), 0);
}

#[test]
fn a_connection_without_an_authenticated_call_is_closed_after_the_connect_timeout() {
    const ADMISSION: Duration = Duration::from_millis(300);
    let (networks, handlers) = cluster_with(2, |_, options| options.connect_timeout = ADMISSION);
    let address = networks[1].local_addr();
    // A stalled preface: the server hangs up (EOF or reset), the client's own read
    // timeout (HANG) does not fire.
    let mut stalled = TcpStream::connect(address).unwrap();
    stalled.write_all(b"PRI * HTTP/2.0\r\n").unwrap();
    stalled.set_read_timeout(Some(HANG)).unwrap();
    match stalled.read_to_end(&mut Vec::new()) {
        Ok(_) => {}
        Err(error) => assert!(
            !matches!(
                error.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "the server kept a stalled connection open"
        ),
    }
    let member = credentials("0", SECRET);
    let stranger = credentials("0", "guess");
    let (first, second) = block_on(async {
        (
            two_calls_apart(address, &stranger, &member, ADMISSION * 3).await,
            two_calls_apart(address, &member, &member, ADMISSION * 3).await,
        )
    });
    // Only refused calls: the connection is gone by the second call.
    assert_eq!(first, (Some("16".to_owned()), None));
    // One authenticated call: the connection stays.
    assert_eq!(second, (Some("0".to_owned()), Some("0".to_owned())));
    assert_eq!(handlers[1].frames.load(Ordering::SeqCst), 2);
    // A peer's own channel outlives the deadline too.
    assert_eq!(
        call(&networks[0], 1, b"a", ANSWERED),
        Ok(echoed(1, 0, b"a"))
    );
    std::thread::sleep(ADMISSION * 3);
    assert_eq!(
        call(&networks[0], 1, b"b", ANSWERED),
        Ok(echoed(1, 0, b"b"))
    );
}

#[test]
fn a_flood_of_connections_is_closed_at_once_and_members_keep_theirs() {
    let (networks, _) = cluster_with(2, |_, options| {
        options.max_pending_connections = 2;
        options.connect_timeout = HANG;
    });
    let address = networks[1].local_addr();
    // Node 0's connection authenticates and gives its slot back.
    assert_eq!(
        call(&networks[0], 1, b"in", ANSWERED),
        Ok(echoed(1, 0, b"in"))
    );
    let parked: Vec<_> = (0..2)
        .map(|_| TcpStream::connect(address).unwrap())
        .collect();
    // Both slots are taken (for up to HANG): the next connection is closed at once.
    let mut flood = TcpStream::connect(address).unwrap();
    flood.set_read_timeout(Some(HANG)).unwrap();
    let closed = match flood.read_to_end(&mut Vec::new()) {
        Ok(_) => true,
        Err(error) => !matches!(
            error.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    };
    assert!(closed, "a connection over the limit was kept");
    // The parked ones (accepted before it) are still open: node 0's slot came back.
    for mut connection in parked.iter() {
        connection.set_nonblocking(true).unwrap();
        // The server's HTTP/2 settings, or nothing yet; not the end of the stream.
        match connection.read(&mut [0; 64]) {
            Err(error) => assert_eq!(error.kind(), std::io::ErrorKind::WouldBlock),
            Ok(read) => assert_ne!(read, 0, "a parked connection within the limit was closed"),
        }
    }
    assert_eq!(
        call(&networks[0], 1, b"still", ANSWERED),
        Ok(echoed(1, 0, b"still"))
    );
    drop(parked);
}

#[test]
fn garbage_bytes_and_a_stalled_handshake_do_not_stop_the_server() {
    let (networks, handlers) = cluster(2);
    let address = networks[1].local_addr();
    // A slowloris: half the HTTP/2 preface, then nothing, held open throughout.
    let mut stalled = TcpStream::connect(address).unwrap();
    stalled.write_all(b"PRI * HTTP/2.0\r\n").unwrap();
    let mut garbage_seed = 0x9e37_79b9_7f4a_7c15_u64;
    for round in 0..4 {
        let mut garbage = TcpStream::connect(address).unwrap();
        let bytes: Vec<u8> = (0..4096)
            .map(|_| {
                garbage_seed ^= garbage_seed << 13;
                garbage_seed ^= garbage_seed >> 7;
                garbage_seed ^= garbage_seed << 17;
                garbage_seed as u8
            })
            .collect();
        // A valid preface followed by garbage frames, or garbage from the first byte.
        if round % 2 == 1 {
            garbage
                .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
                .unwrap();
        }
        // The server may hang up before it has read everything.
        let _ = garbage.write_all(&bytes);
        garbage.set_read_timeout(Some(HANG)).unwrap();
        let mut sink = Vec::new();
        // The server closes the connection (EOF or reset), it does not wait for more.
        let _ = garbage.read_to_end(&mut sink);
    }
    assert_eq!(
        call(&networks[0], 1, b"alive", ANSWERED),
        Ok(echoed(1, 0, b"alive"))
    );
    assert_eq!(
        call(&networks[1], 0, b"both", ANSWERED),
        Ok(echoed(0, 1, b"both"))
    );
    assert_eq!(handlers[1].frames.load(Ordering::SeqCst), 1);
    drop(stalled);
}

#[test]
fn lying_length_prefixes_from_an_authenticated_peer_never_reach_the_handler() {
    let (networks, handlers) = cluster(2);
    let address = networks[1].local_addr();
    let headers = credentials("0", SECRET);
    // A prefix announcing 4 GiB, more than the frame limit: refused by its prefix, with
    // the stream still open (nothing is buffered waiting for the rest).
    let status = raw_grpc_call(
        address,
        "/chimaera.Peer/Call",
        &headers,
        &[&[0, 0xff, 0xff, 0xff, 0xff]],
        false,
    );
    assert_eq!(status.as_deref(), Some("11"), "expected out of range");
    // A truncated message: the prefix says 100 bytes, 10 come, then the end.
    let mut truncated = vec![0, 0, 0, 0, 100];
    truncated.extend_from_slice(&[7; 10]);
    let status = raw_grpc_call(
        address,
        "/chimaera.Peer/Call",
        &headers,
        &[&truncated],
        true,
    );
    assert_ne!(
        status.as_deref(),
        Some("0"),
        "a truncated frame is an error"
    );
    // A compressed flag this server never negotiated.
    let mut compressed = grpc_message(b"zz");
    compressed[0] = 1;
    let status = raw_grpc_call(
        address,
        "/chimaera.Peer/Call",
        &headers,
        &[&compressed],
        true,
    );
    assert_ne!(
        status.as_deref(),
        Some("0"),
        "an unnegotiated compressed frame is an error"
    );
    // A leave notice with a body.
    let status = raw_grpc_call(
        address,
        "/chimaera.Peer/Leave",
        &headers,
        &[&grpc_message(b"x")],
        true,
    );
    assert_eq!(status.as_deref(), Some("11"), "a leave notice has no body");
    // An unknown method.
    let status = raw_grpc_call(
        address,
        "/chimaera.Peer/Other",
        &headers,
        &[&grpc_message(b"x")],
        true,
    );
    assert_eq!(status.as_deref(), Some("12"), "expected unimplemented");
    assert_eq!(handlers[1].frames.load(Ordering::SeqCst), 0);
    assert!(handlers[1].left.lock().unwrap().is_empty());
    assert_eq!(
        call(&networks[0], 1, b"alive", ANSWERED),
        Ok(echoed(1, 0, b"alive"))
    );
}

#[test]
fn a_broken_call_stream_fails_alone_and_never_reaches_the_handler() {
    let (networks, handlers) = cluster(2);
    let address = networks[1].local_addr();
    let member = credentials("0", SECRET);
    // A call message shorter than its 16-byte head (id, timeout): the stream ends with
    // invalid_argument; nothing reaches the handler.
    let status = raw_grpc_call(
        address,
        "/chimaera.Peer/Stream",
        &member,
        &[&grpc_message(&[1, 2, 3])],
        true,
    );
    assert_eq!(status.as_deref(), Some("3"), "expected invalid argument");
    // A stranger opening a stream is refused on its headers.
    let stranger = credentials("0", "not-the-secret");
    let status = raw_grpc_call(
        address,
        "/chimaera.Peer/Stream",
        &stranger,
        &[&grpc_message(&[0; 40])],
        true,
    );
    assert_eq!(status.as_deref(), Some("16"), "expected unauthenticated");
    // A prefix announcing more than the limit.
    let status = raw_grpc_call(
        address,
        "/chimaera.Peer/Stream",
        &member,
        &[&[0, 0xff, 0xff, 0xff, 0xff]],
        false,
    );
    assert_eq!(status.as_deref(), Some("11"), "expected out of range");
    assert_eq!(handlers[1].frames.load(Ordering::SeqCst), 0);
    // The real stream between the two nodes is not affected.
    assert_eq!(
        call(&networks[0], 1, b"alive", ANSWERED),
        Ok(echoed(1, 0, b"alive"))
    );
}

#[test]
fn large_and_small_frames_interleave_and_each_gets_its_own_answer() {
    // Frames over the call stream's limit (256 KiB) travel as their own calls; small
    // ones on the stream. Mixed and in flight together, every answer matches its call.
    let (networks, _handlers) = cluster(2);
    let frames: Vec<Vec<u8>> = (0..24u32)
        .map(|i| {
            let len = if i % 3 == 0 {
                (1 << 20) + i as usize
            } else {
                8 + i as usize
            };
            (0..len).map(|b| (b as u32 * 7 + i) as u8).collect()
        })
        .collect();
    let pending: Vec<_> = frames
        .iter()
        .map(|frame| start_call(&networks[0], 1, frame, ANSWERED))
        .collect();
    for (frame, answer) in frames.iter().zip(&pending) {
        assert_eq!(answer_of(answer), Ok(echoed(1, 0, frame)));
    }
}

#[test]
fn shutdown_answers_outstanding_calls_left_and_peers_see_it() {
    let (networks, handlers) = cluster(3);
    // Node 0 waits on node 1, node 1 waits on node 0.
    let outgoing = start_call(&networks[0], 1, b"hold-out", ANSWERED);
    let incoming = start_call(&networks[1], 0, b"hold-in", ANSWERED);
    handlers[1].wait_held(1);
    handlers[0].wait_held(1);
    networks[0].shutdown();
    assert_eq!(answer_of(&outgoing), Err(NetError::Left { node: 0 }));
    assert_eq!(answer_of(&incoming), Err(NetError::Left { node: 0 }));
    assert_eq!(*handlers[1].left.lock().unwrap(), vec![0]);
    assert_eq!(networks[1].peers()[0].state, PeerState::Left);
    // Node 2 never exchanged a frame with node 0 and is told too.
    assert_eq!(*handlers[2].left.lock().unwrap(), vec![0]);
    assert_eq!(networks[2].peers()[0].state, PeerState::Left);
    assert_eq!(
        call(&networks[0], 1, b"after", ANSWERED),
        Err(NetError::Left { node: 0 })
    );
    assert_eq!(
        call(&networks[1], 0, b"after", ANSWERED),
        Err(NetError::Left { node: 0 })
    );
    networks[0].shutdown();
}

#[test]
fn shutdown_from_another_runtime_or_from_a_reply_does_not_hang() {
    let (mut networks, handlers) = cluster(3);
    // Inside a foreign tokio runtime: shutdown still waits for its leave notices.
    let first = networks.remove(0);
    assert_eq!(
        call(&first, 1, b"hello", ANSWERED),
        Ok(echoed(1, 0, b"hello"))
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async { first.shutdown() });
    assert_eq!(*handlers[1].left.lock().unwrap(), vec![0]);
    // From a reply, on the network's own thread, holding the last handle to it.
    let second = Arc::new(networks.remove(0));
    let (send, replied) = mpsc::channel();
    let handle = Arc::clone(&second);
    second.call(
        2,
        b"bye".to_vec(),
        ANSWERED,
        Box::new(move |answer| {
            handle.shutdown();
            send.send(answer).unwrap();
        }),
    );
    drop(second);
    assert_eq!(
        replied.recv_timeout(HANG).unwrap(),
        Ok(echoed(2, 1, b"bye"))
    );
    // Node 2 keeps serving whatever became of node 1.
    assert_eq!(
        call(&networks[0], 2, b"self", ANSWERED),
        Ok(echoed(2, 2, b"self"))
    );
    match call(&networks[0], 1, b"gone?", ANSWERED) {
        Err(error) => assert_eq!(node_named(&error), Some(1), "{error}"),
        Ok(answer) => panic!("a node that shut down answered {answer:?}"),
    }
}

#[test]
fn a_killed_peer_fails_calls_naming_it_and_serves_again_once_restarted() {
    let (mut listeners, addresses) = ephemeral_listeners(3);
    // Node 1 lives in a child process on a port of its own.
    drop(listeners.remove(1));
    let mut listeners = listeners.into_iter();
    let caller =
        TonicNetwork::with_listener(options(0, &addresses, SECRET), listeners.next().unwrap())
            .unwrap();
    caller.serve(Node::new(0));
    let bystander =
        TonicNetwork::with_listener(options(2, &addresses, SECRET), listeners.next().unwrap())
            .unwrap();
    bystander.serve(Node::new(2));

    let mut peer = PeerProcess::start(1, &addresses);
    assert_eq!(call(&caller, 1, b"one", ANSWERED), Ok(echoed(1, 0, b"one")));
    let in_flight = start_call(&caller, 1, b"hold", ANSWERED);
    peer.wait_for_line("held");
    peer.kill();

    match answer_of(&in_flight) {
        Err(NetError::Unreachable { node: 1, .. }) => {}
        other => {
            panic!("expected the in-flight call to fail Unreachable naming node 1, got {other:?}")
        }
    }
    match call(&caller, 1, b"two", Duration::from_secs(1)) {
        Err(error) => assert_eq!(node_named(&error), Some(1), "{error}"),
        Ok(answer) => panic!("a killed node answered {answer:?}"),
    }
    assert_ne!(caller.peers()[1].state, PeerState::Up);
    assert_eq!(
        call(&caller, 2, b"other", ANSWERED),
        Ok(echoed(2, 0, b"other"))
    );

    let _restarted = PeerProcess::start(1, &addresses);
    let start = Instant::now();
    loop {
        match call(&caller, 1, b"three", Duration::from_secs(1)) {
            Ok(answer) => {
                assert_eq!(answer, echoed(1, 0, b"three"));
                break;
            }
            Err(error) => {
                assert_eq!(node_named(&error), Some(1), "{error}");
                assert!(
                    start.elapsed() < HANG,
                    "the restarted node never answered: {error}"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    assert_eq!(caller.peers()[1].state, PeerState::Up);
}

/// A peer node in a child process (this test binary re-run as `peer_child_entry`).
struct PeerProcess {
    child: Child,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

impl PeerProcess {
    fn start(node: NodeId, addresses: &[SocketAddr]) -> PeerProcess {
        let addresses: Vec<String> = addresses.iter().map(ToString::to_string).collect();
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "peer_child_entry",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(ROLE, format!("{node} {}", addresses.join(",")))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut peer = PeerProcess { child, lines };
        peer.wait_for_line("ready");
        peer
    }

    fn wait_for_line(&mut self, wanted: &str) {
        for line in &mut self.lines {
            // The harness prints `test peer_child_entry ... ` before the first line.
            if line.unwrap().ends_with(wanted) {
                return;
            }
        }
        panic!("the peer process exited before printing {wanted:?}");
    }

    fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for PeerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A handler that says on stdout when it holds a frame (the parent kills it then).
struct ChildNode(Arc<Node>);

impl FrameHandler for ChildNode {
    fn handle(&self, from: NodeId, frame: Vec<u8>, respond: Responder) {
        let hold = frame.starts_with(b"hold");
        self.0.handle(from, frame, respond);
        if hold {
            println!("held");
        }
    }
}

#[test]
#[ignore = "entry point of the peer child process, started by the tests in this file"]
fn peer_child_entry() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let (node, addresses) = role.split_once(' ').unwrap();
    let node: NodeId = node.parse().unwrap();
    let addresses: Vec<SocketAddr> = addresses.split(',').map(|a| a.parse().unwrap()).collect();
    let network = TonicNetwork::new(options(node, &addresses, SECRET)).unwrap();
    network.serve(Arc::new(ChildNode(Node::new(node))));
    println!("ready");
    // Serve until the parent goes away (it holds the other end of stdin).
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
}

/// `payload` as one uncompressed gRPC message (flag byte, big-endian length, bytes).
/// The metadata a peer claiming node `node` with `secret` sends.
fn credentials(node: &str, secret: &str) -> [(&'static str, String); 2] {
    [
        ("chimaera-node", node.to_owned()),
        ("chimaera-secret", secret.to_owned()),
    ]
}

fn grpc_message(payload: &[u8]) -> Vec<u8> {
    let mut message = vec![0];
    message.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    message.extend_from_slice(payload);
    message
}

/// Sends one gRPC request over a bare HTTP/2 connection, as a hostile peer could, and
/// returns the `grpc-status` of the answer (from its headers or its trailers).
fn raw_grpc_call(
    address: SocketAddr,
    path: &str,
    headers: &[(&str, String)],
    body: &[&[u8]],
    end_stream: bool,
) -> Option<String> {
    block_on(async {
        let mut client = raw_connection(address).await;
        grpc_request(&mut client, address, path, headers, body, end_stream)
            .await
            .unwrap()
    })
}

fn block_on<T>(future: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(future)
}

/// An HTTP/2 connection from 127.0.0.1 (explicitly: the kernel may pick another loopback
/// source).
async fn raw_connection(address: SocketAddr) -> h2::client::SendRequest<Bytes> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(([127, 0, 0, 1], 0).into()).unwrap();
    let tcp = socket.connect(address).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// One call on `client` with `body` (each item sent as it is, then the end of the
/// stream): its `grpc-status` and the payloads of the gRPC messages of its answer.
async fn raw_call_messages(
    client: &mut h2::client::SendRequest<Bytes>,
    address: SocketAddr,
    headers: &[(&str, String)],
    body: &[&[u8]],
) -> (Option<String>, Vec<Vec<u8>>) {
    raw_call_messages_checked(client, address, headers, body)
        .await
        .expect("the connection carries the call")
}

/// [`raw_call_messages`], or the connection's error.
async fn raw_call_messages_checked(
    client: &mut h2::client::SendRequest<Bytes>,
    address: SocketAddr,
    headers: &[(&str, String)],
    body: &[&[u8]],
) -> Result<(Option<String>, Vec<Vec<u8>>), h2::Error> {
    let mut ready = client.clone().ready().await?;
    let mut request = http::Request::builder()
        .method("POST")
        .uri(format!("http://{address}/chimaera.Peer/Call"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (name, value) in headers {
        request = request.header(*name, value.as_str());
    }
    let (response, mut stream) = ready.send_request(request.body(()).unwrap(), false)?;
    *client = ready;
    for (i, chunk) in body.iter().enumerate() {
        let _ = stream.send_data(Bytes::copy_from_slice(chunk), i + 1 == body.len());
    }
    let response = tokio::time::timeout(HANG, response)
        .await
        .expect("the server answers")?;
    let status_of = |headers: &http::HeaderMap| {
        headers
            .get("grpc-status")
            .map(|value| value.to_str().unwrap().to_owned())
    };
    if let Some(status) = status_of(response.headers()) {
        return Ok((Some(status), Vec::new()));
    }
    let mut body = response.into_body();
    let mut bytes = Vec::new();
    while let Some(data) = body.data().await {
        let data = data?;
        let _ = body.flow_control().release_capacity(data.len());
        bytes.extend_from_slice(&data);
    }
    let trailers = tokio::time::timeout(HANG, body.trailers())
        .await
        .expect("the server ends the answer")?;
    let mut messages = Vec::new();
    let mut rest = &bytes[..];
    while rest.len() >= 5 {
        let len = u32::from_be_bytes(rest[1..5].try_into().unwrap()) as usize;
        messages.push(rest[5..5 + len].to_vec());
        rest = &rest[5 + len..];
    }
    Ok((trailers.as_ref().and_then(status_of), messages))
}

/// Two calls on one connection, `pause` apart: the first call's status, and the second's
/// (`None` if the connection was closed meanwhile).
async fn two_calls_apart(
    address: SocketAddr,
    first: &[(&str, String)],
    second: &[(&str, String)],
    pause: Duration,
) -> (Option<String>, Option<String>) {
    let frame = grpc_message(b"x");
    let path = "/chimaera.Peer/Call";
    let mut client = raw_connection(address).await;
    let first = grpc_request(&mut client, address, path, first, &[&frame], true).await;
    tokio::time::sleep(pause).await;
    let second = grpc_request(&mut client, address, path, second, &[&frame], true).await;
    (first.unwrap(), second.ok().flatten())
}

/// One gRPC request on `client`: the answer's `grpc-status`, or the connection's error.
async fn grpc_request(
    client: &mut h2::client::SendRequest<Bytes>,
    address: SocketAddr,
    path: &str,
    headers: &[(&str, String)],
    body: &[&[u8]],
    end_stream: bool,
) -> Result<Option<String>, h2::Error> {
    let mut ready = client.clone().ready().await?;
    let mut request = http::Request::builder()
        .method("POST")
        .uri(format!("http://{address}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (name, value) in headers {
        request = request.header(*name, value.as_str());
    }
    let (response, mut stream) = ready.send_request(request.body(()).unwrap(), false)?;
    *client = ready;
    for (i, chunk) in body.iter().enumerate() {
        let last = end_stream && i + 1 == body.len();
        // The server may answer (and reset the stream) before reading all of it.
        let _ = stream.send_data(Bytes::copy_from_slice(chunk), last);
    }
    let response = tokio::time::timeout(HANG, response)
        .await
        .expect("the server answers")?;
    let status_of = |headers: &http::HeaderMap| {
        headers
            .get("grpc-status")
            .map(|value| value.to_str().unwrap().to_owned())
    };
    if let Some(status) = status_of(response.headers()) {
        return Ok(Some(status));
    }
    let mut body = response.into_body();
    while let Some(data) = body.data().await {
        if data.is_err() {
            return Ok(None);
        }
    }
    let trailers = tokio::time::timeout(HANG, body.trailers())
        .await
        .expect("the server ends the answer");
    Ok(trailers.ok().flatten().as_ref().and_then(status_of))
}
