//! The S3-compatible servers `scripts/test-services up` runs (moto and Garage), and
//! a fault-injecting proxy to put in front of them.
//!
//! Tests share one bucket per server and keep apart by a unique key prefix each.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, Response, StatusCode};

/// One S3-compatible server and the bucket tests use on it.
#[derive(Debug, Clone)]
pub struct S3Server {
    /// `moto` or `garage`.
    pub name: &'static str,
    /// Endpoint URL.
    pub endpoint: String,
    /// Region to sign for.
    pub region: String,
    /// Access key id.
    pub access_key_id: String,
    /// Secret key.
    pub secret_access_key: String,
    /// The shared test bucket.
    pub bucket: String,
    /// Whether the server honours `If-None-Match: *` on PUT (Garage does not).
    pub conditional_put: bool,
    /// Whether the server checks Content-MD5 (moto does not).
    pub verifies_md5: bool,
}

fn env_or(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_string())
}

impl S3Server {
    /// moto, with the bucket `ferry-test` created if missing.
    pub async fn moto() -> S3Server {
        let server = S3Server {
            name: "moto",
            endpoint: env_or("FERRY_TEST_S3_ENDPOINT", "http://127.0.0.1:59000"),
            region: env_or("FERRY_TEST_S3_REGION", "us-east-1"),
            access_key_id: env_or("FERRY_TEST_S3_ACCESS_KEY_ID", "test"),
            secret_access_key: env_or("FERRY_TEST_S3_SECRET_ACCESS_KEY", "test"),
            bucket: env_or("FERRY_TEST_S3_BUCKET", "ferry-test"),
            conditional_put: true,
            verifies_md5: false,
        };
        // moto keeps buckets in memory: after a restart the bucket is gone, so make
        // sure it exists (moto does not check signatures; creating twice is fine).
        let url = format!("{}/{}", server.endpoint, server.bucket);
        let status = reqwest::Client::new()
            .put(&url)
            .send()
            .await
            .unwrap_or_else(|e| {
                panic!("moto is not reachable at {url} ({e}); run scripts/test-services up")
            })
            .status();
        assert!(
            status.is_success() || status.as_u16() == 409,
            "creating bucket {url}: HTTP {status}"
        );
        server
    }

    /// Garage, as `scripts/test-services up` configured it (bucket and key made
    /// there).
    pub async fn garage() -> S3Server {
        let server = S3Server {
            name: "garage",
            endpoint: env_or("FERRY_TEST_GARAGE_ENDPOINT", "http://127.0.0.1:59010"),
            region: env_or("FERRY_TEST_GARAGE_REGION", "garage"),
            access_key_id: std::env::var("FERRY_TEST_GARAGE_ACCESS_KEY_ID").expect(
                "FERRY_TEST_GARAGE_ACCESS_KEY_ID is not set: eval \"$(scripts/test-services env)\"",
            ),
            secret_access_key: std::env::var("FERRY_TEST_GARAGE_SECRET_ACCESS_KEY")
                .expect("FERRY_TEST_GARAGE_SECRET_ACCESS_KEY is not set"),
            bucket: env_or("FERRY_TEST_GARAGE_BUCKET", "ferry-test"),
            conditional_put: false,
            verifies_md5: true,
        };
        let reachable =
            tokio::net::TcpStream::connect(server.endpoint.trim_start_matches("http://")).await;
        assert!(
            reachable.is_ok(),
            "garage is not reachable at {}; run scripts/test-services up",
            server.endpoint
        );
        server
    }

    /// Writes the access key and secret into files in `dir` (tests cannot set
    /// environment variables), for `access_key_id_file`/`secret_access_key_file`.
    pub fn write_key_files(&self, dir: &Path) -> (PathBuf, PathBuf) {
        let id = dir.join(format!("{}-access-key-id", self.name));
        let secret = dir.join(format!("{}-secret-access-key", self.name));
        std::fs::write(&id, &self.access_key_id).expect("write key file");
        std::fs::write(&secret, &self.secret_access_key).expect("write key file");
        (id, secret)
    }

    /// The same server behind `proxy`.
    pub fn via(&self, proxy: &FaultProxy) -> S3Server {
        S3Server {
            endpoint: proxy.url(),
            ..self.clone()
        }
    }
}

#[derive(Clone)]
struct ProxyState {
    upstream: String,
    client: reqwest::Client,
    fail_first: usize,
    seen: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
}

/// An HTTP proxy in front of an S3 server that answers `503 SlowDown` to the first
/// `fail_first` requests and forwards the rest unchanged (the `Host` header too, so
/// request signatures stay valid).
pub struct FaultProxy {
    addr: SocketAddr,
    state: ProxyState,
}

impl FaultProxy {
    /// Starts on a free loopback port.
    pub async fn start(upstream: &str, fail_first: usize) -> FaultProxy {
        let state = ProxyState {
            upstream: upstream.trim_end_matches('/').to_string(),
            client: reqwest::Client::new(),
            fail_first,
            seen: Arc::default(),
            failed: Arc::default(),
        };
        let app = axum::Router::new()
            .fallback(forward)
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FaultProxy { addr, state }
    }

    /// The proxy's URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests answered with 503 so far.
    pub fn failed(&self) -> usize {
        self.state.failed.load(Ordering::SeqCst)
    }

    /// Requests seen so far.
    pub fn seen(&self) -> usize {
        self.state.seen.load(Ordering::SeqCst)
    }
}

const HOP_BY_HOP: [&str; 5] = [
    "connection",
    "transfer-encoding",
    "content-length",
    "expect",
    "keep-alive",
];

async fn forward(State(state): State<ProxyState>, request: Request) -> Response<Body> {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, 1 << 30)
        .await
        .unwrap_or_default();
    let n = state.seen.fetch_add(1, Ordering::SeqCst);
    if n < state.fail_first {
        state.failed.fetch_add(1, Ordering::SeqCst);
        return Response::builder()
            .status(StatusCode::SERVICE_UNAVAILABLE)
            .header("content-type", "application/xml")
            .body(Body::from(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>",
            ))
            .expect("response");
    }
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let mut out = state
        .client
        .request(parts.method.clone(), format!("{}{path}", state.upstream));
    for (name, value) in &parts.headers {
        if !HOP_BY_HOP.contains(&name.as_str()) {
            out = out.header(name, value);
        }
    }
    let reply = match out.body(body).send().await {
        Ok(reply) => reply,
        Err(e) => {
            return Response::builder()
                .status(StatusCode::BAD_GATEWAY)
                .body(Body::from(e.to_string()))
                .expect("response");
        }
    };
    let mut response = Response::builder().status(reply.status().as_u16());
    let is_head = parts.method == axum::http::Method::HEAD;
    for (name, value) in reply.headers() {
        let keep = !HOP_BY_HOP.contains(&name.as_str())
            || (is_head && name == HeaderName::from_static("content-length"));
        if keep {
            response = response.header(name, value);
        }
    }
    let bytes = reply.bytes().await.unwrap_or_default();
    response.body(Body::from(bytes)).expect("response")
}
