//! The shared-memory transport: client processes reach a runtime through memory of their
//! own, handed over the instance's Unix socket.
//!
//! It sits on the building blocks of `crate::shm` and is made of:
//!
//! * `wire`: the layout of one client's area (ring, slots, data share, output space)
//!   and the words of a slot's request and reply lines;
//! * `handshake`: the instance's Unix socket — who may attach (`SO_PEERCRED` against
//!   the config's `access:`), and the area memfd passed with `SCM_RIGHTS`;
//! * `runtime_page`: the one page every client reads (workers' sleeping flags), sealed
//!   so no client can map it writable;
//! * `client_area`: the runtime's side of one client — its memory and the runtime's
//!   private truth about it (slots in flight, output blocks, quotas, rights);
//! * `server` and `client`: the runtime's and a client's end of the transport;
//! * this file: the [`Transport`] over a `client` connection.
//!
//! The invariants every piece keeps against a hostile peer are listed in `crate::shm`.
//!
//! Tasks go through this process's client area (`client` holds the protocol).
//! Inputs are copied into the task's slot (or the client's data share) before `submit`
//! returns. Bulk arguments lying in a [`Buffer`] of this connection travel by reference:
//! the runtime reads and writes that memory until the call is answered, so such buffers
//! are marked lent in this client's lending table meanwhile, and a typed `Pending`
//! that lent them waits for its call when dropped ([`Transport::borrows_caller_memory`]).
crate::internal_mod! {
    /// A client's end of the transport (unstable, for chimaera's own tests).
    mod client;
}
crate::internal_mod! {
    /// The runtime's side of one client (unstable, for chimaera's own tests).
    mod client_area;
}
crate::internal_mod! {
    /// The instance's Unix socket protocol (unstable, for chimaera's own tests).
    mod handshake;
}
crate::internal_mod! {
    /// The page every client reads (unstable, for chimaera's own tests).
    mod runtime_page;
}
crate::internal_mod! {
    /// The runtime's end of the transport (unstable, for chimaera's own tests).
    mod server;
}
crate::internal_mod! {
    /// The layout of a client's area (unstable, for chimaera's own tests).
    mod wire;
}

pub use client::ConnectError;

use crate::bulk::{Buffer, BufferError, BulkRef, BulkWire, LendingTable};
use crate::client::Client;
use crate::codec::{decode, Bytes, OutputBuffer};
use crate::config::RuntimeConfig;
use crate::error::TaskError;
use crate::transport::shm::client::ShmConnection;
use crate::transport::{
    Call, CancelPeriodic, LendGuard, Route, Schedule, Transport, TransportKind,
};
use std::any::Any;
use std::sync::Arc;

/// Clients over shared memory.
impl Client {
    /// Attaches to the runtime named by the configuration (`CHI_SERVER_CONF`, then
    /// `CHI_INSTANCE`; default instance `default`) over shared memory.
    pub fn connect() -> Result<Client, ConnectError> {
        Client::connect_to(&RuntimeConfig::from_env()?)
    }

    /// Attaches to the runtime of `config.instance` over shared memory.
    pub fn connect_to(config: &RuntimeConfig) -> Result<Client, ConnectError> {
        let connection = ShmConnection::connect(&config.instance)?;
        Ok(Client::with_transport(Arc::new(SharedMemory::new(
            connection,
        ))))
    }

    /// The shared-memory connection, for tests that play a faulty client (unstable:
    /// the `testing` feature, for chimaera's own tests).
    #[cfg(feature = "testing")]
    #[doc(hidden)]
    pub fn shm_connection(&self) -> Option<&Arc<ShmConnection>> {
        self.transport()
            .as_any()
            .downcast_ref::<SharedMemory>()
            .map(SharedMemory::connection)
    }
}

/// A client process's transport to a runtime over shared memory.
pub(crate) struct SharedMemory {
    connection: Arc<ShmConnection>,
    /// This connection's buffers, for calls to mark as lent.
    lending: Arc<LendingTable>,
}

impl SharedMemory {
    /// A transport over `connection`.
    pub(crate) fn new(connection: Arc<ShmConnection>) -> Self {
        SharedMemory {
            connection,
            lending: Arc::default(),
        }
    }

    /// The connection, for tests that play a faulty client.
    #[cfg(feature = "testing")]
    pub(crate) fn connection(&self) -> &Arc<ShmConnection> {
        &self.connection
    }
}

impl std::fmt::Debug for SharedMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedMemory")
            .field("instance", &self.connection.instance().as_str())
            .field("client", &self.connection.client_index())
            .finish()
    }
}

impl Transport for SharedMemory {
    fn kind(&self) -> TransportKind {
        TransportKind::SharedMemory
    }

    fn submit(
        &self,
        route: Route,
        input: Bytes,
        schedule: Option<Schedule>,
    ) -> Result<Call, TaskError> {
        let call = self.connection.submit_routed(route, &input, schedule)?;
        Ok(Call::shared_memory(call))
    }

    fn submit_with(
        &self,
        route: Route,
        encode: &mut dyn FnMut(&mut OutputBuffer) -> Result<(), TaskError>,
    ) -> Result<Call, TaskError> {
        let call = self.connection.submit_routed_with(route, encode)?;
        Ok(Call::shared_memory(call))
    }

    fn call_with(
        &self,
        route: Route,
        encode: &mut dyn FnMut(&mut OutputBuffer) -> Result<(), TaskError>,
        deadline: Option<std::time::Instant>,
        decode: &mut dyn FnMut(&[u8]) -> Result<(), TaskError>,
    ) -> Result<bool, TaskError> {
        self.connection
            .call_routed_with(route, encode, deadline, decode)
    }

    fn spawn(
        &self,
        route: Route,
        input: Bytes,
        schedule: Schedule,
    ) -> Result<Option<Box<dyn CancelPeriodic>>, TaskError> {
        // The runtime acknowledges that the task was queued (or says why not); a periodic
        // task's acknowledgement carries its id, to cancel it by.
        let call = self
            .connection
            .submit_routed(route, &input, Some(schedule))?;
        let mut ack = None;
        for (_, result) in call.wait() {
            ack = Some(result?);
        }
        match schedule {
            Schedule::Periodic(_) => {
                let bytes = ack.ok_or(TaskError::NotRun)?;
                let id = decode::<u64>(&bytes, "acknowledgement")?;
                Ok(Some(Box::new(RemoteCancel {
                    connection: self.connection.clone(),
                    id,
                })))
            }
            Schedule::FireAndForget => Ok(None),
        }
    }

    fn allocate_buffer(&self, len: usize) -> Result<Buffer, BufferError> {
        let buffer = self.connection.allocate_buffer(len)?;
        Ok(match self.connection.bulk_ref(&buffer) {
            BulkWire::Shared { offset, .. } => buffer.track_lending(&self.lending, offset),
            BulkWire::Inline(_) => buffer,
        })
    }

    fn bulk_ref<'a>(&self, bytes: &'a [u8]) -> BulkRef<'a> {
        self.connection.bulk_ref(bytes)
    }

    fn lend(&self, bytes: &[u8]) -> Option<LendGuard> {
        match self.connection.bulk_ref(bytes) {
            BulkWire::Shared { offset, len } => self.lending.lend(offset, len).map(LendGuard::new),
            BulkWire::Inline(_) => None,
        }
    }

    fn borrows_caller_memory(&self) -> bool {
        true
    }

    fn peer_gone(&self) -> Option<TaskError> {
        self.connection.runtime_gone()
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// Cancels a periodic task by the id the runtime acknowledged.
struct RemoteCancel {
    connection: Arc<ShmConnection>,
    id: u64,
}

impl CancelPeriodic for RemoteCancel {
    fn cancel(&self) -> Result<(), TaskError> {
        self.connection.cancel_periodic(self.id)
    }
}
