//! The error a task (or a call to one) ends with.
//!
//! [`TaskError`] has an rkyv layout: it travels back to the caller the same way a result
//! does, whether the caller is a thread of this process or, later, another process or
//! node. Every variant says what went wrong and, where it can, what to do about it.
// rkyv's derive emits resolver types whose fields cannot carry docs.
#![allow(missing_docs)]
use crate::ids::{ContainerId, MethodId, NodeId, PoolId};
use rkyv::{Archive, Deserialize, Serialize};

/// Why a task did not produce its output.
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error, Archive, Serialize, Deserialize)]
#[rkyv(derive(Debug), attr(allow(missing_docs)))]
pub enum TaskError {
    /// The handler returned an error of its own.
    #[error("task failed: {message}")]
    Failed {
        /// The handler's explanation.
        message: String,
    },
    /// No pool has this id (never created, or destroyed).
    #[error("no pool {pool} in this runtime; create it first (get-or-create by name)")]
    UnknownPool {
        /// The id that was asked for.
        pool: PoolId,
    },
    /// No pool has this name.
    #[error("no pool named `{name}` in this runtime")]
    UnknownPoolName {
        /// The name that was asked for.
        name: String,
    },
    /// The pool's module has no task with this method id.
    #[error("module `{module}` has no method {method}; see its chimaera_mod.yaml")]
    UnknownMethod {
        /// The module of the pool.
        module: String,
        /// The method id that was asked for.
        method: MethodId,
    },
    /// The runtime has no module linked under this name.
    #[error("no module named `{module}` is linked into this runtime; enable its cargo feature or register it")]
    UnknownModule {
        /// The module name that was asked for.
        module: String,
    },
    /// The query named a container the pool does not have.
    #[error("pool {pool} has {containers} container(s); container {container} does not exist")]
    NoSuchContainer {
        /// The pool queried.
        pool: PoolId,
        /// The container asked for.
        container: ContainerId,
        /// How many the pool has.
        containers: u32,
    },
    /// The query named a node that is not part of this runtime's cluster, or one that
    /// holds none of the pool's containers.
    #[error("node {node} is not part of this cluster or holds none of the pool's containers")]
    NoSuchNode {
        /// The node asked for.
        node: NodeId,
    },
    /// The query resolved to no container at all (for example `Range` with count 0).
    #[error("the pool query selects no container")]
    EmptyQuery,
    /// The pool was destroyed while the task waited to run.
    #[error("pool {pool} was destroyed before the task ran")]
    PoolDestroyed {
        /// The destroyed pool.
        pool: PoolId,
    },
    /// An existing pool of this name was created with other parameters.
    #[error("pool `{name}` already exists with different {what}; destroy it first or open it with the same {what}")]
    PoolMismatch {
        /// The pool's name.
        name: String,
        /// What differs: `module`, `create parameters` or `container count`.
        what: String,
    },
    /// The handler panicked; the runtime caught it and goes on.
    #[error("task panicked: {message}")]
    Panicked {
        /// The panic's message.
        message: String,
    },
    /// Task input or output bytes are malformed.
    #[error("malformed task {what}: {detail}")]
    Malformed {
        /// `input`, `output` or `create parameters`.
        what: String,
        /// What the validator found.
        detail: String,
    },
    /// The `params` of a compose entry do not fit the create parameters of its module.
    #[error("bad `params` for module `{module}`: {detail}; fix the entry's `params:` to match the module's create parameters")]
    BadComposeParams {
        /// The module the pool was to run.
        module: String,
        /// What the YAML reader found (the offending key, a wrong type).
        detail: String,
    },
    /// The runtime is stopping or stopped; the task was not run.
    #[error("the runtime is not running (stopped or stopping)")]
    RuntimeStopped,
    /// The runtime dropped the task without running it (out of resources, or torn down).
    #[error(
        "the task was dropped without running; the runtime is out of resources or shutting down"
    )]
    NotRun,
    /// The task was cancelled before it completed (a periodic task's handle was cancelled).
    #[error("the task was cancelled")]
    Cancelled,
    /// The call was not answered before its deadline. The caller gave up on it: its
    /// late reply is discarded (and over shared memory its slot freed at once); the
    /// handler itself is not stopped and counts against the client's quota of tasks in
    /// flight until it ends.
    #[error("no answer within {waited_ms} ms, the call's deadline; its late reply will be discarded. Raise the deadline (`Client::with_deadline`, `Pending::wait_timeout`) or find why the handler takes so long")]
    DeadlineExceeded {
        /// The deadline the call was given, in milliseconds (saturated at `u64::MAX`).
        waited_ms: u64,
    },
    /// The client's uid may not do this (admin methods need the runtime owner's uid or a
    /// grant in the config's `access.admin_uids`).
    #[error("permission denied: uid {uid} may not {action}; run it as the runtime's owner or list the uid in the runtime config's access.admin_uids")]
    PermissionDenied {
        /// What was refused (`StopRuntime`, `DestroyPool`, `Flush`).
        action: String,
        /// The client's uid, as the kernel reported it.
        uid: u32,
    },
    /// The client reached one of its quotas; its other tasks and other clients go on.
    #[error("this client's quota of {limit} {what} is used up; wait for its tasks to finish (or cancel periodic ones), or raise `{config_key}` in the runtime's config")]
    QuotaExceeded {
        /// Which quota: `tasks in flight` or `output bytes`.
        what: String,
        /// The quota.
        limit: u64,
        /// The runtime config key that sets it (`quotas.tasks_in_flight`,
        /// `shm.runtime_data_size`).
        config_key: String,
    },
    /// The runtime disowned this client (it found its shared memory broken, e.g. a
    /// corrupt ring) and serves it no more.
    #[error("the runtime disowned this client after its shared memory broke the protocol; drop this Client and connect again")]
    Disowned,
    /// The handler ran past the end of its coroutine's stack. The runtime failed the
    /// task, released the coroutine locks and bulk buffers it held, and serves on.
    #[error("method {method} overflowed its {stack_size}-byte coroutine stack; recurse less, keep large values on the heap, or raise `stack_size` in the runtime configuration")]
    StackOverflow {
        /// The method whose handler overflowed.
        method: MethodId,
        /// The coroutine stack size, in bytes.
        stack_size: u64,
    },
    /// A pool was asked for more containers than the runtime allows; nothing was
    /// allocated.
    #[error("a pool of {asked} containers was asked for; this runtime allows at most {max} per pool (config key `max_containers_per_pool`)")]
    TooManyContainers {
        /// The container count asked for.
        asked: u32,
        /// The configured limit.
        max: u32,
    },
    /// A subtask would nest deeper than the runtime allows.
    #[error("a subtask at nesting depth {depth} was refused; this runtime allows at most {max} (config key `max_task_depth`): recurse less deeply, or loop instead")]
    TooDeep {
        /// The depth the subtask would have had.
        depth: u32,
        /// The configured limit.
        max: u32,
    },
    /// A periodic task's period is longer than the runtime's timers can sleep.
    #[error("a period of {period_ms} ms was asked for; the longest is {max_ms} ms (one year): use a shorter period")]
    PeriodTooLong {
        /// The period asked for, in milliseconds (saturated at `u64::MAX`).
        period_ms: u64,
        /// The longest period, in milliseconds.
        max_ms: u64,
    },
    /// As many periodic tasks as the runtime allows are alive already.
    #[error("{max} periodic tasks are alive already, the most this runtime allows (config key `max_periodic_tasks`); cancel some first")]
    TooManyPeriodicTasks {
        /// The configured limit.
        max: u32,
    },
    /// A task sent to many containers would copy its input more than the runtime
    /// allows (see `MAX_FAN_OUT_COPY_BYTES`).
    #[error("sending {input_bytes} input bytes to {replicas} containers would copy more than {max_bytes} bytes; send a smaller input (a reference to shared data) or query fewer containers")]
    FanOutTooLarge {
        /// Containers the query selected.
        replicas: u32,
        /// Size of the task's input.
        input_bytes: u64,
        /// The limit on the copies' total.
        max_bytes: u64,
    },
    /// A buffer of `len` bytes cannot be allocated in this client's data share: it is
    /// larger than the share, or the share is full of buffers still held.
    #[error("no room for a {len}-byte buffer in this client's {share}-byte data share ({in_use} bytes held by buffers); drop unused buffers, or raise `shm.client_data_size` (divided among `max_clients`) in the runtime's config")]
    DataShareFull {
        /// The buffer's size.
        len: u64,
        /// The share's size.
        share: u64,
        /// Bytes the client's live buffers hold.
        in_use: u64,
    },
    /// A buffer was asked for that is larger than the client's whole data share.
    #[error("a {len}-byte buffer is larger than this client's whole {share}-byte data share; allocate smaller buffers, or raise `shm.client_data_size` (divided among `max_clients`) in the runtime's config")]
    BufferTooLarge {
        /// The buffer's size.
        len: u64,
        /// The share's size.
        share: u64,
    },
    /// A task's input is larger than any place it can travel in: the client's whole data
    /// share.
    #[error("the task's {len}-byte input does not fit this client's {share}-byte data share; send less (a buffer from allocate_buffer travels by reference), or raise `shm.client_data_size` in the runtime's config")]
    InputTooLarge {
        /// The input's size.
        len: u64,
        /// The share's size.
        share: u64,
    },
    /// The process could not allocate a buffer.
    #[error("out of memory for a {len}-byte buffer")]
    OutOfMemory {
        /// The buffer's size.
        len: u64,
    },
    /// A bulk argument's buffer is held by another running task (or another argument
    /// of this task) in a way that excludes this use.
    #[error("bulk buffer {offset}+{len} overlaps a buffer another running task (or another argument of this task) holds{}; wait for that task before reusing the buffer", if *.held_for_writing { " for writing" } else { "" })]
    BulkBufferBusy {
        /// Offset of the buffer in the client's data share.
        offset: u64,
        /// Its length.
        len: u64,
        /// Whether the holder writes it (this use only reads); else this use writes it
        /// and any holder conflicts.
        held_for_writing: bool,
    },
    /// A handler read or wrote outside a bulk argument's bytes.
    #[error("{len} bytes at offset {offset} do not fit in a {available}-byte bulk buffer; keep offset + len within len()")]
    BulkOutOfRange {
        /// Offset asked for.
        offset: u64,
        /// Length asked for.
        len: u64,
        /// The buffer's length.
        available: u64,
    },
    /// A periodic-task cancel named a task this client does not have.
    #[error("this client has no periodic task {id} (cancelled already, or its pool is gone)")]
    NoSuchPeriodicTask {
        /// The id the runtime acknowledged when the task was submitted.
        id: u64,
    },
    /// The client could not start a thread it needs (its reply watcher).
    #[error("this client could not start its `{thread}` thread ({detail}); free resources (threads, memory) and connect again")]
    ClientThread {
        /// The thread's name.
        thread: String,
        /// The system error.
        detail: String,
    },
    /// The admin pool (1.0) was asked to be destroyed: it lives as long as its runtime.
    #[error("the admin pool cannot be destroyed; stop the runtime instead")]
    AdminPoolIndestructible,
    /// The runtime could not start a thread it needs to carry out the task (the stop
    /// thread of `StopRuntime`); the task failed and the runtime serves on.
    #[error("the runtime could not start its `{thread}` thread ({detail}); free resources (threads, memory) on the runtime's host and try again")]
    RuntimeThread {
        /// The thread's name.
        thread: String,
        /// The system error.
        detail: String,
    },
    /// Two task groups holding a [`CoRwLock`](crate::CoRwLock) for reading both asked to
    /// write: each would wait for the other's read forever, so the later one fails.
    #[error("another task group that reads this lock already waits to write; two such upgrades would wait for each other forever: drop the read guard before writing, or take the write lock first")]
    LockUpgradeConflict,
    /// The node holding a container the task was routed to did not answer within the
    /// cluster's `networking.rpc_timeout_ms`.
    #[error("node {node} did not answer within {timeout_ms} ms; check that its runtime runs and is reachable, or raise networking.rpc_timeout_ms")]
    NodeTimeout {
        /// The node that was asked.
        node: NodeId,
        /// The deadline that passed.
        timeout_ms: u64,
    },
    /// The node holding a container the task was routed to could not be reached, left
    /// the cluster, or answered with bytes that are no answer.
    #[error("node {node} failed the task: {reason}")]
    NodeFailed {
        /// The node.
        node: NodeId,
        /// What the network or the node reported.
        reason: String,
    },
    /// A periodic task cannot run on another node's container: its cancel handle lives
    /// here.
    #[error("a periodic task cannot be sent to node {node}; submit it on that node (PoolQuery::physical) or make it a plain task")]
    PeriodicAcrossNodes {
        /// The node holding the container.
        node: NodeId,
    },
    /// The task's input does not fit one frame between nodes.
    #[error("the task's {len}-byte input is over the {max}-byte limit of a frame between nodes; send less per task")]
    FrameTooLarge {
        /// The frame's size.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// The task was not run: its worker had no coroutine to spare for it. Every task
    /// that waits (a lock, a subtask, a sleep, I/O) keeps a coroutine and its stack until
    /// it is done, and the runtime bounds how many live at once; the worker refuses tasks
    /// until one of its waiting tasks finishes, and then runs them again.
    #[error("the task was not run: its worker has no coroutine to spare ({live} alive in this runtime, at most {max}: config key `max_coroutines`, bounded by the kernel's vm.max_map_count); every waiting task holds one, and stack overflows leak theirs: retry once waiting tasks finish, or raise the limit")]
    NoCoroutine {
        /// Coroutines alive in the runtime when it was refused (stacks leaked by
        /// overflows included).
        live: u64,
        /// The runtime's `max_coroutines`.
        max: u64,
    },
    /// A pool name longer than the runtime keeps (`MAX_POOL_NAME_LEN`).
    #[error("a pool name of {len} bytes was refused; pool names are at most {max} bytes")]
    PoolNameTooLong {
        /// The name's length in bytes.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// The pool was created by a uid without admin rights and is that uid's: only it
    /// and admins may run its tasks, and no other caller gets it by name from
    /// `GetOrCreatePool` (which would otherwise hand a name someone took first to
    /// whoever asks for it next).
    #[error("pool `{name}` is private to uid {owner}, which created it without admin rights: only that uid and admins may use it. Use a pool of another name, or have the runtime's owner or an admin uid create pools meant to be shared (an admin may destroy this one)")]
    PrivatePool {
        /// The pool's name.
        name: String,
        /// The uid that created it.
        owner: u32,
    },
}

impl TaskError {
    /// A handler's own failure with a message.
    pub fn failed(message: impl Into<String>) -> Self {
        TaskError::Failed {
            message: message.into(),
        }
    }

    pub(crate) fn malformed(what: &str, detail: impl ToString) -> Self {
        TaskError::Malformed {
            what: what.to_owned(),
            detail: detail.to_string(),
        }
    }
}
