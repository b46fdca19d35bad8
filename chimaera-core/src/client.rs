//! Clients: how tasks get into a runtime, and how callers wait for results.
//!
//! A [`Client`] holds one [`Transport`] (`Arc<dyn Transport>`) and never asks which kind
//! it is; see [`crate::transport`] for what every transport promises. Two exist:
//!
//! * **in-process** ([`Runtime::client`](crate::Runtime::client),
//!   [`RunContext::client`](crate::RunContext::client)): the task is queued straight on
//!   its container's lane;
//! * **shared memory** ([`Client::connect`], defined with its transport in
//!   [`crate::transport::shm`], so this file knows no transport): the task goes through
//!   this process's client area of the runtime's segments.
//!
//! Both give the same [`RawPending`] / [`Pending`] API and the same errors. A task the
//! runtime refuses (unknown pool or method, a query outside the pool, a runtime that
//! stopped) never runs; its error comes back from `submit` when the transport can tell
//! at once (in process), else as the call's result (over shared memory).
//!
//! **Waiting.** A [`Pending`] is waited for by a blocked thread ([`Pending::wait`]) or
//! awaited: it is a [`Future`] (tokio or any other executor, or none — `wait` stays),
//! woken by the answer itself; submitting does not block except while every slot of a
//! shared-memory connection is taken (backpressure). A thread keeping a window of
//! calls in flight reaps them as they complete with [`Pending::first_done`] (the index
//! of a ready call among several), so one slow call does not hold back the others.
//!
//! **Deadlines.** A client may carry a default deadline ([`Client::with_deadline`]; none
//! by default) that every call submitted through it gets; [`Pending::wait_timeout`]
//! overrides it for one call. A call not answered in time fails with
//! [`TaskError::DeadlineExceeded`] and is *abandoned*, not cancelled: the handler runs
//! on (the runtime cannot stop it safely in the middle) and its late reply is
//! discarded; over shared memory the call's slot is freed at once, while the task keeps
//! counting against the client's quota of tasks in flight until it ends. A call that
//! lent buffers by reference ignores its deadline: the runtime may be writing the
//! caller's memory until it answers. Awaiting honours no deadline of its own: wrap the
//! future in the executor's timeout (`tokio::time::timeout`); dropping it abandons the
//! call the same way.
//!
//! A client made by `RunContext::client` submits *subtasks*: they inherit the parent's
//! TaskNode group, which the coroutine locks use to let them through a lock their parent
//! holds.
use crate::bulk::{Buffer, BufferError, BulkRef};
use crate::codec::{Bytes, OutputBuffer};
use crate::error::TaskError;
use crate::ids::{ContainerId, MethodId, PoolId};
use crate::query::PoolQuery;
use crate::transport::call::Waiter;
use crate::transport::{
    Call, CancelPeriodic, LendGuard, Route, Schedule, Transport, TransportKind,
};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// A connection to a runtime, cheap to clone.
#[derive(Clone)]
pub struct Client {
    transport: Arc<dyn Transport>,
    /// The deadline every call submitted through this client gets.
    deadline: Option<Duration>,
    /// Every task takes the network path (see [`Client::with_force_net`]).
    force_net: bool,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("transport", &self.transport)
            .field("deadline", &self.deadline)
            .field("force_net", &self.force_net)
            .finish()
    }
}

impl Client {
    /// A client whose tasks travel through `transport`.
    pub fn with_transport(transport: Arc<dyn Transport>) -> Client {
        Client {
            transport,
            deadline: None,
            force_net: false,
        }
    }

    /// This client (the same connection) with a default deadline: every call submitted
    /// through the returned client that is not answered within `deadline` of its
    /// submission fails with [`TaskError::DeadlineExceeded`] when waited for, and is
    /// abandoned (see the [module docs](self)). [`Pending::wait_timeout`] overrides it
    /// per call.
    ///
    /// ```no_run
    /// # use chimaera_core::Client;
    /// # use std::time::Duration;
    /// let chi = Client::connect()?.with_deadline(Duration::from_secs(5));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn with_deadline(&self, deadline: Duration) -> Client {
        Client {
            deadline: Some(deadline),
            ..self.clone()
        }
    }

    /// This client (the same connection) without a default deadline: its calls are
    /// waited for until answered (or until the runtime is gone).
    pub fn without_deadline(&self) -> Client {
        Client {
            deadline: None,
            ..self.clone()
        }
    }

    /// The default deadline of calls submitted through this client, if any.
    pub fn deadline(&self) -> Option<Duration> {
        self.deadline
    }

    /// This client (the same connection) with its own force-net switch: when `on`, every
    /// task submitted through the returned client takes the network path — SaveIn, the
    /// cluster's network, LoadIn, run, SaveOut, the network back, LoadOut — even to
    /// containers of the runtime's own node, as `networking.force_net` does for all
    /// clients. Results are the same either way; this tests the network path (or
    /// measures it) without a second node. A runtime that is not a node of a cluster
    /// (no `networking.hostfile`) has no network path and runs the tasks directly.
    ///
    /// ```no_run
    /// # use chimaera_core::Client;
    /// let through_the_network = Client::connect()?.with_force_net(true);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn with_force_net(&self, on: bool) -> Client {
        Client {
            force_net: on,
            ..self.clone()
        }
    }

    /// Whether this client's tasks take the network path even when local.
    pub fn force_net(&self) -> bool {
        self.force_net
    }

    /// The raw handle of a call just submitted, with this client's deadline.
    /// Where a task of `method` on `pool` goes, with this client's force-net switch.
    fn route(&self, pool: PoolId, method: MethodId, query: PoolQuery) -> Route {
        Route {
            pool,
            method,
            query,
            force_net: self.force_net,
        }
    }

    fn pending(&self, call: Call) -> RawPending {
        RawPending {
            call,
            deadline: self.deadline.map(Deadline::from_now),
        }
    }

    /// The transport, for the transports' own `impl Client` blocks (today only the
    /// shared-memory one's test hook, `shm_connection`).
    #[cfg(feature = "testing")]
    pub(crate) fn transport(&self) -> &dyn Transport {
        &*self.transport
    }

    /// Which kind of transport this client uses.
    pub fn transport_kind(&self) -> TransportKind {
        self.transport.kind()
    }

    /// Why calls through this client fail, if its runtime is gone (stopped, dead, or
    /// disowned this client); `None` while it serves.
    pub fn runtime_gone(&self) -> Option<TaskError> {
        self.transport.peer_gone()
    }

    /// A zeroed, 4 KiB-aligned byte buffer whose bytes travel by reference when passed
    /// as a `&[u8]` or `&mut [u8]` task argument (see [`Buffer`]).
    ///
    /// Over shared memory it lies in this client's data share, in the memfd the runtime
    /// made for it (`shm.client_data_size / max_clients` bytes; the call waits while inputs
    /// of calls in flight fill it, and fails when the buffer cannot fit at all). Through
    /// an in-process client it is heap memory, and arguments backed by it are copied
    /// like any other slice.
    pub fn allocate_buffer(&self, len: usize) -> Result<Buffer, BufferError> {
        self.transport.allocate_buffer(len)
    }

    /// How `bytes` travels as a bulk argument of a task sent through this client.
    #[doc(hidden)]
    pub fn bulk_ref<'a>(&self, bytes: &'a [u8]) -> BulkRef<'a> {
        self.transport.bulk_ref(bytes)
    }

    /// Submits one task whose input `encode` archives into a buffer the calling thread
    /// reuses: over shared memory copied from there into the task's slot; in process
    /// copied into the task when small, else handed to the task with the buffer's bytes
    /// (the task gives them back when dropped). Neither allocates once warm.
    #[doc(hidden)]
    pub fn submit_with(
        &self,
        pool: PoolId,
        method: MethodId,
        query: PoolQuery,
        encode: &mut dyn FnMut(&mut OutputBuffer) -> Result<(), TaskError>,
    ) -> Result<RawPending, TaskError> {
        let route = self.route(pool, method, query);
        let call = self.transport.submit_with(route, encode)?;
        Ok(self.pending(call))
    }

    /// Runs one task start to finish: `encode` archives its input into the buffer it is
    /// given, and `decode` gets the output bytes (the first error by container wins,
    /// else the lowest container's output). Past the client's deadline the call is
    /// abandoned and fails with [`TaskError::DeadlineExceeded`]. The same as
    /// [`submit_with`](Self::submit_with) then waiting, with no handle made and
    /// dropped: the generated clients' blocking methods call this when they lend no
    /// buffer.
    pub fn call_with(
        &self,
        pool: PoolId,
        method: MethodId,
        query: PoolQuery,
        encode: &mut dyn FnMut(&mut OutputBuffer) -> Result<(), TaskError>,
        decode: &mut dyn FnMut(&[u8]) -> Result<(), TaskError>,
    ) -> Result<(), TaskError> {
        let route = self.route(pool, method, query);
        let deadline = self.deadline.map(Deadline::from_now);
        match self
            .transport
            .call_with(route, encode, deadline.map(|d| d.at), decode)?
        {
            true => Ok(()),
            // Not `map_or`: the error would be made on every call.
            false => Err(match deadline {
                Some(deadline) => deadline.exceeded(),
                None => TaskError::NotRun,
            }),
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
        let route = self.route(pool, method, query);
        let call = self.transport.submit(route, input, schedule)?;
        Ok(self.pending(call))
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
        let route = self.route(pool, method, query);
        let cancel = self.transport.spawn(route, input, schedule)?;
        Ok(TaskHandle { cancel })
    }
}

/// When a call's wait gives up.
#[derive(Clone, Copy, Debug)]
struct Deadline {
    at: Instant,
    after: Duration,
}

impl Deadline {
    fn from_now(after: Duration) -> Deadline {
        let now = Instant::now();
        Deadline {
            // A deadline too far to represent is no deadline in practice: a century.
            at: now
                .checked_add(after)
                .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600)),
            after,
        }
    }

    fn exceeded(&self) -> TaskError {
        TaskError::DeadlineExceeded {
            waited_ms: u64::try_from(self.after.as_millis()).unwrap_or(u64::MAX),
        }
    }
}

/// A submitted task's raw results, not yet collected.
pub struct RawPending {
    call: Call,
    deadline: Option<Deadline>,
}

impl std::fmt::Debug for RawPending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawPending")
            .field("done", &self.is_done())
            .field("deadline", &self.deadline)
            .finish()
    }
}

impl RawPending {
    /// Whether every replica has answered.
    pub fn is_done(&self) -> bool {
        self.call.is_done()
    }

    /// Waits for every replica; returns their output bytes (or errors) by container.
    /// Past the client's deadline the call is abandoned and its one result is
    /// [`TaskError::DeadlineExceeded`].
    pub fn wait(self) -> Vec<(ContainerId, Result<Bytes, TaskError>)> {
        match self.deadline {
            Some(deadline) if !self.call.wait_until(deadline.at) => {
                self.call.abandon();
                vec![(0, Err(deadline.exceeded()))]
            }
            _ => self.call.wait(),
        }
    }

    /// Whether every replica has answered; if not, `waker` is woken when they have.
    pub fn poll_done(&self, waker: &std::task::Waker) -> bool {
        self.call.poll_done(waker)
    }

    /// Blocks until every replica has answered or `deadline` passed; returns whether
    /// they have (or the runtime is gone, so waiting would not block).
    pub fn wait_until(&self, deadline: Instant) -> bool {
        self.call.wait_until(deadline)
    }

    /// Gives up on the call: its late reply is discarded (see the
    /// [module docs](self)).
    pub fn abandon(self) {
        self.call.abandon();
    }
}

/// Client buffers lent to a call: the `&mut [u8]` its handler writes (filled from the
/// output when it came back inline), and whether dropping the call must wait for it.
///
/// Made by generated clients (`async_*` methods); the buffers' lifetime `'a` is the
/// [`Pending`]'s, so the caller can neither touch nor free them while the call is in
/// flight.
#[doc(hidden)]
pub struct Lent<'a> {
    outs: LentOuts<'a>,
    /// The runtime may access the client's memory until the call completes.
    wait_on_drop: bool,
    /// The shared buffers the call's arguments lie in, marked lent until this is
    /// dropped (after the call completed, or never if the `Pending` is leaked).
    marked: Marked,
}

enum LentOuts<'a> {
    None,
    One(&'a mut [u8]),
    Many(Vec<&'a mut [u8]>),
}

impl<'a> LentOuts<'a> {
    fn as_slices(&mut self) -> &mut [&'a mut [u8]] {
        match self {
            LentOuts::None => &mut [],
            LentOuts::One(out) => std::slice::from_mut(out),
            LentOuts::Many(outs) => outs,
        }
    }
}

/// Buffers marked lent by one call (no allocation for a call with one); each is given
/// back when its guard drops.
#[derive(Default)]
struct Marked {
    first: Option<LendGuard>,
    rest: Vec<LendGuard>,
}

impl Marked {
    fn push(&mut self, guard: LendGuard) {
        match self.first {
            None => self.first = Some(guard),
            Some(_) => self.rest.push(guard),
        }
    }
}

impl<'a> Lent<'a> {
    /// Whether the runtime may use caller memory until the call is answered (a buffer
    /// travelled by reference).
    fn by_reference(&self) -> bool {
        self.wait_on_drop && self.marked.first.is_some()
    }

    /// Nothing lent: a call without bulk arguments.
    pub fn nothing() -> Lent<'static> {
        Lent {
            outs: LentOuts::None,
            wait_on_drop: false,
            marked: Marked::default(),
        }
    }

    /// A call with bulk arguments `ins` (read) and `outs` (written) sent through
    /// `client`. Over shared memory such arguments may travel by reference: the call is
    /// waited for if its `Pending` is dropped early, and the buffers they lie in are
    /// marked lent meanwhile. In process they are always copied.
    pub fn buffers<const M: usize, const N: usize>(
        client: &Client,
        ins: [&[u8]; M],
        outs: [&'a mut [u8]; N],
    ) -> Lent<'a> {
        let mut marked = Marked::default();
        let transport = &client.transport;
        let written = outs.iter().map(|out| &**out);
        for bytes in ins.into_iter().chain(written) {
            if let Some(guard) = transport.lend(bytes) {
                marked.push(guard);
            }
        }
        let outs = match outs.len() {
            0 => LentOuts::None,
            1 => match outs.into_iter().next() {
                Some(out) => LentOuts::One(out),
                None => LentOuts::None,
            },
            _ => LentOuts::Many(Vec::from(outs)),
        };
        Lent {
            outs,
            wait_on_drop: transport.borrows_caller_memory(),
            marked,
        }
    }
}

/// Decodes a call's output bytes and writes the byte-buffer outputs that came back
/// inline into the lent buffers (in the order of the task's arguments).
pub type DecodeWritingBack<T> = fn(&[u8], &mut [&mut [u8]]) -> Result<T, TaskError>;

/// How a [`Pending`] turns output bytes into its result.
enum Decode<T> {
    Plain(fn(&[u8]) -> Result<T, TaskError>),
    /// Also copies bulk outputs that came back inline into the lent buffers.
    WritingBack(DecodeWritingBack<T>),
}

impl<T> Decode<T> {
    fn run(&self, bytes: &[u8], outs: &mut LentOuts<'_>) -> Result<T, TaskError> {
        match self {
            Decode::Plain(decode) => decode(bytes),
            Decode::WritingBack(decode) => decode(bytes, outs.as_slices()),
        }
    }
}

/// A submitted task whose result is not yet collected.
///
/// Collect it by blocking ([`wait`](Self::wait), [`wait_timeout`](Self::wait_timeout),
/// [`wait_all`](Self::wait_all)) or by awaiting it: `Pending` is a [`Future`] of the
/// same result as `wait`, woken by the answer (see the [module docs](self)).
///
/// ```no_run
/// # use chimaera_core::{Client, Pending, TaskError};
/// # use std::time::Duration;
/// # async fn demo(pending: Pending<'static, String>, other: Pending<'static, String>) -> Result<(), TaskError> {
/// let echoed: String = pending.await?;
/// let in_time: String = other.wait_timeout(Duration::from_millis(200))?;
/// # Ok(()) }
/// ```
///
/// It borrows, for `'a`, the client buffers the call's bulk arguments came from — mutably
/// those its handler writes — so they can be neither touched nor freed before the result
/// is in: the runtime may be reading or writing them. `wait` fills the lent `&mut [u8]`
/// buffers (in place, or from an inline output) and returns the task's value.
///
/// **Dropping** a `Pending` whose call lent buffers through a transport that lets the
/// runtime use caller memory (shared memory;
/// [`Transport::borrows_caller_memory`]) **waits for the call to complete** (the runtime
/// must be done with the memory before the borrow ends); any other `Pending` is dropped
/// at once and its result discarded.
///
/// Leaking one (`std::mem::forget`) skips that wait, as for any guard: the borrow ends
/// while the runtime may still use the buffers. A shared buffer dropped meanwhile keeps
/// its memory out of the share for good (it was lent to a call that never ended, as far
/// as this client knows), so no new buffer is ever written by that call; but a buffer
/// still alive may change under the caller. The runtime stays sound either way. Do not
/// leak a `Pending` that lent buffers.
#[must_use = "a pending task does nothing unless waited for; use spawn_* for fire-and-forget"]
pub struct Pending<'a, T> {
    /// `None` once waited for.
    raw: Option<RawPending>,
    decode: Decode<T>,
    lent: Lent<'a>,
}

impl<T> Pending<'static, T> {
    /// Wraps raw results whose output bytes `decode` turns into `T`.
    pub fn new(raw: RawPending, decode: fn(&[u8]) -> Result<T, TaskError>) -> Self {
        Pending {
            raw: Some(raw),
            decode: Decode::Plain(decode),
            lent: Lent::nothing(),
        }
    }
}

impl<'a, T> Pending<'a, T> {
    /// Wraps raw results of a call that borrowed `lent`; `decode` also writes bulk
    /// outputs into the lent buffers.
    #[doc(hidden)]
    pub fn lending(raw: RawPending, decode: DecodeWritingBack<T>, lent: Lent<'a>) -> Self {
        Pending {
            raw: Some(raw),
            decode: Decode::WritingBack(decode),
            lent,
        }
    }

    /// Whether every replica has answered (waiting would not block).
    pub fn is_done(&self) -> bool {
        self.raw.as_ref().is_none_or(RawPending::is_done)
    }

    /// Waits for the result. With several replicas the first error (by container) wins,
    /// else the result of the lowest container is returned. Past the client's deadline
    /// ([`Client::with_deadline`]), if it has one, fails with
    /// [`TaskError::DeadlineExceeded`].
    pub fn wait(mut self) -> Result<T, TaskError> {
        self.collect()
    }

    /// Waits like [`wait`](Self::wait), but at most `timeout` from now (instead of the
    /// client's deadline): if the call is not answered by then, it is abandoned (its
    /// late reply discarded, see the [module docs](self)) and this fails with
    /// [`TaskError::DeadlineExceeded`]. A call that lent buffers by reference waits for
    /// its answer whatever the timeout: the runtime may be using them.
    pub fn wait_timeout(mut self, timeout: Duration) -> Result<T, TaskError> {
        if let Some(raw) = &mut self.raw {
            raw.deadline = Some(Deadline::from_now(timeout));
        }
        self.collect()
    }

    /// The call, unless its deadline passes first: then it is abandoned and the error
    /// returned. Calls that lent buffers by reference are never abandoned.
    fn take_in_time(&mut self) -> Result<RawPending, TaskError> {
        // Not `ok_or`: the error would be made (and dropped) on every call.
        let Some(raw) = self.raw.take() else {
            return Err(TaskError::NotRun);
        };
        match raw.deadline {
            Some(deadline) if !self.lent.by_reference() && !raw.call.wait_until(deadline.at) => {
                raw.call.abandon();
                Err(deadline.exceeded())
            }
            _ => Ok(raw),
        }
    }

    /// Waits like [`wait`](Self::wait), then hands back the `&mut [u8]` buffers the call
    /// borrowed (filled, in the order of the task's arguments), so the caller can lend
    /// them to another call: a window of calls in flight over a fixed set of buffers.
    pub fn wait_and_return_buffers(mut self) -> (Result<T, TaskError>, ReturnedBuffers<'a>) {
        let result = self.collect();
        let outs = std::mem::replace(&mut self.lent.outs, LentOuts::None);
        let returned = match outs {
            LentOuts::None => ReturnedBuffers::None,
            LentOuts::One(out) => ReturnedBuffers::One(out),
            LentOuts::Many(outs) => ReturnedBuffers::Many(outs.into_iter()),
        };
        (result, returned)
    }

    /// Waits for the call (once) and decodes its result.
    fn collect(&mut self) -> Result<T, TaskError> {
        let raw = self.take_in_time()?;
        let (decode, outs) = (&self.decode, &mut self.lent.outs);
        let mut value = None;
        raw.call.wait_first(&mut |bytes| {
            value = Some(decode.run(bytes, outs)?);
            Ok(())
        })?;
        match value {
            Some(value) => Ok(value),
            None => Err(TaskError::NotRun),
        }
    }

    /// Blocks until one of `pendings` is *ready* — answered, its runtime gone, or past
    /// its deadline (unless it lent buffers by reference: see
    /// [`wait_timeout`](Self::wait_timeout)) — so that its [`wait`](Self::wait) returns
    /// at once, and returns its index: the lowest ready one, so a window kept oldest
    /// first is reaped in order when several are ready. `None` for an empty slice.
    ///
    /// This keeps a window of calls full, reaping them in the order they complete, as
    /// `fio` does at a queue depth: waiting on the oldest call instead lets one slow call
    /// (a disk read the device served late) hold back the answers behind it, and the
    /// window runs emptier than its size.
    ///
    /// ```no_run
    /// # use chimaera_core::{Pending, TaskError};
    /// # fn demo(
    /// #     mut window: Vec<Pending<'static, u64>>,
    /// #     mut start_next: impl FnMut() -> Result<Pending<'static, u64>, TaskError>,
    /// # ) -> Result<(), TaskError> {
    /// // `window` holds the calls in flight, oldest first.
    /// while let Some(ready) = Pending::first_done(&window) {
    ///     let result = window.remove(ready).wait()?;
    ///     # let _ = result;
    ///     window.push(start_next()?);
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// A thread looks at the calls for 25 µs (an answer often comes that soon), then
    /// sleeps until one of them is answered, woken the way an awaited `Pending` is. A
    /// handler (a coroutine) parks at once, leaving its worker to other tasks, as its
    /// `wait` does.
    pub fn first_done(pendings: &[Self]) -> Option<usize> {
        if pendings.is_empty() {
            return None;
        }
        // A coroutine does not spin: it would hold the worker that may have to run the
        // very calls it waits for.
        let spin_until = Instant::now() + FIRST_DONE_SPIN;
        loop {
            let now = Instant::now();
            if let Some(ready) = pendings.iter().position(|pending| pending.ready_at(now)) {
                return Some(ready);
            }
            if now >= spin_until || crate::coroutine::is_coroutine() {
                break;
            }
            std::hint::spin_loop();
        }
        let waiter = Waiter::current();
        let waker = Waker::from(Arc::new(WakeWaiter(waiter.handle())));
        loop {
            let mut wake_by: Option<Instant> = None;
            for (index, pending) in pendings.iter().enumerate() {
                let Some(raw) = &pending.raw else {
                    return Some(index);
                };
                // Registers the waker unless the call is answered (or its runtime gone).
                if raw.poll_done(&waker) {
                    return Some(index);
                }
                if let Some(at) = pending.gives_up_at() {
                    if at <= Instant::now() {
                        return Some(index);
                    }
                    wake_by = Some(wake_by.map_or(at, |earlier| earlier.min(at)));
                }
            }
            // A wake-up (or a spurious return) looks at every call again.
            waiter.park(wake_by.map(|at| at.saturating_duration_since(Instant::now())));
        }
    }

    /// Whether [`wait`](Self::wait) would return at once, looked at `now`.
    fn ready_at(&self, now: Instant) -> bool {
        match &self.raw {
            None => true,
            Some(raw) => raw.is_done() || self.gives_up_at().is_some_and(|at| at <= now),
        }
    }

    /// When `wait` gives the call up: its deadline, unless it lent buffers by reference
    /// (then it waits for the answer whatever the deadline).
    fn gives_up_at(&self) -> Option<Instant> {
        let deadline = self.raw.as_ref()?.deadline?;
        (!self.lent.by_reference()).then_some(deadline.at)
    }

    /// Waits for every replica and returns each one's result, by container.
    /// Past the call's deadline, its one result is [`TaskError::DeadlineExceeded`].
    pub fn wait_all(mut self) -> Vec<(ContainerId, Result<T, TaskError>)> {
        let raw = match self.take_in_time() {
            Ok(raw) => raw,
            Err(err) => return vec![(0, Err(err))],
        };
        let (decode, outs) = (&self.decode, &mut self.lent.outs);
        raw.call
            .wait()
            .into_iter()
            .map(|(container, result)| {
                (container, result.and_then(|bytes| decode.run(&bytes, outs)))
            })
            .collect()
    }
}

/// How long [`Pending::first_done`] looks at its calls before it sleeps: about as long as
/// a call of a window spins on its own answer before it sleeps (a few round trips).
const FIRST_DONE_SPIN: Duration = Duration::from_micros(25);

/// Wakes the thread or coroutine that made it: [`Pending::first_done`]'s sleep.
struct WakeWaiter(Waiter);

impl std::task::Wake for WakeWaiter {
    fn wake(self: Arc<Self>) {
        self.0.handle().wake();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.handle().wake();
    }
}

/// Awaiting a `Pending` yields what [`Pending::wait`] returns (without the client's
/// deadline: wrap it in the executor's timeout). The answer wakes the task; polling does
/// not block, except to copy an answer that has arrived.
impl<T> Future for Pending<'_, T> {
    type Output = Result<T, TaskError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // `Pending` is `Unpin` (boxes, function pointers and borrows).
        let this = self.get_mut();
        let Some(raw) = &mut this.raw else {
            return Poll::Ready(Err(TaskError::NotRun));
        };
        if !raw.call.poll_done(cx.waker()) {
            return Poll::Pending;
        }
        // Answered: `collect` waits no more, and no deadline applies to awaiting.
        raw.deadline = None;
        Poll::Ready(this.collect())
    }
}

/// The `&mut [u8]` buffers a completed call hands back
/// ([`Pending::wait_and_return_buffers`]).
#[derive(Debug)]
pub enum ReturnedBuffers<'a> {
    /// The call borrowed none.
    None,
    /// The one it borrowed.
    One(&'a mut [u8]),
    /// Those it borrowed, in order.
    Many(std::vec::IntoIter<&'a mut [u8]>),
}

impl<'a> Iterator for ReturnedBuffers<'a> {
    type Item = &'a mut [u8];

    fn next(&mut self) -> Option<&'a mut [u8]> {
        match std::mem::replace(self, ReturnedBuffers::None) {
            ReturnedBuffers::None => None,
            ReturnedBuffers::One(out) => Some(out),
            ReturnedBuffers::Many(mut outs) => {
                let next = outs.next();
                *self = ReturnedBuffers::Many(outs);
                next
            }
        }
    }
}

impl<T> Drop for Pending<'_, T> {
    fn drop(&mut self) {
        if let Some(raw) = self.raw.take() {
            if self.lent.wait_on_drop {
                // The runtime may still read or write the lent buffers: keep them
                // borrowed until it is done (the result itself is discarded).
                drop(raw.call.wait());
            } else {
                raw.call.abandon();
            }
        }
    }
}

impl<T> std::fmt::Debug for Pending<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("done", &self.is_done())
            .field("deadline", &self.raw.as_ref().and_then(|raw| raw.deadline))
            .field("waits_on_drop", &self.lent.wait_on_drop)
            .finish()
    }
}

/// A fire-and-forget or periodic task in the runtime.
pub struct TaskHandle {
    cancel: Option<Box<dyn CancelPeriodic>>,
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
        self.cancel
            .as_ref()
            .map_or(Ok(()), |cancel| cancel.cancel())
    }
}
