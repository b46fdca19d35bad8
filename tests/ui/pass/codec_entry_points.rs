//! The generated entry points that need no runtime — info, save/load of inputs and
//! outputs, new_copy, monitor, dynamic routing — and their answers to a wrong method id
//! or a malformed archive (an error or the default, never a panic).
use chimaera::prelude::*;

#[chimod(name = "codec_entry_points", manifest = "codec_entry_points.yaml")]
pub struct Codec;

#[chimod(manifest = "codec_entry_points.yaml")]
impl Codec {
    #[task(method = 0)]
    fn create(label: &str) -> Result<Self, TaskError> {
        let _ = label;
        Ok(Codec)
    }

    #[task(method = 10, route = lane_of)]
    fn put(&self, key: &str, value: &[u8]) -> usize {
        key.len() + value.len()
    }

    #[task(method = 11)]
    fn bump(&self, counter: &mut u64) {
        *counter += 1;
    }

    fn lane_of(&self, input: &codec_tasks::ArchivedPutIn) -> LaneChoice {
        LaneChoice::Lane(input.1.len() as u32)
    }
}

use codec_tasks::{BumpOut, PutIn, TaskIn, TaskOut, BUMP, CREATE, PUT};

fn main() {
    let info = <Codec as ChiMod>::info();
    assert_eq!(info.version, "2.1.0");
    assert_eq!(info.lanes, [LanePriority::LowLatency]);
    assert_eq!(info.method(PUT).unwrap().function, "put");

    let input: PutIn = ("key".to_owned(), chimaera_core::bulk::Bulk::Inline(vec![1, 2, 3]));
    let bytes = Codec::save_in(&TaskIn::Put(input.clone())).unwrap();
    match Codec::load_in(PUT, &bytes).unwrap() {
        TaskIn::Put(decoded) => assert_eq!(decoded, input),
        _ => panic!("wrong variant"),
    }
    assert!(Codec::load_in(99, &bytes).is_err());
    assert!(Codec::load_in(PUT, &[1, 2, 3]).is_err());

    let copy = Codec::new_copy(PUT, &bytes).unwrap();
    assert_eq!(&copy[..], &bytes[..]);
    assert!(Codec::new_copy(BUMP, &[0xff; 3]).is_err());
    assert!(Codec::new_copy(77, &bytes).is_err());

    let out: BumpOut = ((), 5);
    let bytes_out = Codec::save_out(&TaskOut::Bump(out)).unwrap();
    match Codec::load_out(BUMP, &bytes_out).unwrap() {
        TaskOut::Bump(((), counter)) => assert_eq!(counter, 5),
        _ => panic!("wrong variant"),
    }
    assert!(Codec::load_out(CREATE, &bytes_out).is_err());

    assert_eq!(Codec.monitor(PUT, &bytes), LaneChoice::Lane(3));
    assert_eq!(Codec.monitor(PUT, &[7; 2]), LaneChoice::Default);
    assert_eq!(Codec.monitor(BUMP, &bytes), LaneChoice::Default);
    assert_eq!(Codec::dynamic_container(PUT, &bytes, 4), None);
}
