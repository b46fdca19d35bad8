//! Who is alive: liveness from `flock` locks the kernel releases when a process dies.
//!
//! The runtime holds an exclusive `flock` on `{instance}.lock` in the user directory for
//! its whole life ([`RuntimeLock`]). A runtime killed by SIGKILL, or crashing at any
//! instruction, loses its lock at once because the kernel closes its files. A prober
//! ([`runtime_alive`]) tries a shared lock without blocking: if it gets it, nobody holds
//! the exclusive one and the runtime is dead. Unlike a pid written in a file, this cannot
//! be fooled by pid reuse. (Clients need no lock file: each one's liveness is the hang-up
//! of its Unix socket connection, see [`crate::transport::shm::server`].)
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
//!   clean exit) first holds the exclusive lock on it. An acquirer, after locking, checks that the name still names the file
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
//!   reporting [`RuntimeLockError::AlreadyRunning`].
//! * [`runtime_alive`] answers `Ok(false)` when there is no lock file and an error when
//!   what sits at its name cannot be trusted, so `chimaera runtime status` and
//!   `Client::connect` say what is wrong instead of "not running" (or hanging).
//! * "Alive" means "some process of this user holds the lock": after a restart the lock
//!   is held again, by the new runtime. A client of the old runtime learns of its death
//!   from its socket's hang-up, not from this lock.
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::Duration;

use rustix::fs::FlockOperation;
use rustix::io::Errno;

use super::dir::{file_identity, Access, DirError, FileError, RuntimeDir};
use super::naming::{InstanceName, ShmName};

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

/// Why the runtime's lock file could not be used.
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
/// lock.remove_stale()?; // the socket (and any other file) a dead runtime left
/// let socket = lock.dir().path_of(&ShmName::socket(&instance));
/// let listener = std::os::unix::net::UnixListener::bind(&socket)?;
/// // ... accept clients, serve ...
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

    /// Removes what a dead runtime of this instance left in the user directory: its
    /// socket and any other file of the instance (see [`crate::shm::naming`]).
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
            if dir.remove_own(&name).map_err(LockFileError::from)? {
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
    use crate::shm::segment::Segment;
    use crate::shm::test_util::instance;
    use std::io::{BufRead, BufReader};
    use std::os::unix::fs::OpenOptionsExt;
    use std::process::{Command, Stdio};

    /// Role of the named segments these tests plant as a dead runtime's leftovers.
    const TEST_ROLE: &str = "main";

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
    fn remove_stale_clears_an_instance_but_spares_its_neighbours() {
        let inst = instance("sweep");
        let neighbour = InstanceName::new(&format!("{inst}-main")).unwrap();
        let lock = RuntimeLock::acquire(&inst).unwrap();

        let main = ShmName::segment(&inst, TEST_ROLE).unwrap();
        let data = ShmName::segment(&inst, "data").unwrap();
        let other = ShmName::segment(&neighbour, "data").unwrap();
        for name in [&main, &data, &other] {
            drop(Segment::create(name, 4096).unwrap());
        }

        // A dead runtime's socket: the file stays after its listener is gone.
        let socket = ShmName::socket(&inst);
        drop(std::os::unix::net::UnixListener::bind(lock.dir().path_of(&socket)).unwrap());

        let mut removed = lock.remove_stale().unwrap();
        removed.sort();
        let mut expected = vec![main.path(), data.path(), socket.path()];
        expected.sort();
        assert_eq!(removed, expected);
        assert!(other.path().exists());
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
        std::os::unix::fs::symlink(&victim, &runtime).unwrap();

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

        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        assert!(std::fs::symlink_metadata(&runtime).unwrap().is_symlink());
        std::fs::remove_file(&runtime).unwrap();
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
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &runtime,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from(0o600),
            0,
        )
        .unwrap();
        let err = RuntimeLock::acquire(&inst).unwrap_err();
        assert!(
            matches!(lock_file_error(&err), FileError::WrongKind { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("FIFO"), "{err}");
        assert!(runtime_alive(&inst).is_err());
        assert_eq!(runtime_pid(&inst), None);
        std::fs::remove_file(&runtime).unwrap();
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
        let main = ShmName::segment(&inst, TEST_ROLE).unwrap();
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
