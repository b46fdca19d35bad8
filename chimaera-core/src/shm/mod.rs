//! Raw shared memory and the fixed-layout building blocks on top of it.
//!
//! This is the lowest layer of the client ↔ runtime transport. It knows nothing of tasks,
//! pools or clients; it offers:
//!
//! * [`naming`]: the names of everything an instance keeps on disk (`{instance}@{role}`,
//!   lock files, the socket) in the per-user directory `/dev/shm/chimaera-{user}`, and the
//!   validated [`InstanceName`];
//! * [`dir`]: that directory ([`RuntimeDir`]), verified to be ours and mode `0700`, and
//!   the only way files in it are opened, created and removed;
//! * [`segment`]: a named, mapped file in that directory ([`Segment`]) and checked views
//!   into it ([`ShmRegion`]): every access is by offset, bounds- and alignment-checked,
//!   and returns an error instead of panicking;
//! * [`liveness`]: who is alive, from `flock` locks the kernel drops when a process dies
//!   (even by SIGKILL), robust against pid reuse;
//! * [`futex`]: process-shared futex wait/wake on a word of a shared mapping;
//! * [`ring`]: a single-producer single-consumer ring of `u32` in shared memory whose
//!   consumer does not trust its producer.
//!
//! # Invariants shared by every block
//!
//! * Nothing in shared memory is a pointer: structures are found by offset from the start
//!   of a segment, and every offset read from shared memory is checked before use.
//! * Every file lives in the per-user directory, which must be a real directory (not a
//!   link) owned by the effective user with mode `0700`. Files are created with
//!   `O_CREAT | O_EXCL` and mode `0600`, opened with `O_NOFOLLOW | O_NONBLOCK` relative
//!   to the directory's descriptor, and must then be regular files with one link, owned
//!   by the effective user and closed to others. A symlink, FIFO or foreign file at a
//!   name is a typed error naming it: nothing is followed, truncated or waited on, so
//!   another user can neither read our tasks, nor feed us bytes, nor make us write
//!   through a link ([`dir`] has the details).
//! * A peer process may die at any instruction or write any byte it can reach. The blocks
//!   here never panic on such input and never loop on it forever: they report errors
//!   (`Corrupt`, `OutOfBounds`, …) and leave the decision to the caller.
//!
//! # Lineage
//!
//! The layering (raw segment → fixed-layout blocks → concepts) and liveness by file lock
//! with cleanup of a dead peer's resources by whoever notices follow the ideas of iceoryx
//! and iceoryx2 (RouDi's lock file; iceoryx2's node monitoring and dead-node cleanup); the
//! code is our own.

pub mod arena;
pub mod connection;
pub mod dir;
pub mod futex;
pub mod layout;
pub mod liveness;
pub mod naming;
pub mod ring;
pub mod segment;
pub mod server;

pub use dir::{Access, DirError, FileError, RuntimeDir};
pub use futex::WaitOutcome;
pub use liveness::{
    client_alive, remove_client_lock, runtime_alive, ClientLock, ClientLockError, LockFileError,
    RuntimeLock, RuntimeLockError,
};
pub use naming::{InstanceName, NameError, ShmName};
pub use ring::{Full, Ring, RingCorrupt, RingError, RingLayout};
pub use segment::{AccessError, Segment, SegmentError, ShmRegion};

#[cfg(test)]
pub(crate) mod test_util {
    use super::InstanceName;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A fresh instance name for one test: unique across parallel tests and test runs.
    /// Also makes sure the user directory exists, for tests that plant files in it.
    pub(crate) fn instance(tag: &str) -> InstanceName {
        super::RuntimeDir::for_user().expect("the user directory is usable");
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        InstanceName::new(&format!("ut-{}-{n}-{tag}", std::process::id()))
            .expect("test instance names are valid")
    }
}
