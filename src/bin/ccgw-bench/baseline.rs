//! The baselines the bridge is measured against, each run as its own process (`ccgw-bench
//! __serve KIND …`, started by the scenarios, never by hand):
//!
//! - `relay`: the thinnest hand-written glue — one tonic unary handler making one HTTPS call to
//!   the gateway with the bridge's client settings, a typed envelope decode, one worker thread,
//!   agents signed in once at start. What a team would write instead of the bridge.
//! - `echo`: the same tonic service answering at once: the cost of gRPC itself.
//! - `broadcast`: the fan-out floor — `WatchPlayEvents` streams fed by one pre-encoded frame per
//!   event. `BeginPlay { agent_id: a, voice_path: "ROUND,AGENT" }` numbers and encodes the event
//!   the bridge would send for the fan-out scenario's round (same fields, same bytes) once and
//!   broadcasts it to every stream of *a*.
//!
//! Each prints `url=http://ADDR` on stdout once it listens.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use ccgw_bridge::grpc::frame::EncodedEvent;
use ccgw_bridge::proto::server::record_play_service_server::{
    RecordPlayService, RecordPlayServiceServer,
};
use ccgw_bridge::proto::{
    BeginPlayRequest, BeginPlayResponse, FastForwardRequest, PausePlayRequest, PlayControlResponse,
    PlayEvent, PlayEventType, ResumePlayRequest, RewindRequest, StopPlayRequest,
    WatchPlayEventsRequest,
};
use clap::{Parser, ValueEnum};
use futures::{Stream, StreamExt};
use prost::Message;
use reqwest::header::{HeaderValue, ACCEPT, CONTENT_TYPE, COOKIE};
use tonic::{Request, Response, Status};

use crate::clients::{self, Direct, DirectAgent};
use crate::procs::BoxError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Kind {
    Relay,
    Echo,
    Broadcast,
}

#[derive(Debug, Parser)]
#[command(name = "ccgw-bench __serve")]
pub struct ServeArgs {
    kind: Kind,
    /// relay: the simulator's base URL.
    #[arg(long, default_value = "")]
    sim_url: String,
    /// relay: the simulator's CA certificate.
    #[arg(long, default_value = "")]
    ca: PathBuf,
    /// relay: agents `first .. first+count` are signed in at start.
    #[arg(long, default_value_t = 0)]
    first: usize,
    #[arg(long, default_value_t = 0)]
    count: usize,
}

/// Entry point of `ccgw-bench __serve …`: one worker thread, like the bridge's default.
pub fn serve_main(argv: impl Iterator<Item = String>) -> Result<(), BoxError> {
    let args = ServeArgs::parse_from(argv);
    let _ = rustls::crypto::ring::default_provider().install_default();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?
        .block_on(serve(args))
}

async fn serve(args: ServeArgs) -> Result<(), BoxError> {
    let service = match args.kind {
        Kind::Echo => Baseline::Echo,
        Kind::Relay => Baseline::Relay(Arc::new(Relay::start(&args).await?)),
        Kind::Broadcast => Baseline::Broadcast(Arc::new(Broadcast::default())),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr: SocketAddr = listener.local_addr()?;
    println!("url=http://{addr}");
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .max_concurrent_streams(Some(1000))
        .add_service(RecordPlayServiceServer::new(service))
        .serve_with_incoming(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
        )
        .await?;
    Ok(())
}

enum Baseline {
    Echo,
    Relay(Arc<Relay>),
    Broadcast(Arc<Broadcast>),
}

/// The hand-written glue: agent → (Guid, URLs) fixed at start, one HTTPS exchange per call.
struct Relay {
    http: reqwest::Client,
    cookie: HeaderValue,
    agents: HashMap<String, DirectAgent>,
}

#[derive(serde::Serialize)]
struct PlayBody<'a> {
    voicepath: &'a str,
}

#[derive(serde::Deserialize)]
struct Envelope {
    retcode: String,
    #[serde(default)]
    message: String,
}

static JSON_UTF8: HeaderValue = HeaderValue::from_static("application/json; charset=UTF-8");
static JSON: HeaderValue = HeaderValue::from_static("application/json");

impl Relay {
    async fn start(args: &ServeArgs) -> Result<Relay, BoxError> {
        let direct = Direct::at(&args.sim_url, &args.ca)?;
        let ids: Vec<String> = (args.first..args.first + args.count)
            .map(|i| i.to_string())
            .collect();
        let agents = clients::sign_in_direct(&direct, &ids, 64).await?;
        Ok(Relay {
            http: clients::https_client_trusting(&args.ca)?,
            cookie: HeaderValue::from_static("ccgwsticky=AgentGateway0"),
            agents: agents.into_iter().map(|a| (a.id.clone(), a)).collect(),
        })
    }

    async fn exchange(
        &self,
        request: reqwest::RequestBuilder,
        agent: &DirectAgent,
    ) -> Result<String, Status> {
        let response = request
            .header(CONTENT_TYPE, JSON_UTF8.clone())
            .header(ACCEPT, JSON.clone())
            .header("Guid", agent.guid.clone())
            .header(COOKIE, self.cookie.clone())
            .send()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        if !response.status().is_success() {
            return Err(Status::unknown(format!("HTTP {}", response.status())));
        }
        let bytes = response
            .bytes()
            .await
            .map_err(|e| Status::unknown(e.to_string()))?;
        let envelope: Envelope =
            serde_json::from_slice(&bytes).map_err(|e| Status::unknown(e.to_string()))?;
        if envelope.retcode != "0" {
            return Err(Status::failed_precondition(format!(
                "retcode {}",
                envelope.retcode
            )));
        }
        Ok(envelope.message)
    }

    fn agent(&self, id: &str) -> Result<&DirectAgent, Status> {
        self.agents
            .get(id)
            .ok_or_else(|| Status::failed_precondition("agent not signed in"))
    }
}

/// The fan-out floor: per agent, a broadcast channel of shared frames and a sequence counter.
#[derive(Default)]
struct Broadcast {
    agents: std::sync::Mutex<HashMap<String, (tokio::sync::broadcast::Sender<Bytes>, u64)>>,
}

impl Broadcast {
    fn sender(&self, agent: &str) -> tokio::sync::broadcast::Sender<Bytes> {
        let mut map = self.agents.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(agent.to_owned())
            .or_insert_with(|| (tokio::sync::broadcast::Sender::new(1024), 0))
            .0
            .clone()
    }

    /// Encodes the fan-out scenario's event for `round,agent` once and sends it to every stream.
    fn publish(&self, agent_id: &str, spec: &str) -> Result<(), Status> {
        let (round, agent) = spec
            .split_once(',')
            .and_then(|(r, a)| Some((r.parse::<f64>().ok()?, a.parse::<f64>().ok()?)))
            .ok_or_else(|| Status::invalid_argument("voice_path must be ROUND,AGENT"))?;
        let number = |n| prost_types::Value {
            kind: Some(prost_types::value::Kind::NumberValue(n)),
        };
        let (tx, sequence) = {
            let mut map = self.agents.lock().unwrap_or_else(|p| p.into_inner());
            let entry = map
                .entry(agent_id.to_owned())
                .or_insert_with(|| (tokio::sync::broadcast::Sender::new(1024), 0));
            entry.1 += 1;
            (entry.0.clone(), entry.1)
        };
        let frame = PlayEvent {
            sequence,
            session_id: "floor".into(),
            agent_id: agent_id.to_owned(),
            r#type: PlayEventType::PlayJumped as i32,
            event_type: FANOUT_EVENT_TYPE.into(),
            received_at: Some(std::time::SystemTime::now().into()),
            content: Some(prost_types::Struct {
                fields: [
                    ("round".to_owned(), number(round)),
                    ("agent".to_owned(), number(agent)),
                ]
                .into_iter()
                .collect(),
            }),
        }
        .encode_to_vec();
        let _ = tx.send(Bytes::from(frame));
        Ok(())
    }
}

/// The event type the fan-out scenario releases.
pub const FANOUT_EVENT_TYPE: &str = "AgentMediaEvent_JumpPlayDone";

type FrameStream = Pin<Box<dyn Stream<Item = Result<EncodedEvent, Status>> + Send>>;

fn unimplemented<T>() -> Result<Response<T>, Status> {
    Err(Status::unimplemented("not part of the baseline"))
}

#[tonic::async_trait]
impl RecordPlayService for Baseline {
    async fn begin_play(
        &self,
        request: Request<BeginPlayRequest>,
    ) -> Result<Response<BeginPlayResponse>, Status> {
        match self {
            Baseline::Echo => Ok(Response::new(BeginPlayResponse::default())),
            Baseline::Relay(relay) => {
                let req = request.into_inner();
                let agent = relay.agent(&req.agent_id)?;
                let body = serde_json::to_vec(&PlayBody {
                    voicepath: &req.voice_path,
                })
                .map_err(|e| Status::internal(e.to_string()))?;
                let message = relay
                    .exchange(relay.http.put(&agent.play_url).body(body), agent)
                    .await?;
                Ok(Response::new(BeginPlayResponse {
                    message,
                    outcome_sequence: None,
                }))
            }
            Baseline::Broadcast(b) => {
                let req = request.get_ref();
                b.publish(&req.agent_id, &req.voice_path)?;
                Ok(Response::new(BeginPlayResponse::default()))
            }
        }
    }

    async fn stop_play(
        &self,
        request: Request<StopPlayRequest>,
    ) -> Result<Response<PlayControlResponse>, Status> {
        match self {
            Baseline::Relay(relay) => {
                let agent = relay.agent(&request.get_ref().agent_id)?;
                let message = relay
                    .exchange(relay.http.delete(&agent.stop_url), agent)
                    .await?;
                Ok(Response::new(PlayControlResponse { message }))
            }
            _ => Ok(Response::new(PlayControlResponse::default())),
        }
    }

    async fn pause_play(
        &self,
        _: Request<PausePlayRequest>,
    ) -> Result<Response<PlayControlResponse>, Status> {
        unimplemented()
    }

    async fn resume_play(
        &self,
        _: Request<ResumePlayRequest>,
    ) -> Result<Response<PlayControlResponse>, Status> {
        unimplemented()
    }

    async fn fast_forward(
        &self,
        _: Request<FastForwardRequest>,
    ) -> Result<Response<PlayControlResponse>, Status> {
        unimplemented()
    }

    async fn rewind(
        &self,
        _: Request<RewindRequest>,
    ) -> Result<Response<PlayControlResponse>, Status> {
        unimplemented()
    }

    type WatchPlayEventsStream = FrameStream;

    async fn watch_play_events(
        &self,
        request: Request<WatchPlayEventsRequest>,
    ) -> Result<Response<Self::WatchPlayEventsStream>, Status> {
        let Baseline::Broadcast(b) = self else {
            return unimplemented();
        };
        let rx = b.sender(&request.get_ref().agent_id).subscribe();
        let stream = tokio_stream::wrappers::BroadcastStream::new(rx).map(|r| {
            r.map(EncodedEvent)
                .map_err(|e| Status::resource_exhausted(e.to_string()))
        });
        Ok(Response::new(Box::pin(stream)))
    }
}
