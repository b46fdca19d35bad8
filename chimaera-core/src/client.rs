//! Clients: how tasks get into a runtime, and how callers wait for results.
//!
//! A [`Client`] reaches its runtime through one of two transports:
//!
//! * **in-process** ([`Runtime::client`](crate::Runtime::client),
//!   [`RunContext::client`](crate::RunContext::client)): the task is queued straight on
//!   its container's lane and the caller waits on a [`Completion`];
//! * **shared memory** ([`Client::connect`]): the task goes through this process's
//!   client area of the runtime's segments (see [`crate::shm::connection`]).
//!
//! Both give the same [`RawPending`] / [`Pending`] API and the same errors. Errors that
//! can be known before queuing (unknown pool or method, a query outside the pool, a
//! runtime that stopped) come back at once and nothing is queued.
//!
//! A client made by `RunContext::client` submits *subtasks*: they inherit the parent's
//! TaskNode group, which the coroutine locks use to let them through a lock their parent
//! holds.
use crate::bulk::{Buffer, BulkRef, BulkWire};
use crate::codec::{Bytes, OutputBuffer, SliceRef};
use crate::config::RuntimeConfig;
use crate::error::TaskError;
use crate::ids::{ContainerId, MethodId, PoolId, TaskNode};
use crate::query::PoolQuery;
use crate::runtime::Shared;
use crate::shm::connection::{ConnectError, ShmCall, ShmConnection};
use crate::task::{CancelToken, Completion, Origin, Schedule};
use std::sync::Arc;

#[derive(Clone)]
enum Transport {
    InProcess {
        shared: Arc<Shared>,
        parent: Option<TaskNode>,
    },
    SharedMemory(Arc<ShmConnection>),
}

/// A connection to a runtime, cheap to clone.
#[derive(Clone)]
pub struct Client {
    transport: Transport,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.transport {
            Transport::InProcess { parent, .. } => f
                .debug_struct("Client")
                .field("transport", &"in-process")
                .field("parent", parent)
                .finish(),
            Transport::SharedMemory(connection) => f
                .debug_struct("Client")
                .field("transport", &"shared memory")
                .field("instance", &connection.instance().as_str())
                .field("client", &connection.client_index())
                .finish(),
        }
    }
}

impl Client {
    pub(crate) fn in_process(shared: Arc<Shared>, parent: Option<TaskNode>) -> Self {
        Client {
            transport: Transport::InProcess { shared, parent },
        }
    }

    /// Attaches to the runtime named by the configuration (`CHI_SERVER_CONF`, then
    /// `CHI_INSTANCE`; default instance `default`) over shared memory.
    pub fn connect() -> Result<Client, ConnectError> {
        Client::connect_to(&RuntimeConfig::from_env()?)
    }

    /// Attaches to the runtime of `config.instance` over shared memory.
    pub fn connect_to(config: &RuntimeConfig) -> Result<Client, ConnectError> {
        let connection = ShmConnection::connect(&config.instance)?;
        Ok(Client {
            transport: Transport::SharedMemory(connection),
        })
    }

    /// The shared-memory connection, for tests that play a faulty client.
    #[doc(hidden)]
    pub fn shm_connection(&self) -> Option<&Arc<ShmConnection>> {
        match &self.transport {
            Transport::SharedMemory(connection) => Some(connection),
            Transport::InProcess { .. } => None,
        }
    }

    /// Whether this client talks to its runtime over shared memory.
    pub fn is_remote(&self) -> bool {
        matches!(self.transport, Transport::SharedMemory(_))
    }

    /// A zeroed, 4 KiB-aligned byte buffer whose bytes travel by reference when passed
    /// as a `&[u8]` or `&mut [u8]` task argument (see [`Buffer`]).
    ///
    /// Over shared memory it lies in this client's share of the runtime's client-data
    /// segment (`shm.client_data_size / max_clients` bytes; the call waits while inputs
    /// of calls in flight fill it, and fails when the buffer cannot fit at all). Through
    /// an in-process client it is heap memory, and arguments backed by it are copied
    /// like any other slice.
    pub fn allocate_buffer(&self, len: usize) -> Result<Buffer, TaskError> {
        match &self.transport {
            Transport::InProcess { .. } => Buffer::heap(len),
            Transport::SharedMemory(connection) => connection.allocate_buffer(len),
        }
    }

    /// How `bytes` travels as a bulk argument of a task sent through this client.
    #[doc(hidden)]
    pub fn bulk_ref<'a>(&self, bytes: &'a [u8]) -> BulkRef<'a> {
        match &self.transport {
            Transport::InProcess { .. } => BulkWire::Inline(SliceRef(bytes)),
            Transport::SharedMemory(connection) => connection.bulk_ref(bytes),
        }
    }

    /// Submits one task whose input `encode` archives: over shared memory into a buffer
    /// this connection reuses, copied from there into the task's slot (no allocation);
    /// in process into fresh bytes the task owns.
    #[doc(hidden)]
    pub fn submit_with(
        &self,
        pool: PoolId,
        method: MethodId,
        query: PoolQuery,
        encode: &mut dyn FnMut(&mut OutputBuffer) -> Result<(), TaskError>,
    ) -> Result<RawPending, TaskError> {
        match &self.transport {
            Transport::InProcess { .. } => {
                let mut buffer = OutputBuffer::default();
                encode(&mut buffer)?;
                self.submit(pool, method, query, buffer.into_bytes(), None)
            }
            Transport::SharedMemory(connection) => {
                let call = connection.submit_with(pool, method, query, encode)?;
                Ok(RawPending(PendingInner::SharedMemory(call)))
            }
        }
    }

    /// Submits one task; wait on the returned handle for every replica's output bytes.
    pub fn submit(
        &self,
        pool: PoolId,
        method: MethodId,
        query: PoolQuery,
        input: Bytes,
        schedule: Option<Schedule>,
    ) -> Result<RawPending, TaskError> {
        match &self.transport {
            Transport::InProcess { shared, parent } => {
                let (completion, _) = shared.enqueue(
                    *parent,
                    pool,
                    method,
                    query,
                    input,
                    schedule,
                    Origin::default(),
                )?;
                completion
                    .map(|c| RawPending(PendingInner::InProcess(c)))
                    .ok_or(TaskError::NotRun)
            }
            Transport::SharedMemory(connection) => {
                let call = connection.submit(pool, method, query, &input, schedule)?;
                Ok(RawPending(PendingInner::SharedMemory(call)))
            }
        }
    }

    /// Submits a fire-and-forget or periodic task.
    pub fn spawn(
        &self,
        pool: PoolId,
        method: MethodId,
        query: PoolQuery,
        schedule: Schedule,
        input: Bytes,
    ) -> Result<TaskHandle, TaskError> {
        match &self.transport {
            Transport::InProcess { shared, parent } => {
                let (_, cancel) = shared.enqueue(
                    *parent,
                    pool,
                    method,
                    query,
                    input,
                    Some(schedule),
                    Origin::default(),
                )?;
                Ok(TaskHandle {
                    cancel: cancel.map(Cancel::Local),
                })
            }
            Transport::SharedMemory(connection) => {
                // The runtime acknowledges that the task was queued (or says why not);
                // a periodic task's acknowledgement carries its id, to cancel it by.
                let call = connection.submit(pool, method, query, &input, Some(schedule))?;
                let mut ack = None;
                for (_, result) in call.wait() {
                    ack = Some(result?);
                }
                let cancel = match schedule {
                    Schedule::Periodic(_) => {
                        let bytes = ack.ok_or(TaskError::NotRun)?;
                        let id = crate::codec::decode::<u64>(&bytes, "acknowledgement")?;
                        Some(Cancel::Remote(connection.clone(), id))
                    }
                    Schedule::FireAndForget => None,
                };
                Ok(TaskHandle { cancel })
            }
        }
    }
}

enum PendingInner {
    InProcess(Arc<Completion>),
    SharedMemory(ShmCall),
}

/// A submitted task's raw results, not yet collected.
pub struct RawPending(PendingInner);

impl std::fmt::Debug for RawPending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawPending")
            .field("done", &self.is_done())
            .finish()
    }
}

impl RawPending {
    /// Whether every replica has answered.
    pub fn is_done(&self) -> bool {
        match &self.0 {
            PendingInner::InProcess(completion) => completion.is_done(),
            PendingInner::SharedMemory(call) => call.is_done(),
        }
    }

    /// Waits for every replica; returns their output bytes (or errors) by container.
    pub fn wait(self) -> Vec<(ContainerId, Result<Bytes, TaskError>)> {
        match self.0 {
            PendingInner::InProcess(completion) => completion.wait(),
            PendingInner::SharedMemory(call) => call.wait(),
        }
    }
}

/// A submitted task whose result is not yet collected.
#[must_use = "a pending task does nothing unless waited for; use spawn_* for fire-and-forget"]
pub struct Pending<T> {
    raw: RawPending,
    decode: fn(&[u8]) -> Result<T, TaskError>,
}

impl<T> Pending<T> {
    /// Wraps raw results whose output bytes `decode` turns into `T`.
    pub fn new(raw: RawPending, decode: fn(&[u8]) -> Result<T, TaskError>) -> Self {
        Pending { raw, decode }
    }

    /// Whether every replica has answered (waiting would not block).
    pub fn is_done(&self) -> bool {
        self.raw.is_done()
    }

    /// Waits for the result. With several replicas the first error (by container) wins,
    /// else the result of the lowest container is returned.
    pub fn wait(self) -> Result<T, TaskError> {
        match self.raw.0 {
            PendingInner::SharedMemory(call) => call.wait_decoded(self.decode),
            PendingInner::InProcess(completion) => decode_first(completion.wait(), self.decode),
        }
    }

    /// Waits for every replica and returns each one's result, by container.
    pub fn wait_all(self) -> Vec<(ContainerId, Result<T, TaskError>)> {
        let decode = self.decode;
        self.raw
            .wait()
            .into_iter()
            .map(|(container, result)| (container, result.and_then(|bytes| decode(&bytes))))
            .collect()
    }
}

/// The result of a task from its replicas' outputs: the first error (by container)
/// wins, else the lowest container's output is decoded.
pub(crate) fn decode_first<T>(
    results: Vec<(ContainerId, Result<Bytes, TaskError>)>,
    decode: fn(&[u8]) -> Result<T, TaskError>,
) -> Result<T, TaskError> {
    let mut first_output = None;
    for (_, result) in results {
        first_output.get_or_insert(result?);
    }
    match first_output {
        Some(bytes) => decode(&bytes),
        None => Err(TaskError::EmptyQuery),
    }
}

/// How a periodic task is stopped.
enum Cancel {
    Local(Arc<CancelToken>),
    Remote(Arc<ShmConnection>, u64),
}

/// A fire-and-forget or periodic task in the runtime.
pub struct TaskHandle {
    cancel: Option<Cancel>,
}

impl std::fmt::Debug for TaskHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskHandle")
            .field("periodic", &self.cancel.is_some())
            .finish()
    }
}

impl TaskHandle {
    /// Stops a periodic task after its current run, or at once if it sleeps between
    /// runs (no effect on fire-and-forget tasks).
    /// A periodic task also ends when its pool is destroyed, the runtime stops, or — for
    /// a client process — when that client detaches or dies.
    pub fn cancel(&self) -> Result<(), TaskError> {
        match &self.cancel {
            Some(Cancel::Local(token)) => {
                token.cancel();
                Ok(())
            }
            Some(Cancel::Remote(connection, id)) => connection.cancel_periodic(*id),
            None => Ok(()),
        }
    }
}
