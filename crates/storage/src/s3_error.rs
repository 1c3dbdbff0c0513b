//! Mapping S3 SDK errors to [`StorageError`]: what is worth retrying (throttling,
//! 5xx, timeouts, dropped connections) and what is not (credentials, a missing
//! bucket, a refused checksum).

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};

use crate::StorageError;

/// Classifies an SDK error of `op` on `key`.
pub(crate) fn map<E>(op: &'static str, key: &str, err: SdkError<E, HttpResponse>) -> StorageError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let (retryable, message) = match &err {
        SdkError::ServiceError(service) => {
            let status = service.raw().status().as_u16();
            let code = service.err().code().unwrap_or("");
            if status == 404 || matches!(code, "NoSuchKey" | "NotFound") {
                return StorageError::NotFound {
                    key: key.to_string(),
                };
            }
            let detail = service.err().message().unwrap_or("");
            (
                retryable_status(status, code),
                format!("HTTP {status} {code} {detail}").trim().to_string(),
            )
        }
        SdkError::ResponseError(e) => (
            true,
            format!(
                "unreadable response (HTTP {}): {}",
                e.raw().status().as_u16(),
                source_chain(&err)
            ),
        ),
        // Connection refused or reset, DNS, TLS: the store may be back soon.
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => (true, source_chain(&err)),
        // The request could not even be built (bad configuration): no retry helps.
        _ => (false, source_chain(&err)),
    };
    StorageError::Backend {
        op,
        key: key.to_string(),
        message,
        retryable,
    }
}

/// Whether an S3 answer is worth another attempt.
fn retryable_status(status: u16, code: &str) -> bool {
    status >= 500
        || status == 429
        || status == 408
        || matches!(
            code,
            "SlowDown" | "Throttling" | "ThrottlingException" | "RequestTimeout" | "InternalError"
        )
}

/// The error and its causes on one line: the SDK's top-level message alone is often
/// just "dispatch failure".
fn source_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        out.push_str(": ");
        out.push_str(&e.to_string());
        cur = e.source();
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn throttling_and_server_errors_are_retryable() {
        use super::retryable_status;
        assert!(retryable_status(503, "SlowDown"));
        assert!(retryable_status(500, "InternalError"));
        assert!(retryable_status(429, ""));
        assert!(retryable_status(400, "RequestTimeout"));
        assert!(!retryable_status(403, "AccessDenied"));
        assert!(!retryable_status(400, "BadDigest"));
        assert!(!retryable_status(404, "NoSuchBucket"));
    }
}
