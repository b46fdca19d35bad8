//! The handshake on the instance's Unix socket: who may attach, and what they receive.
//!
//! A client connects to the runtime's socket ([`socket_path`]) and sends one
//! [`Request`]. The runtime reads the peer's credentials from the kernel
//! (`SO_PEERCRED`: uid, gid, pid, which the peer cannot forge) and checks them against
//! its [`AccessPolicy`]; then it answers with one [`Reply`]:
//!
//! * [`Reply::Attached`]: the client's own area (a memfd no other process has), the
//!   sealed runtime page and its own doorbell eventfd, passed with
//!   `SCM_RIGHTS`, plus the [`Grant`] that says how the area is laid out. The socket then
//!   stays open for the client's whole life: its hang-up is how the runtime learns the
//!   client is gone (even after SIGKILL), and the runtime's hang-up is how the client
//!   learns the runtime is gone or disowned it.
//! * [`Reply::Denied`], [`Reply::Full`], [`Reply::UidFull`] (the uid has its quota of
//!   connections), [`Reply::NotReady`]: typed refusals. A peer
//!   the policy refuses is answered `Denied` before its request is even read, so it
//!   cannot hold the runtime's sessions thread for the handshake timeout.
//! * [`Reply::Usage`] answers [`Request::Usage`] (`chimaera runtime status`, tests) from
//!   the runtime's private counters (nothing a client wrote is read for it), to a peer
//!   that may connect.
//!
//! Every message is one fixed-size frame of little-endian words (`FRAME` bytes), made
//! and read by the one `encode`/`decode` pair here; a frame that is short, has the wrong
//! magic or an unknown tag is refused, never guessed at.
//!
//! # Who may connect, and how a granted user reaches the socket
//!
//! The runtime's own effective uid may always connect; further uids and primary gids
//! (the gid `SO_PEERCRED` reports) may if the config's `access:` lists them. Admin
//! methods (StopRuntime, Flush, and DestroyPool on a pool the uid did not create) need
//! the owner uid or a uid in `access.admin_uids`; the runtime checks that per task from
//! the rights fixed here ([`Rights`]), never from anything in shared memory.
//!
//! Connecting needs write permission on the socket file and search permission on the
//! directories above it. The socket is created with mode `0666`: the file mode is not
//! the gate, `SO_PEERCRED` is (a file mode cannot express "these uids and that group").
//! The socket lives in the owner's user directory ([`crate::shm::dir`]), which is `0700`;
//! a runtime whose config grants other uids or gids makes it `0711` (search only, no
//! listing) so a granted user can reach the socket by its exact name but still read no
//! other file, every other file there being `0600`. [`socket_path`] is the single place
//! that names the socket.
//!
//! The client checks the other end too: before connecting it checks that the name is a
//! socket (not a link) in a directory owned by the runtime's user, and after connecting
//! that the peer's `SO_PEERCRED` uid is that user's ([`expected_runtime_uid`]), so it
//! never hands its tasks to an impostor.
use super::wire::AreaGeometry;
use crate::shm::naming::{InstanceName, ShmName};
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

/// The user directory of the user `user_tag` ([`crate::shm::naming::user_tag`] for one's own).
fn user_dir_of(user_tag: &str) -> PathBuf {
    crate::shm::naming::parent_dir().join(format!("chimaera-{user_tag}"))
}

/// The socket a runtime of `instance` listens on, for the runtime owned by the user
/// `user_tag` ([`crate::shm::naming::user_tag`] for one's own): `{instance}.sock` in that
/// user's directory. The one function that places the socket.
pub fn socket_path(instance: &InstanceName, user_tag: &str) -> PathBuf {
    user_dir_of(user_tag).join(ShmName::socket(instance).as_str())
}

/// Checks, after connecting, that the process at the other end runs as `runtime_uid`
/// (from [`expected_runtime_uid`]).
pub fn check_runtime_peer(stream: &impl AsFd, runtime_uid: u32) -> Result<(), PeerCheckError> {
    let peer = peer_cred(stream).map_err(|err| PeerCheckError::Impostor {
        reason: format!("cannot read its credentials ({err})"),
    })?;
    if peer.uid != runtime_uid {
        return Err(PeerCheckError::Impostor {
            reason: format!(
                "it runs as uid {} (pid {}), not as the runtime's user (uid {runtime_uid})",
                peer.uid, peer.pid
            ),
        });
    }
    Ok(())
}

/// Why a client will not connect to what is at the socket's name.
#[derive(Debug, thiserror::Error)]
pub enum PeerCheckError {
    /// The process listening on the socket is not the runtime's user.
    #[error("the process on the runtime's socket is not trusted: {reason}")]
    Impostor {
        /// What was found.
        reason: String,
    },
    /// The runtime user's directory is missing, not a directory, or open to writers.
    #[error("{}: {reason}", path.display())]
    BadDirectory {
        /// The directory.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The socket's name holds something else (a link, a file) or another user's socket.
    #[error("{}: {reason}", path.display())]
    BadSocket {
        /// The socket's path.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

/// The uid the runtime of `instance` must run as, for a client: its own effective uid,
/// or — with [`RUNTIME_USER_ENV`] naming another user — the owner of that user's
/// directory. Checks, without following links, that the directory is a directory its
/// owner alone may write, and that the socket's name holds a socket of that owner (a
/// missing socket is not an error here: connecting reports it).
pub fn expected_runtime_uid(instance: &InstanceName) -> Result<u32, PeerCheckError> {
    use rustix::fs::{AtFlags, FileType, CWD};
    let dir = client_socket_path(instance)
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default();
    let dir_stat = match rustix::fs::statat(CWD, &dir, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(stat) => stat,
        // Nothing there: no runtime either; connecting says so.
        Err(rustix::io::Errno::NOENT) => return Ok(rustix::process::geteuid().as_raw()),
        Err(errno) => {
            return Err(PeerCheckError::BadDirectory {
                path: dir,
                reason: format!("cannot inspect it ({errno})"),
            })
        }
    };
    if FileType::from_raw_mode(dir_stat.st_mode) != FileType::Directory {
        return Err(PeerCheckError::BadDirectory {
            path: dir,
            reason: "not a directory (a link or a file is never followed)".into(),
        });
    }
    if dir_stat.st_mode & 0o022 != 0 {
        return Err(PeerCheckError::BadDirectory {
            path: dir,
            reason: format!(
                "mode {:03o}: others may write it, so its socket cannot be trusted",
                dir_stat.st_mode & 0o777
            ),
        });
    }
    let owner = dir_stat.st_uid;
    let me = rustix::process::geteuid().as_raw();
    // The user the directory's name claims: the runtime's user as `CHI_RUNTIME_USER`
    // names it, else this process's own. Whoever made a directory of that name first
    // (`/dev/shm` lets anyone) must be that user, or it is someone else's trap.
    let claimed = runtime_user_tag();
    if crate::shm::naming::user_tag_of(owner) != claimed {
        return Err(PeerCheckError::BadDirectory {
            path: dir,
            reason: format!(
                "owned by uid {owner}, not by the user `{claimed}` it is named after (you are uid {me})"
            ),
        });
    }
    let path = client_socket_path(instance);
    match rustix::fs::statat(CWD, &path, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(stat) if FileType::from_raw_mode(stat.st_mode) != FileType::Socket => {
            Err(PeerCheckError::BadSocket {
                path,
                reason: "not a socket (a link or a file is never followed); remove it".into(),
            })
        }
        Ok(stat) if stat.st_uid != owner => Err(PeerCheckError::BadSocket {
            path,
            reason: format!("owned by uid {}, not by the runtime's user", stat.st_uid),
        }),
        _ => Ok(owner),
    }
}

/// The environment variable naming the user who runs the runtime, for a client of
/// another (granted) user: its login name or uid as in the runtime's file names.
pub const RUNTIME_USER_ENV: &str = "CHI_RUNTIME_USER";

/// The user tag of the runtime a client connects to: [`RUNTIME_USER_ENV`] when it is
/// set to a valid tag, else the client's own.
fn runtime_user_tag() -> String {
    match std::env::var(RUNTIME_USER_ENV) {
        Ok(user)
            if !user.is_empty() && user.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') =>
        {
            user
        }
        _ => crate::shm::naming::user_tag().to_owned(),
    }
}

/// The socket a client of `instance` connects to: the runtime owner's, as
/// [`RUNTIME_USER_ENV`] names it, else the client's own user's.
pub fn client_socket_path(instance: &InstanceName) -> PathBuf {
    socket_path(instance, &runtime_user_tag())
}

const MAGIC: u32 = u32::from_le_bytes(*b"CHIS");
/// Bumped whenever a frame or the meaning of a word in the area changes, so a client and
/// a runtime of different builds refuse each other at the handshake instead of
/// misreading each other's words. 2: a slot's `STATE` became the runtime's answer mark.
pub const PROTOCOL: u32 = 2;
const FRAME: usize = 64;
/// File descriptors a [`Reply::Attached`] carries: area, runtime page, doorbell.
const ATTACH_FDS: usize = 3;

/// What a client asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// An area of its own.
    Attach,
    /// The runtime's usage counters.
    Usage,
}

/// How an attached client's area is laid out and served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grant {
    /// The area's index (which worker serves it, and the name in logs).
    pub client: u32,
    /// The worker that polls the area (its sleeping flag and eventfd).
    pub worker: u32,
    /// The area's layout.
    pub geometry: AreaGeometry,
}

/// Usage counters of a runtime's transport, from its private truth.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ShmUsage {
    /// Client areas in use (attached clients, and areas of gone clients whose tasks
    /// still run).
    pub client_areas_in_use: u32,
    /// Tasks of clients in flight (fire-and-forget and periodic ones included).
    pub tasks_in_flight: u64,
    /// Bytes of output spaces holding outputs not yet taken.
    pub output_bytes_in_use: u64,
}

/// The runtime's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply {
    /// Attached; the frame carries the area's fds.
    Attached(Grant),
    /// The peer's uid and gid are not allowed to connect.
    Denied {
        /// The peer's uid.
        uid: u32,
        /// The peer's gid.
        gid: u32,
    },
    /// Every client area is taken.
    Full {
        /// The configured maximum.
        max_clients: u32,
    },
    /// The peer's uid has as many connections as its quota allows
    /// (`quotas.connections`).
    UidFull {
        /// The peer's uid.
        uid: u32,
        /// Its quota of connections.
        limit: u32,
    },
    /// The runtime is starting or stopping.
    NotReady,
    /// Answer to [`Request::Usage`].
    Usage(ShmUsage),
}

/// A frame that is not one this side understands.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The socket failed or closed.
    #[error("the runtime's socket failed during the handshake: {0}")]
    Io(#[from] std::io::Error),
    /// The peer sent something else than a frame of this protocol.
    #[error(
        "the peer sent a malformed handshake ({0}); run the same chimaera version on both sides"
    )]
    Malformed(&'static str),
}

struct Words([u8; FRAME]);

impl Words {
    fn new(tag: u32) -> Words {
        let mut words = Words([0; FRAME]);
        words.put32(0, MAGIC);
        words.put32(4, PROTOCOL);
        words.put32(8, tag);
        words
    }
    fn put32(&mut self, at: usize, value: u32) {
        self.0[at..at + 4].copy_from_slice(&value.to_le_bytes());
    }
    fn put64(&mut self, at: usize, value: u64) {
        self.0[at..at + 8].copy_from_slice(&value.to_le_bytes());
    }
    fn get32(&self, at: usize) -> u32 {
        let mut word = [0; 4];
        word.copy_from_slice(&self.0[at..at + 4]);
        u32::from_le_bytes(word)
    }
    fn get64(&self, at: usize) -> u64 {
        let mut word = [0; 8];
        word.copy_from_slice(&self.0[at..at + 8]);
        u64::from_le_bytes(word)
    }
    /// The tag of a frame of this protocol.
    fn tag(&self) -> Result<u32, HandshakeError> {
        if self.get32(0) != MAGIC {
            return Err(HandshakeError::Malformed("bad magic"));
        }
        if self.get32(4) != PROTOCOL {
            return Err(HandshakeError::Malformed("another protocol version"));
        }
        Ok(self.get32(8))
    }
}

mod tag {
    pub(super) const ATTACH: u32 = 1;
    pub(super) const USAGE: u32 = 2;
    pub(super) const ATTACHED: u32 = 10;
    pub(super) const DENIED: u32 = 11;
    pub(super) const FULL: u32 = 12;
    pub(super) const NOT_READY: u32 = 13;
    pub(super) const USAGE_REPLY: u32 = 14;
    pub(super) const UID_FULL: u32 = 15;
}

impl Request {
    fn encode(self) -> Words {
        Words::new(match self {
            Request::Attach => tag::ATTACH,
            Request::Usage => tag::USAGE,
        })
    }

    fn decode(words: &Words) -> Result<Request, HandshakeError> {
        match words.tag()? {
            tag::ATTACH => Ok(Request::Attach),
            tag::USAGE => Ok(Request::Usage),
            _ => Err(HandshakeError::Malformed("unknown request")),
        }
    }
}

impl Reply {
    fn encode(&self) -> Words {
        match *self {
            Reply::Attached(grant) => {
                let mut w = Words::new(tag::ATTACHED);
                w.put32(12, grant.client);
                w.put32(16, grant.worker);
                w.put32(20, grant.geometry.slots);
                w.put32(24, grant.geometry.slot_size);
                w.put64(32, grant.geometry.data_len as u64);
                w.put64(40, grant.geometry.output_len as u64);
                w
            }
            Reply::Denied { uid, gid } => {
                let mut w = Words::new(tag::DENIED);
                w.put32(12, uid);
                w.put32(16, gid);
                w
            }
            Reply::UidFull { uid, limit } => {
                let mut w = Words::new(tag::UID_FULL);
                w.put32(12, uid);
                w.put32(16, limit);
                w
            }
            Reply::Full { max_clients } => {
                let mut w = Words::new(tag::FULL);
                w.put32(12, max_clients);
                w
            }
            Reply::NotReady => Words::new(tag::NOT_READY),
            Reply::Usage(usage) => {
                let mut w = Words::new(tag::USAGE_REPLY);
                w.put32(12, usage.client_areas_in_use);
                w.put64(16, usage.tasks_in_flight);
                w.put64(24, usage.output_bytes_in_use);
                w
            }
        }
    }

    fn decode(words: &Words) -> Result<Reply, HandshakeError> {
        Ok(match words.tag()? {
            tag::ATTACHED => {
                let size = |at| {
                    usize::try_from(words.get64(at))
                        .map_err(|_| HandshakeError::Malformed("a size beyond the address space"))
                };
                let geometry = AreaGeometry {
                    slots: words.get32(20),
                    slot_size: words.get32(24),
                    data_len: size(32)?,
                    output_len: size(40)?,
                };
                if geometry.checked_total_len().is_none() {
                    return Err(HandshakeError::Malformed("an impossible area geometry"));
                }
                Reply::Attached(Grant {
                    client: words.get32(12),
                    worker: words.get32(16),
                    geometry,
                })
            }
            tag::DENIED => Reply::Denied {
                uid: words.get32(12),
                gid: words.get32(16),
            },
            tag::FULL => Reply::Full {
                max_clients: words.get32(12),
            },
            tag::UID_FULL => Reply::UidFull {
                uid: words.get32(12),
                limit: words.get32(16),
            },
            tag::NOT_READY => Reply::NotReady,
            tag::USAGE_REPLY => Reply::Usage(ShmUsage {
                client_areas_in_use: words.get32(12),
                tasks_in_flight: words.get64(16),
                output_bytes_in_use: words.get64(24),
            }),
            _ => return Err(HandshakeError::Malformed("unknown reply")),
        })
    }
}

fn read_frame(stream: &UnixStream, fds: &mut Vec<OwnedFd>) -> Result<Words, HandshakeError> {
    let mut words = Words([0; FRAME]);
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(ATTACH_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let received = rustix::net::recvmsg(
        stream,
        &mut [IoSliceMut::new(&mut words.0)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC | RecvFlags::WAITALL,
    )
    .map_err(std::io::Error::from)?;
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = message {
            fds.extend(received);
        }
    }
    if received.bytes != FRAME {
        return Err(HandshakeError::Malformed("a short frame"));
    }
    Ok(words)
}

fn write_frame(
    stream: &UnixStream,
    words: &Words,
    fds: &[BorrowedFd<'_>],
) -> Result<(), HandshakeError> {
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(ATTACH_FDS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(HandshakeError::Malformed("too many descriptors"));
    }
    let sent = rustix::net::sendmsg(
        stream,
        &[IoSlice::new(&words.0)],
        &mut control,
        SendFlags::NOSIGNAL,
    )
    .map_err(std::io::Error::from)?;
    if sent != FRAME {
        return Err(HandshakeError::Malformed("a short write"));
    }
    Ok(())
}

/// The client's side: sends `request`, returns the reply and the descriptors it carried.
pub fn ask(stream: &UnixStream, request: Request) -> Result<(Reply, Vec<OwnedFd>), HandshakeError> {
    // A refused peer is answered before its request is read, and the runtime may have
    // hung up by the time the request goes out: the refusal is still there to read.
    if let Err(err) = write_frame(stream, &request.encode(), &[]) {
        let hung_up = matches!(
            &err,
            HandshakeError::Io(io) if matches!(
                io.kind(),
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
            )
        );
        if !hung_up {
            return Err(err);
        }
    }
    let mut fds = Vec::new();
    let words = read_frame(stream, &mut fds)?;
    let reply = Reply::decode(&words)?;
    match reply {
        Reply::Attached(_) if fds.len() != ATTACH_FDS => Err(HandshakeError::Malformed(
            "an attach without its descriptors",
        )),
        _ => Ok((reply, fds)),
    }
}

/// The runtime's side: reads a client's request (descriptors a client sends are closed).
pub fn read_request(stream: &UnixStream) -> Result<Request, HandshakeError> {
    let mut ignored = Vec::new();
    let words = read_frame(stream, &mut ignored)?;
    Request::decode(&words)
}

/// The runtime's side: the descriptors of an attach, in the order the client takes them.
pub struct AttachFds<'a> {
    /// The client's area.
    pub area: BorrowedFd<'a>,
    /// The sealed runtime page.
    pub page: BorrowedFd<'a>,
    /// The client's own doorbell eventfd.
    pub doorbell: BorrowedFd<'a>,
}

/// The runtime's side: sends `reply`, with the area's descriptors for an attach.
pub fn answer(
    stream: &UnixStream,
    reply: &Reply,
    fds: Option<AttachFds<'_>>,
) -> Result<(), HandshakeError> {
    match fds {
        Some(fds) => write_frame(stream, &reply.encode(), &[fds.area, fds.page, fds.doorbell]),
        None => write_frame(stream, &reply.encode(), &[]),
    }
}

/// Who a connected peer is, from the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerCred {
    /// Effective uid.
    pub uid: u32,
    /// Effective (primary) gid.
    pub gid: u32,
    /// Pid (for logs).
    pub pid: i32,
}

/// The credentials of the process at the other end of `stream`.
pub fn peer_cred(stream: &impl AsFd) -> std::io::Result<PeerCred> {
    let cred = rustix::net::sockopt::socket_peercred(stream)?;
    Ok(PeerCred {
        uid: cred.uid.as_raw(),
        gid: cred.gid.as_raw(),
        pid: cred.pid.as_raw_nonzero().get(),
    })
}

/// What an attached client may do, fixed at connect time from its credentials.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rights {
    /// The client's uid.
    pub uid: u32,
    /// May stop the runtime, destroy pools and flush.
    pub admin: bool,
}

/// Who may connect and who may administer (the config's `access:` and the runtime's own
/// effective uid).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AccessPolicy {
    /// The runtime's effective uid: always allowed, always admin.
    pub owner: u32,
    /// Further uids allowed to connect.
    pub uids: Vec<u32>,
    /// Primary gids allowed to connect.
    pub gids: Vec<u32>,
    /// Uids allowed to use admin methods (they may connect too).
    pub admin_uids: Vec<u32>,
}

impl AccessPolicy {
    /// The rights of a peer, or `None` if it may not connect.
    pub fn rights(&self, peer: PeerCred) -> Option<Rights> {
        let admin = peer.uid == self.owner || self.admin_uids.contains(&peer.uid);
        let allowed = admin || self.uids.contains(&peer.uid) || self.gids.contains(&peer.gid);
        allowed.then_some(Rights {
            uid: peer.uid,
            admin,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reply_round_trips_and_a_forged_frame_is_refused() {
        let geometry = AreaGeometry::fit(64 << 10, 16, 1024, 8192, 8192).unwrap();
        for reply in [
            Reply::Attached(Grant {
                client: 3,
                worker: 1,
                geometry,
            }),
            Reply::Denied {
                uid: 65534,
                gid: 65534,
            },
            Reply::Full { max_clients: 64 },
            Reply::UidFull {
                uid: 65534,
                limit: 48,
            },
            Reply::NotReady,
            Reply::Usage(ShmUsage {
                client_areas_in_use: 2,
                tasks_in_flight: 5,
                output_bytes_in_use: 1 << 20,
            }),
        ] {
            assert_eq!(Reply::decode(&reply.encode()).unwrap(), reply);
        }
        let mut forged = Reply::Attached(Grant {
            client: 0,
            worker: 0,
            geometry,
        })
        .encode();
        forged.put32(20, 3);
        assert!(Reply::decode(&forged).is_err(), "slots not a power of two");
        let mut bad_magic = Request::Attach.encode();
        bad_magic.put32(0, 7);
        assert!(Request::decode(&bad_magic).is_err());
        // A client or runtime of an earlier protocol (its slots' words mean other things).
        for version in [PROTOCOL - 1, PROTOCOL + 1] {
            let mut other = Request::Attach.encode();
            other.put32(4, version);
            assert!(matches!(
                Request::decode(&other),
                Err(HandshakeError::Malformed("another protocol version"))
            ));
            let mut other = Reply::NotReady.encode();
            other.put32(4, version);
            assert!(matches!(
                Reply::decode(&other),
                Err(HandshakeError::Malformed("another protocol version"))
            ));
        }
    }

    #[test]
    fn descriptors_travel_with_the_attach_reply() {
        let (runtime, client) = UnixStream::pair().unwrap();
        let peer = peer_cred(&runtime).unwrap();
        assert_eq!(peer.uid, rustix::process::geteuid().as_raw());
        let geometry = AreaGeometry::fit(64 << 10, 16, 1024, 8192, 8192).unwrap();
        let grant = Grant {
            client: 1,
            worker: 0,
            geometry,
        };
        let asker = std::thread::spawn(move || ask(&client, Request::Attach).unwrap());
        assert_eq!(read_request(&runtime).unwrap(), Request::Attach);
        let fd = rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC).unwrap();
        answer(
            &runtime,
            &Reply::Attached(grant),
            Some(AttachFds {
                area: fd.as_fd(),
                page: fd.as_fd(),
                doorbell: fd.as_fd(),
            }),
        )
        .unwrap();
        let (reply, fds) = asker.join().unwrap();
        assert_eq!(reply, Reply::Attached(grant));
        assert_eq!(fds.len(), 3);
    }

    #[test]
    fn the_policy_admits_the_owner_and_the_granted_only() {
        let policy = AccessPolicy {
            owner: 1000,
            uids: vec![1001],
            gids: vec![50],
            admin_uids: vec![1002],
        };
        let peer = |uid, gid| PeerCred { uid, gid, pid: 1 };
        assert_eq!(
            policy.rights(peer(1000, 1)),
            Some(Rights {
                uid: 1000,
                admin: true
            })
        );
        assert_eq!(
            policy.rights(peer(1001, 1)),
            Some(Rights {
                uid: 1001,
                admin: false
            })
        );
        assert!(policy.rights(peer(1003, 50)).is_some_and(|r| !r.admin));
        assert!(policy.rights(peer(1002, 1)).is_some_and(|r| r.admin));
        assert_eq!(
            policy.rights(peer(0, 0)),
            None,
            "root is not the owner here"
        );
    }
}
