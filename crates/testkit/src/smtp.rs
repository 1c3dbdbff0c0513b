//! The SMTP sink `scripts/test-services up` runs: every message it receives is a
//! `.eml` file with a `.json` envelope beside it.

use std::path::PathBuf;

/// A message the sink received.
#[derive(Debug, Clone)]
pub struct ReceivedMail {
    /// The envelope (mail_from, rcpt_tos, auth_login, …).
    pub envelope: serde_json::Value,
    /// The raw message, headers and body.
    pub raw: String,
}

/// The SMTP sink's address and mail directory.
#[derive(Debug, Clone)]
pub struct SmtpSink {
    /// `host:port`.
    pub addr: String,
    /// Where the sink writes messages.
    pub dir: PathBuf,
}

impl SmtpSink {
    /// The sink named by `FERRY_TEST_SMTP_ADDR` and `FERRY_TEST_SMTP_DIR`.
    pub fn from_env() -> SmtpSink {
        let dir = std::env::var_os("FERRY_TEST_SMTP_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                let home = std::env::var_os("HOME")
                    .map(PathBuf::from)
                    .unwrap_or_default();
                home.join(".cache/ferry-test/smtp")
            });
        SmtpSink {
            addr: std::env::var("FERRY_TEST_SMTP_ADDR")
                .unwrap_or_else(|_| "127.0.0.1:52525".into()),
            dir,
        }
    }

    /// Every message with `recipient` among its envelope recipients, oldest first.
    /// Tests use a unique recipient, so they never see each other's mail.
    pub fn messages_to(&self, recipient: &str) -> Vec<ReceivedMail> {
        let mut names: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "json"))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
            .into_iter()
            .filter_map(|path| {
                let envelope: serde_json::Value =
                    serde_json::from_slice(&std::fs::read(&path).ok()?).ok()?;
                let to = envelope["rcpt_tos"].as_array()?;
                if !to.iter().any(|t| t.as_str() == Some(recipient)) {
                    return None;
                }
                let raw = std::fs::read_to_string(path.with_extension("eml")).ok()?;
                Some(ReceivedMail { envelope, raw })
            })
            .collect()
    }
}
