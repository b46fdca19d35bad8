//! Names of the files an instance keeps in `/dev/shm`.
//!
//! One runtime **instance** (a name from the config, so several runtimes and parallel tests
//! can coexist) owns these files, all in [`SHM_DIR`]:
//!
//! | file | what |
//! | --- | --- |
//! | `chimaera-{user}-{instance}.lock` | the runtime's liveness lock ([`crate::shm::liveness`]) |
//! | `chimaera-{user}-{instance}@{role}` | a segment: roles [`ROLE_MAIN`], [`ROLE_CLIENT_DATA`], [`ROLE_RUNTIME_DATA`], … |
//! | `chimaera-{user}-{instance}@client-{slot}.lock` | the liveness lock of the client in `slot` |
//!
//! `{user}` is the effective user's login name when it is made of `[A-Za-z0-9_]` only, else
//! the numeric uid; it keeps two users' runtimes of the same instance name apart (and the
//! files are mode `0600` anyway).
//!
//! # Invariants
//!
//! * An [`InstanceName`] matches `[A-Za-z0-9_.-]{1,64}`; a role matches `[a-z0-9-]{1,32}`.
//! * The map from (user, instance, role) to file name is one-to-one. That is why the
//!   segment and client-lock names put an `@` (never part of an instance name) after the
//!   instance rather than a `-`: with `-`, instance `a`'s client-3 lock
//!   (`chimaera-u-a-client-3.lock`) would be instance `a-client-3`'s runtime lock, and
//!   removing instance `a`'s stale files would delete another instance's. For the same
//!   reason `{user}` never contains `-`. [`instance_files`] relies on this to list exactly
//!   one instance's files.
//!
//! # Failure modes
//!
//! Bad instance or role names are a [`NameError`] saying which characters are allowed;
//! nothing here touches the file system except [`instance_files`] (a directory listing).
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::OnceLock;

/// Where segments and lock files live (a tmpfs on every Linux system).
pub const SHM_DIR: &str = "/dev/shm";
/// Role of the main segment: queues, task slots, runtime header.
pub const ROLE_MAIN: &str = "main";
/// Role of the client-data segment: buffers clients allocate for bulk data.
pub const ROLE_CLIENT_DATA: &str = "data";
/// Role of the runtime-data segment: buffers the runtime allocates for outputs.
pub const ROLE_RUNTIME_DATA: &str = "rdata";

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
/// use chimaera_core::shm::InstanceName;
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

/// The file name (in [`SHM_DIR`]) of one segment or lock file of an instance.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ShmName {
    file: String,
    instance: InstanceName,
}

impl ShmName {
    /// `chimaera-{user}-{instance}@{role}`: a segment of `instance`.
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

    /// `chimaera-{user}-{instance}.lock`: the runtime's liveness lock.
    pub fn runtime_lock(instance: &InstanceName) -> ShmName {
        ShmName {
            file: format!("chimaera-{}-{instance}.lock", user_tag()),
            instance: instance.clone(),
        }
    }

    /// `chimaera-{user}-{instance}@client-{slot}.lock`: the lock of the client in `slot`.
    pub fn client_lock(instance: &InstanceName, slot: u32) -> ShmName {
        ShmName {
            file: format!("{}client-{slot}.lock", instance_prefix(instance)),
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

    /// The full path, in [`SHM_DIR`].
    pub fn path(&self) -> PathBuf {
        Path::new(SHM_DIR).join(&self.file)
    }
}

impl fmt::Display for ShmName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SHM_DIR}/{}", self.file)
    }
}

/// The tag that stands for the effective user in file names: the login name when it is
/// made of `[A-Za-z0-9_]` only, else the numeric uid. Computed once per process.
pub fn user_tag() -> &'static str {
    static TAG: OnceLock<String> = OnceLock::new();
    TAG.get_or_init(|| {
        let uid = rustix::process::geteuid().as_raw();
        login_name(uid)
            .filter(|name| {
                !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            })
            .unwrap_or_else(|| uid.to_string())
    })
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

/// `chimaera-{user}-{instance}@`: the start of every segment and client-lock file name of
/// `instance`, and of no other instance's files.
fn instance_prefix(instance: &InstanceName) -> String {
    format!("chimaera-{}-{instance}@", user_tag())
}

/// Every segment and client-lock file of `instance` now in [`SHM_DIR`] (not the runtime
/// lock). A missing or unreadable directory yields an error.
pub fn instance_files(instance: &InstanceName) -> std::io::Result<Vec<PathBuf>> {
    let prefix = instance_prefix(instance);
    let mut found = Vec::new();
    for entry in std::fs::read_dir(SHM_DIR)? {
        let entry = entry?;
        if entry
            .file_name()
            .to_str()
            .is_some_and(|name| name.starts_with(&prefix))
        {
            found.push(entry.path());
        }
    }
    found.sort();
    Ok(found)
}

/// The slot of a client-lock file name of `instance`, if `file` is one.
pub(crate) fn client_lock_slot(instance: &InstanceName, file: &str) -> Option<u32> {
    file.strip_prefix(&instance_prefix(instance))?
        .strip_prefix("client-")?
        .strip_suffix(".lock")?
        .parse()
        .ok()
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
        assert!(!user.is_empty() && !user.contains('-'));
        assert_eq!(
            ShmName::segment(&inst, ROLE_MAIN).unwrap().as_str(),
            format!("chimaera-{user}-t-1@main")
        );
        assert_eq!(
            ShmName::runtime_lock(&inst).as_str(),
            format!("chimaera-{user}-t-1.lock")
        );
        let client = ShmName::client_lock(&inst, 7);
        assert_eq!(
            client.as_str(),
            format!("chimaera-{user}-t-1@client-7.lock")
        );
        assert_eq!(client_lock_slot(&inst, client.as_str()), Some(7));
        assert_eq!(client.path(), Path::new("/dev/shm").join(client.as_str()));
        assert!(ShmName::segment(&inst, "Main").is_err());
        assert!(ShmName::segment(&inst, "").is_err());
    }

    #[test]
    fn names_of_different_instances_never_collide() {
        let a = InstanceName::new("a").unwrap();
        let b = InstanceName::new("a-client-3").unwrap();
        assert_ne!(
            ShmName::client_lock(&a, 3).as_str(),
            ShmName::runtime_lock(&b).as_str()
        );
        assert_eq!(
            client_lock_slot(&a, ShmName::runtime_lock(&b).as_str()),
            None
        );
        let c = InstanceName::new("a-main").unwrap();
        assert!(!ShmName::segment(&c, "data")
            .unwrap()
            .as_str()
            .starts_with(&instance_prefix(&a)));
    }
}
