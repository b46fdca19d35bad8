//! Every argument form on the wire, end to end through a runtime: `&str` and `&[u8]`
//! borrowed from the received bytes, `&[T]` and `&T` deserialized then lent, `T` by
//! value, `&mut T` in-out (written back by the sync client method), explicit
//! lifetimes, no arguments, `()` returns, `Result` errors, `&[i8]` borrowed, and a
//! `&mut [u8]` byte buffer (a private copy for the handler; through an in-process client
//! the bytes travel inline and `wait` writes them back into the caller's slice).
use chimaera::prelude::*;
use std::sync::atomic::{AtomicU32, Ordering};

#[derive(Clone, Debug, Default, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Settings {
    pub prefix: String,
}

#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Point {
    pub x: i64,
    pub y: i64,
}

#[chimod(name = "wire_forms", manifest = "wire_forms.yaml")]
pub struct WireForms {
    prefix: String,
    calls: AtomicU32,
}

#[chimod(manifest = "wire_forms.yaml")]
impl WireForms {
    #[task(method = 0)]
    fn create(settings: &Settings, scale: u32) -> Result<Self, TaskError> {
        Ok(WireForms {
            prefix: settings.prefix.repeat(scale as usize),
            calls: AtomicU32::new(0),
        })
    }

    #[task(method = 1)]
    fn destroy(&self, _ctx: &mut RunContext) {}

    #[task(method = 10)]
    fn echo(&self, text: &str) -> String {
        self.calls.fetch_add(1, Ordering::Relaxed);
        format!("{}{text}", self.prefix)
    }

    #[task(method = 11)]
    fn sum(&self, _ctx: &mut RunContext, bytes: &[u8], words: &[u32]) -> u64 {
        bytes.iter().map(|&b| u64::from(b)).sum::<u64>()
            + words.iter().map(|&w| u64::from(w)).sum::<u64>()
    }

    #[task(method = 12)]
    fn measure(&self, from: &Point, to: Point) -> (i64, i64) {
        (to.x - from.x, to.y - from.y)
    }

    #[task(method = 13)]
    fn append(&self, log: &mut Vec<String>, line: &str, count: &mut u32) -> usize {
        log.push(line.to_owned());
        *count += 1;
        log.len()
    }

    #[task(method = 14)]
    fn count(&self) -> u32 {
        self.calls.load(Ordering::Relaxed)
    }

    #[task(method = 15)]
    fn nothing(&self, _ignored: u8) {}

    #[task(method = 16)]
    fn join<'a, 'b: 'a>(&self, left: &'a str, right: &'b str) -> String
    where
        'a: 'a,
    {
        format!("{left}{right}")
    }

    #[task(method = 17)]
    fn fail(&self, why: &str) -> Result<u8, TaskError> {
        Err(TaskError::failed(why))
    }

    #[task(method = 18)]
    fn fill(&self, buffer: &mut [u8], signed: &[i8], byte: u8) -> usize {
        buffer.fill(byte);
        buffer.len() + signed.len()
    }

    pub fn helper_is_left_alone(&self) -> usize {
        self.prefix.len()
    }
}

fn main() {
    let runtime = chimaera::builder()
        .module::<WireForms>()
        .start()
        .expect("runtime starts");
    let chi = runtime.client();
    let settings = Settings {
        prefix: "> ".to_owned(),
    };
    let client =
        WireFormsClient::create(&chi, PoolQuery::local(), "forms", &settings, 2).expect("create");
    let q = PoolQuery::local();
    assert_eq!(client.echo(q, "hi").unwrap(), "> > hi");
    assert_eq!(client.sum(q, &[1, 2, 250], &[1000, 2000]).unwrap(), 3253);
    let from = Point { x: 1, y: 2 };
    assert_eq!(
        client.measure(q, &from, Point { x: 4, y: 0 }).unwrap(),
        (3, -2)
    );

    let mut log = vec!["first".to_owned()];
    let mut count = 7;
    assert_eq!(client.append(q, &mut log, "second", &mut count).unwrap(), 2);
    assert_eq!(log, ["first", "second"]);
    assert_eq!(count, 8);
    let pending = client.async_append(q, &log, "third", &count).unwrap();
    let (len, log_after, count_after) = pending.wait().unwrap();
    assert_eq!((len, log_after.len(), count_after), (3, 3, 9));

    assert_eq!(client.count(q).unwrap(), 1);
    client.nothing(q, 0).unwrap();
    let (left, right) = (String::from("ab"), String::from("cd"));
    assert_eq!(client.join(q, &left, &right).unwrap(), "abcd");
    assert!(client.fail(q, "on purpose").is_err());
    let mut buffer = chi.allocate_buffer(5).unwrap();
    assert!(!buffer.is_shared(), "in-process buffers are heap memory");
    assert_eq!(client.fill(q, &mut buffer, &[-1, 1], 7).unwrap(), 7);
    assert_eq!(&buffer[..], &[7; 5]);
    let mut plain = [0u8; 3];
    assert_eq!(client.fill(q, &mut plain, &[], 9).unwrap(), 3);
    assert_eq!(plain, [9; 3]);
    let pending = client.async_fill(q, &mut plain, &[], 1).unwrap();
    assert_eq!(pending.wait().unwrap(), 3, "a written buffer is filled, not returned");
    assert_eq!(plain, [1; 3]);
    client
        .spawn_echo(q, Schedule::FireAndForget, "spawned")
        .unwrap();

    let info = <WireForms as ChiMod>::info();
    assert_eq!(
        (info.name, info.namespace, info.version),
        ("wire_forms", "chimaera", "0.3.0")
    );
    let ids: Vec<_> = info.methods.iter().map(|m| m.id).collect();
    assert_eq!(ids, [0, 1, 10, 11, 12, 13, 14, 15, 16, 17, 18]);
    assert_eq!(info.method(13).unwrap().name, "kAppend");
    assert_eq!(wire_forms_tasks::APPEND, 13);

    let attached = WireFormsClient::attach(chi_of(&client), client.pool_id());
    assert_eq!(attached.echo(q, "again").unwrap(), "> > again");
    client.destroy_pool().unwrap();
    runtime.stop();
}

fn chi_of(client: &WireFormsClient) -> &Client {
    client.client()
}
