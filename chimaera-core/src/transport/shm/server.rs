//! The runtime's end of the shared-memory transport.
//!
//! [`ShmServer::create`] takes the instance's runtime lock (so a second runtime for the
//! same instance is refused), removes what a dead runtime left, makes the sealed
//! [runtime page](super::runtime_page), one doorbell eventfd per shm-serving worker, and
//! listens on the instance's Unix socket ([`super::handshake::socket_path`]);
//! [`ShmServer::publish_ready`] then lets clients attach, once the runtime has its admin
//! pool.
//!
//! **Sessions.** One thread (`chimaera-sessions`) polls the listening socket and every
//! attached client's socket. A new connection is checked with `SO_PEERCRED` against the
//! access policy and gets a fresh [`ClientArea`] (its own memfd) — see
//! [`super::handshake`]. A client socket that hangs up (the client exited or was killed:
//! the kernel closes its end) or sends anything after the handshake ends the session:
//! the area leaves the table at once, its periodic tasks are cancelled, and its memory
//! goes when the last of its tasks does (they hold it by reference count). There is no
//! reclaim step that could race with a worker: a new client never gets an old area.
//!
//! **Ingest.** Each shm-serving worker polls the areas assigned to it (`client %
//! workers`), from a list of `Arc<ClientArea>` cached in its own thread (a thread-local
//! keyed by server and worker) and rebuilt only when the table changes (an epoch). An
//! idle round is one `Acquire` load of the epoch and, per area, one of its ring's tail
//! and one of the runtime's own count of pops: no lock, no reference count, no write.
//! Only a round that finds work clones the list (one reference count), because chimod
//! routing code runs while it is used and must not run under the cache's borrow (a
//! poller killed there would leave it borrowed; a cache found borrowed is bypassed, not
//! trusted). See [`ClientArea`] for what is checked per task.
//!
//! **Waking.** An idle worker sets its sleeping flag in the runtime page (read-only to
//! clients) before parking; a client that pushes and sees it writes *its own* doorbell
//! eventfd. One doorbell thread per worker waits in `epoll` on the doorbells of that
//! worker's clients (edge-triggered, so the runtime never reads them: a read could block
//! on a descriptor whose flags a client controls) and unparks the worker. Why one eventfd
//! per client rather than one per worker: a shared one could be drained (`read`) by a
//! hostile client, stealing every other client's wake-ups. A client can write its own
//! at will: the worst it causes is spurious wake-ups. The hot path pays no syscall while
//! the worker is awake.
//!
//! **Status.** [`usage`] asks the runtime over the socket; the answer comes from the
//! runtime's private counters, never from memory a client can write.
pub use super::client_area::Ingress;
use super::client_area::{self, AreaSpec, ClientArea, Routing, ServerCounters};
pub use super::handshake::ShmUsage;
use super::handshake::{self, AccessPolicy, AttachFds, Grant, Reply, Request};
use super::runtime_page::RuntimePage;
use super::wire::{self, AreaGeometry};
use crate::quota::UidTable;
use crate::error::TaskError;
use crate::runtime::task::lock;
use crate::runtime::worker::TaskSource;
use crate::shm::liveness::RuntimeLock;
use crate::shm::naming::{InstanceName, ShmName};
use rustix::event::{epoll, EventfdFlags, PollFd, PollFlags};
use std::io::Read;
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::cell::RefCell;
use std::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

/// Largest slot the runtime lays out; bigger inputs and outputs use the data spaces.
const MAX_SLOT: u32 = 1024;
/// How often the sessions thread looks at areas of gone clients whose tasks still run.
const HOUSEKEEPING_PERIOD: Duration = Duration::from_millis(200);
/// How long a connecting peer may take to send its request.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(1);

/// Why the transport could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Another runtime holds the instance, or its lock file is unusable.
    #[error(transparent)]
    Lock(#[from] crate::shm::liveness::RuntimeLockError),
    /// The configured sizes cannot hold a client's queue.
    #[error("shm.main_size {main_size} is too small for {max_clients} clients × {slots} slots; raise shm.main_size or lower max_clients/queue_depth")]
    MainTooSmall {
        /// Configured size.
        main_size: usize,
        /// Configured clients.
        max_clients: u32,
        /// Configured slots per client.
        slots: u32,
    },
    /// The user directory could not be opened to granted users.
    #[error(transparent)]
    Dir(#[from] crate::shm::dir::DirError),
    /// The runtime page could not be made.
    #[error(transparent)]
    RuntimePage(#[from] super::runtime_page::RuntimePageError),
    /// A thread of the transport could not be started.
    #[error("cannot start thread `{thread}`: {source}; raise the process's thread limit (ulimit -u) or lower `workers`")]
    Thread {
        /// The thread's name.
        thread: String,
        /// The system error.
        #[source]
        source: std::io::Error,
    },
    /// The socket or an eventfd could not be made.
    #[error("cannot listen on {path}: {source}; remove a stale file there or check the directory's permissions")]
    Socket {
        /// The socket's path.
        path: PathBuf,
        /// The system error.
        #[source]
        source: std::io::Error,
    },
}

/// Sizes the runtime asks for.
#[derive(Clone, Copy, Debug)]
pub struct ServeSizes {
    /// Bytes for all clients' queues (control line, ring, slots): each client's queue
    /// gets `main / max_clients`.
    pub main: usize,
    /// Bytes of data shares over all clients: each gets `client_data / max_clients`.
    pub client_data: usize,
    /// Bytes of output spaces over all clients: each gets `runtime_data / max_clients`,
    /// its quota of output bytes.
    pub runtime_data: usize,
    /// Client areas at once.
    pub max_clients: u32,
    /// Slots per client (power of two).
    pub slots: u32,
    /// Workers polling client rings.
    pub workers: u32,
    /// Bytes of stack each task coroutine gets (reported in errors).
    pub stack_size: usize,
}

/// Who may connect and what each client may hold.
#[derive(Clone, Debug)]
pub struct ServeAccess {
    /// Who may connect and administer.
    pub policy: AccessPolicy,
    /// Quota: task replicas in flight per client (fire-and-forget and periodic
    /// included).
    pub tasks_in_flight: u32,
    /// The per-uid quotas (`quotas.*`) of the uids without admin rights, shared with the
    /// runtime (the tasks peers send for such a uid count against them too).
    pub(crate) uids: Arc<UidTable>,
    /// Quota: client processes of one uid without admin rights attached at once,
    /// draining ones included (`quotas.connections`, resolved).
    pub connections: u32,
}

/// The areas a worker polls.
type PollList = Arc<[Arc<ClientArea>]>;

/// Does the owner's deferred `WAITING` checks of every area of a worker's poll list
/// (see `client_area`'s "Waking a sleeping client").
fn wake_sleepers(areas: &PollList) {
    areas.iter().for_each(|area| area.wake_waiters());
}

/// Identities of servers for the poll caches (a freed server's address may be reused).
static NEXT_SERVER_ID: AtomicU64 = AtomicU64::new(1);

/// The areas one worker polls, as of a table epoch: one per thread, since a worker's
/// poll rounds all run on its own thread.
struct PollCache {
    server: u64,
    worker: usize,
    epoch: u32,
    areas: Option<PollList>,
}

thread_local! {
    static POLL_CACHE: RefCell<PollCache> = const {
        RefCell::new(PollCache {
            server: 0,
            worker: 0,
            epoch: 0,
            areas: None,
        })
    };
}

/// What a worker's doorbell thread waits on: its clients' doorbells, and its own stop
/// bell (never shared).
struct Doorbells {
    epoll: OwnedFd,
    stop: OwnedFd,
}

/// The epoll key of the stop bell (client keys are area indices).
const STOP_KEY: u64 = u64::MAX;

impl Doorbells {
    fn new() -> std::io::Result<Doorbells> {
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        let stop = eventfd()?;
        epoll::add(
            &epoll,
            &stop,
            epoll::EventData::new_u64(STOP_KEY),
            epoll::EventFlags::IN | epoll::EventFlags::ET,
        )?;
        Ok(Doorbells { epoll, stop })
    }
}

/// An attached client: its area and its socket.
struct Session {
    area: Arc<ClientArea>,
    stream: UnixStream,
}

/// The runtime's end of the transport.
pub struct ShmServer {
    instance: InstanceName,
    geometry: AreaGeometry,
    max_clients: u32,
    workers: u32,
    access: ServeAccess,
    page: RuntimePage,
    doorbells: Vec<Doorbells>,
    listener: UnixListener,
    /// Wakes the sessions thread (shutdown).
    sessions_bell: OwnedFd,
    /// Attached clients, by area index.
    table: Mutex<Vec<Option<Session>>>,
    /// Areas of gone clients whose tasks still run (they count against `max_clients`).
    draining: Mutex<Vec<Arc<ClientArea>>>,
    /// Bumped whenever `table` changes.
    epoch: AtomicU32,
    /// This server's key in the workers' poll caches.
    id: u64,
    /// Per worker: the client task its poller is routing now.
    routing: Vec<Routing>,
    /// Where ingested tasks go (the runtime; weak, as the runtime holds this server).
    ingress: OnceLock<Weak<dyn Ingress>>,
    /// Cleared once a stop's grace is over: client rings are then left to `shutdown`
    /// (which fails what they hold), so a client that keeps pushing does not keep the
    /// workers busy answering it.
    taking_tasks: AtomicBool,
    /// The task coroutines' stack size (reported when a route overflows the poller's).
    stack_size: usize,
    counters: Arc<ServerCounters>,
    ready: AtomicBool,
    stopping: AtomicBool,
    threads: Mutex<Vec<JoinHandle<()>>>,
    lock: Mutex<Option<RuntimeLock>>,
}

fn eventfd() -> std::io::Result<OwnedFd> {
    Ok(rustix::event::eventfd(0, EventfdFlags::CLOEXEC)?)
}

fn ring_bell(fd: &OwnedFd) {
    let _ = rustix::io::write(fd, &1u64.to_ne_bytes());
}

impl ShmServer {
    /// Takes the instance, makes the runtime page and doorbells, and listens.
    pub fn create(
        instance: &InstanceName,
        sizes: ServeSizes,
        access: ServeAccess,
    ) -> Result<Arc<ShmServer>, ServeError> {
        let lock = RuntimeLock::acquire(instance)?;
        let removed = lock.remove_stale()?;
        if !removed.is_empty() {
            tracing::info!(instance = %instance, files = removed.len(), "removed what a dead runtime left in /dev/shm");
        }
        let workers = sizes.workers.clamp(1, wire::MAX_DOORBELLS as u32);
        let clients = sizes.max_clients.max(1) as usize;
        let too_small = ServeError::MainTooSmall {
            main_size: sizes.main,
            max_clients: sizes.max_clients,
            slots: sizes.slots,
        };
        let geometry = AreaGeometry::fit(
            sizes.main / clients,
            sizes.slots,
            MAX_SLOT,
            (sizes.client_data / clients) & !4095,
            (sizes.runtime_data / clients) & !4095,
        )
        .ok_or(too_small)?;
        let socket_name = ShmName::socket(instance);
        let socket_path = lock.dir().path_of(&socket_name);
        let socket_error = |source| ServeError::Socket {
            path: socket_path.clone(),
            source,
        };
        // Under the runtime lock: what `remove_stale` left at the name is not ours to take.
        if lock.dir().identity_of(&socket_name).is_some() {
            return Err(socket_error(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "something that is not a dead runtime's socket has the socket's name; remove it",
            )));
        }
        // Granted users reach the socket through the directory by name (mode 0711).
        if !access.policy.uids.is_empty() || !access.policy.gids.is_empty() {
            lock.dir().open_to_search()?;
        }
        let listener = UnixListener::bind(&socket_path).map_err(socket_error)?;
        // Anyone who reaches the socket may connect; SO_PEERCRED decides who is served
        // (see handshake).
        std::fs::set_permissions(&socket_path, std::fs::Permissions::from_mode(0o666))
            .map_err(socket_error)?;
        listener.set_nonblocking(true).map_err(socket_error)?;
        let doorbells = (0..workers)
            .map(|_| Doorbells::new())
            .collect::<Result<Vec<_>, _>>()
            .map_err(socket_error)?;
        let sessions_bell = eventfd().map_err(socket_error)?;
        Ok(Arc::new(ShmServer {
            instance: instance.clone(),
            geometry,
            max_clients: sizes.max_clients,
            workers,
            access,
            page: RuntimePage::create()?,
            doorbells,
            listener,
            sessions_bell,
            table: Mutex::new((0..sizes.max_clients).map(|_| None).collect()),
            draining: Mutex::new(Vec::new()),
            epoch: AtomicU32::new(0),
            id: NEXT_SERVER_ID.fetch_add(1, Ordering::Relaxed),
            routing: (0..workers).map(|_| Routing::default()).collect(),
            ingress: OnceLock::new(),
            taking_tasks: AtomicBool::new(true),
            stack_size: sizes.stack_size,
            counters: Arc::new(ServerCounters::default()),
            ready: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            threads: Mutex::new(Vec::new()),
            lock: Mutex::new(Some(lock)),
        }))
    }

    /// Lets clients attach: called once the runtime can serve them (its admin pool
    /// exists).
    pub fn publish_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    /// Starts the doorbell threads (one per worker) and the sessions thread. On an
    /// error, the threads already started run until [`shutdown`](Self::shutdown).
    pub fn start_threads(self: &Arc<Self>, ingress: Arc<dyn Ingress>) -> Result<(), ServeError> {
        let _ = self.ingress.set(Arc::downgrade(&ingress));
        let mut threads = lock(&self.threads);
        let spawn_error = |thread: String| {
            move |source| ServeError::Thread {
                thread: thread.clone(),
                source,
            }
        };
        for worker in 0..self.workers {
            let server = self.clone();
            let ingress = ingress.clone();
            let name = format!("chimaera-doorbell-{worker}");
            threads.push(
                std::thread::Builder::new()
                    .name(name.clone())
                    .spawn(move || server.ring_doorbell(worker as usize, ingress.as_ref()))
                    .map_err(spawn_error(name))?,
            );
        }
        let server = self.clone();
        let name = "chimaera-sessions".to_owned();
        threads.push(
            std::thread::Builder::new()
                .name(name.clone())
                .spawn(move || server.sessions())
                .map_err(spawn_error(name))?,
        );
        Ok(())
    }

    fn ring_doorbell(&self, worker: usize, ingress: &dyn Ingress) {
        let bells = &self.doorbells[worker];
        let mut events = [MaybeUninit::<epoll::Event>::uninit(); 16];
        while !self.stopping.load(Ordering::Acquire) {
            ingress.wake_worker(worker);
            // Blocks until a client of this worker (or shutdown) rings.
            if let Err(err) = epoll::wait(&bells.epoll, &mut events, None) {
                if err != rustix::io::Errno::INTR {
                    tracing::warn!(worker, "waiting for doorbells failed: {err}");
                    std::thread::sleep(HOUSEKEEPING_PERIOD);
                }
            }
        }
    }

    fn sessions(&self) {
        let period = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: HOUSEKEEPING_PERIOD.as_nanos() as i64,
        };
        while !self.stopping.load(Ordering::Acquire) {
            let draining = !lock(&self.draining).is_empty();
            let accept = self.poll_sessions(draining.then_some(&period));
            if accept {
                self.accept_all();
            }
        }
    }

    /// Waits (at most `timeout`; `None`: until something happens) for a connection or a
    /// hang-up, ends the sessions of clients that hung up, and returns whether a
    /// connection waits to be accepted.
    fn poll_sessions(&self, timeout: Option<&rustix::event::Timespec>) -> bool {
        let streams: Vec<(u32, UnixStream)> = lock(&self.table)
            .iter()
            .enumerate()
            .filter_map(|(client, session)| {
                let session = session.as_ref()?;
                Some((client as u32, session.stream.try_clone().ok()?))
            })
            .collect();
        let mut fds = Vec::with_capacity(streams.len() + 2);
        fds.push(PollFd::new(&self.listener, PollFlags::IN));
        fds.push(PollFd::new(&self.sessions_bell, PollFlags::IN));
        for (_, stream) in &streams {
            fds.push(PollFd::new(stream, PollFlags::IN));
        }
        if let Err(err) = rustix::event::poll(&mut fds, timeout) {
            if err != rustix::io::Errno::INTR {
                tracing::warn!("polling client sockets failed: {err}");
                std::thread::sleep(HOUSEKEEPING_PERIOD);
            }
            return false;
        }
        let accept = !fds[0].revents().is_empty();
        let gone: Vec<u32> = streams
            .iter()
            .zip(&fds[2..])
            .filter(|(_, fd)| !fd.revents().is_empty())
            .map(|((client, _), _)| *client)
            .collect();
        drop(fds);
        for client in gone {
            self.end_session(client);
        }
        self.prune_draining();
        accept
    }

    fn accept_all(&self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => self.handshake(stream),
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(err) => {
                    tracing::warn!("accepting a client failed: {err}");
                    return;
                }
            }
        }
    }

    /// Answers one connecting peer (see [`super::handshake`]).
    fn handshake(&self, stream: UnixStream) {
        let setup = stream
            .set_nonblocking(false)
            .and_then(|()| stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT)))
            .and_then(|()| stream.set_write_timeout(Some(HANDSHAKE_TIMEOUT)));
        let peer = match setup.and_then(|()| handshake::peer_cred(&stream)) {
            Ok(peer) => peer,
            Err(err) => {
                tracing::debug!("a peer's credentials are unreadable: {err}");
                return;
            }
        };
        // Refused before anything is read: a peer that may not connect cannot hold this
        // thread for the handshake timeout.
        let Some(rights) = self.access.policy.rights(peer) else {
            tracing::info!(
                uid = peer.uid,
                gid = peer.gid,
                pid = peer.pid,
                "refused a peer: its uid and gid are not in the config's access lists"
            );
            let denied = Reply::Denied {
                uid: peer.uid,
                gid: peer.gid,
            };
            let _ = handshake::answer(&stream, &denied, None);
            return;
        };
        let reply = match handshake::read_request(&stream) {
            Err(err) => {
                tracing::debug!(pid = peer.pid, "a peer failed its handshake: {err}");
                return;
            }
            Ok(Request::Usage) => Reply::Usage(self.usage()),
            Ok(Request::Attach) if !self.ready.load(Ordering::Acquire) => Reply::NotReady,
            Ok(Request::Attach) => return self.attach(stream, peer, rights),
        };
        if let Err(err) = handshake::answer(&stream, &reply, None) {
            tracing::debug!(pid = peer.pid, "could not answer a peer: {err}");
        }
    }

    /// How many areas, attached or draining, serve uid `uid`.
    fn areas_of(&self, table: &[Option<Session>], uid: u32) -> usize {
        let attached = table
            .iter()
            .flatten()
            .filter(|session| session.area.rights().uid == uid)
            .count();
        let draining = lock(&self.draining)
            .iter()
            .filter(|area| area.rights().uid == uid)
            .count();
        attached + draining
    }

    /// The connections (attached or draining) of uid `uid`, and their quota.
    pub(crate) fn connections_of(&self, uid: u32) -> crate::admin_api::QuotaUse {
        let table = lock(&self.table);
        crate::admin_api::QuotaUse {
            used: self.areas_of(&table, uid) as u64,
            max: u64::from(self.access.connections),
        }
    }

    /// Whether a client with `rights` may attach now as far as its uid's quota of
    /// connections goes (an admin is not counted).
    fn uid_may_attach(&self, table: &[Option<Session>], rights: handshake::Rights) -> bool {
        rights.admin || self.areas_of(table, rights.uid) < self.access.connections as usize
    }

    /// A free area index, if the clients attached and draining leave one.
    fn free_index(&self, table: &[Option<Session>]) -> Option<u32> {
        let draining = lock(&self.draining).len();
        let attached = table.iter().flatten().count();
        let free = table.iter().position(Option::is_none)?;
        (attached + draining < self.max_clients as usize).then_some(free as u32)
    }

    fn attach(&self, stream: UnixStream, peer: handshake::PeerCred, rights: handshake::Rights) {
        let refused = {
            let table = lock(&self.table);
            self.free_index(&table).is_none() || !self.uid_may_attach(&table, rights)
        };
        if refused {
            // Before refusing: a client that just left (perhaps this one, reconnecting)
            // may not have been noticed yet.
            let now = rustix::event::Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            self.poll_sessions(Some(&now));
        }
        let mut table = lock(&self.table);
        if !self.uid_may_attach(&table, rights) {
            drop(table);
            tracing::info!(
                uid = rights.uid,
                pid = peer.pid,
                limit = self.access.connections,
                "refused a client: its uid has its quota of connections (config key quotas.connections)"
            );
            let reply = Reply::UidFull {
                uid: rights.uid,
                limit: self.access.connections,
            };
            let _ = handshake::answer(&stream, &reply, None);
            return;
        }
        let client = match self.free_index(&table) {
            Some(client) => client,
            None => {
                drop(table);
                let _ = handshake::answer(
                    &stream,
                    &Reply::Full {
                        max_clients: self.max_clients,
                    },
                    None,
                );
                return;
            }
        };
        let worker = client % self.workers;
        let spec = AreaSpec {
            instance: &self.instance,
            client,
            geometry: self.geometry,
            rights,
            pid: peer.pid,
            max_tasks: self.access.tasks_in_flight as usize,
            // An admin may stop the runtime anyway: nothing to bound.
            uid_quotas: (!rights.admin).then(|| self.access.uids.of(rights.uid)),
            socket: stream.try_clone().ok(),
            owner: (self.id, worker as usize),
        };
        let area = match ClientArea::create(spec, self.counters.clone()) {
            Ok(area) => Arc::new(area),
            Err(err) => {
                tracing::warn!(pid = peer.pid, "{err}");
                drop(table);
                let _ = handshake::answer(&stream, &Reply::NotReady, None);
                return;
            }
        };
        let grant = Grant {
            client,
            worker,
            geometry: self.geometry,
        };
        let watched = epoll::add(
            &self.doorbells[worker as usize].epoll,
            area.bell(),
            epoll::EventData::new_u64(u64::from(client)),
            epoll::EventFlags::IN | epoll::EventFlags::ET,
        );
        if let Err(err) = watched {
            tracing::warn!(pid = peer.pid, "cannot watch a client's doorbell: {err}");
            drop(table);
            let _ = handshake::answer(&stream, &Reply::NotReady, None);
            return;
        }
        let fds = AttachFds {
            area: area.memfd(),
            page: self.page.fd(),
            doorbell: area.bell(),
        };
        if let Err(err) = handshake::answer(&stream, &Reply::Attached(grant), Some(fds)) {
            tracing::debug!(pid = peer.pid, "a client left during its handshake: {err}");
            self.unwatch(&area);
            return;
        }
        if stream.set_nonblocking(true).is_err() {
            self.unwatch(&area);
            return;
        }
        tracing::debug!(client, uid = peer.uid, pid = peer.pid, "client attached");
        table[client as usize] = Some(Session { area, stream });
        drop(table);
        // The client may have pushed a task already (it was answered above) and seen its
        // worker awake, while that worker, polling a list without this area, went to
        // sleep: nobody would ring. So wake the worker after publishing the area. Either
        // the worker's sleeping flag is seen here (it is woken), or its look at the epoch
        // after announcing sleep sees this bump (it polls the new area, where the task
        // is; a task pushed later sees the announcement and rings). `SeqCst` on both.
        self.epoch.fetch_add(1, Ordering::SeqCst);
        if let Some(ingress) = self.ingress.get().and_then(Weak::upgrade) {
            ingress.wake_worker(worker as usize);
        }
    }

    /// The client of `client` hung up (or broke the protocol): drop its session.
    fn end_session(&self, client: u32) {
        let mut table = lock(&self.table);
        let Some(session) = table.get_mut(client as usize) else {
            return;
        };
        if let Some(live) = session.as_mut() {
            // Anything but end-of-file after the handshake breaks the protocol.
            let mut byte = [0u8; 1];
            match live.stream.read(&mut byte) {
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => return,
                Ok(0) | Err(_) => {}
                Ok(_) => live.area.disown("it sent bytes after its handshake"),
            }
        }
        let Some(session) = session.take() else {
            return;
        };
        drop(table);
        tracing::debug!(
            client,
            pid = session.area.pid(),
            "client detached or died; its tasks finish, then its memory goes"
        );
        session.area.cancel_periodic();
        self.unwatch(&session.area);
        self.epoch.fetch_add(1, Ordering::AcqRel);
        lock(&self.draining).push(session.area);
    }

    /// Stops watching a gone client's doorbell (explicitly: the client may have passed
    /// its descriptor on, which would keep the registration alive).
    fn unwatch(&self, area: &ClientArea) {
        let worker = (area.client() % self.workers) as usize;
        let _ = epoll::delete(&self.doorbells[worker].epoll, area.bell());
    }

    /// Forgets gone clients' areas none of whose tasks runs any more (every task holds
    /// the area's data share). The memory is unmapped with the last reference, once the
    /// workers' poll lists moved on too.
    fn prune_draining(&self) {
        lock(&self.draining).retain(|area| area.tasks_in_flight() > 0);
    }

    /// Workers that poll client rings.
    pub fn workers(&self) -> usize {
        self.workers as usize
    }

    /// Clients attached now.
    pub fn clients_active(&self) -> u32 {
        lock(&self.table).iter().flatten().count() as u32
    }

    /// The runtime's usage counters, from its private truth.
    pub fn usage(&self) -> ShmUsage {
        let mut usage = ShmUsage::default();
        let mut count = |area: &ClientArea| {
            usage.client_areas_in_use += 1;
            usage.tasks_in_flight += area.tasks_in_flight() as u64;
            usage.output_bytes_in_use += area.output_bytes_in_use() as u64;
        };
        for session in lock(&self.table).iter().flatten() {
            count(&session.area);
        }
        self.prune_draining();
        for area in lock(&self.draining).iter() {
            count(area);
        }
        usage
    }

    /// The areas `worker` polls now, read from the table (under its lock).
    fn build_poll_list(&self, worker: usize) -> PollList {
        lock(&self.table)
            .iter()
            .flatten()
            .filter(|session| (session.area.client() % self.workers) as usize == worker)
            .map(|session| session.area.clone())
            .collect()
    }

    /// Runs `look` on the areas `worker` polls, from this thread's cache, which is
    /// rebuilt only when the table's epoch moved. `look` runs under the cache's borrow:
    /// it must not run chimod code (clone the list to route tasks).
    fn with_poll_list<R>(&self, worker: usize, look: impl FnOnce(&PollList) -> R) -> R {
        // Acquire: pairs with the bump that follows each change of the table, so a
        // rebuild after seeing the new epoch finds the change.
        let epoch = self.epoch.load(Ordering::Acquire);
        POLL_CACHE.with(|cache| {
            let Ok(mut cache) = cache.try_borrow_mut() else {
                // Borrowed by a poller that died inside `look`: never trust it again on
                // this thread; build the list afresh each time (slow, still correct).
                return look(&self.build_poll_list(worker));
            };
            if (cache.server, cache.worker, cache.epoch) != (self.id, worker, epoch) {
                // The old list goes before the new one is built: areas of gone clients
                // are unmapped as soon as no task holds them.
                cache.areas = None;
                (cache.server, cache.worker, cache.epoch) = (self.id, worker, epoch);
            }
            let areas = cache
                .areas
                .get_or_insert_with(|| self.build_poll_list(worker));
            look(areas)
        })
    }

    /// Ends taking tasks from client rings (a stop's grace is over).
    pub fn stop_taking_tasks(&self) {
        self.taking_tasks.store(false, Ordering::Release);
    }

    /// The area at address `area` (see [`Routing`]), attached or draining.
    fn area_at(&self, area: usize) -> Option<Arc<ClientArea>> {
        let is_it = |candidate: &Arc<ClientArea>| Arc::as_ptr(candidate) as usize == area;
        let attached = lock(&self.table)
            .iter()
            .flatten()
            .find(|session| is_it(&session.area))
            .map(|session| session.area.clone());
        attached.or_else(|| lock(&self.draining).iter().find(|a| is_it(a)).cloned())
    }

    /// Fails every task still queued in a ring (the runtime is stopping).
    pub fn fail_queued(&self) {
        for session in lock(&self.table).iter().flatten() {
            session.area.fail_queued();
        }
    }

    /// Stops the threads, hangs up every client and removes the socket and the lock.
    pub fn shutdown(&self) {
        self.ready.store(false, Ordering::Release);
        self.fail_queued();
        self.stopping.store(true, Ordering::Release);
        for bells in &self.doorbells {
            ring_bell(&bells.stop);
        }
        ring_bell(&self.sessions_bell);
        let threads = std::mem::take(&mut *lock(&self.threads));
        for thread in threads {
            let _ = thread.join();
        }
        for session in lock(&self.table).iter_mut().filter_map(Option::take) {
            let _ = session.stream.shutdown(std::net::Shutdown::Both);
        }
        if let Some(runtime_lock) = lock(&self.lock).take() {
            let _ = runtime_lock.dir().remove(&ShmName::socket(&self.instance));
        }
    }

}

/// Workers poll their clients' rings themselves.
impl TaskSource for ShmServer {
    fn ingest(&self, worker: usize) -> usize {
        // Polled on every round of every worker: look at the rings first, and touch the
        // runtime (the upgrade) only when there is work.
        if worker >= self.workers as usize {
            return 0;
        }
        // This thread owns the areas of its poll list (see `client_area`).
        client_area::mark_polling(self.id, worker);
        let taking = self.taking_tasks.load(Ordering::Acquire);
        // A look at each ring's tail first; only a round with work takes a snapshot
        // (chimod routing code runs while it is used).
        let Some(areas) = self.with_poll_list(worker, |areas| {
            // Checks a poller killed in the middle of its last round left undone.
            wake_sleepers(areas);
            (taking && areas.iter().any(|area| !area.is_disowned() && area.has_work()))
                .then(|| areas.clone())
        }) else {
            return 0;
        };
        let Some(ingress) = self.ingress.get().and_then(Weak::upgrade) else {
            return 0;
        };
        let routing = &self.routing[worker];
        areas
            .iter()
            .map(|area| area.ingest(worker, ingress.as_ref(), routing))
            .sum()
    }

    /// Announces that `worker` is about to sleep (or woke up). Returns whether one of its
    /// rings has work, in which case it should not sleep.
    fn set_sleeping(&self, worker: usize, sleeping: bool) -> bool {
        if worker >= self.workers as usize {
            return false;
        }
        self.page
            .sleeping(worker)
            .store(u32::from(sleeping), Ordering::SeqCst);
        if !sleeping {
            return false;
        }
        // Idle: a destroyed pool's entry is not held while the worker sleeps.
        crate::runtime::pool_table::PoolMemo::release_worker();
        fence(Ordering::SeqCst);
        self.with_poll_list(worker, |areas| {
            // No answer of this worker's may wait for a check while it sleeps.
            wake_sleepers(areas);
            areas.iter().any(|area| area.has_work())
        })
    }

    fn worker_stopping(&self, _worker: usize) {
        // Here, not in the thread's local destructors, where a destroyed pool's
        // containers would be dropped.
        crate::runtime::pool_table::PoolMemo::release_worker();
    }

    fn round_done(&self, worker: usize) {
        if worker < self.workers as usize {
            // Right after the answers, while their slots' lines are still this CPU's:
            // one fence and a look at `WAITING` for all of them (see `client_area`).
            self.with_poll_list(worker, wake_sleepers);
        }
    }

    fn poller_died(&self, worker: usize) {
        let Some(routing) = self.routing.get(worker) else {
            return;
        };
        if let Some(routed) = routing.take() {
            if let Some(area) = self.area_at(routed.area) {
                // Its route overflowed the poller's stack, which is kept for good.
                area.count_overflow();
                area.fail_in_flight(
                    routed.slot,
                    &TaskError::StackOverflow {
                        method: routed.method,
                        stack_size: self.stack_size as u64,
                    },
                );
            }
        }
        // The rest of its batch was popped, not routed: the next ingest routes it.
        if let Some((area, unrouted)) = routing.take_unrouted() {
            if let Some(area) = self.area_at(area) {
                area.carry(unrouted);
            }
        }
    }
}

/// Why the usage of an instance could not be read.
#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    /// No runtime listens for the instance.
    #[error("no runtime of instance `{instance}` answers on {path}: {source}")]
    NotRunning {
        /// The instance.
        instance: String,
        /// The socket's path.
        path: PathBuf,
        /// The system error.
        #[source]
        source: std::io::Error,
    },
    /// The runtime refused or answered something else.
    #[error("the runtime of instance `{instance}` did not report its usage: {detail}")]
    Refused {
        /// The instance.
        instance: String,
        /// What it answered.
        detail: String,
    },
}

/// Asks the runtime of `instance` for its usage (for `chimaera runtime status` and
/// tests).
pub fn usage(instance: &InstanceName) -> Result<ShmUsage, UsageError> {
    let path = handshake::client_socket_path(instance);
    let refused = |detail: String| UsageError::Refused {
        instance: instance.to_string(),
        detail,
    };
    let runtime_uid =
        handshake::expected_runtime_uid(instance).map_err(|e| refused(e.to_string()))?;
    let stream = UnixStream::connect(&path).map_err(|source| UsageError::NotRunning {
        instance: instance.to_string(),
        path: path.clone(),
        source,
    })?;
    handshake::check_runtime_peer(&stream, runtime_uid).map_err(|e| refused(e.to_string()))?;
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    match handshake::ask(&stream, Request::Usage) {
        Ok((Reply::Usage(usage), _)) => Ok(usage),
        Ok((other, _)) => Err(refused(format!("{other:?}"))),
        Err(err) => Err(refused(err.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The doorbell design relies on this: an edge-triggered eventfd that is never read
    /// still reports every later write.
    #[test]
    fn an_unread_edge_triggered_doorbell_reports_every_ring() {
        let bells = Doorbells::new().unwrap();
        let client_bell = eventfd().unwrap();
        epoll::add(
            &bells.epoll,
            &client_bell,
            epoll::EventData::new_u64(7),
            epoll::EventFlags::IN | epoll::EventFlags::ET,
        )
        .unwrap();
        let now = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        let mut events = [MaybeUninit::<epoll::Event>::uninit(); 4];
        let keys = |events: &mut [MaybeUninit<epoll::Event>; 4]| -> Vec<u64> {
            let (ready, _) = epoll::wait(&bells.epoll, events, Some(&now)).unwrap();
            ready.iter().map(|event| event.data.u64()).collect()
        };
        assert!(keys(&mut events).is_empty());
        for _ in 0..3 {
            ring_bell(&client_bell);
            assert_eq!(keys(&mut events), vec![7]);
            assert!(keys(&mut events).is_empty(), "reported once per ring");
        }
        ring_bell(&bells.stop);
        assert_eq!(keys(&mut events), vec![STOP_KEY]);
    }
}
