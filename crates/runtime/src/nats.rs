//! The NATS connection and the declaration of every stream and bucket, in one place,
//! created idempotently at start-up by every process.

use std::time::Duration;

use std::sync::{Arc, Mutex};

use async_nats::jetstream::context::GetStreamErrorKind;
use async_nats::jetstream::{self, ErrorCode, kv, stream};
use ferry_proto::subjects;
use secrecy::ExposeSecret;

use crate::config::NatsConfig;
use crate::secrets::{SecretSource, read_secret};

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
    /// A stream or bucket could not be read.
    #[error("failed to read {what}: {source}")]
    Read {
        /// The stream or bucket.
        what: String,
        /// The server's answer.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
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
    connect_recording(config, name)
        .await
        .map(|(client, _)| client)
}

/// [`connect`], also keeping the server's refusals of this connection's operations.
pub async fn connect_recording(
    config: &NatsConfig,
    name: &str,
) -> Result<(async_nats::Client, Refusals), NatsError> {
    let refusals = Refusals::default();
    let recorder = refusals.clone();
    let mut options = async_nats::ConnectOptions::new()
        .name(name)
        .connection_timeout(Duration::from_secs(5))
        .event_callback(move |event| {
            let recorder = recorder.clone();
            async move {
                if let async_nats::Event::ServerError(async_nats::ServerError::Other(message)) =
                    event
                    && message.to_lowercase().contains("permissions violation")
                {
                    tracing::warn!(error = %message, "NATS refused an operation");
                    recorder.record(message);
                }
            }
        });
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
    if let Some(user) = &config.username {
        let source = match (&config.password_env, &config.password_file) {
            (Some(var), _) => SecretSource::Env(var),
            (None, Some(path)) => SecretSource::File(path),
            (None, None) => {
                return Err(NatsError::Credentials(format!(
                    "nats.username {user} needs nats.password_env or nats.password_file"
                )));
            }
        };
        let password = read_secret(source)
            .map_err(|e| NatsError::Credentials(format!("the password of {user}: {e}")))?;
        options = options.user_and_password(user.clone(), password.expose_secret().to_owned());
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
    Ok((client, refusals))
}

/// The operations the server refused on one connection. NATS reports a refused
/// publish (a permission violation) on the connection, not to the request: the
/// request itself only times out, so an error can only say why by asking here.
#[derive(Debug, Clone, Default)]
pub struct Refusals(Arc<Mutex<Option<String>>>);

impl Refusals {
    /// The server's last refusal, e.g. `Permissions Violation for Publish to "…"`.
    pub fn last(&self) -> Option<String> {
        self.0.lock().expect("refusals lock").clone()
    }

    fn record(&self, message: String) {
        *self.0.lock().expect("refusals lock") = Some(message);
    }
}

/// A stream that exists, or `None`; nothing is created. Read-only commands use it
/// so that they work with a NATS user that may only read.
pub async fn existing_stream(
    js: &jetstream::Context,
    name: &str,
) -> Result<Option<stream::Stream>, jetstream::context::GetStreamError> {
    match js.get_stream(name).await {
        Ok(stream) => Ok(Some(stream)),
        Err(e)
            if matches!(e.kind(), GetStreamErrorKind::JetStream(ref j)
                if j.error_code() == ErrorCode::STREAM_NOT_FOUND) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// A key-value bucket that exists, or `None`; nothing is created.
pub async fn existing_bucket(
    js: &jetstream::Context,
    bucket: &str,
) -> Result<Option<kv::Store>, NatsError> {
    let what = || format!("key-value bucket {bucket}");
    let stream = existing_stream(js, &format!("KV_{bucket}"))
        .await
        .map_err(|e| NatsError::Read {
            what: what(),
            source: Box::new(e),
        })?;
    if stream.is_none() {
        return Ok(None);
    }
    js.get_key_value(bucket)
        .await
        .map(Some)
        .map_err(|e| NatsError::Read {
            what: what(),
            source: Box::new(e),
        })
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
            subjects::JOB_STATE_BUCKET,
            "Ferry job state: dump records and the uploader's per-file bookkeeping",
            // A job abandoned half-way (its events expired too) leaves nothing behind.
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
