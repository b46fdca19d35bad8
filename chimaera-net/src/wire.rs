//! What travels between two runtimes: the two RPC paths, the metadata that authenticates
//! a call, the raw-bytes codec, frames cut into chunks and put back together, and the
//! small status vocabulary both sides share.
//!
//! # Frames in chunks
//!
//! `Call` streams both ways: a frame travels as gRPC messages of at most
//! [`NetOptions::chunk_bytes`](crate::NetOptions::chunk_bytes) each (one message for a
//! frame up to that size, the common case), its whole length announced up front in the
//! [`FRAME_LEN`] metadata; the answer comes back the same way. So no single HTTP/2
//! message is larger than a chunk, whatever the frame, and a receiver knows before it
//! buffers anything whether the frame fits [`MAX_FRAME_BYTES`]. Cutting a frame is free
//! (slices of one buffer); putting one back together copies it once, unless it came in
//! one chunk.
//!
//! # Invariants
//!
//! * **Frames are bytes, not protobuf.** [`RawFrameCodec`] writes a chunk as the gRPC
//!   message body unchanged (behind gRPC's own 5-byte length prefix) and reads it back
//!   unchanged; no schema, no protoc, no re-encoding.
//! * **Bounded both ways, at two levels**: tonic's decoder checks each message's length
//!   prefix against [`MAX_CHUNK_BYTES`] before it buffers the message, and [`assemble`]
//!   refuses an announced length over [`MAX_FRAME_BYTES`] before reading a chunk, and a
//!   stream that brings more than it announced (or than the limit) as soon as it does. A
//!   stream that ends short of its announcement is an error too, never a frame.
//! * **One status vocabulary.** Every status this crate's server produces on purpose
//!   carries a [`REASON`] entry; [`status_to_net_error`] maps a status back to a
//!   [`NetError`] naming the node, and tells the caller whether the link itself broke.
//!   A status without a reason came from the transport (connection refused, reset,
//!   protocol error) or from a peer that is not one of ours.

use crate::link::error_chain;
use bytes::{Buf, BufMut, Bytes};
use chimaera_core::ids::NodeId;
use chimaera_core::peer::{NetError, MAX_FRAME_BYTES};
use std::time::Duration;
use tokio_stream::Stream;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder, Streaming};
use tonic::metadata::MetadataMap;
use tonic::{Code, Status};

/// The largest chunk (one gRPC message) a node sends or accepts; a node's
/// [`NetOptions::chunk_bytes`](crate::NetOptions::chunk_bytes) is at most this, so nodes
/// with different chunk sizes still understand each other. The HTTP/2 stream window.
pub const MAX_CHUNK_BYTES: usize = 4 << 20;
/// The smallest chunk size a node may be set to.
pub const MIN_CHUNK_BYTES: usize = 4 << 10;

/// The unary RPC carrying one frame and its answer.
pub(crate) const CALL_PATH: &str = "/chimaera.Peer/Call";
/// The one-way notice that the calling node leaves the cluster (empty request and answer).
pub(crate) const LEAVE_PATH: &str = "/chimaera.Peer/Leave";

/// Metadata: the calling node's id, in decimal.
pub(crate) const FROM_NODE: &str = "chimaera-node";
/// Metadata: the cluster secret.
pub(crate) const SECRET: &str = "chimaera-secret";
/// Metadata on a status: why this crate's server answered with it.
pub(crate) const REASON: &str = "chimaera-reason";
/// Metadata: the whole length of the frame a call's chunks carry (on the request), or of
/// the answer (on the response); on a [`Reason::FrameTooLarge`] status, the length
/// that is over the limit.
pub(crate) const FRAME_LEN: &str = "chimaera-frame-len";

/// Why this crate's server answered a call with a status instead of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reason {
    /// The node is leaving, or its handler dropped the frame without answering.
    Left,
    /// The node's runtime has not started serving yet.
    Starting,
    /// The handler's answer is over [`MAX_FRAME_BYTES`].
    FrameTooLarge,
    /// The caller failed authentication.
    Unauthenticated,
}

impl Reason {
    fn as_str(self) -> &'static str {
        match self {
            Reason::Left => "left",
            Reason::Starting => "starting",
            Reason::FrameTooLarge => "frame-too-large",
            Reason::Unauthenticated => "unauthenticated",
        }
    }

    fn parse(text: &str) -> Option<Reason> {
        [
            Reason::Left,
            Reason::Starting,
            Reason::FrameTooLarge,
            Reason::Unauthenticated,
        ]
        .into_iter()
        .find(|reason| reason.as_str() == text)
    }

    /// The status this server sends for `self`.
    pub(crate) fn status(self, message: impl Into<String>) -> Status {
        let code = match self {
            Reason::Left | Reason::Starting => Code::Unavailable,
            Reason::FrameTooLarge => Code::OutOfRange,
            Reason::Unauthenticated => Code::Unauthenticated,
        };
        let mut status = Status::new(code, message);
        status.metadata_mut().insert(
            REASON,
            tonic::metadata::MetadataValue::from_static(self.as_str()),
        );
        status
    }
}

/// The status for a frame (a request or an answer) of `len` bytes, over the limit.
pub(crate) fn frame_too_large_status(len: usize) -> Status {
    let mut status = Reason::FrameTooLarge.status(format!(
        "a frame of {len} bytes is over the limit of {MAX_FRAME_BYTES} bytes"
    ));
    status.metadata_mut().insert(FRAME_LEN, len.into());
    status
}

/// The message of the status tonic reports when a call's `grpc-timeout` passes.
const TONIC_TIMEOUT_MESSAGE: &str = "Timeout expired";

/// A call's failure as this node reports it.
pub(crate) struct CallFailure {
    /// What the caller is told.
    pub(crate) error: NetError,
    /// The connection broke (or never was): drop it and reconnect with backoff.
    pub(crate) link_broken: bool,
    /// The peer said it is leaving.
    pub(crate) peer_left: bool,
}

/// Maps the status a call to `node` ended with onto the [`NetError`] its caller gets.
pub(crate) fn status_to_net_error(node: NodeId, status: &Status, timeout: Duration) -> CallFailure {
    let reason = status
        .metadata()
        .get(REASON)
        .and_then(|value| value.to_str().ok())
        .and_then(Reason::parse);
    let plain = |error| CallFailure {
        error,
        link_broken: false,
        peer_left: false,
    };
    match (status.code(), reason) {
        (_, Some(Reason::Left)) => CallFailure {
            error: NetError::Left { node },
            link_broken: false,
            peer_left: true,
        },
        (_, Some(Reason::Starting)) => plain(NetError::Unreachable {
            node,
            reason: "its runtime has not started serving yet".to_owned(),
        }),
        (_, Some(Reason::FrameTooLarge)) => plain(NetError::FrameTooLarge {
            len: status
                .metadata()
                .get(FRAME_LEN)
                .and_then(|value| value.to_str().ok())
                .and_then(|text| text.parse().ok())
                .unwrap_or(0),
            max: MAX_FRAME_BYTES as u64,
        }),
        (Code::Unauthenticated, _) | (_, Some(Reason::Unauthenticated)) => {
            plain(NetError::Refused {
                node,
                reason: status.message().to_owned(),
            })
        }
        // tonic's own deadline (the caller's `grpc-timeout`, on either side) reports a
        // cancellation with this message; other cancellations are a closed connection.
        (Code::DeadlineExceeded, None) => plain(NetError::DeadlineExceeded {
            node,
            timeout_ms: duration_ms(timeout),
        }),
        (Code::Cancelled, None) if status.message() == TONIC_TIMEOUT_MESSAGE => {
            plain(NetError::DeadlineExceeded {
                node,
                timeout_ms: duration_ms(timeout),
            })
        }
        // Our server never sends these without a reason: the peer speaks another protocol
        // (or an answer over the limit came from a peer that does not check it).
        (Code::OutOfRange | Code::InvalidArgument | Code::Unimplemented | Code::Internal, None) => {
            CallFailure {
                error: NetError::Malformed {
                    node,
                    reason: status.message().to_owned(),
                },
                link_broken: true,
                peer_left: false,
            }
        }
        // The transport's status says little ("operation was canceled"); its source says
        // what happened ("connection closed", "invalid peer certificate").
        _ => CallFailure {
            error: transport_failure(node, status_reason(status)),
            link_broken: true,
            peer_left: false,
        },
    }
}

/// A connection to `node` failed for `reason`: a TLS certificate check (this node's or the
/// peer's, reported in an alert) is a refusal; anything else leaves it unreachable.
pub(crate) fn transport_failure(node: NodeId, reason: String) -> NetError {
    let lowercase = reason.to_ascii_lowercase();
    if lowercase.contains("certificate") || lowercase.contains("fatal alert") {
        NetError::Refused { node, reason }
    } else {
        NetError::Unreachable { node, reason }
    }
}

/// A status's message followed by its sources (not its `Display`, which repeats them in
/// `Debug` form).
fn status_reason(status: &Status) -> String {
    match std::error::Error::source(status) {
        Some(source) => format!("{}: {}", status.message(), error_chain(source)),
        None => status.message().to_owned(),
    }
}

/// `duration` in whole milliseconds, saturating.
pub(crate) fn duration_ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// `frame` cut into chunks of at most `chunk` bytes (slices of one buffer, no copy); an
/// empty frame is one empty chunk.
pub(crate) fn chunked(frame: Vec<u8>, chunk: usize) -> impl Stream<Item = Bytes> + Send {
    let frame = Bytes::from(frame);
    let chunk = chunk.max(1);
    let count = frame.len().div_ceil(chunk).max(1);
    tokio_stream::iter((0..count).map(move |i| {
        let start = i * chunk;
        frame.slice(start..(start + chunk).min(frame.len()))
    }))
}

/// Sets the [`FRAME_LEN`] of a request or response carrying a `len`-byte frame.
pub(crate) fn announce(metadata: &mut MetadataMap, len: usize) {
    metadata.insert(FRAME_LEN, len.into());
}

/// The whole length `metadata` announces: `Ok(None)` when it announces none (a peer
/// that streams without saying how much: bounded by the limit alone), an error when the
/// value is no number.
pub(crate) fn announced_len(metadata: &MetadataMap) -> Result<Option<usize>, Assembly> {
    match metadata.get(FRAME_LEN) {
        None => Ok(None),
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|text| text.parse::<u64>().ok())
            .map(|len| Some(usize::try_from(len).unwrap_or(usize::MAX)))
            .ok_or(Assembly::BadAnnouncement),
    }
}

/// Why chunks did not make a frame.
#[derive(Debug)]
pub(crate) enum Assembly {
    /// The announced length is no number.
    BadAnnouncement,
    /// The announced length, or what the stream brought, is over [`MAX_FRAME_BYTES`].
    TooLarge {
        /// The length announced or reached.
        len: u64,
    },
    /// The stream brought more than it announced.
    Overrun {
        /// What it announced.
        announced: u64,
    },
    /// The stream ended short of what it announced.
    Truncated {
        /// What it announced.
        announced: u64,
        /// What came.
        got: u64,
    },
    /// The stream failed (the peer's status, or the transport's).
    Status(Status),
}

impl std::fmt::Display for Assembly {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Assembly::BadAnnouncement => write!(f, "its announced frame length is no number"),
            Assembly::TooLarge { len } => write!(
                f,
                "a frame of {len} bytes is over the limit of {MAX_FRAME_BYTES} bytes"
            ),
            Assembly::Overrun { announced } => write!(
                f,
                "it streamed more than the {announced} bytes it announced"
            ),
            Assembly::Truncated { announced, got } => write!(
                f,
                "its stream ended after {got} of the {announced} bytes it announced (truncated)"
            ),
            Assembly::Status(status) => write!(f, "{}", status.message()),
        }
    }
}

/// Reads the chunks of `stream` into one frame of the `announced` length (if any), never
/// more than [`MAX_FRAME_BYTES`]: refused before a chunk is read when the announcement is
/// over it, cut off at the first chunk past the announcement or the limit.
pub(crate) async fn assemble(
    stream: &mut Streaming<Bytes>,
    announced: Option<usize>,
) -> Result<Vec<u8>, Assembly> {
    if let Some(len) = announced.filter(|&len| len > MAX_FRAME_BYTES) {
        return Err(Assembly::TooLarge { len: len as u64 });
    }
    let limit = announced.unwrap_or(MAX_FRAME_BYTES);
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut total = 0usize;
    while let Some(chunk) = stream.message().await.map_err(Assembly::Status)? {
        total = total.saturating_add(chunk.len());
        if total > limit {
            return Err(match announced {
                Some(announced) => Assembly::Overrun {
                    announced: announced as u64,
                },
                None => Assembly::TooLarge { len: total as u64 },
            });
        }
        chunks.push(chunk);
    }
    if let Some(announced) = announced.filter(|&announced| announced != total) {
        return Err(Assembly::Truncated {
            announced: announced as u64,
            got: total as u64,
        });
    }
    if chunks.len() == 1 {
        // One chunk: its buffer becomes the frame (no copy when it is the only owner).
        return Ok(Vec::from(chunks.pop().unwrap_or_default()));
    }
    let mut frame = Vec::with_capacity(total);
    for chunk in chunks {
        frame.extend_from_slice(&chunk);
    }
    Ok(frame)
}

/// Chunks as gRPC messages, byte for byte.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct RawFrameCodec;

impl Codec for RawFrameCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawFrameCodec;
    type Decoder = RawFrameCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawFrameCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawFrameCodec
    }
}

impl Encoder for RawFrameCodec {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, chunk: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.reserve(chunk.len());
        dst.put_slice(&chunk);
        Ok(())
    }
}

impl Decoder for RawFrameCodec {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        // tonic hands the decoder exactly one message, its length already checked against
        // the limit.
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}
