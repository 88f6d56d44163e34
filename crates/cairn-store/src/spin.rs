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
/// yielding first. (An fsync on a typical cloud disk takes hundreds of microseconds, so
/// `sync` waits there sleep.)
pub const QUICK_WRITE_NS_MAX: u64 = 50_000;

/// A yield that takes longer than this ran another thread.
const SLOW_YIELD_NS: u64 = 3_000;

/// After this many slow yields the CPU is wanted elsewhere: stop yielding.
const SLOW_YIELDS_MAX: u32 = 3;

/// Whether yielding has been paying off for a waiter that waits again and again (the writer
/// waiting for its next request): a miss costs the next `YIELD_MISS_COST` waits their yield,
/// so at a moderate request rate, where the next request is further away than the yielding
/// lasts, at most one wait in `YIELD_MISS_COST + 1` yields in vain.
#[derive(Debug, Default)]
pub(crate) struct YieldCredit {
    score: i32,
}

/// Waits skipped after a yield that found nothing.
const YIELD_MISS_COST: i32 = 8;

/// Hits remembered, so that one miss after a run of hits does not stop yielding at once.
const YIELD_HITS_KEPT: i32 = 8;

impl YieldCredit {
    /// Whether this wait should yield first (a skipped wait earns back credit).
    pub fn try_yield(&mut self) -> bool {
        if self.score < 0 {
            self.score += 1;
            return false;
        }
        true
    }

    /// Records whether the yielding wait found what it waited for.
    pub fn record(&mut self, hit: bool) {
        self.score = if hit {
            (self.score + 1).min(YIELD_HITS_KEPT)
        } else {
            self.score - YIELD_MISS_COST
        };
    }
}

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
        assert_eq!(yield_until(|| Some(7)), Some(7));
        // Ready at the second call: one yield in between, whatever it costs (it takes three
        // slow yields, or a check after the limit, to give up).
        let mut calls = 0;
        assert_eq!(
            yield_until(|| {
                calls += 1;
                (calls == 2).then_some(8)
            }),
            Some(8)
        );
    }

    #[test]
    fn credit_skips_yields_after_a_miss_and_comes_back() {
        let mut credit = YieldCredit::default();
        assert!(credit.try_yield());
        credit.record(false);
        let skipped = (0..YIELD_MISS_COST).filter(|_| !credit.try_yield()).count();
        assert_eq!(skipped as i32, YIELD_MISS_COST);
        assert!(credit.try_yield(), "yields again after paying for the miss");
        // A run of hits absorbs one miss.
        for _ in 0..YIELD_HITS_KEPT {
            credit.record(true);
        }
        credit.record(false);
        assert!(credit.try_yield());
    }

    #[test]
    fn gives_up_after_the_limit() {
        // Never ready: it stops (at the limit, or earlier if yields come back slowly).
        assert_eq!(yield_until(|| None::<()>), None);
    }
}
