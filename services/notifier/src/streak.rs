//! Failure streaks: per channel and source, how many failures since when, kept in
//! JetStream KV so every notifier replica sees the same streak.

use crate::errors::StateError;
use async_nats::jetstream::kv;
use chrono::{DateTime, Utc};
use ferry_proto::subjects;
use serde::{Deserialize, Serialize};

/// A source that keeps failing, as one channel sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Streak {
    /// Failures so far.
    pub failures: u32,
    /// When the first one happened.
    pub since: DateTime<Utc>,
    /// When the channel was last told.
    pub last_sent: DateTime<Utc>,
    /// The latest failure's reason.
    pub last_reason: String,
}

/// The streaks of one channel.
pub struct Streaks {
    kv: kv::Store,
    channel: String,
}

impl Streaks {
    /// The streaks of `channel`.
    pub fn new(kv: kv::Store, channel: &str) -> Self {
        Streaks {
            kv,
            channel: channel.to_string(),
        }
    }

    fn key(&self, source: &str) -> String {
        format!("{}.{}", self.channel, subjects::source_token(source))
    }

    /// The source's streak, if it is failing.
    pub async fn get(&self, source: &str) -> Result<Option<Streak>, StateError> {
        let key = self.key(source);
        match self.kv.get(key.clone()).await {
            Ok(Some(bytes)) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| StateError::Decode { key, source }),
            Ok(None) => Ok(None),
            Err(source) => Err(StateError::Read { key, source }),
        }
    }

    /// Records the source's streak.
    pub async fn put(&self, source: &str, streak: &Streak) -> Result<(), StateError> {
        let key = self.key(source);
        let value = serde_json::to_vec(streak).expect("a streak serialises");
        self.kv
            .put(&key, value.into())
            .await
            .map_err(|source| StateError::Write { key, source })?;
        Ok(())
    }

    /// Ends the source's streak (it recovered).
    pub async fn clear(&self, source: &str) -> Result<(), StateError> {
        let key = self.key(source);
        self.kv
            .purge(&key)
            .await
            .map_err(|source| StateError::Purge { key, source })
    }
}

/// A one-failure streak for a notification outside any streak.
pub fn single(reason: &str) -> Streak {
    let now = Utc::now();
    Streak {
        failures: 1,
        since: now,
        last_sent: now,
        last_reason: reason.to_string(),
    }
}

/// The streak after one more failure at `now`, and whether to tell the channel:
/// the first failure always, then at most once per `repeat_every`.
pub fn after_failure(
    current: Option<Streak>,
    reason: &str,
    now: DateTime<Utc>,
    repeat_every: std::time::Duration,
) -> (Streak, bool) {
    match current {
        None => (
            Streak {
                failures: 1,
                since: now,
                last_sent: now,
                last_reason: reason.to_string(),
            },
            true,
        ),
        Some(mut s) => {
            s.failures += 1;
            s.last_reason = reason.to_string();
            let due = (now - s.last_sent)
                .to_std()
                .map(|d| d >= repeat_every)
                .unwrap_or(false);
            if due {
                s.last_sent = now;
            }
            (s, due)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn failures_collapse_until_the_repeat_interval() {
        let t0: DateTime<Utc> = "2026-11-21T02:00:00Z".parse().unwrap();
        let every = Duration::from_secs(6 * 3600);
        let (s1, send1) = after_failure(None, "auth_failed", t0, every);
        assert!(send1);
        assert_eq!(s1.failures, 1);
        let (s2, send2) = after_failure(
            Some(s1),
            "auth_failed",
            t0 + chrono::Duration::hours(1),
            every,
        );
        assert!(!send2, "collapsed");
        let (s3, send3) =
            after_failure(Some(s2), "timeout", t0 + chrono::Duration::hours(6), every);
        assert!(send3, "a reminder after repeat_every");
        assert_eq!(
            (s3.failures, s3.since, s3.last_reason.as_str()),
            (3, t0, "timeout")
        );
        assert_eq!(s3.last_sent, t0 + chrono::Duration::hours(6));
    }
}
