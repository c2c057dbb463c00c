//! `ccgw.v1.AgentSessionService`.

use super::frame::{self, EncodedEvent};
use super::status;
use super::validate::Violations;
use super::watch::{self, EventStream};
use super::{deadline, validate, Bridge};
use crate::proto::server::agent_session_service_server::AgentSessionService;
use crate::proto::*;
use crate::secret::Password;
use crate::session::{SessionError, SessionInfo, SignInParams, State};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};
use tonic::{Request, Response, Status};

/// The agent-session service over a [`Bridge`].
#[derive(Clone)]
pub struct AgentSessionApi(pub Bridge);

/// The current ownership, then one snapshot per change, until the pool stops (drain); with
/// `pool_owners`, each snapshot also carries the pool-wide agent → owner table.
fn ownership_stream(
    pool: Arc<crate::pool::Ownership>,
    pool_owners: bool,
) -> EventStream<Ownership> {
    use futures::StreamExt;
    let draining = pool.draining();
    let snapshots = tokio_stream::wrappers::WatchStream::new(pool.subscribe()).map(move |_| {
        let s = pool.status();
        let table = if pool_owners {
            pool.pool_owners()
        } else {
            Vec::new()
        };
        Ok(Ownership {
            instance: s.instance,
            agent_ids: s.owned,
            lease_state: s.lease.label().to_owned(),
            waiting_for_gateway: s.waiting_for_gateway,
            pool_owners: table
                .into_iter()
                .map(|(agent_id, owner)| AgentOwner {
                    agent_id,
                    instance: owner.unwrap_or_default(),
                })
                .collect(),
        })
    });
    let end = futures::stream::once(async {
        Err(super::status::with_info(
            tonic::Code::Unavailable,
            "the bridge is shutting down",
            super::status::BRIDGE_DOMAIN,
            "SHUTTING_DOWN",
            &[],
        ))
    });
    Box::pin(snapshots.take_until(draining.cancelled_owned()).chain(end))
}

fn session_proto(info: SessionInfo) -> Session {
    let state = match info.state {
        State::SigningIn => SessionState::SigningIn,
        State::SignedIn => SessionState::SignedIn,
        State::SigningOut => SessionState::SigningOut,
        State::Ended => SessionState::Ended,
    };
    Session {
        agent_id: info.agent_id,
        session_id: info.session_id,
        state: state as i32,
        signed_in_at: info.signed_in_at.map(Into::into),
        watchers: info.watchers,
        last_poll_at: (info.last_poll_at_ms > 0)
            .then(|| (UNIX_EPOCH + Duration::from_millis(info.last_poll_at_ms)).into()),
        last_sequence: info.last_sequence,
        can_resign_in: info.can_resign_in,
    }
}

#[tonic::async_trait]
impl AgentSessionService for AgentSessionApi {
    async fn sign_in(&self, request: Request<SignInRequest>) -> Result<Response<Session>, Status> {
        let (meta, _, r) = request.into_parts();
        let deadline = deadline(&meta);
        let bridge = &self.0;
        bridge
            .observe("SignIn", &r.agent_id, &meta, async {
                let mut v = Violations::default();
                bridge.limits.agent_id(&mut v, "agent_id", &r.agent_id);
                validate::password(&mut v, "password", &r.password);
                validate::phone_number(&mut v, "phone_number", &r.phone_number);
                validate::agent_type(&mut v, "agent_type", r.agent_type);
                validate::status(&mut v, "status", r.status);
                v.check()?;
                let params = SignInParams {
                    password: Password::new(r.password),
                    phone_number: r.phone_number,
                    force: r.force,
                    auto_answer: r.auto_answer,
                    auto_enter_idle: r.auto_enter_idle,
                    release_phone: r.release_phone,
                    agent_type: r.agent_type,
                    status: r.status,
                };
                let session = bridge
                    .sessions
                    .sign_in(&r.agent_id, params, deadline)
                    .await?;
                Ok(Response::new(session_proto(
                    bridge.sessions.view_of_session(&session),
                )))
            })
            .await
    }

    async fn sign_out(
        &self,
        request: Request<SignOutRequest>,
    ) -> Result<Response<SignOutResponse>, Status> {
        let (meta, _, r) = request.into_parts();
        let deadline = deadline(&meta);
        let bridge = &self.0;
        bridge
            .observe("SignOut", &r.agent_id, &meta, async {
                let mut v = Violations::default();
                bridge.limits.agent_id(&mut v, "agent_id", &r.agent_id);
                v.check()?;
                // Idempotent: the goal (this bridge holds no session for the agent) is reached,
                // so a retried SignOut whose first answer was lost is OK too. Nothing is sent.
                let message = match bridge.sessions.sign_out(&r.agent_id, deadline).await {
                    Ok(()) => String::new(),
                    Err(SessionError::NotSignedIn { agent_id }) => format!(
                        "agent {agent_id} was not signed in through this bridge; nothing was sent to the gateway"
                    ),
                    Err(e) => return Err(e.into()),
                };
                Ok(Response::new(SignOutResponse { message }))
            })
            .await
    }

    async fn get_session(
        &self,
        request: Request<GetSessionRequest>,
    ) -> Result<Response<Session>, Status> {
        let (meta, _, r) = request.into_parts();
        let bridge = &self.0;
        bridge
            .observe("GetSession", &r.agent_id, &meta, async {
                let mut v = Violations::default();
                bridge.limits.agent_id(&mut v, "agent_id", &r.agent_id);
                v.check()?;
                let info = bridge
                    .sessions
                    .view_of_agent(&r.agent_id)
                    .map_err(|e| match e {
                        SessionError::NotSignedIn { agent_id } => {
                            status::session_not_found(&agent_id)
                        }
                        e => e.into(),
                    })?;
                Ok(Response::new(session_proto(info)))
            })
            .await
    }

    async fn list_sessions(
        &self,
        request: Request<ListSessionsRequest>,
    ) -> Result<Response<ListSessionsResponse>, Status> {
        let meta = request.into_parts().0;
        let bridge = &self.0;
        bridge
            .observe("ListSessions", "", &meta, async {
                let sessions = bridge
                    .sessions
                    .list()
                    .into_iter()
                    .map(session_proto)
                    .collect();
                Ok(Response::new(ListSessionsResponse { sessions }))
            })
            .await
    }

    type WatchAgentEventsStream = EventStream<EncodedEvent>;
    type WatchOwnershipStream = EventStream<Ownership>;

    async fn watch_ownership(
        &self,
        request: Request<WatchOwnershipRequest>,
    ) -> Result<Response<Self::WatchOwnershipStream>, Status> {
        let (meta, _, r) = request.into_parts();
        let bridge = &self.0;
        bridge
            .observe("WatchOwnership", "", &meta, async {
                let pool = bridge.pool.clone().ok_or_else(|| {
                    super::status::with_info(
                        tonic::Code::FailedPrecondition,
                        "this bridge runs without an agent pool (--etcd-endpoints)",
                        super::status::BRIDGE_DOMAIN,
                        "POOL_DISABLED",
                        &[],
                    )
                })?;
                Ok(Response::new(ownership_stream(pool, r.include_pool_owners)))
            })
            .await
    }

    async fn watch_agent_events(
        &self,
        request: Request<WatchAgentEventsRequest>,
    ) -> Result<Response<Self::WatchAgentEventsStream>, Status> {
        let (meta, _, r) = request.into_parts();
        let bridge = &self.0;
        bridge
            .observe("WatchAgentEvents", &r.agent_id, &meta, async {
                let mut v = Violations::default();
                bridge.limits.agent_id(&mut v, "agent_id", &r.agent_id);
                watch::check_resume(&mut v, r.resume_after, &r.session_id);
                v.check()?;
                let (session, sub) =
                    watch::subscribe(&bridge.sessions, &r.agent_id, r.resume_after, &r.session_id)?;
                let stream = watch::stream(session, sub, bridge.metrics.clone(), |e| {
                    Some(frame::agent_frame(e))
                });
                Ok(Response::new(stream))
            })
            .await
    }
}
