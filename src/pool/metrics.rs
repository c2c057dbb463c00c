//! The pool's metrics: the pool registers them with the bridge's others when it starts
//! (`crate::telemetry::Metrics::register`), so a bridge without a pool shows none.

use super::LeaseState;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Agents owned, lease state, hand-overs and take-overs of this instance.
#[derive(Default, Clone)]
pub struct PoolMetrics {
    owned: Gauge,
    lease: Family<[(&'static str, &'static str); 1], Gauge>,
    hand_overs: Counter,
    take_overs: Counter,
}

impl PoolMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn registered(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "pool_agents_owned",
            "Agents of the shared agents file this instance owns",
            m.owned.clone(),
        );
        registry.register(
            "pool_lease",
            "This instance's pool lease, by state (1 = current); absent without a pool",
            m.lease.clone(),
        );
        registry.register(
            "pool_hand_overs",
            "Agents signed out and released to another instance",
            m.hand_overs.clone(),
        );
        registry.register(
            "pool_take_overs",
            "Agents taken over (forcelogin) from an instance whose lease ended",
            m.take_overs.clone(),
        );
        m
    }

    pub(super) fn set(&self, owned: usize, lease: LeaseState) {
        self.owned.set(owned as i64);
        for state in [
            LeaseState::Joining,
            LeaseState::Held,
            LeaseState::Unreachable,
        ] {
            self.lease
                .get_or_create(&[("state", state.label())])
                .set(i64::from(state == lease));
        }
    }

    pub(super) fn handed_over(&self) {
        self.hand_overs.inc();
    }

    pub(super) fn taken_over(&self) {
        self.take_overs.inc();
    }
}
