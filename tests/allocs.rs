//! Heap allocations per task in steady state, counted by a global allocator that counts
//! the calls of the process it runs in.
//!
//! Issue 10 asks for zero per empty task (`ModNameClient::custom("", 0)`) after warm-up,
//! on both paths:
//!
//! * **in process**: this process calls a runtime of its own; every allocation of the
//!   process counts (client and runtime share it). Also 4 KiB writes and reads of a RAM
//!   block device, whose bytes travel inside the tasks' inputs and outputs (before the
//!   twentieth round of issue 10, 4.5 allocations a call: input and output buffers
//!   past the recycled size, the handler's private copy, the client's decoded `Vec`);
//! * **over shared memory**: this process serves a runtime and a client child process
//!   (this binary re-run with [`ROLE`] set) calls it. The window is set by pipes: the
//!   child warms up and says so, this process reads its allocation count and tells the
//!   child to go, the child makes its calls and says it is done, and this process reads
//!   its count again. Meanwhile this process only reads and writes pipes with stack
//!   buffers, so what it counts is the runtime's ingest, decode, dispatch and reply. The
//!   child counts its own side (submit, wait, decode) the same way; then, counting its
//!   own side only, as many `async_custom` calls pipelined in a window one wider than
//!   its call slots (so submissions harvest answered slots, whose answers wait, moved
//!   out, for their calls).
//!
//! The file has its own `main` (`harness = false`): libtest's main thread allocates
//! while tests run (it checks for tests running over a minute), which would count.
//! `CHI_ALLOC_TRACE=1` prints a backtrace of every allocation counted, to find one.
//!
//! Before issue 10 an in-process empty task made five allocations (the encoded input,
//! the completion, the boxed pending handle, the output's copy and the results list)
//! plus ~0.06 for the lock-free queues' blocks; a task over shared memory one in the
//! runtime (its input's copy, plus the queues' blocks) and one in the client (the boxed
//! pending handle).
mod support;

use chimaera::mod_name::{CreateParams, ModNameClient};
use chimaera::prelude::*;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::VecDeque;
use std::io::{Read, Write};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use support::{test_binary_child, write_config, ROLE};

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
/// Whether counted allocations print a backtrace (`CHI_ALLOC_TRACE=1`, while counting).
static TRACE: AtomicBool = AtomicBool::new(false);

thread_local! {
    /// Set while this thread prints a backtrace, whose own allocations are not traced.
    static TRACING: Cell<bool> = const { Cell::new(false) };
}

fn counted() {
    ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    if TRACE.load(Ordering::Relaxed) && TRACING.try_with(|t| !t.replace(true)) == Ok(true) {
        let trace = std::backtrace::Backtrace::force_capture();
        eprintln!(
            "allocation on {:?}:\n{trace}",
            std::thread::current().name()
        );
        let _ = TRACING.try_with(|t| t.set(false));
    }
}

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        counted();
        // SAFETY: the caller's contract for `alloc` is passed on as it is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as for `alloc`.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        counted();
        // SAFETY: as for `alloc`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Calls made before counting: every pool, buffer and queue has grown to fit by then.
const WARM_UP: u64 = 10_000;
/// Calls counted.
const CALLS: u64 = 100_000;
/// Calls a pipelined client keeps in flight: one more than its call slots (the default
/// `queue_depth`, 256, less the slot that carries abandon requests).
const WINDOW: usize = 256;

/// The role of the client child.
const CLIENT: &str = "calls";

fn main() {
    if std::env::var(ROLE).as_deref() == Ok(CLIENT) {
        return client_child();
    }
    no_allocation_per_in_process_empty_task();
    #[cfg(feature = "bdev")]
    no_allocation_per_in_process_bulk_call();
    no_allocation_per_empty_task_over_shared_memory();
}

fn empty_task(m: &ModNameClient) {
    assert_eq!(m.custom(PoolQuery::local(), "", 0).unwrap(), "");
}

/// Allocations made while `work` runs.
fn counting(work: impl FnOnce()) -> u64 {
    // Read before counting starts: the variable's value is an allocation of its own.
    let trace = std::env::var_os("CHI_ALLOC_TRACE").is_some_and(|v| v == "1");
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    TRACE.store(trace, Ordering::Relaxed);
    work();
    TRACE.store(false, Ordering::Relaxed);
    ALLOCATIONS.load(Ordering::Relaxed) - before
}

fn no_allocation_per_in_process_empty_task() {
    let rt = chimaera::builder().start().expect("runtime starts");
    let m = ModNameClient::create(
        &rt.client(),
        PoolQuery::local(),
        "allocs",
        CreateParams::default(),
    )
    .unwrap();
    for _ in 0..WARM_UP {
        empty_task(&m);
    }
    // One call at a time: each routed by its caller.
    some_window_allocates_nothing("in-process empty tasks", || {
        for _ in 0..CALLS {
            empty_task(&m);
        }
    });
    // Pipelined: posted to the worker, which routes them.
    let mut window = VecDeque::with_capacity(WINDOW);
    pipelined(&m, &mut window, WARM_UP);
    some_window_allocates_nothing("pipelined in-process empty tasks", || {
        pipelined(&m, &mut window, CALLS)
    });
}

/// 4 KiB writes and reads of a RAM block device, in process: the bytes travel in the
/// task's input (a write) and output (a read) and are copied back into the caller's
/// slice, through buffers the client and the worker keep from call to call.
#[cfg(feature = "bdev")]
fn no_allocation_per_in_process_bulk_call() {
    use chimaera::bdev::{BdevClient, BdevParams, BdevType};
    const BLOCK: u64 = 4096;
    let rt = chimaera::builder().start().expect("runtime starts");
    let params = BdevParams {
        bdev_type: BdevType::Ram,
        total_size: 1 << 20,
        ..BdevParams::default()
    };
    let bdev = BdevClient::create(&rt.client(), PoolQuery::local(), "allocs-ram", params)
        .expect("a RAM device");
    let block = bdev.allocate_blocks(PoolQuery::local(), BLOCK).unwrap()[0];
    let mut data = vec![0x5au8; BLOCK as usize];
    let mut round = |i: u64| {
        data[0] = i as u8;
        assert_eq!(bdev.write(PoolQuery::local(), block, &data).unwrap(), BLOCK);
        data[0] = !data[0];
        assert_eq!(
            bdev.read(PoolQuery::local(), block, &mut data).unwrap(),
            BLOCK
        );
        assert_eq!(data[0], i as u8, "the read gives back what was written");
    };
    (0..WARM_UP).for_each(&mut round);
    let mut i = 0;
    some_window_allocates_nothing("in-process 4 KiB writes and reads", || {
        for _ in 0..CALLS / 2 {
            round(i);
            i += 1;
        }
    });
}

/// Counts `work` in up to three windows: on a loaded machine a queue can reach a new
/// high-water mark inside one and grow once (an amortised allocation, not one per task).
/// A window without any shows the steady state; a per-task allocation fails all three.
fn some_window_allocates_nothing(what: &str, mut work: impl FnMut()) {
    let mut windows = Vec::new();
    for _ in 0..3 {
        let allocations = counting(&mut work);
        println!("allocations in {CALLS} {what}: {allocations}");
        windows.push(allocations);
        if allocations == 0 {
            return;
        }
    }
    panic!("every window of {CALLS} {what} allocated: {windows:?}");
}

/// Reads `from` into `line` (a stack buffer) up to a newline; returns the line's length.
/// Allocates nothing, so reading inside the counted window does not count.
fn read_line(from: &mut impl Read, line: &mut [u8; 64]) -> usize {
    let mut len = 0;
    loop {
        let mut byte = [0u8; 1];
        match from.read(&mut byte) {
            Ok(1) if byte[0] == b'\n' => return len,
            Ok(1) if len < line.len() => {
                line[len] = byte[0];
                len += 1;
            }
            Ok(1) => {}
            _ => panic!("the client child exited early"),
        }
    }
}

fn no_allocation_per_empty_task_over_shared_memory() {
    let (config, config_path) = write_config("allocs-shm", "");
    let runtime = chimaera::builder()
        .config(config)
        .serve()
        .expect("runtime serves");
    let mut child = test_binary_child(&config_path, "client_child", CLIENT)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn the client child");
    let mut to_child = child.stdin.take().expect("piped stdin");
    let mut from_child = child.stdout.take().expect("piped stdout");
    let mut line = [0u8; 64];
    let len = read_line(&mut from_child, &mut line);
    assert_eq!(&line[..len], b"warm", "the child's first line");
    let mut len = 0;
    let runtime_allocations = counting(|| {
        to_child.write_all(b"g").expect("tell the child to go");
        len = read_line(&mut from_child, &mut line);
    });
    let reported = String::from_utf8_lossy(&line[..len]).into_owned();
    let client_allocations: u64 = reported
        .strip_prefix("done ")
        .and_then(|count| count.parse().ok())
        .unwrap_or_else(|| panic!("the child reported {reported:?}"));
    let len = read_line(&mut from_child, &mut line);
    let reported = String::from_utf8_lossy(&line[..len]).into_owned();
    let pipelined_allocations: u64 = reported
        .strip_prefix("pipelined ")
        .and_then(|count| count.parse().ok())
        .unwrap_or_else(|| panic!("the child reported {reported:?}"));
    drop(to_child);
    assert!(child.wait().expect("child exits").success());
    drop(runtime);
    let _ = std::fs::remove_file(config_path);
    println!(
        "allocations in {CALLS} empty tasks over shared memory: runtime {runtime_allocations}, client {client_allocations}"
    );
    assert_eq!(
        (runtime_allocations, client_allocations),
        (0, 0),
        "{CALLS} empty tasks over shared memory made allocations (runtime, client)"
    );
    println!(
        "allocations in {CALLS} empty tasks pipelined {WINDOW} wide over shared memory: client {pipelined_allocations}"
    );
    assert_eq!(
        pipelined_allocations, 0,
        "{CALLS} empty tasks pipelined wider than the call slots made client allocations"
    );
}

/// `calls` empty tasks through `window` (empty, with room for [`WINDOW`]), waited in
/// order; leaves it empty.
fn pipelined(m: &ModNameClient, window: &mut VecDeque<Pending<'static, String>>, calls: u64) {
    for i in 0..calls {
        if window.len() == WINDOW {
            if let Some(oldest) = window.pop_front() {
                assert_eq!(oldest.wait().unwrap(), "");
            }
        }
        window.push_back(m.async_custom(PoolQuery::local(), "", i as u32).unwrap());
    }
    for pending in window.drain(..) {
        assert_eq!(pending.wait().unwrap(), "");
    }
}

/// The client child of the shared-memory test: warms up, says so, waits for the go,
/// makes the counted calls and reports its own allocation count.
fn client_child() {
    let chi = Client::connect().expect("child connects");
    let m = ModNameClient::create(&chi, PoolQuery::local(), "allocs", CreateParams::default())
        .expect("child creates the pool");
    for _ in 0..WARM_UP {
        empty_task(&m);
    }
    let mut window = VecDeque::with_capacity(WINDOW);
    pipelined(&m, &mut window, WARM_UP);
    let mut stdout = std::io::stdout();
    writeln!(stdout, "warm").unwrap();
    stdout.flush().unwrap();
    let mut go = [0u8; 1];
    std::io::stdin().read_exact(&mut go).expect("the go");
    let allocations = counting(|| {
        for _ in 0..CALLS {
            empty_task(&m);
        }
    });
    writeln!(stdout, "done {allocations}").unwrap();
    stdout.flush().unwrap();
    let allocations = counting(|| pipelined(&m, &mut window, CALLS));
    writeln!(stdout, "pipelined {allocations}").unwrap();
    stdout.flush().unwrap();
    // Stay attached until the parent has its count.
    let _ = std::io::stdin().read(&mut go);
}
