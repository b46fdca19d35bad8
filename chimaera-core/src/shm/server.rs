//! The runtime's end of the shared-memory transport.
//!
//! [`ShmServer::create`] takes the instance's runtime lock (so a second runtime for the
//! same instance is refused), removes what a dead runtime left, creates the three
//! segments and lays out every client area; [`ShmServer::publish_ready`] then lets
//! clients attach, once the runtime has its admin pool.
//!
//! **Ingest.** Each shm-serving worker polls the rings of the client areas assigned to it
//! (`client % workers`). A popped slot index is bounds-checked; the slot's header words
//! are read once into locals and the input bytes are *copied* out of shared memory before
//! anything is validated (a client may scribble on its slot at any time; the copy is
//! what gets checked and run). Anything wrong fails that one task with a typed error
//! written back into its slot.
//!
//! **Replies.** A task from a client carries a [`ReplyTo`] naming the server and its
//! slot (`[client, slot, generation]`, no allocation); when it completes, the
//! output (or error) goes into the slot's payload — or, when larger, into a block of
//! the runtime-data segment that the runtime frees when the client reuses the slot —
//! then the slot's state turns `DONE` (`Release`), and the client is woken through the
//! slot's futex word only if it said it sleeps (`SeqCst` on both sides, Dekker-style).
//! A reply checks the area's generation first: an area reclaimed meanwhile is not
//! written.
//!
//! **Crashes.** A housekeeping thread notices dead clients (their liveness lock is free),
//! marks the area `RECLAIMING`, cancels its periodic tasks, waits until none of its
//! tasks is in flight, then resets the ring and slots, frees its runtime-data blocks,
//! bumps the generation and frees the area. A client never has to be trusted to clean
//! up after itself.
//!
//! **Waking.** An idle worker sets its doorbell's `sleeping` flag before parking; a
//! client that pushes and sees it bumps the doorbell word and futex-wakes it. One
//! doorbell thread per worker sleeps on that word and unparks the worker.
use super::arena::{Arena, Extent};
use super::futex;
use super::layout::{self, slot, Geometry, Header, SlotView};
use super::liveness::{client_alive, remove_client_lock, RuntimeLock};
use super::naming::{InstanceName, ShmName, ROLE_CLIENT_DATA, ROLE_MAIN, ROLE_RUNTIME_DATA};
use super::ring::Ring;
use super::segment::Segment;
use crate::bulk::BulkShare;
use crate::codec::{encode, Bytes};
use crate::error::TaskError;
use crate::ids::{ContainerId, PoolId};
use crate::query::PoolQuery;
use crate::task::{lock, CancelToken, Origin, ReplyKey, ReplySink, ReplyTo, Schedule};
use std::collections::HashMap;
use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Largest slot the runtime lays out; bigger inputs and outputs use the data segments.
const MAX_SLOT: u32 = 1024;
/// Tasks one ingest call takes from one client before moving to the next.
const INGEST_BUDGET: usize = 64;
/// How often the housekeeping thread looks for dead clients.
const HOUSEKEEPING_PERIOD: Duration = Duration::from_millis(200);

/// Why the transport could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Another runtime holds the instance, or its lock file is unusable.
    #[error(transparent)]
    Lock(#[from] super::liveness::RuntimeLockError),
    /// A segment could not be created.
    #[error(transparent)]
    Segment(#[from] super::segment::SegmentError),
    /// The configured main segment cannot hold the client areas.
    #[error("shm.main_size {main_size} is too small for {max_clients} clients × {slots} slots; raise shm.main_size or lower max_clients/queue_depth")]
    MainTooSmall {
        /// Configured size.
        main_size: usize,
        /// Configured clients.
        max_clients: u32,
        /// Configured slots per client.
        slots: u32,
    },
    /// Something else in the layout failed.
    #[error("cannot lay out shared memory: {0}")]
    Layout(String),
}

/// What the transport needs from the runtime: queue a task, wake a worker.
pub trait Ingress: Send + Sync {
    /// Queues a task decoded from a client slot; `origin` carries the reply sink of a
    /// call, the cancel flag of a periodic task and the client's data share.
    fn enqueue(
        &self,
        pool: PoolId,
        method: u32,
        query: PoolQuery,
        input: Bytes,
        schedule: Option<Schedule>,
        origin: Origin,
    ) -> Result<(), TaskError>;

    /// Unparks worker `worker` if it sleeps.
    fn wake_worker(&self, worker: usize);
}

/// Runtime-side state of one client area.
struct ClientEntry {
    ring: Mutex<Ring>,
    inflight: AtomicU64,
    /// Runtime-data blocks holding outputs of this client's slots, freed on slot reuse.
    overflow: Mutex<Vec<Option<Extent>>>,
    /// Cancel flags of the owner's periodic tasks, by id; all set when the owner dies.
    periodic: Mutex<HashMap<u64, Arc<CancelToken>>>,
    /// The area's data share, handed to its tasks for bulk arguments; the area is
    /// reclaimed only while this is the last reference.
    bulk: Arc<BulkShare>,
}

/// Client `client`'s share of the client-data segment, as bulk arguments see it.
fn bulk_share(
    client_data: &Segment,
    client: u32,
    data_share: usize,
    mapping: &Arc<dyn Send + Sync>,
) -> Result<BulkShare, ServeError> {
    let base = client_data
        .range_ptr(client as usize * data_share, data_share, 1)
        .map_err(|e| ServeError::Layout(e.to_string()))?;
    // SAFETY: `range_ptr` proved the range inside the mapping, which is read-write and
    // lives while `mapping` (a handle on the same segment) does; shares of different
    // clients are disjoint (`data_share` apart).
    Ok(unsafe { BulkShare::new(base, data_share, mapping.clone()) })
}

/// The clients a worker polls, refreshed when the attach epoch moves.
struct PollList {
    epoch: u32,
    clients: Vec<u32>,
}

/// The runtime's end of the transport.
pub struct ShmServer {
    instance: InstanceName,
    geometry: Geometry,
    main: Segment,
    client_data: Segment,
    runtime_data: Segment,
    header: Header,
    data_share: usize,
    clients: Vec<ClientEntry>,
    runtime_arena: Mutex<Arena>,
    next_periodic: AtomicU64,
    /// Per worker: the attached clients it polls, as of an attach epoch.
    poll_lists: Vec<Mutex<PollList>>,
    stopping: AtomicBool,
    threads: Mutex<Vec<JoinHandle<()>>>,
    lock: Mutex<Option<RuntimeLock>>,
}

/// Sizes the runtime asks for.
#[derive(Clone, Copy, Debug)]
pub struct ServeSizes {
    /// Main segment bytes.
    pub main: usize,
    /// Client-data segment bytes.
    pub client_data: usize,
    /// Runtime-data segment bytes.
    pub runtime_data: usize,
    /// Client areas.
    pub max_clients: u32,
    /// Slots per client (power of two).
    pub slots: u32,
    /// Workers polling client rings.
    pub workers: u32,
}

impl ShmServer {
    /// Creates the instance's segments and lays them out (see the module docs).
    pub fn create(
        instance: &InstanceName,
        sizes: ServeSizes,
    ) -> Result<Arc<ShmServer>, ServeError> {
        let lock = RuntimeLock::acquire(instance)?;
        let removed = lock.remove_stale()?;
        if !removed.is_empty() {
            tracing::info!(instance = %instance, files = removed.len(), "removed what a dead runtime left in /dev/shm");
        }
        let workers = sizes.workers.clamp(1, layout::MAX_DOORBELLS as u32);
        let geometry = Geometry::fit(
            sizes.main,
            sizes.max_clients,
            sizes.slots,
            workers,
            MAX_SLOT,
        )
        .ok_or(ServeError::MainTooSmall {
            main_size: sizes.main,
            max_clients: sizes.max_clients,
            slots: sizes.slots,
        })?;
        let name =
            |role| ShmName::segment(instance, role).map_err(|e| ServeError::Layout(e.to_string()));
        let main = Segment::create(&name(ROLE_MAIN)?, geometry.segment_size())?;
        main.remove_on_drop(true);
        let client_data = Segment::create(&name(ROLE_CLIENT_DATA)?, sizes.client_data)?;
        client_data.remove_on_drop(true);
        let runtime_data = Segment::create(&name(ROLE_RUNTIME_DATA)?, sizes.runtime_data)?;
        runtime_data.remove_on_drop(true);

        let header = Header::new(main.clone());
        header.init(&geometry, std::process::id());
        let data_share = (sizes.client_data / geometry.max_clients as usize) & !4095;
        let mapping: Arc<dyn Send + Sync> = Arc::new(client_data.clone());
        let mut clients = Vec::with_capacity(geometry.max_clients as usize);
        for client in 0..geometry.max_clients {
            let (offset, len) = geometry.ring_range(client);
            let region = main
                .region(offset, len)
                .map_err(|e| ServeError::Layout(e.to_string()))?;
            let ring = Ring::init(&region, geometry.slots)
                .map_err(|e| ServeError::Layout(e.to_string()))?;
            clients.push(ClientEntry {
                ring: Mutex::new(ring),
                inflight: AtomicU64::new(0),
                overflow: Mutex::new(vec![None; geometry.slots as usize]),
                periodic: Mutex::new(HashMap::new()),
                bulk: Arc::new(bulk_share(&client_data, client, data_share, &mapping)?),
            });
        }
        let server = Arc::new(ShmServer {
            instance: instance.clone(),
            geometry,
            main,
            client_data,
            runtime_data,
            header,
            data_share,
            clients,
            runtime_arena: Mutex::new(Arena::new(sizes.runtime_data)),
            next_periodic: AtomicU64::new(1),
            poll_lists: (0..geometry.workers)
                .map(|_| {
                    Mutex::new(PollList {
                        epoch: u32::MAX,
                        clients: Vec::new(),
                    })
                })
                .collect(),
            stopping: AtomicBool::new(false),
            threads: Mutex::new(Vec::new()),
            lock: Mutex::new(Some(lock)),
        });
        Ok(server)
    }

    /// Lets clients attach: called once the runtime can serve them (its admin pool
    /// exists).
    pub fn publish_ready(&self) {
        self.header
            .state()
            .store(layout::STATE_READY, Ordering::Release);
    }

    /// Starts the doorbell threads (one per worker) and the housekeeping thread.
    pub fn start_threads(self: &Arc<Self>, ingress: Arc<dyn Ingress>) {
        let mut threads = lock(&self.threads);
        for worker in 0..self.geometry.workers {
            let server = self.clone();
            let ingress = ingress.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("chimaera-doorbell-{worker}"))
                    .spawn(move || server.ring_doorbell(worker, ingress.as_ref()))
                    .expect("spawn doorbell thread"),
            );
        }
        let server = self.clone();
        threads.push(
            std::thread::Builder::new()
                .name("chimaera-housekeeping".into())
                .spawn(move || server.housekeeping())
                .expect("spawn housekeeping thread"),
        );
    }

    fn ring_doorbell(&self, worker: u32, ingress: &dyn Ingress) {
        let (bell, _) = self.header.doorbell(worker);
        while !self.stopping.load(Ordering::Acquire) {
            let seen = bell.load(Ordering::Acquire);
            ingress.wake_worker(worker as usize);
            // No timeout: clients bump the word, and shutdown bumps it to end the thread.
            futex::wait(bell, seen, None);
        }
    }

    fn housekeeping(&self) {
        while !self.stopping.load(Ordering::Acquire) {
            let epoch = self.header.attach_epoch().load(Ordering::Acquire);
            let mut active = 0;
            let mut reclaiming = 0;
            for client in 0..self.geometry.max_clients {
                let Some(state) = self.header.client_state(&self.geometry, client) else {
                    continue;
                };
                match state.load(Ordering::Acquire) {
                    layout::CLIENT_ACTIVE => {
                        if client_alive(&self.instance, client) {
                            active += 1;
                        } else {
                            tracing::debug!(
                                client,
                                "client detached or died; reclaiming its slots and buffers"
                            );
                            for (_, cancel) in lock(&self.clients[client as usize].periodic).drain()
                            {
                                cancel.cancel();
                            }
                            state.store(layout::CLIENT_RECLAIMING, Ordering::Release);
                            self.bump_epoch();
                            reclaiming += 1;
                        }
                    }
                    layout::CLIENT_RECLAIMING => {
                        let reclaimed = self.try_reclaim(client);
                        reclaiming += u32::from(!reclaimed);
                    }
                    _ => {}
                }
            }
            self.header
                .clients_active()
                .store(active, Ordering::Relaxed);
            if active == 0 && reclaiming == 0 {
                // Nobody to watch: sleep until a client attaches (or shutdown).
                futex::wait(self.header.attach_epoch(), epoch, None);
            } else {
                std::thread::sleep(HOUSEKEEPING_PERIOD);
            }
        }
    }

    fn bump_epoch(&self) {
        self.header.attach_epoch().fetch_add(1, Ordering::AcqRel);
        futex::wake_all(self.header.attach_epoch());
    }

    /// Frees a dead client's area once none of its tasks is in flight; returns whether
    /// it did.
    fn try_reclaim(&self, client: u32) -> bool {
        let entry = &self.clients[client as usize];
        // A running task (fire-and-forget and periodic ones included) may still use the
        // share through a bulk argument.
        // Pairs with the fence a periodic task puts between taking the share back and
        // checking its cancel (runtime.rs, `sleep_between_runs`): either we see its
        // reference, or it sees the cancel set when the client was found dead.
        fence(Ordering::SeqCst);
        if entry.inflight.load(Ordering::Acquire) != 0 || Arc::strong_count(&entry.bulk) > 1 {
            return false;
        }
        let Ok(control) = self.header.control(&self.geometry, client) else {
            return false;
        };
        lock(&entry.ring).reset();
        for slot_index in 0..self.geometry.slots {
            if let Ok(view) = SlotView::new(&self.main, &self.geometry, client, slot_index) {
                view.word(slot::WAITING).store(0, Ordering::Relaxed);
                view.word(slot::STATE)
                    .store(layout::SLOT_FREE, Ordering::Relaxed);
            }
        }
        {
            let mut overflow = lock(&entry.overflow);
            let mut arena = lock(&self.runtime_arena);
            for extent in overflow.iter_mut().filter_map(Option::take) {
                arena.free(extent);
            }
            self.header
                .runtime_data_in_use()
                .store(arena.in_use() as u64, Ordering::Relaxed);
        }
        lock(&entry.periodic).clear();
        control.data_in_use.store(0, Ordering::Relaxed);
        control.pid.store(0, Ordering::Relaxed);
        control.generation.fetch_add(1, Ordering::AcqRel);
        if let Err(err) = remove_client_lock(&self.instance, client) {
            tracing::warn!(client, "cannot remove a dead client's lock file: {err}");
        }
        control.state.store(layout::CLIENT_FREE, Ordering::Release);
        self.bump_epoch();
        tracing::debug!(client, "client area reclaimed");
        true
    }

    /// Workers that poll client rings.
    pub fn workers(&self) -> usize {
        self.geometry.workers as usize
    }

    /// Clients attached now (as of the last housekeeping round).
    pub fn clients_active(&self) -> u32 {
        self.header.clients_active().load(Ordering::Relaxed)
    }

    /// Announces that `worker` is about to sleep (or woke up). Returns whether one of its
    /// rings has work, in which case it should not sleep.
    pub fn set_sleeping(&self, worker: usize, sleeping: bool) -> bool {
        let (_, flag) = self.header.doorbell(worker as u32);
        flag.store(u32::from(sleeping), Ordering::SeqCst);
        if !sleeping {
            return false;
        }
        fence(Ordering::SeqCst);
        let list = self.poll_list(worker);
        list.clients.iter().any(|&client| {
            self.active(client)
                && self.clients[client as usize]
                    .ring
                    .try_lock()
                    .map(|ring| !ring.is_empty())
                    .unwrap_or(true)
        })
    }

    fn assigned(&self, worker: usize) -> impl Iterator<Item = u32> + '_ {
        (worker as u32..self.geometry.max_clients).step_by(self.geometry.workers.max(1) as usize)
    }

    fn active(&self, client: u32) -> bool {
        self.header
            .client_state(&self.geometry, client)
            .is_some_and(|state| state.load(Ordering::Acquire) == layout::CLIENT_ACTIVE)
    }

    /// The attached clients `worker` polls (rescanned only when the epoch moved).
    fn poll_list(&self, worker: usize) -> std::sync::MutexGuard<'_, PollList> {
        let mut list = lock(&self.poll_lists[worker]);
        let epoch = self.header.attach_epoch().load(Ordering::Acquire);
        if list.epoch != epoch {
            list.epoch = epoch;
            list.clients = self
                .assigned(worker)
                .filter(|client| self.active(*client))
                .collect();
        }
        list
    }

    /// Whether a ring polled by `worker` has a task (cheap: a look at each ring's tail).
    pub fn has_work(&self, worker: usize) -> bool {
        let list = self.poll_list(worker);
        list.clients.iter().any(|&client| {
            self.clients[client as usize]
                .ring
                .try_lock()
                .is_ok_and(|ring| !ring.is_empty())
        })
    }

    /// Takes queued tasks from the rings of `worker`'s clients into the runtime; returns
    /// how many.
    pub fn ingest(self: &Arc<Self>, worker: usize, ingress: &dyn Ingress) -> usize {
        let mut taken = 0;
        let list = self.poll_list(worker);
        for &client in &list.clients {
            if !self.active(client) {
                continue;
            }
            let entry = &self.clients[client as usize];
            let Ok(mut ring) = entry.ring.try_lock() else {
                continue;
            };
            for _ in 0..INGEST_BUDGET {
                match ring.pop() {
                    Ok(Some(slot_index)) => {
                        taken += 1;
                        self.ingest_slot(worker, client, slot_index, ingress);
                    }
                    Ok(None) => break,
                    Err(corrupt) => {
                        tracing::warn!(
                            client,
                            "client ring is corrupt ({corrupt}); ignoring the client"
                        );
                        if let Ok(control) = self.header.control(&self.geometry, client) {
                            control
                                .state
                                .store(layout::CLIENT_RECLAIMING, Ordering::Release);
                        }
                        break;
                    }
                }
            }
        }
        taken
    }

    fn ingest_slot(
        self: &Arc<Self>,
        worker: usize,
        client: u32,
        slot_index: u32,
        ingress: &dyn Ingress,
    ) {
        if slot_index >= self.geometry.slots {
            tracing::warn!(
                client,
                slot_index,
                "client queued a slot index out of range"
            );
            return;
        }
        let Ok(view) = SlotView::new(&self.main, &self.geometry, client, slot_index) else {
            return;
        };
        let Ok(generation) = self.header.generation(&self.geometry, client) else {
            return;
        };
        let generation = generation.load(Ordering::Acquire);
        let entry = &self.clients[client as usize];
        if let Some(extent) = lock(&entry.overflow)[slot_index as usize].take() {
            let mut arena = lock(&self.runtime_arena);
            arena.free(extent);
            self.header
                .runtime_data_in_use()
                .store(arena.in_use() as u64, Ordering::Relaxed);
        }
        let reply = ReplyTo {
            sink: self.clone(),
            key: ReplyKey([client, slot_index, generation]),
        };
        entry.inflight.fetch_add(1, Ordering::AcqRel);
        if view.word(slot::KIND).load(Ordering::Relaxed) == layout::KIND_CANCEL {
            let id = view.word64(slot::QUERY_B).load(Ordering::Relaxed);
            let result = match lock(&entry.periodic).remove(&id) {
                Some(cancel) => {
                    cancel.cancel();
                    Ok(&[][..])
                }
                None => Err(TaskError::failed(format!(
                    "this client has no periodic task {id} (cancelled already?)"
                ))),
            };
            self.write_result(client, slot_index, generation, result.as_ref().map(|b| *b));
            return;
        }
        match self.decode_slot(&view, client) {
            Ok((pool, method, query, input, schedule)) => {
                let mut periodic_id = None;
                let (sink, cancel) = match schedule {
                    None => (Some(reply), None),
                    Some(Schedule::FireAndForget) => (None, None),
                    Some(Schedule::Periodic(_)) => {
                        let id = self.next_periodic.fetch_add(1, Ordering::Relaxed);
                        let cancel = CancelToken::new();
                        lock(&entry.periodic).insert(id, cancel.clone());
                        periodic_id = Some(id);
                        (None, Some(cancel))
                    }
                };
                let acknowledge = sink.is_none();
                let origin = Origin {
                    reply: sink,
                    cancel,
                    bulk: Some(entry.bulk.clone()),
                    local_worker: Some(worker),
                };
                match ingress.enqueue(pool, method, query, input, schedule, origin) {
                    Ok(()) if acknowledge => {
                        let ack = match periodic_id {
                            Some(id) => encode(&id),
                            None => Ok(Bytes::new()),
                        };
                        self.write_result(client, slot_index, generation, ack.as_deref())
                    }
                    Ok(()) => {}
                    Err(err) => {
                        if let Some(id) = periodic_id {
                            lock(&entry.periodic).remove(&id);
                        }
                        self.write_result(client, slot_index, generation, Err(&err))
                    }
                }
            }
            Err(err) => self.write_result(client, slot_index, generation, Err(&err)),
        }
    }

    /// Reads a slot's task: every header word once, the input copied out.
    #[allow(clippy::type_complexity)]
    fn decode_slot(
        &self,
        view: &SlotView,
        client: u32,
    ) -> Result<(PoolId, u32, PoolQuery, Bytes, Option<Schedule>), TaskError> {
        let load = |field| view.word(field).load(Ordering::Relaxed);
        let pool = PoolId::new(load(slot::POOL_MAJOR), load(slot::POOL_MINOR));
        let method = load(slot::METHOD);
        let kind = load(slot::KIND);
        let query = decode_query(
            load(slot::QUERY_TAG),
            load(slot::QUERY_A),
            view.word64(slot::QUERY_B).load(Ordering::Relaxed),
        )?;
        let period = view.word64(slot::PERIOD_NS).load(Ordering::Relaxed);
        let input_len = load(slot::INPUT_LEN) as usize;
        let input_where = load(slot::INPUT_WHERE);
        let input_offset = view.word64(slot::INPUT_OFFSET).load(Ordering::Relaxed);
        let schedule = match kind {
            layout::KIND_CALL => None,
            layout::KIND_FIRE_AND_FORGET => Some(Schedule::FireAndForget),
            layout::KIND_PERIODIC if period > 0 => {
                Some(Schedule::Periodic(Duration::from_nanos(period)))
            }
            other => {
                return Err(TaskError::malformed(
                    "task header",
                    format!("unknown task kind {other} (or a periodic task with period 0)"),
                ))
            }
        };
        // The length is the client's word: checked against the area it claims before
        // anything is allocated.
        let zeroed = |len: usize| {
            let mut input = Bytes::with_capacity(len);
            input.resize(len, 0);
            input
        };
        let input = match input_where {
            layout::IN_SLOT => {
                if input_len > view.payload_len() {
                    return Err(TaskError::malformed(
                        "input",
                        format!(
                            "{input_len} bytes do not fit the slot's {}-byte payload",
                            view.payload_len()
                        ),
                    ));
                }
                let mut input = zeroed(input_len);
                view.read_payload(&mut input)
                    .map_err(|e| TaskError::malformed("input", e))?;
                input
            }
            layout::IN_CLIENT_DATA => {
                let share_start = client as usize * self.data_share;
                let offset = usize::try_from(input_offset).unwrap_or(usize::MAX);
                let in_share = offset
                    .checked_add(input_len)
                    .is_some_and(|end| end <= self.data_share);
                if !in_share {
                    return Err(TaskError::malformed(
                        "input",
                        format!("buffer {offset}+{input_len} lies outside the client's {}-byte data share", self.data_share),
                    ));
                }
                let mut input = zeroed(input_len);
                self.client_data
                    .read_bytes(share_start + offset, &mut input)
                    .map_err(|e| TaskError::malformed("input", e))?;
                input
            }
            other => {
                return Err(TaskError::malformed(
                    "task header",
                    format!("unknown input location {other}"),
                ))
            }
        };
        Ok((pool, method, query, input, schedule))
    }

    /// Writes a single result into a slot and signals the client.
    fn write_result(
        &self,
        client: u32,
        slot_index: u32,
        generation: u32,
        result: Result<&[u8], &TaskError>,
    ) {
        match result {
            Ok(bytes) => {
                self.write_output(client, slot_index, generation, layout::STATUS_OK, bytes)
            }
            Err(err) => {
                let bytes = encode_error(err);
                self.write_output(client, slot_index, generation, layout::STATUS_ERROR, &bytes);
            }
        }
    }

    fn write_output(
        &self,
        client: u32,
        slot_index: u32,
        generation: u32,
        status: u32,
        bytes: &[u8],
    ) {
        let entry = &self.clients[client as usize];
        let Ok(current_generation) = self.header.generation(&self.geometry, client) else {
            return;
        };
        let current = current_generation.load(Ordering::Acquire) == generation;
        if current {
            if let Ok(view) = SlotView::new(&self.main, &self.geometry, client, slot_index) {
                self.store_output(entry, &view, slot_index, status, bytes);
                view.word(slot::STATE)
                    .store(layout::SLOT_DONE, Ordering::SeqCst);
                fence(Ordering::SeqCst);
                if view.word(slot::WAITING).load(Ordering::SeqCst) != 0 {
                    futex::wake(view.word(slot::STATE), 1);
                }
            }
            self.header.tasks_done().fetch_add(1, Ordering::Relaxed);
        }
        entry.inflight.fetch_sub(1, Ordering::AcqRel);
    }

    fn store_output(
        &self,
        entry: &ClientEntry,
        view: &SlotView,
        slot_index: u32,
        status: u32,
        bytes: &[u8],
    ) {
        // The output descriptor: status, length and where the bytes lie.
        let describe = |status: u32, len: usize, place: u32| {
            view.word(slot::STATUS).store(status, Ordering::Relaxed);
            view.word(slot::OUTPUT_LEN)
                .store(len as u32, Ordering::Relaxed);
            view.word(slot::OUTPUT_WHERE)
                .store(place, Ordering::Relaxed);
        };
        if view.write_inline(bytes).is_ok() {
            return describe(status, bytes.len(), layout::IN_LINE);
        }
        if view.write_payload(bytes).is_ok() {
            return describe(status, bytes.len(), layout::IN_SLOT);
        }
        let extent = {
            let mut arena = lock(&self.runtime_arena);
            let extent = arena.alloc(bytes.len(), 16);
            self.header
                .runtime_data_in_use()
                .store(arena.in_use() as u64, Ordering::Relaxed);
            extent
        };
        match extent {
            Some(extent) if self.runtime_data.write_bytes(extent.offset, bytes).is_ok() => {
                lock(&entry.overflow)[slot_index as usize] = Some(extent);
                view.word64(slot::OUTPUT_OFFSET)
                    .store(extent.offset as u64, Ordering::Relaxed);
                describe(status, bytes.len(), layout::IN_RUNTIME_DATA);
            }
            other => {
                if let Some(extent) = other {
                    lock(&self.runtime_arena).free(extent);
                }
                let err = encode_error(&TaskError::failed(format!(
                    "the task's output ({} bytes) does not fit the runtime-data segment; raise shm.runtime_data_size or pass a buffer",
                    bytes.len()
                )));
                let _ = view.write_payload(&err);
                describe(layout::STATUS_ERROR, err.len(), layout::IN_SLOT);
            }
        }
    }

    /// Fails every task still queued in a ring (the runtime is stopping).
    pub fn fail_queued(&self) {
        for client in 0..self.geometry.max_clients {
            if !self.active(client) {
                continue;
            }
            let Ok(generation) = self.header.generation(&self.geometry, client) else {
                continue;
            };
            let generation = generation.load(Ordering::Acquire);
            let entry = &self.clients[client as usize];
            let mut ring = lock(&entry.ring);
            // At most one answer per slot: a client that keeps pushing indices (it can
            // push one slot again and again) must not hold the stop here.
            for _ in 0..self.geometry.slots {
                let Ok(Some(slot_index)) = ring.pop() else {
                    break;
                };
                if slot_index < self.geometry.slots {
                    entry.inflight.fetch_add(1, Ordering::AcqRel);
                    self.write_result(
                        client,
                        slot_index,
                        generation,
                        Err(&TaskError::RuntimeStopped),
                    );
                }
            }
        }
    }

    /// Stops the threads and removes the segments and the lock.
    pub fn shutdown(&self) {
        self.header
            .state()
            .store(layout::STATE_STOPPING, Ordering::Release);
        self.fail_queued();
        self.stopping.store(true, Ordering::Release);
        for worker in 0..self.geometry.workers {
            let (bell, _) = self.header.doorbell(worker);
            bell.fetch_add(1, Ordering::AcqRel);
            futex::wake_all(bell);
        }
        self.bump_epoch();
        let threads = std::mem::take(&mut *lock(&self.threads));
        for thread in threads {
            let _ = thread.join();
        }
        // Segments go when the last mapping handle drops; unlink now so no client can
        // attach to a stopped runtime, then release the instance lock.
        for segment in [&self.main, &self.client_data, &self.runtime_data] {
            let _ = Segment::unlink(segment.name());
        }
        lock(&self.lock).take();
    }

    /// Bytes in use in the runtime-data segment.
    pub fn runtime_data_in_use(&self) -> u64 {
        self.header.runtime_data_in_use().load(Ordering::Relaxed)
    }
}

/// Answers the tasks of client processes; a key is `[client, slot, generation]`.
impl ReplySink for ShmServer {
    fn complete_one(
        &self,
        key: ReplyKey,
        _container: ContainerId,
        result: Result<&[u8], TaskError>,
    ) {
        let ReplyKey([client, slot, generation]) = key;
        self.write_result(client, slot, generation, result.as_ref().map(|b| *b));
    }

    fn complete(&self, key: ReplyKey, mut results: Vec<(ContainerId, Result<Bytes, TaskError>)>) {
        let ReplyKey([client, slot, generation]) = key;
        if results.len() == 1 {
            let (_, result) = results.remove(0);
            self.write_result(client, slot, generation, result.as_deref());
            return;
        }
        let replicas: Vec<(u32, Result<Vec<u8>, TaskError>)> = results
            .into_iter()
            .map(|(container, result)| (container, result.map(|bytes| bytes.to_vec())))
            .collect();
        let (status, bytes) = match encode(&replicas) {
            Ok(bytes) => (layout::STATUS_REPLICAS, bytes),
            Err(err) => (layout::STATUS_ERROR, encode_error(&err)),
        };
        self.write_output(client, slot, generation, status, &bytes);
    }
}

fn encode_error(err: &TaskError) -> Bytes {
    encode(err).unwrap_or_else(|_| {
        encode(&TaskError::failed("an error that could not be encoded")).unwrap_or_default()
    })
}

/// Query tags in a slot header.
pub mod query_tag {
    /// `Local`.
    pub const LOCAL: u32 = 0;
    /// `DirectId(a)`.
    pub const DIRECT_ID: u32 = 1;
    /// `DirectHash(b)`.
    pub const DIRECT_HASH: u32 = 2;
    /// `Range { offset: a, count: b }`.
    pub const RANGE: u32 = 3;
    /// `Broadcast`.
    pub const BROADCAST: u32 = 4;
    /// `Physical(a)`.
    pub const PHYSICAL: u32 = 5;
    /// `Dynamic`.
    pub const DYNAMIC: u32 = 6;
}

/// A query as the three words of a slot header.
pub fn encode_query(query: PoolQuery) -> (u32, u32, u64) {
    use query_tag::*;
    match query {
        PoolQuery::Local => (LOCAL, 0, 0),
        PoolQuery::DirectId(c) => (DIRECT_ID, c, 0),
        PoolQuery::DirectHash(h) => (DIRECT_HASH, 0, h),
        PoolQuery::Range { offset, count } => (RANGE, offset, u64::from(count)),
        PoolQuery::Broadcast => (BROADCAST, 0, 0),
        PoolQuery::Physical(node) => (PHYSICAL, node, 0),
        PoolQuery::Dynamic => (DYNAMIC, 0, 0),
    }
}

/// The query three slot-header words describe.
pub fn decode_query(tag: u32, a: u32, b: u64) -> Result<PoolQuery, TaskError> {
    use query_tag::*;
    Ok(match tag {
        LOCAL => PoolQuery::Local,
        DIRECT_ID => PoolQuery::DirectId(a),
        DIRECT_HASH => PoolQuery::DirectHash(b),
        RANGE => PoolQuery::Range {
            offset: a,
            count: u32::try_from(b)
                .map_err(|_| TaskError::malformed("query", "range count exceeds u32"))?,
        },
        BROADCAST => PoolQuery::Broadcast,
        PHYSICAL => PoolQuery::Physical(a),
        DYNAMIC => PoolQuery::Dynamic,
        other => {
            return Err(TaskError::malformed(
                "query",
                format!("unknown query tag {other}"),
            ))
        }
    })
}

/// How much of an instance's shared memory is in use, read from its segments.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ShmUsage {
    /// Client areas not free (attached, or being reclaimed).
    pub client_areas_in_use: u32,
    /// Task slots not free, over all client areas.
    pub slots_in_use: u32,
    /// Bytes of the client-data segment clients hold.
    pub client_data_in_use: u64,
    /// Bytes of the runtime-data segment holding outputs.
    pub runtime_data_in_use: u64,
}

/// Reads the usage of `instance`'s segments (for `chimaera runtime status` and tests).
pub fn usage(instance: &InstanceName) -> Result<ShmUsage, super::segment::SegmentError> {
    let name =
        ShmName::segment(instance, ROLE_MAIN).map_err(|e| super::segment::SegmentError::Io {
            action: "naming",
            name: ShmName::runtime_lock(instance),
            source: std::io::Error::other(e.to_string()),
        })?;
    let main = Segment::open(&name)?;
    let header = Header::new(main.clone());
    let geometry = header.geometry();
    let mut usage = ShmUsage {
        runtime_data_in_use: header.runtime_data_in_use().load(Ordering::Relaxed),
        ..ShmUsage::default()
    };
    for client in 0..geometry.max_clients {
        let Ok(control) = header.control(&geometry, client) else {
            break;
        };
        if control.state.load(Ordering::Acquire) == layout::CLIENT_FREE {
            continue;
        }
        usage.client_areas_in_use += 1;
        usage.client_data_in_use += control.data_in_use.load(Ordering::Relaxed);
        for slot_index in 0..geometry.slots {
            if let Ok(view) = SlotView::new(&main, &geometry, client, slot_index) {
                if view.word(slot::STATE).load(Ordering::Relaxed) != layout::SLOT_FREE {
                    usage.slots_in_use += 1;
                }
            }
        }
    }
    Ok(usage)
}
