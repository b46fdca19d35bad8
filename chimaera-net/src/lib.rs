//! The network between chimaera-rs runtimes: [`TonicNetwork`], a
//! [`PeerNetwork`](chimaera_core::peer::PeerNetwork) on gRPC (tonic, HTTP/2).
//!
//! Each node serves one gRPC service with three methods: `Stream`, a long-lived
//! bidirectional stream per calling peer that carries its small frames (the runtime's
//! SaveIn/SaveOut archives, opaque here) and their answers, each tagged with a call id
//! (see `stream.rs`); `Call`, a call of its own for a frame too large for the stream (so
//! it holds up no small one), streaming the frame in chunks and the answer back the same
//! way; `Leave`, telling a peer this node stops. Frames are message bytes as they are —
//! no protobuf schema, no protoc at build time (a hand-written codec and service). Each
//! peer is reached over one long-lived HTTP/2 connection that the stream and every large
//! call share, opened on first use and reopened with bounded exponential backoff after a
//! failure.
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
//! cluster's authority signed get a connection at all, and the node id a caller claims
//! must be backed by its certificate (its subject alternative names include the host of
//! that node's hostfile entry). Without it the secret and frames cross the wire in clear;
//! run such a cluster on a trusted network only. The node id a caller claims is also tied
//! to its host by its source address (see [`NetOptions::verify_peer_address`]). Neither
//! proves a port: nodes that share a host can claim each other's ids.

mod config;
mod guard;
mod identity;
mod link;
mod network;
mod options;
mod server;
mod stream;
mod wire;

pub use config::{attach, network_from_config, options_from_config, NetConfigError};
pub use network::TonicNetwork;
pub use options::{NetOptions, NetSetupError, PeerTls};
pub use wire::{MAX_CHUNK_BYTES, MIN_CHUNK_BYTES};
