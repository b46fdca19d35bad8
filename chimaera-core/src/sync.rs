//! Plain-mutex helpers shared by every layer, from the coroutine scheduler up.
//!
//! Invariant: the mutexes locked through [`lock`] guard plain data whose every critical
//! section is a single push, take or store, so a panic while one is held cannot leave
//! the data half-written; poison is therefore ignored rather than spread.
use std::sync::{Mutex, MutexGuard};

/// Locks a mutex that guards plain data; a panic while holding it cannot leave the data
/// half-written (every critical section is a single push or take), so poison is ignored.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
