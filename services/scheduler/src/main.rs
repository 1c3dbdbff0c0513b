//! `ferry-scheduler`: the scheduler worker as its own process.

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    ferry_runtime::process::main("ferry-scheduler", ferry_scheduler::run).await
}
