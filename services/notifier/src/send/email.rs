//! Email over SMTP with a plain-text and an HTML part.

use std::time::Duration;

use crate::config::NotifyConfig;
use ferry_runtime::secrets::{SecretSource, read_secret};
use lettre::message::{Mailbox, MultiPart, SinglePart, header::ContentType};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use secrecy::ExposeSecret;

use crate::errors::DeliveryError;
use crate::message::Notification;

/// An SMTP transport and the envelope of every message.
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    to: Vec<Mailbox>,
}

impl Mailer {
    /// Builds the transport: `smtps://` is implicit TLS; `smtp://` uses STARTTLS
    /// when the server offers it, `?tls=required` insists on it and `?tls=none`
    /// never tries (a local relay).
    pub fn open(config: &NotifyConfig, index: usize, timeout: Duration) -> anyhow::Result<Mailer> {
        let key = |field: &str| format!("notify[{index}].{field}");
        let raw = config
            .smtp_url
            .as_deref()
            .ok_or_else(|| anyhow::anyhow!("{}: missing", key("smtp_url")))?;
        let url = url::Url::parse(raw).map_err(|e| anyhow::anyhow!("{}: {e}", key("smtp_url")))?;
        let host = url
            .host_str()
            .ok_or_else(|| anyhow::anyhow!("{}: no host", key("smtp_url")))?
            .to_string();
        let tls_mode = url
            .query_pairs()
            .find(|(k, _)| k == "tls")
            .map(|(_, v)| v.to_string());
        let tls = |h: &str| {
            TlsParameters::new(h.to_string())
                .map_err(|e| anyhow::anyhow!("{}: {e}", key("smtp_url")))
        };
        let (port, tls) = match (url.scheme(), tls_mode.as_deref()) {
            ("smtps", _) => (465, Tls::Wrapper(tls(&host)?)),
            ("smtp", Some("required")) => (587, Tls::Required(tls(&host)?)),
            ("smtp", Some("none")) => (25, Tls::None),
            ("smtp", None | Some("opportunistic")) => (587, Tls::Opportunistic(tls(&host)?)),
            (scheme, mode) => anyhow::bail!(
                "{}: unsupported scheme {scheme} or tls={mode:?}",
                key("smtp_url")
            ),
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&host)
            .port(url.port().unwrap_or(port))
            .tls(tls)
            .timeout(Some(timeout));
        if let Some(user) = &config.username {
            let password = match (&config.password_env, &config.password_file) {
                (Some(var), _) => read_secret(SecretSource::Env(var))
                    .map_err(|e| anyhow::anyhow!("{}: {e}", key("password_env")))?,
                (None, Some(path)) => read_secret(SecretSource::File(path))
                    .map_err(|e| anyhow::anyhow!("{}: {e}", key("password_file")))?,
                (None, None) => anyhow::bail!(
                    "{}: set password_env or password_file for username {user}",
                    key("password_env")
                ),
            };
            builder = builder.credentials(Credentials::new(
                user.clone(),
                password.expose_secret().to_string(),
            ));
        }
        let from = config
            .from
            .as_deref()
            .unwrap_or_default()
            .parse()
            .map_err(|e| anyhow::anyhow!("{}: {e}", key("from")))?;
        let to = config
            .to
            .iter()
            .map(|t| {
                t.parse()
                    .map_err(|e| anyhow::anyhow!("{}: {t}: {e}", key("to")))
            })
            .collect::<anyhow::Result<Vec<Mailbox>>>()?;
        Ok(Mailer {
            transport: builder.build(),
            from,
            to,
        })
    }

    /// Sends one notification to every recipient.
    pub async fn send(&self, n: &Notification) -> Result<(), DeliveryError> {
        let mut message = Message::builder()
            .from(self.from.clone())
            .subject(format!("[ferry] {}", n.title));
        for to in &self.to {
            message = message.to(to.clone());
        }
        let message = message
            .multipart(
                MultiPart::alternative()
                    .singlepart(
                        SinglePart::builder()
                            .header(ContentType::TEXT_PLAIN)
                            .body(plain(n)),
                    )
                    .singlepart(
                        SinglePart::builder()
                            .header(ContentType::TEXT_HTML)
                            .body(html(n)),
                    ),
            )
            .map_err(DeliveryError::EmailBuild)?;
        match self.transport.send(message).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_permanent() => Err(DeliveryError::SmtpRefused(e)),
            Err(e) => Err(DeliveryError::Smtp(e)),
        }
    }
}

/// The plain-text body.
pub fn plain(n: &Notification) -> String {
    let mut out = format!("{}\n\n{}\n\n", n.title, n.text);
    let width = n.fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (name, value) in &n.fields {
        out.push_str(&format!("{name:<width$}  {value}\n"));
    }
    if let Some(link) = &n.link {
        out.push_str(&format!("\nTrace: {link}\n"));
    }
    out
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The HTML body.
pub fn html(n: &Notification) -> String {
    let rows: String = n
        .fields
        .iter()
        .map(|(k, v)| {
            format!(
                "<tr><th align=\"left\" style=\"padding-right:1em\">{}</th><td>{}</td></tr>",
                escape(k),
                escape(v)
            )
        })
        .collect();
    let link = n
        .link
        .as_ref()
        .map(|l| format!("<p><a href=\"{}\">Open the trace</a></p>", escape(l)))
        .unwrap_or_default();
    format!(
        "<html><body><h2>{}</h2><p>{}</p><table>{rows}</table>{link}</body></html>",
        escape(&n.title),
        escape(&n.text).replace('\n', "<br>")
    )
}
