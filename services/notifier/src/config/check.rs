//! A channel's validation: which keys its kind takes, and whether their values work.

use ferry_runtime::config::ConfigProblem;
use ferry_runtime::schedule;

use super::{NotifyConfig, NotifyKind, NotifyOn, valid_token};

impl NotifyConfig {
    /// Every problem of this channel, keys prefixed `notify[index]`.
    pub(super) fn problems(&self, index: usize) -> Vec<ConfigProblem> {
        let mut out = Vec::new();
        let mut bad = |field: &str, value: &str, expected: &str| {
            out.push(ConfigProblem::new(
                format!("notify[{index}].{field}"),
                value,
                expected,
            ))
        };
        let kind = self.kind.name();
        if let Some(name) = &self.name
            && !valid_token(name)
        {
            bad("name", name, "1-64 characters of [a-z0-9_-]");
        }
        if self.on.is_empty() {
            bad(
                "on",
                "[]",
                "at least one of failed, succeeded, retention, digest",
            );
        }
        for pattern in &self.sources {
            if pattern.is_empty()
                || !pattern
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_-*?".contains(c))
            {
                bad(
                    "sources",
                    pattern,
                    "source names or patterns of [a-z0-9_-] with * and ?",
                );
            }
        }
        if self.on.contains(&NotifyOn::Digest) {
            if schedule::parse_cron(&self.digest_schedule).is_err() {
                bad(
                    "digest_schedule",
                    &self.digest_schedule,
                    "a cron expression, e.g. \"0 8 * * *\"",
                );
            }
            if schedule::parse_timezone(&self.digest_timezone).is_err() {
                bad(
                    "digest_timezone",
                    &self.digest_timezone,
                    "an IANA time zone name such as Europe/Berlin or UTC",
                );
            }
        }
        if self.repeat_every.is_zero() {
            bad("repeat_every", "0s", "a positive duration such as 6h");
        }
        let env_is_set = |var: &str| std::env::var(var).is_ok_and(|v| !v.is_empty());
        let is_http = matches!(
            self.kind,
            NotifyKind::Discord | NotifyKind::Slack | NotifyKind::Webhook
        );
        if is_http {
            match (&self.url, &self.url_env) {
                (Some(_), Some(var)) => bad("url_env", var, "either url or url_env, not both"),
                (None, None) => bad(
                    "url",
                    "",
                    "the URL (url) or the environment variable that holds it (url_env)",
                ),
                (Some(u), None)
                    if url::Url::parse(u)
                        .map(|u| !matches!(u.scheme(), "http" | "https"))
                        .unwrap_or(true) =>
                {
                    bad("url", u, "an http:// or https:// URL")
                }
                (None, Some(var)) if !env_is_set(var) => bad(
                    "url_env",
                    var,
                    "the name of an environment variable that is set (it holds the URL)",
                ),
                _ => {}
            }
        }
        if let Some(file) = &self.secret_file {
            let shown = file.display().to_string();
            if self.kind != NotifyKind::Webhook {
                bad(
                    "secret_file",
                    &shown,
                    &format!("no secret_file for kind = \"{kind}\" (only webhook signs)"),
                );
            } else if self.secret_env.is_some() {
                bad(
                    "secret_file",
                    &shown,
                    "either secret_env or secret_file, not both",
                );
            } else if !file.is_file() {
                bad(
                    "secret_file",
                    &shown,
                    "a readable file holding the signing secret",
                );
            }
        }
        if let Some(var) = &self.secret_env {
            if self.kind != NotifyKind::Webhook {
                bad(
                    "secret_env",
                    var,
                    &format!("no secret_env for kind = \"{kind}\" (only webhook signs)"),
                );
            } else if !env_is_set(var) {
                bad(
                    "secret_env",
                    var,
                    "the name of an environment variable that is set (it holds the signing secret)",
                );
            }
        }
        if self.kind == NotifyKind::Email {
            match &self.smtp_url {
                None => bad("smtp_url", "", "smtp://host:587 or smtps://host:465"),
                Some(u) => match url::Url::parse(u) {
                    Ok(parsed)
                        if matches!(parsed.scheme(), "smtp" | "smtps")
                            && parsed.host_str().is_some() =>
                    {
                        if parsed.password().is_some() {
                            bad(
                                "smtp_url",
                                "(a URL with a password, not shown)",
                                "a URL without a password: use username and password_env",
                            );
                        }
                    }
                    _ => bad("smtp_url", u, "smtp://host:587 or smtps://host:465"),
                },
            }
            match &self.from {
                Some(from) if from.parse::<EmailAddress>().is_ok() => {}
                other => bad(
                    "from",
                    other.as_deref().unwrap_or(""),
                    "a sender address such as ferry@example.com",
                ),
            }
            if self.to.is_empty() {
                bad("to", "[]", "at least one recipient address");
            }
            for to in &self.to {
                if to.parse::<EmailAddress>().is_err() {
                    bad("to", to, "email addresses such as oncall@example.com");
                }
            }
            if let Some(var) = &self.password_env
                && !env_is_set(var)
            {
                bad(
                    "password_env",
                    var,
                    "the name of an environment variable that is set (it holds the SMTP password)",
                );
            }
            if let Some(file) = &self.password_file {
                let shown = file.display().to_string();
                if self.password_env.is_some() {
                    bad(
                        "password_file",
                        &shown,
                        "either password_env or password_file, not both",
                    );
                } else if !file.is_file() {
                    bad(
                        "password_file",
                        &shown,
                        "a readable file holding the SMTP password",
                    );
                }
            }
            if (self.password_env.is_some() || self.password_file.is_some())
                && self.username.is_none()
            {
                bad(
                    "username",
                    "",
                    "the SMTP user name that goes with the password",
                );
            }
            if self.username.is_some()
                && self.password_env.is_none()
                && self.password_file.is_none()
            {
                bad(
                    "password_env",
                    "",
                    "password_env or password_file for the SMTP user name",
                );
            }
            for (field, value) in [("url", &self.url), ("url_env", &self.url_env)] {
                if let Some(v) = value {
                    bad(field, v, "no URL for kind = \"email\": use smtp_url");
                }
            }
        } else {
            let email_only = [
                ("smtp_url", self.smtp_url.clone()),
                ("username", self.username.clone()),
                ("password_env", self.password_env.clone()),
                (
                    "password_file",
                    self.password_file.as_ref().map(|p| p.display().to_string()),
                ),
                ("from", self.from.clone()),
                ("to", (!self.to.is_empty()).then(|| self.to.join(","))),
            ];
            for (field, value) in email_only {
                if let Some(v) = value {
                    bad(
                        field,
                        &v,
                        &format!("no {field} for kind = \"{kind}\" (email only)"),
                    );
                }
            }
        }
        out
    }
}

/// A minimal address check: `local@domain.tld`; the SMTP server has the last word.
struct EmailAddress;

impl std::str::FromStr for EmailAddress {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        let (local, domain) = s.rsplit_once('@').ok_or(())?;
        let ok = !local.is_empty()
            && domain.contains('.')
            && !domain.starts_with('.')
            && !domain.ends_with('.')
            && !s.chars().any(|c| c.is_whitespace() || c == '<' || c == '>');
        ok.then_some(EmailAddress).ok_or(())
    }
}
