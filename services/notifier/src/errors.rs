//! What can go wrong telling a channel, and the one place (`classify`) that turns
//! it into a reason code and a retry decision for the runner.

use std::time::Duration;

use ferry_proto::reason;
use ferry_runtime::HandlerError;

/// A notification was not delivered.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// The HTTP request did not get an answer (connection, TLS, timeout). The
    /// error carries no URL: webhook URLs embed tokens.
    #[error("request failed")]
    Request(#[source] reqwest::Error),
    /// The channel is busy or broken for now (429, 5xx).
    #[error("the channel answered {status}: {body}")]
    Unavailable {
        /// The HTTP status.
        status: reqwest::StatusCode,
        /// The start of the answer's body.
        body: String,
        /// The channel's `Retry-After`.
        retry_after: Option<Duration>,
    },
    /// The channel refused the request (a wrong URL or token does not fix itself).
    #[error("the channel answered {status}: {body}; check its URL and settings")]
    Refused {
        /// The HTTP status.
        status: reqwest::StatusCode,
        /// The start of the answer's body.
        body: String,
    },
    /// The email could not be built (an address or header lettre rejects).
    #[error("cannot build the email")]
    EmailBuild(#[source] lettre::error::Error),
    /// The SMTP server refused the message for good.
    #[error("the SMTP server refused the message")]
    SmtpRefused(#[source] lettre::transport::smtp::Error),
    /// SMTP delivery failed for now.
    #[error("SMTP delivery failed")]
    Smtp(#[source] lettre::transport::smtp::Error),
}

/// The channel's own records (what was sent, open failure streaks) failed.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Reading the KV bucket failed.
    #[error("reading {key}")]
    Read {
        /// The key.
        key: String,
        /// What NATS said.
        #[source]
        source: async_nats::jetstream::kv::EntryError,
    },
    /// Writing the KV bucket failed.
    #[error("writing {key}")]
    Write {
        /// The key.
        key: String,
        /// What NATS said.
        #[source]
        source: async_nats::jetstream::kv::PutError,
    },
    /// Removing a KV entry failed.
    #[error("removing {key}")]
    Purge {
        /// The key.
        key: String,
        /// What NATS said.
        #[source]
        source: async_nats::jetstream::kv::PurgeError,
    },
    /// A record is not the JSON this release writes.
    #[error("decoding {key}")]
    Decode {
        /// The key.
        key: String,
        /// What was wrong.
        #[source]
        source: serde_json::Error,
    },
}

/// Why a channel could not handle an event.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// Sending failed.
    #[error("channel {channel}")]
    Delivery {
        /// The channel's name.
        channel: String,
        /// Why.
        #[source]
        source: DeliveryError,
    },
    /// The channel's records failed.
    #[error("channel {channel}: notification state")]
    State {
        /// The channel's name.
        channel: String,
        /// Why.
        #[source]
        source: StateError,
    },
}

/// The runner's view of a notifier error: the only place the notifier chooses a
/// reason code and whether to retry.
pub fn classify(error: &NotifyError) -> HandlerError {
    let message = ferry_runtime::error_chain(error);
    match error {
        NotifyError::State { .. } => HandlerError::retryable(reason::INTERNAL, message),
        NotifyError::Delivery { source, .. } => match source {
            DeliveryError::Unavailable {
                retry_after: Some(delay),
                ..
            } => HandlerError::retryable(reason::NOTIFICATION_FAILED, message).retry_after(*delay),
            DeliveryError::Request(_)
            | DeliveryError::Unavailable { .. }
            | DeliveryError::Smtp(_) => {
                HandlerError::retryable(reason::NOTIFICATION_FAILED, message)
            }
            DeliveryError::Refused { .. }
            | DeliveryError::EmailBuild(_)
            | DeliveryError::SmtpRefused(_) => {
                HandlerError::permanent(reason::NOTIFICATION_FAILED, message)
            }
        },
    }
}
