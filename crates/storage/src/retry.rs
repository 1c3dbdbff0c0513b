//! Retries with exponential backoff and full jitter for store calls that failed in a
//! way another attempt may fix (throttling, 5xx, dropped connections).
//!
//! The jitter spreads many uploaders' retries out, so a store that answered 503 to
//! all of them at once is not hit by all of them again at once.

use std::future::Future;
use std::time::Duration;

use rand::Rng;

use crate::StorageError;

/// How often and how patiently to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in total, the first included (at least 1).
    pub attempts: u32,
    /// Upper bound of the first delay; doubles per attempt.
    pub base: Duration,
    /// Upper bound of any delay.
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 8,
            base: Duration::from_millis(200),
            max: Duration::from_secs(20),
        }
    }
}

impl RetryPolicy {
    /// The delay before attempt `attempt + 1` after `attempt` failed: uniformly
    /// random below the exponential bound ("full jitter").
    pub fn delay(&self, attempt: u32) -> Duration {
        let bound = self
            .base
            .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1).min(20)))
            .min(self.max);
        let nanos = bound.as_nanos().min(u64::MAX as u128) as u64;
        Duration::from_nanos(rand::rng().random_range(0..=nanos))
    }

    /// Runs `op` until it succeeds, fails permanently, or attempts run out; the
    /// last error is returned. `what` names the call in the log lines.
    pub async fn run<T, F, Fut>(&self, what: &str, mut op: F) -> Result<T, StorageError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StorageError>>,
    {
        let mut attempt = 1;
        loop {
            match op().await {
                Ok(value) => return Ok(value),
                Err(err) if err.is_retryable() && attempt < self.attempts.max(1) => {
                    let delay = self.delay(attempt);
                    tracing::warn!(call = what, attempt, error = %err, retry_in = ?delay, "store call failed; retrying");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                Err(err) => return Err(err),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_stay_under_the_exponential_bound() {
        let p = RetryPolicy {
            attempts: 5,
            base: Duration::from_millis(100),
            max: Duration::from_millis(350),
        };
        for _ in 0..100 {
            assert!(p.delay(1) <= Duration::from_millis(100));
            assert!(p.delay(2) <= Duration::from_millis(200));
            assert!(p.delay(3) <= Duration::from_millis(350));
            assert!(p.delay(30) <= Duration::from_millis(350));
        }
    }

    #[tokio::test]
    async fn retryable_errors_are_retried_and_permanent_ones_are_not() {
        let p = RetryPolicy {
            attempts: 4,
            base: Duration::from_millis(1),
            max: Duration::from_millis(2),
        };
        let backend = |retryable| StorageError::Backend {
            op: "put",
            key: "k".into(),
            message: "x".into(),
            retryable,
        };
        let mut calls = 0;
        let out = p
            .run("t", || {
                calls += 1;
                let n = calls;
                async move { if n < 3 { Err(backend(true)) } else { Ok(n) } }
            })
            .await;
        assert_eq!(out.unwrap(), 3);
        let mut calls = 0;
        let out: Result<(), _> = p
            .run("t", || {
                calls += 1;
                async { Err(backend(false)) }
            })
            .await;
        assert!(out.is_err());
        assert_eq!(calls, 1);
        let mut calls = 0;
        let out: Result<(), _> = p
            .run("t", || {
                calls += 1;
                async { Err(backend(true)) }
            })
            .await;
        assert!(out.is_err());
        assert_eq!(calls, 4, "gives up after the attempts");
    }
}
