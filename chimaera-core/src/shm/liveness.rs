//! Who is alive: liveness from `flock` locks the kernel releases when a process dies.
//!
//! The runtime holds an exclusive `flock` on `chimaera-{user}-{instance}.lock` for its
//! whole life ([`RuntimeLock`]); each client process holds one on
//! `chimaera-{user}-{instance}@client-{slot}.lock` ([`ClientLock`]). A process killed by
//! SIGKILL, or crashing at any instruction, loses its locks at once because the kernel
//! closes its files. A prober ([`runtime_alive`], [`client_alive`]) tries a shared lock
//! without blocking: if it gets it, nobody holds the exclusive one and the owner is dead.
//! Unlike a pid written in a file, this cannot be fooled by pid reuse.
//!
//! # Invariants
//!
//! * **Only a holder unlinks a lock file.** Whoever removes a lock file (its owner on a
//!   clean exit, the runtime reclaiming a dead client's slot) first holds the exclusive
//!   lock on it. An acquirer, after locking, checks that the path still names the file
//!   it locked and starts over if not. Together these make "holds the lock on the file the
//!   path names" exclusive even while files are removed and re-created concurrently.
//! * The runtime lock file holds the holder's pid in decimal, for messages only; nothing
//!   decides liveness from it.
//! * Lock files are created with mode `0600`; a lock file owned by another user or open to
//!   others is refused (another user could otherwise hold it to keep us from starting).
//! * The runtime lock protects the instance's other files: [`RuntimeLock::remove_stale`]
//!   is only reachable while holding it.
//!
//! # Failure modes
//!
//! * A prober's shared lock lasts microseconds, but an acquirer that tries at that moment
//!   would see the lock busy; acquirers retry a few times over a few milliseconds before
//!   reporting [`RuntimeLockError::AlreadyRunning`] or [`ClientLockError::SlotTaken`].
//! * A lock file that cannot be opened for another reason makes the probes answer "not
//!   alive": for a client that means "no runtime I can reach".
//! * "Alive" means "some process of this user holds the lock". A client that outlived a
//!   runtime must also check that its segments are still the current ones
//!   ([`crate::shm::Segment::still_linked`]): after a restart the lock is held again, by
//!   the new runtime.
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::fs::FlockOperation;
use rustix::io::Errno;

use super::naming::{client_lock_slot, instance_files, InstanceName, ShmName};

/// How often an acquirer retries a busy lock before believing it is held for good.
const BUSY_RETRIES: u32 = 5;
/// Pause between those retries.
const BUSY_PAUSE: Duration = Duration::from_millis(2);
/// Bound on start-overs when lock files are replaced under an acquirer (each needs a
/// concurrent remove and re-create, so a handful is plenty).
const REPLACED_RETRIES: u32 = 100;

/// Why the runtime lock could not be taken (or stale files not removed).
#[derive(Debug, thiserror::Error)]
pub enum RuntimeLockError {
    /// Another live process holds the instance's runtime lock.
    #[error(
        "a runtime for instance `{instance}` is already running{pid}; stop it with `chimaera \
         runtime stop`, or pick another instance name (`instance:` in the config or \
         CHI_INSTANCE)",
        pid = pid.map(|pid| format!(" (pid {pid})")).unwrap_or_default()
    )]
    AlreadyRunning {
        /// The instance.
        instance: InstanceName,
        /// The holder's pid, when it could be read from the lock file.
        pid: Option<u32>,
    },
    /// The lock file could not be used (permission, or another I/O failure).
    #[error(transparent)]
    File(#[from] LockFileError),
}

/// Why a client lock could not be taken or removed.
#[derive(Debug, thiserror::Error)]
pub enum ClientLockError {
    /// Another live process holds that slot.
    #[error("client slot {slot} of instance `{instance}` is held by another live client")]
    SlotTaken {
        /// The instance.
        instance: InstanceName,
        /// The slot.
        slot: u32,
    },
    /// Every slot is held by a live client.
    #[error(
        "all {max_clients} client slots of instance `{instance}` are in use; raise \
         `max_clients` in the runtime's config or end some clients"
    )]
    NoFreeSlot {
        /// The instance.
        instance: InstanceName,
        /// How many slots there are.
        max_clients: u32,
    },
    /// The lock file could not be used (permission, or another I/O failure).
    #[error(transparent)]
    File(#[from] LockFileError),
}

/// Why a lock file (of the runtime or of a client) could not be used.
#[derive(Debug, thiserror::Error)]
pub enum LockFileError {
    /// The lock file belongs to another user, is open to others, or may not be opened.
    #[error("permission denied on lock file {}: {reason}; remove it or run as its owner", path.display())]
    Permission {
        /// The lock file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Any other I/O failure.
    #[error("{action} {} failed: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The system error.
        #[source]
        source: io::Error,
    },
}

/// A held exclusive lock on a lock file; unlinks the file and unlocks on drop.
#[derive(Debug)]
struct HeldLock {
    file: File,
    path: PathBuf,
}

impl Drop for HeldLock {
    fn drop(&mut self) {
        // We hold the lock, so by the protocol nobody else may unlink or replace the file:
        // if the path still names our file, removing it is ours to do. Closing the file
        // (after this) releases the lock.
        if names_file(&self.path, &self.file) {
            if let Err(err) = std::fs::remove_file(&self.path) {
                if err.kind() != io::ErrorKind::NotFound {
                    tracing::warn!("could not remove lock file {}: {err}", self.path.display());
                }
            }
        }
    }
}

/// The runtime's liveness lock for one instance, held for the runtime's life.
///
/// ```no_run
/// use chimaera_core::shm::{InstanceName, RuntimeLock};
/// let instance = InstanceName::new("demo").unwrap();
/// let lock = RuntimeLock::acquire(&instance)?;
/// lock.remove_stale()?; // segments a dead runtime left
/// // ... create fresh segments, serve ...
/// # Ok::<(), chimaera_core::shm::RuntimeLockError>(())
/// ```
#[derive(Debug)]
pub struct RuntimeLock {
    _held: HeldLock,
    instance: InstanceName,
}

impl RuntimeLock {
    /// Takes the instance's runtime lock and writes our pid into it; fails with
    /// [`RuntimeLockError::AlreadyRunning`] if a live process holds it. A lock file left
    /// by a dead runtime is simply taken over.
    pub fn acquire(instance: &InstanceName) -> Result<RuntimeLock, RuntimeLockError> {
        let name = ShmName::runtime_lock(instance);
        let Some(held) = lock_exclusive(&name.path())? else {
            return Err(RuntimeLockError::AlreadyRunning {
                instance: instance.clone(),
                pid: read_pid(&name.path()),
            });
        };
        let pid = format!("{}\n", std::process::id());
        held.file
            .set_len(0)
            .and_then(|()| held.file.write_all_at(pid.as_bytes(), 0))
            .map_err(|source| LockFileError::Io {
                action: "writing the pid into",
                path: held.path.clone(),
                source,
            })?;
        Ok(RuntimeLock {
            _held: held,
            instance: instance.clone(),
        })
    }

    /// The instance this lock is for.
    pub fn instance(&self) -> &InstanceName {
        &self.instance
    }

    /// Removes what a dead runtime of this instance left in `/dev/shm`: every segment,
    /// and every client lock file no live client holds (a client of the dead runtime that
    /// still runs keeps its slot until it notices and exits). Returns the removed paths.
    pub fn remove_stale(&self) -> Result<Vec<PathBuf>, RuntimeLockError> {
        let files = instance_files(&self.instance).map_err(|source| LockFileError::Io {
            action: "listing",
            path: PathBuf::from(super::naming::SHM_DIR),
            source,
        })?;
        let mut removed = Vec::new();
        for path in files {
            let file_name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            let gone = match client_lock_slot(&self.instance, file_name) {
                Some(_) => remove_if_unheld(&path)?,
                None => match std::fs::remove_file(&path) {
                    Ok(()) => true,
                    Err(err) if err.kind() == io::ErrorKind::NotFound => false,
                    Err(source) => {
                        return Err(LockFileError::Io {
                            action: "removing stale",
                            path,
                            source,
                        }
                        .into())
                    }
                },
            };
            if gone {
                removed.push(path);
            }
        }
        Ok(removed)
    }
}

/// Whether a runtime of `instance` is alive (holds its runtime lock). Never blocks.
pub fn runtime_alive(instance: &InstanceName) -> bool {
    is_held(&ShmName::runtime_lock(instance).path())
}

/// The pid the runtime of `instance` wrote into its lock file, if one is alive and the
/// file is readable. For messages; liveness comes from [`runtime_alive`].
pub fn runtime_pid(instance: &InstanceName) -> Option<u32> {
    let path = ShmName::runtime_lock(instance).path();
    if is_held(&path) {
        read_pid(&path)
    } else {
        None
    }
}

/// A client process's liveness lock on its slot, held for the client's life.
#[derive(Debug)]
pub struct ClientLock {
    _held: HeldLock,
    instance: InstanceName,
    slot: u32,
}

impl ClientLock {
    /// Takes the lock of `slot`; fails with [`ClientLockError::SlotTaken`] if a live
    /// process holds it. A lock file left by a dead client is taken over.
    pub fn acquire(instance: &InstanceName, slot: u32) -> Result<ClientLock, ClientLockError> {
        let path = ShmName::client_lock(instance, slot).path();
        match lock_exclusive(&path)? {
            Some(held) => Ok(ClientLock {
                _held: held,
                instance: instance.clone(),
                slot,
            }),
            None => Err(ClientLockError::SlotTaken {
                instance: instance.clone(),
                slot,
            }),
        }
    }

    /// Takes the lowest free slot below `max_clients`.
    pub fn acquire_any(
        instance: &InstanceName,
        max_clients: u32,
    ) -> Result<ClientLock, ClientLockError> {
        for slot in 0..max_clients {
            match ClientLock::acquire(instance, slot) {
                Err(ClientLockError::SlotTaken { .. }) => continue,
                other => return other,
            }
        }
        Err(ClientLockError::NoFreeSlot {
            instance: instance.clone(),
            max_clients,
        })
    }

    /// The slot this lock holds.
    pub fn slot(&self) -> u32 {
        self.slot
    }

    /// The instance.
    pub fn instance(&self) -> &InstanceName {
        &self.instance
    }
}

/// Whether a live client holds `slot` of `instance`. Never blocks.
pub fn client_alive(instance: &InstanceName, slot: u32) -> bool {
    is_held(&ShmName::client_lock(instance, slot).path())
}

/// Removes the lock file of `slot` unless a live client holds it. Returns whether the
/// slot is now free of a lock file (true also when there was none).
pub fn remove_client_lock(instance: &InstanceName, slot: u32) -> Result<bool, ClientLockError> {
    Ok(remove_if_unheld(
        &ShmName::client_lock(instance, slot).path(),
    )?)
}

/// Removes the lock file at `path` unless someone holds it; true if it is gone.
fn remove_if_unheld(path: &Path) -> Result<bool, LockFileError> {
    let file = match open_existing(path) {
        Ok(Some(file)) => file,
        Ok(None) => return Ok(true),
        Err(source) => {
            return Err(LockFileError::Io {
                action: "opening",
                path: path.to_owned(),
                source,
            })
        }
    };
    if !try_flock(&file, FlockOperation::NonBlockingLockExclusive, path)? {
        return Ok(false);
    }
    // Holding the lock: by the protocol the file is ours to unlink (HeldLock's drop does
    // it if the path still names this file; if it does not, the old file is gone anyway).
    drop(HeldLock {
        file,
        path: path.to_owned(),
    });
    Ok(true)
}

/// Takes an exclusive lock on the file at `path` (creating it, mode 0600), making sure the
/// path still names the locked file. `Ok(None)` if a live process holds it.
fn lock_exclusive(path: &Path) -> Result<Option<HeldLock>, LockFileError> {
    let mut busy = 0;
    for _ in 0..REPLACED_RETRIES {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(|source| open_error(path, source))?;
        let meta = file.metadata().map_err(|source| LockFileError::Io {
            action: "inspecting",
            path: path.to_owned(),
            source,
        })?;
        check_owner(&meta, path)?;
        if !try_flock(&file, FlockOperation::NonBlockingLockExclusive, path)? {
            busy += 1;
            if busy > BUSY_RETRIES {
                return Ok(None);
            }
            std::thread::sleep(BUSY_PAUSE);
            continue;
        }
        if names_file(path, &file) {
            return Ok(Some(HeldLock {
                file,
                path: path.to_owned(),
            }));
        }
        // The file was unlinked (and maybe re-created) between our open and our lock:
        // its remover held the lock. Start over on whatever the path names now.
    }
    Err(LockFileError::Io {
        action: "locking",
        path: path.to_owned(),
        source: io::Error::other("the lock file kept being replaced while we locked it"),
    })
}

/// Whether some process holds an exclusive lock on the file at `path`.
fn is_held(path: &Path) -> bool {
    let Ok(Some(file)) = open_existing(path) else {
        return false;
    };
    match rustix::fs::flock(&file, FlockOperation::NonBlockingLockShared) {
        // We got it, so nobody holds it exclusively; closing the file releases ours.
        Ok(()) => false,
        Err(Errno::WOULDBLOCK) => true,
        Err(_) => false,
    }
}

/// Opens an existing lock file read-only; `Ok(None)` if it does not exist.
fn open_existing(path: &Path) -> io::Result<Option<File>> {
    match File::open(path) {
        Ok(file) => Ok(Some(file)),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(err),
    }
}

/// Tries a non-blocking `flock`; false if another holder blocks it.
fn try_flock(file: &File, op: FlockOperation, path: &Path) -> Result<bool, LockFileError> {
    loop {
        match rustix::fs::flock(file, op) {
            Ok(()) => return Ok(true),
            Err(Errno::WOULDBLOCK) => return Ok(false),
            Err(Errno::INTR) => continue,
            Err(errno) => {
                return Err(LockFileError::Io {
                    action: "locking",
                    path: path.to_owned(),
                    source: errno.into(),
                })
            }
        }
    }
}

/// Whether `path` currently names the same file as `file`.
fn names_file(path: &Path, file: &File) -> bool {
    match (std::fs::metadata(path), file.metadata()) {
        (Ok(at_path), Ok(ours)) => (at_path.dev(), at_path.ino()) == (ours.dev(), ours.ino()),
        _ => false,
    }
}

fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn open_error(path: &Path, source: io::Error) -> LockFileError {
    if source.kind() == io::ErrorKind::PermissionDenied {
        LockFileError::Permission {
            path: path.to_owned(),
            reason: format!("cannot open it ({source})"),
        }
    } else {
        LockFileError::Io {
            action: "opening",
            path: path.to_owned(),
            source,
        }
    }
}

fn check_owner(meta: &std::fs::Metadata, path: &Path) -> Result<(), LockFileError> {
    let me = rustix::process::geteuid().as_raw();
    let reason = if meta.uid() != me {
        format!("it is owned by uid {}, not by you (uid {me})", meta.uid())
    } else if meta.mode() & 0o077 != 0 {
        format!(
            "its mode is {:o}, open to other users (want 600)",
            meta.mode() & 0o777
        )
    } else {
        return Ok(());
    };
    Err(LockFileError::Permission {
        path: path.to_owned(),
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shm::naming::ROLE_MAIN;
    use crate::shm::segment::Segment;
    use crate::shm::test_util::instance;
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    #[test]
    fn the_runtime_lock_is_exclusive_and_released_on_drop() {
        let inst = instance("rtlock");
        assert!(!runtime_alive(&inst));
        let lock = RuntimeLock::acquire(&inst).unwrap();
        assert!(runtime_alive(&inst));
        assert_eq!(runtime_pid(&inst), Some(std::process::id()));

        // A second open file description cannot take it, even in the same process.
        let err = RuntimeLock::acquire(&inst).unwrap_err();
        match &err {
            RuntimeLockError::AlreadyRunning { pid, .. } => {
                assert_eq!(*pid, Some(std::process::id()))
            }
            other => panic!("expected AlreadyRunning, got {other}"),
        }
        assert!(err.to_string().contains("chimaera runtime stop"), "{err}");

        drop(lock);
        assert!(!ShmName::runtime_lock(&inst).path().exists());
        assert!(!runtime_alive(&inst));
        assert_eq!(runtime_pid(&inst), None);
        drop(RuntimeLock::acquire(&inst).unwrap());
    }

    #[test]
    fn a_stale_lock_file_is_taken_over() {
        let inst = instance("stale");
        let path = ShmName::runtime_lock(&inst).path();
        std::fs::write(&path, "999999\n").unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        assert!(!runtime_alive(&inst));
        let lock = RuntimeLock::acquire(&inst).unwrap();
        assert_eq!(runtime_pid(&inst), Some(std::process::id()));
        drop(lock);
    }

    #[test]
    fn a_lock_file_open_to_others_is_refused() {
        let inst = instance("perm");
        let path = ShmName::runtime_lock(&inst).path();
        std::fs::write(&path, "").unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o666))
            .unwrap();
        let err = RuntimeLock::acquire(&inst).unwrap_err();
        assert!(
            matches!(
                err,
                RuntimeLockError::File(LockFileError::Permission { .. })
            ),
            "{err}"
        );
        std::fs::remove_file(&path).unwrap();
    }

    /// Runs only as the child of `a_killed_runtime_is_seen_dead`: holds the runtime lock
    /// of the instance named in the environment until killed.
    #[test]
    #[ignore = "helper process for a_killed_runtime_is_seen_dead"]
    fn lock_holder_child() {
        let Ok(name) = std::env::var("CHI_TEST_LOCK_HOLDER") else {
            return;
        };
        let _lock = RuntimeLock::acquire(&InstanceName::new(&name).unwrap()).unwrap();
        println!("locked");
        std::thread::sleep(Duration::from_secs(120));
    }

    #[test]
    fn a_killed_runtime_is_seen_dead() {
        let inst = instance("sigkill");
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "shm::liveness::tests::lock_holder_child",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("CHI_TEST_LOCK_HOLDER", inst.as_str())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let locked = stdout
            .lines()
            .map_while(Result::ok)
            .any(|line| line.contains("locked"));
        assert!(locked, "the child never took the lock");

        assert!(runtime_alive(&inst));
        match RuntimeLock::acquire(&inst) {
            Err(RuntimeLockError::AlreadyRunning { pid, .. }) => assert_eq!(pid, Some(child.id())),
            other => panic!("expected AlreadyRunning, got {other:?}"),
        }

        child.kill().unwrap(); // SIGKILL: no destructor runs, the lock file stays
        child.wait().unwrap();
        assert!(ShmName::runtime_lock(&inst).path().exists());
        assert!(!runtime_alive(&inst));
        drop(RuntimeLock::acquire(&inst).unwrap());
    }

    #[test]
    fn client_locks_track_slots() {
        let inst = instance("clients");
        let first = ClientLock::acquire_any(&inst, 3).unwrap();
        assert_eq!(first.slot(), 0);
        assert!(client_alive(&inst, 0));
        assert!(!client_alive(&inst, 1));
        assert!(matches!(
            ClientLock::acquire(&inst, 0),
            Err(ClientLockError::SlotTaken { slot: 0, .. })
        ));
        let second = ClientLock::acquire_any(&inst, 3).unwrap();
        assert_eq!(second.slot(), 1);
        let third = ClientLock::acquire_any(&inst, 3).unwrap();
        let err = ClientLock::acquire_any(&inst, 3).unwrap_err();
        assert!(
            matches!(err, ClientLockError::NoFreeSlot { max_clients: 3, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("max_clients"), "{err}");

        // A live client's lock is never removed.
        assert!(!remove_client_lock(&inst, 1).unwrap());
        assert!(client_alive(&inst, 1));

        drop(second);
        assert!(!client_alive(&inst, 1));
        assert!(!ShmName::client_lock(&inst, 1).path().exists());
        assert!(remove_client_lock(&inst, 1).unwrap());
        assert_eq!(ClientLock::acquire_any(&inst, 3).unwrap().slot(), 1);
        drop((first, third));
    }

    #[test]
    fn a_dead_clients_lock_file_is_removed() {
        let inst = instance("deadclient");
        let path = ShmName::client_lock(&inst, 5).path();
        // What a SIGKILLed client leaves: the file, with no lock on it.
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .unwrap();
        assert!(!client_alive(&inst, 5));
        assert!(remove_client_lock(&inst, 5).unwrap());
        assert!(!path.exists());
    }

    #[test]
    fn remove_stale_clears_an_instance_but_spares_live_clients_and_neighbours() {
        let inst = instance("sweep");
        let neighbour = InstanceName::new(&format!("{inst}-main")).unwrap();
        let lock = RuntimeLock::acquire(&inst).unwrap();

        let main = ShmName::segment(&inst, ROLE_MAIN).unwrap();
        let data = ShmName::segment(&inst, "data").unwrap();
        let other = ShmName::segment(&neighbour, "data").unwrap();
        for name in [&main, &data, &other] {
            drop(Segment::create(name, 4096).unwrap());
        }
        let live = ClientLock::acquire(&inst, 0).unwrap();
        let dead = ShmName::client_lock(&inst, 1).path();
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&dead)
            .unwrap();

        let mut removed = lock.remove_stale().unwrap();
        removed.sort();
        let mut expected = vec![main.path(), data.path(), dead];
        expected.sort();
        assert_eq!(removed, expected);
        assert!(client_alive(&inst, 0));
        assert!(other.path().exists());

        drop(live);
        assert!(lock.remove_stale().unwrap().is_empty());
        Segment::unlink(&other).unwrap();
    }
}
