//! The network between chimaera-rs runtimes: [`TonicNetwork`], a
//! [`PeerNetwork`](chimaera_core::peer::PeerNetwork) on gRPC (tonic, HTTP/2).
//!
//! Each node serves one gRPC service with two methods: `Call` streams a frame (the
//! runtime's SaveIn/SaveOut archives, opaque here) in chunks and streams back the answer
//! the same way, `Leave` (unary) tells a peer this node stops. Frames are the gRPC message bytes as they are — no
//! protobuf schema, no protoc at build time (a hand-written codec and service). Each peer
//! is reached over one long-lived HTTP/2 connection that every call multiplexes on,
//! opened on first use and reopened with bounded exponential backoff after a failure.
//!
//! [`attach`] (with [`network_from_config`] and [`options_from_config`]) starts the
//! network a runtime's `networking:` config describes, so a runtime built in code joins
//! its cluster exactly as `chimaera runtime start` does.
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
//!   body, and refuses a failure with `unauthenticated` — logged, never handed on; the
//!   claimed node id must also come from that node's address;
//! * an incoming connection must carry an authenticated call within the connect timeout
//!   or it is closed, and only a bounded number wait for that at once: garbage, stalled
//!   handshakes and connection floods cost a bounded number of sockets for a bounded time;
//! * frames over [`MAX_FRAME_BYTES`](chimaera_core::peer::MAX_FRAME_BYTES) are refused
//!   before they are sent and, by their announced length, before they are buffered; a
//!   frame travels in chunks of at most [`NetOptions::chunk_bytes`] (one gRPC message
//!   each), so no HTTP/2 message is larger than [`MAX_CHUNK_BYTES`]; a peer that streams
//!   more than it announced, or less, loses its connection;
//! * the network runs on its own small tokio runtime; the core runtime stays synchronous.
//!
//! # Limits
//!
//! With [`PeerTls`] every connection is mutual TLS: only holders of a certificate the
//! cluster's authority signed get a connection at all. Without it the secret and frames
//! cross the wire in clear; run such a cluster on a trusted network only. Either way the
//! node id a caller claims is tied to its host by its source address (see
//! [`NetOptions::verify_peer_address`]), not to its port or its certificate: nodes that
//! share a host can claim each other's ids.

mod config;
mod guard;
mod link;
mod network;
mod options;
mod server;
mod wire;

pub use config::{attach, network_from_config, options_from_config, NetConfigError};
pub use network::TonicNetwork;
pub use options::{NetOptions, NetSetupError, PeerTls};
pub use wire::{MAX_CHUNK_BYTES, MIN_CHUNK_BYTES};
