//! An in-process OTLP/gRPC trace receiver for tests: the OpenTelemetry
//! collector's `TraceService` (from `opentelemetry-proto`'s service
//! definitions) on `127.0.0.1:0`, keeping every span it receives so a test
//! can check a trace's tree, names and attributes.
//!
//! Point a process at [`Collector::endpoint`] (`[tracing] otlp_endpoint`
//! or `OTEL_EXPORTER_OTLP_ENDPOINT`) and wait for spans with
//! [`Collector::wait_for`], which polls with a deadline.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, any_value};
use tokio_util::sync::CancellationToken;

/// One span as received, flattened for assertions.
#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    /// The `service.name` of the resource that sent it.
    pub service: String,
    /// 32 lowercase hex digits.
    pub trace_id: String,
    /// 16 lowercase hex digits.
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    pub name: String,
    /// OTLP span kind: 1 internal, 2 server, 3 client.
    pub kind: i32,
    /// Every attribute, its value as text.
    pub attributes: BTreeMap<String, String>,
    pub start_unix_nano: u64,
    pub end_unix_nano: u64,
    /// OTLP status code: 0 unset, 1 ok, 2 error.
    pub status_code: i32,
    /// Linked spans: (trace id, span id).
    pub links: Vec<(String, String)>,
}

impl Span {
    /// An attribute's value, or `""`.
    pub fn attr(&self, key: &str) -> &str {
        self.attributes.get(key).map_or("", String::as_str)
    }
}

#[derive(Default)]
struct Received {
    spans: Vec<Span>,
    requests: usize,
}

struct Receiver {
    received: Arc<Mutex<Received>>,
}

fn text(v: &AnyValue) -> String {
    match &v.value {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = Vec::new();
        for rs in request.into_inner().resource_spans {
            let service = (rs.resource.iter())
                .flat_map(|r| r.attributes.iter())
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref())
                .map(text)
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    spans.push(Span {
                        service: service.clone(),
                        trace_id: hex(&s.trace_id),
                        span_id: hex(&s.span_id),
                        parent_span_id: hex(&s.parent_span_id),
                        name: s.name,
                        kind: s.kind,
                        attributes: (s.attributes.iter())
                            .map(|kv| {
                                (
                                    kv.key.clone(),
                                    kv.value.as_ref().map(text).unwrap_or_default(),
                                )
                            })
                            .collect(),
                        start_unix_nano: s.start_time_unix_nano,
                        end_unix_nano: s.end_time_unix_nano,
                        status_code: s.status.map_or(0, |st| st.code),
                        links: (s.links.iter())
                            .map(|l| (hex(&l.trace_id), hex(&l.span_id)))
                            .collect(),
                    });
                }
            }
        }
        let mut r = self.received.lock().unwrap_or_else(|e| e.into_inner());
        r.requests += 1;
        r.spans.extend(spans);
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// The receiver, serving until dropped.
pub struct Collector {
    addr: SocketAddr,
    received: Arc<Mutex<Received>>,
    stop: CancellationToken,
}

impl std::fmt::Debug for Collector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collector")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Collector {
    /// Binds 127.0.0.1:0 and serves on the current tokio runtime.
    pub async fn start() -> std::io::Result<Collector> {
        Collector::start_on("127.0.0.1:0".parse().expect("a socket address")).await
    }

    /// Binds `addr` (loopback, for tests and benchmarks) and serves on the
    /// current tokio runtime.
    pub async fn start_on(addr: SocketAddr) -> std::io::Result<Collector> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let received = Arc::new(Mutex::new(Received::default()));
        let stop = CancellationToken::new();
        let service = TraceServiceServer::new(Receiver {
            received: received.clone(),
        });
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        let until = stop.clone();
        tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, until.cancelled_owned())
                .await;
        });
        Ok(Collector {
            addr,
            received,
            stop,
        })
    }

    /// `http://127.0.0.1:<port>`, for `otlp_endpoint`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<Span> {
        self.lock().spans.clone()
    }

    /// How many export calls arrived (with or without spans).
    pub fn requests(&self) -> usize {
        self.lock().requests
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Received> {
        self.received.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Polls until `ready` holds for the spans received, and returns them;
    /// panics after `timeout` naming `what` and listing what did arrive.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        what: &str,
        ready: impl Fn(&[Span]) -> bool,
    ) -> Vec<Span> {
        crate::wait_until_async(
            timeout,
            what,
            async || {
                let spans = self.spans();
                ready(&spans).then_some(spans)
            },
            || summary(&self.spans()),
        )
        .await
    }
}

/// One line per span (service, name, ids, attributes), for a failure
/// message.
pub fn summary(spans: &[Span]) -> String {
    let mut out = format!("{} spans received:\n", spans.len());
    for s in spans {
        out.push_str(&format!(
            "  [{}] {} trace={} span={} parent={} {:?}\n",
            s.service, s.name, s.trace_id, s.span_id, s.parent_span_id, s.attributes
        ));
    }
    out
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
