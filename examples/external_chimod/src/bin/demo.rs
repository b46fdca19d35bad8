//! Runs the kvstore chimod in an embedded runtime and checks what it answers.
use chimaera::prelude::*;
use myproject_kvstore::{KvParams, KvStore, KvStoreClient};

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
    println!(
        "kvstore: alpha={:?} len={len} full_error={:?}",
        String::from_utf8_lossy(&alpha.unwrap_or_default()),
        full.err().map(|e| e.to_string())
    );
    runtime.stop();
    println!("kvstore: ok");
    Ok(())
}
