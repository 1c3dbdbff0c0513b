//! `ferry-capture`: the capture worker as its own process.

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    ferry_runtime::process::main(ferry_capture::SERVICE, ferry_capture::run).await
}
