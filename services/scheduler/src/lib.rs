//! The scheduler: publishes `JobRequested` when a source's cron schedule fires, and
//! turns JSON job requests published by hand on `ferry.v1.jobs.request` into
//! protobuf jobs. It opens each job's root span, so one job is one trace.

pub mod clock;
pub mod cron;
mod jobs;
mod manual;

use tokio_util::sync::CancellationToken;

use ferry_runtime::Runtime;

pub use jobs::{JobRequest, backup_id_for};
pub use manual::{ManualReply, ManualRequest, RequestPriority};

/// Runs the cron loop and the manual request listener until `shutdown`.
pub async fn run(rt: Runtime, shutdown: CancellationToken) -> anyhow::Result<()> {
    run_with_clock(rt, std::sync::Arc::new(clock::SystemClock), shutdown).await
}

/// `run` with a given clock (tests drive it by hand).
pub async fn run_with_clock(
    rt: Runtime,
    clock: std::sync::Arc<dyn clock::Clock>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let subscription = manual::subscribe(&rt).await?;
    let manual = tokio::spawn(manual::serve(rt.clone(), subscription, shutdown.clone()));
    let cron = tokio::spawn(cron::run(rt.clone(), clock, shutdown.clone()));
    let (manual, cron) = tokio::join!(manual, cron);
    manual??;
    cron??;
    Ok(())
}
