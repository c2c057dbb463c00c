//! The lease's keep-alive, on a task of its own: nothing the reconcile loop waits for (a
//! sign-out, a slow gateway, an agent's lifecycle lock) can delay a renewal.

use super::clock::LeaseTime;
use super::{LeaseRenewal, LeaseState, Ownership, Renewal};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Renews the lease every `tick` until `stop`, recording each outcome in `ownership`. Returns
/// when the lease is lost (the reconcile loop then ends the sessions and joins again).
pub(super) async fn keep_alive<L: LeaseRenewal>(
    mut lease: L,
    ownership: Arc<Ownership>,
    tick: Duration,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(tick) => {}
        }
        let sent = LeaseTime::now();
        match lease.renew().await {
            Ok(Renewal::Alive(ttl)) => {
                let was = ownership.set_lease(LeaseState::Held, Some(sent.after(ttl)));
                if was == LeaseState::Unreachable {
                    tracing::info!("pool: coordinator reachable again; lease still held");
                    ownership.wake.notify_one();
                }
            }
            Ok(Renewal::Lost) => {
                tracing::warn!("pool: lease lost; ending every owned session here (no sign-out) and joining again");
                ownership.set_lease(LeaseState::Joining, None);
                ownership.wake.notify_one();
                return;
            }
            Err(e) => {
                if ownership.lock().lease != LeaseState::Unreachable {
                    tracing::warn!(error = %e, "pool: coordinator unreachable; keeping running sessions, no new sign-ins");
                }
                ownership.set_error(&e);
                ownership.set_lease(LeaseState::Unreachable, None);
            }
        }
    }
}
