//! Byte buffers between a client process and a runtime process over shared memory: the
//! handler gets the right bytes through the zero-copy views and through private copies,
//! written buffers come back in place (shared) or inline (heap), a dropped `Pending`
//! keeps its buffer until the runtime is done with it, and a client scribbling on a
//! buffer while tasks read it harms nothing but its own answers.
//!
//! The runtime is this test binary re-run as a child process serving the bulk probe
//! chimod (`tests/bulk_probe`); the test itself is the client. Each test has its own
//! instance. No timing assertions.
mod bulk_probe;
mod support;

use bulk_probe::{pattern_byte, BulkProbe, BulkProbeClient};
use chimaera::prelude::*;
use chimaera_core::bulk::Bulk;
use support::{serve_as_runtime_child, wait_until, Launch, RuntimeProcess};

/// Starts a runtime child process serving the bulk probe for the instance of `test`.
fn start_runtime(test: &str) -> RuntimeProcess {
    RuntimeProcess::start_with(test, "", Launch::TEST_BINARY)
}

impl RuntimeProcess {
    fn probe(&self) -> (Client, BulkProbeClient) {
        let chi = self.client();
        let probe = BulkProbeClient::create(&chi, PoolQuery::local(), "probe").expect("pool");
        (chi, probe)
    }
}

/// The runtime child: serves the bulk probe until killed. Only runs when a test starts it.
#[test]
#[ignore = "entry point of the runtime child process, started by the tests in this file"]
fn runtime_child_entry() {
    serve_as_runtime_child(|builder| builder.module::<BulkProbe>());
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| pattern_byte(seed, i)).collect()
}

fn sum(bytes: &[u8]) -> u64 {
    bytes.iter().map(|&b| u64::from(b)).sum()
}

#[test]
fn handlers_read_shared_buffers_through_views_and_private_copies() {
    let runtime = start_runtime("read");
    let (chi, probe) = runtime.probe();
    let q = PoolQuery::local();
    let mut buffer = chi.allocate_buffer(10_000).unwrap();
    assert!(buffer.is_shared());
    buffer.copy_from_slice(&pattern(5, 10_000));
    let expected = sum(&buffer);
    // Whole and at odd offsets and lengths (unaligned words at both ends of the copy).
    for (at, len) in [(0, 10_000), (3, 4093), (4095, 9), (9_999, 1)] {
        let part = &buffer[at..at + len];
        assert!(
            chi.bulk_ref(part).is_shared(),
            "{at}+{len} travels by reference"
        );
        assert_eq!(
            probe.sum_plain(q, part).unwrap(),
            (sum(part), len as u64),
            "plain {at}+{len}"
        );
        assert_eq!(
            probe.sum_view(q, part).unwrap(),
            (sum(part), true),
            "view {at}+{len}"
        );
    }
    let pending = probe.async_sum_view(q, &buffer).unwrap();
    assert_eq!(pending.wait().unwrap(), (expected, true));
    // Heap bytes travel inline: the same handlers see private bytes.
    let heap = pattern(9, 3000);
    assert_eq!(probe.sum_view(q, &heap).unwrap(), (sum(&heap), false));
    assert_eq!(probe.sum_plain(q, &heap).unwrap(), (sum(&heap), 3000));
}

#[test]
fn written_buffers_come_back_in_place_or_inline() {
    let runtime = start_runtime("write");
    let (chi, probe) = runtime.probe();
    let q = PoolQuery::local();
    let mut buffer = chi.allocate_buffer(8192).unwrap();
    buffer.copy_from_slice(&pattern(1, 8192));

    // `&mut [u8]`: the handler sees a private copy of what the buffer held, and its
    // writes are copied back into the client's buffer.
    let before = sum(&buffer[100..4196]);
    assert_eq!(
        probe.fill_plain(q, &mut buffer[100..4196], 7).unwrap(),
        before
    );
    assert_eq!(&buffer[100..4196], &pattern(7, 4096)[..]);
    assert_eq!(&buffer[..100], &pattern(1, 8192)[..100], "nothing before");
    assert_eq!(&buffer[4196..], &pattern(1, 8192)[4196..], "nothing after");

    // `BulkOut`: written in place.
    assert!(probe.fill_view(q, &mut buffer[5..8000], 3).unwrap());
    assert_eq!(&buffer[5..8000], &pattern(3, 7995)[..]);
    let pending = probe.async_fill_view(q, &mut buffer, 4).unwrap();
    assert!(
        pending.wait().unwrap(),
        "in place: the output carries no bytes"
    );
    assert_eq!(&buffer[..], &pattern(4, 8192)[..]);

    // Heap slices: inline both ways, written back by the client.
    let mut heap = pattern(2, 3000);
    assert_eq!(
        probe.fill_plain(q, &mut heap, 8).unwrap(),
        sum(&pattern(2, 3000))
    );
    assert_eq!(heap, pattern(8, 3000));
    assert!(!probe.fill_view(q, &mut heap, 9).unwrap());
    assert_eq!(heap, pattern(9, 3000));
    let pending = probe.async_fill_plain(q, &mut heap, 10).unwrap();
    assert_eq!(pending.wait().unwrap(), sum(&pattern(9, 3000)));
    assert_eq!(heap, pattern(10, 3000));
}

/// A written byte buffer and another in-out value in one call: the bytes are copied back
/// from the output archive, the value comes back with the return value. Over shared
/// memory (a shared buffer and a heap slice) and in process.
#[test]
fn a_written_buffer_and_an_in_out_value_come_back_together() {
    fn check(probe: &BulkProbeClient, mut data: impl AsMut<[u8]>) {
        let q = PoolQuery::local();
        let data = data.as_mut();
        data.copy_from_slice(&pattern(1, data.len()));
        let before = sum(data);
        let mut count = 5u64;
        assert_eq!(probe.fill_counted(q, data, 2, &mut count).unwrap(), before);
        assert_eq!(
            (&*data, count),
            (&pattern(2, data.len())[..], 5 + data.len() as u64)
        );
        let pending = probe.async_fill_counted(q, data, 3, &count).unwrap();
        assert_eq!(
            pending.wait().unwrap(),
            (sum(&pattern(2, data.len())), 5 + 2 * data.len() as u64)
        );
        assert_eq!(data, &pattern(3, data.len())[..]);
    }
    let runtime = start_runtime("counted");
    let (chi, probe) = runtime.probe();
    check(&probe, chi.allocate_buffer(4096).unwrap());
    check(&probe, vec![0u8; 3000]);
    let in_process = chimaera::builder()
        .module::<BulkProbe>()
        .start()
        .expect("an in-process runtime");
    let chi = in_process.client();
    let probe = BulkProbeClient::create(&chi, PoolQuery::local(), "probe").expect("pool");
    check(&probe, chi.allocate_buffer(4096).unwrap());
    check(&probe, vec![0u8; 3000]);
}

/// The reproduction, in the form safe code can still write: a buffer lent to a
/// call whose handler writes it later, the call's `Pending` dropped, the buffer freed
/// and a new one allocated. Dropping the `Pending` waits for the call, so the runtime
/// never writes the new buffer (before, it was filled with `0xab`).
#[test]
fn a_dropped_pending_keeps_its_buffer_until_the_runtime_is_done() {
    let runtime = start_runtime("drop");
    let (chi, probe) = runtime.probe();
    let q = PoolQuery::local();
    let mut buffer = chi.allocate_buffer(4096).unwrap();
    let pending = probe.async_fill_later(q, &mut buffer, 300).unwrap();
    drop(pending);
    assert!(
        buffer.iter().all(|&b| b == 0xab),
        "the call completed before the drop returned"
    );
    drop(buffer);
    let fresh = chi.allocate_buffer(4096).unwrap();
    wait_until("the task to finish", || probe.finished(q).unwrap() >= 1);
    assert!(
        fresh.iter().all(|&b| b == 0),
        "a buffer passed to no task was written"
    );
}

/// A leaked `Pending` skips the wait of its drop: its buffer, dropped while the call is
/// in flight, keeps its memory out of the share (leaked), so the runtime's late write
/// never lands in a new buffer.
#[test]
fn a_leaked_pending_never_lets_its_buffer_memory_be_reused() {
    let runtime = start_runtime("leak");
    let (chi, probe) = runtime.probe();
    let q = PoolQuery::local();
    let mut buffer = chi.allocate_buffer(4096).unwrap();
    std::mem::forget(probe.async_fill_later(q, &mut buffer, 300).unwrap());
    drop(buffer);
    let fresh = chi.allocate_buffer(4096).unwrap();
    wait_until("the task to finish", || probe.finished(q).unwrap() >= 1);
    assert!(
        fresh.iter().all(|&b| b == 0),
        "a buffer passed to no task was written"
    );
    // A buffer dropped after its calls are over gives its memory back as before.
    let reused = fresh.as_ptr();
    drop(fresh);
    assert_eq!(chi.allocate_buffer(4096).unwrap().as_ptr(), reused);
}

/// A hostile client: tasks reference a buffer (by a hand-made reference, as raw
/// submissions can) while the client rewrites it without pause. The runtime copies
/// atomically and trusts none of the bytes: every task answers, and the runtime serves
/// on.
#[test]
fn a_client_scribbling_on_a_buffer_in_use_harms_only_its_own_answers() {
    let runtime = start_runtime("scribble");
    let (chi, probe) = runtime.probe();
    let q = PoolQuery::local();
    let mut buffer = chi.allocate_buffer(64 * 1024).unwrap();
    let reference = match chi.bulk_ref(&buffer) {
        chimaera_core::bulk::BulkWire::Shared { offset, len } => Bulk::Shared { offset, len },
        chimaera_core::bulk::BulkWire::Inline(_) => panic!("a shared buffer travels by reference"),
    };
    let input = chimaera_core::codec::encode(&(reference,)).unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        let scribbler = scope.spawn(|| {
            let mut round = 0u8;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                buffer.fill(round);
                round = round.wrapping_add(1);
            }
        });
        for method in [
            bulk_probe::bulk_probe_tasks::SUM_PLAIN,
            bulk_probe::bulk_probe_tasks::SUM_VIEW,
        ]
        .into_iter()
        .cycle()
        .take(200)
        {
            let results = chi
                .submit(probe.pool_id(), method, q, input.clone(), None)
                .unwrap()
                .wait();
            assert!(results[0].1.is_ok(), "{results:?}");
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        scribbler.join().unwrap();
    });
    let heap = pattern(1, 100);
    assert_eq!(probe.sum_view(q, &heap).unwrap(), (sum(&heap), false));
}

/// The data share's limits are typed errors that name their sizes: a buffer larger than
/// the share, a share full of held buffers, an input larger than the share.
#[test]
fn data_share_limits_are_typed_errors() {
    let runtime = RuntimeProcess::start_with(
        "sharelimits",
        "max_clients: 4\nshm:\n  client_data_size: 256KiB\n",
        Launch::TEST_BINARY,
    );
    let (chi, probe) = runtime.probe();
    let share: u64 = 64 << 10;
    assert_eq!(
        chi.allocate_buffer(1 << 20).unwrap_err(),
        BufferError::TooLarge {
            len: 1 << 20,
            share,
        }
    );
    let held = chi.allocate_buffer(48 << 10).unwrap();
    let full = chi.allocate_buffer(32 << 10).unwrap_err();
    assert_eq!(
        full,
        BufferError::ShareFull {
            len: 32 << 10,
            share,
            in_use: 48 << 10
        }
    );
    // `?` in a handler or a function returning `TaskError` keeps the sizes.
    assert_eq!(
        TaskError::from(full),
        TaskError::DataShareFull {
            len: 32 << 10,
            share,
            in_use: 48 << 10
        }
    );
    drop(held);
    let input = vec![1u8; 128 << 10];
    assert!(matches!(
        probe.sum_plain(PoolQuery::local(), &input),
        Err(TaskError::InputTooLarge { share: 65536, .. })
    ));
    assert_eq!(
        probe.sum_plain(PoolQuery::local(), &input[..1000]),
        Ok((1000, 1000))
    );
}
