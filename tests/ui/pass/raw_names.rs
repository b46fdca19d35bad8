//! Raw identifiers as task and argument names, arguments named like the generated
//! client's own parameters (`query`, `schedule`, `chi`), `route`/`dynamic` hooks, and a
//! custom lane layout.
use chimaera::prelude::*;

#[chimod(
    name = "raw_names",
    manifest = "raw_names.yaml",
    lanes(low = 2, high = 1)
)]
pub struct RawNames;

#[chimod(manifest = "raw_names.yaml")]
impl RawNames {
    #[task(method = 0)]
    fn create(_ctx: &mut RunContext) -> Self {
        RawNames
    }

    #[task(method = 10)]
    fn r#type(&self, r#in: u32, r#ref: &str) -> String {
        format!("{ref}{in}", ref = r#ref, in = r#in)
    }

    #[task(method = 11)]
    fn r#match(&self, query: u32, schedule: u32, chi: u32, input: u32) -> u32 {
        query + schedule + chi + input
    }

    #[task(method = 12, route = by_key)]
    fn peek(&self, key: u64) -> u64 {
        key
    }

    #[task(method = 13, dynamic = pick_container)]
    fn pick(&self, key: u32) -> u32 {
        key
    }

    fn by_key(&self, input: &raw_names_tasks::ArchivedPeekIn) -> LaneChoice {
        LaneChoice::Hash(input.0.to_native())
    }

    fn pick_container(input: &raw_names_tasks::ArchivedPickIn, containers: u32) -> ContainerId {
        input.0.to_native() % containers
    }
}

fn main() {
    let runtime = chimaera::builder()
        .module::<RawNames>()
        .start()
        .expect("runtime starts");
    let chi = runtime.client();
    let client = RawNamesClient::create(&chi, PoolQuery::local(), "raw").expect("create");
    let q = PoolQuery::local();
    assert_eq!(client.r#type(q, 7, "n=").unwrap(), "n=7");
    assert_eq!(
        client.async_type(q, 8, "n=").unwrap().wait().unwrap(),
        "n=8"
    );
    assert_eq!(client.r#match(q, 1, 2, 3, 4).unwrap(), 10);
    assert_eq!(client.peek(q, 5).unwrap(), 5);
    assert_eq!(client.pick(PoolQuery::dynamic(), 6).unwrap(), 6);
    assert_eq!(raw_names_tasks::TYPE, 10);
    assert_eq!(raw_names_tasks::MATCH, 11);

    let info = <RawNames as ChiMod>::info();
    assert_eq!(
        info.lanes,
        [
            LanePriority::LowLatency,
            LanePriority::LowLatency,
            LanePriority::HighLatency
        ]
    );
    let input = chimaera_core::codec::encode(&(41u64,)).unwrap();
    let container = RawNames;
    assert_eq!(
        container.monitor(raw_names_tasks::PEEK, &input),
        LaneChoice::Hash(41)
    );
    assert_eq!(
        container.monitor(raw_names_tasks::TYPE, &input),
        LaneChoice::Default
    );
    let input = chimaera_core::codec::encode(&(7u32,)).unwrap();
    assert_eq!(
        RawNames::dynamic_container(raw_names_tasks::PICK, &input, 4),
        Some(3)
    );
    assert_eq!(
        RawNames::dynamic_container(raw_names_tasks::PEEK, &input, 4),
        None
    );
    runtime.stop();
}
