//! Keep-signed-in: agents of the agents file are signed in at start and again after the gateway
//! ends their session, with back-off, until signed out or the bridge stops. Signing in again is
//! a plain `login` unless the ended session was the bridge's own (see [`super::EndReason`]).

use super::params::CredentialsHash;
use super::{lock_owned, SessionError, Sessions, SignInParams, Slot};
use crate::events::PollSettings;
use crate::readiness::{Pinned, PinnedAgents};
use std::sync::Arc;

impl Sessions {
    /// Signs an agent in now and keeps it signed in (re-sign-in with back-off after the
    /// gateway ends its session) until it is signed out or the bridge stops. For `--agents-file`
    /// and the agent pool; calling it again for an agent already kept changes nothing but the
    /// credentials.
    pub fn keep_signed_in(&self, agent_id: &str, params: SignInParams) {
        let slot = self.slots().entry(Arc::from(agent_id)).or_default().clone();
        {
            let mut inner = slot.lock();
            inner.creds_hash = Some(CredentialsHash::of(&params));
            inner.creds = Some(params);
            inner.keep_signed_in = true;
        }
        if slot.running().is_none() {
            self.shared
                .pinned
                .set(agent_id, Pinned::Down("not signed in yet".into()));
        }
        self.spawn_keep_signed_in(Arc::from(agent_id), true);
    }

    /// Signs the agent in again in the background: until it succeeds (with back-off) when
    /// `until_signed_in` or the agent is kept signed in, else once. At most one such loop runs
    /// per agent (a second request while one runs is that loop's job). At most
    /// `sign_in_concurrency` attempts run at once bridge-wide, so pinning many agents (or the
    /// gateway ending every session) does not flood the gateway with logins.
    pub(super) fn spawn_keep_signed_in(&self, agent_id: Arc<str>, until_signed_in: bool) {
        let Some(slot) = self.slots().get(&agent_id).cloned() else {
            return;
        };
        if std::mem::replace(&mut slot.lock().keeper, true) {
            return;
        }
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
                // The coordinator decides now: the pool signs the agent in where it owns it. A
                // session signed in meanwhile (by the pool) is never ended from here.
                if let Err(SessionError::NotOwned { .. } | SessionError::PoolUnsure { .. }) = result
                {
                    slot.lock().keeper = false;
                    return this.forget_idle(&agent_id).await;
                }
                // Decided and written under the lifecycle lock: a sign-out or `forget` (which
                // remove the slot under it) never sees the state written after it, and a poll
                // loop ending meanwhile either finds this loop gone or leaves it the work.
                let guard = lock_owned(&slot).await;
                if !this.is_registered(&agent_id, &slot) {
                    return;
                }
                let keep = until_signed_in || slot.lock().keep_signed_in;
                let done = match result {
                    _ if slot.running().is_some() => {
                        if keep {
                            this.shared.pinned.set(&agent_id, Pinned::Held);
                        }
                        true
                    }
                    Ok(_) => !keep,
                    Err(SessionError::ShuttingDown | SessionError::NotSignedIn { .. }) => true,
                    Err(e) if !keep => {
                        tracing::warn!(agent_id = %agent_id, error = %e, "signing in again failed; the next call tries again");
                        true
                    }
                    Err(e) => {
                        this.shared.pinned.set(&agent_id, pinned_failure(&e));
                        failures += 1;
                        tracing::warn!(agent_id = %agent_id, error = %e, failures, "automatic sign-in failed; retrying");
                        false
                    }
                };
                if done {
                    slot.lock().keeper = false;
                    return;
                }
                drop(guard);
                tokio::select! {
                    () = this.shared.shutdown.cancelled() => return,
                    () = tokio::time::sleep(crate::events::backoff(&settings, failures)) => {}
                }
            }
        });
    }

    /// Whether `slot` is still the agent's registered slot.
    fn is_registered(&self, agent_id: &str, slot: &Arc<Slot>) -> bool {
        self.slots()
            .get(agent_id)
            .is_some_and(|s| Arc::ptr_eq(s, slot))
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

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::gateway::{GatewayClient, GatewayConfig};
    use crate::secret::Password;
    use crate::session::SessionSettings;
    use crate::telemetry::Metrics;
    use std::time::Duration;

    /// A registry whose gateway refuses every connection, so sign-ins fail at once.
    pub(in crate::session) fn unreachable_gateway() -> Sessions {
        let metrics = Arc::new(Metrics::default());
        let gateway = GatewayClient::new(
            GatewayConfig {
                base_url: "https://127.0.0.1:1".into(),
                ca_pem: None,
                client_identity_pem: None,
                insecure_skip_verify: false,
                request_timeout: Duration::from_secs(1),
                poll_timeout: Duration::from_secs(15),
                connect_timeout: Duration::from_secs(1),
                max_body_bytes: 1 << 20,
            },
            metrics.clone(),
        )
        .expect("client");
        Sessions::new(gateway, SessionSettings::default(), metrics)
    }

    fn params() -> SignInParams {
        SignInParams::new(Password::new("pw".into()), "88005".into())
    }

    /// Issue 17 defect 6: keeping an agent signed in again (the pool does so on each lease
    /// it gains) must not start a second loop beside the one still retrying.
    #[tokio::test]
    async fn at_most_one_keeper_loop_runs_per_agent() {
        let sessions = unreachable_gateway();
        let others = sessions.shared.tasks.len(); // the reaper
        sessions.keep_signed_in("1001", params());
        sessions.keep_signed_in("1001", params());
        assert_eq!(sessions.shared.tasks.len(), others + 1);
    }

    /// Issue 17 defect 6: forgetting an agent clears its readiness state even when its slot is
    /// already gone (a keeper that wrote after the slot went must not leave `/readyz` 503).
    #[tokio::test]
    async fn forgetting_an_agent_clears_its_readiness_state_without_a_slot() {
        let sessions = unreachable_gateway();
        sessions
            .shared
            .pinned
            .set("1001", Pinned::Down("not signed in".into()));
        sessions.forget("1001").await;
        assert_eq!(sessions.shared.pinned.blocking(), 0);
    }
}
