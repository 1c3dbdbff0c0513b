//! The S3 store: AWS S3 and every S3-compatible service (Backblaze B2, MinIO,
//! Garage, Cloudflare R2, …) through `aws-sdk-s3`.
//!
//! Every body Ferry sends is in memory as `Bytes` (one part or one small object at a
//! time), so each request carries a Content-MD5 the store checks on arrival and the
//! SDK can replay it on retry. The SDK's own "flexible" checksums (CRC32 trailers)
//! are sent only when configured (`request_checksum`), because several compatible
//! stores reject them.

use std::ops::Range;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
    retry::RetryConfig, timeout::TimeoutConfig,
};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, Delete, ObjectIdentifier};
use base64::Engine as _;
use bytes::Bytes;
use tokio::io::AsyncReadExt;

use crate::s3_error::map;
use futures::{StreamExt, TryStreamExt};

use crate::{
    Body, LIST_PAGE, ListPages, ObjectMeta, ObjectStore, PartReceipt, PendingUpload, StorageError,
    check_key, content_md5,
};

/// Part size of [`ObjectStore::put`] when a streamed body is too large for one
/// request; the uploader sizes its own parts.
const STREAM_PART: usize = 8 * 1024 * 1024;

/// When the SDK adds its own request checksums.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestChecksum {
    /// On every request that supports them (the SDK's default; AWS S3).
    WhenSupported,
    /// Only where the S3 API requires one (B2, R2, older MinIO, Garage…): Ferry's
    /// Content-MD5 still protects every body.
    WhenRequired,
}

/// Where the S3 credentials come from.
#[derive(Clone)]
pub enum S3Credentials {
    /// An access key read from the configured variables or files.
    Static {
        /// The access key id.
        access_key_id: String,
        /// The secret access key.
        secret_access_key: String,
    },
    /// The standard AWS chain: environment, profile, web identity, ECS, EC2 IMDS.
    DefaultChain,
}

impl std::fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secret never reaches a log line.
        match self {
            S3Credentials::Static { access_key_id, .. } => {
                write!(f, "Static({access_key_id}, <secret>)")
            }
            S3Credentials::DefaultChain => write!(f, "DefaultChain"),
        }
    }
}

/// Everything needed to reach a bucket.
#[derive(Debug, Clone)]
pub struct S3Options {
    /// The bucket.
    pub bucket: String,
    /// Key prefix under which everything is kept (`""` for the bucket's root).
    pub prefix: String,
    /// Endpoint URL of a non-AWS store; `None` for AWS.
    pub endpoint: Option<String>,
    /// Region; `us-east-1` when unset.
    pub region: Option<String>,
    /// `https://endpoint/bucket/key` instead of `https://bucket.endpoint/key`.
    pub force_path_style: bool,
    /// Credentials.
    pub credentials: S3Credentials,
    /// When the SDK adds flexible checksums.
    pub request_checksum: RequestChecksum,
    /// Attempts per request inside the SDK (throttling, 5xx, connection errors).
    pub max_attempts: u32,
    /// How long to wait for a connection.
    pub connect_timeout: Duration,
}

/// An S3 bucket (under a prefix) as an [`ObjectStore`].
#[derive(Debug, Clone)]
pub struct S3Store {
    client: Client,
    bucket: String,
    prefix: String,
    endpoint: String,
}

impl S3Store {
    /// A store for `options`; no request is made until the first call.
    pub fn new(options: S3Options) -> S3Store {
        let region = options
            .region
            .clone()
            .unwrap_or_else(|| "us-east-1".to_string());
        let (request, response) = match options.request_checksum {
            RequestChecksum::WhenSupported => (
                RequestChecksumCalculation::WhenSupported,
                ResponseChecksumValidation::WhenSupported,
            ),
            RequestChecksum::WhenRequired => (
                RequestChecksumCalculation::WhenRequired,
                ResponseChecksumValidation::WhenRequired,
            ),
        };
        let mut builder = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(region))
            .force_path_style(options.force_path_style)
            .request_checksum_calculation(request)
            .response_checksum_validation(response)
            .retry_config(RetryConfig::standard().with_max_attempts(options.max_attempts.max(1)))
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(options.connect_timeout)
                    .build(),
            );
        builder = match options.credentials {
            S3Credentials::Static {
                access_key_id,
                secret_access_key,
            } => builder.credentials_provider(Credentials::new(
                access_key_id,
                secret_access_key,
                None,
                None,
                "ferry-config",
            )),
            S3Credentials::DefaultChain => {
                builder.credentials_provider(crate::s3::chain::LazyDefaultChain::default())
            }
        };
        if let Some(endpoint) = &options.endpoint {
            builder = builder.endpoint_url(endpoint);
        }
        S3Store {
            client: Client::from_conf(builder.build()),
            bucket: options.bucket,
            prefix: options.prefix.trim_matches('/').to_string(),
            endpoint: options.endpoint.unwrap_or_else(|| "aws".to_string()),
        }
    }

    fn full(&self, key: &str) -> Result<String, StorageError> {
        check_key(key)?;
        Ok(self.full_prefix(key))
    }

    fn full_prefix(&self, prefix: &str) -> String {
        if self.prefix.is_empty() {
            prefix.to_string()
        } else {
            format!("{}/{prefix}", self.prefix)
        }
    }

    fn relative(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_string()
        } else {
            key.strip_prefix(&format!("{}/", self.prefix))
                .unwrap_or(key)
                .to_string()
        }
    }

    /// Streams a body of unknown length: one request when it fits in a part,
    /// otherwise a sequential multipart upload (aborted on failure).
    async fn put_stream(&self, key: &str, mut body: Body) -> Result<u64, StorageError> {
        let first = read_part(&mut body, key).await?;
        if first.len() < STREAM_PART {
            let size = first.len() as u64;
            self.put_bytes(key, first, None).await?;
            return Ok(size);
        }
        let upload_id = self.create_multipart(key).await?;
        let result = async {
            let mut parts = Vec::new();
            let mut size = 0u64;
            let mut next = Some(first);
            while let Some(bytes) = next.take() {
                size += bytes.len() as u64;
                let number = parts.len() as u32 + 1;
                parts.push(self.upload_part(key, &upload_id, number, bytes).await?);
                let more = read_part(&mut body, key).await?;
                if !more.is_empty() {
                    next = Some(more);
                }
            }
            self.complete_multipart(key, &upload_id, &parts).await?;
            Ok(size)
        }
        .await;
        if result.is_err() {
            let _ = self.abort_multipart(key, &upload_id).await;
        }
        result
    }
}

/// Reads up to one streaming part.
async fn read_part(body: &mut Body, key: &str) -> Result<Bytes, StorageError> {
    let mut buf = Vec::with_capacity(STREAM_PART);
    body.take(STREAM_PART as u64)
        .read_to_end(&mut buf)
        .await
        .map_err(|e| StorageError::io("read body for", key, e))?;
    Ok(buf.into())
}

fn md5_header(bytes: &[u8], md5: Option<[u8; 16]>) -> String {
    base64::engine::general_purpose::STANDARD.encode(md5.unwrap_or_else(|| content_md5(bytes)))
}

fn system_time(t: Option<&aws_sdk_s3::primitives::DateTime>) -> SystemTime {
    t.and_then(|t| SystemTime::try_from(*t).ok())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

#[async_trait]
impl ObjectStore for S3Store {
    async fn put(&self, key: &str, body: Body) -> Result<u64, StorageError> {
        self.full(key)?;
        self.put_stream(key, body).await
    }

    async fn put_if_absent(&self, key: &str, bytes: Bytes) -> Result<bool, StorageError> {
        // Stores that ignore If-None-Match (Garage) would overwrite: the HEAD makes
        // the sequential case safe there; the conditional PUT makes the concurrent
        // case safe where it is honoured (AWS, MinIO, R2, B2).
        if self.head(key).await?.is_some() {
            return Ok(false);
        }
        let full = self.full(key)?;
        let result = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(&full)
            .content_md5(md5_header(&bytes, None))
            .if_none_match("*")
            .body(ByteStream::from(bytes))
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(err) => match err.raw_response().map(|r| r.status().as_u16()) {
                // 412: someone else created it first; 409: a concurrent conditional
                // write is in progress, which will create it.
                Some(412) | Some(409) => Ok(false),
                _ => Err(map("put", key, err)),
            },
        }
    }

    async fn get(&self, key: &str) -> Result<Body, StorageError> {
        let full = self.full(key)?;
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&full)
            .send()
            .await
            .map_err(|e| map("get", key, e))?;
        Ok(Box::new(out.body.into_async_read()))
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StorageError> {
        let full = self.full(key)?;
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(&full)
            .send()
            .await
        {
            Ok(out) => Ok(Some(ObjectMeta {
                key: key.to_string(),
                size: out.content_length().unwrap_or(0).max(0) as u64,
                modified: system_time(out.last_modified()),
            })),
            Err(e) => match map("head", key, e) {
                StorageError::NotFound { .. } => Ok(None),
                other => Err(other),
            },
        }
    }

    fn list<'a>(&'a self, prefix: &'a str) -> ListPages<'a> {
        // One ListObjectsV2 request per page; the continuation token is the only
        // state carried between pages.
        enum Next {
            Start,
            Token(String),
            Done,
        }
        let full = self.full_prefix(prefix);
        futures::stream::try_unfold(Next::Start, move |next| {
            let full = full.clone();
            async move {
                let token = match next {
                    Next::Start => None,
                    Next::Token(t) => Some(t),
                    Next::Done => return Ok(None),
                };
                let page = self
                    .client
                    .list_objects_v2()
                    .bucket(&self.bucket)
                    .prefix(&full)
                    .max_keys(LIST_PAGE as i32)
                    .set_continuation_token(token)
                    .send()
                    .await
                    .map_err(|e| map("list", prefix, e))?;
                let objects: Vec<ObjectMeta> = page
                    .contents()
                    .iter()
                    .filter_map(|object| {
                        Some(ObjectMeta {
                            key: self.relative(object.key()?),
                            size: object.size().unwrap_or(0).max(0) as u64,
                            modified: system_time(object.last_modified()),
                        })
                    })
                    .collect();
                let next = match page.next_continuation_token() {
                    Some(t) if page.is_truncated() == Some(true) => Next::Token(t.to_string()),
                    _ => Next::Done,
                };
                Ok(Some((objects, next)))
            }
        })
        // An empty page (an empty prefix, or a store that pages oddly) says nothing.
        .try_filter(|page| futures::future::ready(!page.is_empty()))
        .boxed()
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        let full = self.full(key)?;
        match self
            .client
            .delete_object()
            .bucket(&self.bucket)
            .key(&full)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => match map("delete", key, e) {
                StorageError::NotFound { .. } => Ok(()),
                other => Err(other),
            },
        }
    }

    fn describe(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{} ({})", self.bucket, self.endpoint)
        } else {
            format!("s3://{}/{} ({})", self.bucket, self.prefix, self.endpoint)
        }
    }

    async fn put_bytes(
        &self,
        key: &str,
        bytes: Bytes,
        md5: Option<[u8; 16]>,
    ) -> Result<(), StorageError> {
        let full = self.full(key)?;
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(&full)
            .content_md5(md5_header(&bytes, md5))
            .body(ByteStream::from(bytes))
            .send()
            .await
            .map_err(|e| map("put", key, e))?;
        Ok(())
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Body, StorageError> {
        let full = self.full(key)?;
        if range.is_empty() {
            return Ok(Box::new(std::io::Cursor::new(Vec::new())));
        }
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&full)
            .range(format!("bytes={}-{}", range.start, range.end - 1))
            .send()
            .await;
        match out {
            Ok(out) => Ok(Box::new(out.body.into_async_read())),
            // 416: the range starts past the end: nothing to read.
            Err(e) if e.raw_response().map(|r| r.status().as_u16()) == Some(416) => {
                Ok(Box::new(std::io::Cursor::new(Vec::new())))
            }
            Err(e) => Err(map("get", key, e)),
        }
    }

    async fn delete_many(&self, keys: &[String]) -> Result<(), StorageError> {
        // DeleteObjects takes at most 1,000 keys per request.
        for chunk in keys.chunks(1000) {
            let mut objects = Vec::with_capacity(chunk.len());
            for key in chunk {
                let full = self.full(key)?;
                objects.push(
                    ObjectIdentifier::builder()
                        .key(full)
                        .build()
                        .map_err(|e| backend_build("delete", key, e))?,
                );
            }
            let delete = Delete::builder()
                .set_objects(Some(objects))
                .quiet(true)
                .build()
                .map_err(|e| backend_build("delete", &chunk[0], e))?;
            let out = self
                .client
                .delete_objects()
                .bucket(&self.bucket)
                .delete(delete)
                .send()
                .await
                .map_err(|e| map("delete", &chunk[0], e))?;
            if let Some(failed) = out.errors().first() {
                return Err(StorageError::Backend {
                    op: "delete",
                    key: self.relative(failed.key().unwrap_or_default()),
                    message: format!(
                        "{} {}",
                        failed.code().unwrap_or_default(),
                        failed.message().unwrap_or_default()
                    ),
                    retryable: matches!(failed.code(), Some("InternalError" | "SlowDown")),
                });
            }
        }
        Ok(())
    }

    async fn create_multipart(&self, key: &str) -> Result<String, StorageError> {
        let full = self.full(key)?;
        let out = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(&full)
            .send()
            .await
            .map_err(|e| map("start upload of", key, e))?;
        out.upload_id()
            .map(str::to_string)
            .ok_or_else(|| StorageError::Backend {
                op: "start upload of",
                key: key.to_string(),
                message: "the store returned no upload id".into(),
                retryable: false,
            })
    }

    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: u32,
        bytes: Bytes,
    ) -> Result<PartReceipt, StorageError> {
        let full = self.full(key)?;
        let out = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(&full)
            .upload_id(upload_id)
            .part_number(number as i32)
            .content_md5(md5_header(&bytes, None))
            .body(ByteStream::from(bytes))
            .send()
            .await
            .map_err(|e| map("upload a part of", key, e))?;
        Ok(PartReceipt {
            number,
            etag: out.e_tag().unwrap_or_default().to_string(),
        })
    }

    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[PartReceipt],
    ) -> Result<(), StorageError> {
        let full = self.full(key)?;
        let mut sorted = parts.to_vec();
        sorted.sort_by_key(|p| p.number);
        let parts = sorted
            .into_iter()
            .map(|p| {
                CompletedPart::builder()
                    .part_number(p.number as i32)
                    .e_tag(p.etag)
                    .build()
            })
            .collect();
        self.client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(&full)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| map("complete upload of", key, e))?;
        Ok(())
    }

    async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<(), StorageError> {
        let full = self.full(key)?;
        match self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(&full)
            .upload_id(upload_id)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => match map("abort upload of", key, e) {
                StorageError::NotFound { .. } => Ok(()),
                other => Err(other),
            },
        }
    }

    async fn list_multipart(&self, prefix: &str) -> Result<Vec<PendingUpload>, StorageError> {
        let full = self.full_prefix(prefix);
        let mut out = Vec::new();
        let (mut key_marker, mut id_marker) = (None, None);
        loop {
            let page = self
                .client
                .list_multipart_uploads()
                .bucket(&self.bucket)
                .prefix(&full)
                .set_key_marker(key_marker.take())
                .set_upload_id_marker(id_marker.take())
                .send()
                .await
                .map_err(|e| map("list uploads under", prefix, e))?;
            for upload in page.uploads() {
                let (Some(key), Some(id)) = (upload.key(), upload.upload_id()) else {
                    continue;
                };
                out.push(PendingUpload {
                    key: self.relative(key),
                    upload_id: id.to_string(),
                    initiated: upload
                        .initiated()
                        .and_then(|t| SystemTime::try_from(*t).ok()),
                });
            }
            if page.is_truncated() != Some(true) {
                break;
            }
            key_marker = page.next_key_marker().map(str::to_string);
            id_marker = page.next_upload_id_marker().map(str::to_string);
            if key_marker.is_none() {
                break;
            }
        }
        Ok(out)
    }
}

fn backend_build(op: &'static str, key: &str, e: impl std::fmt::Display) -> StorageError {
    StorageError::Backend {
        op,
        key: key.to_string(),
        message: e.to_string(),
        retryable: false,
    }
}

/// The standard AWS credentials chain, built on first use (building it is async;
/// opening a store is not).
mod chain {
    use aws_config::default_provider::credentials::DefaultCredentialsChain;
    use aws_credential_types::provider::{ProvideCredentials, future};

    #[derive(Debug, Default)]
    pub(super) struct LazyDefaultChain(tokio::sync::OnceCell<DefaultCredentialsChain>);

    impl ProvideCredentials for LazyDefaultChain {
        fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
        where
            Self: 'a,
        {
            future::ProvideCredentials::new(async move {
                let chain = self
                    .0
                    .get_or_init(|| async { DefaultCredentialsChain::builder().build().await })
                    .await;
                chain.provide_credentials().await
            })
        }
    }
}
