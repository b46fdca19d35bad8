//! The call stream: one long-lived bidirectional gRPC stream per peer that carries every
//! small frame to it and every answer back, each tagged with a call id.
//!
//! A unary gRPC call per frame costs a new HTTP/2 stream each time (headers, HPACK, the
//! authentication metadata, a server task): tens of microseconds per side. On the stream
//! a frame costs one length-prefixed message. Frames over [`STREAM_FRAME_MAX`] still go
//! as their own unary call, so a large frame never holds up small ones behind it.
//!
//! # Messages
//!
//! * call: `id: u64 LE`, `timeout_ms: u64 LE`, then the frame;
//! * answer: `id: u64 LE`, `kind: u8` ([`AnswerKind`]), `value: u64 LE` (the answer's
//!   whole length for [`AnswerKind::TooLarge`] and [`AnswerKind::Part`], else 0), then the
//!   answer frame (empty unless [`AnswerKind::Frame`] or [`AnswerKind::Part`]).
//!
//! An answer longer than the answering node's
//! [`chunk_bytes`](crate::NetOptions::chunk_bytes) goes as [`AnswerKind::Part`] messages
//! of that size, each announcing the whole length, and a last [`AnswerKind::Frame`]
//! message with the rest: no message on the stream is larger than a chunk (plus its
//! head), and the caller puts the parts back together, refusing more than announced (or
//! than the limit) and a last part that leaves it short.
//!
//! # Invariants
//!
//! * **Authenticated once, at the stream's start**: the stream's headers pass the same
//!   checks as a unary call's (see [`server`](crate::server)) before any message is read.
//! * **One answer per call.** The caller registers a call id before sending; the answer
//!   with that id (or the stream's end, or the deadline sweep, or this network's
//!   shutdown — whichever is first) removes it and runs its reply, so a late or
//!   duplicated answer finds no one and is dropped. A call is never answered on the
//!   thread that made it: replies run on the stream's tasks. On the serving side each call's [`Responder`] answers once; its
//!   drop (or the handler's panic) answers [`AnswerKind::Left`].
//! * **A broken stream fails its calls, not the node**: a message that does not parse
//!   ends that stream with `invalid_argument` (the caller sees
//!   [`NetError::Malformed`] and reconnects); the calls still waiting on it get the
//!   stream's failure at once instead of waiting for their deadlines.
//! * **Bounded messages**: both directions decode at most a chunk
//!   ([`MAX_CHUNK_BYTES`]) plus the message head, checked by tonic on the length prefix
//!   before buffering; a call's parts add up to at most [`MAX_FRAME_BYTES`].

use crate::link::error_chain;
use crate::network::{PendingReply, Shared};
use crate::wire::{
    duration_ms, frame_too_large_status, status_to_net_error, transport_failure, Reason,
    MAX_CHUNK_BYTES,
};
use bytes::{Buf, BufMut, Bytes};
use chimaera_core::ids::NodeId;
use chimaera_core::peer::{NetError, Responder, MAX_FRAME_BYTES};
use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Notify};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder, Streaming};
use tonic::codegen::BoxFuture;
use tonic::Status;

/// The bidirectional stream of calls and answers.
pub(crate) const STREAM_PATH: &str = "/chimaera.Peer/Stream";
/// Frames up to this length travel on the stream; longer ones as their own unary call.
pub(crate) const STREAM_FRAME_MAX: usize = 256 << 10;

const CALL_HEAD: usize = 16;
const ANSWER_HEAD: usize = 17;

/// A call as it travels.
pub(crate) struct CallMessage {
    pub(crate) id: u64,
    pub(crate) timeout_ms: u64,
    pub(crate) frame: Vec<u8>,
}

/// What an answer message says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AnswerKind {
    /// The handler's answer frame follows.
    Frame = 0,
    /// The node is leaving, or its handler dropped the call without answering.
    Left = 1,
    /// The node's runtime has not started serving yet.
    Starting = 2,
    /// The handler's answer was over [`MAX_FRAME_BYTES`]; `value` is its length.
    TooLarge = 3,
    /// A piece of an answer of `value` bytes; more pieces follow, the last one as
    /// [`AnswerKind::Frame`].
    Part = 4,
}

impl AnswerKind {
    fn from_byte(byte: u8) -> Option<AnswerKind> {
        [
            AnswerKind::Frame,
            AnswerKind::Left,
            AnswerKind::Starting,
            AnswerKind::TooLarge,
            AnswerKind::Part,
        ]
        .into_iter()
        .find(|kind| *kind as u8 == byte)
    }
}

/// An answer as it travels.
pub(crate) struct AnswerMessage {
    pub(crate) id: u64,
    pub(crate) kind: AnswerKind,
    pub(crate) value: u64,
    pub(crate) frame: Bytes,
}

impl AnswerMessage {
    fn refusal(id: u64, kind: AnswerKind, value: u64) -> AnswerMessage {
        AnswerMessage {
            id,
            kind,
            value,
            frame: Bytes::new(),
        }
    }

    /// What the caller of call `self.id` to `node` gets.
    fn outcome(self, node: NodeId) -> Result<Vec<u8>, NetError> {
        match self.kind {
            AnswerKind::Frame => Ok(Vec::from(self.frame)),
            AnswerKind::Part => Err(NetError::Malformed {
                node,
                reason: "a part of an answer came alone".to_owned(),
            }),
            AnswerKind::Left => Err(NetError::Left { node }),
            AnswerKind::Starting => Err(NetError::Unreachable {
                node,
                reason: "its runtime has not started serving yet".to_owned(),
            }),
            AnswerKind::TooLarge => Err(NetError::FrameTooLarge {
                len: self.value,
                max: MAX_FRAME_BYTES as u64,
            }),
        }
    }
}

fn malformed(what: &str, len: usize, head: usize) -> Status {
    Status::invalid_argument(format!(
        "a {what} message of {len} bytes is shorter than its {head}-byte head"
    ))
}

/// The caller's side: encodes calls, decodes answers.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct CallerCodec;

/// The serving side: decodes calls, encodes answers.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ServerCodec;

impl Codec for CallerCodec {
    type Encode = CallMessage;
    type Decode = AnswerMessage;
    type Encoder = CallerCodec;
    type Decoder = CallerCodec;

    fn encoder(&mut self) -> CallerCodec {
        CallerCodec
    }

    fn decoder(&mut self) -> CallerCodec {
        CallerCodec
    }
}

impl Encoder for CallerCodec {
    type Item = CallMessage;
    type Error = Status;

    fn encode(&mut self, call: CallMessage, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.reserve(CALL_HEAD + call.frame.len());
        dst.put_u64_le(call.id);
        dst.put_u64_le(call.timeout_ms);
        dst.put_slice(&call.frame);
        Ok(())
    }
}

impl Decoder for CallerCodec {
    type Item = AnswerMessage;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<AnswerMessage>, Status> {
        let len = src.remaining();
        if len < ANSWER_HEAD {
            return Err(malformed("answer", len, ANSWER_HEAD));
        }
        let id = src.get_u64_le();
        let kind = src.get_u8();
        let value = src.get_u64_le();
        let kind = AnswerKind::from_byte(kind)
            .ok_or_else(|| Status::invalid_argument(format!("an answer of unknown kind {kind}")))?;
        let frame = src.copy_to_bytes(src.remaining());
        Ok(Some(AnswerMessage {
            id,
            kind,
            value,
            frame,
        }))
    }
}

impl Codec for ServerCodec {
    type Encode = AnswerMessage;
    type Decode = CallMessage;
    type Encoder = ServerCodec;
    type Decoder = ServerCodec;

    fn encoder(&mut self) -> ServerCodec {
        ServerCodec
    }

    fn decoder(&mut self) -> ServerCodec {
        ServerCodec
    }
}

impl Encoder for ServerCodec {
    type Item = AnswerMessage;
    type Error = Status;

    fn encode(&mut self, answer: AnswerMessage, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.reserve(ANSWER_HEAD + answer.frame.len());
        dst.put_u64_le(answer.id);
        dst.put_u8(answer.kind as u8);
        dst.put_u64_le(answer.value);
        dst.put_slice(&answer.frame);
        Ok(())
    }
}

impl Decoder for ServerCodec {
    type Item = CallMessage;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<CallMessage>, Status> {
        let len = src.remaining();
        if len < CALL_HEAD {
            return Err(malformed("call", len, CALL_HEAD));
        }
        let id = src.get_u64_le();
        let timeout_ms = src.get_u64_le();
        let frame = Vec::from(src.copy_to_bytes(src.remaining()));
        Ok(Some(CallMessage {
            id,
            timeout_ms,
            frame,
        }))
    }
}

/// The longest message either side decodes: a chunk and its head (a frame on the stream
/// is at most [`STREAM_FRAME_MAX`], an answer is cut into chunks).
pub(crate) const MAX_MESSAGE_BYTES: usize = MAX_CHUNK_BYTES + ANSWER_HEAD;

// ---------------------------------------------------------------------------------------
// caller side

/// How often a stream with calls waiting checks their deadlines: a call fails at most
/// this long after its deadline.
const DEADLINE_SWEEP: Duration = Duration::from_millis(5);

/// A call sent on a stream, waiting for its answer.
struct Waiting {
    reply: PendingReply,
    deadline: Instant,
    timeout: Duration,
}

/// One open call stream to a peer.
///
/// A call is registered and sent from the calling thread ([`CallStream::submit`]), with
/// no task spawned; its [`ReplyFn`](chimaera_core::peer::ReplyFn) runs on the stream's
/// reader task when the answer comes, on its sweeper task when the deadline passes, or
/// wherever the stream is closed.
pub(crate) struct CallStream {
    node: NodeId,
    outgoing: mpsc::UnboundedSender<CallMessage>,
    /// `None` once closed: every call that was waiting has been answered.
    waiting: Mutex<Option<HashMap<u64, Waiting>>>,
    /// Answers coming in parts: the announced length and the parts so far, by call id
    /// (only for calls still waiting; dropped with their call).
    partial: Mutex<HashMap<u64, (u64, Vec<u8>)>>,
    /// Wakes the sweeper when the first call of a quiet spell is registered.
    calls_waiting: Notify,
    next_id: AtomicU64,
    /// Set by [`close`](Self::close): a lock-free answer to "is it still open" for the
    /// calling thread's fast path (`submit` still checks the map under its lock).
    closed: AtomicBool,
}

impl CallStream {
    fn waiting(&self) -> MutexGuard<'_, Option<HashMap<u64, Waiting>>> {
        // A map updated in one step at a time: a panic elsewhere cannot leave it torn.
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether calls may still go on this stream.
    pub(crate) fn is_open(&self) -> bool {
        !self.closed.load(Ordering::Acquire) && !self.outgoing.is_closed()
    }

    /// Sends `frame` as a call answered through `reply` by `deadline`; gives both back
    /// if the stream closed (the caller then opens another).
    pub(crate) fn submit(
        &self,
        frame: Vec<u8>,
        timeout: Duration,
        deadline: Instant,
        reply: PendingReply,
    ) -> Result<(), (Vec<u8>, PendingReply)> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        {
            let mut waiting = self.waiting();
            let Some(map) = waiting.as_mut() else {
                return Err((frame, reply));
            };
            if map.is_empty() {
                self.calls_waiting.notify_one();
            }
            map.insert(
                id,
                Waiting {
                    reply,
                    deadline,
                    timeout,
                },
            );
        }
        let call = CallMessage {
            id,
            timeout_ms: duration_ms(timeout),
            frame,
        };
        if let Err(mpsc::error::SendError(call)) = self.outgoing.send(call) {
            // The request side is gone: take the call back unless `close` answered it.
            let taken = self.waiting().as_mut().and_then(|map| map.remove(&id));
            if let Some(waiting) = taken {
                return Err((call.frame, waiting.reply));
            }
        }
        Ok(())
    }

    fn partial(&self) -> MutexGuard<'_, HashMap<u64, (u64, Vec<u8>)>> {
        self.partial.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn deliver(&self, answer: AnswerMessage) {
        let id = answer.id;
        let is_waiting = |stream: &Self| {
            stream
                .waiting()
                .as_ref()
                .is_some_and(|waiting| waiting.contains_key(&id))
        };
        let outcome = match answer.kind {
            AnswerKind::Part => {
                if !is_waiting(self) {
                    return;
                }
                match self.add_part(id, answer.value, &answer.frame) {
                    Ok(()) => return,
                    Err(error) => Err(error),
                }
            }
            AnswerKind::Frame => match self.partial().remove(&id) {
                Some((announced, mut parts)) => {
                    parts.extend_from_slice(&answer.frame);
                    if parts.len() as u64 == announced {
                        Ok(parts)
                    } else {
                        Err(self.malformed(format!(
                            "its answer in parts ended after {} of the {announced} bytes it announced",
                            parts.len()
                        )))
                    }
                }
                None => answer.outcome(self.node),
            },
            _ => answer.outcome(self.node),
        };
        self.partial().remove(&id);
        let waiting = self.waiting().as_mut().and_then(|map| map.remove(&id));
        // A late or duplicated answer finds no one.
        if let Some(waiting) = waiting {
            waiting.reply.answer(outcome);
        }
    }

    /// One part of the answer to call `id`, announced as `announced` bytes in all.
    fn add_part(&self, id: u64, announced: u64, part: &[u8]) -> Result<(), NetError> {
        if announced > MAX_FRAME_BYTES as u64 {
            return Err(NetError::FrameTooLarge {
                len: announced,
                max: MAX_FRAME_BYTES as u64,
            });
        }
        let mut partial = self.partial();
        let (expected, parts) = partial.entry(id).or_insert_with(|| (announced, Vec::new()));
        if *expected != announced || (parts.len() + part.len()) as u64 >= announced {
            return Err(self.malformed(format!(
                "its answer in parts brought more than the {expected} bytes it announced"
            )));
        }
        if parts.is_empty() {
            parts.reserve_exact(announced as usize);
        }
        parts.extend_from_slice(part);
        Ok(())
    }

    /// Drops the parts gathered for calls no longer waiting (past their deadline).
    fn forget_orphan_parts(&self) {
        let mut partial = self.partial();
        if partial.is_empty() {
            return;
        }
        let waiting = self.waiting();
        partial.retain(|id, _| waiting.as_ref().is_some_and(|map| map.contains_key(id)));
    }

    fn malformed(&self, reason: String) -> NetError {
        NetError::Malformed {
            node: self.node,
            reason,
        }
    }

    /// Answers every call whose deadline passed; `false` once the stream closed.
    fn expire(&self, now: Instant) -> bool {
        let expired: Vec<Waiting> = {
            let mut guard = self.waiting();
            let Some(map) = guard.as_mut() else {
                return false;
            };
            let ids: Vec<u64> = map
                .iter()
                .filter(|(_, waiting)| waiting.deadline <= now)
                .map(|(id, _)| *id)
                .collect();
            ids.iter().filter_map(|id| map.remove(id)).collect()
        };
        self.forget_orphan_parts();
        for waiting in expired {
            let error = NetError::DeadlineExceeded {
                node: self.node,
                timeout_ms: duration_ms(waiting.timeout),
            };
            waiting.reply.answer(Err(error));
        }
        true
    }

    fn has_waiting(&self) -> Option<bool> {
        self.waiting().as_ref().map(|map| !map.is_empty())
    }

    /// Ends the stream: every call still waiting gets `error`.
    fn close(&self, error: &NetError) {
        self.closed.store(true, Ordering::Release);
        let waiting = self.waiting().take();
        for (_, waiting) in waiting.into_iter().flatten() {
            waiting.reply.answer(Err(error.clone()));
        }
        // Wakes the sweeper so it sees the stream closed.
        self.calls_waiting.notify_one();
    }
}

/// Opens a call stream to `node` on its channel of `generation`, with the task that
/// delivers its answers and the one that fails calls past their deadlines.
pub(crate) async fn open(
    shared: &Arc<Shared>,
    node: NodeId,
    channel: tonic::transport::Channel,
    generation: u64,
) -> Result<Arc<CallStream>, NetError> {
    let link = &shared.links[node as usize];
    let (outgoing, calls) = mpsc::unbounded_channel();
    let mut request = tonic::Request::new(UnboundedReceiverStream::new(calls));
    shared.authenticate(&mut request);
    let mut grpc = tonic::client::Grpc::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    if let Err(error) = grpc.ready().await {
        return Err(link.broken(Some(generation), error_chain(&error)));
    }
    let path = http::uri::PathAndQuery::from_static(STREAM_PATH);
    let mut answers = match grpc.streaming(request, path, CallerCodec).await {
        Ok(response) => response.into_inner(),
        Err(status) => {
            let failure = status_to_net_error(node, &status, Duration::ZERO);
            link.call_failed(generation, &failure, status.message());
            return Err(failure.error);
        }
    };
    link.succeeded(generation);
    let stream = Arc::new(CallStream {
        node,
        outgoing,
        waiting: Mutex::new(Some(HashMap::new())),
        partial: Mutex::new(HashMap::new()),
        calls_waiting: Notify::new(),
        next_id: AtomicU64::new(0),
        closed: AtomicBool::new(false),
    });
    let sweeper = Arc::clone(&stream);
    tokio::spawn(async move {
        loop {
            match sweeper.has_waiting() {
                None => return,
                Some(false) => sweeper.calls_waiting.notified().await,
                Some(true) => {
                    tokio::time::sleep(DEADLINE_SWEEP).await;
                    if !sweeper.expire(Instant::now()) {
                        return;
                    }
                }
            }
        }
    });
    let reader = Arc::clone(&stream);
    let shared = Arc::clone(shared);
    tokio::spawn(async move {
        let mut shutdown = shared.shutdown.subscribe();
        let error = loop {
            tokio::select! {
                biased;
                _ = shutdown.wait_for(|down| *down) => {
                    break NetError::Left { node: shared.this_node };
                }
                answer = answers.message() => match answer {
                    Ok(Some(answer)) => reader.deliver(answer),
                    Ok(None) => {
                        let reason = "the peer ended the call stream";
                        shared.links[node as usize].fail(Some(generation), reason);
                        break transport_failure(node, reason.to_owned());
                    }
                    Err(status) => {
                        let failure = status_to_net_error(node, &status, Duration::ZERO);
                        let link = &shared.links[node as usize];
                        if failure.peer_left {
                            link.mark_left();
                        } else {
                            link.fail(Some(generation), status.message());
                        }
                        break failure.error;
                    }
                }
            }
        };
        tracing::debug!(node, %error, "a call stream ended");
        reader.close(&error);
    });
    Ok(stream)
}

// ---------------------------------------------------------------------------------------
// serving side

type AnswerSender = mpsc::UnboundedSender<Result<AnswerMessage, Status>>;
type AnswerStream = UnboundedReceiverStream<Result<AnswerMessage, Status>>;

/// Serves the call stream of node `from` (authenticated already).
pub(crate) struct StreamMethod {
    pub(crate) shared: Arc<Shared>,
    pub(crate) from: NodeId,
}

impl tonic::server::StreamingService<CallMessage> for StreamMethod {
    type Response = AnswerMessage;
    type ResponseStream = AnswerStream;
    type Future = BoxFuture<tonic::Response<AnswerStream>, Status>;

    fn call(&mut self, request: tonic::Request<Streaming<CallMessage>>) -> Self::Future {
        let (answers, stream) = mpsc::unbounded_channel();
        tokio::spawn(serve_calls(
            Arc::clone(&self.shared),
            self.from,
            request.into_inner(),
            answers,
        ));
        Box::pin(async move { Ok(tonic::Response::new(UnboundedReceiverStream::new(stream))) })
    }
}

/// Reads `from`'s calls until it ends its side, breaks the stream, or this node shuts
/// down; each call goes to the handler with a responder that answers on the stream.
async fn serve_calls(
    shared: Arc<Shared>,
    from: NodeId,
    mut calls: Streaming<CallMessage>,
    answers: AnswerSender,
) {
    let this_node = shared.this_node;
    let mut shutdown = shared.shutdown.subscribe();
    loop {
        tokio::select! {
            biased;
            _ = shutdown.wait_for(|down| *down) => {
                let _ = answers.send(Err(Reason::Left.status(format!(
                    "node {this_node} is leaving the cluster"
                ))));
                return;
            }
            call = calls.message() => match call {
                Ok(Some(call)) => serve_call(&shared, from, call, &answers),
                Ok(None) => return,
                Err(status) => {
                    tracing::warn!(from, %status, "a peer's call stream broke");
                    let _ = answers.send(Err(status));
                    return;
                }
            }
        }
    }
}

fn serve_call(shared: &Shared, from: NodeId, call: CallMessage, answers: &AnswerSender) {
    let id = call.id;
    if *shared.shutdown.borrow() {
        let _ = answers.send(Ok(AnswerMessage::refusal(id, AnswerKind::Left, 0)));
        return;
    }
    let Some(handler) = shared.handler.get() else {
        let _ = answers.send(Ok(AnswerMessage::refusal(id, AnswerKind::Starting, 0)));
        return;
    };
    let slot = AnswerSlot {
        id,
        answers: Some(answers.clone()),
        chunk: shared.chunk_bytes,
    };
    let responder = Responder::new(move |answer| slot.answer(answer));
    if catch_unwind(AssertUnwindSafe(|| {
        handler.handle(from, call.frame, responder)
    }))
    .is_err()
    {
        tracing::error!(from, "the frame handler panicked on a peer's frame");
    }
}

/// Where one call's answer goes; answers [`AnswerKind::Left`] if dropped unanswered.
struct AnswerSlot {
    id: u64,
    answers: Option<AnswerSender>,
    /// The longest piece an answer goes in.
    chunk: usize,
}

impl AnswerSlot {
    fn answer(mut self, frame: Vec<u8>) {
        let Some(answers) = self.answers.take() else {
            return;
        };
        let len = frame.len();
        if len > MAX_FRAME_BYTES {
            tracing::warn!(
                len,
                status = %frame_too_large_status(len),
                "an answer over the frame limit was refused"
            );
            let refusal = AnswerMessage::refusal(self.id, AnswerKind::TooLarge, len as u64);
            let _ = answers.send(Ok(refusal));
            return;
        }
        // Parts of at most a chunk (slices of one buffer), the last one as the frame.
        let frame = Bytes::from(frame);
        let chunk = self.chunk.max(1);
        let mut start = 0;
        while len - start > chunk {
            let part = AnswerMessage {
                id: self.id,
                kind: AnswerKind::Part,
                value: len as u64,
                frame: frame.slice(start..start + chunk),
            };
            // The stream may have ended (the caller went away): nobody to tell.
            let _ = answers.send(Ok(part));
            start += chunk;
        }
        let last = AnswerMessage {
            id: self.id,
            kind: AnswerKind::Frame,
            value: 0,
            frame: frame.slice(start..),
        };
        let _ = answers.send(Ok(last));
    }
}

impl Drop for AnswerSlot {
    fn drop(&mut self) {
        if let Some(answers) = self.answers.take() {
            let _ = answers.send(Ok(AnswerMessage::refusal(self.id, AnswerKind::Left, 0)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answer_kinds_round_trip_through_their_byte_and_unknown_ones_do_not_parse() {
        for kind in [
            AnswerKind::Frame,
            AnswerKind::Left,
            AnswerKind::Starting,
            AnswerKind::TooLarge,
            AnswerKind::Part,
        ] {
            assert_eq!(AnswerKind::from_byte(kind as u8), Some(kind));
        }
        assert_eq!(AnswerKind::from_byte(5), None);
        assert_eq!(AnswerKind::from_byte(255), None);
    }

    #[test]
    fn a_refusal_becomes_the_typed_error_naming_the_node() {
        let too_large = AnswerMessage::refusal(3, AnswerKind::TooLarge, 5 << 30);
        assert_eq!(
            too_large.outcome(2),
            Err(NetError::FrameTooLarge {
                len: 5 << 30,
                max: MAX_FRAME_BYTES as u64
            })
        );
        assert_eq!(
            AnswerMessage::refusal(3, AnswerKind::Left, 0).outcome(2),
            Err(NetError::Left { node: 2 })
        );
        assert!(matches!(
            AnswerMessage::refusal(3, AnswerKind::Starting, 0).outcome(2),
            Err(NetError::Unreachable { node: 2, .. })
        ));
    }
}
