//! POSTing JSON to a webhook: 2xx is done; 429 and 5xx are retried, honouring
//! `Retry-After`; connection errors are retried; other answers are permanent (a
//! wrong URL does not fix itself).

use std::time::Duration;

use hmac::{Hmac, Mac};
use reqwest::header::{HeaderMap, RETRY_AFTER};
use serde_json::Value;
use sha2::Sha256;

use crate::errors::DeliveryError;

/// The `X-Ferry-Signature` value for `body`: `sha256=<hex HMAC-SHA256>` keyed with
/// the channel's secret. Receivers recompute it over the raw body and compare.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// POSTs `body` as JSON, signed when a secret is given.
pub async fn post_json(
    http: &reqwest::Client,
    url: &str,
    body: &Value,
    secret: Option<&str>,
) -> Result<(), DeliveryError> {
    let bytes = serde_json::to_vec(body).expect("a JSON value serialises");
    let mut request = http
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json");
    if let Some(secret) = secret {
        request = request.header("X-Ferry-Signature", signature(secret, &bytes));
    }
    // reqwest's errors can print the URL, and webhook URLs embed tokens: never show it.
    let response = request
        .body(bytes)
        .send()
        .await
        .map_err(|e| DeliveryError::Request(e.without_url()))?;
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let retry_after = retry_after(response.headers());
    let text: String = response
        .text()
        .await
        .unwrap_or_default()
        .chars()
        .take(300)
        .collect();
    if status.as_u16() == 429 || status.is_server_error() {
        Err(DeliveryError::Unavailable {
            status,
            body: text,
            retry_after,
        })
    } else {
        Err(DeliveryError::Refused { status, body: text })
    }
}

/// `Retry-After` as seconds (integer or decimal, as Discord sends) or an HTTP date.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<f64>() {
        return (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    (at.with_timezone(&chrono::Utc) - chrono::Utc::now())
        .to_std()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, "3".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3)));
        h.insert(RETRY_AFTER, "0.5".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_millis(500)));
        let later = (chrono::Utc::now() + chrono::Duration::seconds(120)).to_rfc2822();
        h.insert(RETRY_AFTER, later.parse().unwrap());
        assert!(retry_after(&h).unwrap() > Duration::from_secs(100));
        h.insert(RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn signature_is_hmac_sha256_of_the_body() {
        // RFC 4231 test case 2.
        let sig = signature("Jefe", b"what do ya want for nothing?");
        assert_eq!(
            sig,
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
