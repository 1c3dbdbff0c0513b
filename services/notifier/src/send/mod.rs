//! Delivery: one notification to one channel, laid out the way the channel expects,
//! with failures classified for the runner (retryable with the server's
//! `Retry-After`, or permanent).

mod chat;
mod email;
mod http;

use std::time::Duration;

use crate::config::{NotifyConfig, NotifyKind};
use ferry_runtime::secrets::{SecretSource, read_secret};
use secrecy::{ExposeSecret, SecretString};

use crate::errors::DeliveryError;
use crate::message::Notification;

pub use http::signature;

/// How a channel is reached.
pub enum Delivery {
    /// A Discord webhook.
    Discord {
        /// The webhook URL (it embeds a token).
        url: SecretString,
    },
    /// A Slack incoming webhook.
    Slack {
        /// The webhook URL (it embeds a token).
        url: SecretString,
    },
    /// A generic JSON webhook.
    Webhook {
        /// The URL.
        url: SecretString,
        /// The HMAC-SHA256 signing secret, when configured.
        secret: Option<SecretString>,
    },
    /// Email over SMTP.
    Email(email::Mailer),
}

impl Delivery {
    /// Resolves the channel's secrets and builds its transport; errors name the key.
    pub fn open(
        config: &NotifyConfig,
        index: usize,
        timeout: Duration,
    ) -> anyhow::Result<Delivery> {
        let url = || -> anyhow::Result<SecretString> {
            match (&config.url, &config.url_env) {
                (Some(url), _) => Ok(SecretString::from(url.clone())),
                (None, Some(var)) => read_secret(SecretSource::Env(var))
                    .map_err(|e| anyhow::anyhow!("notify[{index}].url_env: {e}")),
                (None, None) => anyhow::bail!("notify[{index}]: set url or url_env"),
            }
        };
        Ok(match config.kind {
            NotifyKind::Discord => Delivery::Discord { url: url()? },
            NotifyKind::Slack => Delivery::Slack { url: url()? },
            NotifyKind::Webhook => Delivery::Webhook {
                url: url()?,
                secret: match (&config.secret_env, &config.secret_file) {
                    (Some(var), _) => Some(
                        read_secret(SecretSource::Env(var))
                            .map_err(|e| anyhow::anyhow!("notify[{index}].secret_env: {e}"))?,
                    ),
                    (None, Some(path)) => Some(
                        read_secret(SecretSource::File(path))
                            .map_err(|e| anyhow::anyhow!("notify[{index}].secret_file: {e}"))?,
                    ),
                    (None, None) => None,
                },
            },
            NotifyKind::Email => Delivery::Email(email::Mailer::open(config, index, timeout)?),
        })
    }

    /// Sends one notification.
    pub async fn send(
        &self,
        http: &reqwest::Client,
        n: &Notification,
    ) -> Result<(), DeliveryError> {
        match self {
            Delivery::Discord { url } => {
                http::post_json(http, url.expose_secret(), &chat::discord(n), None).await
            }
            Delivery::Slack { url } => {
                http::post_json(http, url.expose_secret(), &chat::slack(n), None).await
            }
            Delivery::Webhook { url, secret } => {
                http::post_json(
                    http,
                    url.expose_secret(),
                    &n.body,
                    secret.as_ref().map(|s| s.expose_secret()),
                )
                .await
            }
            Delivery::Email(mailer) => mailer.send(n).await,
        }
    }
}
