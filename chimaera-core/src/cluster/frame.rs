//! The runtime's messages between nodes, and their answers: rkyv archives, validated
//! before any field is read (a peer's bytes are untrusted like a client's).
//!
//! A task travels as a [`RunTask`]: its pool, method and query, the containers it is for
//! (the receiver runs those it holds and forwards the others, see `runtime::remote`),
//! and its input — the generated archive of the task's arguments, carried as it is.
//! Its answer is an [`Answer::Results`]: each container's output archive or error.
//!
//! Pools are agreed on by node 0 (the single writer of pool ids): a node asks it with
//! [`Frame::CreatePool`] / [`Frame::DestroyPool`]; node 0 tells every node with
//! [`Frame::InstallPool`] / [`Frame::UninstallPool`]; a node that starts late asks it
//! for every pool with [`Frame::ListPools`].
//!
//! # Invariants
//!
//! * [`decode_frame`] and [`decode_answer`] never panic: bytes that are not an archive
//!   of this protocol are a [`TaskError::Malformed`].
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
    Results(Vec<(ContainerId, Outcome)>),
    /// The pool a [`Frame::CreatePool`] got or made.
    Pool(PoolRecord),
    /// Every pool ([`Frame::ListPools`]).
    Pools(Vec<PoolRecord>),
    /// Done ([`Frame::InstallPool`], [`Frame::DestroyPool`], [`Frame::UninstallPool`]).
    Done,
    /// The frame failed as a whole.
    Failed(TaskError),
}

/// Archives a frame.
pub fn encode_frame(frame: &Frame) -> Result<Vec<u8>, TaskError> {
    rkyv::to_bytes::<CodecError>(frame)
        .map(|bytes| bytes.into_vec())
        .map_err(|err| TaskError::malformed("frame", err))
}

/// Archives an answer.
pub fn encode_answer(answer: &Answer) -> Result<Vec<u8>, TaskError> {
    rkyv::to_bytes::<CodecError>(answer)
        .map(|bytes| bytes.into_vec())
        .map_err(|err| TaskError::malformed("answer", err))
}

/// The frame in `bytes` (validated).
pub fn decode_frame(bytes: &[u8]) -> Result<Frame, TaskError> {
    let aligned = aligned_copy(bytes);
    rkyv::from_bytes::<Frame, CodecError>(&aligned)
        .map_err(|err| TaskError::malformed("frame", err))
}

/// The answer in `bytes` (validated).
pub fn decode_answer(bytes: &[u8]) -> Result<Answer, TaskError> {
    let aligned = aligned_copy(bytes);
    rkyv::from_bytes::<Answer, CodecError>(&aligned)
        .map_err(|err| TaskError::malformed("answer", err))
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
        });
        assert_eq!(decode_frame(&encode_frame(&frame).unwrap()).unwrap(), frame);
        let answer = Answer::Results(vec![
            (1, Outcome::Output(vec![7])),
            (5, Outcome::Failed(TaskError::NotRun)),
        ]);
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
