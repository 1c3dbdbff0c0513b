//! A real HTTP receiver on loopback that records every request, for webhook tests.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;

/// How the receiver answers one request.
#[derive(Debug, Clone)]
pub enum Reply {
    /// This status, with a `Retry-After` header when given.
    Status(u16, Option<&'static str>),
    /// Never answer: the connection stays open (a dead or stuck channel).
    Hang,
}

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct ReceivedRequest {
    /// When it arrived.
    pub at: std::time::Instant,
    /// The path.
    pub path: String,
    /// The headers.
    pub headers: HeaderMap,
    /// The body.
    pub body: Bytes,
}

impl ReceivedRequest {
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("request body is JSON")
    }
}

#[derive(Clone, Default)]
struct Shared {
    requests: Arc<Mutex<Vec<ReceivedRequest>>>,
    /// Answers for the next requests, in order; then 200, or `after` when set.
    script: Arc<Mutex<std::collections::VecDeque<Reply>>>,
    after: Arc<Mutex<Option<Reply>>>,
}

/// An HTTP server that keeps every POST it gets and answers 200, or what a test
/// scripted.
pub struct HttpReceiver {
    addr: SocketAddr,
    shared: Shared,
}

impl HttpReceiver {
    /// Starts on a free loopback port.
    pub async fn start() -> HttpReceiver {
        Self::start_scripted(Vec::new(), None).await
    }

    /// Starts a receiver that answers the first requests with `script`, then every
    /// later one with `after` (200 when `None`).
    pub async fn start_scripted(script: Vec<Reply>, after: Option<Reply>) -> HttpReceiver {
        let shared = Shared::default();
        shared.script.lock().expect("receiver lock").extend(script);
        *shared.after.lock().expect("receiver lock") = after;
        let app = Router::new()
            .route("/{*path}", post(record))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind receiver");
        let addr = listener.local_addr().expect("receiver address");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        HttpReceiver { addr, shared }
    }

    /// The URL of `path` on this receiver.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}/{}", self.addr, path.trim_start_matches('/'))
    }

    /// Everything received so far.
    pub fn requests(&self) -> Vec<ReceivedRequest> {
        self.shared.requests.lock().expect("receiver lock").clone()
    }
}

async fn record(
    State(shared): State<Shared>,
    axum::extract::Path(path): axum::extract::Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    shared
        .requests
        .lock()
        .expect("receiver lock")
        .push(ReceivedRequest {
            at: std::time::Instant::now(),
            path,
            headers,
            body,
        });
    let reply = shared
        .script
        .lock()
        .expect("receiver lock")
        .pop_front()
        .or_else(|| shared.after.lock().expect("receiver lock").clone());
    match reply {
        None => StatusCode::OK.into_response(),
        Some(Reply::Hang) => std::future::pending().await,
        Some(Reply::Status(code, retry_after)) => {
            let status = StatusCode::from_u16(code).expect("a valid status");
            match retry_after {
                Some(value) => (status, [("retry-after", value)], "scripted").into_response(),
                None => (status, "scripted").into_response(),
            }
        }
    }
}
