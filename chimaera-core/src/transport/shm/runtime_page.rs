//! The runtime page: the little runtime state every client reads, shared read-only.
//!
//! One page in a memfd. The runtime maps it read-write, then seals the memfd
//! (`F_SEAL_FUTURE_WRITE | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL`) before handing it
//! to any client: from then on the kernel refuses every new writable mapping and every
//! `write`/`ftruncate` of it, so a client can map it read-only and nothing else. It holds,
//! per shm-serving worker, the worker's *sleeping* flag on a cache line of its own:
//!
//! ```text
//! worker w:  offset w × 64:  sleeping: u32   (1 while the worker parks)
//! ```
//!
//! Why here and not in each client's area: the flag is the runtime's truth about who
//! sleeps. In the earlier layout it lay in a segment every client could write, so one
//! client could clear it and no client would ever wake that worker again. Sealed, a
//! client can only read it; waking itself goes through the worker's eventfd (see
//! [`crate::transport::shm::server`]), which a hostile client can only use for spurious wake-ups.
//!
//! Ordering: the worker stores the flag (`SeqCst`) and then looks at its rings; a client
//! pushes to its ring and then loads the flag (`SeqCst`, after a `SeqCst` fence). One of
//! them sees the other's write (Dekker), so a push is never missed by a sleeping worker.
use super::wire::MAX_DOORBELLS;
use memmap2::{MmapOptions, MmapRaw};
use rustix::fs::{MemfdFlags, SealFlags};
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};

const PAGE_LEN: usize = 4096;
const FLAG_STRIDE: usize = 64;

/// Why the runtime page could not be made or mapped.
#[derive(Debug, thiserror::Error)]
#[error("cannot {action} the runtime page: {source}; the kernel needs memfd sealing (Linux 5.1 or later)")]
pub struct RuntimePageError {
    action: &'static str,
    #[source]
    source: std::io::Error,
}

fn fail(action: &'static str) -> impl FnOnce(std::io::Error) -> RuntimePageError {
    move |source| RuntimePageError { action, source }
}

/// The runtime's read-write mapping of the page, and the sealed memfd clients receive.
pub struct RuntimePage {
    map: MmapRaw,
    fd: OwnedFd,
}

impl RuntimePage {
    /// Creates, maps and seals the page.
    pub fn create() -> Result<RuntimePage, RuntimePageError> {
        let fd = rustix::fs::memfd_create(
            "chimaera-runtime-page",
            MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
        )
        .map_err(|e| fail("create")(e.into()))?;
        rustix::fs::ftruncate(&fd, PAGE_LEN as u64).map_err(|e| fail("size")(e.into()))?;
        let file = File::from(fd);
        let map = MmapOptions::new()
            .len(PAGE_LEN)
            .map_raw(&file)
            .map_err(fail("map"))?;
        rustix::fs::fcntl_add_seals(
            &file,
            SealFlags::FUTURE_WRITE | SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL,
        )
        .map_err(|e| fail("seal")(e.into()))?;
        Ok(RuntimePage {
            map,
            fd: file.into(),
        })
    }

    /// The sealed memfd, to pass to clients.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Worker `worker`'s sleeping flag.
    pub fn sleeping(&self, worker: usize) -> &AtomicU32 {
        flag(self.map.as_mut_ptr(), worker)
    }
}

/// A client's read-only mapping of the runtime page.
pub struct RuntimePageView {
    map: MmapRaw,
}

impl RuntimePageView {
    /// Maps the page a runtime sent (read-only: the seal refuses anything else).
    pub fn map(fd: OwnedFd) -> Result<RuntimePageView, RuntimePageError> {
        let file = File::from(fd);
        let len = file.metadata().map_err(fail("inspect"))?.len();
        if len < PAGE_LEN as u64 {
            return Err(fail("map")(std::io::Error::other(format!(
                "it has {len} bytes, not {PAGE_LEN}"
            ))));
        }
        let map = MmapOptions::new()
            .len(PAGE_LEN)
            .map_raw_read_only(&file)
            .map_err(fail("map"))?;
        Ok(RuntimePageView { map })
    }

    /// Whether worker `worker` announced it sleeps.
    pub fn is_sleeping(&self, worker: usize) -> bool {
        flag(self.map.as_mut_ptr(), worker).load(Ordering::SeqCst) != 0
    }
}

/// The flag of `worker` (taken modulo [`MAX_DOORBELLS`]) in the page at `base`.
fn flag<'a>(base: *mut u8, worker: usize) -> &'a AtomicU32 {
    let offset = (worker % MAX_DOORBELLS) * FLAG_STRIDE;
    // SAFETY: `base` starts a live mapping of PAGE_LEN bytes (held by the caller's
    // `MmapRaw`, which outlives the returned borrow of `self`); MAX_DOORBELLS × 64 ≤
    // PAGE_LEN and the offset is 4-aligned. On the read-only side only loads are made,
    // which never write the page.
    unsafe { &*base.add(offset).cast::<AtomicU32>() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_sees_the_flags_and_cannot_map_the_page_writable() {
        let page = RuntimePage::create().unwrap();
        let fd = page.fd().try_clone_to_owned().unwrap();
        let file = File::from(fd.try_clone().unwrap());
        assert!(
            MmapOptions::new().len(PAGE_LEN).map_raw(&file).is_err(),
            "the seal refuses writable mappings"
        );
        assert!(rustix::fs::ftruncate(&file, 0).is_err(), "and shrinking");
        let view = RuntimePageView::map(fd).unwrap();
        assert!(!view.is_sleeping(3));
        page.sleeping(3).store(1, Ordering::SeqCst);
        assert!(view.is_sleeping(3));
        assert!(!view.is_sleeping(4));
    }
}
