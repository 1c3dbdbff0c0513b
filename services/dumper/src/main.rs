//! `ferry-dumper`: the dumper worker as its own process.

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    ferry_runtime::process::main(ferry_dumper::SERVICE, ferry_dumper::run).await
}
