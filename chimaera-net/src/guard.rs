//! Incoming connections that must authenticate in time: a [`GuardedStream`] fails its
//! reads once its deadline passes unless a call on it has passed authentication.
//!
//! # Invariants
//!
//! * **Strangers cannot park connections.** A connection that has not carried one
//!   authenticated call within the deadline (garbage, a stalled HTTP/2 preface or TLS
//!   handshake, only refused calls) reads an error, and hyper closes it: an outsider
//!   holds a socket of this node for at most the deadline.
//! * **Strangers cannot exhaust sockets.** At most a fixed number of connections wait for
//!   their first authenticated call at once (each holds a permit until it authenticates
//!   or closes); a connection beyond that is closed as soon as it is accepted, so a flood
//!   of connections costs this node neither file descriptors nor the connections its
//!   members already hold.
//! * **Members keep theirs.** The first authenticated call marks the connection
//!   ([`ConnectionInfo::mark_authenticated`]); from then on the deadline is never polled
//!   again, so a peer's long-lived channel lives as long as the peer keeps it.
//! * **A peer that breaks the protocol loses its connection.** Once
//!   [`ConnectionInfo::cut_off`] (a frame over the limit, more than announced, truncated),
//!   the connection's next read fails — the reader is woken for it — and hyper closes the
//!   connection with every call on it.

use atomic_waker::AtomicWaker;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// An accepted connection with its authentication deadline.
pub(crate) struct GuardedStream {
    inner: TcpStream,
    admission: Arc<Admitted>,
    deadline: Pin<Box<Sleep>>,
}

/// A connection's standing, shared by its stream and the requests it carries.
#[derive(Debug)]
struct Admitted {
    authenticated: AtomicBool,
    /// The connection's place among those waiting to authenticate, until it does.
    pending: Mutex<Option<OwnedSemaphorePermit>>,
    /// The peer broke the protocol: reads fail from now on.
    cut_off: AtomicBool,
    /// The task reading the connection, woken when it is cut off.
    reader: AtomicWaker,
}

/// Admits accepted connections: each must authenticate within `deadline`, and at most
/// the semaphore's permits of them wait for that at once.
pub(crate) struct Admission {
    pending: Arc<Semaphore>,
    deadline: Duration,
}

impl Admission {
    pub(crate) fn new(max_pending: usize, deadline: Duration) -> Admission {
        Admission {
            pending: Arc::new(Semaphore::new(max_pending)),
            deadline,
        }
    }

    /// Guards `inner`, or refuses it when too many connections wait already (must run on
    /// a runtime).
    pub(crate) fn admit(&self, inner: TcpStream) -> io::Result<GuardedStream> {
        let permit = Arc::clone(&self.pending).try_acquire_owned().map_err(|_| {
            tracing::warn!(
                remote = ?inner.peer_addr().ok(),
                "closed a connection: too many connections have not authenticated yet"
            );
            io::Error::new(
                io::ErrorKind::ConnectionRefused,
                "too many connections have not authenticated yet",
            )
        })?;
        Ok(GuardedStream {
            inner,
            admission: Arc::new(Admitted {
                authenticated: AtomicBool::new(false),
                pending: Mutex::new(Some(permit)),
                cut_off: AtomicBool::new(false),
                reader: AtomicWaker::new(),
            }),
            deadline: Box::pin(tokio::time::sleep(self.deadline)),
        })
    }
}

impl GuardedStream {
    /// Whether the deadline passed without authentication (registers the waker of `cx`
    /// with the deadline while it has not).
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        !self.admission.authenticated.load(Ordering::Acquire)
            && self.deadline.as_mut().poll(cx).is_ready()
    }
}

/// What the service learns about a request's connection.
#[derive(Clone, Debug)]
pub(crate) struct ConnectionInfo {
    tcp: TcpConnectInfo,
    admission: Arc<Admitted>,
}

impl ConnectionInfo {
    /// The peer's address.
    pub(crate) fn remote_addr(&self) -> Option<SocketAddr> {
        self.tcp.remote_addr()
    }

    /// A call on this connection passed authentication: the connection may stay, and
    /// its place among the waiting ones goes to the next.
    pub(crate) fn mark_authenticated(&self) {
        self.admission.authenticated.store(true, Ordering::Release);
        // A poisoned lock still holds a valid `Option`.
        self.admission
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
    }

    /// The peer broke the protocol on this connection: close it (its next read fails).
    pub(crate) fn cut_off(&self) {
        self.admission.cut_off.store(true, Ordering::Release);
        self.admission.reader.wake();
    }
}

impl Connected for GuardedStream {
    type ConnectInfo = ConnectionInfo;

    fn connect_info(&self) -> ConnectionInfo {
        ConnectionInfo {
            tcp: self.inner.connect_info(),
            admission: Arc::clone(&self.admission),
        }
    }
}

impl AsyncRead for GuardedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.admission.reader.register(cx.waker());
        if this.admission.cut_off.load(Ordering::Acquire) {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the peer broke the protocol; its connection is closed",
            )));
        }
        if this.expired(cx) {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the connection made no authenticated call in time",
            )));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for GuardedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
