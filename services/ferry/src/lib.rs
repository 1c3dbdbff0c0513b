//! The operator's CLI as a library: `ferry up` (every worker in one process) and the
//! commands that talk to a running Ferry. `main.rs` only parses arguments.

pub mod backup;
pub mod list;
pub mod restore;
pub mod retention;
pub mod status;

use ferry_runtime::Runtime;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Runs every worker in this process until `shutdown`. If one worker stops with an
/// error, the others are stopped too and the error is returned: a half-running
/// pipeline would fail silently.
pub async fn run_all(rt: Runtime, shutdown: CancellationToken) -> anyhow::Result<()> {
    let mut workers = JoinSet::new();
    macro_rules! spawn {
        ($name:literal, $run:path) => {{
            let (rt, shutdown) = (rt.clone(), shutdown.clone());
            workers.spawn(async move { ($name, $run(rt, shutdown).await) });
        }};
    }
    spawn!("scheduler", ferry_scheduler::run);
    spawn!("dumper", ferry_dumper::run);
    spawn!("uploader", ferry_uploader::run);
    spawn!("retention", ferry_retention::run);
    spawn!("notifier", ferry_notifier::run);

    let mut first_error = None;
    while let Some(joined) = workers.join_next().await {
        let error = match joined {
            Ok((_, Ok(()))) if shutdown.is_cancelled() => continue,
            Ok((name, Ok(()))) => anyhow::anyhow!("the {name} stopped unexpectedly"),
            Ok((name, Err(e))) => e.context(format!("the {name} failed")),
            Err(e) => anyhow::anyhow!("a worker panicked: {e}"),
        };
        tracing::error!(error = format!("{error:#}"), "stopping every worker");
        shutdown.cancel();
        first_error.get_or_insert(error);
    }
    first_error.map_or(Ok(()), Err)
}
