//! Ferry's test kit: reach the real services tests run against. Nothing here is a
//! mock: NATS is a real `nats-server` started per test on a free port, PostgreSQL is
//! the password-authenticated cluster `scripts/test-services up` starts, and HTTP
//! receivers are real servers on loopback.
//!
//! Addresses come from the `FERRY_TEST_*` variables that `scripts/test-services env`
//! prints, with the same defaults, so `cargo nextest run` works after `up` alone.

pub mod config;
pub mod http;
pub mod mongo;
pub mod nats;
pub mod pg_own;
pub mod postgres;
pub mod s3;
pub mod smtp;

use std::future::Future;
use std::time::Duration;

pub use config::{Source, TestConfig};
pub use http::{HttpReceiver, ReceivedRequest, Reply};
pub use mongo::{MongoServer, MongoStart};
pub use nats::{NatsLogin, NatsServer};
pub use pg_own::{OwnCluster, OwnRoot};
pub use postgres::{PgCluster, TestDatabase};
pub use s3::{FaultProxy, S3Server};
pub use smtp::{ReceivedMail, SmtpSink};

/// Polls `check` until it returns `Some`, or panics with `what` after `timeout`.
/// Tests wait for conditions, never for fixed sleeps.
pub async fn wait_until<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A name unique to this test run, for databases, buckets and sources.
pub fn unique_name(prefix: &str) -> String {
    use rand::Rng;
    let n: u32 = rand::rng().random();
    format!("{prefix}_{}_{n:08x}", std::process::id())
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}
