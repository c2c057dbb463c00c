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
    take_overs: Family<[(&'static str, &'static str); 1], Counter>,
    waiting_for_gateway: Gauge,
    reconciles: Counter,
    probe_ok: Gauge,
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
            "Agents taken over from an instance whose lease ended, by how the take-over ended: guid_logout (its session logged out with the Guid it handed off), free (nothing held the agent), waited_for_gateway (held until the gateway signed it out)",
            m.take_overs.clone(),
        );
        // Every outcome exists at 0 from the start, so that increase() (CcgwPoolTakeOvers, the
        // dashboard) sees the first take-over too: a series born at its first sample hides it.
        for outcome in TakeOver::ALL {
            let _ = m.take_overs.get_or_create(&[("outcome", outcome.label())]);
        }
        registry.register(
            "pool_agents_waiting_for_gateway",
            "Agents owned here that the gateway still counts as signed in elsewhere (100-002): a previous holder's session without a usable Guid, or a person; retried with back-off, never forced",
            m.waiting_for_gateway.clone(),
        );
        registry.register(
            "pool_reconciles",
            "Passes of the reconcile loop over the pool's mirror (at most one a tick plus one per 200 ms of etcd changes): etcd's request counters divided by this give its cost per reconcile",
            m.reconciles.clone(),
        );
        registry.register(
            "pool_gateway_probe_ok",
            "1 when this instance's last gateway probe passed (the gateway answered and its sign-ins are not being refused), 0 when it failed; published to the other instances as step-out evidence",
            m.probe_ok.clone(),
        );
        m
    }

    pub(super) fn reconciled(&self) {
        self.reconciles.inc();
    }

    pub(super) fn probed(&self, ok: bool) {
        self.probe_ok.set(i64::from(ok));
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

    pub(super) fn taken_over(&self, outcome: TakeOver) {
        self.take_overs
            .get_or_create(&[("outcome", outcome.label())])
            .inc();
    }

    pub(super) fn set_waiting(&self, agents: usize) {
        self.waiting_for_gateway.set(agents as i64);
    }
}

/// How a take-over (an agent acquired with a previous holder's record) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TakeOver {
    /// The previous holder's session was logged out with its handed-off Guid.
    GuidLogout,
    /// The plain `login` succeeded at once: nothing held the agent any more.
    Free,
    /// The gateway counted the agent as held (`100-002`: a session without a usable Guid, or
    /// a person's) until that session ended; counted for every owned agent that waited.
    WaitedForGateway,
}

impl TakeOver {
    /// Every outcome (each a series of `ccgw_pool_take_overs_total` from the start).
    pub const ALL: [TakeOver; 3] = [
        TakeOver::GuidLogout,
        TakeOver::Free,
        TakeOver::WaitedForGateway,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            TakeOver::GuidLogout => "guid_logout",
            TakeOver::Free => "free",
            TakeOver::WaitedForGateway => "waited_for_gateway",
        }
    }
}
