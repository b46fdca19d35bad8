//! Conformance tests written once and run against every backend: RAM, buffered file and
//! `O_DIRECT` file, each through the `io_uring` and the thread engine; every access goes
//! through the views, over private bytes and over a real shared mapping.
use super::*;
use chimaera_core::{BulkIn, BulkOut};
use std::path::PathBuf;
use std::sync::Arc;

/// Plain-slice calls, through views of private bytes.
pub(crate) trait Slices {
    fn write_bytes(&self, offset: u64, data: &[u8]) -> Result<u64, IoError>;
    fn read_bytes(&self, offset: u64, buf: &mut [u8]) -> Result<u64, IoError>;
}

impl<D: BlockDevice + ?Sized> Slices for D {
    fn write_bytes(&self, offset: u64, data: &[u8]) -> Result<u64, IoError> {
        self.write_at(offset, BulkIn::from(data))
    }

    fn read_bytes(&self, offset: u64, buf: &mut [u8]) -> Result<u64, IoError> {
        self.read_into(offset, BulkOut::from(buf))
    }
}

/// A `MAP_SHARED` mapping — memory another process could map and write, like a client's
/// buffer — reached only through raw pointers and shared views, never a reference.
struct SharedMapping {
    ptr: *mut u8,
    len: usize,
}

impl SharedMapping {
    fn new(len: usize) -> SharedMapping {
        // SAFETY: a fresh anonymous mapping; no address hint, no file.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(ptr, libc::MAP_FAILED, "mmap");
        SharedMapping {
            ptr: ptr.cast(),
            len,
        }
    }

    /// `len` bytes at `at`, to read from.
    fn view(&self, at: usize, len: usize) -> BulkIn<'_> {
        assert!(at + len <= self.len);
        // SAFETY: inside the mapping, which lives as long as the borrow of `self`; no
        // reference into it exists, and nothing writes it while `&self` is borrowed.
        unsafe { BulkIn::from_raw_shared(self.ptr.add(at), len) }
    }

    /// `len` bytes at `at`, to fill.
    fn view_mut(&mut self, at: usize, len: usize) -> BulkOut<'_> {
        assert!(at + len <= self.len);
        // SAFETY: as above, and `&mut self` makes this the only access meanwhile.
        unsafe { BulkOut::from_raw_shared(self.ptr.add(at), len) }
    }
}

impl Drop for SharedMapping {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once; no view outlives `self`.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// A directory of its own for one test, removed when dropped.
pub(crate) struct TempDir(pub PathBuf);

impl TempDir {
    pub(crate) fn new(test: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("chimaera-bdev-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub(crate) fn file(&self, name: &str) -> String {
        self.0.join(name).to_string_lossy().into_owned()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const SIZE: u64 = 1 << 20;

/// Every backend, freshly created with `SIZE` bytes, with a name for messages: RAM, and
/// a file buffered and direct through each engine (`io_uring` where it works here).
fn devices(dir: &TempDir) -> Vec<(&'static str, Box<dyn BlockDevice>)> {
    let mut all: Vec<(&'static str, Box<dyn BlockDevice>)> =
        vec![("ram", Box::new(RamDevice::new(SIZE).unwrap()))];
    let mut engines = vec![("threads", IoEngine::Threads)];
    match uring::probe() {
        Ok(()) => engines.push(("uring", IoEngine::Uring)),
        Err(reason) => println!("note: io_uring unavailable here ({reason}); threads only"),
    }
    for (engine_name, engine) in engines {
        for direct in [false, true] {
            let name: &'static str = match (engine_name, direct) {
                ("threads", false) => "file/threads",
                ("threads", true) => "direct/threads",
                (_, false) => "file/uring",
                (_, true) => "direct/uring",
            };
            let options = FileOptions {
                total_size: SIZE,
                direct,
                engine,
                ..FileOptions::default()
            };
            match FileDevice::open(&dir.file(&name.replace('/', "-")), options) {
                Ok(device) => {
                    assert_eq!(device.engine(), engine, "{name}");
                    all.push((name, Box::new(device)));
                }
                Err(err @ CreateError::DirectUnsupported { .. }) => {
                    println!("note: skipping the O_DIRECT variant: {err}");
                }
                Err(err) => panic!("cannot open the {name} device: {err}"),
            }
        }
    }
    all
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u64).wrapping_mul(31).wrapping_add(seed * 7) as u8)
        .collect()
}

#[test]
fn written_bytes_read_back_at_any_offset_and_length() {
    let dir = TempDir::new("roundtrip");
    for (name, device) in devices(&dir) {
        assert_eq!(device.capacity(), SIZE, "{name}");
        // Aligned and unaligned offsets and lengths, words split at both ends, sectors
        // partly covered, neighbours that must not be touched.
        let cases: [(u64, usize); 9] = [
            (0, 4096),
            (4096, 131072),
            (256, 256),
            (1024 + 3, 1000),
            (8191, 2),
            (12_345, 7),
            (SIZE - 4096, 4096),
            (SIZE - 5, 5),
            (200_000, 70_000),
        ];
        for (seed, &(offset, len)) in cases.iter().enumerate() {
            let data = pattern(seed as u64, len);
            let before = {
                let mut around = vec![0u8; 16];
                let at = offset.saturating_sub(8).min(SIZE - 16);
                device.read_bytes(at, &mut around).unwrap();
                (at, around)
            };
            assert_eq!(
                device.write_bytes(offset, &data).unwrap(),
                len as u64,
                "{name} {offset}"
            );
            let mut back = vec![0u8; len];
            assert_eq!(device.read_bytes(offset, &mut back).unwrap(), len as u64);
            assert!(back == data, "{name}: bytes differ at {offset}+{len}");
            // The same through views of shared memory, page-aligned (handed to the
            // kernel as they are) and not (bounced on O_DIRECT), with the device's
            // bytes rewritten from the shared side first.
            for misalign in [0, 3] {
                let mut shared = SharedMapping::new(len + 4096);
                let reversed: Vec<u8> = data.iter().rev().copied().collect();
                shared
                    .view_mut(misalign, len)
                    .write_at(0, &reversed)
                    .unwrap();
                let written = device.write_at(offset, shared.view(misalign, len));
                assert_eq!(written.unwrap(), len as u64, "{name} shared {offset}");
                shared.view_mut(misalign, len).fill(0);
                let read = device.read_into(offset, shared.view_mut(misalign, len));
                assert_eq!(read.unwrap(), len as u64, "{name} shared {offset}");
                assert!(
                    shared.view(misalign, len).to_vec() == reversed,
                    "{name}: shared bytes differ at {offset}+{len} (+{misalign})"
                );
                assert_eq!(shared.view(0, misalign).to_vec(), vec![0; misalign]);
                device.write_bytes(offset, &data).unwrap();
            }
            // Bytes just outside the range are unchanged.
            let (at, around) = before;
            let mut now = vec![0u8; 16];
            device.read_bytes(at, &mut now).unwrap();
            for (i, (old, new)) in around.iter().zip(&now).enumerate() {
                let pos = at + i as u64;
                if pos < offset || pos >= offset + len as u64 {
                    assert_eq!(
                        old, new,
                        "{name}: byte {pos} outside {offset}+{len} changed"
                    );
                }
            }
        }
        device.sync().unwrap();
    }
}

#[test]
fn out_of_bounds_accesses_fail_and_move_nothing() {
    let dir = TempDir::new("bounds");
    for (name, device) in devices(&dir) {
        device.write_bytes(SIZE - 4096, &[7u8; 4096]).unwrap();
        for (offset, len) in [
            (SIZE, 1usize),
            (SIZE - 10, 11),
            (u64::MAX - 2, 4096),
            (SIZE + 4096, 4096),
        ] {
            let err = device.write_bytes(offset, &vec![1u8; len]).unwrap_err();
            assert!(matches!(err, IoError::OutOfBounds { .. }), "{name}: {err}");
            let mut buf = vec![0xaa; len];
            let err = device.read_bytes(offset, &mut buf).unwrap_err();
            assert!(matches!(err, IoError::OutOfBounds { .. }), "{name}: {err}");
            assert!(
                buf.iter().all(|&b| b == 0xaa),
                "{name}: bytes moved on error"
            );
        }
        let mut tail = vec![0u8; 4096];
        device.read_bytes(SIZE - 4096, &mut tail).unwrap();
        assert!(
            tail.iter().all(|&b| b == 7),
            "{name}: failed writes changed the device"
        );
        assert_eq!(device.write_bytes(SIZE, &[]).unwrap(), 0);
    }
}

#[test]
fn closed_devices_refuse_access() {
    let dir = TempDir::new("closed");
    for (name, device) in devices(&dir) {
        device.close().unwrap();
        assert!(
            matches!(device.write_bytes(0, &[1]), Err(IoError::Closed)),
            "{name}"
        );
        assert!(
            matches!(device.read_bytes(0, &mut [0]), Err(IoError::Closed)),
            "{name}"
        );
        device.close().unwrap();
    }
}

#[test]
fn concurrent_small_writes_in_shared_sectors_do_not_clobber_each_other() {
    // 256-byte blocks share 4 KiB sectors: on O_DIRECT every write is a
    // read-modify-write of a sector that other threads are writing too.
    let dir = TempDir::new("shared-sectors");
    for (name, device) in devices(&dir) {
        let device: Arc<dyn BlockDevice> = Arc::from(device);
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let device = device.clone();
                std::thread::spawn(move || {
                    for round in 0..40u64 {
                        for slot in 0..8u64 {
                            let offset = (slot * 4 + t) * 256;
                            device
                                .write_bytes(offset, &pattern(t * 1000 + round, 256))
                                .unwrap();
                        }
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        for t in 0..4u64 {
            for slot in 0..8u64 {
                let mut back = vec![0u8; 256];
                device.read_bytes((slot * 4 + t) * 256, &mut back).unwrap();
                assert!(
                    back == pattern(t * 1000 + 39, 256),
                    "{name}: block {t}/{slot} clobbered"
                );
            }
        }
    }
}

#[test]
fn many_coroutines_write_and_read_their_own_blocks() {
    // More coroutines than the depth (32): they park waiting for a slot, then for their
    // I/O, on executor threads; buffers alternately aligned (no bounce) and not.
    let dir = TempDir::new("coroutines");
    for (name, device) in devices(&dir) {
        let device: Arc<dyn BlockDevice> = Arc::from(device);
        let coroutines: Vec<_> = (0..64u64)
            .map(|c| {
                let device = device.clone();
                crate::test_executor::spawn(move || {
                    let mut raw = vec![0u8; 3 * 4096];
                    let at = raw.as_ptr().align_offset(4096);
                    for round in 0..8u64 {
                        let offset = c * 16384 + (round % 4) * 4096;
                        let data = pattern(c * 100 + round, 4096);
                        let buf = &mut raw[at + (round as usize % 2)..][..4096];
                        buf.copy_from_slice(&data);
                        device.write_bytes(offset, buf).unwrap();
                        buf.fill(0);
                        device.read_bytes(offset, buf).unwrap();
                        assert!(*buf == data[..], "{offset}");
                    }
                })
            })
            .collect();
        for coroutine in coroutines {
            assert!(coroutine.join().is_ok(), "{name}: a coroutine failed");
        }
    }
}

#[test]
fn ram_devices_check_their_size() {
    assert!(matches!(RamDevice::new(0), Err(CreateError::RamSizeZero)));
    assert!(matches!(
        RamDevice::new(u64::MAX),
        Err(CreateError::OutOfMemory { .. })
    ));
    let odd = RamDevice::new(13).unwrap();
    odd.write_bytes(5, &[1, 2, 3, 4, 5, 6, 7, 8]).unwrap();
    let mut back = [0u8; 13];
    odd.read_bytes(0, &mut back).unwrap();
    assert_eq!(back, [0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8]);
}

#[test]
fn file_creation_errors_say_what_is_wrong() {
    let dir = TempDir::new("create-errors");
    let sized = FileOptions {
        total_size: SIZE,
        ..FileOptions::default()
    };
    let missing_dir = dir.file("no/such/dir/file");
    let err = FileDevice::open(&missing_dir, sized).unwrap_err();
    assert!(matches!(err, CreateError::BadPath { .. }), "{err}");
    assert!(err.to_string().contains("does not exist"), "{err}");

    let err = FileDevice::open("", sized).unwrap_err();
    assert!(matches!(err, CreateError::BadPath { .. }), "{err}");
    let err = FileDevice::open(&dir.0.to_string_lossy(), sized).unwrap_err();
    assert!(err.to_string().contains("is a directory"), "{err}");

    let absent = dir.file("absent");
    let err = FileDevice::open(&absent, FileOptions::default()).unwrap_err();
    assert!(matches!(err, CreateError::FileSizeUnknown { .. }), "{err}");
    assert!(!std::path::Path::new(&absent).exists());
    let empty = dir.file("empty");
    std::fs::write(&empty, b"").unwrap();
    let err = FileDevice::open(&empty, FileOptions::default()).unwrap_err();
    assert!(err.to_string().contains("the file is empty"), "{err}");

    for (alignment, direct) in [(0, false), (3000, false), (256, true), (1 << 21, false)] {
        let options = FileOptions {
            alignment,
            direct,
            ..sized
        };
        let err = FileDevice::open(&dir.file("aligned"), options).unwrap_err();
        assert!(
            matches!(err, CreateError::BadAlignment { .. }),
            "{alignment}: {err}"
        );
    }
    let err = FileDevice::open(
        &dir.file("depth"),
        FileOptions {
            io_depth: 0,
            ..sized
        },
    )
    .unwrap_err();
    assert!(matches!(err, CreateError::BadIoDepth), "{err}");
}

#[test]
fn file_size_comes_from_the_file_or_grows_it() {
    let dir = TempDir::new("sizes");
    let path = dir.file("existing");
    std::fs::write(&path, vec![9u8; 300_000]).unwrap();
    let device = FileDevice::open(&path, FileOptions::default()).unwrap();
    assert_eq!(device.capacity(), 300_000);
    let mut back = [0u8; 4];
    device.read_bytes(299_996, &mut back).unwrap();
    assert_eq!(back, [9; 4]);
    drop(device);

    // Larger: extended, the old bytes kept. Smaller: the file is not truncated.
    let device = FileDevice::open(
        &path,
        FileOptions {
            total_size: SIZE,
            ..FileOptions::default()
        },
    )
    .unwrap();
    assert_eq!(device.capacity(), SIZE);
    drop(device);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), SIZE);
    let device = FileDevice::open(
        &path,
        FileOptions {
            total_size: 4096,
            ..FileOptions::default()
        },
    )
    .unwrap();
    assert_eq!(device.capacity(), 4096);
    drop(device);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), SIZE);
    assert_eq!(
        std::fs::read(&path).unwrap()[..300_000],
        vec![9u8; 300_000][..]
    );

    // O_DIRECT rounds the capacity down to the alignment.
    let odd = dir.file("odd");
    std::fs::write(&odd, vec![1u8; 10_000]).unwrap();
    match FileDevice::open(
        &odd,
        FileOptions {
            direct: true,
            ..FileOptions::default()
        },
    ) {
        Ok(device) => assert_eq!(device.capacity(), 8192),
        Err(CreateError::DirectUnsupported { .. }) => println!("note: O_DIRECT unsupported here"),
        Err(err) => panic!("{err}"),
    }
}

#[test]
fn written_file_bytes_are_in_the_file() {
    let dir = TempDir::new("in-file");
    let path = dir.file("dev");
    let device = FileDevice::open(
        &path,
        FileOptions {
            total_size: SIZE,
            ..FileOptions::default()
        },
    )
    .unwrap();
    device.write_bytes(4096, b"chimaera").unwrap();
    device.sync().unwrap();
    let contents = std::fs::read(&path).unwrap();
    assert_eq!(&contents[4096..4104], b"chimaera");
}
