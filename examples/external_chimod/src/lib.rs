//! A key-value store chimod in a repository of its own (namespace `myproject`).
//!
//! `src/main.rs` is this repository's runtime binary (the `chimaera` CLI with this module
//! linked, pools composable from YAML); `src/bin/demo.rs` runs the module in an embedded
//! runtime. The crate depends on `chimaera` alone: `#[chimaera::wire]` derives the
//! parameter type's wire layout (and, with `compose`, its YAML reading) through it.
use chimaera::prelude::*;
use std::collections::HashMap;
use std::sync::RwLock;

/// Create parameters: how many entries one container accepts. In a `compose:` entry:
/// `params: { capacity: 100 }`.
#[chimaera::wire(compose)]
#[derive(Clone, Debug, PartialEq)]
pub struct KvParams {
    pub capacity: u32,
}

/// One container: a map. The std lock is held for a map operation only, never across
/// a wait, so it cannot block a worker for long.
#[chimod(name = "kvstore")]
pub struct KvStore {
    capacity: usize,
    entries: RwLock<HashMap<String, Vec<u8>>>,
}

#[chimod(composable)]
impl KvStore {
    #[task(method = 0)]
    fn create(_ctx: &mut RunContext, params: KvParams) -> Result<Self, TaskError> {
        if params.capacity == 0 {
            return Err(TaskError::failed("capacity must be at least 1"));
        }
        Ok(KvStore {
            capacity: params.capacity as usize,
            entries: RwLock::new(HashMap::new()),
        })
    }

    /// Stores `value` under `key`; returns the previous value, if any.
    #[task(method = 10)]
    fn put(&self, key: &str, value: &[u8]) -> Result<Option<Vec<u8>>, TaskError> {
        let mut entries = self
            .entries
            .write()
            .map_err(|_| TaskError::failed("poisoned"))?;
        if entries.len() >= self.capacity && !entries.contains_key(key) {
            return Err(TaskError::failed(format!(
                "store is full ({} entries)",
                self.capacity
            )));
        }
        Ok(entries.insert(key.to_owned(), value.to_vec()))
    }

    #[task(method = 11)]
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, TaskError> {
        let entries = self
            .entries
            .read()
            .map_err(|_| TaskError::failed("poisoned"))?;
        Ok(entries.get(key).cloned())
    }

    #[task(method = 12)]
    fn remove(&self, key: &str) -> Result<bool, TaskError> {
        let mut entries = self
            .entries
            .write()
            .map_err(|_| TaskError::failed("poisoned"))?;
        Ok(entries.remove(key).is_some())
    }

    #[task(method = 13)]
    fn len(&self) -> Result<u64, TaskError> {
        let entries = self
            .entries
            .read()
            .map_err(|_| TaskError::failed("poisoned"))?;
        Ok(entries.len() as u64)
    }
}
