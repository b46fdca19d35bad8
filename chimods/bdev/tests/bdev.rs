//! The bdev chimod through an in-process runtime: real workers, real coroutines, real
//! files. Each test has its own runtime, pool names and files. No timing assertions.
use chimaera_bdev::{Bdev, BdevClient, BdevParams, BdevType, Block};
use chimaera_core::{PoolQuery, Runtime, TaskError};
use std::path::PathBuf;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

fn start() -> Runtime {
    Runtime::builder()
        .module::<chimaera_admin::Admin>()
        .module::<Bdev>()
        .start()
        .expect("runtime starts")
}

fn local() -> PoolQuery {
    PoolQuery::local()
}

fn ram_params(size: u64) -> BdevParams {
    BdevParams {
        bdev_type: BdevType::Ram,
        total_size: size,
        ..BdevParams::default()
    }
}

fn file_params(size: u64, direct: bool) -> BdevParams {
    BdevParams {
        bdev_type: BdevType::File,
        total_size: size,
        direct,
        ..BdevParams::default()
    }
}

fn ram(rt: &Runtime, name: &str, size: u64) -> BdevClient {
    BdevClient::create(&rt.client(), local(), name, ram_params(size)).expect("create RAM bdev")
}

/// A directory of its own for one test (on the work disk, where `O_DIRECT` works),
/// removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(test: &str) -> TempDir {
        let dir =
            std::env::temp_dir().join(format!("chimaera-bdev-it-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn file(&self, name: &str) -> String {
        self.0.join(name).to_string_lossy().into_owned()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| {
            (i as u64)
                .wrapping_mul(131)
                .wrapping_add(seed.wrapping_mul(0x9e37)) as u8
        })
        .collect()
}

/// Reads up to `len` bytes of `block` into a fresh vector (an ordinary heap slice, so
/// the bytes come back in the output), cut to what was read.
fn read_vec(bdev: &BdevClient, block: Block, len: usize) -> Result<Vec<u8>, TaskError> {
    let mut data = vec![0u8; len];
    let read = bdev.read(local(), block, &mut data)?;
    data.truncate(read as usize);
    Ok(data)
}

fn failure_message(err: &TaskError) -> &str {
    match err {
        TaskError::Failed { message } => message,
        other => panic!("expected a task failure, got {other:?}"),
    }
}

#[test]
fn sixteen_4k_allocations_are_disjoint_and_4k_aligned() {
    let rt = start();
    let bdev = ram(&rt, "alloc16", MIB);
    let mut blocks: Vec<Block> = Vec::new();
    for _ in 0..16 {
        let got = bdev.allocate_blocks(local(), 4 * KIB).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].size, got[0].block_type), (4 * KIB, 2));
        blocks.extend(got);
    }
    for block in &blocks {
        assert_eq!(block.offset % (4 * KIB), 0, "{block:?}");
        assert!(block.offset + block.size <= MIB);
    }
    blocks.sort_by_key(|b| b.offset);
    for pair in blocks.windows(2) {
        assert!(
            pair[0].offset + pair[0].size <= pair[1].offset,
            "{pair:?} overlap"
        );
    }
    assert_eq!(
        bdev.get_stats(local()).unwrap().remaining_bytes,
        MIB - 64 * KIB
    );
}

#[test]
fn a_300k_request_is_two_128k_blocks_and_a_64k_block() {
    let rt = start();
    let bdev = ram(&rt, "alloc300", MIB);
    let blocks = bdev.allocate_blocks(local(), 300 * KIB).unwrap();
    let sizes: Vec<u64> = blocks.iter().map(|b| b.size).collect();
    assert_eq!(sizes, [128 * KIB, 128 * KIB, 64 * KIB]);
    assert!(blocks.iter().all(|b| b.offset % b.size == 0));
}

#[test]
fn over_capacity_fails_and_leaves_remaining_space_unchanged() {
    let rt = start();
    let bdev = ram(&rt, "overcap", MIB);
    let held = bdev.allocate_blocks(local(), 200 * KIB).unwrap();
    let before = bdev.get_stats(local()).unwrap().remaining_bytes;
    assert_eq!(before, MIB - 256 * KIB);
    for size in [MIB, before + 1, 10 * MIB, u64::MAX] {
        let err = bdev.allocate_blocks(local(), size).unwrap_err();
        assert!(failure_message(&err).contains("out of space"), "{err}");
        assert_eq!(bdev.get_stats(local()).unwrap().remaining_bytes, before);
    }
    // Exactly the rest still fits, in one request.
    let rest = bdev.allocate_blocks(local(), before).unwrap();
    assert_eq!(rest.iter().map(|b| b.size).sum::<u64>(), before);
    assert_eq!(bdev.get_stats(local()).unwrap().remaining_bytes, 0);
    bdev.free_blocks(local(), held).unwrap();
    bdev.free_blocks(local(), rest).unwrap();
    assert_eq!(bdev.get_stats(local()).unwrap().remaining_bytes, MIB);
}

#[test]
fn a_device_filled_with_4k_blocks_and_freed_serves_half_of_itself_at_once() {
    let rt = start();
    let size = 16 * MIB;
    let bdev = ram(&rt, "refill", size);
    let mut blocks = Vec::new();
    loop {
        match bdev.allocate_blocks(local(), 4 * KIB) {
            Ok(got) => blocks.extend(got),
            Err(err) => {
                assert!(failure_message(&err).contains("out of space"), "{err}");
                break;
            }
        }
    }
    assert_eq!(blocks.len() as u64, size / (4 * KIB));
    assert_eq!(bdev.get_stats(local()).unwrap().remaining_bytes, 0);
    for chunk in blocks.chunks(500) {
        bdev.free_blocks(local(), chunk.to_vec()).unwrap();
    }
    assert_eq!(bdev.get_stats(local()).unwrap().remaining_bytes, size);
    let half = bdev.allocate_blocks(local(), size / 2).unwrap();
    assert_eq!(half.len() as u64, size / 2 / (128 * KIB));
    assert!(half.iter().all(|b| b.size == 128 * KIB));
    assert_eq!(bdev.get_stats(local()).unwrap().remaining_bytes, size / 2);
}

#[test]
fn double_frees_and_foreign_blocks_are_refused() {
    let rt = start();
    let bdev = ram(&rt, "double-free", MIB);
    let blocks = bdev.allocate_blocks(local(), 4 * KIB).unwrap();
    bdev.free_blocks(local(), blocks.clone()).unwrap();
    let err = bdev.free_blocks(local(), blocks).unwrap_err();
    assert!(failure_message(&err).contains("not allocated"), "{err}");
    let outside = Block {
        offset: 2 * MIB,
        size: 4 * KIB,
        block_type: 2,
    };
    let err = bdev.free_blocks(local(), vec![outside]).unwrap_err();
    assert!(
        failure_message(&err).contains("outside the device"),
        "{err}"
    );
    assert_eq!(bdev.get_stats(local()).unwrap().remaining_bytes, MIB);
}

/// Writes patterns into blocks of every class and reads them back.
fn round_trip(bdev: &BdevClient) {
    let mut written = Vec::new();
    for (seed, size) in [4 * KIB, 256, 1000, 64 * KIB, 300 * KIB, 4 * KIB]
        .into_iter()
        .enumerate()
    {
        for block in bdev.allocate_blocks(local(), size).unwrap() {
            // A full block, and a short write of an odd length.
            let len = if seed % 2 == 0 {
                block.size as usize
            } else {
                block.size as usize / 2 + 3
            };
            let data = pattern(seed as u64 * 100 + block.offset, len);
            assert_eq!(bdev.write(local(), block, &data).unwrap(), len as u64);
            written.push((block, data));
        }
    }
    for (block, data) in &written {
        let back = read_vec(bdev, *block, data.len()).unwrap();
        assert!(back == *data, "block {block:?} read back different bytes");
    }
    // A read longer than the block is cut to the block.
    let (block, _) = written[0];
    assert_eq!(
        read_vec(bdev, block, block.size as usize + 4096)
            .unwrap()
            .len() as u64,
        block.size
    );
    // A buffer of the client: filled in place.
    let (block, data) = &written[1];
    let mut buffer = bdev.client().allocate_buffer(data.len()).unwrap();
    assert_eq!(
        bdev.read(local(), *block, &mut buffer).unwrap(),
        data.len() as u64
    );
    assert!(buffer[..] == data[..]);
}

#[test]
fn patterns_read_back_equal_on_ram() {
    let rt = start();
    round_trip(&ram(&rt, "pattern-ram", 4 * MIB));
}

#[test]
fn patterns_read_back_equal_on_a_buffered_file() {
    let rt = start();
    let dir = TempDir::new("buffered");
    let path = dir.file("dev");
    let bdev =
        BdevClient::create(&rt.client(), local(), &path, file_params(4 * MIB, false)).unwrap();
    round_trip(&bdev);
    bdev.sync(local()).unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 4 * MIB);
}

#[test]
fn patterns_read_back_equal_on_an_o_direct_file() {
    let rt = start();
    let dir = TempDir::new("direct");
    let path = dir.file("dev");
    match BdevClient::create(&rt.client(), local(), &path, file_params(4 * MIB, true)) {
        Ok(bdev) => round_trip(&bdev),
        Err(err) if failure_message(&err).contains("O_DIRECT is not supported") => {
            println!("note: skipping the O_DIRECT round trip: {err}");
        }
        Err(err) => panic!("cannot create the O_DIRECT device: {err}"),
    }
}

#[test]
fn synced_file_data_is_in_the_file() {
    let rt = start();
    let dir = TempDir::new("synced");
    let path = dir.file("dev");
    let bdev = BdevClient::create(&rt.client(), local(), &path, file_params(MIB, false)).unwrap();
    let block = bdev.allocate_blocks(local(), 4 * KIB).unwrap()[0];
    let data = pattern(7, 4096);
    bdev.write(local(), block, &data).unwrap();
    bdev.sync(local()).unwrap();
    let contents = std::fs::read(&path).unwrap();
    let at = block.offset as usize;
    assert!(contents[at..at + 4096] == data[..]);
    // Destroying the pool closes the device; the data stays in the file.
    bdev.destroy_pool().unwrap();
    assert!(std::fs::read(&path).unwrap()[at..at + 4096] == data[..]);
}

#[test]
fn ram_out_of_bounds_is_an_error_and_moves_no_bytes() {
    let rt = start();
    let bdev = ram(&rt, "bounds", MIB);
    let last = Block {
        offset: MIB - 4 * KIB,
        size: 4 * KIB,
        block_type: 2,
    };
    bdev.write(local(), last, &[5u8; 4096]).unwrap();
    let outside = [
        Block {
            offset: MIB,
            size: 4 * KIB,
            block_type: 2,
        },
        Block {
            offset: MIB - 256,
            size: 4 * KIB,
            block_type: 2,
        },
        Block {
            offset: u64::MAX - 10,
            size: 128 * KIB,
            block_type: 4,
        },
    ];
    for block in outside {
        let err = bdev.write(local(), block, &[1u8; 4096]).unwrap_err();
        assert!(failure_message(&err).contains("out of bounds"), "{err}");
        let err = read_vec(&bdev, block, 4096).unwrap_err();
        assert!(failure_message(&err).contains("out of bounds"), "{err}");
    }
    let err = bdev
        .write(
            local(),
            Block {
                size: 256,
                block_type: 0,
                ..last
            },
            &[1u8; 4096],
        )
        .unwrap_err();
    assert!(
        failure_message(&err).contains("do not fit in the 256-byte block"),
        "{err}"
    );
    let huge = Block {
        offset: 0,
        size: MIB,
        block_type: 4,
    };
    let err = read_vec(&bdev, huge, MIB as usize).unwrap_err();
    assert!(
        failure_message(&err).contains("larger than the largest block"),
        "{err}"
    );
    assert_eq!(read_vec(&bdev, last, 4096).unwrap(), vec![5u8; 4096]);
    let stats = bdev.get_stats(local()).unwrap();
    assert_eq!(
        (stats.write.ops, stats.write.bytes, stats.write.failed),
        (1, 4096, 4)
    );
    assert_eq!((stats.read.ops, stats.read.failed), (1, 4));
}

#[test]
fn a_file_in_a_missing_directory_is_an_error() {
    let rt = start();
    let dir = TempDir::new("missing-dir");
    let path = dir.file("no/such/dir/dev");
    let err =
        BdevClient::create(&rt.client(), local(), &path, file_params(MIB, false)).unwrap_err();
    let message = failure_message(&err);
    assert!(
        message.contains("bad path") && message.contains("does not exist"),
        "{message}"
    );
}

#[test]
fn bad_sizes_and_alignments_are_errors_that_say_why() {
    let rt = start();
    let chi = rt.client();
    let err = BdevClient::create(&chi, local(), "ram-zero", ram_params(0)).unwrap_err();
    assert!(failure_message(&err).contains("total_size > 0"), "{err}");
    let dir = TempDir::new("bad-params");
    let absent = dir.file("absent");
    let err = BdevClient::create(&chi, local(), &absent, file_params(0, false)).unwrap_err();
    assert!(failure_message(&err).contains("does not exist"), "{err}");
    let odd = BdevParams {
        alignment: 3000,
        ..ram_params(MIB)
    };
    let err = BdevClient::create(&chi, local(), "ram-odd-alignment", odd).unwrap_err();
    assert!(failure_message(&err).contains("power of two"), "{err}");
    let small = BdevParams {
        alignment: 256,
        ..file_params(MIB, true)
    };
    let err = BdevClient::create(&chi, local(), &dir.file("small-align"), small).unwrap_err();
    assert!(failure_message(&err).contains("at least 512"), "{err}");
    let no_depth = BdevParams {
        io_depth: 0,
        ..file_params(MIB, false)
    };
    let err = BdevClient::create(&chi, local(), &dir.file("no-depth"), no_depth).unwrap_err();
    assert!(failure_message(&err).contains("io_depth"), "{err}");
}

#[test]
fn capacity_zero_on_an_existing_file_uses_its_size() {
    let rt = start();
    let dir = TempDir::new("existing");
    let path = dir.file("dev");
    std::fs::write(&path, vec![0u8; 3 * MIB as usize]).unwrap();
    let bdev = BdevClient::create(&rt.client(), local(), &path, file_params(0, false)).unwrap();
    let stats = bdev.get_stats(local()).unwrap();
    assert_eq!(
        (stats.capacity_bytes, stats.remaining_bytes),
        (3 * MIB, 3 * MIB)
    );
    assert_eq!(bdev.allocate_blocks(local(), 3 * MIB).unwrap().len(), 24);
    assert!(bdev.allocate_blocks(local(), 1).is_err());
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 3 * MIB);
}

#[test]
fn stats_count_the_operations_issued() {
    let rt = start();
    let bdev = ram(&rt, "stats", MIB);
    let blocks = bdev.allocate_blocks(local(), 64 * KIB).unwrap();
    let block = blocks[0];
    for i in 0..10u64 {
        bdev.write(local(), block, &pattern(i, 1000)).unwrap();
    }
    for _ in 0..7 {
        read_vec(&bdev, block, 500).unwrap();
    }
    let stats = bdev.get_stats(local()).unwrap();
    assert_eq!(
        (stats.write.ops, stats.write.bytes, stats.write.failed),
        (10, 10_000, 0)
    );
    assert_eq!(
        (stats.read.ops, stats.read.bytes, stats.read.failed),
        (7, 3500, 0)
    );
    assert!(stats.write.mean_latency_ns > 0 && stats.read.mean_latency_ns > 0);
    assert!(stats.write.iops > 0.0 && stats.write.bandwidth_bytes_per_sec > 0.0);
    assert_eq!(stats.remaining_bytes, MIB - 64 * KIB);
    assert_eq!(stats.capacity_bytes, MIB);
    bdev.free_blocks(local(), blocks).unwrap();
    assert_eq!(bdev.get_stats(local()).unwrap().remaining_bytes, MIB);
}

/// Four threads, each with its own blocks, write and read them with async calls in
/// flight together; every read matches what that thread last wrote there.
fn concurrent_clients(rt: &Runtime, bdev: &BdevClient) {
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let chi = rt.client();
            let bdev = BdevClient::attach(&chi, bdev.pool_id());
            std::thread::spawn(move || {
                let blocks: Vec<Block> = (0..16)
                    .flat_map(|_| bdev.allocate_blocks(local(), 4 * KIB).unwrap())
                    .collect();
                let mut last: Vec<Option<u64>> = vec![None; blocks.len()];
                let mut state = t * 0x9e37_79b9 + 1;
                for round in 0..20u64 {
                    // The writes' bytes live until their calls complete: each `Pending`
                    // borrows its buffer.
                    let mut sources = Vec::new();
                    for (i, last) in last.iter_mut().enumerate() {
                        state = state
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        if state >> 63 == 0 {
                            let seed = t << 32 | round << 16 | i as u64;
                            sources.push((i, pattern(seed, 4096)));
                            *last = Some(seed);
                        }
                    }
                    let writes: Vec<_> = sources
                        .iter()
                        .map(|(i, data)| bdev.async_write(local(), blocks[*i], data).unwrap())
                        .collect();
                    for pending in writes {
                        assert_eq!(pending.wait().unwrap(), 4096);
                    }
                    let mut targets = vec![[0u8; 4096]; blocks.len()];
                    let reads: Vec<_> = blocks
                        .iter()
                        .zip(targets.iter_mut())
                        .map(|(b, target)| bdev.async_read(local(), *b, target).unwrap())
                        .collect();
                    for pending in reads {
                        assert_eq!(pending.wait().unwrap(), 4096);
                    }
                    for (i, data) in targets.iter().enumerate() {
                        if let Some(seed) = last[i] {
                            assert!(
                                data[..] == pattern(seed, 4096)[..],
                                "thread {t} block {i} round {round}"
                            );
                        }
                    }
                }
                bdev.free_blocks(local(), blocks).unwrap();
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
}

#[test]
fn concurrent_clients_read_what_they_wrote_on_ram() {
    let rt = start();
    let bdev = ram(&rt, "concurrent-ram", 4 * MIB);
    concurrent_clients(&rt, &bdev);
    assert_eq!(bdev.get_stats(local()).unwrap().remaining_bytes, 4 * MIB);
}

#[test]
fn concurrent_clients_read_what_they_wrote_on_a_file() {
    let rt = start();
    let dir = TempDir::new("concurrent-file");
    let params = BdevParams {
        io_depth: 8,
        ..file_params(4 * MIB, false)
    };
    let bdev = BdevClient::create(&rt.client(), local(), &dir.file("dev"), params).unwrap();
    concurrent_clients(&rt, &bdev);
    let stats = bdev.get_stats(local()).unwrap();
    assert_eq!(stats.read.ops, 4 * 20 * 16);
    assert_eq!(stats.remaining_bytes, 4 * MIB);
}

#[test]
fn a_destroyed_device_refuses_io() {
    let rt = start();
    let bdev = ram(&rt, "destroyed", MIB);
    let block = bdev.allocate_blocks(local(), 4 * KIB).unwrap()[0];
    bdev.destroy_pool().unwrap();
    assert!(bdev.write(local(), block, b"late").is_err());
}

/// Threads of this process whose name (as `/proc` shows it) starts with `prefix`.
fn threads_named(prefix: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|comm| comm.starts_with(prefix))
        .count()
}

/// Whether a coroutine here gets an `io_uring` of its worker's own (kernel 6.1 and up,
/// `io_uring` allowed).
fn workers_have_rings() -> bool {
    use chimaera_core::coroutine::{Executor, ExecutorOptions};
    let executor = Executor::start(ExecutorOptions {
        name: "ring-probe".into(),
        stack_size: 64 * 1024,
        cpu: None,
    })
    .unwrap();
    executor
        .spawn(|| {
            let nop = io_uring::opcode::Nop::new().build();
            // SAFETY: a no-op points to no buffer.
            unsafe { chimaera_core::wait::submit_io(&nop) }.is_some()
        })
        .join()
        .unwrap()
}

#[test]
fn a_file_device_served_by_workers_keeps_no_io_thread_of_its_own() {
    if !workers_have_rings() {
        println!("note: no worker rings on this kernel; file I/O takes the device's thread");
        return;
    }
    let rt = start();
    let dir = TempDir::new("no-io-thread");
    let bdev = BdevClient::create(
        &rt.client(),
        local(),
        &dir.file("dev"),
        file_params(4 * MIB, false),
    )
    .unwrap();
    round_trip(&bdev);
    bdev.sync(local()).unwrap();
    // Every operation went through a worker's own ring: the device started no ring and
    // no I/O thread for callers without one (other tests here only use workers too).
    assert_eq!(threads_named("bdev-uring"), 0);
    // The pool thread that opened the file ends once idle (`IDLE_EXIT`, 5 s); so do
    // those of the other tests' devices, which are done within seconds.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while threads_named("bdev-io-") > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "an idle I/O thread stayed"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // With no thread of its own left, the device still serves.
    round_trip(&bdev);
    bdev.sync(local()).unwrap();
}
