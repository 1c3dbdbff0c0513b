//! Opening the configured object store and spool.

use std::sync::Arc;
use std::time::Duration;

use ferry_storage::spool::{DirSpool, NatsSpool, Spool};
use ferry_storage::{FsStore, ObjectStore, RequestChecksum, S3Credentials, S3Options, S3Store};
use secrecy::ExposeSecret;

use crate::config::{RequestChecksumConfig, SpoolConfig, SpoolKind, StorageConfig, StorageKind};
use crate::secrets::{SecretSource, read_secret};

/// Opens the store named by `[storage]`. No request is made yet: a wrong bucket or
/// key shows up as a storage error on first use, naming the bucket.
pub fn open(config: &StorageConfig) -> anyhow::Result<Arc<dyn ObjectStore>> {
    match config.kind {
        StorageKind::Fs => {
            let store = FsStore::new(&config.path, &config.prefix).map_err(|e| {
                anyhow::anyhow!(
                    "failed to open the store directory {} (storage.path): {e}",
                    config.path.display()
                )
            })?;
            Ok(Arc::new(store))
        }
        StorageKind::S3 => Ok(Arc::new(S3Store::new(s3_options(config)?))),
    }
}

/// For a writer that does not encrypt yet (MongoDB change capture, WAL archiving):
/// refused when `[encryption]` is on, and refused by a store that is encrypted, so
/// that nothing reaches an encrypted store in plaintext. `what` names the writer.
pub async fn check_plaintext_writer(
    config: &crate::Config,
    store: &dyn ObjectStore,
    what: &str,
) -> anyhow::Result<()> {
    if config.encryption.enabled() {
        anyhow::bail!(
            "{what} does not encrypt yet, and [encryption] is on: it refuses to write plaintext into {}; turn it off for this store or keep encryption off",
            store.describe()
        );
    }
    let retry = ferry_storage::retry::RetryPolicy::default();
    ferry_storage::encryption::check_store(store, None, &retry).await?;
    Ok(())
}

/// The S3 options of `[storage]`, with the credentials read from their variables or
/// files (named in errors, never printed).
pub fn s3_options(config: &StorageConfig) -> anyhow::Result<S3Options> {
    let secret = |env: &Option<String>, file: &Option<std::path::PathBuf>, key: &str| {
        let source = match (env, file) {
            (Some(var), _) => SecretSource::Env(var),
            (None, Some(path)) => SecretSource::File(path),
            (None, None) => return Ok(None),
        };
        read_secret(source)
            .map(|s| Some(s.expose_secret().to_string()))
            .map_err(|e| anyhow::anyhow!("storage.{key}: {e}"))
    };
    let id = secret(
        &config.access_key_id_env,
        &config.access_key_id_file,
        "access_key_id_env/_file",
    )?;
    let key = secret(
        &config.secret_access_key_env,
        &config.secret_access_key_file,
        "secret_access_key_env/_file",
    )?;
    let credentials = match (id, key) {
        (Some(access_key_id), Some(secret_access_key)) => S3Credentials::Static {
            access_key_id,
            secret_access_key,
        },
        _ => S3Credentials::DefaultChain,
    };
    let request_checksum = match config.request_checksum {
        Some(RequestChecksumConfig::WhenSupported) => RequestChecksum::WhenSupported,
        Some(RequestChecksumConfig::WhenRequired) => RequestChecksum::WhenRequired,
        // AWS takes the SDK's checksums; compatible stores often reject them.
        None if config.endpoint.is_none() => RequestChecksum::WhenSupported,
        None => RequestChecksum::WhenRequired,
    };
    Ok(S3Options {
        bucket: config
            .bucket
            .clone()
            .ok_or_else(|| anyhow::anyhow!("storage.bucket is not set"))?,
        prefix: config.prefix.clone(),
        endpoint: config.endpoint.clone(),
        region: config.region.clone(),
        force_path_style: config.force_path_style,
        credentials,
        request_checksum,
        max_attempts: config.max_attempts,
        connect_timeout: Duration::from_secs(10),
    })
}

/// Opens the spool named by `[spool]`.
pub async fn open_spool(
    config: &SpoolConfig,
    jetstream: &async_nats::jetstream::Context,
    replicas: usize,
) -> anyhow::Result<Arc<dyn Spool>> {
    match config.kind {
        SpoolKind::Dir => {
            let spool = DirSpool::new(&config.path).map_err(|e| {
                anyhow::anyhow!(
                    "failed to open the spool {} (spool.path): {e}",
                    config.path.display()
                )
            })?;
            Ok(Arc::new(spool))
        }
        SpoolKind::Nats => {
            let spool = NatsSpool::open(jetstream, &config.bucket, replicas)
                .await
                .map_err(|e| anyhow::anyhow!("spool.bucket = {:?}: {e}", config.bucket))?;
            Ok(Arc::new(spool))
        }
    }
}
