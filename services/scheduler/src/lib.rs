//! The scheduler: publishes `JobRequested` when a source's cron schedule fires, and
//! turns JSON job requests published by hand on `ferry.v1.jobs.request` into
//! protobuf jobs. It opens each job's root span, so one job is one trace.

pub mod clock;
pub mod config;
pub mod cron;
pub mod errors;
mod jobs;
mod manual;

use tokio_util::sync::CancellationToken;

use ferry_runtime::config::SectionSpec;
use ferry_runtime::process::{ReadinessNeeds, ServiceSpec};
use ferry_runtime::{Runtime, Tasks};

pub use jobs::{JobRequest, backup_id_for};
pub use manual::{ManualReply, ManualRequest, RequestPriority};

/// What the scheduler declares to the process that runs it: its `[scheduler]`
/// section; its readiness needs NATS only.
pub const SERVICE: ServiceSpec = ServiceSpec {
    name: "ferry-scheduler",
    sections: &[SectionSpec::of::<config::SchedulerConfig>()],
    readiness: ReadinessNeeds { store: false },
};

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
    // One group: if either task panics or fails, the other stops too and the error
    // ends the process, rather than a scheduler that fires cron jobs but has
    // silently stopped taking manual ones.
    let mut tasks = Tasks::new(&shutdown);
    tasks.spawn(
        "scheduler manual requests",
        manual::serve(rt.clone(), subscription, tasks.shutdown()),
    );
    tasks.spawn(
        "scheduler cron",
        cron::run(rt.clone(), clock, tasks.shutdown()),
    );
    Ok(tasks.join().await?)
}
