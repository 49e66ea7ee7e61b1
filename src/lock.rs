//! Locking a `std::sync::Mutex` that another thread may have poisoned.

/// Locks `mutex`, taking the data even if a thread panicked while holding it: every mutex
/// in this crate guards data that each update leaves whole (counts, maps, queues, rings),
/// so a panic elsewhere must not take the lock's other users down with it.
pub fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
