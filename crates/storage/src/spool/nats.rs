//! The JetStream object store spool: dump files travel through NATS, so dumpers and
//! uploaders need no shared disk. Objects are named `<job_id>/<file name>`, and a
//! job's completion marker `<job_id>.completed`; NATS chunks them, so memory stays
//! bounded on both sides.

use std::path::Path;

use async_nats::jetstream::{self, object_store};
use async_trait::async_trait;
use futures::StreamExt;
use tokio::io::AsyncReadExt;

use super::{Spool, check_names};
use crate::Body;

/// A JetStream object store bucket as a spool.
#[derive(Clone)]
pub struct NatsSpool {
    store: object_store::ObjectStore,
    bucket: String,
}

impl std::fmt::Debug for NatsSpool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NatsSpool({})", self.bucket)
    }
}

/// The object that marks a job's dump as complete (outside the job's `<job_id>/`
/// prefix, so it is never taken for a file).
fn marker_name(job_id: &str) -> String {
    format!("{job_id}.completed")
}

fn io_err(what: &str, e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(format!("{what}: {e}"))
}

impl NatsSpool {
    /// Opens the bucket, creating it (file storage, `replicas` copies) if missing.
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
        Ok(NatsSpool {
            store,
            bucket: bucket.to_string(),
        })
    }

    /// The objects of `job_id`'s files, then its marker if it has one.
    async fn names_of(&self, job_id: &str) -> std::io::Result<Vec<String>> {
        let prefix = format!("{job_id}/");
        let marker = marker_name(job_id);
        let mut has_marker = false;
        let mut list = self
            .store
            .list()
            .await
            .map_err(|e| io_err("cannot list the spool bucket", e))?;
        let mut out = Vec::new();
        while let Some(info) = list.next().await {
            let info = info.map_err(|e| io_err("cannot list the spool bucket", e))?;
            if info.deleted {
                continue;
            }
            if info.name.starts_with(&prefix) {
                out.push(info.name);
            } else if info.name == marker {
                has_marker = true;
            }
        }
        if has_marker {
            out.push(marker);
        }
        Ok(out)
    }
}

#[async_trait]
impl Spool for NatsSpool {
    async fn put_file(&self, job_id: &str, name: &str, local: &Path) -> std::io::Result<()> {
        check_names(job_id, Some(name))?;
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

    async fn put_marker(&self, job_id: &str, summary: &[u8]) -> std::io::Result<()> {
        check_names(job_id, None)?;
        let object = marker_name(job_id);
        let mut reader = summary;
        self.store
            .put(object.as_str(), &mut reader)
            .await
            .map(|_| ())
            .map_err(|e| {
                io_err(
                    &format!("cannot store {object} in spool bucket {}", self.bucket),
                    e,
                )
            })
    }

    async fn marker(&self, job_id: &str) -> std::io::Result<Option<Vec<u8>>> {
        check_names(job_id, None)?;
        let object = marker_name(job_id);
        let mut reader = match self.store.get(object.as_str()).await {
            Ok(reader) => reader,
            Err(e) if e.kind() == object_store::GetErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(io_err(
                    &format!("cannot read {object} from spool bucket {}", self.bucket),
                    e,
                ));
            }
        };
        let mut bytes = Vec::new();
        reader.read_to_end(&mut bytes).await?;
        Ok(Some(bytes))
    }

    async fn remove_job(&self, job_id: &str) -> std::io::Result<()> {
        check_names(job_id, None)?;
        // Files first, the marker last: a job whose removal is interrupted still
        // says it was dumped.
        for name in self.names_of(job_id).await? {
            self.store
                .delete(name.as_str())
                .await
                .map_err(|e| io_err(&format!("cannot delete {name} from the spool bucket"), e))?;
        }
        Ok(())
    }

    fn describe(&self) -> String {
        format!("nats object store {}", self.bucket)
    }
}
