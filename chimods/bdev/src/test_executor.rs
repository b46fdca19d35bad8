//! Executors for unit tests that run code on coroutines outside a runtime.
//!
//! Two executor threads, started once per test binary; [`spawn`] alternates between
//! them, so a test's coroutines also wake each other across threads.
use chimaera_core::coroutine::{Executor, ExecutorOptions, JoinHandle};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

fn executors() -> &'static [Executor; 2] {
    static EXECUTORS: OnceLock<[Executor; 2]> = OnceLock::new();
    EXECUTORS.get_or_init(|| {
        [0, 1].map(|n| {
            Executor::start(ExecutorOptions {
                name: format!("bdev-test-{n}"),
                stack_size: 256 * 1024,
                cpu: None,
            })
            .expect("start a test executor thread")
        })
    })
}

/// Runs `body` as a coroutine on one of the test executors.
pub(crate) fn spawn<T, F>(body: F) -> JoinHandle<T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    executors()[NEXT.fetch_add(1, Ordering::Relaxed) % 2].spawn(body)
}
