//! Raw shared memory and the fixed-layout building blocks on top of it.
//!
//! This is the lowest layer of the client ↔ runtime transport. It knows nothing of tasks,
//! pools or clients; it offers:
//!
//! * [`naming`]: the file names of everything an instance keeps in `/dev/shm`
//!   (`chimaera-{user}-{instance}@{role}`, plus lock files), and the validated
//!   [`InstanceName`];
//! * [`segment`]: a named, mapped file in `/dev/shm` ([`Segment`]) and checked views into
//!   it ([`ShmRegion`]): every access is by offset, bounds- and alignment-checked, and
//!   returns an error instead of panicking;
//! * [`liveness`]: who is alive, from `flock` locks the kernel drops when a process dies
//!   (even by SIGKILL), robust against pid reuse;
//! * [`futex`]: process-shared futex wait/wake on a word of a shared mapping;
//! * [`atomic_copy`]: copies in and out of memory a peer may write concurrently
//!   (relaxed atomic words, never a plain `memcpy` or a reference into it);
//! * [`ring`]: a single-producer single-consumer ring of `u32` in shared memory whose
//!   consumer does not trust its producer.
//!
//! # Invariants shared by every block
//!
//! * Nothing in shared memory is a pointer: structures are found by offset from the start
//!   of a segment, and every offset read from shared memory is checked before use.
//! * Segments and lock files are created with mode `0600` and must be owned by the
//!   effective user; a file owned by anyone else is refused, so another user can neither
//!   read our tasks nor feed us bytes.
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
pub mod atomic_copy;
pub mod connection;
pub mod futex;
pub mod layout;
pub mod liveness;
pub mod naming;
pub mod ring;
pub mod segment;
pub mod server;

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
    pub(crate) fn instance(tag: &str) -> InstanceName {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        InstanceName::new(&format!("ut-{}-{n}-{tag}", std::process::id()))
            .expect("test instance names are valid")
    }
}
