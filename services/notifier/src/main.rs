//! `ferry-notifier`: the notifier worker as its own process.

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    ferry_runtime::process::main(ferry_notifier::SERVICE, ferry_notifier::run).await
}
