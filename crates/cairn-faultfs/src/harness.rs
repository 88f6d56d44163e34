//! A small libtest-style runner for test binaries (`harness = false`) whose tests need
//! something of the machine: FUSE ([`main`]), or anything a gate checks ([`main_gated`], e.g.
//! mounting a tmpfs, which needs root).
//!
//! Where the need cannot be met it prints `SUITE: SKIPPED: <reason>` and reports every selected
//! test as ignored, so a skip never reads as a pass; with `CI=true` in the environment an unmet
//! need fails every selected test instead (CI has it, so missing it there is a bug).
//!
//! Arguments, as cargo passes them: `--list` lists the tests; other `--flags` are accepted and
//! ignored (with `--skip NAME` and `--exact` honoured); any other argument is a name filter.

use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::FaultFs;

/// One test: a name and a function that panics on failure.
#[derive(Clone, Copy, Debug)]
pub struct Test {
    /// The test's name.
    pub name: &'static str,
    /// The test.
    pub run: fn(),
}

/// Runs the selected `tests` of the binary named `suite`, which need FUSE, and exits with
/// libtest's status (0 when nothing failed, 101 otherwise).
pub fn main(suite: &str, tests: &[Test]) -> ! {
    main_gated(suite, tests, "FUSE", FaultFs::available)
}

/// Runs the selected `tests` of the binary named `suite` if `gate` says that what they `need`
/// is there (`Err` says why not), and exits with libtest's status.
pub fn main_gated(
    suite: &str,
    tests: &[Test],
    need: &str,
    gate: impl FnOnce() -> Result<(), String>,
) -> ! {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        for t in tests {
            println!("{}: test", t.name);
        }
        std::process::exit(0);
    }
    let selected = select(tests, &args);
    let filtered = tests.len() - selected.len();
    println!();
    println!("running {} tests", selected.len());
    let (mut passed, mut failed, mut ignored) = (0, 0, 0);
    let gate = if selected.is_empty() { Ok(()) } else { gate() };
    match gate {
        Err(reason) if ci() => {
            eprintln!("{suite}: FAILED: {need} is required under CI=true: {reason}");
            for t in &selected {
                println!("test {} ... FAILED (no {need}: {reason})", t.name);
            }
            failed = selected.len();
        }
        Err(reason) => {
            // Loud on both streams: a skipped durability test must not pass unnoticed.
            eprintln!("{suite}: SKIPPED: {reason}");
            println!("{suite}: SKIPPED: {reason}");
            for t in &selected {
                println!("test {} ... ignored, needs {need}", t.name);
            }
            ignored = selected.len();
        }
        Ok(()) => {
            for t in &selected {
                let started = std::time::Instant::now();
                let outcome = catch_unwind(AssertUnwindSafe(t.run));
                let took = started.elapsed().as_secs_f64();
                match outcome {
                    Ok(()) => {
                        println!("test {} ... ok ({took:.1} s)", t.name);
                        passed += 1;
                    }
                    Err(_) => {
                        println!("test {} ... FAILED ({took:.1} s)", t.name);
                        failed += 1;
                    }
                }
            }
        }
    }
    println!();
    let verdict = if failed == 0 { "ok" } else { "FAILED" };
    println!(
        "test result: {verdict}. {passed} passed; {failed} failed; {ignored} ignored; 0 measured; {filtered} filtered out"
    );
    std::process::exit(if failed == 0 { 0 } else { 101 });
}

/// Whether this runs under CI (`CI=true`), where an unmet need is a failure.
pub fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

fn select<'a>(tests: &'a [Test], args: &[String]) -> Vec<&'a Test> {
    let exact = args.iter().any(|a| a == "--exact");
    let mut filters = Vec::new();
    let mut skips = Vec::new();
    let mut args = args.iter();
    while let Some(a) = args.next() {
        if a == "--skip" {
            skips.extend(args.next().map(String::as_str));
        } else if let Some(s) = a.strip_prefix("--skip=") {
            skips.push(s);
        } else if !a.starts_with('-') {
            filters.push(a.as_str());
        }
    }
    let matches = |name: &str, f: &str| if exact { name == f } else { name.contains(f) };
    tests
        .iter()
        .filter(|t| filters.is_empty() || filters.iter().any(|f| matches(t.name, f)))
        .filter(|t| !skips.iter().any(|s| t.name.contains(*s)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TESTS: [Test; 3] = [
        Test {
            name: "powercut_sync",
            run: || {},
        },
        Test {
            name: "powercut_torn",
            run: || {},
        },
        Test {
            name: "control",
            run: || {},
        },
    ];

    fn names(args: &[&str]) -> Vec<&'static str> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        select(&TESTS, &args).iter().map(|t| t.name).collect()
    }

    #[test]
    fn filters_like_libtest() {
        assert_eq!(names(&[]).len(), 3);
        assert_eq!(names(&["--nocapture"]).len(), 3);
        assert_eq!(names(&["powercut"]), ["powercut_sync", "powercut_torn"]);
        assert_eq!(names(&["powercut", "--skip", "torn"]), ["powercut_sync"]);
        assert_eq!(names(&["--exact", "powercut"]), Vec::<&str>::new());
        assert_eq!(names(&["--skip=powercut"]), ["control"]);
    }
}
