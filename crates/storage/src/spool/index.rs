//! Listing the live keys of a JetStream key-value bucket under one prefix, by a
//! server-side subject filter: what a per-job index needs to find exactly one
//! job's entries without reading the rest of the bucket.

use async_nats::jetstream::{consumer, kv, stream};
use futures::StreamExt;

/// Errors listing a bucket's keys.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    /// The ordered consumer over the bucket's stream could not be created.
    #[error("failed to list keys {prefix}* of bucket {bucket}: {source}")]
    Consumer {
        /// The bucket.
        bucket: String,
        /// The key prefix.
        prefix: String,
        /// The server's answer.
        #[source]
        source: stream::ConsumerError,
    },
    /// Reading the consumer's messages failed.
    #[error("failed to read keys {prefix}* of bucket {bucket}: {message}")]
    Read {
        /// The bucket.
        bucket: String,
        /// The key prefix.
        prefix: String,
        /// What failed.
        message: String,
    },
}

/// The keys under `prefix` (which must end with `.`) that hold a value: one
/// message per key is read (the last), headers only, and nothing outside the
/// prefix. Memory grows with the keys under the prefix, never with the bucket.
pub async fn keys_under(store: &kv::Store, prefix: &str) -> Result<Vec<String>, KeysError> {
    let subject_prefix = format!("{}{}", store.prefix, prefix);
    let consumer = store
        .stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: format!("{subject_prefix}>"),
            deliver_policy: consumer::DeliverPolicy::LastPerSubject,
            headers_only: true,
            ..Default::default()
        })
        .await
        .map_err(|source| KeysError::Consumer {
            bucket: store.name.clone(),
            prefix: prefix.to_string(),
            source,
        })?;
    let read_err = |message: String| KeysError::Read {
        bucket: store.name.clone(),
        prefix: prefix.to_string(),
        message,
    };
    let mut keys = Vec::new();
    if consumer.cached_info().num_pending == 0 {
        return Ok(keys);
    }
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| read_err(e.to_string()))?;
    while let Some(message) = messages.next().await {
        let message = message.map_err(|e| read_err(e.to_string()))?;
        let pending = message.info().map_err(|e| read_err(e.to_string()))?.pending;
        let removed = message.headers.as_ref().is_some_and(|h| {
            h.get("KV-Operation")
                .is_some_and(|op| matches!(op.as_str(), "DEL" | "PURGE"))
                || h.get("Nats-Marker-Reason").is_some()
        });
        if !removed && let Some(key) = message.subject.as_str().strip_prefix(&store.prefix) {
            keys.push(key.to_string());
        }
        if pending == 0 {
            break;
        }
    }
    Ok(keys)
}
