//! The network between chimaera-rs runtimes: [`TonicNetwork`], a
//! [`PeerNetwork`](chimaera_core::peer::PeerNetwork) on gRPC (tonic, HTTP/2).
//!
//! Each node serves one gRPC service with two unary methods: `Call` carries a frame (the
//! runtime's SaveIn/SaveOut archives, opaque here) and brings back the answer, `Leave`
//! tells a peer this node stops. Frames are the gRPC message bytes as they are — no
//! protobuf schema, no protoc at build time (see [`wire`](self) for the codec). Each peer
//! is reached over one long-lived HTTP/2 connection that every call multiplexes on,
//! opened on first use and reopened with bounded exponential backoff after a failure.
//!
//! # Invariants
//!
//! The contract of [`chimaera_core::peer`] (one answer per call by its deadline, bounded
//! opaque frames, authenticated peers, never blocking), kept as follows:
//!
//! * a call's deadline is both sent (`grpc-timeout`) and enforced by a local timer, so a
//!   peer that never answers cannot hold a caller past it;
//! * every call carries the cluster secret and the caller's node id as metadata; the
//!   server checks both (the secret in constant time) on the headers, before it reads the
//!   body, and refuses a failure with `unauthenticated` — logged, never handed on;
//! * frames over [`MAX_FRAME_BYTES`](chimaera_core::peer::MAX_FRAME_BYTES) are refused
//!   before they are sent and, by their length prefix, before they are buffered;
//! * the network runs on its own small tokio runtime; the core runtime stays synchronous.
//!
//! # Limits
//!
//! A shared secret proves membership, not identity; the source-address check then ties a
//! claimed node id to its host, but not to its port (nodes sharing a host can claim each
//! other's ids), and an attacker able to spoof addresses defeats it. Without TLS the
//! secret and frames cross the wire in clear: run a cluster on a trusted network until
//! mutual TLS is added.

mod link;
mod network;
mod options;
mod server;
mod wire;

pub use network::TonicNetwork;
pub use options::{NetOptions, NetSetupError};
