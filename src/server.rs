//! `run`: the whole bridge on two bound listeners until `shutdown` resolves, then a bounded drain.
//!
//! `main` and the end-to-end tests call the same function (the mini-redis shape), so what the
//! tests prove is what ships.

use crate::callback::CallbackServerError;
use crate::config::Config;
use crate::gateway::{ClientBuildError, GatewayClient};
use crate::grpc::auth::TokenCheck;
use crate::grpc::limit::RequestLimit;
use crate::grpc::{AgentSessionApi, Bridge, RecordPlayApi};
use crate::pool::{Pool, PoolError};
use crate::proto::server::agent_session_service_server::AgentSessionServiceServer;
use crate::proto::server::record_play_service_server::RecordPlayServiceServer;
use crate::readiness::{Condition, Readiness, ReadyStatus};
use crate::session::Sessions;
use crate::telemetry::Metrics;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

/// The two bound sockets `run` serves on (bound by the caller, so tests can use port 0).
pub struct Listeners {
    /// The gRPC API.
    pub grpc: TcpListener,
    /// Health, metrics and probes; `None` disables the admin listener.
    pub admin: Option<TcpListener>,
    /// Push mode's callback server (`--callback-listen`); needed when `config.callback` is set.
    pub callback: Option<TcpListener>,
}

/// Why the bridge could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The gateway client could not be built from the configuration.
    #[error(transparent)]
    Client(#[from] ClientBuildError),
    /// The reflection descriptors are unusable (a build problem).
    #[error("reflection: {0}")]
    Reflection(String),
    /// A listener failed.
    #[error("serving: {0}")]
    Serve(String),
    /// The agent pool could not start.
    #[error("agent pool: {0}")]
    Pool(#[from] PoolError),
    /// The push callback server could not start.
    #[error(transparent)]
    Callback(#[from] CallbackServerError),
}

/// Service names whose health is reported, besides the overall `""`.
const SERVICES: [&str; 2] = ["ccgw.v1.RecordPlayService", "ccgw.v1.AgentSessionService"];

/// Runs the bridge until `shutdown` resolves, then drains within `config.drain_timeout`:
/// health → NOT_SERVING, event streams end with UNAVAILABLE, unary calls in flight finish,
/// agents are signed out (unless configured not to), and `run` returns.
pub async fn run(
    listeners: Listeners,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    crate::crypto::install_crypto_provider();
    let metrics = Arc::new(Metrics::default());
    if config.gateway.insecure_skip_verify {
        tracing::warn!("--insecure-skip-verify: the gateway's certificate is NOT verified; anyone on the path can read agent passwords");
    }
    let gateway = GatewayClient::new(config.gateway.clone(), metrics.clone())?;
    let sessions = Sessions::new(gateway.clone(), config.sessions.clone(), metrics.clone());
    let pool = match &config.pool {
        Some(pool) => Some(
            Pool::connect(
                pool,
                sessions.clone(),
                config
                    .agents
                    .iter()
                    .map(|a| (a.agent_id.clone(), a.params.clone()))
                    .collect(),
                &metrics,
            )
            .await?,
        ),
        None => {
            if let Some(coordinator) = &config.coordinator {
                sessions.set_gate(coordinator.0.clone());
            }
            for agent in &config.agents {
                sessions.keep_signed_in(&agent.agent_id, agent.params.clone());
            }
            None
        }
    };
    let bridge = Bridge {
        sessions: sessions.clone(),
        limits: Arc::new(config.limits.clone()),
        metrics: metrics.clone(),
        default_timeout: config.gateway.request_timeout,
        in_flight: Arc::new(tokio::sync::Semaphore::new(
            config.server.max_concurrent_requests,
        )),
        cut: CancellationToken::new(),
        pool: pool.as_ref().map(|p| p.ownership().clone()),
    };
    let limits = &config.server;
    if limits.tls.is_none()
        && limits.auth_token.is_none()
        && !listeners
            .grpc
            .local_addr()
            .is_ok_and(|a| a.ip().is_loopback())
    {
        tracing::warn!("the gRPC API listens beyond loopback without --tls-cert or --auth-token-file: any host that reaches it can sign agents in and play recordings");
    }
    let token = TokenCheck::new(limits.auth_token.clone());
    let record_play = InterceptedService::new(
        RequestLimit::new(
            RecordPlayServiceServer::new(RecordPlayApi(bridge.clone()))
                .max_decoding_message_size(limits.max_request_bytes),
            limits.max_request_bytes,
        ),
        token.clone(),
    );
    let agent_session = InterceptedService::new(
        RequestLimit::new(
            AgentSessionServiceServer::new(AgentSessionApi(bridge.clone()))
                .max_decoding_message_size(limits.max_request_bytes),
            limits.max_request_bytes,
        ),
        token,
    );

    let (reporter, health) = tonic_health::server::health_reporter();
    set_health(&reporter, ServingStatus::NotServing).await;
    let error_types = error_detail_descriptors()?;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_file_descriptor_set(error_types.clone())
        .build_v1()
        .map_err(|e| RunError::Reflection(e.to_string()))?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_file_descriptor_set(error_types)
        .build_v1alpha()
        .map_err(|e| RunError::Reflection(e.to_string()))?;

    let stop_grpc = CancellationToken::new();
    let grpc_addr = listeners.grpc.local_addr().ok();
    let mut builder = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .max_concurrent_streams(limits.max_concurrent_streams)
        // Idle watchers behind proxies and NATs are kept alive by HTTP/2 pings.
        .http2_keepalive_interval(Some(limits.keepalive_interval))
        .http2_keepalive_timeout(Some(limits.keepalive_timeout));
    if let Some(server_tls) = &limits.tls {
        let mut tls =
            ServerTlsConfig::new().identity(Identity::from_pem(&server_tls.cert, &server_tls.key));
        if let Some(ca) = &server_tls.client_ca {
            tls = tls.client_ca_root(Certificate::from_pem(ca));
        }
        builder = builder
            .tls_config(tls)
            .map_err(|e| RunError::Serve(format!("--tls-cert/--tls-key: {e}")))?;
    }
    let grpc = builder
        .add_service(health.clone())
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(record_play)
        .add_service(agent_session)
        .serve_with_incoming_shutdown(
            // `serve_with_incoming` skips the builder's `tcp_nodelay`: set it on the incoming
            // stream, or small responses wait out Nagle and delayed ACKs (~40 ms).
            TcpIncoming::from(listeners.grpc).with_nodelay(Some(true)),
            stop_grpc.clone().cancelled_owned(),
        );
    let grpc = tokio::spawn(grpc);

    let stop_callback = CancellationToken::new();
    let callback = match (&config.callback, listeners.callback) {
        (Some(settings), Some(listener)) => {
            let acceptor = crate::callback::acceptor(settings)?;
            tracing::info!(callback_listen = %show_addr(listener.local_addr().ok()), "push mode: callback server serving");
            Some(tokio::spawn(crate::callback::serve(
                listener,
                acceptor,
                settings.clone(),
                sessions.clone(),
                metrics.clone(),
                stop_callback.clone(),
            )))
        }
        (Some(_), None) => {
            return Err(RunError::Serve(
                "--events push needs the callback listener bound".into(),
            ))
        }
        (None, _) => None,
    };

    let ready = Arc::new(ReadyStatus::default());
    let stop_admin = CancellationToken::new();
    let admin_addr = listeners.admin.as_ref().and_then(|l| l.local_addr().ok());
    let admin = listeners.admin.map(|listener| {
        let grpc_health = grpc_router(health.clone());
        let router = admin_router(
            grpc_health,
            AdminState {
                metrics: metrics.clone(),
                sessions: sessions.clone(),
                ready: ready.clone(),
            },
        );
        let stop = stop_admin.clone();
        tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
        })
    });

    let draining = CancellationToken::new();
    let readiness = Readiness {
        gateway,
        pinned: sessions.pinned(),
        idle: Box::new({
            let sessions = sessions.clone();
            move || sessions.is_empty()
        }),
        condition: match &pool {
            Some(pool) => {
                let ownership = pool.ownership().clone();
                Box::new(move || ownership.readiness())
            }
            None => Box::new(|| Condition::Fine),
        },
        status: ready.clone(),
        metrics: metrics.clone(),
    };
    let readiness = tokio::spawn({
        let draining = draining.clone();
        let reporter = reporter.clone();
        async move {
            readiness
                .run(draining, |serving| {
                    let reporter = reporter.clone();
                    async move {
                        let status = if serving {
                            ServingStatus::Serving
                        } else {
                            ServingStatus::NotServing
                        };
                        set_health(&reporter, status).await;
                    }
                })
                .await
        }
    });
    tracing::info!(
        listen = %show_addr(grpc_addr),
        admin = %show_addr(admin_addr),
        version = env!("CARGO_PKG_VERSION"),
        "ccgw-bridge serving"
    );

    shutdown.await;
    tracing::info!(timeout = ?config.drain_timeout, "draining");
    let started = Instant::now();
    draining.cancel();
    if let Some(pool) = &pool {
        pool.freeze();
    }
    // Not awaited: the loop may be inside a gateway probe (up to the connect timeout), and
    // NOT_SERVING must not wait for it.
    readiness.abort();
    ready.draining();
    set_health(&reporter, ServingStatus::NotServing).await;
    sessions.end_event_streams();
    if !config.sign_out_on_shutdown {
        // Agents stay signed in for a replacement instance: stop taking their events from
        // the gateway now, or the events polled during the drain would be lost with the hubs.
        sessions.stop_polling();
    }
    stop_grpc.cancel();
    // One budget for the whole drain. In-flight calls may use it all but a reserve that the
    // sign-outs need (a quarter of it, at most a second); every later wait takes what is left.
    let deadline = started + config.drain_timeout;
    let reserve = if config.sign_out_on_shutdown {
        (config.drain_timeout / 4).min(Duration::from_secs(1))
    } else {
        Duration::ZERO
    };
    let mut grpc = grpc;
    // Calls still running a moment before the cut are answered OUTCOME_UNKNOWN (they may have
    // reached the gateway); only a call that cannot even be answered loses its connection.
    let answer_by = (config.drain_timeout / 10).min(Duration::from_millis(100));
    if tokio::time::timeout_at((deadline - reserve - answer_by).into(), &mut grpc)
        .await
        .is_err()
    {
        tracing::warn!(
            "gRPC calls still open at the drain deadline; answering them OUTCOME_UNKNOWN"
        );
        bridge.cut.cancel();
        if tokio::time::timeout_at((deadline - reserve).into(), &mut grpc)
            .await
            .is_err()
        {
            grpc.abort();
        }
    }
    if let Some(pool) = pool {
        // Hand the pool's agents over first (sign out, then release), within the budget.
        let leave = pool.leave(&sessions, config.sign_out_on_shutdown, Some(deadline));
        if tokio::time::timeout_at(deadline.into(), leave)
            .await
            .is_err()
        {
            tracing::warn!("pool hand-over still running at the drain deadline");
        }
    }
    if config.sign_out_on_shutdown
        && tokio::time::timeout_at(deadline.into(), sessions.sign_out_all(Some(deadline)))
            .await
            .is_err()
    {
        tracing::warn!("sign-outs still running at the drain deadline");
    }
    sessions.stop_polling();
    // Poll loops stop at once once cancelled; the floor only covers their wake-up when the
    // budget is already spent.
    let rest = || deadline.max(Instant::now() + Duration::from_millis(100));
    let _ = tokio::time::timeout_at(rest().into(), sessions.wait_stopped()).await;
    // Events pushed during the drain had no stream left to go to; the sign-outs are done.
    stop_callback.cancel();
    if let Some(callback) = callback {
        let _ = tokio::time::timeout_at(rest().into(), callback).await;
    }
    stop_admin.cancel();
    if let Some(mut admin) = admin {
        // The admin port has nothing in flight worth the drain budget (probes, scrapes), but a
        // client's gRPC health `Watch` stays open until the client goes: a short grace, then
        // its connections are cut (it held the drain for the whole --drain-timeout).
        let grace = Instant::now() + Duration::from_millis(200);
        if tokio::time::timeout_at(grace.min(rest()).into(), &mut admin)
            .await
            .is_err()
        {
            admin.abort();
        }
    }
    tracing::info!(elapsed_ms = started.elapsed().as_millis() as u64, "drained");
    Ok(())
}

/// A listener's address for the start-up log line.
fn show_addr(a: Option<std::net::SocketAddr>) -> String {
    a.map_or_else(|| "off".to_owned(), |a| a.to_string())
}

/// `google.rpc.Status` and the error details (`ErrorInfo`, `BadRequest`, `RetryInfo`,
/// `RequestInfo`, …) with their imports (`any.proto`, `duration.proto`), for reflection: a
/// client that knows no .proto file (grpcurl, grpcui, Postman) can then decode the details of
/// a refused call. tonic-types ships them under bare file names; they are served under their
/// canonical paths (`google/rpc/status.proto`, `google/rpc/error_details.proto`).
fn error_detail_descriptors() -> Result<prost_types::FileDescriptorSet, RunError> {
    use prost::Message;
    let mut set = prost_types::FileDescriptorSet::decode(tonic_types::pb::FILE_DESCRIPTOR_SET)
        .map_err(|e| RunError::Reflection(format!("google.rpc descriptors: {e}")))?;
    for file in &mut set.file {
        if let Some(name) = file.name.as_mut() {
            if matches!(name.as_str(), "status.proto" | "error_details.proto") {
                *name = format!("google/rpc/{name}");
            }
        }
    }
    Ok(set)
}

async fn set_health(reporter: &HealthReporter, status: ServingStatus) {
    reporter.set_service_status("", status).await;
    for name in SERVICES {
        reporter.set_service_status(name, status).await;
    }
}

#[derive(Clone)]
struct AdminState {
    metrics: Arc<Metrics>,
    sessions: Sessions,
    ready: Arc<ReadyStatus>,
}

/// The gRPC health service as an axum router without a fallback (tonic's `Routes` adds one that
/// answers every unknown path with HTTP 200).
fn grpc_router<S>(svc: S) -> axum::Router
where
    S: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        > + tonic::server::NamedService
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    use tower::ServiceExt;
    axum::Router::new().route_service(
        &format!("/{}/{{*rest}}", S::NAME),
        svc.map_request(|req: http::Request<axum::body::Body>| req.map(tonic::body::Body::new)),
    )
}

/// Plain-HTTP probes and metrics, merged with the gRPC health service (`grpc_health`) so one
/// pod-IP port serves the kubelet's HTTP and gRPC probes alike.
fn admin_router(grpc_health: axum::Router, state: AdminState) -> axum::Router {
    let http = axum::Router::new()
        .route("/livez", axum::routing::get(|| async { "ok\n" }))
        .route("/readyz", axum::routing::get(readyz))
        .route("/metrics", axum::routing::get(metrics_text))
        .with_state(state);
    grpc_health.merge(http)
}

async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    let code = if state.ready.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, state.ready.body().to_string())
}

/// `/metrics` in the format the scraper asks for (`Accept`): OpenMetrics or text 0.0.4.
async fn metrics_text(
    State(state): State<AdminState>,
    headers: axum::http::HeaderMap,
) -> impl IntoResponse {
    state.metrics.set_sessions(&state.sessions.count_by_state());
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let format = crate::telemetry::Exposition::negotiate(accept);
    (
        [(header::CONTENT_TYPE, format.content_type())],
        state.metrics.render_as(format),
    )
}
