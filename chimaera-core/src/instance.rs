//! A runtime instance's files on disk, and whether its runtime is up: what tools need to
//! report on an instance and to clean up after a dead runtime (the `chimaera` command's
//! `runtime status` and `runtime clean`), without reaching into the shared-memory
//! internals.
//!
//! An instance keeps its files in the per-user directory `/dev/shm/chimaera-{user}` (or
//! under `CHI_SHM_DIR`): its liveness lock `{instance}.lock` and its Unix socket
//! `{instance}.sock`.
//!
//! # Invariants
//!
//! * Every file is reached through the verified user directory: a directory that is a
//!   symbolic link, belongs to another user or is open to others is an error
//!   ([`DirError`]), and a link, FIFO or foreign file at an instance's name is an error
//!   naming it ([`FileError`]) — nothing is followed, waited on or removed.
//! * Whether a runtime is up comes from its liveness lock (a `flock` the kernel drops when
//!   the process dies, even by SIGKILL), never from a pid file; [`runtime_pid`] is for
//!   messages only.
//! * [`clean`] holds the instance's runtime lock while it removes, so it can never remove
//!   the files of a live runtime, and a runtime cannot start halfway through a clean.
use crate::shm::{RuntimeDir, RuntimeLock, ShmName};
use std::path::PathBuf;

pub use crate::shm::{
    DirError, FileError, InstanceName, LockFileError, NameError, RuntimeLockError,
};

/// One file of an instance in the user directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceFile {
    /// Where it is.
    pub path: PathBuf,
    /// Its size in bytes (a link's own size, never its target's).
    pub bytes: u64,
}

/// The per-user directory every instance of this user keeps its files in:
/// `{parent}/chimaera-{user}`, where `{parent}` is `/dev/shm` or `CHI_SHM_DIR`. The path
/// only; nothing is created or checked.
pub fn user_dir() -> PathBuf {
    crate::shm::naming::user_dir()
}

/// The per-user directory ([`user_dir`]), created if missing and verified as the
/// runtime verifies it (ours, mode `0700` or `0711`, never a link, in a parent no other
/// user can rename it in): a path safe to open files and directories under, for tools
/// that keep state next to the instances (`chimaera cluster` keeps its clusters there).
pub fn checked_user_dir() -> Result<PathBuf, DirError> {
    Ok(RuntimeDir::for_user()?.path().to_owned())
}

/// Whether the runtime of `instance` is up (holds its liveness lock). Never blocks.
/// `Ok(false)` if there is no lock file; an error if something untrustworthy sits at its
/// name.
pub fn runtime_alive(instance: &InstanceName) -> Result<bool, LockFileError> {
    crate::shm::liveness::runtime_alive(instance)
}

/// The pid the live runtime of `instance` wrote into its lock file, if one is up and the
/// file is usable. For messages: liveness comes from [`runtime_alive`].
pub fn runtime_pid(instance: &InstanceName) -> Option<u32> {
    crate::shm::liveness::runtime_pid(instance)
}

/// Every file of `instance` now in the user directory — its lock file first, then its
/// socket and any other file of the instance, sorted — with their sizes. A dead runtime
/// leaves these behind; a live one owns them.
pub fn instance_files(instance: &InstanceName) -> Result<Vec<InstanceFile>, DirError> {
    let dir = RuntimeDir::for_user()?;
    let mut names = vec![ShmName::runtime_lock(instance)];
    names.extend(dir.instance_files(instance)?);
    Ok(names
        .iter()
        .filter_map(|name| {
            dir.size_of(name).map(|bytes| InstanceFile {
                path: dir.path_of(name),
                bytes,
            })
        })
        .collect())
}

/// Removes every file a dead runtime of `instance` left in the user directory, its lock
/// file included, and returns them (with the sizes they had; the lock file last). Fails with
/// [`RuntimeLockError::AlreadyRunning`] while a runtime of the instance is up, and with
/// [`RuntimeLockError::File`] if something that is not a file of ours sits at one of the
/// instance's names (it stays for the user to inspect).
pub fn clean(instance: &InstanceName) -> Result<Vec<InstanceFile>, RuntimeLockError> {
    let before = instance_files(instance).map_err(LockFileError::from)?;
    let lock = RuntimeLock::acquire(instance)?;
    let removed = lock.remove_stale()?;
    let lock_path = lock.dir().path_of(&ShmName::runtime_lock(instance));
    // Releasing the lock removes its file; it was left behind only if it was there
    // before we took it.
    drop(lock);
    let size_before = |path: &PathBuf| {
        before
            .iter()
            .find(|file| &file.path == path)
            .map(|file| file.bytes)
    };
    let mut cleaned: Vec<InstanceFile> = removed
        .into_iter()
        .map(|path| InstanceFile {
            bytes: size_before(&path).unwrap_or(0),
            path,
        })
        .collect();
    if let Some(bytes) = size_before(&lock_path) {
        cleaned.push(InstanceFile {
            path: lock_path,
            bytes,
        });
    }
    Ok(cleaned)
}
