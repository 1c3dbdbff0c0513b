//! The NATS connection and the declaration of every stream and bucket, in one place,
//! created idempotently at start-up by every process.

use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use ferry_proto::subjects;

use crate::config::NatsConfig;

/// Errors reaching or preparing NATS.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    /// The server could not be reached or refused the connection.
    #[error("failed to connect to NATS at {url}: {source}")]
    Connect {
        /// The configured URL.
        url: String,
        /// The client's error.
        source: async_nats::ConnectError,
    },
    /// The server is older than Ferry supports.
    #[error(
        "NATS server {version} at {url} is too old: Ferry needs nats-server 2.10 or newer (JetStream key-value and consumer features)"
    )]
    ServerTooOld {
        /// The server's version.
        version: String,
        /// The configured URL.
        url: String,
    },
    /// The sources registry could not be loaded.
    #[error("failed to load the sources registry: {0}")]
    Registry(String),
    /// A token or credentials file named in the configuration is missing.
    #[error("failed to read NATS credentials: {0}")]
    Credentials(String),
    /// A stream could not be created.
    #[error("failed to declare stream {name}: {source}")]
    Stream {
        /// The stream.
        name: &'static str,
        /// The server's answer.
        source: jetstream::context::CreateStreamError,
    },
    /// A KV bucket could not be created.
    #[error("failed to declare key-value bucket {name}: {source}")]
    Bucket {
        /// The bucket.
        name: &'static str,
        /// The server's answer.
        source: jetstream::context::CreateKeyValueError,
    },
}

/// Connects to NATS as `name` (shown in the server's connection list).
pub async fn connect(config: &NatsConfig, name: &str) -> Result<async_nats::Client, NatsError> {
    let mut options = async_nats::ConnectOptions::new()
        .name(name)
        .connection_timeout(Duration::from_secs(5));
    if let Some(path) = &config.creds_file {
        options = options
            .credentials_file(path)
            .await
            .map_err(|e| NatsError::Credentials(format!("{}: {e}", path.display())))?;
    }
    if let Some(var) = &config.token_env {
        let token = std::env::var(var).map_err(|_| {
            NatsError::Credentials(format!(
                "environment variable {var} (nats.token_env) is not set"
            ))
        })?;
        options = options.token(token);
    }
    if let Some(ca) = &config.tls_ca_file {
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    let client = options
        .connect(config.url.as_str())
        .await
        .map_err(|source| NatsError::Connect {
            url: config.url.clone(),
            source,
        })?;
    let version = client.server_info().version;
    if !server_is_supported(&version) {
        return Err(NatsError::ServerTooOld {
            version,
            url: config.url.clone(),
        });
    }
    Ok(client)
}

/// Whether a nats-server version is 2.10 or newer.
fn server_is_supported(version: &str) -> bool {
    let mut parts = version
        .trim_start_matches('v')
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= (2, 10)
}

/// How long JetStream remembers message ids to drop duplicates. Scheduler replicas
/// publishing the same cron instant and redelivered handlers re-publishing their
/// follow-up events both rely on it.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(10 * 60);

/// Largest message a stream accepts; job requests and events are small.
const MAX_MESSAGE_BYTES: i32 = 1024 * 1024;

/// Creates the job and event streams and the KV buckets if they do not exist.
pub async fn declare(
    js: &jetstream::Context,
    config: &NatsConfig,
    lease_ttl: Duration,
) -> Result<(), NatsError> {
    let replicas = config.replicas;
    let streams = [
        stream::Config {
            name: subjects::JOBS_STREAM.into(),
            description: Some("Ferry backup jobs, one message per job".into()),
            subjects: vec![subjects::JOB_DUMP.into(), subjects::JOB_DUMP_HIGH.into()],
            retention: stream::RetentionPolicy::WorkQueue,
            duplicate_window: DUPLICATE_WINDOW,
            max_message_size: MAX_MESSAGE_BYTES,
            num_replicas: replicas,
            ..Default::default()
        },
        stream::Config {
            name: subjects::EVENTS_STREAM.into(),
            description: Some("Ferry events: what happened to every job".into()),
            subjects: vec![subjects::EVENTS_ALL.into()],
            retention: stream::RetentionPolicy::Limits,
            max_age: config.events_max_age,
            duplicate_window: DUPLICATE_WINDOW,
            max_message_size: MAX_MESSAGE_BYTES,
            num_replicas: replicas,
            ..Default::default()
        },
    ];
    for (cfg, name) in streams
        .into_iter()
        .zip([subjects::JOBS_STREAM, subjects::EVENTS_STREAM])
    {
        js.get_or_create_stream(cfg)
            .await
            .map_err(|source| NatsError::Stream { name, source })?;
    }
    let buckets = [
        (
            subjects::SOURCES_BUCKET,
            "Ferry sources registry",
            Duration::ZERO,
        ),
        (
            subjects::LOCKS_BUCKET,
            "Ferry per-source leases",
            // A lease not renewed for this long is gone: a crashed dumper frees
            // its source by itself.
            lease_ttl,
        ),
        (
            subjects::NOTIFIED_BUCKET,
            "Ferry notifications already sent",
            config.events_max_age,
        ),
        (
            subjects::NOTIFY_STATE_BUCKET,
            "Ferry failure streaks per notification channel and source",
            Duration::ZERO,
        ),
        (
            subjects::JOBS_DONE_BUCKET,
            "Ferry jobs whose dump was completed",
            config.events_max_age,
        ),
    ];
    for (bucket, description, max_age) in buckets {
        if js.get_key_value(bucket).await.is_ok() {
            continue;
        }
        js.create_key_value(kv::Config {
            bucket: bucket.into(),
            description: description.into(),
            history: 1,
            max_age,
            num_replicas: replicas,
            ..Default::default()
        })
        .await
        .map_err(|source| NatsError::Bucket {
            name: bucket,
            source,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn server_versions_before_2_10_are_refused() {
        for (v, ok) in [
            ("2.9.10", false),
            ("2.10.0", true),
            ("2.15.1", true),
            ("3.0.0-beta", true),
            ("1.4", false),
        ] {
            assert_eq!(super::server_is_supported(v), ok, "{v}");
        }
    }
}
