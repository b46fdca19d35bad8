//! `#[chimod(composable)]` with `#[wire(compose)]` params: a compose entry's YAML
//! reaches `create`, unknown keys are refused by name; a `create` without parameters
//! accepts only empty params. No `rkyv` or `serde` path is written here.
use chimaera::compose::{self, Composable, Params};
use chimaera::config::PoolSpec;
use chimaera::prelude::*;

#[wire(compose)]
#[derive(Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StoreParams {
    pub capacity: u32,
    #[serde(default)]
    pub label: String,
}

#[chimod(name = "composable", manifest = "composable.yaml")]
pub struct Store {
    capacity: u32,
}

#[chimod(manifest = "composable.yaml", composable)]
impl Store {
    #[task(method = 0)]
    fn create(params: StoreParams) -> Self {
        Store {
            capacity: params.capacity,
        }
    }

    #[task(method = 10)]
    fn capacity(&self) -> u32 {
        self.capacity
    }
}

#[chimod(name = "composable_no_params", manifest = "composable_no_params.yaml")]
pub struct Plain;

#[chimod(manifest = "composable_no_params.yaml", composable)]
impl Plain {
    #[task(method = 0)]
    fn create(_ctx: &mut RunContext) -> Self {
        Plain
    }
}

fn params(text: &str) -> Params {
    text.parse().unwrap()
}

fn main() {
    let spec = PoolSpec {
        module: "composable".into(),
        name: "from_yaml".into(),
        containers: 1,
        params: params("{ capacity: 7 }"),
    };
    let builder = chimaera::builder().composable_module::<Store>();
    let pools = compose::prepare(builder.modules(), &[spec]).unwrap();
    let runtime = builder.start().unwrap();
    let chi = runtime.client();
    let info = pools[0].create(&chi).unwrap();
    let same = StoreParams {
        capacity: 7,
        label: String::new(),
    };
    let store = StoreClient::create(&chi, PoolQuery::local(), "from_yaml", same).unwrap();
    assert_eq!(store.pool_id(), info.id);
    assert_eq!(store.capacity(PoolQuery::local()).unwrap(), 7);
    runtime.stop();

    let typo = Store::create_input(&params("{ capacty: 7 }")).unwrap_err();
    assert!(typo.to_string().contains("capacty"), "{typo}");
    let missing = Store::create_input(&Params::empty()).unwrap_err();
    assert!(missing.to_string().contains("capacity"), "{missing}");

    Plain::create_input(&Params::empty()).unwrap();
    Plain::create_input(&params("")).unwrap();
    let extra = Plain::create_input(&params("{ size: 1 }")).unwrap_err();
    assert!(extra.to_string().contains("size"), "{extra}");
}
