//! The user directory: where an instance's files live, and the only way they are opened.
//!
//! Every segment, lock file and socket of every instance of one user lives in
//! `{parent}/chimaera-{user}` ([`crate::shm::naming`]: `{parent}` is `/dev/shm` unless
//! `CHI_SHM_DIR` names another). A [`RuntimeDir`] is that directory, created if missing,
//! verified, and held open; every file is opened, created, inspected and removed
//! *relative to its descriptor* (`openat`, `statat`, `unlinkat`), so no path is resolved
//! twice and no link in it is followed.
//!
//! # Invariants
//!
//! * **The parent is safe to hold it**: an absolute path, owned by root or by the
//!   effective user, and if others may write it, sticky (like `/dev/shm`, mode `1777`).
//!   Then no other user can rename or replace our directory in it, which is why a path
//!   into a verified directory ([`RuntimeDir::path_of`]) may be handed to calls that only
//!   take paths (`bind`, `connect` of a Unix socket).
//! * **The directory is ours and closed**: opened with `O_DIRECTORY | O_NOFOLLOW` (a
//!   symlink at its name is an error, never followed), then checked with `fstat` on that
//!   descriptor: a directory, owned by the effective uid, mode `0700` — or `0711`, set
//!   by a runtime whose config grants other users access ([`RuntimeDir::open_to_search`]):
//!   search only, so they can reach its socket by exact name but list, create or remove
//!   nothing, every file in it being `0600`. Only a directory we have just created
//!   ourselves is given mode `0700` (the umask may have taken bits away). **A wrong mode on an existing directory is refused, not
//!   repaired**: while it was open to others anything may have been planted in it (a hard
//!   link to one of our files, say), and mending the mode would bless that. The error
//!   says to remove the directory; the next start creates it afresh.
//! * **Files are opened without following, blocking or truncating**: every open uses
//!   `O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC | O_NOCTTY` on a plain name (never a path with
//!   `/`), creation adds `O_CREAT | O_EXCL` with mode `0600`, nothing uses `O_TRUNC`.
//!   Then `fstat` on the new descriptor must show a regular file, owned by the effective
//!   uid, with no permission for group or others, and exactly one link (a second link
//!   would mean the name is an alias of some other file). Anything else is a
//!   [`FileError`] naming the path, what is there and what to do, and the descriptor is
//!   closed unused: a symlink is not followed (`ELOOP`), a FIFO is not waited on
//!   (`O_NONBLOCK`), a file is never truncated before it passed the checks.
//! * Removal is `unlinkat` of a name in the verified directory: it removes the name,
//!   never what a link points to. [`RuntimeDir::remove_own`] (clean-up of a dead
//!   runtime's files) removes only regular files and sockets we own and refuses anything
//!   else, so a planted file is reported rather than silently swept away.
//!
//! Running as root changes none of this: ownership is compared with the effective uid,
//! so for root a file owned by `nobody` is as foreign as for anyone.
//!
//! # Failure modes
//!
//! A [`DirError`] (the directory or its parent) or a [`FileError`] (one file); each
//! variant's message names the path and the fix. Another user who creates
//! `/dev/shm/chimaera-{user}` first can keep us from starting (we refuse their
//! directory) but cannot read or feed us anything; the message says how to clear it.
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat};
use rustix::io::Errno;

use super::naming::{self, InstanceName, ShmName};

/// Mode of the user directory.
const DIR_MODE: u32 = 0o700;
/// Mode of the user directory of a runtime that serves other users: they may search it
/// (reach the socket by name), nothing more.
const DIR_MODE_SEARCHABLE: u32 = 0o711;
/// Mode of every file created in it.
const FILE_MODE: u32 = 0o600;
/// Flags of every open in the user directory.
const OPEN_FLAGS: OFlags = OFlags::NOFOLLOW
    .union(OFlags::NONBLOCK)
    .union(OFlags::CLOEXEC)
    .union(OFlags::NOCTTY);

/// Why the user directory (or its parent) cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DirError {
    /// A symbolic link sits where the directory should be.
    #[error(
        "{} is a symbolic link, not chimaera's directory; chimaera never follows it. Inspect \
         it and remove it (`rm {}`): the next start creates the directory",
        path.display(), path.display()
    )]
    Symlink {
        /// The directory's path.
        path: PathBuf,
    },
    /// Something other than a directory sits at its name.
    #[error(
        "{} is {kind}, not a directory; remove it (`rm {}`): the next start creates the \
         directory",
        path.display(), path.display()
    )]
    NotADirectory {
        /// The directory's path.
        path: PathBuf,
        /// What is there ("a regular file", "a FIFO", …).
        kind: &'static str,
    },
    /// The directory belongs to another user.
    #[error(
        "{} is owned by uid {owner}, not by you (uid {me}): its owner could read and plant \
         files there. Have it removed (as root: `rm -r {}`) or run as uid {owner}",
        path.display(), path.display()
    )]
    NotOwned {
        /// The directory's path.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// The effective uid.
        me: u32,
    },
    /// The directory's mode is neither `0700` nor `0711`.
    #[error(
        "{} has mode {mode:03o}, not 700 (or 711): while it was open to others anything may have \
         been planted in it, so chimaera does not repair it. Remove it (`rm -r {}`; stop \
         this user's runtimes first): the next start creates it with mode 700",
        path.display(), path.display()
    )]
    BadMode {
        /// The directory's path.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The parent could let another user replace the directory.
    #[error(
        "{} cannot safely hold chimaera's directory: {reason}; set {env} to a directory \
         owned by root or by you that only its owner may write, or that is sticky like \
         /dev/shm",
        path.display(), env = naming::PARENT_DIR_ENV
    )]
    UnsafeParent {
        /// The parent's path.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Any other system error.
    #[error("{action} {} failed: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// The system error.
        #[source]
        source: io::Error,
    },
}

/// Why a file in the user directory could not be opened, created or removed.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// No file of that name.
    #[error("{} does not exist", path.display())]
    NotFound {
        /// The file.
        path: PathBuf,
    },
    /// A file of that name is already there (when creating).
    #[error("{} already exists", path.display())]
    Exists {
        /// The file.
        path: PathBuf,
    },
    /// A symbolic link sits at the name; it was not followed.
    #[error(
        "{} is a symbolic link; chimaera never follows links in its directory and did not \
         touch what it points to. Inspect it and remove it (`rm {}`)",
        path.display(), path.display()
    )]
    Symlink {
        /// The file.
        path: PathBuf,
    },
    /// Something other than a regular file (or the socket asked for) sits at the name.
    #[error(
        "{} is {kind}, not {wanted}; chimaera did not open it for use. Inspect it and \
         remove it (`rm {}`)",
        path.display(), path.display()
    )]
    WrongKind {
        /// The file.
        path: PathBuf,
        /// What is there ("a FIFO", "a directory", …).
        kind: &'static str,
        /// What should be there.
        wanted: &'static str,
    },
    /// The file belongs to another user.
    #[error(
        "{} is owned by uid {owner}, not by you (uid {me}); remove it or run as uid {owner}",
        path.display()
    )]
    NotOwned {
        /// The file.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// The effective uid.
        me: u32,
    },
    /// Group or others have some permission on the file.
    #[error(
        "{} has mode {mode:03o}, open to other users (want 600); remove it",
        path.display()
    )]
    OpenToOthers {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The file has more than one name: it may be another file linked here.
    #[error(
        "{} has {links} hard links (chimaera's files have one): it may be another file \
         linked here; remove the name (`rm {}`)",
        path.display(), path.display()
    )]
    HardLinked {
        /// The file.
        path: PathBuf,
        /// Its link count.
        links: u64,
    },
    /// Any other system error.
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

/// How to open an existing file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// `O_RDONLY`: enough to probe a lock.
    ReadOnly,
    /// `O_RDWR`: to map a segment or write a pid.
    ReadWrite,
}

/// The verified user directory, held open (see the module docs).
///
/// ```no_run
/// use chimaera_core::shm::{InstanceName, RuntimeDir, ShmName};
/// let dir = RuntimeDir::for_user()?; // /dev/shm/chimaera-{user}, mode 0700, ours
/// let instance = InstanceName::new("demo").unwrap();
/// let socket = dir.path_of(&ShmName::socket(&instance));
/// println!("the runtime of `demo` listens on {}", socket.display());
/// # Ok::<(), chimaera_core::shm::DirError>(())
/// ```
#[derive(Debug)]
pub struct RuntimeDir {
    fd: OwnedFd,
    path: PathBuf,
}

impl RuntimeDir {
    /// The user directory in its usual place ([`naming::user_dir`]), created if missing.
    pub fn for_user() -> Result<RuntimeDir, DirError> {
        RuntimeDir::open_in(naming::parent_dir())
    }

    /// The user directory `chimaera-{user}` inside `parent`, created if missing. For
    /// tests and tools that keep their files apart; runtimes and clients use
    /// [`RuntimeDir::for_user`].
    pub fn open_in(parent: &Path) -> Result<RuntimeDir, DirError> {
        let parent_fd = open_parent(parent)?;
        let name = naming::user_dir_name();
        let path = parent.join(&name);
        let io = |action, errno: Errno| DirError::Io {
            action,
            path: path.clone(),
            source: errno.into(),
        };
        let created = match rustix::fs::mkdirat(&parent_fd, &name, Mode::from(DIR_MODE)) {
            Ok(()) => true,
            Err(Errno::EXIST) => false,
            Err(errno) => return Err(io("creating", errno)),
        };
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = match rustix::fs::openat(&parent_fd, &name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(errno @ (Errno::LOOP | Errno::NOTDIR)) => {
                return Err(match lstat_kind(&parent_fd, &name) {
                    Some(FileType::Symlink) => DirError::Symlink { path },
                    Some(kind) => DirError::NotADirectory {
                        path,
                        kind: describe(kind),
                    },
                    None => io("opening", errno),
                })
            }
            Err(errno) => return Err(io("opening", errno)),
        };
        let me = rustix::process::geteuid().as_raw();
        let mut stat = rustix::fs::fstat(&fd).map_err(|errno| io("inspecting", errno))?;
        if created && stat.st_uid == me && permissions(&stat) != DIR_MODE {
            // Ours, just made: the umask took bits away. Put them back before any use.
            rustix::fs::fchmod(&fd, Mode::from(DIR_MODE))
                .map_err(|errno| io("setting the mode of", errno))?;
            stat = rustix::fs::fstat(&fd).map_err(|errno| io("inspecting", errno))?;
        }
        if stat.st_uid != me {
            return Err(DirError::NotOwned {
                path,
                owner: stat.st_uid,
                me,
            });
        }
        if !matches!(permissions(&stat), DIR_MODE | DIR_MODE_SEARCHABLE) {
            return Err(DirError::BadMode {
                path,
                mode: permissions(&stat),
            });
        }
        Ok(RuntimeDir { fd, path })
    }

    /// Lets other users search the directory (mode `0711`): a runtime whose config grants
    /// other uids or gids access opens it so they can reach its socket by exact name;
    /// they still cannot list it, nor create or remove anything. The directory is shared
    /// by every instance of the user, so it is never closed again by a runtime without
    /// grants (that would lock out another runtime's granted users); every file in it
    /// stays `0600` and the socket's gate is `SO_PEERCRED`.
    pub fn open_to_search(&self) -> Result<(), DirError> {
        rustix::fs::fchmod(&self.fd, Mode::from(DIR_MODE_SEARCHABLE)).map_err(|errno| {
            DirError::Io {
                action: "setting the mode of",
                path: self.path.clone(),
                source: errno.into(),
            }
        })
    }

    /// The directory's path (for messages, and for calls that take only a path).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path of `name` in this directory. Safe to hand to calls that take only a path
    /// (`bind`, `connect`): no other user can replace the verified directory. Files are
    /// opened with [`RuntimeDir::open_file`] and [`RuntimeDir::create_file`] instead.
    pub fn path_of(&self, name: &ShmName) -> PathBuf {
        self.path.join(name.as_str())
    }

    /// Creates `name` (`O_CREAT | O_EXCL`, mode `0600`, read-write) and checks what was
    /// created. [`FileError::Exists`] if anything (even a dangling link) has the name.
    pub fn create_file(&self, name: &ShmName) -> Result<File, FileError> {
        self.open_checked(
            name,
            OFlags::RDWR | OFlags::CREATE | OFlags::EXCL,
            "creating",
        )
    }

    /// Opens the existing file `name`: a regular file we own, mode `0600` or narrower, one
    /// link. [`FileError::NotFound`] if there is none.
    pub fn open_file(&self, name: &ShmName, access: Access) -> Result<File, FileError> {
        let flags = match access {
            Access::ReadOnly => OFlags::RDONLY,
            Access::ReadWrite => OFlags::RDWR,
        };
        self.open_checked(name, flags, "opening")
    }

    /// Opens `name` read-write, creating it if missing (for lock files, which a dead
    /// process may have left and a live one may remove at any moment).
    pub fn open_or_create_file(&self, name: &ShmName) -> Result<File, FileError> {
        // Each turn lost a race against a remover or a creator, which a handful of
        // concurrent processes cannot keep winning.
        const RACES: usize = 100;
        for _ in 0..RACES {
            match self.create_file(name) {
                Err(FileError::Exists { .. }) => {}
                created => return created,
            }
            match self.open_file(name, Access::ReadWrite) {
                Err(FileError::NotFound { .. }) => {}
                opened => return opened,
            }
        }
        Err(FileError::Io {
            action: "opening",
            path: self.path_of(name),
            source: io::Error::other("the file kept being removed and re-created"),
        })
    }

    /// Checks that `name` is a socket owned by the effective uid, without following a
    /// link (for a client about to `connect` to [`RuntimeDir::path_of`] it). A socket's
    /// mode is not checked: `bind` sets it from the umask, and the directory keeps others
    /// out anyway.
    pub fn check_socket(&self, name: &ShmName) -> Result<(), FileError> {
        let path = self.path_of(name);
        let stat = self.lstat(name)?.ok_or(FileError::NotFound { path })?;
        self.check_kind_and_owner(name, &stat, FileType::Socket, "a socket")
    }

    /// Removes the name `name` (whatever it is; `unlinkat` never follows a link). True if
    /// something was removed, false if nothing had the name.
    pub fn remove(&self, name: &ShmName) -> Result<bool, FileError> {
        match rustix::fs::unlinkat(&self.fd, name.as_str(), AtFlags::empty()) {
            Ok(()) => Ok(true),
            Err(Errno::NOENT) => Ok(false),
            Err(Errno::ISDIR) => Err(FileError::WrongKind {
                path: self.path_of(name),
                kind: "a directory",
                wanted: "a file",
            }),
            Err(errno) => Err(FileError::Io {
                action: "removing",
                path: self.path_of(name),
                source: errno.into(),
            }),
        }
    }

    /// Removes `name` if it is a regular file or a socket we own (what a dead runtime
    /// leaves); refuses, and leaves in place, anything else. True if removed.
    pub fn remove_own(&self, name: &ShmName) -> Result<bool, FileError> {
        let Some(stat) = self.lstat(name)? else {
            return Ok(false);
        };
        let kind = FileType::from_raw_mode(stat.st_mode);
        let wanted = if kind == FileType::Socket {
            FileType::Socket
        } else {
            FileType::RegularFile
        };
        self.check_kind_and_owner(name, &stat, wanted, "a regular file or a socket")?;
        self.remove(name)
    }

    /// The size in bytes of whatever `name` names now (a link's own size, never its
    /// target's); `None` if nothing has the name or it cannot be inspected.
    pub fn size_of(&self, name: &ShmName) -> Option<u64> {
        self.lstat(name)
            .ok()
            .flatten()
            .map(|stat| u64::try_from(stat.st_size).unwrap_or(0))
    }

    /// (device, inode) of whatever `name` names now, without following a link; `None` if
    /// nothing has the name or it cannot be inspected.
    pub fn identity_of(&self, name: &ShmName) -> Option<(u64, u64)> {
        self.lstat(name).ok().flatten().map(|stat| identity(&stat))
    }

    /// The names of `instance`'s files here (its socket and any named segment; not the
    /// runtime lock), sorted.
    pub fn instance_files(&self, instance: &InstanceName) -> Result<Vec<ShmName>, DirError> {
        let io = |errno: Errno| DirError::Io {
            action: "listing",
            path: self.path.clone(),
            source: errno.into(),
        };
        let mut found = Vec::new();
        for entry in rustix::fs::Dir::read_from(&self.fd).map_err(io)? {
            let entry = entry.map_err(io)?;
            if let Ok(file) = entry.file_name().to_str() {
                if naming::is_instance_file(instance, file) {
                    found.push(file.to_owned());
                }
            }
        }
        found.sort();
        Ok(found
            .into_iter()
            .map(|file| ShmName::listed(instance, file))
            .collect())
    }

    fn open_checked(
        &self,
        name: &ShmName,
        flags: OFlags,
        action: &'static str,
    ) -> Result<File, FileError> {
        let path = || self.path_of(name);
        let fd = rustix::fs::openat(
            &self.fd,
            name.as_str(),
            flags | OPEN_FLAGS,
            Mode::from(FILE_MODE),
        )
        .map_err(|errno| match errno {
            Errno::NOENT => FileError::NotFound { path: path() },
            Errno::EXIST => FileError::Exists { path: path() },
            // ELOOP: a symlink under O_NOFOLLOW; EISDIR: a directory opened for writing;
            // ENXIO: a socket, or a FIFO with no reader opened write-only.
            Errno::LOOP | Errno::ISDIR | Errno::NXIO => match self.lstat(name) {
                Ok(Some(stat)) => wrong_kind(path(), &stat),
                _ => FileError::Io {
                    action,
                    path: path(),
                    source: errno.into(),
                },
            },
            _ => FileError::Io {
                action,
                path: path(),
                source: errno.into(),
            },
        })?;
        let stat = rustix::fs::fstat(&fd).map_err(|errno| FileError::Io {
            action: "inspecting",
            path: path(),
            source: errno.into(),
        })?;
        self.check_kind_and_owner(name, &stat, FileType::RegularFile, "a regular file")?;
        if permissions(&stat) & 0o077 != 0 {
            return Err(FileError::OpenToOthers {
                path: path(),
                mode: permissions(&stat),
            });
        }
        #[allow(clippy::useless_conversion)] // `st_nlink` is a u32 on some targets
        let links = u64::from(stat.st_nlink);
        if links == 0 {
            // Removed between our open and our look (a runtime stopping removes its lock
            // file): the same as coming a moment later, not a planted link.
            return Err(FileError::NotFound { path: path() });
        }
        if links != 1 {
            return Err(FileError::HardLinked {
                path: path(),
                links,
            });
        }
        Ok(File::from(fd))
    }

    fn check_kind_and_owner(
        &self,
        name: &ShmName,
        stat: &Stat,
        wanted: FileType,
        wanted_text: &'static str,
    ) -> Result<(), FileError> {
        let kind = FileType::from_raw_mode(stat.st_mode);
        if kind != wanted {
            let mut err = wrong_kind(self.path_of(name), stat);
            if let FileError::WrongKind { wanted, .. } = &mut err {
                *wanted = wanted_text;
            }
            return Err(err);
        }
        let me = rustix::process::geteuid().as_raw();
        if stat.st_uid != me {
            return Err(FileError::NotOwned {
                path: self.path_of(name),
                owner: stat.st_uid,
                me,
            });
        }
        Ok(())
    }

    /// `statat` without following a link; `None` if nothing has the name.
    fn lstat(&self, name: &ShmName) -> Result<Option<Stat>, FileError> {
        match rustix::fs::statat(&self.fd, name.as_str(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) => Ok(Some(stat)),
            Err(Errno::NOENT) => Ok(None),
            Err(errno) => Err(FileError::Io {
                action: "inspecting",
                path: self.path_of(name),
                source: errno.into(),
            }),
        }
    }
}

/// (device, inode) of an open file: compare with [`RuntimeDir::identity_of`] to learn
/// whether a name still names it.
pub fn file_identity(file: &File) -> io::Result<(u64, u64)> {
    Ok(identity(&rustix::fs::fstat(file)?))
}

fn identity(stat: &Stat) -> (u64, u64) {
    (stat.st_dev, stat.st_ino)
}

/// Opens `parent` (an absolute path; following links: it is the administrator's choice)
/// and checks that no other user can replace entries in it.
fn open_parent(parent: &Path) -> Result<OwnedFd, DirError> {
    let io = |action, errno: Errno| DirError::Io {
        action,
        path: parent.to_owned(),
        source: errno.into(),
    };
    if !parent.is_absolute() {
        // A runtime and its clients may run in different working directories.
        return Err(DirError::UnsafeParent {
            path: parent.to_owned(),
            reason: "it is a relative path, which processes in other working directories \
                     would resolve elsewhere"
                .to_owned(),
        });
    }
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let fd =
        rustix::fs::open(parent, flags, Mode::empty()).map_err(|errno| io("opening", errno))?;
    let stat = rustix::fs::fstat(&fd).map_err(|errno| io("inspecting", errno))?;
    let me = rustix::process::geteuid().as_raw();
    let unsafe_parent = |reason: String| DirError::UnsafeParent {
        path: parent.to_owned(),
        reason,
    };
    if stat.st_uid != 0 && stat.st_uid != me {
        return Err(unsafe_parent(format!(
            "it is owned by uid {}, neither root nor you (uid {me})",
            stat.st_uid
        )));
    }
    let sticky = stat.st_mode & Mode::SVTX.bits() != 0;
    if permissions(&stat) & 0o022 != 0 && !sticky {
        return Err(unsafe_parent(format!(
            "its mode is {:03o}: others may write it and it is not sticky, so they could \
             replace chimaera's directory",
            permissions(&stat)
        )));
    }
    Ok(fd)
}

/// The kind of whatever `name` in `dir` is, without following a link.
fn lstat_kind(dir: impl AsFd, name: &str) -> Option<FileType> {
    rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
        .ok()
        .map(|stat| FileType::from_raw_mode(stat.st_mode))
}

/// The error for a name whose file is of the wrong kind.
fn wrong_kind(path: PathBuf, stat: &Stat) -> FileError {
    match FileType::from_raw_mode(stat.st_mode) {
        FileType::Symlink => FileError::Symlink { path },
        kind => FileError::WrongKind {
            path,
            kind: describe(kind),
            wanted: "a regular file",
        },
    }
}

fn permissions(stat: &Stat) -> u32 {
    stat.st_mode & 0o777
}

fn describe(kind: FileType) -> &'static str {
    match kind {
        FileType::RegularFile => "a regular file",
        FileType::Directory => "a directory",
        FileType::Symlink => "a symbolic link",
        FileType::Fifo => "a FIFO (named pipe)",
        FileType::Socket => "a socket",
        FileType::CharacterDevice => "a character device",
        FileType::BlockDevice => "a block device",
        _ => "a file of unknown kind",
    }
}

/// Every segment and the socket of `instance` now in the user directory
/// (not the runtime lock), sorted. For tests and tools; the runtime's own clean-up goes
/// through [`crate::shm::RuntimeLock::remove_stale`].
pub fn instance_files(instance: &InstanceName) -> Result<Vec<PathBuf>, DirError> {
    let dir = RuntimeDir::for_user()?;
    Ok(dir
        .instance_files(instance)?
        .iter()
        .map(|name| dir.path_of(name))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shm::test_util::instance;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A test's own parent directory (mode 755, ours), removed when dropped.
    struct Parent(PathBuf);

    impl Parent {
        fn new(tag: &str) -> Parent {
            static NEXT: AtomicU32 = AtomicU32::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let path = PathBuf::from(format!("/dev/shm/ut-dir-{}-{n}-{tag}", std::process::id()));
            std::fs::create_dir(&path).unwrap();
            std::fs::set_permissions(&path, PermissionsExt::from_mode(0o755)).unwrap();
            Parent(path)
        }

        /// Where the user directory goes in it.
        fn user_dir(&self) -> PathBuf {
            self.0.join(naming::user_dir_name())
        }
    }

    impl Drop for Parent {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn set_mode(path: &Path, mode: u32) {
        std::fs::set_permissions(path, PermissionsExt::from_mode(mode)).unwrap();
    }

    /// Whether we may hand files to another uid (tests of foreign ownership need it; CI
    /// runs as root).
    fn can_chown() -> bool {
        rustix::process::geteuid().is_root()
    }

    const NOBODY: u32 = 65534;

    #[test]
    fn the_directory_is_created_0700_and_reopened() {
        let parent = Parent::new("create");
        let dir = RuntimeDir::open_in(&parent.0).unwrap();
        assert_eq!(dir.path(), parent.user_dir());
        let meta = std::fs::symlink_metadata(dir.path()).unwrap();
        assert!(meta.is_dir());
        assert_eq!(meta.mode() & 0o7777, 0o700);
        assert_eq!(meta.uid(), rustix::process::geteuid().as_raw());
        drop(RuntimeDir::open_in(&parent.0).unwrap());
    }

    #[test]
    fn a_symlink_at_the_directory_name_is_refused_and_not_followed() {
        let parent = Parent::new("dirlink");
        let victim = parent.0.join("victim");
        std::fs::create_dir(&victim).unwrap();
        set_mode(&victim, 0o700);
        std::os::unix::fs::symlink(&victim, parent.user_dir()).unwrap();
        let err = RuntimeDir::open_in(&parent.0).unwrap_err();
        assert!(matches!(err, DirError::Symlink { .. }), "{err}");
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert!(
            err.to_string()
                .contains(&*parent.user_dir().to_string_lossy()),
            "{err}"
        );
        assert_eq!(std::fs::read_dir(&victim).unwrap().count(), 0);
    }

    #[test]
    fn a_file_at_the_directory_name_is_refused() {
        let parent = Parent::new("dirfile");
        std::fs::write(parent.user_dir(), "x").unwrap();
        let err = RuntimeDir::open_in(&parent.0).unwrap_err();
        assert!(
            matches!(
                err,
                DirError::NotADirectory {
                    kind: "a regular file",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn a_directory_open_to_others_is_refused_not_repaired() {
        let parent = Parent::new("dirmode");
        std::fs::create_dir(parent.user_dir()).unwrap();
        set_mode(&parent.user_dir(), 0o777);
        let err = RuntimeDir::open_in(&parent.0).unwrap_err();
        assert!(
            matches!(err, DirError::BadMode { mode: 0o777, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("rm -r"), "{err}");
        let mode = std::fs::metadata(parent.user_dir()).unwrap().mode();
        assert_eq!(mode & 0o777, 0o777, "the mode was changed");
    }

    #[test]
    fn a_directory_of_another_user_is_refused() {
        if !can_chown() {
            eprintln!("skipped: needs root to give a directory to uid {NOBODY}");
            return;
        }
        let parent = Parent::new("dirowner");
        std::fs::create_dir(parent.user_dir()).unwrap();
        set_mode(&parent.user_dir(), 0o700);
        std::os::unix::fs::chown(parent.user_dir(), Some(NOBODY), Some(NOBODY)).unwrap();
        let err = RuntimeDir::open_in(&parent.0).unwrap_err();
        assert!(
            matches!(err, DirError::NotOwned { owner: NOBODY, .. }),
            "{err}"
        );
    }

    #[test]
    fn a_parent_others_may_write_must_be_sticky() {
        let parent = Parent::new("parent");
        set_mode(&parent.0, 0o777);
        let err = RuntimeDir::open_in(&parent.0).unwrap_err();
        assert!(matches!(err, DirError::UnsafeParent { .. }), "{err}");
        assert!(err.to_string().contains("CHI_SHM_DIR"), "{err}");
        assert!(!parent.user_dir().exists());
        set_mode(&parent.0, 0o1777);
        RuntimeDir::open_in(&parent.0).unwrap();
        let err = RuntimeDir::open_in(Path::new("relative/dir")).unwrap_err();
        assert!(matches!(err, DirError::UnsafeParent { .. }), "{err}");
        assert!(err.to_string().contains("relative"), "{err}");
        if can_chown() {
            set_mode(&parent.0, 0o755);
            std::os::unix::fs::chown(&parent.0, Some(NOBODY), None).unwrap();
            let err = RuntimeDir::open_in(&parent.0).unwrap_err();
            assert!(matches!(err, DirError::UnsafeParent { .. }), "{err}");
        }
    }

    /// A fresh user directory and a name in it.
    fn dir_and_name(tag: &str) -> (Parent, RuntimeDir, ShmName) {
        let parent = Parent::new(tag);
        let dir = RuntimeDir::open_in(&parent.0).unwrap();
        let name = ShmName::segment(&instance(tag), "main").unwrap();
        (parent, dir, name)
    }

    #[test]
    fn files_are_created_0600_and_opened_checked() {
        let (_parent, dir, name) = dir_and_name("files");
        assert!(matches!(
            dir.open_file(&name, Access::ReadOnly),
            Err(FileError::NotFound { .. })
        ));
        let file = dir.create_file(&name).unwrap();
        let meta = file.metadata().unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert!(matches!(
            dir.create_file(&name),
            Err(FileError::Exists { .. })
        ));
        let opened = dir.open_file(&name, Access::ReadWrite).unwrap();
        let identity = file_identity(&file).unwrap();
        assert_eq!(file_identity(&opened).unwrap(), identity);
        assert_eq!(dir.identity_of(&name), Some(identity));
        assert_eq!(
            file_identity(&dir.open_or_create_file(&name).unwrap()).unwrap(),
            identity
        );
        assert!(dir.remove(&name).unwrap());
        assert!(!dir.remove(&name).unwrap());
        assert_eq!(dir.identity_of(&name), None);
        dir.open_or_create_file(&name).unwrap();
        assert!(dir.path_of(&name).exists());
    }

    #[test]
    fn a_symlink_at_a_file_name_is_never_followed() {
        let (parent, dir, name) = dir_and_name("filelink");
        let victim = parent.0.join("victim");
        std::fs::write(&victim, "precious").unwrap();
        set_mode(&victim, 0o600);
        std::os::unix::fs::symlink(&victim, dir.path_of(&name)).unwrap();
        for access in [Access::ReadOnly, Access::ReadWrite] {
            let err = dir.open_file(&name, access).unwrap_err();
            assert!(matches!(err, FileError::Symlink { .. }), "{err}");
            assert!(err.to_string().contains("did not touch"), "{err}");
        }
        let err = dir.open_or_create_file(&name).unwrap_err();
        assert!(matches!(err, FileError::Symlink { .. }), "{err}");
        assert!(matches!(
            dir.create_file(&name),
            Err(FileError::Exists { .. })
        ));
        let err = dir.remove_own(&name).unwrap_err();
        assert!(matches!(err, FileError::Symlink { .. }), "{err}");
        assert!(std::fs::symlink_metadata(dir.path_of(&name)).is_ok());
        // A dangling link is no better.
        std::fs::remove_file(&victim).unwrap();
        let err = dir.open_or_create_file(&name).unwrap_err();
        assert!(matches!(err, FileError::Symlink { .. }), "{err}");
        assert!(
            !victim.exists(),
            "the link was followed to create its target"
        );
        // Removing the name removes the link, not its target.
        std::fs::write(&victim, "precious").unwrap();
        assert!(dir.remove(&name).unwrap());
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    }

    #[test]
    fn a_fifo_at_a_file_name_is_refused_without_blocking() {
        let (_parent, dir, name) = dir_and_name("fifo");
        rustix::fs::mknodat(&dir.fd, name.as_str(), FileType::Fifo, Mode::from(0o600), 0).unwrap();
        for access in [Access::ReadOnly, Access::ReadWrite] {
            let err = dir.open_file(&name, access).unwrap_err();
            assert!(
                matches!(
                    err,
                    FileError::WrongKind {
                        kind: "a FIFO (named pipe)",
                        ..
                    }
                ),
                "{err}"
            );
        }
        assert!(dir.open_or_create_file(&name).is_err());
        assert!(dir.remove_own(&name).is_err());
        assert!(
            dir.identity_of(&name).is_some(),
            "remove_own removed a FIFO"
        );
    }

    #[test]
    fn a_directory_at_a_file_name_is_refused() {
        let (_parent, dir, name) = dir_and_name("subdir");
        std::fs::create_dir(dir.path_of(&name)).unwrap();
        for access in [Access::ReadOnly, Access::ReadWrite] {
            let err = dir.open_file(&name, access).unwrap_err();
            assert!(
                matches!(
                    err,
                    FileError::WrongKind {
                        kind: "a directory",
                        ..
                    }
                ),
                "{err}"
            );
        }
        assert!(dir.remove(&name).is_err());
    }

    #[test]
    fn files_open_to_others_or_hard_linked_are_refused() {
        let (parent, dir, name) = dir_and_name("perm");
        drop(dir.create_file(&name).unwrap());
        set_mode(&dir.path_of(&name), 0o640);
        let err = dir.open_file(&name, Access::ReadOnly).unwrap_err();
        assert!(
            matches!(err, FileError::OpenToOthers { mode: 0o640, .. }),
            "{err}"
        );
        set_mode(&dir.path_of(&name), 0o600);
        dir.open_file(&name, Access::ReadOnly).unwrap();

        let other = parent.0.join("other");
        std::fs::hard_link(dir.path_of(&name), &other).unwrap();
        let err = dir.open_file(&name, Access::ReadWrite).unwrap_err();
        assert!(
            matches!(err, FileError::HardLinked { links: 2, .. }),
            "{err}"
        );
    }

    #[test]
    fn a_file_removed_while_it_is_opened_is_not_found_rather_than_hard_linked() {
        let (_parent, dir, name) = dir_and_name("racing");
        let dir = std::sync::Arc::new(dir);
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let churn = {
            let (dir, name, stop) = (dir.clone(), name.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    drop(dir.create_file(&name));
                    let _ = dir.remove_own(&name);
                }
            })
        };
        for _ in 0..20_000 {
            match dir.open_file(&name, Access::ReadOnly) {
                Ok(_) | Err(FileError::NotFound { .. }) => {}
                Err(err) => {
                    stop.store(true, std::sync::atomic::Ordering::Relaxed);
                    panic!("an open racing a removal failed: {err}");
                }
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        churn.join().unwrap();
    }

    #[test]
    fn files_of_another_user_are_refused() {
        if !can_chown() {
            eprintln!("skipped: needs root to give a file to uid {NOBODY}");
            return;
        }
        let (_parent, dir, name) = dir_and_name("owner");
        drop(dir.create_file(&name).unwrap());
        std::os::unix::fs::chown(dir.path_of(&name), Some(NOBODY), Some(NOBODY)).unwrap();
        let err = dir.open_file(&name, Access::ReadWrite).unwrap_err();
        assert!(
            matches!(err, FileError::NotOwned { owner: NOBODY, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("65534"), "{err}");
        assert!(dir.open_or_create_file(&name).is_err());
        assert!(dir.remove_own(&name).is_err());
        assert!(dir.path_of(&name).exists());
    }

    #[test]
    fn sockets_are_checked_without_following() {
        let (parent, dir, name) = dir_and_name("sock");
        let socket = ShmName::socket(name.instance());
        assert!(matches!(
            dir.check_socket(&socket),
            Err(FileError::NotFound { .. })
        ));
        let listener = std::os::unix::net::UnixListener::bind(dir.path_of(&socket)).unwrap();
        dir.check_socket(&socket).unwrap();
        // A socket is not a file to open.
        let err = dir.open_file(&socket, Access::ReadWrite).unwrap_err();
        assert!(
            matches!(
                err,
                FileError::WrongKind {
                    kind: "a socket",
                    ..
                }
            ),
            "{err}"
        );

        // A link to a socket elsewhere is refused.
        let elsewhere = parent.0.join("elsewhere.sock");
        let _other = std::os::unix::net::UnixListener::bind(&elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, dir.path_of(&name)).unwrap();
        let err = dir.check_socket(&name).unwrap_err();
        assert!(matches!(err, FileError::Symlink { .. }), "{err}");

        // A dead runtime's socket is removed by remove_own.
        drop(listener);
        assert!(dir.remove_own(&socket).unwrap());
        assert!(!dir.remove_own(&socket).unwrap());
    }

    #[test]
    fn instance_files_lists_one_instance() {
        let (_parent, dir, name) = dir_and_name("list");
        let inst = name.instance().clone();
        let neighbour = InstanceName::new(&format!("{inst}-x")).unwrap();
        for file in [
            name.clone(),
            ShmName::segment(&inst, "data").unwrap(),
            ShmName::socket(&inst),
            ShmName::runtime_lock(&inst),
            ShmName::segment(&neighbour, "main").unwrap(),
        ] {
            drop(dir.create_file(&file).unwrap());
        }
        let listed: Vec<String> = dir
            .instance_files(&inst)
            .unwrap()
            .iter()
            .map(|name| name.as_str().to_owned())
            .collect();
        assert_eq!(
            listed,
            [
                format!("{inst}.sock"),
                format!("{inst}@data"),
                format!("{inst}@main"),
            ]
        );
    }
}
