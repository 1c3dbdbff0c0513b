//! The notifier: tells people what happened, each channel by its own rules.
//!
//! Every channel has its own durable consumer on the event stream, so a channel that
//! is down or slow retries on its own schedule and never delays another channel or
//! the pipeline. Per channel, each event is notified once even when redelivered (a
//! KV record of what was sent), and repeated failures of a source collapse into one
//! alert with a count until a backup succeeds again, which sends a recovery message.

pub mod channel;
pub mod config;
mod digest;
pub mod errors;
mod event;
mod message;
mod send;
mod streak;

use std::sync::Arc;

use config::{NotifierConfig, NotifyChannels, NotifyOn};
use ferry_runtime::config::SectionSpec;
use ferry_runtime::process::{ReadinessNeeds, ServiceSpec};
use ferry_runtime::{Runtime, Tasks};
use tokio_util::sync::CancellationToken;

pub use channel::Channel;
pub use channel::open_all;
pub use digest::{Digest, SourceDigest, build_digest, send_digest};
pub use event::Event;
pub use message::{Notification, NotificationKind};
pub use send::{Delivery, signature};

/// What the notifier declares to the process that runs it: its `[[notify]]`
/// channels and `[notifier]` settings; its readiness needs NATS only.
pub const SERVICE: ServiceSpec = ServiceSpec {
    name: "ferry-notifier",
    sections: &[
        SectionSpec::of::<NotifyChannels>(),
        SectionSpec::of::<NotifierConfig>(),
    ],
    readiness: ReadinessNeeds { store: false },
};

/// Runs one consumer per channel, and the digest schedule of channels that want
/// one, until `shutdown`.
pub async fn run(rt: Runtime, shutdown: CancellationToken) -> anyhow::Result<()> {
    let channels = channel::open_all(&rt).await?;
    // One group: a channel's task that fails or panics stops the notifier (and the
    // process) rather than leave the other channels alerting without it.
    let mut tasks = Tasks::new(&shutdown);
    for channel in channels {
        let channel = Arc::new(channel);
        if channel.config.on.contains(&NotifyOn::Digest) {
            let (channel, group) = (channel.clone(), tasks.shutdown());
            tasks.spawn(format!("notifier {} digest", channel.name), async move {
                digest::run_schedule(channel, group).await
            });
        }
        if channel.kinds().is_empty() {
            continue;
        }
        let (rt, group) = (rt.clone(), tasks.shutdown());
        tasks.spawn(format!("notifier {}", channel.name), async move {
            // One message at a time per channel keeps a source's failures and its
            // recovery in order.
            Ok(rt.run_handler(channel, 1, group).await?)
        });
    }
    if tasks.is_empty() {
        tracing::info!("no notification channels configured");
        shutdown.cancelled().await;
        return Ok(());
    }
    Ok(tasks.join().await?)
}
