//! [`TonicNetwork`]: the [`PeerNetwork`] of one node, its own tokio runtime, its server
//! task and one [`Link`] per node.
//!
//! # Invariants
//!
//! * **`call` never blocks**: it checks what it can without waiting (node id, frame
//!   length); a small frame to a peer whose call stream is open is queued on it right
//!   there (no task spawned), anything else is spawned onto the network's runtime; the
//!   [`ReplyFn`] always runs on a network thread, never inside `call`.
//! * **Exactly one answer per call, by the deadline.** A call's [`ReplyFn`] sits in a
//!   [`PendingReply`] that is answered once: with the peer's frame, with the typed error
//!   of its failure, with [`NetError::DeadlineExceeded`] when the local timer (or the
//!   call stream's deadline sweep) fires (the peer need not cooperate), or with [`NetError::Left`] when this network shuts down —
//!   and, should its task be dropped unpolled (the runtime going away), by its `Drop`.
//! * **Shutdown is ordered and idempotent**: leave notices to every peer first (those
//!   that left already excepted; ones that cannot be reached fail fast or time out)
//!   (bounded by `rpc_timeout`), then every outstanding call in both directions is
//!   answered `Left`, then the server closes its port. Later calls are answered `Left`.
//!   `shutdown` returns once all that is done (each wait bounded), except on one of the
//!   network's own threads (a reply shutting it down), where it cannot wait for them.
//! * **No cycle keeps it alive**: tasks hold [`Shared`], never the [`TonicNetwork`] that
//!   owns the runtime, so dropping the network stops its threads.

use crate::guard::Admission;
use crate::identity::CertifiedHosts;
use crate::link::{
    error_chain, Link, CONNECTION_WINDOW_BYTES, KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT,
    STREAM_WINDOW_BYTES,
};
use crate::options::{NetOptions, NetSetupError};
use crate::server::{PeerService, RefusalLog};
use crate::stream::{CallStream, STREAM_FRAME_MAX};
use crate::wire::{
    announce, announced_len, assemble, chunked, duration_ms, status_to_net_error, Assembly,
    RawFrameCodec, CALL_PATH, FROM_NODE, LEAVE_PATH, MAX_CHUNK_BYTES, SECRET,
};
use chimaera_core::ids::NodeId;
use chimaera_core::peer::{
    FrameHandler, NetError, PeerInfo, PeerNetwork, PeerState, ReplyFn, MAX_FRAME_BYTES,
};
use std::cell::Cell;
use std::fmt;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;
use tokio::runtime::{Handle, Runtime};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

/// Concurrent calls one peer connection may carry (HTTP/2 streams).
const MAX_STREAMS_PER_CONNECTION: u32 = 4096;
/// The largest header block a request may send (ours are a few dozen bytes).
const MAX_HEADER_LIST_BYTES: u32 = 16 << 10;
/// The longest deadline a call gets: `grpc-timeout` has 8 digits (tonic panics on a
/// longer one), and a caller passing `Duration::MAX` means "no deadline" anyway.
const LONGEST_DEADLINE: Duration = Duration::from_secs(365 * 24 * 3600);
/// How long shutdown waits for the server to close once its leave notices are out.
const SERVER_CLOSE_WAIT: Duration = Duration::from_secs(1);

thread_local! {
    /// Whether this thread is one of a network's runtime threads.
    static ON_NETWORK_THREAD: Cell<bool> = const { Cell::new(false) };
}

/// What the network's tasks share: everything but the runtime itself.
pub(crate) struct Shared {
    pub(crate) this_node: NodeId,
    pub(crate) nodes: u32,
    pub(crate) secret: String,
    secret_header: AsciiMetadataValue,
    node_header: AsciiMetadataValue,
    pub(crate) links: Vec<Link>,
    /// Each peer's call stream, once opened (see [`crate::stream`]).
    streams: Vec<Mutex<Option<Arc<CallStream>>>>,
    /// Held while a call stream to that peer opens, so only one does at a time.
    opening: Vec<tokio::sync::Mutex<()>>,
    /// The addresses each node's hostfile entry resolves to; empty for a node whose
    /// address is not checked (verification off, or the name did not resolve).
    pub(crate) node_ips: Vec<Vec<IpAddr>>,
    /// With TLS, each node's host, which a caller's certificate must name.
    pub(crate) certified_hosts: Option<CertifiedHosts>,
    pub(crate) handler: OnceLock<Arc<dyn FrameHandler>>,
    /// `true` once this network shuts down; the server, every outgoing call and every
    /// incoming call watch it.
    pub(crate) shutdown: watch::Sender<bool>,
    rpc_timeout: Duration,
    /// The largest gRPC message this node sends: frames and answers travel in chunks of
    /// at most this many bytes.
    pub(crate) chunk_bytes: usize,
    pub(crate) refusals: RefusalLog,
}

/// A [`PeerNetwork`] over gRPC (tonic, HTTP/2): frames travel as raw message bytes on one
/// long-lived, multiplexed connection per peer.
///
/// ```no_run
/// use chimaera_core::peer::PeerNetwork;
/// use chimaera_net::{NetOptions, TonicNetwork};
/// use std::time::Duration;
///
/// let addresses = vec!["10.0.0.1:7500".to_owned(), "10.0.0.2:7500".to_owned()];
/// let network = TonicNetwork::new(NetOptions::new(0, addresses, "the-cluster-secret"))?;
/// network.call(1, b"frame".to_vec(), Duration::from_secs(2), Box::new(|answer| {
///     println!("node 1 answered {answer:?}");
/// }));
/// # Ok::<(), chimaera_net::NetSetupError>(())
/// ```
pub struct TonicNetwork {
    shared: Arc<Shared>,
    handle: Handle,
    runtime: Option<Runtime>,
    local_addr: SocketAddr,
    server: Mutex<Option<JoinHandle<()>>>,
    shutting_down: AtomicBool,
}

impl TonicNetwork {
    /// Starts node `options.this_node`'s network: binds its listen address and serves
    /// (peers' calls are answered "starting" until [`PeerNetwork::serve`]).
    pub fn new(options: NetOptions) -> Result<TonicNetwork, NetSetupError> {
        options.validate()?;
        let address = options.listen_address()?;
        let listener = std::net::TcpListener::bind(address)
            .map_err(|source| NetSetupError::Bind { address, source })?;
        TonicNetwork::with_listener(options, listener)
    }

    /// Like [`new`](Self::new) on a listener bound already (an ephemeral port, a socket
    /// handed over by a supervisor); `options.listen` is not used.
    pub fn with_listener(
        options: NetOptions,
        listener: std::net::TcpListener,
    ) -> Result<TonicNetwork, NetSetupError> {
        options.validate()?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| NetSetupError::Bind {
                address: options.listen.unwrap_or_else(|| ([0, 0, 0, 0], 0).into()),
                source,
            })?;
        let bind_error = |source| NetSetupError::Bind {
            address: local_addr,
            source,
        };
        listener.set_nonblocking(true).map_err(bind_error)?;
        // Leave from the address peers know this node by, so they can check it.
        let local_ip =
            Some(local_addr.ip()).filter(|ip| options.verify_peer_address && !ip.is_unspecified());
        let links = options
            .addresses
            .iter()
            .enumerate()
            .map(|(node, address)| {
                let node = node as NodeId;
                Link::new(
                    node,
                    address.clone(),
                    node == options.this_node,
                    options.connect_timeout,
                    (options.backoff_min, options.backoff_max),
                    local_ip,
                    options.tls.as_ref(),
                )
                .map_err(|reason| NetSetupError::BadAddress {
                    node,
                    address: address.clone(),
                    reason,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let header = |text: &str| {
            MetadataValue::try_from(text).map_err(|_| NetSetupError::SecretNotVisibleAscii)
        };
        let (shutdown, _) = watch::channel(false);
        let nodes = options.nodes() as usize;
        let shared = Arc::new(Shared {
            this_node: options.this_node,
            nodes: options.nodes(),
            secret: options.cluster_secret.clone(),
            secret_header: header(&options.cluster_secret)?,
            node_header: MetadataValue::from(options.this_node),
            links,
            streams: (0..nodes).map(|_| Mutex::new(None)).collect(),
            opening: (0..nodes).map(|_| tokio::sync::Mutex::new(())).collect(),
            node_ips: resolve_node_ips(&options),
            certified_hosts: options
                .tls
                .as_ref()
                .map(|_| CertifiedHosts::new(&options.addresses)),
            handler: OnceLock::new(),
            shutdown,
            rpc_timeout: options.rpc_timeout,
            chunk_bytes: options.chunk_bytes,
            refusals: RefusalLog::default(),
        });
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(options.threads)
            .thread_name(format!("chimaera-net-{}", options.this_node))
            .on_thread_start(|| ON_NETWORK_THREAD.with(|flag| flag.set(true)))
            .enable_all()
            .build()
            .map_err(NetSetupError::Runtime)?;
        let handle = runtime.handle().clone();
        let listener = {
            let _context = runtime.enter();
            tokio::net::TcpListener::from_std(listener).map_err(bind_error)?
        };
        let admission = Admission::new(options.max_pending_connections, options.connect_timeout);
        let incoming = TcpIncoming::from(listener)
            .with_nodelay(Some(true))
            .map(move |accepted| accepted.and_then(|stream| admission.admit(stream)));
        let mut stopped = shared.shutdown.subscribe();
        let service = PeerService {
            shared: Arc::clone(&shared),
        };
        let mut server = Server::builder();
        if let Some(tls) = &options.tls {
            let config = ServerTlsConfig::new()
                .identity(Identity::from_pem(&tls.cert_pem, &tls.key_pem))
                .client_ca_root(Certificate::from_pem(&tls.ca_pem))
                .timeout(options.connect_timeout);
            server = server
                .tls_config(config)
                .map_err(|error| NetSetupError::Tls(error_chain(&error)))?;
        }
        let server = server
            .timeout(options.max_incoming_call)
            .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
            .http2_max_header_list_size(MAX_HEADER_LIST_BYTES)
            .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
            .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
            .initial_stream_window_size(STREAM_WINDOW_BYTES)
            .initial_connection_window_size(CONNECTION_WINDOW_BYTES);
        let this_node = options.this_node;
        let server = handle.spawn(async move {
            let signal = async move {
                // An error means the sender is gone: the network is gone too.
                let _ = stopped.wait_for(|down| *down).await;
            };
            if let Err(error) = server
                .serve_with_incoming_shutdown(service, incoming, signal)
                .await
            {
                tracing::error!(node = this_node, error = %error_chain(&error), "the peer server stopped");
            }
        });
        tracing::info!(node = this_node, address = %local_addr, "listening for peers");
        Ok(TonicNetwork {
            shared,
            handle,
            runtime: Some(runtime),
            local_addr,
            server: Mutex::new(Some(server)),
            shutting_down: AtomicBool::new(false),
        })
    }

    /// The address this node listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Waits for `tasks` for at most `bound`; not on one of this network's own threads (a
    /// reply that shuts the network down), where waiting would hold up the very tasks it
    /// waits for: there they finish on their own.
    fn wait_bounded(&self, tasks: Vec<JoinHandle<()>>, bound: Duration) {
        if ON_NETWORK_THREAD.with(Cell::get) {
            return;
        }
        let wait = async move {
            let _ = tokio::time::timeout(bound, async move {
                for task in tasks {
                    let _ = task.await;
                }
            })
            .await;
        };
        if Handle::try_current().is_ok() {
            // Inside another runtime, `block_on` would panic: wait on a helper thread.
            let handle = self.handle.clone();
            let _ = std::thread::spawn(move || handle.block_on(wait)).join();
        } else {
            self.handle.block_on(wait);
        }
    }
}

/// What [`Shared::node_ips`] holds: each node's resolved addresses, when verified.
fn resolve_node_ips(options: &NetOptions) -> Vec<Vec<IpAddr>> {
    options
        .addresses
        .iter()
        .enumerate()
        .map(|(node, address)| {
            if !options.verify_peer_address {
                return Vec::new();
            }
            match address.to_socket_addrs() {
                Ok(resolved) => resolved.map(|socket| socket.ip().to_canonical()).collect(),
                Err(error) => {
                    tracing::warn!(node, address, %error, "a peer's address does not resolve; calls claiming to be it are not checked against it");
                    Vec::new()
                }
            }
        })
        .collect()
}

impl Shared {
    /// One call to `node` that could not go on an open stream at once: a large frame as
    /// its own unary call, a small one once a stream to `node` is open — answered by its
    /// deadline or this network's shutdown.
    async fn call(
        self: &Arc<Self>,
        node: NodeId,
        frame: Vec<u8>,
        timeout: Duration,
        deadline: std::time::Instant,
        pending: PendingReply,
    ) {
        let left = NetError::Left {
            node: self.this_node,
        };
        let mut shutdown = self.shutdown.subscribe();
        if *shutdown.borrow() {
            return pending.answer(Err(left));
        }
        let late = NetError::DeadlineExceeded {
            node,
            timeout_ms: duration_ms(timeout),
        };
        let remaining = deadline.saturating_duration_since(std::time::Instant::now());
        if frame.len() > STREAM_FRAME_MAX {
            let outcome = tokio::select! {
                biased;
                _ = shutdown.wait_for(|down| *down) => Err(left),
                outcome = tokio::time::timeout(remaining, self.exchange(node, frame, timeout)) => {
                    outcome.unwrap_or(Err(late))
                }
            };
            return pending.answer(outcome);
        }
        let opened = tokio::select! {
            biased;
            _ = shutdown.wait_for(|down| *down) => Err(left),
            opened = tokio::time::timeout(remaining, self.call_stream(node)) => {
                opened.unwrap_or(Err(late))
            }
        };
        match opened {
            Ok(stream) => {
                if let Err((_, pending)) = stream.submit(frame, timeout, deadline, pending) {
                    pending.answer(Err(NetError::Unreachable {
                        node,
                        reason: "the call stream closed as the call was sent".to_owned(),
                    }));
                }
            }
            Err(error) => pending.answer(Err(error)),
        }
    }

    /// The open call stream to `node`, opening one if there is none (one opening at a
    /// time; the link's backoff applies to the connection beneath).
    async fn call_stream(self: &Arc<Self>, node: NodeId) -> Result<Arc<CallStream>, NetError> {
        if let Some(stream) = self.open_stream(node) {
            return Ok(stream);
        }
        let _opening = self.opening[node as usize].lock().await;
        if let Some(stream) = self.open_stream(node) {
            return Ok(stream);
        }
        let (channel, generation) = self.links[node as usize].channel().await?;
        let stream = crate::stream::open(self, node, channel, generation).await?;
        *lock(&self.streams[node as usize]) = Some(Arc::clone(&stream));
        Ok(stream)
    }

    pub(crate) fn open_stream(&self, node: NodeId) -> Option<Arc<CallStream>> {
        lock(&self.streams[node as usize])
            .as_ref()
            .filter(|stream| stream.is_open())
            .cloned()
    }

    /// Adds the metadata that authenticates this node to a request.
    pub(crate) fn authenticate<T>(&self, request: &mut tonic::Request<T>) {
        request
            .metadata_mut()
            .insert(FROM_NODE, self.node_header.clone());
        request
            .metadata_mut()
            .insert(SECRET, self.secret_header.clone());
    }

    /// Sends `frame` to `node` in chunks and reads its answer's chunks (no local deadline
    /// here). An answer that breaks the chunk protocol (over the limit, more or less than
    /// announced) is [`NetError::Malformed`] (or [`NetError::FrameTooLarge`]), and the
    /// connection it came on is dropped.
    async fn exchange(
        &self,
        node: NodeId,
        frame: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, NetError> {
        let link = &self.links[node as usize];
        let (channel, generation) = link.channel().await?;
        let len = frame.len();
        let mut request = tonic::Request::new(chunked(frame, self.chunk_bytes));
        self.prepare(&mut request, timeout);
        announce(request.metadata_mut(), len);
        let mut grpc = tonic::client::Grpc::new(channel)
            .max_decoding_message_size(MAX_CHUNK_BYTES)
            .max_encoding_message_size(MAX_CHUNK_BYTES);
        if let Err(error) = grpc.ready().await {
            return Err(link.broken(Some(generation), error_chain(&error)));
        }
        let path = http::uri::PathAndQuery::from_static(CALL_PATH);
        let answer = match grpc.streaming(request, path, RawFrameCodec).await {
            Ok(response) => {
                let assembled = match announced_len(response.metadata()) {
                    Ok(announced) => assemble(&mut response.into_inner(), announced).await,
                    Err(why) => Err(why),
                };
                match assembled {
                    Ok(answer) => Ok(answer),
                    Err(Assembly::Status(status)) => Err(status),
                    Err(why) => {
                        let error = match why {
                            Assembly::TooLarge { len } => NetError::FrameTooLarge {
                                len,
                                max: MAX_FRAME_BYTES as u64,
                            },
                            other => NetError::Malformed {
                                node,
                                reason: other.to_string(),
                            },
                        };
                        link.fail(Some(generation), &error.to_string());
                        return Err(error);
                    }
                }
            }
            Err(status) => Err(status),
        };
        match answer {
            Ok(answer) => {
                link.succeeded(generation);
                Ok(answer)
            }
            Err(status) => {
                let failure = status_to_net_error(node, &status, timeout);
                link.call_failed(generation, &failure, status.message());
                Err(failure.error)
            }
        }
    }

    /// Sends the leave notice to `node` (unary, no body).
    async fn leave_notice(&self, node: NodeId, timeout: Duration) -> Result<(), NetError> {
        let link = &self.links[node as usize];
        let (channel, generation) = link.channel().await?;
        let mut request = tonic::Request::new(bytes::Bytes::new());
        self.prepare(&mut request, timeout);
        let mut grpc = tonic::client::Grpc::new(channel)
            .max_decoding_message_size(0)
            .max_encoding_message_size(0);
        if let Err(error) = grpc.ready().await {
            return Err(link.broken(Some(generation), error_chain(&error)));
        }
        let path = http::uri::PathAndQuery::from_static(LEAVE_PATH);
        match grpc.unary(request, path, RawFrameCodec).await {
            Ok(_) => Ok(()),
            Err(status) => Err(status_to_net_error(node, &status, timeout).error),
        }
    }

    /// The deadline and the credentials every request carries.
    fn prepare<T>(&self, request: &mut tonic::Request<T>, timeout: Duration) {
        request.set_timeout(timeout);
        self.authenticate(request);
    }
}

/// Locks a plain value slot (replaced in one step: a panic elsewhere cannot tear it).
fn lock<T>(slot: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    slot.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A call's [`ReplyFn`] until it is answered; answered [`NetError::Left`] if dropped
/// unanswered (its task dropped by the runtime going away).
pub(crate) struct PendingReply {
    reply: Option<ReplyFn>,
    this_node: NodeId,
}

impl PendingReply {
    pub(crate) fn answer(mut self, outcome: Result<Vec<u8>, NetError>) {
        if let Some(reply) = self.reply.take() {
            reply(outcome);
        }
    }
}

impl Drop for PendingReply {
    fn drop(&mut self) {
        if let Some(reply) = self.reply.take() {
            reply(Err(NetError::Left {
                node: self.this_node,
            }));
        }
    }
}

impl PeerNetwork for TonicNetwork {
    fn this_node(&self) -> NodeId {
        self.shared.this_node
    }

    fn nodes(&self) -> u32 {
        self.shared.nodes
    }

    fn serve(&self, handler: Arc<dyn FrameHandler>) {
        if self.shared.handler.set(handler).is_err() {
            tracing::warn!(
                node = self.shared.this_node,
                "serve called twice; the first handler keeps serving"
            );
        }
    }

    fn call(&self, node: NodeId, frame: Vec<u8>, timeout: Duration, reply: ReplyFn) {
        let pending = PendingReply {
            reply: Some(reply),
            this_node: self.shared.this_node,
        };
        let refused = if node >= self.shared.nodes {
            Some(NetError::UnknownNode {
                node,
                nodes: self.shared.nodes,
            })
        } else if frame.len() > MAX_FRAME_BYTES {
            Some(NetError::FrameTooLarge {
                len: frame.len() as u64,
                max: MAX_FRAME_BYTES as u64,
            })
        } else {
            None
        };
        if let Some(error) = refused {
            drop(frame);
            self.handle.spawn(async move { pending.answer(Err(error)) });
            return;
        }
        let timeout = timeout.min(LONGEST_DEADLINE);
        let deadline = std::time::Instant::now() + timeout;
        let (frame, pending) = match self.shared.open_stream(node) {
            // The common case: a small frame on an open stream, sent from this thread.
            Some(stream) if frame.len() <= STREAM_FRAME_MAX => {
                match stream.submit(frame, timeout, deadline, pending) {
                    Ok(()) => return,
                    Err(returned) => returned,
                }
            }
            _ => (frame, pending),
        };
        let shared = Arc::clone(&self.shared);
        self.handle.spawn(async move {
            shared.call(node, frame, timeout, deadline, pending).await;
        });
    }

    fn peers(&self) -> Vec<PeerInfo> {
        self.shared
            .links
            .iter()
            .map(|link| PeerInfo {
                node: link.node,
                address: link.address.clone(),
                state: link.phase(),
            })
            .collect()
    }

    fn shutdown(&self) {
        if self.shutting_down.swap(true, Ordering::AcqRel) {
            return;
        }
        let rpc_timeout = self.shared.rpc_timeout;
        let notices = self
            .shared
            .links
            .iter()
            .filter(|link| !matches!(link.phase(), PeerState::Local | PeerState::Left))
            .map(|link| {
                let shared = Arc::clone(&self.shared);
                let node = link.node;
                self.handle.spawn(async move {
                    let notice = shared.leave_notice(node, rpc_timeout);
                    match tokio::time::timeout(rpc_timeout, notice).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(error)) => {
                            tracing::debug!(node, %error, "a peer missed this node's leave notice")
                        }
                        Err(_) => {
                            tracing::debug!(node, "a peer did not take the leave notice in time")
                        }
                    }
                })
            })
            .collect();
        self.wait_bounded(notices, rpc_timeout);
        self.shared.shutdown.send_replace(true);
        // Ends this node's side of every call stream.
        for stream in &self.shared.streams {
            lock(stream).take();
        }
        let server = self
            .server
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        self.wait_bounded(server.into_iter().collect(), SERVER_CLOSE_WAIT);
        tracing::info!(node = self.shared.this_node, "left the cluster");
    }
}

impl Drop for TonicNetwork {
    fn drop(&mut self) {
        self.shutdown();
        if let Some(runtime) = self.runtime.take() {
            // Not `drop(runtime)`: the last handle may go on one of the runtime's own
            // threads (a reply that held it), where a blocking drop panics.
            runtime.shutdown_background();
        }
    }
}

impl fmt::Debug for TonicNetwork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TonicNetwork")
            .field("this_node", &self.shared.this_node)
            .field("nodes", &self.shared.nodes)
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}
