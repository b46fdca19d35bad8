//! Who is alive: liveness from `flock` locks the kernel releases when a process dies.
//!
//! The runtime holds an exclusive `flock` on `{instance}.lock` in the user directory for
//! its whole life ([`RuntimeLock`]); each client process holds one on
//! `{instance}@client-{slot}.lock` ([`ClientLock`]). A process killed by SIGKILL, or
//! crashing at any instruction, loses its locks at once because the kernel closes its
//! files. A prober ([`runtime_alive`], [`client_alive`]) tries a shared lock without
//! blocking: if it gets it, nobody holds the exclusive one and the owner is dead. Unlike a
//! pid written in a file, this cannot be fooled by pid reuse.
//!
//! # Invariants
//!
//! * **Lock files are opened like every file of an instance**: through
//!   [`RuntimeDir`], relative to the verified `0700` user directory, with
//!   `O_NOFOLLOW | O_NONBLOCK` (and `O_CREAT | O_EXCL` when creating), and checked with
//!   `fstat` to be a regular file with one link, owned by the effective user and closed to
//!   others *before* anything is locked, read or written. A symlink, FIFO or foreign file
//!   at a lock's name is a [`LockFileError`] naming it: never followed, never waited on,
//!   never truncated. The runtime truncates its lock file (to write its pid) only after
//!   those checks and after it holds the lock.
//! * **Only a holder unlinks a lock file.** Whoever removes a lock file (its owner on a
//!   clean exit, the runtime reclaiming a dead client's slot) first holds the exclusive
//!   lock on it. An acquirer, after locking, checks that the name still names the file
//!   it locked and starts over if not. Together these make "holds the lock on the file the
//!   name names" exclusive even while files are removed and re-created concurrently.
//!   Removal is `unlinkat` of the name in the directory the lock was taken in.
//! * The runtime lock file holds the holder's pid in decimal, for messages only; nothing
//!   decides liveness from it.
//! * The runtime lock protects the instance's other files: [`RuntimeLock::remove_stale`]
//!   is only reachable while holding it, and removes only regular files and sockets of
//!   ours; anything else at an instance's name is reported, not swept away.
//!
//! # Failure modes
//!
//! * A prober's shared lock lasts microseconds, but an acquirer that tries at that moment
//!   would see the lock busy; acquirers retry a few times over a few milliseconds before
//!   reporting [`RuntimeLockError::AlreadyRunning`] or [`ClientLockError::SlotTaken`].
//! * [`runtime_alive`] answers `Ok(false)` when there is no lock file and an error when
//!   what sits at its name cannot be trusted, so `chimaera runtime status` and
//!   `Client::connect` say what is wrong instead of "not running" (or hanging).
//!   [`client_alive`], the runtime's probe of its clients, counts such a file as a dead
//!   client (and logs it): reclaiming the slot is the safe side.
//! * "Alive" means "some process of this user holds the lock". A client that outlived a
//!   runtime must also check that its segments are still the current ones
//!   ([`crate::shm::Segment::still_linked`]): after a restart the lock is held again, by
//!   the new runtime.
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::Duration;

use rustix::fs::FlockOperation;
use rustix::io::Errno;

use super::dir::{file_identity, Access, DirError, FileError, RuntimeDir};
use super::naming::{client_lock_slot, InstanceName, ShmName};

/// How often an acquirer retries a busy lock before believing it is held for good.
const BUSY_RETRIES: u32 = 5;
/// Pause between those retries.
const BUSY_PAUSE: Duration = Duration::from_millis(2);
/// Bound on start-overs when lock files are replaced under an acquirer (each needs a
/// concurrent remove and re-create, so a handful is plenty).
const REPLACED_RETRIES: u32 = 100;
/// Longest pid text read back from a lock file.
const PID_TEXT_MAX: usize = 16;

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
    /// The lock file, or a stale file, could not be used.
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
    /// The lock file could not be used.
    #[error(transparent)]
    File(#[from] LockFileError),
}

/// Why a lock file (of the runtime or of a client) could not be used.
#[derive(Debug, thiserror::Error)]
pub enum LockFileError {
    /// The user directory cannot be used.
    #[error(transparent)]
    Dir(#[from] DirError),
    /// Something other than a lock file of ours sits at the name (a link, a FIFO, a file
    /// of another user or open to others, …).
    #[error(transparent)]
    File(#[from] FileError),
    /// Locking or writing failed.
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
    dir: RuntimeDir,
    name: ShmName,
}

impl Drop for HeldLock {
    fn drop(&mut self) {
        // Closing the file (after this) releases the lock.
        unlink_held(&self.dir, &self.name, &self.file);
    }
}

/// Removes the lock file `name`, whose exclusive lock we hold through `file`. By the
/// protocol nobody else may unlink or replace it meanwhile: if the name still names our
/// file, removing it is ours to do (if it does not, our file is gone anyway).
fn unlink_held(dir: &RuntimeDir, name: &ShmName, file: &File) {
    if names_file(dir, name, file) {
        if let Err(err) = dir.remove(name) {
            tracing::warn!("could not remove lock file {name}: {err}");
        }
    }
}

/// What an attempt at an exclusive lock found.
enum Attempt {
    /// We hold it.
    Held(HeldLock),
    /// A live process holds it; the file is kept to read the holder's pid from.
    Busy(File),
}

/// The runtime's liveness lock for one instance, held for the runtime's life.
///
/// ```no_run
/// use chimaera_core::shm::{InstanceName, RuntimeLock, ShmName};
/// let instance = InstanceName::new("demo").unwrap();
/// let lock = RuntimeLock::acquire(&instance)?;
/// lock.remove_stale()?; // segments and the socket a dead runtime left
/// let socket = lock.dir().path_of(&ShmName::socket(&instance));
/// let listener = std::os::unix::net::UnixListener::bind(&socket)?;
/// // ... create fresh segments, serve ...
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct RuntimeLock {
    held: HeldLock,
    instance: InstanceName,
}

impl RuntimeLock {
    /// Takes the instance's runtime lock and writes our pid into it; fails with
    /// [`RuntimeLockError::AlreadyRunning`] if a live process holds it. A lock file left
    /// by a dead runtime is taken over (after the checks in the module docs).
    pub fn acquire(instance: &InstanceName) -> Result<RuntimeLock, RuntimeLockError> {
        let dir = RuntimeDir::for_user().map_err(LockFileError::from)?;
        let name = ShmName::runtime_lock(instance);
        let held = match lock_exclusive(dir, &name)? {
            Attempt::Held(held) => held,
            Attempt::Busy(file) => {
                return Err(RuntimeLockError::AlreadyRunning {
                    instance: instance.clone(),
                    pid: read_pid(&file),
                })
            }
        };
        let pid = format!("{}\n", std::process::id());
        held.file
            .set_len(0)
            .and_then(|()| held.file.write_all_at(pid.as_bytes(), 0))
            .map_err(|source| LockFileError::Io {
                action: "writing the pid into",
                path: held.dir.path_of(&name),
                source,
            })?;
        Ok(RuntimeLock {
            held,
            instance: instance.clone(),
        })
    }

    /// The instance this lock is for.
    pub fn instance(&self) -> &InstanceName {
        &self.instance
    }

    /// The verified user directory the lock was taken in: where the instance's other
    /// files go while the lock is held (its socket: `dir().path_of(&ShmName::socket(..))`).
    pub fn dir(&self) -> &RuntimeDir {
        &self.held.dir
    }

    /// Removes what a dead runtime of this instance left in the user directory: every
    /// segment, its socket, and every client lock file no live client holds (a client of
    /// the dead runtime that still runs keeps its slot until it notices and exits).
    /// Returns the removed paths. Anything at an instance's name that is not a regular
    /// file or socket of ours (a link, a FIFO, a directory, another user's file) is an
    /// error, and stays for the user to inspect.
    pub fn remove_stale(&self) -> Result<Vec<PathBuf>, RuntimeLockError> {
        let dir = &self.held.dir;
        let mut removed = Vec::new();
        for name in dir
            .instance_files(&self.instance)
            .map_err(LockFileError::from)?
        {
            let gone = match client_lock_slot(&self.instance, name.as_str()) {
                Some(_) => remove_if_unheld(dir, &name)?,
                None => dir.remove_own(&name).map_err(LockFileError::from)?,
            };
            if gone {
                removed.push(dir.path_of(&name));
            }
        }
        Ok(removed)
    }
}

/// Whether a runtime of `instance` is alive (holds its runtime lock). Never blocks.
/// `Ok(false)` if there is no lock file; an error if something untrustworthy sits at its
/// name (see the module docs).
pub fn runtime_alive(instance: &InstanceName) -> Result<bool, LockFileError> {
    let dir = RuntimeDir::for_user()?;
    Ok(probe(&dir, &ShmName::runtime_lock(instance))?.is_some())
}

/// The pid the runtime of `instance` wrote into its lock file, if one is alive and the
/// file is usable. For messages; liveness comes from [`runtime_alive`].
pub fn runtime_pid(instance: &InstanceName) -> Option<u32> {
    let dir = RuntimeDir::for_user().ok()?;
    let file = probe(&dir, &ShmName::runtime_lock(instance)).ok()??;
    read_pid(&file)
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
        let dir = RuntimeDir::for_user().map_err(LockFileError::from)?;
        match lock_exclusive(dir, &ShmName::client_lock(instance, slot))? {
            Attempt::Held(held) => Ok(ClientLock {
                _held: held,
                instance: instance.clone(),
                slot,
            }),
            Attempt::Busy(_) => Err(ClientLockError::SlotTaken {
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

/// Whether a live client holds `slot` of `instance`. Never blocks. A lock file that
/// cannot be trusted counts as a dead client (logged; see the module docs).
pub fn client_alive(instance: &InstanceName, slot: u32) -> bool {
    let name = ShmName::client_lock(instance, slot);
    let held = RuntimeDir::for_user()
        .map_err(LockFileError::from)
        .and_then(|dir| probe(&dir, &name));
    match held {
        Ok(held) => held.is_some(),
        Err(err) => {
            tracing::warn!(
                slot,
                "client lock unusable, counting the client as dead: {err}"
            );
            false
        }
    }
}

/// Removes the lock file of `slot` unless a live client holds it. Returns whether the
/// slot is now free of a lock file (true also when there was none).
pub fn remove_client_lock(instance: &InstanceName, slot: u32) -> Result<bool, ClientLockError> {
    let dir = RuntimeDir::for_user().map_err(LockFileError::from)?;
    Ok(remove_if_unheld(
        &dir,
        &ShmName::client_lock(instance, slot),
    )?)
}

/// Removes the lock file `name` unless someone holds it; true if it is gone.
fn remove_if_unheld(dir: &RuntimeDir, name: &ShmName) -> Result<bool, LockFileError> {
    let file = match dir.open_file(name, Access::ReadOnly) {
        Ok(file) => file,
        Err(FileError::NotFound { .. }) => return Ok(true),
        Err(err) => return Err(err.into()),
    };
    if !try_flock(&file, FlockOperation::NonBlockingLockExclusive, dir, name)? {
        return Ok(false);
    }
    unlink_held(dir, name, &file);
    Ok(true)
}

/// Takes an exclusive lock on the file `name` in `dir` (creating it, mode 0600), making
/// sure the name still names the locked file.
fn lock_exclusive(dir: RuntimeDir, name: &ShmName) -> Result<Attempt, LockFileError> {
    let mut busy = 0;
    for _ in 0..REPLACED_RETRIES {
        let file = dir.open_or_create_file(name)?;
        if !try_flock(&file, FlockOperation::NonBlockingLockExclusive, &dir, name)? {
            busy += 1;
            if busy > BUSY_RETRIES {
                return Ok(Attempt::Busy(file));
            }
            std::thread::sleep(BUSY_PAUSE);
            continue;
        }
        if names_file(&dir, name, &file) {
            return Ok(Attempt::Held(HeldLock {
                file,
                dir,
                name: name.clone(),
            }));
        }
        // The file was unlinked (and maybe re-created) between our open and our lock:
        // its remover held the lock. Start over on whatever the name names now.
    }
    Err(LockFileError::Io {
        action: "locking",
        path: dir.path_of(name),
        source: io::Error::other("the lock file kept being replaced while we locked it"),
    })
}

/// The lock file `name` if some process holds an exclusive lock on it; `None` if there
/// is no such file or nobody holds it.
fn probe(dir: &RuntimeDir, name: &ShmName) -> Result<Option<File>, LockFileError> {
    let file = match dir.open_file(name, Access::ReadOnly) {
        Ok(file) => file,
        Err(FileError::NotFound { .. }) => return Ok(None),
        Err(err) => return Err(err.into()),
    };
    // Getting the shared lock means nobody holds it exclusively; closing the file (on
    // return) releases ours.
    let free = try_flock(&file, FlockOperation::NonBlockingLockShared, dir, name)?;
    Ok((!free).then_some(file))
}

/// Tries a non-blocking `flock`; false if another holder blocks it.
fn try_flock(
    file: &File,
    op: FlockOperation,
    dir: &RuntimeDir,
    name: &ShmName,
) -> Result<bool, LockFileError> {
    loop {
        match rustix::fs::flock(file, op) {
            Ok(()) => return Ok(true),
            Err(Errno::WOULDBLOCK) => return Ok(false),
            Err(Errno::INTR) => continue,
            Err(errno) => {
                return Err(LockFileError::Io {
                    action: "locking",
                    path: dir.path_of(name),
                    source: errno.into(),
                })
            }
        }
    }
}

/// Whether `name` in `dir` currently names the same file as `file`.
fn names_file(dir: &RuntimeDir, name: &ShmName, file: &File) -> bool {
    file_identity(file).is_ok_and(|ours| dir.identity_of(name) == Some(ours))
}

/// The pid at the start of a lock file, read from its (checked) descriptor.
fn read_pid(file: &File) -> Option<u32> {
    let mut text = [0u8; PID_TEXT_MAX];
    let len = file.read_at(&mut text, 0).ok()?;
    std::str::from_utf8(&text[..len]).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shm::naming::ROLE_MAIN;
    use crate::shm::segment::Segment;
    use crate::shm::test_util::instance;
    use std::io::{BufRead, BufReader};
    use std::os::unix::fs::OpenOptionsExt;
    use std::process::{Command, Stdio};

    #[test]
    fn the_runtime_lock_is_exclusive_and_released_on_drop() {
        let inst = instance("rtlock");
        assert!(!runtime_alive(&inst).unwrap());
        let lock = RuntimeLock::acquire(&inst).unwrap();
        assert!(runtime_alive(&inst).unwrap());
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
        assert!(!runtime_alive(&inst).unwrap());
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
        assert!(!runtime_alive(&inst).unwrap());
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
                RuntimeLockError::File(LockFileError::File(FileError::OpenToOthers { .. }))
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

        assert!(runtime_alive(&inst).unwrap());
        match RuntimeLock::acquire(&inst) {
            Err(RuntimeLockError::AlreadyRunning { pid, .. }) => assert_eq!(pid, Some(child.id())),
            other => panic!("expected AlreadyRunning, got {other:?}"),
        }

        child.kill().unwrap(); // SIGKILL: no destructor runs, the lock file stays
        child.wait().unwrap();
        assert!(ShmName::runtime_lock(&inst).path().exists());
        assert!(!runtime_alive(&inst).unwrap());
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

        // A dead runtime's socket: the file stays after its listener is gone.
        let socket = ShmName::socket(&inst);
        drop(std::os::unix::net::UnixListener::bind(lock.dir().path_of(&socket)).unwrap());

        let mut removed = lock.remove_stale().unwrap();
        removed.sort();
        let mut expected = vec![main.path(), data.path(), dead, socket.path()];
        expected.sort();
        assert_eq!(removed, expected);
        assert!(client_alive(&inst, 0));
        assert!(other.path().exists());

        drop(live);
        assert!(lock.remove_stale().unwrap().is_empty());
        Segment::unlink(&other).unwrap();
    }
    /// A victim file with known content, outside the user directory but on the same file
    /// system (so it can also be hard-linked in).
    fn victim(tag: &str) -> PathBuf {
        let path = PathBuf::from(format!(
            "{}/chimaera-ut-victim-{}-{tag}",
            crate::shm::naming::parent_dir().display(),
            std::process::id()
        ));
        std::fs::write(&path, "precious").unwrap();
        path
    }

    fn lock_file_error(err: &RuntimeLockError) -> &FileError {
        match err {
            RuntimeLockError::File(LockFileError::File(file)) => file,
            other => panic!("expected a lock file error, got {other}"),
        }
    }

    #[test]
    fn a_symlink_at_a_lock_name_is_never_followed() {
        let inst = instance("locklink");
        let victim = victim("locklink");
        let runtime = ShmName::runtime_lock(&inst).path();
        let client = ShmName::client_lock(&inst, 0).path();
        std::os::unix::fs::symlink(&victim, &runtime).unwrap();
        std::os::unix::fs::symlink(&victim, &client).unwrap();

        let err = RuntimeLock::acquire(&inst).unwrap_err();
        assert!(
            matches!(lock_file_error(&err), FileError::Symlink { .. }),
            "{err}"
        );
        assert!(
            err.to_string().contains(&*runtime.to_string_lossy()),
            "{err}"
        );
        let err = runtime_alive(&inst).unwrap_err();
        assert!(
            matches!(err, LockFileError::File(FileError::Symlink { .. })),
            "{err}"
        );
        assert_eq!(runtime_pid(&inst), None);

        let err = ClientLock::acquire(&inst, 0).unwrap_err();
        assert!(
            matches!(
                err,
                ClientLockError::File(LockFileError::File(FileError::Symlink { .. }))
            ),
            "{err}"
        );
        assert!(!client_alive(&inst, 0));
        assert!(remove_client_lock(&inst, 0).is_err());

        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        for path in [&runtime, &client] {
            assert!(std::fs::symlink_metadata(path).unwrap().is_symlink());
            std::fs::remove_file(path).unwrap();
        }
        std::fs::remove_file(victim).unwrap();
    }

    #[test]
    fn a_hard_link_at_the_runtime_lock_is_not_truncated() {
        let inst = instance("lockhard");
        let victim = victim("lockhard");
        let runtime = ShmName::runtime_lock(&inst).path();
        std::fs::set_permissions(&victim, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        std::fs::hard_link(&victim, &runtime).unwrap();
        let err = RuntimeLock::acquire(&inst).unwrap_err();
        assert!(
            matches!(
                lock_file_error(&err),
                FileError::HardLinked { links: 2, .. }
            ),
            "{err}"
        );
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        std::fs::remove_file(runtime).unwrap();
        std::fs::remove_file(victim).unwrap();
    }

    #[test]
    fn a_fifo_at_a_lock_name_is_refused_without_blocking() {
        let inst = instance("lockfifo");
        let runtime = ShmName::runtime_lock(&inst).path();
        let client = ShmName::client_lock(&inst, 1).path();
        for path in [&runtime, &client] {
            rustix::fs::mknodat(
                rustix::fs::CWD,
                path,
                rustix::fs::FileType::Fifo,
                rustix::fs::Mode::from(0o600),
                0,
            )
            .unwrap();
        }
        let err = RuntimeLock::acquire(&inst).unwrap_err();
        assert!(
            matches!(lock_file_error(&err), FileError::WrongKind { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("FIFO"), "{err}");
        assert!(runtime_alive(&inst).is_err());
        assert_eq!(runtime_pid(&inst), None);
        assert!(ClientLock::acquire(&inst, 1).is_err());
        assert!(!client_alive(&inst, 1));
        assert!(remove_client_lock(&inst, 1).is_err());
        for path in [&runtime, &client] {
            std::fs::remove_file(path).unwrap();
        }
    }

    #[test]
    fn a_lock_file_of_another_user_is_refused() {
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipped: needs root to give a file to uid 65534");
            return;
        }
        let inst = instance("lockowner");
        let path = ShmName::runtime_lock(&inst).path();
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .unwrap();
        std::os::unix::fs::chown(&path, Some(65534), Some(65534)).unwrap();
        let err = RuntimeLock::acquire(&inst).unwrap_err();
        assert!(
            matches!(
                lock_file_error(&err),
                FileError::NotOwned { owner: 65534, .. }
            ),
            "{err}"
        );
        assert!(runtime_alive(&inst).is_err());
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            0,
            "the file was written"
        );
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn remove_stale_refuses_what_it_did_not_make_and_follows_nothing() {
        let inst = instance("sweeplink");
        let victim = victim("sweeplink");
        let lock = RuntimeLock::acquire(&inst).unwrap();
        let main = ShmName::segment(&inst, ROLE_MAIN).unwrap();
        std::os::unix::fs::symlink(&victim, main.path()).unwrap();
        let err = lock.remove_stale().unwrap_err();
        assert!(
            matches!(lock_file_error(&err), FileError::Symlink { .. }),
            "{err}"
        );
        assert!(std::fs::symlink_metadata(main.path()).unwrap().is_symlink());
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        std::fs::remove_file(main.path()).unwrap();
        std::fs::remove_file(victim).unwrap();
        assert!(lock.remove_stale().unwrap().is_empty());
    }
}
