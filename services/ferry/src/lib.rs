//! The operator's CLI as a library: one module per command ([`commands`]), what they
//! print ([`output`]), and the restore engines ([`restore`]). `main.rs` only parses
//! arguments and dispatches.

pub mod commands;
pub mod output;
pub mod restore;
pub mod wal;

use ferry_runtime::process::ServiceSpec;

// The paths the end-to-end tests and the bench call the commands' logic by.
pub use commands::up::run_all;
pub use commands::{backup, list, retention, status, verify};

/// Every worker `ferry up` runs: their sections are validated at start-up (and by
/// every other command, which reads the same file), and `/readyz` checks the union
/// of what their readiness needs.
pub const SERVICES: &[ServiceSpec] = &[
    ferry_scheduler::SERVICE,
    ferry_dumper::SERVICE,
    ferry_uploader::SERVICE,
    ferry_retention::SERVICE,
    ferry_notifier::SERVICE,
    ferry_capture::SERVICE,
];

#[cfg(test)]
mod tests;
