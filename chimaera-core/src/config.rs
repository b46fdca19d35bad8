//! Runtime configuration.
//!
//! Built-in defaults work on a laptop; every field is honoured. Worker threads are `may`
//! scheduler threads, which are process-wide: the first runtime started in a process
//! sizes them (later runtimes in the same process share them and only add their own
//! pollers).
use std::time::Duration;

/// How a runtime is set up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuntimeConfig {
    /// Workers serving low-latency lanes (at least 1).
    pub workers_low_latency: usize,
    /// Workers serving high-latency lanes; with 0, high-latency lanes go to the
    /// low-latency workers.
    pub workers_high_latency: usize,
    /// Stack of each task coroutine, in bytes.
    pub stack_size: usize,
    /// Pin `may` scheduler threads to cores (off by default: on a small shared machine,
    /// pinning fights the clients for the same cores).
    pub pin_workers: bool,
    /// How long a stop waits for in-flight tasks before failing them.
    pub stop_grace_period: Duration,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            workers_low_latency: 1,
            workers_high_latency: 1,
            stack_size: 256 * 1024,
            pin_workers: false,
            stop_grace_period: Duration::from_secs(5),
        }
    }
}

impl RuntimeConfig {
    /// Total number of workers.
    pub fn workers(&self) -> usize {
        self.workers_low_latency.max(1) + self.workers_high_latency
    }
}
