//! Leases: at most one holder of a key across every replica, such as one running
//! backup per source (the dumper) or one retention run per source (retention). A
//! lease is a key in the `ferry-locks` KV bucket, created only if absent (so two
//! workers cannot both take it), renewed with a revision check while the work runs,
//! and deleted when it ends. The bucket's max age is the lease's time to live: a
//! crashed worker stops renewing and its lease expires by itself.

use std::time::Duration;

use async_nats::jetstream::kv;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// Who holds a lease, for the `already_running` message and `ferry status`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Holder {
    /// The job.
    pub job_id: String,
    /// The worker's node.
    pub node: String,
    /// When it took the lease.
    pub since: chrono::DateTime<chrono::Utc>,
}

/// A held lease; renewed in the background until released.
pub struct Lease {
    kv: kv::Store,
    key: String,
    revision: std::sync::Arc<std::sync::atomic::AtomicU64>,
    renewer: tokio::task::JoinHandle<()>,
    /// Cancelled if the lease is lost (renewal failed): the job must stop.
    pub lost: CancellationToken,
}

/// Tries to take the lease `key` (a source name for backups); `Err(holder)` when
/// someone has it.
pub async fn try_acquire(
    kv: &kv::Store,
    key: &str,
    holder: &Holder,
    ttl: Duration,
) -> anyhow::Result<Result<Lease, Option<Holder>>> {
    let value: bytes::Bytes = serde_json::to_vec(holder)?.into();
    match kv.create(key, value.clone()).await {
        Ok(revision) => {
            let revision = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(revision));
            let lost = CancellationToken::new();
            let renewer = {
                let (kv, key, revision, lost) =
                    (kv.clone(), key.to_string(), revision.clone(), lost.clone());
                tokio::spawn(async move {
                    let every = ttl / 3;
                    loop {
                        tokio::time::sleep(every).await;
                        let current = revision.load(std::sync::atomic::Ordering::SeqCst);
                        match kv.update(&key, value.clone(), current).await {
                            Ok(next) => revision.store(next, std::sync::atomic::Ordering::SeqCst),
                            Err(e) => {
                                tracing::error!(lease = %key, error = %e, "lost the lease; stopping the work it guards");
                                lost.cancel();
                                return;
                            }
                        }
                    }
                })
            };
            Ok(Ok(Lease {
                kv: kv.clone(),
                key: key.to_string(),
                revision,
                renewer,
                lost,
            }))
        }
        Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
            let holder = kv
                .get(key)
                .await
                .ok()
                .flatten()
                .and_then(|v| serde_json::from_slice(&v).ok());
            Ok(Err(holder))
        }
        Err(e) => Err(anyhow::anyhow!("taking the lease {key}: {e}")),
    }
}

impl Lease {
    /// Ends the lease (only if it is still ours).
    pub async fn release(self) {
        self.renewer.abort();
        let revision = self.revision.load(std::sync::atomic::Ordering::SeqCst);
        if let Err(e) = self
            .kv
            .delete_expect_revision(&self.key, Some(revision))
            .await
        {
            tracing::warn!(lease = %self.key, error = %e, "could not release the lease; it will expire");
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.renewer.abort();
    }
}
