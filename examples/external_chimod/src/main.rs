//! A key-value store chimod in a repository of its own (namespace `myproject`), linked
//! into a runtime by a `main` of a few lines.
use chimaera::prelude::*;
use std::collections::HashMap;
use std::sync::RwLock;

/// Create parameters: how many entries one container accepts.
#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
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

#[chimod]
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
        let mut entries = self.entries.write().map_err(|_| TaskError::failed("poisoned"))?;
        if entries.len() >= self.capacity && !entries.contains_key(key) {
            return Err(TaskError::failed(format!("store is full ({} entries)", self.capacity)));
        }
        Ok(entries.insert(key.to_owned(), value.to_vec()))
    }

    #[task(method = 11)]
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, TaskError> {
        let entries = self.entries.read().map_err(|_| TaskError::failed("poisoned"))?;
        Ok(entries.get(key).cloned())
    }

    #[task(method = 12)]
    fn remove(&self, key: &str) -> Result<bool, TaskError> {
        let mut entries = self.entries.write().map_err(|_| TaskError::failed("poisoned"))?;
        Ok(entries.remove(key).is_some())
    }

    #[task(method = 13)]
    fn len(&self) -> Result<u64, TaskError> {
        let entries = self.entries.read().map_err(|_| TaskError::failed("poisoned"))?;
        Ok(entries.len() as u64)
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let runtime = chimaera::builder().module::<KvStore>().start()?;
    let chi = runtime.client();
    let kv = KvStoreClient::create(&chi, PoolQuery::local(), "kv", KvParams { capacity: 2 })?;

    kv.put(PoolQuery::local(), "alpha", b"1")?;
    let previous = kv.put(PoolQuery::local(), "alpha", b"one")?;
    kv.put(PoolQuery::local(), "beta", b"two")?;
    let full = kv.put(PoolQuery::local(), "gamma", b"three");
    let alpha = kv.get(PoolQuery::local(), "alpha")?;
    let removed = kv.remove(PoolQuery::local(), "beta")?;
    let len = kv.len(PoolQuery::local())?;

    assert_eq!(previous.as_deref(), Some(&b"1"[..]));
    assert_eq!(alpha.as_deref(), Some(&b"one"[..]));
    assert!(matches!(full, Err(TaskError::Failed { .. })));
    assert!(removed);
    assert_eq!(len, 1);
    println!("kvstore: alpha={:?} len={len} full_error={:?}", String::from_utf8_lossy(&alpha.unwrap_or_default()), full.err().map(|e| e.to_string()));
    runtime.stop();
    println!("kvstore: ok");
    Ok(())
}
