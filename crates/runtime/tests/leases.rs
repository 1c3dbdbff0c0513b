//! `[leases] ttl`, and its older name `dumper.lease_ttl`, set the lease bucket's max
//! age on a real NATS.

use std::time::Duration;

use ferry_proto::subjects;
use ferry_runtime::{Config, Runtime};
use ferry_testkit::NatsServer;

async fn lease_bucket_max_age(section: &str) -> Duration {
    let nats = NatsServer::start().await;
    let config = Config::from_toml(&format!("[nats]\nurl = \"{}\"\n{section}", nats.url()))
        .unwrap_or_else(|e| panic!("{e}"));
    let rt = Runtime::with_client(config, nats.client().await)
        .await
        .unwrap();
    let locks = rt
        .jetstream
        .get_key_value(subjects::LOCKS_BUCKET)
        .await
        .unwrap();
    let status = locks.status().await.unwrap();
    assert_eq!(rt.config.leases.ttl, status.max_age());
    status.max_age()
}

#[tokio::test]
async fn leases_ttl_sets_the_lease_buckets_max_age() {
    let age = lease_bucket_max_age("[leases]\nttl = \"90s\"\n").await;
    assert_eq!(age, Duration::from_secs(90));
}

#[tokio::test]
async fn the_older_dumper_lease_ttl_still_sets_it() {
    // A worker that never reads `[dumper]` (retention) still takes the older name.
    let age = lease_bucket_max_age("[dumper]\nlease_ttl = \"45s\"\n").await;
    assert_eq!(age, Duration::from_secs(45));
}

#[tokio::test]
async fn without_either_the_lease_ttl_is_a_minute() {
    let age = lease_bucket_max_age("").await;
    assert_eq!(age, Duration::from_secs(60));
}
