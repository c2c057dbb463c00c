//! The session layer's part of a drain: end streams, sign out (or stop polling), stop tasks.

use super::{lock_owned, Session, Sessions, Slot};
use crate::events::End;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

impl Sessions {
    /// Ends every event stream with `End::Shutdown` and refuses new sign-ins; sessions stay
    /// usable for unary calls still in flight, and their poll loops run on (see
    /// [`Sessions::stop_polling`]). First step of a drain.
    pub fn end_event_streams(&self) {
        self.shared.draining.store(true, Ordering::Release);
        for session in self.live_sessions() {
            session.hub.close(End::Shutdown);
        }
    }

    /// Signs out every live session (in parallel), and every orphan the gateway may still hold
    /// for the bridge (with its own Guid, see `end_slot_orphan`); then stops all poll loops.
    pub async fn sign_out_all(&self, deadline: Option<Instant>) {
        let sessions = self.live_sessions();
        let logouts = sessions.iter().map(|s| async move {
            if let Err(e) = self
                .logout(s, deadline, crate::events::End::SignedOut)
                .await
            {
                tracing::warn!(agent_id = %s.agent_id, error = %e, "sign-out at shutdown failed");
            }
        });
        let ended: Vec<(Arc<str>, Arc<Slot>)> = self
            .slots()
            .iter()
            .filter(|(_, slot)| slot.running().is_none() && slot.lock().ended.is_some())
            .map(|(id, slot)| (id.clone(), slot.clone()))
            .collect();
        let orphans = ended.iter().map(|(agent_id, slot)| async move {
            let _guard = lock_owned(slot).await;
            if let Err(e) = self.end_slot_orphan(slot, agent_id, deadline).await {
                tracing::warn!(agent_id = %agent_id, error = %e, "sign-out at shutdown failed");
            }
        });
        futures::future::join(
            futures::future::join_all(logouts),
            futures::future::join_all(orphans),
        )
        .await;
        self.stop_polling();
    }

    /// Stops every poll loop and background task without signing out: the last step of a drain,
    /// or the first after [`Sessions::end_event_streams`] when agents stay signed in, so the
    /// gateway keeps their events for the next holder.
    pub fn stop_polling(&self) {
        self.shared.shutdown.cancel();
        self.shared.tasks.close();
    }

    /// Waits until every background task (poll loops, re-sign-ins) has finished.
    pub async fn wait_stopped(&self) {
        self.shared.tasks.wait().await;
    }

    fn live_sessions(&self) -> Vec<Arc<Session>> {
        let slots: Vec<Arc<Slot>> = self.slots().values().cloned().collect();
        slots.iter().filter_map(|s| s.running()).collect()
    }
}
