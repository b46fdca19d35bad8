//! The state directory of a local dev cluster: `{user dir}/cluster+{name}`, next to the
//! instances' own files, holding the cluster's manifest, hostfile, secret, per-node
//! configs, TLS files and logs.
//!
//! # Invariants
//!
//! * **Ours and closed.** The user directory is the one the runtime verifies
//!   ([`instance::checked_user_dir`]: ours, `0700`/`0711`, in a parent no other user can
//!   rename it in). The state directory is created `0700` in it, opened with
//!   `O_DIRECTORY | O_NOFOLLOW` (a planted symlink at its name is refused, never
//!   followed) and checked by `fstat` on that descriptor: a directory, owned by the
//!   effective uid, mode `0700`. Every file in it is created relative to that descriptor
//!   with `O_CREAT | O_EXCL | O_NOFOLLOW`, mode `0600`, and read with `O_NOFOLLOW`, and
//!   must be a regular file of ours.
//! * **One command at a time.** `start` and `stop` hold an exclusive `flock` on the
//!   directory's descriptor for their whole run, so two of them never interleave on one
//!   cluster; a second one fails at once, naming the cluster. After taking the lock the
//!   name is looked up again: a directory removed (by the `stop` that held the lock)
//!   between our open and our lock is not written to.
//! * **No stray names.** The `+` in the directory's name is not allowed in instance
//!   names, so no instance's files (`{instance}.lock`, `{instance}.sock`, `{instance}@…`)
//!   can be mistaken for a cluster, nor a cluster for an instance's files.
//! * Removal is `unlinkat` of the names in the directory (never what a name points to),
//!   then of the directory itself, all under the lock.
use chimaera_core::instance::{self, DirError};
use rustix::fs::{AtFlags, FileType, FlockOperation, Mode, OFlags};
use rustix::io::Errno;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

/// Mode of the state directory.
const DIR_MODE: u32 = 0o700;
/// Mode of every file in it.
const FILE_MODE: u32 = 0o600;
/// The largest file read back from the directory (manifests and configs are small).
const MAX_READ_BYTES: u64 = 1 << 20;
/// What every state directory's name starts with.
const DIR_PREFIX: &str = "cluster+";

/// Why the state directory of a cluster cannot be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StateError {
    /// The per-user directory is unusable.
    #[error("{0}")]
    UserDir(#[from] DirError),
    /// No cluster of that name has state here.
    #[error("no cluster `{name}`: {} does not exist", path.display())]
    Missing {
        /// The cluster.
        name: String,
        /// Where its state would be.
        path: PathBuf,
    },
    /// Something that is not our directory sits at its name.
    #[error(
        "{} is {what}, not a cluster state directory of yours; chimaera does not follow or \
         touch it. Inspect it and remove it (`rm {}`)",
        path.display(), path.display()
    )]
    Foreign {
        /// The path.
        path: PathBuf,
        /// What is there.
        what: String,
    },
    /// Another `cluster start` or `cluster stop` holds the cluster.
    #[error(
        "another `cluster start` or `cluster stop` of cluster `{name}` is running; wait for it \
         to end"
    )]
    Busy {
        /// The cluster.
        name: String,
    },
    /// The directory went away while we opened it.
    #[error(
        "the state directory {} was removed while this command opened it (a `cluster stop` \
         ended meanwhile); run the command again",
        path.display()
    )]
    Vanished {
        /// The path.
        path: PathBuf,
    },
    /// A system call failed.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was done.
        action: &'static str,
        /// On what.
        path: PathBuf,
        /// What the system said.
        source: io::Error,
    },
}

/// The state directory of one cluster, open, verified and (for `start` and `stop`) locked.
pub(crate) struct StateDir {
    parent: OwnedFd,
    fd: OwnedFd,
    name: String,
    path: PathBuf,
    /// Whether this command created it (a fresh cluster) rather than found it.
    created: bool,
}

impl StateDir {
    /// The state directory of cluster `name`, created if missing, locked for this command.
    pub(crate) fn create_locked(name: &str) -> Result<StateDir, StateError> {
        Self::open_with(name, true, true)
    }

    /// The existing state directory of cluster `name`, locked for this command.
    pub(crate) fn open_locked(name: &str) -> Result<StateDir, StateError> {
        Self::open_with(name, false, true)
    }

    /// The existing state directory of cluster `name`, to read only (not locked: a
    /// `start` or `stop` may hold it meanwhile).
    pub(crate) fn open_unlocked(name: &str) -> Result<StateDir, StateError> {
        Self::open_with(name, false, false)
    }

    fn open_with(name: &str, create: bool, lock: bool) -> Result<StateDir, StateError> {
        let user_dir = instance::checked_user_dir()?;
        let path = user_dir.join(format!("{DIR_PREFIX}{name}"));
        let io = |action, path: &Path| {
            let path = path.to_owned();
            move |errno: Errno| StateError::Io {
                action,
                path,
                source: errno.into(),
            }
        };
        let directory = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let parent =
            rustix::fs::open(&user_dir, directory, Mode::empty()).map_err(io("open", &user_dir))?;
        let entry = format!("{DIR_PREFIX}{name}");
        let created = create
            && match rustix::fs::mkdirat(&parent, &entry, Mode::from(DIR_MODE)) {
                Ok(()) => true,
                Err(Errno::EXIST) => false,
                Err(errno) => return Err(io("create", &path)(errno)),
            };
        let fd = match rustix::fs::openat(&parent, &entry, directory, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => {
                return Err(StateError::Missing {
                    name: name.to_owned(),
                    path,
                })
            }
            Err(errno @ (Errno::LOOP | Errno::NOTDIR)) => {
                let what = match rustix::fs::statat(&parent, &entry, AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(stat) => describe(FileType::from_raw_mode(stat.st_mode)).to_owned(),
                    Err(_) => format!("not a directory ({errno})"),
                };
                return Err(StateError::Foreign { path, what });
            }
            Err(errno) => return Err(io("open", &path)(errno)),
        };
        let mut stat = rustix::fs::fstat(&fd).map_err(io("inspect", &path))?;
        let me = rustix::process::geteuid().as_raw();
        if created && stat.st_uid == me && stat.st_mode & 0o7777 != DIR_MODE {
            // Just made by us: the umask took bits away. Put them back before any use.
            rustix::fs::fchmod(&fd, Mode::from(DIR_MODE)).map_err(io("set the mode of", &path))?;
            stat = rustix::fs::fstat(&fd).map_err(io("inspect", &path))?;
        }
        if stat.st_uid != me {
            return Err(StateError::Foreign {
                path,
                what: format!("a directory owned by uid {}", stat.st_uid),
            });
        }
        if stat.st_mode & 0o7777 != DIR_MODE {
            return Err(StateError::Foreign {
                path,
                what: format!("a directory with mode {:03o}", stat.st_mode & 0o7777),
            });
        }
        if lock {
            match rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => {}
                Err(Errno::WOULDBLOCK) => {
                    return Err(StateError::Busy {
                        name: name.to_owned(),
                    })
                }
                Err(errno) => return Err(io("lock", &path)(errno)),
            }
        }
        // Still the directory at that name (not one a finished `stop` just removed).
        match rustix::fs::statat(&parent, &entry, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(now) if (now.st_dev, now.st_ino) == (stat.st_dev, stat.st_ino) => {}
            _ => return Err(StateError::Vanished { path }),
        }
        Ok(StateDir {
            parent,
            fd,
            name: entry,
            path,
            created,
        })
    }

    /// The directory's path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The path of `file` in it (for the runtime processes, which take paths; the
    /// directory is ours and closed, so the path names what we wrote).
    pub(crate) fn path_of(&self, file: &str) -> PathBuf {
        self.path.join(file)
    }

    /// Whether this command created the directory.
    pub(crate) fn created(&self) -> bool {
        self.created
    }

    /// Creates `file` (it must not exist) with mode `0600`, and returns it open for writing.
    pub(crate) fn create_file(&self, file: &str) -> Result<File, StateError> {
        let flags = OFlags::WRONLY
            | OFlags::CREATE
            | OFlags::EXCL
            | OFlags::NOFOLLOW
            | OFlags::CLOEXEC
            | OFlags::NOCTTY;
        rustix::fs::openat(&self.fd, file, flags, Mode::from(FILE_MODE))
            .map(File::from)
            .map_err(|errno| StateError::Io {
                action: "create",
                path: self.path_of(file),
                source: errno.into(),
            })
    }

    /// Creates `file` holding `contents`.
    pub(crate) fn write_file(&self, file: &str, contents: &[u8]) -> Result<(), StateError> {
        use std::io::Write;
        self.create_file(file)?
            .write_all(contents)
            .map_err(|source| StateError::Io {
                action: "write",
                path: self.path_of(file),
                source,
            })
    }

    /// The contents of `file`, which must be a regular file of ours; `None` if it does not
    /// exist.
    pub(crate) fn read_file(&self, file: &str) -> Result<Option<Vec<u8>>, StateError> {
        let path = self.path_of(file);
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
        let fd = match rustix::fs::openat(&self.fd, file, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Ok(None),
            Err(errno) => {
                return Err(StateError::Io {
                    action: "open",
                    path,
                    source: errno.into(),
                })
            }
        };
        let stat = rustix::fs::fstat(&fd).map_err(|errno| StateError::Io {
            action: "inspect",
            path: path.clone(),
            source: errno.into(),
        })?;
        let kind = FileType::from_raw_mode(stat.st_mode);
        if kind != FileType::RegularFile || stat.st_uid != rustix::process::geteuid().as_raw() {
            return Err(StateError::Foreign {
                path,
                what: describe(kind).to_owned(),
            });
        }
        let mut bytes = Vec::new();
        File::from(fd)
            .take(MAX_READ_BYTES)
            .read_to_end(&mut bytes)
            .map_err(|source| StateError::Io {
                action: "read",
                path,
                source,
            })?;
        Ok(Some(bytes))
    }

    /// Removes every file in the directory, keeping the directory (and the lock).
    pub(crate) fn empty(&self) -> Result<(), StateError> {
        let io = |action, errno: Errno| StateError::Io {
            action,
            path: self.path.clone(),
            source: errno.into(),
        };
        let mut names = Vec::new();
        let listing = rustix::fs::Dir::read_from(&self.fd).map_err(|errno| io("list", errno))?;
        for entry in listing {
            let entry = entry.map_err(|errno| io("list", errno))?;
            let name = entry.file_name().to_bytes();
            if name != b"." && name != b".." {
                names.push(entry.file_name().to_owned());
            }
        }
        for name in names {
            // Without AT_REMOVEDIR: a directory (which we never create) is left, reported.
            rustix::fs::unlinkat(&self.fd, name.as_c_str(), AtFlags::empty()).map_err(|errno| {
                StateError::Io {
                    action: "remove",
                    path: self.path.join(name.to_string_lossy().as_ref()),
                    source: errno.into(),
                }
            })?;
        }
        Ok(())
    }

    /// Removes the directory and everything in it.
    pub(crate) fn remove(self) -> Result<(), StateError> {
        self.empty()?;
        rustix::fs::unlinkat(&self.parent, &self.name, AtFlags::REMOVEDIR).map_err(|errno| {
            StateError::Io {
                action: "remove",
                path: self.path.clone(),
                source: errno.into(),
            }
        })
    }
}

/// The state directory of cluster `name`, for messages.
pub(crate) fn state_path(name: &str) -> PathBuf {
    instance::user_dir().join(format!("{DIR_PREFIX}{name}"))
}

fn describe(kind: FileType) -> &'static str {
    match kind {
        FileType::RegularFile => "a regular file",
        FileType::Directory => "a directory",
        FileType::Symlink => "a symbolic link",
        FileType::Fifo => "a FIFO",
        FileType::Socket => "a socket",
        FileType::CharacterDevice => "a character device",
        FileType::BlockDevice => "a block device",
        FileType::Unknown => "a file of unknown type",
    }
}
