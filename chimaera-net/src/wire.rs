//! What travels between two runtimes: the two RPC paths, the metadata that authenticates
//! a call, the raw-bytes codec, and the small status vocabulary both sides share.
//!
//! # Invariants
//!
//! * **Frames are bytes, not protobuf.** [`RawFrameCodec`] writes a frame as the gRPC
//!   message body unchanged (behind gRPC's own 5-byte length prefix) and reads it back
//!   unchanged; no schema, no protoc, no re-encoding.
//! * **Both directions are bounded by [`MAX_FRAME_BYTES`]**: tonic's decoder checks the
//!   length prefix against the limit before it buffers the message, so a peer announcing
//!   a larger message costs this node nothing.
//! * **One status vocabulary.** Every status this crate's server produces on purpose
//!   carries a [`REASON`] entry; [`status_to_net_error`] maps a status back to a
//!   [`NetError`] naming the node, and tells the caller whether the link itself broke.
//!   A status without a reason came from the transport (connection refused, reset,
//!   protocol error) or from a peer that is not one of ours.

use crate::link::error_chain;
use bytes::{Buf, BufMut};
use chimaera_core::ids::NodeId;
use chimaera_core::peer::{NetError, MAX_FRAME_BYTES};
use std::time::Duration;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::{Code, Status};

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
/// Metadata on a [`Reason::FrameTooLarge`] status: the answer's length.
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

/// The status for an answer of `len` bytes, over the limit.
pub(crate) fn frame_too_large_status(len: usize) -> Status {
    let mut status = Reason::FrameTooLarge.status(format!(
        "the answer of {len} bytes is over the limit of {MAX_FRAME_BYTES} bytes"
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

/// Frames as gRPC messages, byte for byte.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct RawFrameCodec;

impl Codec for RawFrameCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
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
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, frame: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.reserve(frame.len());
        dst.put_slice(&frame);
        Ok(())
    }
}

impl Decoder for RawFrameCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        // tonic hands the decoder exactly one message, its length already checked against
        // the limit; `Bytes` → `Vec` reuses the buffer when it is the only owner.
        Ok(Some(Vec::from(src.copy_to_bytes(src.remaining()))))
    }
}
