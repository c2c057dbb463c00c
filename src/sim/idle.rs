//! The vendor's idle sign-out (`MAXTIME`): a timer over every agent.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::shared::Shared;
use super::state::EndCause;

/// Signs out agents that sent no request for `idle_timeout` (vendor `MAXTIME`), with
/// `AgentOther_ShutdownService` for a poller that may come back. A held poll counts as activity.
pub(crate) async fn reap_idle_agents(shared: Arc<Shared>) {
    let idle = shared.config.idle_timeout;
    let period = (idle / 10).clamp(Duration::from_millis(10), Duration::from_secs(1));
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let now = Instant::now();
        for agent in shared.agents.all() {
            let expired = {
                let mut state = agent.lock();
                // Another client's session (a person's softphone) is kept alive by that client,
                // which the simulator does not model: it never idles out.
                let idle_session = state.session.as_ref().is_some_and(|s| {
                    !s.other_client()
                        && s.polls_in_flight == 0
                        && now.saturating_duration_since(s.last_seen) >= idle
                });
                if idle_session {
                    let ended = state.end_with_shutdown();
                    shared
                        .agents
                        .record_end(&agent.id, ended, EndCause::IdleSignOut);
                }
                idle_session
            };
            if expired {
                tracing::debug!(agent = %agent.id, "simulator: idle agent signed out");
                agent.wake();
            }
        }
    }
}
