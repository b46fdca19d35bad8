//! The runtime's messages between nodes, and their answers: rkyv archives, validated
//! before any field is read (a peer's bytes are untrusted like a client's).
//!
//! A task travels as a [`RunTask`]: its pool, method and query, the containers it is for
//! (the receiver runs those it holds and forwards the others, see `runtime::remote`),
//! and its input — the generated archive of the task's arguments, carried as it is.
//! Its answer is an [`Answer::Results`]: each container's output archive or error.
//!
//! # Envelope and carried bytes
//!
//! Every frame and answer is `[archive length: u64 LE, 8 zero bytes][archive][carried
//! bytes]`, the archive serialized in place (no copy of it when the frame is built). The
//! carried bytes are a task's bulk ranges ([`BulkSegment`]) that lie in the submitting
//! client's shared memory: one copy of each, in the order of [`RunTask::bulk`], read
//! straight out of the client's share into the frame; the receiver resolves the task's
//! references into them in place, never copying them into a second buffer. An answer
//! carries back the ranges the handler writes, in the order of
//! [`Answer::Results`]`::written`. Keeping them outside the archive is what spares a copy
//! on each side: an archive is copied once into aligned memory before it is read, the
//! carried bytes never are.
//!
//! Pools are agreed on by node 0 (the single writer of pool ids): a node asks it with
//! [`Frame::CreatePool`] / [`Frame::DestroyPool`]; node 0 tells every node with
//! [`Frame::InstallPool`] / [`Frame::UninstallPool`]; a node that starts late asks it
//! for every pool with [`Frame::ListPools`].
//!
//! # Invariants
//!
//! * [`decode_frame`] and [`decode_answer`] never panic: bytes that are not an archive
//!   of this protocol (or an envelope whose length points past its end) are a
//!   [`TaskError::Malformed`].
//! * Decoding copies the bytes once into aligned memory first, so an archive is read in
//!   place only from memory this process owns.
// rkyv's derive emits resolver types whose fields cannot carry docs.
#![allow(missing_docs)]
use crate::admin_api::CreatePoolRequest;
use crate::codec::{aligned_copy, CodecError};
use crate::error::TaskError;
use crate::ids::{ContainerId, MethodId, PoolId};
use crate::query::PoolQuery;
use rkyv::{Archive, Deserialize, Serialize};

/// One task for the containers of `containers` (sorted, no repeats).
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct RunTask {
    /// The pool.
    pub pool: PoolId,
    /// The method.
    pub method: MethodId,
    /// The query it was submitted with (its handler may ask).
    pub query: PoolQuery,
    /// Nesting depth of the task (bounded by `max_task_depth` on every node).
    pub depth: u32,
    /// The containers to run it on; the receiver forwards those it does not hold.
    pub containers: Vec<ContainerId>,
    /// Fire-and-forget: answered at once with no results.
    pub fire_and_forget: bool,
    /// How long the receiver may wait for the nodes it forwards to, in milliseconds.
    pub timeout_ms: u64,
    /// The archive of the task's inputs.
    pub input: Vec<u8>,
    /// The ranges of the client's share the input references, whose bytes follow the
    /// archive (in this order).
    pub bulk: Vec<BulkSegment>,
    /// The uid without admin rights the task runs for (its client's, or its parent
    /// task's), whose quotas it counts against on the receiving node too and whom its
    /// handlers see as their caller; `None` for a trusted caller.
    pub caller: Option<u32>,
}

/// A range of the submitting client's share that travels with its task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct BulkSegment {
    /// Offset in the client's share (as the task's reference says).
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
    /// The handler writes it: its bytes come back with the answer.
    pub writes: bool,
}

/// A pool every node agrees on: its id and how it was asked for.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct PoolRecord {
    /// Its id, the same on every node.
    pub id: PoolId,
    /// The request that created it (module, name, containers, params).
    pub request: CreatePoolRequest,
}

/// A message from one node to another.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub enum Frame {
    /// Run a task on containers the receiver holds (and forward the rest).
    Run(RunTask),
    /// To node 0: get the pool of this name, or create it on every node.
    CreatePool(CreatePoolRequest),
    /// From node 0: build this node's containers of the pool.
    InstallPool(PoolRecord),
    /// To node 0: destroy the pool on every node.
    DestroyPool(PoolId),
    /// From node 0: destroy this node's part of the pool.
    UninstallPool(PoolId),
    /// To node 0: every pool of the cluster (a node that starts late).
    ListPools,
}

/// One container's result.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub enum Outcome {
    /// The output archive.
    Output(Vec<u8>),
    /// Why there is none.
    Failed(TaskError),
}

/// The answer to a [`Frame`].
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub enum Answer {
    /// Results of a [`Frame::Run`], one per container it was for.
    Results {
        /// Each container's result.
        results: Vec<(ContainerId, Outcome)>,
        /// The written ranges of the task (its [`BulkSegment`]s with `writes`, in
        /// order), whose bytes follow the archive.
        written: Vec<BulkSegment>,
    },
    /// The pool a [`Frame::CreatePool`] got or made.
    Pool(PoolRecord),
    /// Every pool ([`Frame::ListPools`]).
    Pools(Vec<PoolRecord>),
    /// Done ([`Frame::InstallPool`], [`Frame::DestroyPool`], [`Frame::UninstallPool`]).
    Done,
    /// The frame failed as a whole.
    Failed(TaskError),
}

/// Bytes before the archive: its length (`u64` LE), then zeros up to 16 bytes, so the
/// archive starts 16-aligned relative to the frame — rkyv lays it out as if at offset 0
/// of the frame, and the receiver copies it out to aligned memory as it is.
const PREFIX: usize = 16;

/// `value` archived in an envelope followed by `carried` bytes that `fill` writes;
/// `hint`: about how long the archive is (room is made for it and the carried bytes at
/// once, so the archive is written in place and never copied).
fn envelope<T>(
    value: &T,
    what: &str,
    hint: usize,
    carried: usize,
    fill: impl FnOnce(&mut [u8]),
) -> Result<Vec<u8>, TaskError>
where
    T: for<'a> Serialize<
        rkyv::api::high::HighSerializer<
            Vec<u8>,
            rkyv::ser::allocator::ArenaHandle<'a>,
            CodecError,
        >,
    >,
{
    let too_long = || TaskError::malformed(what, "too long to address");
    let room = PREFIX
        .checked_add(hint)
        .and_then(|len| len.checked_add(carried))
        .ok_or_else(too_long)?;
    let mut bytes = Vec::new();
    bytes
        .try_reserve_exact(room)
        .map_err(|_| TaskError::OutOfMemory { len: room as u64 })?;
    bytes.resize(PREFIX, 0);
    let mut bytes = rkyv::api::high::to_bytes_in::<_, CodecError>(value, bytes)
        .map_err(|err| TaskError::malformed(what, err))?;
    let archive_len = (bytes.len() - PREFIX) as u64;
    bytes[..8].copy_from_slice(&archive_len.to_le_bytes());
    let total = bytes.len().checked_add(carried).ok_or_else(too_long)?;
    bytes
        .try_reserve_exact(carried)
        .map_err(|_| TaskError::OutOfMemory { len: total as u64 })?;
    bytes.resize(total, 0);
    fill(&mut bytes[total - carried..]);
    Ok(bytes)
}

/// About how long the archive of `frame` is.
fn frame_hint(frame: &Frame) -> usize {
    match frame {
        Frame::Run(task) => task
            .input
            .len()
            .saturating_add(task.containers.len() * 4)
            .saturating_add(task.bulk.len() * 24)
            .saturating_add(256),
        _ => 1024,
    }
}

/// About how long the archive of `answer` is.
fn answer_hint(answer: &Answer) -> usize {
    match answer {
        Answer::Results { results, written } => results
            .iter()
            .map(|(_, outcome)| match outcome {
                Outcome::Output(output) => output.len() + 32,
                Outcome::Failed(_) => 256,
            })
            .sum::<usize>()
            .saturating_add(written.len() * 24)
            .saturating_add(256),
        _ => 1024,
    }
}

/// The archive in an envelope, copied into aligned memory, and where its carried bytes
/// lie in `bytes`.
fn open_envelope(
    bytes: &[u8],
    what: &str,
) -> Result<(rkyv::util::AlignedVec, std::ops::Range<usize>), TaskError> {
    let prefix: [u8; 8] = bytes
        .get(..8)
        .and_then(|prefix| prefix.try_into().ok())
        .filter(|_| bytes.len() >= PREFIX)
        .ok_or_else(|| TaskError::malformed(what, "shorter than its length prefix"))?;
    let end = usize::try_from(u64::from_le_bytes(prefix))
        .ok()
        .and_then(|len| PREFIX.checked_add(len))
        .filter(|&end| end <= bytes.len())
        .ok_or_else(|| TaskError::malformed(what, "its length prefix points past its end"))?;
    Ok((aligned_copy(&bytes[PREFIX..end]), end..bytes.len()))
}

/// Archives a frame that carries no bytes.
pub fn encode_frame(frame: &Frame) -> Result<Vec<u8>, TaskError> {
    encode_frame_carrying(frame, 0, |_| {})
}

/// Archives a frame followed by `carried` bytes, which `fill` writes (a task's bulk
/// ranges, see the module docs).
pub fn encode_frame_carrying(
    frame: &Frame,
    carried: usize,
    fill: impl FnOnce(&mut [u8]),
) -> Result<Vec<u8>, TaskError> {
    envelope(frame, "frame", frame_hint(frame), carried, fill)
}

/// Archives an answer that carries no bytes.
pub fn encode_answer(answer: &Answer) -> Result<Vec<u8>, TaskError> {
    encode_answer_carrying(answer, 0, |_| {})
}

/// Archives an answer followed by `carried` bytes, which `fill` writes.
pub fn encode_answer_carrying(
    answer: &Answer,
    carried: usize,
    fill: impl FnOnce(&mut [u8]),
) -> Result<Vec<u8>, TaskError> {
    envelope(answer, "answer", answer_hint(answer), carried, fill)
}

/// The frame in `bytes` (validated), ignoring carried bytes.
pub fn decode_frame(bytes: &[u8]) -> Result<Frame, TaskError> {
    decode_frame_carrying(bytes).map(|(frame, _)| frame)
}

/// The frame in `bytes` (validated), and where its carried bytes lie in `bytes`.
pub fn decode_frame_carrying(
    bytes: &[u8],
) -> Result<(Frame, std::ops::Range<usize>), TaskError> {
    let (aligned, carried) = open_envelope(bytes, "frame")?;
    let frame = rkyv::from_bytes::<Frame, CodecError>(&aligned)
        .map_err(|err| TaskError::malformed("frame", err))?;
    Ok((frame, carried))
}

/// The answer in `bytes` (validated), ignoring carried bytes.
pub fn decode_answer(bytes: &[u8]) -> Result<Answer, TaskError> {
    decode_answer_carrying(bytes).map(|(answer, _)| answer)
}

/// The answer in `bytes` (validated), and where its carried bytes lie in `bytes`.
pub fn decode_answer_carrying(
    bytes: &[u8],
) -> Result<(Answer, std::ops::Range<usize>), TaskError> {
    let (aligned, carried) = open_envelope(bytes, "answer")?;
    let answer = rkyv::from_bytes::<Answer, CodecError>(&aligned)
        .map_err(|err| TaskError::malformed("answer", err))?;
    Ok((answer, carried))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_and_answers_round_trip() {
        let frame = Frame::Run(RunTask {
            pool: PoolId::new(3, 0),
            method: 10,
            query: PoolQuery::Broadcast,
            depth: 2,
            containers: vec![1, 5, 9],
            fire_and_forget: false,
            timeout_ms: 2000,
            input: vec![1, 2, 3],
            bulk: vec![BulkSegment {
                offset: 4096,
                len: 3,
                writes: true,
            }],
            caller: Some(65534),
        });
        assert_eq!(decode_frame(&encode_frame(&frame).unwrap()).unwrap(), frame);
        let bytes = encode_frame_carrying(&frame, 3, |carried| carried.copy_from_slice(b"abc"))
            .unwrap();
        let (decoded, carried) = decode_frame_carrying(&bytes).unwrap();
        assert_eq!((decoded, &bytes[carried]), (frame, &b"abc"[..]));
        let answer = Answer::Results {
            results: vec![
                (1, Outcome::Output(vec![7])),
                (5, Outcome::Failed(TaskError::NotRun)),
            ],
            written: Vec::new(),
        };
        assert_eq!(
            decode_answer(&encode_answer(&answer).unwrap()).unwrap(),
            answer
        );
    }

    #[test]
    fn garbage_and_truncated_bytes_are_malformed_not_a_panic() {
        let bytes = encode_frame(&Frame::ListPools).unwrap();
        let full = encode_frame(&Frame::DestroyPool(PoolId::new(9, 0))).unwrap();
        for bad in [
            &[][..],
            &[0xff; 3][..],
            &[0xab; 64][..],
            &full[..full.len() - 1],
            &bytes[1..],
            &u64::MAX.to_le_bytes()[..],
            &[9, 0, 0, 0, 0, 0, 0, 0, 1][..],
            &[1, 0, 0, 0, 0, 0, 0, 0, 1, 2][..],
            &[0; 16][..],
        ] {
            assert!(
                matches!(decode_frame(bad), Err(TaskError::Malformed { .. })),
                "{bad:?}"
            );
            assert!(matches!(
                decode_answer(bad),
                Err(TaskError::Malformed { .. })
            ));
        }
    }
}
