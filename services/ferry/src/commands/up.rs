//! `ferry up`: every worker in one process, for a small installation or a laptop.

use std::process::ExitCode;

use ferry_runtime::process;
use ferry_runtime::{Config, Runtime, Tasks};
use tokio_util::sync::CancellationToken;

/// Runs `ferry up` until a signal: telemetry, NATS (declaring every stream and
/// bucket), the health endpoints, then [`run_all`].
pub async fn run(config: Config) -> anyhow::Result<ExitCode> {
    let _telemetry = match process::init_telemetry(&config, "ferry") {
        Ok(g) => g,
        Err(code) => return Ok(code),
    };
    let shutdown = ferry_runtime::shutdown::on_signals();
    let rt = process::connect(config, "ferry", crate::SERVICES, &shutdown).await?;
    run_all(rt, shutdown).await?;
    Ok(ExitCode::SUCCESS)
}

/// Runs every worker in this process until `shutdown`. If one worker stops with an
/// error, the others are stopped too and the error is returned: a half-running
/// pipeline would fail silently.
pub async fn run_all(rt: Runtime, shutdown: CancellationToken) -> anyhow::Result<()> {
    // One group (see `ferry_runtime::tasks`): a worker that fails, panics or stops
    // early stops the others, and its error ends the process non-zero.
    let mut workers = Tasks::new(&shutdown);
    macro_rules! spawn {
        ($name:literal, $run:path) => {{
            let (rt, group) = (rt.clone(), workers.shutdown());
            workers.spawn($name, async move { $run(rt, group).await });
        }};
    }
    spawn!("scheduler", ferry_scheduler::run);
    spawn!("dumper", ferry_dumper::run);
    spawn!("uploader", ferry_uploader::run);
    spawn!("retention", ferry_retention::run);
    spawn!("notifier", ferry_notifier::run);
    spawn!("capture", ferry_capture::run);
    Ok(workers.join().await?)
}
