//! A test-only fault hook: `FERRY_TEST_PANIC=<point>` makes the code at that point
//! panic, so tests can prove that a panicking task ends its process non-zero (an
//! orchestrator then restarts it) instead of leaving half a worker running.
//!
//! There is no natural way left to make those tasks panic, and a test that cannot
//! fail proves nothing. Points are named `<service>.<task>`; today:
//! `scheduler.manual-request` (the manual job listener, on each request). Not a
//! configuration key (it has no `__`), never set in production.

/// The environment variable naming the point that panics.
pub const ENV: &str = "FERRY_TEST_PANIC";

/// Panics when `FERRY_TEST_PANIC` names `point`.
pub fn point(point: &str) {
    if std::env::var_os(ENV).is_some_and(|v| v == point) {
        panic!("fault injected at {point} ({ENV} is set)");
    }
}
