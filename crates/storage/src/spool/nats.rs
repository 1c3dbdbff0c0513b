//! The JetStream object store spool: dump files travel through NATS, so dumpers and
//! uploaders need no shared disk. Objects are named `<job_id>/<file name>`; NATS
//! chunks them, so memory stays bounded on both sides.
//!
//! Beside the bucket, a key-value bucket `<bucket>_index` holds one key per spooled
//! file, `<job_id>.<file name in base64url>`, written before the object: removing
//! a job reads exactly its keys (a server-side subject filter) instead of listing
//! every object in the bucket, and a crash between the two writes leaves an index
//! entry with no object, which removal skips, never an object nobody can find.

use std::path::Path;

use async_nats::jetstream::{self, kv, object_store};
use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::index::keys_under;
use super::{Spool, check_names};
use crate::Body;

/// A JetStream object store bucket as a spool.
#[derive(Clone)]
pub struct NatsSpool {
    store: object_store::ObjectStore,
    index: kv::Store,
    bucket: String,
}

impl std::fmt::Debug for NatsSpool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NatsSpool({})", self.bucket)
    }
}

fn io_err(what: &str, e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(format!("{what}: {e}"))
}

/// The index key of one file of a job.
fn index_key(job_id: &str, name: &str) -> String {
    format!("{job_id}.{}", URL_SAFE_NO_PAD.encode(name))
}

/// The name of the index bucket that goes with spool bucket `bucket`.
pub fn index_bucket(bucket: &str) -> String {
    format!("{bucket}_index")
}

impl NatsSpool {
    /// Opens the bucket and its index, creating them (file storage, `replicas`
    /// copies) if missing.
    pub async fn open(
        js: &jetstream::Context,
        bucket: &str,
        replicas: usize,
    ) -> std::io::Result<NatsSpool> {
        let store = match js.get_object_store(bucket).await {
            Ok(store) => store,
            Err(_) => js
                .create_object_store(object_store::Config {
                    bucket: bucket.to_string(),
                    description: Some("Ferry spool: dump files waiting for the uploader".into()),
                    num_replicas: replicas.max(1),
                    storage: jetstream::stream::StorageType::File,
                    ..Default::default()
                })
                .await
                .map_err(|e| io_err(&format!("cannot create the spool bucket {bucket}"), e))?,
        };
        let index_name = index_bucket(bucket);
        let index = match js.get_key_value(&index_name).await {
            Ok(index) => index,
            Err(_) => js
                .create_key_value(kv::Config {
                    bucket: index_name.clone(),
                    description: format!("Ferry spool index: the files of each job in {bucket}"),
                    history: 1,
                    num_replicas: replicas.max(1),
                    storage: jetstream::stream::StorageType::File,
                    ..Default::default()
                })
                .await
                .map_err(|e| {
                    io_err(
                        &format!("cannot create the spool index bucket {index_name}"),
                        e,
                    )
                })?,
        };
        Ok(NatsSpool {
            store,
            index,
            bucket: bucket.to_string(),
        })
    }

    /// The names of `job_id`'s files, from the index.
    async fn names_of(&self, job_id: &str) -> std::io::Result<Vec<(String, String)>> {
        let keys = keys_under(&self.index, &format!("{job_id}."))
            .await
            .map_err(std::io::Error::other)?;
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            let encoded = key.rsplit('.').next().unwrap_or_default();
            let name = URL_SAFE_NO_PAD
                .decode(encoded)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| {
                    io_err(
                        &format!("spool index {} has a damaged key", self.index.name),
                        &key,
                    )
                })?;
            out.push((key, name));
        }
        Ok(out)
    }
}

#[async_trait]
impl Spool for NatsSpool {
    async fn put_file(&self, job_id: &str, name: &str, local: &Path) -> std::io::Result<()> {
        check_names(job_id, Some(name))?;
        let key = index_key(job_id, name);
        self.index
            .put(key.as_str(), bytes::Bytes::new())
            .await
            .map_err(|e| {
                io_err(
                    &format!("cannot index {job_id}/{name} in {}", self.index.name),
                    e,
                )
            })?;
        let mut file =
            tokio::io::BufReader::with_capacity(256 * 1024, tokio::fs::File::open(local).await?);
        let object = format!("{job_id}/{name}");
        self.store
            .put(object.as_str(), &mut file)
            .await
            .map_err(|e| {
                io_err(
                    &format!("cannot store {object} in spool bucket {}", self.bucket),
                    e,
                )
            })?;
        tokio::fs::remove_file(local).await
    }

    async fn open(&self, job_id: &str, name: &str) -> std::io::Result<Body> {
        check_names(job_id, Some(name))?;
        let object = format!("{job_id}/{name}");
        match self.store.get(object.as_str()).await {
            Ok(reader) => Ok(Box::new(reader)),
            Err(e) if e.kind() == object_store::GetErrorKind::NotFound => Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{object} is not in spool bucket {}", self.bucket),
            )),
            Err(e) => Err(io_err(
                &format!("cannot read {object} from spool bucket {}", self.bucket),
                e,
            )),
        }
    }

    async fn has_file(&self, job_id: &str, name: &str) -> std::io::Result<bool> {
        check_names(job_id, Some(name))?;
        let object = format!("{job_id}/{name}");
        // The object's last metadata record: a direct lookup, not a bucket listing.
        match self.store.info(object.as_str()).await {
            Ok(info) => Ok(!info.deleted),
            Err(e) if e.kind() == object_store::InfoErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_err(
                &format!("cannot look up {object} in spool bucket {}", self.bucket),
                e,
            )),
        }
    }

    async fn remove_job(&self, job_id: &str) -> std::io::Result<()> {
        check_names(job_id, None)?;
        // Each object before its index key: an interrupted removal is finished by
        // the next one, which still finds the key.
        for (key, name) in self.names_of(job_id).await? {
            let object = format!("{job_id}/{name}");
            match self.store.delete(object.as_str()).await {
                Ok(()) => {}
                Err(e) if e.kind() == object_store::DeleteErrorKind::NotFound => {}
                Err(e) => {
                    return Err(io_err(
                        &format!("cannot delete {object} from spool bucket {}", self.bucket),
                        e,
                    ));
                }
            }
            self.index.purge(key.as_str()).await.map_err(|e| {
                io_err(
                    &format!("cannot remove {key} from spool index {}", self.index.name),
                    e,
                )
            })?;
        }
        Ok(())
    }

    fn node_local(&self) -> bool {
        false
    }

    fn describe(&self) -> String {
        format!("nats object store {}", self.bucket)
    }
}
