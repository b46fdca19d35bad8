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

    // The same module composed from YAML, as `runtime start` does with a config's
    // `compose:` list: `capacity: 1` reaches the container.
    let specs = RuntimeConfig::from_yaml_str(
        "compose:\n  - module: kvstore\n    name: kv_yaml\n    params: { capacity: 1 }\n",
    )?
    .compose;
    let builder = chimaera::builder().composable_module::<KvStore>();
    let pools = chimaera::compose::prepare(builder.modules(), &specs)?;
    let runtime = builder.start()?;
    let chi = runtime.client();
    for pool in &pools {
        pool.create(&chi)?;
    }
    // Same name and params: opens the composed pool.
    let kv = KvStoreClient::create(&chi, PoolQuery::local(), "kv_yaml", KvParams { capacity: 1 })?;
    kv.put(PoolQuery::local(), "only", b"1")?;
    let over = kv.put(PoolQuery::local(), "second", b"2");
    assert!(matches!(over, Err(TaskError::Failed { .. })), "{over:?}");
    runtime.stop();
    println!("kvstore: composed from YAML");
    println!("kvstore: ok");
    Ok(())
}
