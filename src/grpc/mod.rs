//! The gRPC layer: validation, proto ⇄ domain mapping, and failures → `tonic::Status`.

mod agent_session;
pub mod auth;
pub mod frame;
pub mod limit;
mod recordplay;
pub mod status;
pub mod validate;
mod watch;

pub use agent_session::AgentSessionApi;
pub use recordplay::RecordPlayApi;

use crate::session::Sessions;
use crate::telemetry::Metrics;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tonic::metadata::MetadataMap;
use tonic::Status;
use tracing::Instrument;
use validate::Limits;

/// What every handler shares.
#[derive(Clone)]
pub struct Bridge {
    /// The session registry.
    pub sessions: Sessions,
    /// Validation limits and policy.
    pub limits: Arc<Limits>,
    /// Metrics registry.
    pub metrics: Arc<Metrics>,
    /// Bound for calls whose caller set no deadline (e.g. BeginPlay with await_outcome).
    pub default_timeout: Duration,
    /// Permits for concurrently running calls (`--max-concurrent-requests`); excess calls are
    /// refused at once rather than queued behind a slow gateway.
    pub in_flight: Arc<tokio::sync::Semaphore>,
    /// Cancelled when a drain runs out of time for the calls still in flight: they are
    /// answered `OUTCOME_UNKNOWN` instead of having their connection cut (which a client sees
    /// as UNAVAILABLE, "retry": wrong for a play the gateway may have started).
    pub cut: CancellationToken,
    /// This instance's agent-pool ownership (`--etcd-endpoints`), for `WatchOwnership`.
    pub pool: Option<Arc<crate::pool::Ownership>>,
}

impl Bridge {
    /// Runs one unary handler inside a span, recording its status and latency.
    async fn observe<T>(
        &self,
        method: &'static str,
        agent_id: &str,
        metadata: &MetadataMap,
        handler: impl Future<Output = Result<T, Status>>,
    ) -> Result<T, Status> {
        let started = Instant::now();
        // Debug level: free unless a layer wants it (the OTLP exporter, or RUST_LOG=debug).
        let span = tracing::debug_span!(
            "rpc",
            otel.name = method,
            otel.kind = "server",
            method,
            agent_id,
            code = tracing::field::Empty
        );
        crate::telemetry::adopt_remote_parent(&span, metadata);
        let result = match self.in_flight.try_acquire() {
            Ok(_permit) => tokio::select! {
                biased;
                result = handler.instrument(span.clone()) => result,
                () = self.cut.cancelled() => Err(status::outcome_unknown(
                    "the bridge shut down before this call finished; it may have reached the gateway and taken effect",
                )),
            },
            Err(_) => Err(status::with_info(
                tonic::Code::ResourceExhausted,
                "too many calls in flight on this bridge (--max-concurrent-requests); retry with backoff",
                status::BRIDGE_DOMAIN,
                "TOO_MANY_REQUESTS",
                &[],
            )),
        };
        let code = match &result {
            Ok(_) => "OK",
            Err(s) => status::code_label(s.code()),
        };
        span.record("code", code);
        self.metrics.rpc(method, code, Some(started.elapsed()));
        if let Err(s) = &result {
            tracing::debug!(parent: &span, method, agent_id, code, message = s.message(), "rpc failed");
        }
        result
    }
}

/// The caller's deadline from `grpc-timeout`, made slightly earlier than tonic's own timer so
/// the bridge answers DEADLINE_EXCEEDED itself (tonic's timer answers CANCELLED).
pub fn deadline(metadata: &MetadataMap) -> Option<Instant> {
    let raw = metadata.get("grpc-timeout")?.to_str().ok()?;
    let timeout = parse_grpc_timeout(raw)?;
    // Room for scheduling between tonic's timer (started on arrival) and this handler.
    let margin = (timeout / 10).clamp(Duration::from_millis(5), Duration::from_millis(100));
    Some(Instant::now() + timeout.saturating_sub(margin))
}

/// Parses the gRPC wire format `<1-8 digits><H|M|S|m|u|n>`.
pub fn parse_grpc_timeout(raw: &str) -> Option<Duration> {
    if raw.len() < 2 || raw.len() > 9 {
        return None;
    }
    let (digits, unit) = raw.split_at(raw.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_units() {
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("100u"), Some(Duration::from_micros(100)));
        assert_eq!(parse_grpc_timeout("S"), None);
        assert_eq!(parse_grpc_timeout("123456789S"), None);
        assert_eq!(parse_grpc_timeout("5x"), None);
    }
}
