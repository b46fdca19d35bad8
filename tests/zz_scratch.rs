use chimaera::mod_name::{CreateParams, ModNameClient};
use chimaera::prelude::*;
#[test]
fn scratch() {
    let mut cfg = RuntimeConfig::default();
    cfg.instance =
        chimaera::shm::InstanceName::new(&format!("scratch{}", std::process::id())).unwrap();
    let rt = chimaera::builder()
        .config(cfg.clone())
        .serve()
        .expect("serve");
    let chi = Client::connect_to(&cfg).expect("connect");
    let m = ModNameClient::create(&chi, PoolQuery::local(), "p", CreateParams::default())
        .expect("create");
    assert_eq!(m.custom(PoolQuery::local(), "hello", 1).unwrap(), "hello");
    let big = "x".repeat(5000);
    assert_eq!(m.custom(PoolQuery::local(), &big, 1).unwrap(), big);
    assert_eq!(m.wait_test(PoolQuery::local(), 10).unwrap(), 10);
    let t = std::time::Instant::now();
    for i in 0..20000 {
        m.custom(PoolQuery::local(), "", i).unwrap();
    }
    eprintln!("rtt {:?}", t.elapsed() / 20000);
    let ps: Vec<_> = (0..1000)
        .map(|i| m.async_custom(PoolQuery::local(), "a", i).unwrap())
        .collect();
    for p in ps {
        assert_eq!(p.wait().unwrap(), "a");
    }
    drop(chi);
    rt.stop();
}
