//! The notifier: tells people what happened, each channel by its own rules.
//!
//! Every channel has its own durable consumer on the event stream, so a channel that
//! is down or slow retries on its own schedule and never delays another channel or
//! the pipeline. Per channel, each event is notified once even when redelivered (a
//! KV record of what was sent), and repeated failures of a source collapse into one
//! alert with a count until a backup succeeds again, which sends a recovery message.

pub mod channel;
mod digest;
mod event;
mod message;
mod send;
mod streak;

use std::sync::Arc;

use ferry_runtime::Runtime;
use ferry_runtime::config::NotifyOn;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use channel::Channel;
pub use channel::open_all;
pub use digest::{Digest, SourceDigest, build_digest, send_digest};
pub use event::Event;
pub use message::{Notification, NotificationKind};
pub use send::{Delivery, signature};

/// Runs one consumer per channel, and the digest schedule of channels that want
/// one, until `shutdown`.
pub async fn run(rt: Runtime, shutdown: CancellationToken) -> anyhow::Result<()> {
    let channels = channel::open_all(&rt).await?;
    let mut tasks = JoinSet::new();
    for channel in channels {
        let channel = Arc::new(channel);
        if channel.config.on.contains(&NotifyOn::Digest) {
            let (channel, shutdown) = (channel.clone(), shutdown.clone());
            tasks.spawn(async move { digest::run_schedule(channel, shutdown).await });
        }
        let (rt, shutdown) = (rt.clone(), shutdown.clone());
        tasks.spawn(async move {
            // One message at a time per channel keeps a source's failures and its
            // recovery in order.
            rt.run_handler(channel, 1, shutdown)
                .await
                .map_err(anyhow::Error::from)
        });
    }
    if tasks.is_empty() {
        tracing::info!("no notification channels configured");
        shutdown.cancelled().await;
    }
    while let Some(joined) = tasks.join_next().await {
        joined??;
    }
    Ok(())
}
