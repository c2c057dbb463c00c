//! OTLP export: spans for the RPC and its gateway requests reach a collector, as children of
//! the caller's W3C trace context. Its own test binary (the tracing subscriber is global).

#[path = "e2e/helpers.rs"]
mod helpers;

use ccgw_bridge::telemetry::{self, LogFormat};
use helpers::*;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::trace::v1::Span;
use std::sync::{Arc, Mutex};
use tonic::{Request, Response, Status};

#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<Span>>>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut spans = self.0.lock().unwrap();
        for rs in request.into_inner().resource_spans {
            for ss in rs.scope_spans {
                spans.extend(ss.spans);
            }
        }
        Ok(Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_ID: &str = "00f067aa0ba902b7";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_follow_the_callers_trace_to_the_collector() {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let guard = telemetry::init(LogFormat::Json, Some(&endpoint)).unwrap();

    let h = Harness::start().await;
    let mut req = Request::new(sign_in_request("1001"));
    req.metadata_mut().insert(
        "traceparent",
        format!("00-{TRACE_ID}-{PARENT_ID}-01").parse().unwrap(),
    );
    h.sessions().await.sign_in(req).await.unwrap();
    h.stop().await.unwrap();
    tokio::task::spawn_blocking(move || guard.shutdown())
        .await
        .unwrap();

    let spans = collector.0.lock().unwrap().clone();
    let rpc = spans
        .iter()
        .find(|s| s.name == "SignIn")
        .unwrap_or_else(|| {
            panic!(
                "no SignIn span in {:?}",
                spans.iter().map(|s| &s.name).collect::<Vec<_>>()
            )
        });
    assert_eq!(hex(&rpc.trace_id), TRACE_ID, "the caller's trace continues");
    assert_eq!(
        hex(&rpc.parent_span_id),
        PARENT_ID,
        "the caller's span is the parent"
    );
    let login = spans
        .iter()
        .find(|s| s.name == "login" && s.trace_id == rpc.trace_id)
        .expect("the gateway request is a span of the same trace");
    assert_eq!(login.parent_span_id, rpc.span_id);
    for s in &spans {
        for kv in &s.attributes {
            let v = format!("{:?}", kv.value);
            assert!(!v.contains("JSESSIONID"), "no Guid in span attributes");
        }
    }
}
