//! The receiving side: the hand-written gRPC service every node serves, with its three
//! methods (`Stream`, `Call`, `Leave`), its authentication, and the hand-off to the runtime's
//! [`FrameHandler`].
//!
//! # Invariants
//!
//! * **Authentication comes before the body.** The cluster secret (compared in constant
//!   time), the caller's node id, (unless turned off) that the connection comes from
//!   an address of that node and (with TLS) that its certificate names that node's host
//!   ([`crate::identity`]) are checked on the request's headers; a request that
//!   fails is answered `unauthenticated`, logged, and its body is never read, so an
//!   outsider cannot make this node buffer a frame, and nothing of it reaches the handler.
//! * **Strangers are cut off**: a connection must carry an authenticated call within
//!   [`NetOptions::connect_timeout`](crate::NetOptions::connect_timeout) or it is closed
//!   (see [`guard`](crate::guard)).
//! * **Bounded input.** tonic's decoder refuses a message whose length prefix is over
//!   [`MAX_CHUNK_BYTES`] (over 0 for `Leave`) before buffering it; a `Call` whose
//!   announced length is over [`MAX_FRAME_BYTES`], or whose chunks bring more than it
//!   announced (or the limit), or end short of it, is refused, logged, and its connection
//!   cut off ([`ConnectionInfo::cut_off`]) — nothing of it reaches the handler; garbage
//!   that is not HTTP/2 ends its own connection inside hyper, never the server.
//! * **One answer per frame.** The handler's [`Responder`] feeds a oneshot channel: its
//!   answer, its drop (or a panic of the handler) answered [`Reason::Left`], this node's
//!   shutdown answered [`Reason::Left`] — whichever comes first. A handler that never
//!   answers holds the call only until the caller's deadline (`grpc-timeout`) or
//!   [`NetOptions::max_incoming_call`](crate::NetOptions::max_incoming_call).

use crate::guard::ConnectionInfo;
use crate::network::Shared;
use crate::stream::{ServerCodec, StreamMethod, MAX_MESSAGE_BYTES, STREAM_PATH};
use crate::wire::{
    announce, announced_len, assemble, chunked, frame_too_large_status, Assembly, RawFrameCodec,
    Reason, CALL_PATH, FROM_NODE, LEAVE_PATH, MAX_CHUNK_BYTES, SECRET,
};
use bytes::Bytes;
use chimaera_core::ids::NodeId;
use chimaera_core::peer::{Responder, MAX_FRAME_BYTES};
use rustls_pki_types::CertificateDer;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;
use tokio_stream::{Stream, StreamExt};
use tonic::body::Body;
use tonic::codec::Streaming;
use tonic::codegen::{BoxFuture, Service};
use tonic::server::{Grpc, StreamingService, UnaryService};
use tonic::transport::server::TlsConnectInfo;
use tonic::Status;

/// The service behind this node's port.
#[derive(Clone)]
pub(crate) struct PeerService {
    pub(crate) shared: Arc<Shared>,
}

impl Service<http::Request<Body>> for PeerService {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let shared = Arc::clone(&self.shared);
        Box::pin(async move { Ok(serve_request(shared, request).await) })
    }
}

async fn serve_request(shared: Arc<Shared>, request: http::Request<Body>) -> http::Response<Body> {
    let extensions = request.extensions();
    let connection = extensions
        .get::<ConnectionInfo>()
        .or_else(|| {
            extensions
                .get::<TlsConnectInfo<ConnectionInfo>>()
                .map(TlsConnectInfo::get_ref)
        })
        .cloned();
    let remote = connection.as_ref().and_then(ConnectionInfo::remote_addr);
    let peer_certificates = extensions
        .get::<TlsConnectInfo<ConnectionInfo>>()
        .and_then(TlsConnectInfo::peer_certs);
    let method = match request.uri().path() {
        CALL_PATH => Method::Call,
        STREAM_PATH => Method::Stream,
        LEAVE_PATH => Method::Leave,
        other => {
            tracing::warn!(
                ?remote,
                path = other,
                "refused a request for an unknown method"
            );
            return Status::unimplemented(format!("no method {other}")).into_http();
        }
    };
    let from = match authenticate(
        &shared,
        request.headers(),
        remote,
        peer_certificates.as_deref().map(Vec::as_slice),
    ) {
        Ok(from) => {
            if let Some(connection) = &connection {
                connection.mark_authenticated();
            }
            // The peer runs: calls to it need not wait out a backoff from before it
            // started.
            if let Some(link) = shared.links.get(from as usize) {
                link.heard_from();
            }
            from
        }
        Err(why) => {
            shared.refusals.record(remote, why);
            return Reason::Unauthenticated
                .status(format!("node {} refused the call: {why}", shared.this_node))
                .into_http();
        }
    };
    match method {
        Method::Call => {
            Grpc::new(RawFrameCodec)
                .max_decoding_message_size(MAX_CHUNK_BYTES)
                .max_encoding_message_size(MAX_CHUNK_BYTES)
                .streaming(
                    CallMethod {
                        shared,
                        from,
                        connection,
                    },
                    request,
                )
                .await
        }
        Method::Stream => {
            Grpc::new(ServerCodec)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES)
                .streaming(StreamMethod { shared, from }, request)
                .await
        }
        Method::Leave => {
            Grpc::new(RawFrameCodec)
                .max_decoding_message_size(0)
                .max_encoding_message_size(0)
                .unary(LeaveMethod { shared, from }, request)
                .await
        }
    }
}

/// The methods a node serves.
enum Method {
    /// One frame as a unary call (frames too large for the call stream).
    Call,
    /// The call stream: every other frame (see [`crate::stream`]).
    Stream,
    /// A peer's leave notice.
    Leave,
}

/// The caller's node id, once its secret matched, (when verified) its connection comes
/// from that node's address and (with TLS) its certificate names that node's host; else
/// why it is refused.
fn authenticate(
    shared: &Shared,
    headers: &http::HeaderMap,
    remote: Option<SocketAddr>,
    peer_certificates: Option<&[CertificateDer<'static>]>,
) -> Result<NodeId, &'static str> {
    let secret = headers.get(SECRET).ok_or("it sent no cluster secret")?;
    if !bool::from(secret.as_bytes().ct_eq(shared.secret.as_bytes())) {
        return Err("its cluster secret is wrong");
    }
    let from = headers
        .get(FROM_NODE)
        .ok_or("it sent no node id")?
        .to_str()
        .ok()
        .and_then(|text| text.parse::<NodeId>().ok())
        .ok_or("its node id is not a number")?;
    if from >= shared.nodes {
        return Err("its node id is not in this cluster");
    }
    let expected = shared
        .node_ips
        .get(from as usize)
        .map_or(&[][..], Vec::as_slice);
    if !expected.is_empty() {
        let remote = remote.ok_or("its address is unknown")?.ip().to_canonical();
        if !expected.contains(&remote) {
            return Err("it connects from another address than its node id's");
        }
    }
    if let Some(hosts) = &shared.certified_hosts {
        hosts.check(from, peer_certificates)?;
    }
    Ok(from)
}

/// Logs refused calls without letting a stranger flood the log: the first at once, then
/// at most one line per [`REFUSAL_LOG_INTERVAL`] with the count of those not logged.
#[derive(Default)]
pub(crate) struct RefusalLog {
    state: Mutex<RefusalLogState>,
}

#[derive(Default)]
struct RefusalLogState {
    last_logged: Option<Instant>,
    unlogged: u64,
}

/// The least time between two log lines about refused calls.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(1);

impl RefusalLog {
    fn record(&self, remote: Option<SocketAddr>, why: &str) {
        // Plain counters: a panic elsewhere cannot leave them half-written.
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if state
            .last_logged
            .is_some_and(|last| now.duration_since(last) < REFUSAL_LOG_INTERVAL)
        {
            state.unlogged += 1;
            return;
        }
        let unlogged = std::mem::take(&mut state.unlogged);
        state.last_logged = Some(now);
        drop(state);
        tracing::warn!(
            ?remote,
            why,
            refused_since_last_line = unlogged,
            "refused a peer's call: it failed authentication"
        );
    }
}

struct CallMethod {
    shared: Arc<Shared>,
    from: NodeId,
    connection: Option<ConnectionInfo>,
}

/// An answer's chunks.
type AnswerChunks = Pin<Box<dyn Stream<Item = Result<Bytes, Status>> + Send>>;

impl StreamingService<Bytes> for CallMethod {
    type Response = Bytes;
    type ResponseStream = AnswerChunks;
    type Future = BoxFuture<tonic::Response<AnswerChunks>, Status>;

    fn call(&mut self, request: tonic::Request<Streaming<Bytes>>) -> Self::Future {
        let shared = Arc::clone(&self.shared);
        let from = self.from;
        let connection = self.connection.clone();
        Box::pin(async move {
            let frame = match receive_frame(request).await {
                Ok(frame) => frame,
                // The stream failed underneath (a chunk over the limit, the caller gone):
                // tonic and hyper deal with the stream.
                Err(Assembly::Status(status)) => return Err(status),
                Err(why) => {
                    tracing::warn!(from, %why, "cut off a peer's connection: its frame broke the protocol");
                    if let Some(connection) = &connection {
                        connection.cut_off();
                    }
                    return Err(match why {
                        Assembly::TooLarge { len } => frame_too_large_status(len as usize),
                        other => Status::invalid_argument(other.to_string()),
                    });
                }
            };
            let answer = answer_call(&shared, from, frame).await?;
            let len = answer.len();
            let chunks = chunked(answer, shared.chunk_bytes).map(Ok);
            let mut response = tonic::Response::new(Box::pin(chunks) as AnswerChunks);
            announce(response.metadata_mut(), len);
            Ok(response)
        })
    }
}

/// The frame a call's chunks carry, bounded by its announcement and the limit.
async fn receive_frame(request: tonic::Request<Streaming<Bytes>>) -> Result<Vec<u8>, Assembly> {
    let announced = announced_len(request.metadata())?;
    let mut chunks = request.into_inner();
    assemble(&mut chunks, announced).await
}

async fn answer_call(shared: &Shared, from: NodeId, frame: Vec<u8>) -> Result<Vec<u8>, Status> {
    let this_node = shared.this_node;
    let mut shutdown = shared.shutdown.subscribe();
    if *shutdown.borrow() {
        return Err(Reason::Left.status(format!("node {this_node} is leaving the cluster")));
    }
    let Some(handler) = shared.handler.get() else {
        return Err(Reason::Starting.status(format!("node {this_node} is not serving yet")));
    };
    let (send, answer) = tokio::sync::oneshot::channel();
    let responder = Responder::new(move |answer| {
        // The caller may have gone (deadline passed): nobody to tell.
        let _ = send.send(answer);
    });
    if catch_unwind(AssertUnwindSafe(|| handler.handle(from, frame, responder))).is_err() {
        tracing::error!(from, "the frame handler panicked on a peer's frame");
    }
    tokio::select! {
        answer = answer => match answer {
            Ok(answer) if answer.len() > MAX_FRAME_BYTES => Err(frame_too_large_status(answer.len())),
            Ok(answer) => Ok(answer),
            Err(_) => Err(Reason::Left.status(format!(
                "node {this_node} dropped the frame without answering"
            ))),
        },
        _ = shutdown.wait_for(|down| *down) => {
            Err(Reason::Left.status(format!("node {this_node} is leaving the cluster")))
        }
    }
}

struct LeaveMethod {
    shared: Arc<Shared>,
    from: NodeId,
}

impl UnaryService<Bytes> for LeaveMethod {
    type Response = Bytes;
    type Future = BoxFuture<tonic::Response<Bytes>, Status>;

    fn call(&mut self, _request: tonic::Request<Bytes>) -> Self::Future {
        let shared = Arc::clone(&self.shared);
        let from = self.from;
        Box::pin(async move {
            tracing::info!(node = from, "peer left the cluster");
            if let Some(link) = shared.links.get(from as usize) {
                link.mark_left();
            }
            if let Some(handler) = shared.handler.get() {
                if catch_unwind(AssertUnwindSafe(|| handler.peer_left(from))).is_err() {
                    tracing::error!(from, "the frame handler panicked on a peer's leave notice");
                }
            }
            Ok(tonic::Response::new(Bytes::new()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_refusals_logs_one_line_and_counts_the_rest() {
        let log = RefusalLog::default();
        for _ in 0..100 {
            log.record(None, "its cluster secret is wrong");
        }
        let state = log.state.lock().unwrap();
        assert!(state.last_logged.is_some());
        assert_eq!(state.unlogged, 99);
    }
}
