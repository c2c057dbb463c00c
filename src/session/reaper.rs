//! Forgetting agents nobody needs any more: a slot whose session ended, that no keep-signed-in
//! loop needs and no sign-in is using, keeps its session (with its events) and the held
//! password only for an automatic re-sign-in by the agent's next call; after
//! `SessionSettings::dead_slot_ttl` it is removed. The `ccgw_sessions{state="ended"}` gauge
//! shows the slots waiting for it.

use super::{SessionSettings, Sessions, Shared, SlotInner};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

impl Sessions {
    /// Starts the reaper; it stops with the registry (or its last handle).
    pub(super) fn spawn_reaper(&self) {
        let shared: Weak<Shared> = Arc::downgrade(&self.shared);
        let period = (self.ttl() / 4).clamp(Duration::from_millis(10), Duration::from_secs(30));
        let shutdown = self.shared.shutdown.clone();
        self.shared.tasks.spawn(async move {
            let mut ticks = tokio::time::interval(period);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    _ = ticks.tick() => {}
                }
                let Some(shared) = shared.upgrade() else {
                    return;
                };
                Sessions { shared }.reap(Instant::now());
            }
        });
    }

    fn ttl(&self) -> Duration {
        ttl(&self.shared.settings)
    }

    /// Removes every slot that is dead for longer than the ttl at `now`. A slot whose lifecycle
    /// lock is taken (a sign-in, sign-out or keeper is at work) is left for the next round.
    fn reap(&self, now: Instant) {
        let ttl = self.ttl();
        let slots: Vec<_> = self
            .slots()
            .iter()
            .map(|(id, slot)| (id.clone(), slot.clone()))
            .collect();
        for (agent_id, slot) in slots {
            let Ok(_guard) = slot.lifecycle.try_lock() else {
                continue;
            };
            if is_dead(&slot.lock(), now, ttl) {
                tracing::debug!(agent_id = %agent_id, "forgetting an agent whose session ended");
                self.remove_if_same(&agent_id, &slot);
            }
        }
    }
}

/// The reap time: the configured one, but never before a take-over proof expired.
fn ttl(settings: &SessionSettings) -> Duration {
    settings.dead_slot_ttl.max(settings.gateway_idle_timeout)
}

fn is_dead(inner: &SlotInner, now: Instant, ttl: Duration) -> bool {
    !inner.keep_signed_in
        && !inner.keeper
        && !inner.signing_in
        && inner.session.as_ref().is_none_or(|s| !s.is_live())
        && inner.ended.as_ref().is_some_and(|e| now >= e.at + ttl)
}
