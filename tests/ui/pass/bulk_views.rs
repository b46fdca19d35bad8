//! The zero-copy views as task arguments: `BulkIn<'_>` read through copies at offsets,
//! `BulkOut<'_>` written in place (taken `mut`, with an explicit lifetime, by a path),
//! both in one task and beside plain byte buffers. Through an in-process client the
//! bytes travel inline and the same handlers serve them; the client passes `&[u8]` and
//! `&mut [u8]`, and `wait` fills the written ones.
use chimaera::prelude::*;

#[chimod(name = "bulk_views", manifest = "bulk_views.yaml")]
pub struct BulkViews;

#[chimod(manifest = "bulk_views.yaml")]
impl BulkViews {
    #[task(method = 0)]
    fn create() -> Self {
        BulkViews
    }

    #[task(method = 10)]
    fn checksum(&self, data: BulkIn<'_>) -> u64 {
        let mut chunk = [0u8; 3];
        let mut sum = 0u64;
        let mut at = 0;
        while at < data.len() {
            let part = &mut chunk[..(data.len() - at).min(3)];
            data.read_at(at, part).expect("in bounds");
            sum += part.iter().map(|&b| u64::from(b)).sum::<u64>();
            at += part.len();
        }
        sum
    }

    #[task(method = 11)]
    fn stamp<'a>(&self, mut out: chimaera::BulkOut<'a>, at: u32) -> Result<usize, TaskError> {
        out.fill(b'.');
        out.write_at(at as usize, b"stamp")?;
        Ok(out.len())
    }

    #[task(method = 12)]
    fn copy(&self, ctx: &mut RunContext, from: BulkIn<'_>, mut to: BulkOut<'_>) -> bool {
        let _ = ctx.task_id();
        to.write_at(0, &from.to_vec()).is_ok()
    }

    #[task(method = 13)]
    fn mixed(&self, plain: &[u8], view: BulkIn<'_>, written: &mut [u8], count: &mut u32) -> u8 {
        *count += 1;
        written.copy_from_slice(&view.to_vec()[..written.len()]);
        plain.iter().fold(0, |a, &b| a ^ b)
    }
}

fn main() {
    let runtime = chimaera::builder()
        .module::<BulkViews>()
        .start()
        .expect("runtime starts");
    let chi = runtime.client();
    let client = BulkViewsClient::create(&chi, PoolQuery::local(), "views").expect("create");
    let q = PoolQuery::local();

    let data: Vec<u8> = (1..=10).collect();
    assert_eq!(client.checksum(q, &data).unwrap(), 55);
    assert_eq!(client.checksum(q, &[]).unwrap(), 0);

    let mut page = [0u8; 12];
    assert_eq!(client.stamp(q, &mut page, 2).unwrap(), 12);
    assert_eq!(&page, b"..stamp.....");
    assert!(client.stamp(q, &mut page, 9).is_err(), "a write past the end fails");

    let mut target = vec![0u8; 4];
    let pending = client.async_copy(q, b"abcd", &mut target).unwrap();
    assert!(pending.wait().unwrap());
    assert_eq!(target, b"abcd");

    let mut buffer = chi.allocate_buffer(3).unwrap();
    let mut count = 41;
    assert_eq!(client.mixed(q, &[1, 2, 4], b"xyz!", &mut buffer, &mut count).unwrap(), 7);
    assert_eq!((&buffer[..], count), (&b"xyz"[..], 42));
    let (xor, count_after) = client
        .async_mixed(q, &[3], b"uvw", &mut buffer, &count)
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!((xor, count_after, &buffer[..]), (3, 43, &b"uvw"[..]));
    client
        .spawn_stamp(q, Schedule::FireAndForget, &mut page, 0)
        .unwrap();
    runtime.stop();
}
