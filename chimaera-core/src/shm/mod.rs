//! Raw shared memory and the fixed-layout building blocks on top of it.
//!
//! This is the lowest layer of the client ↔ runtime transport. It knows nothing of
//! tasks, pools or modules (nothing here imports a file outside `shm`); the protocol
//! that sits on it — wire layout, handshake, the runtime's server and a client's end —
//! is [`crate::transport::shm`]. It offers:
//!
//! * [`naming`]: the names of everything an instance keeps on disk (its lock file and
//!   its socket) in the per-user directory `/dev/shm/chimaera-{user}`, and the validated
//!   [`InstanceName`];
//! * [`dir`]: that directory ([`RuntimeDir`]), verified to be ours and closed to others,
//!   and the only way files in it are opened, created, listed and removed;
//! * [`segment`]: a mapped file or memfd ([`Segment`]) and checked views into it
//!   ([`ShmRegion`]): every access is by offset, bounds- and alignment-checked, and
//!   returns an error instead of panicking;
//! * [`liveness`]: whether the runtime of an instance is alive, from a `flock` lock the
//!   kernel drops when the process dies (even by SIGKILL), robust against pid reuse;
//! * [`futex`]: process-shared futex wait/wake on a word of a shared mapping;
//! * [`atomic_copy`]: copies in and out of memory a peer may write concurrently
//!   (relaxed atomic words, never a plain `memcpy` or a reference into it);
//! * [`ring`]: a single-producer single-consumer ring of `u32` in shared memory whose
//!   consumer does not trust its producer;
//! * [`arena`]: a first-fit allocator of extents, kept in runtime-private memory.
//!
//! # Invariants shared by every block
//!
//! * **Each client's memory is its own.** A client's ring, slots, data share and output
//!   space live in a memfd the runtime makes for that client and passes to it alone over
//!   a Unix socket; no file names it, no other client maps it. What is shared by all
//!   clients (the runtime page) is sealed read-only for them. A client can therefore only
//!   ever hurt itself: replay its own slots, corrupt its own ring, fill its own output
//!   space.
//! * **What a client writes is a request, never the truth.** The runtime's truth — which
//!   slots are in flight, which output blocks are whose, quotas, who sleeps, geometry,
//!   rights — lives in runtime-private memory and is never read back from shared memory.
//! * **No Rust reference into peer-writable bytes.** The runtime reads words through
//!   atomics and byte ranges through atomic word copies ([`atomic_copy`]) into
//!   its own memory, then validates the copy; lengths are checked against where the bytes
//!   claim to lie before anything is allocated for them.
//! * Nothing in shared memory is a pointer: structures are found by offset, and every
//!   offset read from shared memory is checked before use.
//! * Liveness is the client's socket: a client that exits or is killed hangs up (the
//!   kernel closes its end), and the runtime ends its session at once; a runtime that
//!   dies or disowns a client hangs up too, and the client's calls fail with a typed
//!   error instead of blocking.
//! * Every file lives in the per-user directory, which must be a real directory (not a
//!   link) owned by the effective user, writable by nobody else. Files are created with
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
//! The layering (raw segment → fixed-layout blocks → concepts) follows iceoryx and
//! iceoryx2; handing each peer its own memfd over a Unix socket after checking
//! `SO_PEERCRED`, and sealing what is shared, is how Wayland compositors and systemd's
//! memfd users isolate peers. The code is our own.

pub mod arena;
pub mod atomic_copy;
pub mod dir;
pub mod futex;
pub mod liveness;
pub mod naming;
pub mod ring;
pub mod segment;

pub use dir::{DirError, FileError, RuntimeDir};
pub use liveness::{LockFileError, RuntimeLock, RuntimeLockError};
pub use naming::{InstanceName, NameError, ShmName};
/// Short paths for the tests of the `testing` feature; the crate uses the full ones.
#[cfg(feature = "testing")]
pub use {
    dir::Access,
    futex::WaitOutcome,
    liveness::runtime_alive,
    ring::{Full, Ring, RingCorrupt, RingError, RingLayout},
    segment::{AccessError, Segment, SegmentError, ShmRegion},
};

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
