//! A real HTTP receiver on loopback that records every request, for webhook tests.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct ReceivedRequest {
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
}

/// An HTTP server that answers 200 to every POST and keeps what it got.
pub struct HttpReceiver {
    addr: SocketAddr,
    shared: Shared,
}

impl HttpReceiver {
    /// Starts on a free loopback port.
    pub async fn start() -> HttpReceiver {
        let shared = Shared::default();
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
) -> StatusCode {
    shared
        .requests
        .lock()
        .expect("receiver lock")
        .push(ReceivedRequest {
            path,
            headers,
            body,
        });
    StatusCode::OK
}
