//! `[[notify]]` channels and `[notifier]` settings: the notifier's two sections, their
//! defaults and their validation.

use std::collections::HashSet;
use std::time::Duration;

use ferry_runtime::Config;
use ferry_runtime::config::{ConfigProblem, Section};
use serde::{Deserialize, Serialize};

mod check;

/// What a channel can be told about.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum NotifyOn {
    /// A stage failed a job for good (repeats collapse; a recovery message follows).
    Failed,
    /// A backup was stored.
    Succeeded,
    /// Retention ran.
    Retention,
    /// A scheduled summary.
    Digest,
}

/// How much a notification matters; a channel's `min_severity` filters on it.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Successes, retention, digests, recoveries.
    Info,
    /// Rejected requests: an operator's mistake, no backup was attempted.
    Warning,
    /// A backup failed.
    Error,
}

impl Severity {
    /// The lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Error => "error",
        }
    }
}

/// The kind of channel.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum NotifyKind {
    /// A Discord webhook.
    Discord,
    /// A Slack incoming webhook.
    Slack,
    /// A generic JSON webhook, optionally signed.
    Webhook,
    /// Email over SMTP.
    Email,
}

impl NotifyKind {
    /// The lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            NotifyKind::Discord => "discord",
            NotifyKind::Slack => "slack",
            NotifyKind::Webhook => "webhook",
            NotifyKind::Email => "email",
        }
    }
}

/// `[[notify]]`: one channel. Which keys apply depends on `kind`; validation refuses
/// a key that does not belong to the channel's kind.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyConfig {
    /// The channel kind.
    pub kind: NotifyKind,
    /// A name for logs, metrics and the consumer (default `<kind>-<index>`),
    /// `[a-z0-9_-]`.
    pub name: Option<String>,
    /// Which notifications to send (default: failed).
    #[serde(default = "default_notify_on")]
    pub on: Vec<NotifyOn>,
    /// Only these sources: names or patterns with `*` and `?` (default: all).
    #[serde(default)]
    pub sources: Vec<String>,
    /// Drop notifications below this severity (default: info, everything).
    #[serde(default = "default_min_severity")]
    pub min_severity: Severity,
    /// While a source keeps failing, repeat the alert (with the count) at most this
    /// often; every other failure is collapsed into it.
    #[serde(default = "default_repeat_every", with = "humantime_serde")]
    pub repeat_every: Duration,
    /// Cron expression of the digest (default: daily at 08:00).
    #[serde(default = "default_digest_schedule")]
    pub digest_schedule: String,
    /// Time zone of the digest schedule.
    #[serde(default = "default_timezone")]
    pub digest_timezone: String,

    /// webhook, discord, slack: the URL when it is not a secret.
    pub url: Option<String>,
    /// webhook, discord, slack: the environment variable holding the URL.
    pub url_env: Option<String>,
    /// webhook: the environment variable holding the HMAC-SHA256 signing secret.
    pub secret_env: Option<String>,
    /// webhook: the file holding the signing secret (a mounted secret).
    pub secret_file: Option<std::path::PathBuf>,

    /// email: `smtp://host:587` (STARTTLS when offered; `?tls=required` to insist),
    /// `smtps://host:465` (implicit TLS).
    pub smtp_url: Option<String>,
    /// email: the SMTP user name.
    pub username: Option<String>,
    /// email: the environment variable holding the SMTP password.
    pub password_env: Option<String>,
    /// email: the file holding the SMTP password (a mounted secret).
    pub password_file: Option<std::path::PathBuf>,
    /// email: the sender address.
    pub from: Option<String>,
    /// email: the recipients.
    #[serde(default)]
    pub to: Vec<String>,
}

fn default_notify_on() -> Vec<NotifyOn> {
    vec![NotifyOn::Failed]
}

fn default_min_severity() -> Severity {
    Severity::Info
}

fn default_repeat_every() -> Duration {
    Duration::from_secs(6 * 3600)
}

fn default_digest_schedule() -> String {
    "0 8 * * *".into()
}

fn default_timezone() -> String {
    "UTC".into()
}

impl NotifyConfig {
    /// The channel's name: configured, or `<kind>-<index>`.
    pub fn name_or_default(&self, index: usize) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("{}-{index}", self.kind.name()))
    }
}

/// `[notifier]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotifierConfig {
    /// A link to a job's trace: `{trace_id}` is replaced, e.g.
    /// `https://jaeger.example.com/trace/{trace_id}`.
    pub trace_url: Option<String>,
    /// How long one delivery attempt may take.
    #[serde(with = "humantime_serde")]
    pub http_timeout: Duration,
    /// Delivery attempts per notification before the channel's failure is logged,
    /// counted and the notification dropped.
    pub max_attempts: u32,
}

impl Default for NotifierConfig {
    fn default() -> Self {
        NotifierConfig {
            trace_url: None,
            http_timeout: Duration::from_secs(10),
            max_attempts: 8,
        }
    }
}

/// `[[notify]]`: every channel, in file order (none by default).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(transparent)]
pub struct NotifyChannels(pub Vec<NotifyConfig>);

impl Section for NotifyChannels {
    const NAME: &'static str = "notify";

    fn validate(&self, _: &Config) -> Vec<ConfigProblem> {
        let mut problems = Vec::new();
        let mut names = HashSet::new();
        for (i, n) in self.0.iter().enumerate() {
            problems.extend(n.problems(i));
            let name = n.name_or_default(i);
            if !names.insert(name.clone()) {
                problems.push(ConfigProblem::new(
                    format!("notify[{i}].name"),
                    name,
                    "a name no other channel has",
                ));
            }
        }
        problems
    }
}

impl Section for NotifierConfig {
    const NAME: &'static str = "notifier";

    fn validate(&self, _: &Config) -> Vec<ConfigProblem> {
        let mut problems = Vec::new();
        if let Some(template) = &self.trace_url
            && !template.contains("{trace_id}")
        {
            problems.push(ConfigProblem::new(
                "notifier.trace_url",
                template.clone(),
                "a URL template containing {trace_id}",
            ));
        }
        if self.max_attempts == 0 {
            problems.push(ConfigProblem::new(
                "notifier.max_attempts",
                "0",
                "at least 1",
            ));
        }
        problems
    }
}

/// Whether `name` is a valid name token: 1-64 characters of `[a-z0-9_-]`.
fn valid_token(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

#[cfg(test)]
mod tests {
    use ferry_runtime::config::SectionSpec;

    use super::*;

    const SECTIONS: [SectionSpec; 2] = [
        SectionSpec::of::<NotifyChannels>(),
        SectionSpec::of::<NotifierConfig>(),
    ];

    #[test]
    fn channels_parse_with_their_defaults() {
        let config = Config::from_toml_with(
            r#"
[[notify]]
kind = "webhook"
url = "https://hooks.example.com/ferry"
on = ["failed", "succeeded"]

[[notify]]
kind = "slack"
name = "ops"
url = "https://hooks.slack.example/x"

[notifier]
trace_url = "https://jaeger.example.com/trace/{trace_id}"
"#,
            &SECTIONS,
        )
        .unwrap();
        let channels = config.section::<NotifyChannels>().unwrap();
        assert_eq!(channels.0.len(), 2);
        assert_eq!(channels.0[0].name_or_default(0), "webhook-0");
        assert_eq!(channels.0[0].on, [NotifyOn::Failed, NotifyOn::Succeeded]);
        assert_eq!(channels.0[1].name_or_default(1), "ops");
        assert_eq!(channels.0[1].on, [NotifyOn::Failed]);
        assert_eq!(channels.0[1].repeat_every, Duration::from_secs(6 * 3600));
        let notifier = config.section::<NotifierConfig>().unwrap();
        assert_eq!(notifier.max_attempts, 8);
        assert_eq!(notifier.http_timeout, Duration::from_secs(10));
    }

    #[test]
    fn notifier_problems_name_their_keys() {
        let err = Config::from_toml_with(
            r#"
[[notify]]
kind = "webhook"
name = "a"
url = "https://x.example"

[[notify]]
kind = "discord"
name = "a"
url = "https://y.example"

[notifier]
trace_url = "https://jaeger.example.com/trace/"
max_attempts = 0
"#,
            &SECTIONS,
        )
        .unwrap_err();
        let keys: Vec<&str> = err.problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "notify[1].name",
                "notifier.trace_url",
                "notifier.max_attempts"
            ]
        );
    }
}
