//! A test-only fault hook: `FERRY_TEST_PANIC=<point>` makes the code at that point
//! panic, so tests can prove that a panicking task ends its process non-zero (an
//! orchestrator then restarts it) instead of leaving half a worker running.
//!
//! There is no natural way left to make those tasks panic, and a test that cannot
//! fail proves nothing. Points are named `<service>.<task>`; today:
//! `scheduler.manual-request` (the manual job listener, on each request) and
//! `keys.rewrap.manifest` (`ferry keys rewrap`, after each manifest it rewrites;
//! `keys.rewrap.manifest:3` panics at the third, to test a rewrap killed midway).
//! Not a configuration key (it has no `__`), never set in production.

/// The environment variable naming the point that panics.
pub const ENV: &str = "FERRY_TEST_PANIC";

/// Panics when `FERRY_TEST_PANIC` names `point`, or names `point:N` and this is
/// the Nth time the process passes it.
pub fn point(point: &str) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static PASSED: AtomicUsize = AtomicUsize::new(0);
    let Some(value) = std::env::var_os(ENV) else {
        return;
    };
    let value = value.to_string_lossy();
    let at = match value.split_once(':') {
        Some((name, n)) if name == point => n.parse::<usize>().unwrap_or(1),
        None if value == point => 1,
        _ => return,
    };
    if PASSED.fetch_add(1, Ordering::SeqCst) + 1 >= at {
        panic!("fault injected at {point} ({ENV} is set)");
    }
}
