//! `ferry-uploader`: the uploader worker as its own process.

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    ferry_runtime::process::main(ferry_uploader::SERVICE, ferry_uploader::run).await
}
