//! Waiting by yielding, for answers that come within microseconds.
//!
//! When group writes are quick (`buffered` and `none` durability, or a device whose fsync
//! takes tens of microseconds), a thread that sleeps on its answer costs a futex wake-up on
//! each side for every command, and on a small machine those wake-ups are most of the work.
//! RocksDB's own write queue waits the same way (`enable_write_thread_adaptive_yield`): yield
//! for a bounded time, and give up early when yields come back slowly, which means other
//! threads want the CPU.

use std::time::{Duration, Instant};

/// The longest a thread yields before it sleeps.
pub const ANSWER_YIELD_US_MAX: u64 = 100;

/// Group writes at most this long make answers "quick": callers and the writer then wait by
/// yielding first. (An fsync on this VM takes about 200 µs: `sync` waits sleep.)
pub const QUICK_WRITE_NS_MAX: u64 = 50_000;

/// A yield that takes longer than this ran another thread.
const SLOW_YIELD_NS: u64 = 3_000;

/// After this many slow yields the CPU is wanted elsewhere: stop yielding.
const SLOW_YIELDS_MAX: u32 = 3;

/// Calls `ready` between yields until it returns a value, `ANSWER_YIELD_US_MAX` passes, or
/// yields keep coming back slowly; `None` means: go to sleep instead.
pub(crate) fn yield_until<T>(mut ready: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    let limit = Duration::from_micros(ANSWER_YIELD_US_MAX);
    let mut slow = 0;
    loop {
        if let Some(value) = ready() {
            return Some(value);
        }
        let before = Instant::now();
        if before.duration_since(start) >= limit {
            return None;
        }
        std::thread::yield_now();
        if before.elapsed() >= Duration::from_nanos(SLOW_YIELD_NS) {
            slow += 1;
            if slow >= SLOW_YIELDS_MAX {
                return None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_what_becomes_ready() {
        let mut calls = 0;
        assert_eq!(
            yield_until(|| {
                calls += 1;
                (calls == 5).then_some(7)
            }),
            Some(7)
        );
    }

    #[test]
    fn gives_up_after_the_limit() {
        // Never ready: it stops (at the limit, or earlier if yields come back slowly).
        assert_eq!(yield_until(|| None::<()>), None);
    }
}
