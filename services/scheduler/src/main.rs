//! `ferry-scheduler`: the scheduler worker as its own process.

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    ferry_runtime::process::main(ferry_scheduler::SERVICE, ferry_scheduler::run).await
}
