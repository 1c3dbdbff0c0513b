//! `ferry-retention`: the retention worker as its own process.

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    ferry_runtime::process::main(ferry_retention::SERVICE, ferry_retention::run).await
}
