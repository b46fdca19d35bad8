//! Names and places of the files an instance keeps on disk.
//!
//! Every file of every instance of one user lives in one directory, the **user
//! directory** `{parent}/chimaera-{user}` (mode `0700`; [`crate::shm::dir`] creates and
//! verifies it and is the only way files in it are opened). `{parent}` is `/dev/shm` (a
//! tmpfs on every Linux system), or the directory named by the environment variable
//! [`PARENT_DIR_ENV`] (`CHI_SHM_DIR`), read once per process: a runtime and its clients
//! must agree on it. One runtime **instance** (a name from the config, so several runtimes
//! and parallel tests can coexist) owns these files in it:
//!
//! | file | what |
//! | --- | --- |
//! | `{instance}.lock` | the runtime's liveness lock ([`crate::shm::liveness`]) |
//! | `{instance}.sock` | the runtime's Unix domain socket ([`ShmName::socket`]) |
//!
//! The shared memory itself has no name: each client gets its own memfd over the socket
//! ([`crate::transport::shm::handshake`]). Named segments `{instance}@{role}` ([`ShmName::segment`])
//! remain as a building block that tests use; the runtime creates none.
//!
//! `{user}` is the effective user's login name when it is made of `[A-Za-z0-9_]` only, else
//! the numeric uid; it keeps two users' directories apart.
//!
//! # Invariants
//!
//! * An [`InstanceName`] matches `[A-Za-z0-9_.-]{1,64}`; a role matches `[a-z0-9-]{1,32}`.
//!   No file name contains `/`, and none is `.` or `..`: a name always means one entry of
//!   the user directory.
//! * The map from (instance, role) to file name is one-to-one. That is why segment names
//!   put an `@` (never part of an instance name) after the instance: with `-`, instance
//!   `a`'s segment `lock` (`a-lock`) could be instance `a-lock`'s, and removing instance
//!   `a`'s stale files would delete another instance's. The socket `{instance}.sock`
//!   never ends in `.lock` and holds no `@`, so it is no other instance's file either. `is_instance_file` relies on this to
//!   pick exactly one instance's files out of the user directory.
//!
//! # Failure modes
//!
//! Bad instance or role names are a [`NameError`] saying which characters are allowed.
//! Nothing here touches the file system but the one-time lookup of the login name in
//! `/etc/passwd`; listing and opening files is [`super::dir`]'s.
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::OnceLock;

/// Where the user directory lives unless [`PARENT_DIR_ENV`] says otherwise.
pub const DEFAULT_PARENT_DIR: &str = "/dev/shm";
/// Environment variable naming another parent for the user directory (a tmpfs with more
/// room, or a test's own directory). Unset or empty: [`DEFAULT_PARENT_DIR`].
pub const PARENT_DIR_ENV: &str = "CHI_SHM_DIR";

const MAX_INSTANCE_LEN: usize = 64;
const MAX_ROLE_LEN: usize = 32;

/// A bad instance or role name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The instance name is empty, too long or has a character outside `[A-Za-z0-9_.-]`.
    #[error(
        "bad instance name `{name}`: use 1 to 64 characters from A-Z, a-z, 0-9, `_`, `.` and `-`"
    )]
    BadInstance {
        /// The refused name.
        name: String,
    },
    /// The segment role is empty, too long or has a character outside `[a-z0-9-]`.
    #[error("bad segment role `{role}`: use 1 to 32 characters from a-z, 0-9 and `-`")]
    BadRole {
        /// The refused role.
        role: String,
    },
}

/// A validated instance name: 1 to 64 characters from `[A-Za-z0-9_.-]`.
///
/// ```
/// use chimaera_core::instance::InstanceName;
/// assert!(InstanceName::new("test-42").is_ok());
/// assert!(InstanceName::new("a/b").is_err());
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InstanceName(String);

impl InstanceName {
    /// The instance used when the config names none.
    pub const DEFAULT: &'static str = "default";

    /// Checks `name` and wraps it.
    pub fn new(name: &str) -> Result<InstanceName, NameError> {
        let ok = (1..=MAX_INSTANCE_LEN).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if ok {
            Ok(InstanceName(name.to_owned()))
        } else {
            Err(NameError::BadInstance {
                name: name.to_owned(),
            })
        }
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for InstanceName {
    fn default() -> Self {
        InstanceName(Self::DEFAULT.to_owned())
    }
}

impl fmt::Display for InstanceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for InstanceName {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        InstanceName::new(s)
    }
}

/// The name of one file of an instance in the user directory (a segment, a lock file,
/// the socket).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ShmName {
    file: String,
    instance: InstanceName,
}

impl ShmName {
    /// `{instance}@{role}`: a segment of `instance`.
    pub fn segment(instance: &InstanceName, role: &str) -> Result<ShmName, NameError> {
        let ok = (1..=MAX_ROLE_LEN).contains(&role.len())
            && role
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !ok {
            return Err(NameError::BadRole {
                role: role.to_owned(),
            });
        }
        Ok(ShmName {
            file: format!("{}{role}", instance_prefix(instance)),
            instance: instance.clone(),
        })
    }

    /// `{instance}.lock`: the runtime's liveness lock.
    pub fn runtime_lock(instance: &InstanceName) -> ShmName {
        ShmName {
            file: format!("{instance}.lock"),
            instance: instance.clone(),
        }
    }

    /// `{instance}.sock`: the runtime's Unix domain socket. The runtime binds it after
    /// [`crate::shm::RuntimeLock::remove_stale`] (which removes a dead runtime's socket);
    /// a client checks it with [`RuntimeDir::check_socket`](super::dir::RuntimeDir::check_socket) before connecting. Its path
    /// must fit `sockaddr_un` (107 bytes): with the default parent that leaves room for
    /// a user tag and an instance name of up to 80 bytes together.
    pub fn socket(instance: &InstanceName) -> ShmName {
        ShmName {
            file: format!("{instance}.sock"),
            instance: instance.clone(),
        }
    }

    /// A name found in the user directory that [`is_instance_file`] said is `instance`'s.
    pub(crate) fn listed(instance: &InstanceName, file: String) -> ShmName {
        ShmName {
            file,
            instance: instance.clone(),
        }
    }

    /// The file name, without directory.
    pub fn as_str(&self) -> &str {
        &self.file
    }

    /// The instance this file belongs to.
    pub fn instance(&self) -> &InstanceName {
        &self.instance
    }

    /// The full path, in the user directory ([`user_dir`]). For messages, tests and
    /// system calls that take only a path (`bind`, `connect`); files are opened through
    /// [`RuntimeDir`](super::dir::RuntimeDir), never by this path.
    pub fn path(&self) -> PathBuf {
        user_dir().join(&self.file)
    }
}

impl fmt::Display for ShmName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path().display())
    }
}

/// The tag that stands for the effective user in the user directory's name: the login
/// name when it is made of `[A-Za-z0-9_]` only, else the numeric uid. Computed once per
/// process.
pub fn user_tag() -> &'static str {
    static TAG: OnceLock<String> = OnceLock::new();
    TAG.get_or_init(|| user_tag_of(rustix::process::geteuid().as_raw()))
}

/// The tag of the user `uid` in user directory names (see [`user_tag`]).
pub fn user_tag_of(uid: u32) -> String {
    login_name(uid)
        .filter(|name| {
            !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        })
        .unwrap_or_else(|| uid.to_string())
}

/// The directory the user directory lives in: `CHI_SHM_DIR` if set and not empty, else
/// `/dev/shm`. Read once per process.
pub fn parent_dir() -> &'static Path {
    static PARENT: OnceLock<PathBuf> = OnceLock::new();
    PARENT.get_or_init(|| {
        std::env::var_os(PARENT_DIR_ENV)
            .filter(|dir| !dir.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_PARENT_DIR))
    })
}

/// `chimaera-{user}`: the name of the user directory in its parent.
pub fn user_dir_name() -> String {
    format!("chimaera-{}", user_tag())
}

/// `{parent}/chimaera-{user}`: where every file of every instance of this user lives.
pub fn user_dir() -> PathBuf {
    parent_dir().join(user_dir_name())
}

/// The login name of `uid` from `/etc/passwd`, if it is listed there.
fn login_name(uid: u32) -> Option<String> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let entry_uid: u32 = fields.nth(1)?.parse().ok()?;
        (entry_uid == uid).then(|| name.to_owned())
    })
}

/// `{instance}@`: the start of every segment name of `instance`, and of no other
/// instance's files.
fn instance_prefix(instance: &InstanceName) -> String {
    format!("{instance}@")
}

/// Whether `file` (a name in the user directory) is one of `instance`'s segments or its
/// socket: every file of the instance but its runtime lock.
pub(crate) fn is_instance_file(instance: &InstanceName, file: &str) -> bool {
    file.starts_with(&instance_prefix(instance)) || file == ShmName::socket(instance).as_str()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_names_are_validated() {
        for good in ["default", "a", "A.b_c-9", &"x".repeat(64)] {
            assert!(InstanceName::new(good).is_ok(), "{good}");
        }
        for bad in ["", "a/b", "a b", "a@b", "é", &"x".repeat(65)] {
            let err = InstanceName::new(bad).unwrap_err();
            assert!(err.to_string().contains("A-Z, a-z, 0-9"), "{err}");
        }
        assert_eq!(InstanceName::default().as_str(), "default");
    }

    #[test]
    fn names_follow_the_scheme() {
        let inst = InstanceName::new("t-1").unwrap();
        let user = user_tag();
        assert!(!user.is_empty() && !user.contains('-') && !user.contains('/'));
        assert_eq!(user_dir_name(), format!("chimaera-{user}"));
        let segment = ShmName::segment(&inst, "main").unwrap();
        assert_eq!(segment.as_str(), "t-1@main");
        assert_eq!(segment.path(), user_dir().join("t-1@main"));
        assert_eq!(segment.to_string(), segment.path().display().to_string());
        assert_eq!(ShmName::runtime_lock(&inst).as_str(), "t-1.lock");
        assert_eq!(ShmName::socket(&inst).as_str(), "t-1.sock");
        assert!(ShmName::segment(&inst, "Main").is_err());
        assert!(ShmName::segment(&inst, "").is_err());
        assert!(ShmName::segment(&inst, "a/b").is_err());
    }

    #[test]
    fn names_of_different_instances_never_collide() {
        let a = InstanceName::new("a").unwrap();
        let b = InstanceName::new("a-lock").unwrap();
        assert_ne!(
            ShmName::segment(&a, "lock").unwrap().as_str(),
            ShmName::runtime_lock(&b).as_str()
        );
        assert!(!is_instance_file(&a, ShmName::runtime_lock(&b).as_str()));
        let c = InstanceName::new("a-main").unwrap();
        assert!(!is_instance_file(
            &a,
            ShmName::segment(&c, "data").unwrap().as_str()
        ));
        // `a.sock` is instance `a`'s socket, and no file of instance `a.sock`.
        let d = InstanceName::new("a.sock").unwrap();
        for name in [
            ShmName::runtime_lock(&d),
            ShmName::socket(&d),
            ShmName::segment(&d, "main").unwrap(),
        ] {
            assert!(!is_instance_file(&a, name.as_str()), "{name}");
            assert_ne!(name.as_str(), ShmName::socket(&a).as_str());
        }
        assert!(is_instance_file(&a, ShmName::socket(&a).as_str()));
        assert!(!is_instance_file(&a, ShmName::runtime_lock(&a).as_str()));
        // No instance's file is `.` or `..`.
        let dots = InstanceName::new("..").unwrap();
        for name in [ShmName::runtime_lock(&dots), ShmName::socket(&dots)] {
            assert!(name.as_str() != "." && name.as_str() != "..");
        }
    }
}
