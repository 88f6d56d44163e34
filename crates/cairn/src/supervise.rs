//! The restart policy of a supervised package daemon, sans-IO: given how a run ended and when,
//! what happens next. The runtime that starts and stops processes asks this module and does
//! what it says; the clock comes in as arguments, so every decision is a pure function of the
//! history of runs and can be tested exhaustively.
//!
//! - `never`: a daemon that exits stays stopped.
//! - `on-failure`: restarted after a non-zero exit, a signal it did not get from cairn, or a
//!   failure to start; a clean exit (status 0) stays stopped.
//! - `always`: restarted after any exit.
//!
//! Restarts wait an exponential backoff (`DAEMON_BACKOFF_MIN_MS`, doubling up to
//! `DAEMON_BACKOFF_MAX_MS`); a run that lasted `DAEMON_STABLE_MS` starts the backoff over. A
//! daemon that ended `DAEMON_CRASH_LOOP_MAX` times within `DAEMON_CRASH_LOOP_WINDOW_MS` is in a
//! crash loop: it is marked failed and left stopped until it is asked to run again.

use std::collections::VecDeque;

use cairn_kernel::model::{DaemonFailure, Restart};

/// First wait before a restart.
pub const DAEMON_BACKOFF_MIN_MS: u64 = 200;
/// Longest wait before a restart.
pub const DAEMON_BACKOFF_MAX_MS: u64 = 30_000;
/// A run at least this long resets the backoff.
pub const DAEMON_STABLE_MS: u64 = 10_000;
/// Ends within `DAEMON_CRASH_LOOP_WINDOW_MS` that make a crash loop.
pub const DAEMON_CRASH_LOOP_MAX: usize = 5;
/// The window of `DAEMON_CRASH_LOOP_MAX`.
pub const DAEMON_CRASH_LOOP_WINDOW_MS: u64 = 60_000;

/// How a run of a daemon ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ended {
    /// The process exited with this status.
    Exited(i32),
    /// A signal killed it, and cairn did not send it (cairn's stops are not ends of a run).
    Killed(i32),
    /// It could not be started.
    SpawnFailed(String),
}

impl Ended {
    fn is_failure(&self) -> bool {
        match self {
            Ended::Exited(code) => *code != 0,
            Ended::Killed(_) | Ended::SpawnFailed(_) => true,
        }
    }
}

/// What the runtime does after a run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next {
    /// Start it again in this many milliseconds.
    Restart {
        /// The wait.
        after_ms: u64,
    },
    /// Leave it stopped (the policy does not restart this end).
    Stay,
    /// Leave it stopped and mark it failed: it is in a crash loop.
    Fail {
        /// Why, for the observed state.
        reason: DaemonFailure,
    },
}

/// The restart history of one daemon.
#[derive(Clone, Debug)]
pub struct Supervision {
    policy: Restart,
    /// The wait of the next restart.
    backoff_ms: u64,
    /// When recent runs ended (ms), oldest first, at most `DAEMON_CRASH_LOOP_MAX`.
    ends_ms: VecDeque<u64>,
    /// Restarts since it was (last) asked to run.
    restarts: u32,
}

impl Supervision {
    /// A daemon asked to run under `policy`, with no history.
    pub fn new(policy: Restart) -> Supervision {
        Supervision {
            policy,
            backoff_ms: DAEMON_BACKOFF_MIN_MS,
            ends_ms: VecDeque::with_capacity(DAEMON_CRASH_LOOP_MAX),
            restarts: 0,
        }
    }

    /// Restarts since it was asked to run.
    pub fn restarts(&self) -> u32 {
        self.restarts
    }

    /// A run that started at `started_ms` ended at `now_ms` as `ended`: what next.
    pub fn ended(&mut self, ended: &Ended, started_ms: u64, now_ms: u64) -> Next {
        if now_ms.saturating_sub(started_ms) >= DAEMON_STABLE_MS {
            self.backoff_ms = DAEMON_BACKOFF_MIN_MS;
        }
        while self
            .ends_ms
            .front()
            .is_some_and(|t| now_ms.saturating_sub(*t) >= DAEMON_CRASH_LOOP_WINDOW_MS)
        {
            self.ends_ms.pop_front();
        }
        if self.ends_ms.len() == DAEMON_CRASH_LOOP_MAX {
            self.ends_ms.pop_front();
        }
        self.ends_ms.push_back(now_ms);
        let restart = match self.policy {
            Restart::Never => false,
            Restart::OnFailure => ended.is_failure(),
            Restart::Always => true,
        };
        if !restart {
            return Next::Stay;
        }
        if self.ends_ms.len() >= DAEMON_CRASH_LOOP_MAX {
            return Next::Fail {
                reason: DaemonFailure::CrashLoop {
                    ends: u32::try_from(self.ends_ms.len()).unwrap_or(u32::MAX),
                    window_ms: DAEMON_CRASH_LOOP_WINDOW_MS,
                },
            };
        }
        let after_ms = self.backoff_ms;
        self.backoff_ms = (self.backoff_ms * 2).min(DAEMON_BACKOFF_MAX_MS);
        self.restarts += 1;
        Next::Restart { after_ms }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ends(policy: Restart, runs: &[(Ended, u64, u64)]) -> Vec<Next> {
        let mut s = Supervision::new(policy);
        runs.iter().map(|(e, a, b)| s.ended(e, *a, *b)).collect()
    }

    #[test]
    fn each_policy_restarts_what_it_says() {
        let ok = Ended::Exited(0);
        let bad = Ended::Exited(3);
        let first = Next::Restart {
            after_ms: DAEMON_BACKOFF_MIN_MS,
        };
        assert_eq!(ends(Restart::Never, &[(bad.clone(), 0, 1)]), [Next::Stay]);
        assert_eq!(
            ends(Restart::OnFailure, &[(ok.clone(), 0, 1)]),
            [Next::Stay]
        );
        assert_eq!(
            ends(Restart::OnFailure, &[(bad, 0, 1)]),
            std::slice::from_ref(&first)
        );
        assert_eq!(
            ends(Restart::OnFailure, &[(Ended::Killed(9), 0, 1)]),
            std::slice::from_ref(&first)
        );
        assert_eq!(
            ends(
                Restart::OnFailure,
                &[(Ended::SpawnFailed("no such file".into()), 0, 1)]
            ),
            std::slice::from_ref(&first)
        );
        assert_eq!(ends(Restart::Always, &[(ok, 0, 1)]), [first]);
    }

    #[test]
    fn restarts_back_off_then_a_crash_loop_fails() {
        let mut s = Supervision::new(Restart::Always);
        let mut now = 0;
        let mut waits = Vec::new();
        loop {
            match s.ended(&Ended::Exited(1), now, now + 10) {
                Next::Restart { after_ms } => {
                    waits.push(after_ms);
                    now += 10 + after_ms;
                }
                Next::Fail { reason } => {
                    assert_eq!(
                        reason,
                        DaemonFailure::CrashLoop {
                            ends: DAEMON_CRASH_LOOP_MAX as u32,
                            window_ms: DAEMON_CRASH_LOOP_WINDOW_MS
                        }
                    );
                    assert!(reason.to_string().contains("crash loop"), "{reason}");
                    break;
                }
                Next::Stay => panic!("always restarts"),
            }
        }
        assert_eq!(waits, [200, 400, 800, 1600]);
        assert_eq!(s.restarts(), 4);
    }

    #[test]
    fn a_stable_run_starts_the_backoff_over_and_old_ends_leave_the_window() {
        let mut s = Supervision::new(Restart::OnFailure);
        let mut now = 0;
        for _ in 0..3 {
            assert!(matches!(
                s.ended(&Ended::Exited(1), now, now + 1),
                Next::Restart { .. }
            ));
            now += 1_000;
        }
        // A long run: the backoff is back at its start, and the earlier ends are out of the
        // window, so no crash loop for many more ends spread out.
        now += DAEMON_CRASH_LOOP_WINDOW_MS;
        assert_eq!(
            s.ended(&Ended::Exited(1), now - DAEMON_STABLE_MS, now),
            Next::Restart {
                after_ms: DAEMON_BACKOFF_MIN_MS
            }
        );
        for _ in 0..20 {
            now += DAEMON_CRASH_LOOP_WINDOW_MS / 4;
            assert!(matches!(
                s.ended(&Ended::Exited(1), now - DAEMON_STABLE_MS, now),
                Next::Restart { .. }
            ));
        }
    }

    proptest! {
        /// Whatever the history: waits stay within the bounds, a crash loop is declared only
        /// with `DAEMON_CRASH_LOOP_MAX` ends inside the window, and `never` never restarts.
        #[test]
        fn decisions_stay_within_their_limits(
            policy in prop_oneof![Just(Restart::Never), Just(Restart::OnFailure), Just(Restart::Always)],
            runs in proptest::collection::vec((0u64..20_000, 0u64..40_000, -1i32..3), 1..60),
        ) {
            let mut s = Supervision::new(policy);
            let mut now = 0u64;
            let mut ends: Vec<u64> = Vec::new();
            for (ran, gap, code) in runs {
                let started = now;
                now += ran;
                let ended = if code < 0 { Ended::Killed(9) } else { Ended::Exited(code) };
                ends.push(now);
                let in_window = ends.iter().filter(|t| now - **t < DAEMON_CRASH_LOOP_WINDOW_MS).count();
                match s.ended(&ended, started, now) {
                    Next::Restart { after_ms } => {
                        prop_assert!(policy != Restart::Never);
                        prop_assert!((DAEMON_BACKOFF_MIN_MS..=DAEMON_BACKOFF_MAX_MS).contains(&after_ms));
                        prop_assert!(in_window < DAEMON_CRASH_LOOP_MAX);
                        now += after_ms;
                    }
                    Next::Fail { .. } => {
                        prop_assert!(in_window >= DAEMON_CRASH_LOOP_MAX);
                        // Asked to run again: a fresh history.
                        s = Supervision::new(policy);
                        ends.clear();
                    }
                    Next::Stay => {
                        prop_assert!(policy != Restart::Always);
                    }
                }
                now += gap;
            }
        }
    }
}
