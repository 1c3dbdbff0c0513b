//! Ferry's end-to-end scenarios, one module per scenario, in one test binary: each
//! scenario links every service, so one binary links them once instead of once per
//! scenario. Run it with `cargo nextest run -p ferry-e2e`; nextest runs every test in
//! its own process, so a test's global state (telemetry, environment) stays its own.

mod delivery;
mod deploy;
mod deploy_support;
mod encryption;
mod fleet;
mod latest;
mod mongo_consistency;
mod mongo_roundtrip;
mod nats_spool;
mod operations;
mod physical;
mod physical_failures;
mod pipeline;
mod pitr;
mod pitr_failures;
mod postgres_failures;
mod postgres_roundtrip;
mod storage;
mod uploader_replicas;
mod workers;
