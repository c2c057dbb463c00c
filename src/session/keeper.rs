//! Keep-signed-in: agents of the agents file are signed in at start and again after the gateway
//! ends their session, with back-off, until signed out or the bridge stops. Signing in again is
//! a plain `login` unless the ended session was the bridge's own (see [`super::EndReason`]).

use super::{SessionError, Sessions, SignInParams};
use crate::events::PollSettings;
use crate::readiness::{Pinned, PinnedAgents};
use std::sync::Arc;

impl Sessions {
    /// Signs an agent in now and keeps it signed in (re-sign-in with back-off after the
    /// gateway ends its session) until it is signed out or the bridge stops. For `--agents-file`.
    pub fn keep_signed_in(&self, agent_id: &str, params: SignInParams) {
        let slot = self.slots().entry(Arc::from(agent_id)).or_default().clone();
        {
            let mut inner = slot.lock();
            inner.creds = Some(params);
            inner.keep_signed_in = true;
        }
        self.shared
            .pinned
            .set(agent_id, Pinned::Down("not signed in yet".into()));
        self.spawn_keep_signed_in(Arc::from(agent_id), true);
    }

    /// Signs the agent in again in the background: until it succeeds (with back-off) when
    /// `until_signed_in`, else once. At most `sign_in_concurrency` of these attempts run at
    /// once bridge-wide, so pinning many agents (or the gateway ending every session) does not
    /// flood the gateway with logins.
    pub(super) fn spawn_keep_signed_in(&self, agent_id: Arc<str>, until_signed_in: bool) {
        let this = self.clone();
        let max = self.shared.settings.resign_backoff_max;
        self.shared.tasks.spawn(async move {
            let settings = PollSettings {
                backoff_max: max,
                ..PollSettings::default()
            };
            let mut failures = 0u32;
            loop {
                // One permit per attempt, not per agent: an agent backing off does not hold
                // back the others.
                let permit = tokio::select! {
                    () = this.shared.shutdown.cancelled() => return,
                    permit = this.shared.background_sign_ins.acquire() => permit,
                };
                let result = this.resign_in(&agent_id, None, None).await;
                drop(permit);
                match result {
                    Ok(_) if until_signed_in => {
                        return this.shared.pinned.set(&agent_id, Pinned::Held)
                    }
                    Ok(_) => return,
                    // The coordinator decides now: the pool signs the agent in where it owns
                    // it. A session signed in meanwhile is never ended from here.
                    Err(SessionError::NotOwned { .. } | SessionError::PoolUnsure { .. }) => {
                        return this.forget_idle(&agent_id).await
                    }
                    Err(SessionError::ShuttingDown | SessionError::NotSignedIn { .. }) => return,
                    Err(e) if !until_signed_in => {
                        tracing::warn!(agent_id = %agent_id, error = %e, "signing in again failed; the next call tries again");
                        return;
                    }
                    Err(e) => {
                        this.shared.pinned.set(&agent_id, pinned_failure(&e));
                        failures += 1;
                        tracing::warn!(agent_id = %agent_id, error = %e, failures, "automatic sign-in failed; retrying");
                    }
                }
                tokio::select! {
                    () = this.shared.shutdown.cancelled() => return,
                    () = tokio::time::sleep(crate::events::backoff(&settings, failures)) => {}
                }
            }
        });
    }

    /// The pinned agents' states, for readiness.
    pub fn pinned(&self) -> Arc<PinnedAgents> {
        self.shared.pinned.clone()
    }
}

/// A pinned agent's failed sign-in, for readiness: held by another client (`100-002`) does not
/// block it, anything else does (with the failure as the reason).
fn pinned_failure(e: &SessionError) -> Pinned {
    match e {
        SessionError::Gateway(g) if g.retcode() == Some("100-002") => Pinned::HeldElsewhere,
        e => Pinned::Down(e.to_string()),
    }
}
