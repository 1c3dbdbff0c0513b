//! A real OTLP trace receiver for tests: OTLP/HTTP (protobuf bodies on
//! `/v1/traces`) and OTLP/gRPC (the collector's `TraceService`), both decoding with
//! the OpenTelemetry project's own protobuf types, keeping every span received.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use prost::Message;

/// One span as a collector received it.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    /// The exporting process's `service.name`.
    pub service: String,
    /// How it arrived: `grpc` or `http`.
    pub protocol: &'static str,
    /// Hex trace id.
    pub trace_id: String,
    /// Hex span id.
    pub span_id: String,
    /// Hex parent span id; empty for a root span.
    pub parent_span_id: String,
    /// The span's name.
    pub name: String,
    /// OTLP span kind (2 server, 3 client, 4 producer, 5 consumer).
    pub kind: i32,
    /// Attributes, values as text.
    pub attributes: BTreeMap<String, String>,
    /// Start time, for ordering siblings in a printed tree.
    pub start_unix_nano: u64,
}

impl ReceivedSpan {
    /// An attribute's value, or "" when absent.
    pub fn attr(&self, key: &str) -> &str {
        self.attributes.get(key).map(String::as_str).unwrap_or("")
    }
}

#[derive(Clone, Default)]
struct Spans(Arc<Mutex<Vec<ReceivedSpan>>>);

impl Spans {
    fn add(&self, request: ExportTraceServiceRequest, protocol: &'static str) {
        let mut spans = self.0.lock().expect("spans lock");
        for resource_spans in request.resource_spans {
            let service = resource_spans
                .resource
                .map(|r| attributes(&r.attributes))
                .and_then(|a| a.get("service.name").cloned())
                .unwrap_or_default();
            for scope_spans in resource_spans.scope_spans {
                for span in scope_spans.spans {
                    spans.push(ReceivedSpan {
                        service: service.clone(),
                        protocol,
                        trace_id: hex::encode(&span.trace_id),
                        span_id: hex::encode(&span.span_id),
                        parent_span_id: hex::encode(&span.parent_span_id),
                        name: span.name,
                        kind: span.kind,
                        attributes: attributes(&span.attributes),
                        start_unix_nano: span.start_time_unix_nano,
                    });
                }
            }
        }
    }
}

fn attributes(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter()
        .map(|kv| {
            (
                kv.key.clone(),
                kv.value.as_ref().map(text).unwrap_or_default(),
            )
        })
        .collect()
}

fn text(value: &AnyValue) -> String {
    match &value.value {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

struct Grpc(Spans);

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.add(request.into_inner(), "grpc");
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

async fn http_export(State(spans): State<Spans>, body: Bytes) -> axum::response::Response {
    match ExportTraceServiceRequest::decode(body) {
        Ok(request) => {
            spans.add(request, "http");
            (
                [(header::CONTENT_TYPE, "application/x-protobuf")],
                ExportTraceServiceResponse::default().encode_to_vec(),
            )
                .into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    }
}

/// A collector on loopback speaking OTLP over gRPC and over HTTP.
pub struct OtlpReceiver {
    grpc: SocketAddr,
    http: SocketAddr,
    spans: Spans,
}

impl OtlpReceiver {
    /// Starts both endpoints on free ports.
    pub async fn start() -> OtlpReceiver {
        let spans = Spans::default();
        let http = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind OTLP/HTTP");
        let http_addr = http.local_addr().expect("OTLP/HTTP address");
        let app = Router::new()
            .route("/v1/traces", post(http_export))
            .with_state(spans.clone());
        tokio::spawn(async move {
            let _ = axum::serve(http, app).await;
        });
        let grpc = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind OTLP/gRPC");
        let grpc_addr = grpc.local_addr().expect("OTLP/gRPC address");
        let service = TraceServiceServer::new(Grpc(spans.clone()));
        tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(grpc))
                .await;
        });
        OtlpReceiver {
            grpc: grpc_addr,
            http: http_addr,
            spans,
        }
    }

    /// The endpoint for `telemetry.otlp_protocol = "grpc"`.
    pub fn grpc_endpoint(&self) -> String {
        format!("http://{}", self.grpc)
    }

    /// The endpoint for `telemetry.otlp_protocol = "http"` (without `/v1/traces`).
    pub fn http_endpoint(&self) -> String {
        format!("http://{}", self.http)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.0.lock().expect("spans lock").clone()
    }

    /// The spans of one trace.
    pub fn trace(&self, trace_id: &str) -> Vec<ReceivedSpan> {
        self.spans()
            .into_iter()
            .filter(|s| s.trace_id == trace_id)
            .collect()
    }
}

/// Problems that keep `spans` from being one tree: spans whose parent is missing,
/// and every root but one. Empty when the spans form a single tree.
pub fn tree_problems(spans: &[ReceivedSpan]) -> Vec<String> {
    let ids: BTreeSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    let mut problems = Vec::new();
    let roots: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|s| s.parent_span_id.is_empty())
        .collect();
    if roots.len() != 1 {
        problems.push(format!(
            "{} roots: {:?}",
            roots.len(),
            roots
                .iter()
                .map(|s| (&s.service, &s.name))
                .collect::<Vec<_>>()
        ));
    }
    for span in spans {
        if !span.parent_span_id.is_empty() && !ids.contains(span.parent_span_id.as_str()) {
            problems.push(format!(
                "{} span {:?} has a parent {} that was never exported",
                span.service, span.name, span.parent_span_id
            ));
        }
    }
    problems
}

/// The spans as an indented tree, children in start order, with the attributes an
/// operator follows a job by.
pub fn render_tree(spans: &[ReceivedSpan]) -> String {
    let mut children: BTreeMap<&str, Vec<&ReceivedSpan>> = BTreeMap::new();
    for span in spans {
        children
            .entry(span.parent_span_id.as_str())
            .or_default()
            .push(span);
    }
    for list in children.values_mut() {
        list.sort_by_key(|s| s.start_unix_nano);
    }
    let mut out = String::new();
    fn walk(
        out: &mut String,
        children: &BTreeMap<&str, Vec<&ReceivedSpan>>,
        parent: &str,
        depth: usize,
    ) {
        for span in children.get(parent).into_iter().flatten() {
            let mut notes = Vec::new();
            for key in [
                "ferry.stage",
                "ferry.source",
                "ferry.job_id",
                "messaging.destination.name",
                "messaging.message.id",
                "ferry.bytes_dumped",
                "ferry.bytes_uploaded",
                "ferry.bytes_reused",
            ] {
                if !span.attr(key).is_empty() {
                    notes.push(format!("{key}={}", span.attr(key)));
                }
            }
            let _ = writeln!(
                out,
                "{}{} [{} via {}] {}",
                "  ".repeat(depth),
                span.name,
                span.service,
                span.protocol,
                notes.join(" ")
            );
            walk(out, children, &span.span_id, depth + 1);
        }
    }
    walk(&mut out, &children, "", 0);
    out
}
