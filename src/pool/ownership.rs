//! What this instance owns, and until when its lease is surely valid: the session layer's
//! sign-in gate, readiness and the pool's status, all read from one small state.

use super::clock::LeaseTime;
use super::PoolMetrics;
use crate::readiness::Condition;
use crate::session::{GateRefusal, SignInGate};
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Instant;
use tokio_util::sync::CancellationToken;

/// The state of this instance's lease, as readiness and metrics report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseState {
    /// Not joined yet (or re-joining after losing the lease).
    Joining,
    /// Renewed in time.
    Held,
    /// The coordinator is unreachable: sessions run on, no new sign-ins.
    Unreachable,
}

impl LeaseState {
    /// Label for logs, metrics and readiness reasons.
    pub fn label(self) -> &'static str {
        match self {
            LeaseState::Joining => "joining",
            LeaseState::Held => "held",
            LeaseState::Unreachable => "coordinator_unreachable",
        }
    }
}

#[derive(Debug)]
pub(super) struct OwnershipState {
    pub(super) lease: LeaseState,
    /// Whether the lease was ever held (an instance that never joined is not ready).
    pub(super) joined_once: bool,
    /// Another live lease holds this instance's name: joining waits for it to end.
    pub(super) name_taken: bool,
    /// Whether this instance is among the members agents are assigned to (it joins as an
    /// observer and becomes assignable once the gateway has answered it).
    pub(super) assignable: bool,
    /// The last coordinator failure, for errors that say what went wrong.
    pub(super) last_error: Option<String>,
    pub(super) valid_until: Option<LeaseTime>,
    /// Owned under the lease, and signed in (or being signed in) here.
    pub(super) owned: HashSet<String>,
    /// Owned under the lease, being signed out to hand over: the gate is closed for them.
    pub(super) handing_over: HashSet<String>,
    /// Owned agents whose sign-in the pool started and that has not finished yet.
    pub(super) signing_in: HashSet<String>,
    pub(super) owners: std::sync::Arc<HashMap<String, String>>,
    /// Owned agents the gateway still counts as signed in elsewhere (`100-002`): this
    /// instance waits (keep-signed-in's back-off) for the gateway to free them, never forcing.
    pub(super) waiting_for_gateway: HashSet<String>,
    pub(super) hand_overs: u64,
    pub(super) take_overs: u64,
    /// The pool's own sign-ins refused in a row for a reason that is this instance's (wrong
    /// password, parameters, rights), with no sign-in succeeding since: a replica with a wrong
    /// agents file reaches the gateway but cannot serve, so its probe counts as failed.
    pub(super) refused_sign_ins: u32,
}

/// Which pool agents this instance owns, and until when its lease is surely valid.
pub struct Ownership {
    pub(super) instance: String,
    pub(super) endpoints: String,
    pub(super) pool: HashSet<String>,
    state: Mutex<OwnershipState>,
    changes: tokio::sync::watch::Sender<u64>,
    /// Wakes the reconcile loop (the lease was lost, or renewed after an outage).
    pub(super) wake: tokio::sync::Notify,
    pub(super) metrics: PoolMetrics,
    pub(super) draining: CancellationToken,
}

/// A snapshot of this instance's place in the pool.
#[derive(Debug, Clone)]
pub struct PoolStatus {
    /// This instance's name.
    pub instance: String,
    /// Lease state.
    pub lease: LeaseState,
    /// Agents owned here, sorted.
    pub owned: Vec<String>,
    /// Agents handed over to another instance so far.
    pub hand_overs: u64,
    /// Agents taken over from an instance whose lease ended so far.
    pub take_overs: u64,
    /// Owned agents waiting for the gateway to free them (held elsewhere: `100-002`), sorted.
    pub waiting_for_gateway: Vec<String>,
}

impl Ownership {
    pub(super) fn new(
        instance: String,
        endpoints: String,
        pool: HashSet<String>,
        metrics: PoolMetrics,
    ) -> Self {
        Self {
            instance,
            endpoints,
            pool,
            state: Mutex::new(OwnershipState {
                lease: LeaseState::Joining,
                joined_once: false,
                name_taken: false,
                assignable: false,
                last_error: None,
                valid_until: None,
                owned: HashSet::new(),
                handing_over: HashSet::new(),
                signing_in: HashSet::new(),
                owners: Default::default(),
                waiting_for_gateway: HashSet::new(),
                hand_overs: 0,
                take_overs: 0,
                refused_sign_ins: 0,
            }),
            changes: tokio::sync::watch::Sender::new(0),
            wake: tokio::sync::Notify::new(),
            metrics,
            draining: CancellationToken::new(),
        }
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, OwnershipState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Where this instance stands now.
    pub fn status(&self) -> PoolStatus {
        let s = self.lock();
        let mut owned: Vec<String> = s.owned.iter().cloned().collect();
        owned.sort();
        let mut waiting_for_gateway: Vec<String> = s.waiting_for_gateway.iter().cloned().collect();
        waiting_for_gateway.sort();
        PoolStatus {
            instance: self.instance.clone(),
            lease: s.lease,
            owned,
            hand_overs: s.hand_overs,
            take_overs: s.take_overs,
            waiting_for_gateway,
        }
    }

    /// The pool-wide agent → owner table (`call ownership --all`), sorted by agent: every agent
    /// of the agents file, and any other the coordinator names an owner for (a peer's newer
    /// agents file during a rolling update), with its owner (`None`: nobody owns it). Read from
    /// the reconcile loop's last view of the coordinator, so it needs no coordinator request
    /// of its own; this instance's own agents come from what it owns now, fresher than that
    /// view.
    pub fn pool_owners(&self) -> Vec<(String, Option<String>)> {
        let s = self.lock();
        let mut table: std::collections::BTreeMap<String, Option<String>> = self
            .pool
            .iter()
            .map(|agent| (agent.clone(), None))
            .collect();
        for (agent, owner) in s.owners.iter() {
            table.insert(agent.clone(), Some(owner.clone()));
        }
        for agent in &s.owned {
            table.insert(agent.clone(), Some(self.instance.clone()));
        }
        table.into_iter().collect()
    }

    /// What readiness reports about the pool (O(1)): nothing while the lease is held and the
    /// instance takes agents. An instance that never joined, or that cannot reach the gateway
    /// (it stays an observer, given no agents), is not ready, so a rolling update does not
    /// stop the old pod (which still holds the agents) for a new one that cannot serve them.
    /// Once joined, an unreachable coordinator or a lost lease is a warning only: the sessions
    /// held here and the calls on them keep working, only new sign-ins wait for the lease.
    pub fn readiness(&self) -> Condition {
        let s = self.lock();
        match (s.lease, s.joined_once) {
            (_, false) if s.name_taken => Condition::Blocking(
                format!(
                    "agent pool: {}",
                    s.last_error.as_deref().unwrap_or(
                        "another live instance holds this --instance-name; give every replica its own name (the pod name)"
                    )
                )
                .into(),
            ),
            (LeaseState::Held, _) if !s.assignable => Condition::Blocking(
                "agent pool: joined as an observer only: the gateway has not answered this instance yet, so it takes no agents".into(),
            ),
            (LeaseState::Held, _) if !s.waiting_for_gateway.is_empty() => Condition::Degraded(
                "agent pool: some owned agents wait for the gateway to free them (it counts them signed in elsewhere: a previous holder's session without a usable Guid ends at the gateway's idle sign-out; a person's does not); see `ccgw-bridge call ownership` and ccgw_pool_agents_waiting_for_gateway",
            ),
            (LeaseState::Held, _) => Condition::Fine,
            (_, false) => Condition::Blocking(
                match s.last_error.as_deref() {
                    Some(e) => format!("agent pool: not joined yet: {e}"),
                    None => format!(
                        "agent pool: not joined yet: etcd {} has not granted a lease yet",
                        self.endpoints
                    ),
                }
                .into(),
            ),
            (LeaseState::Unreachable, true) => Condition::Degraded(
                "agent pool: coordinator (etcd) unreachable; running sessions are kept, no new sign-ins of pool agents",
            ),
            (LeaseState::Joining, true) => Condition::Degraded(
                "agent pool: lease lost; sessions run on, no new sign-ins, joining again",
            ),
        }
    }

    /// Cancelled when the bridge starts draining: ownership changes no more.
    pub fn draining(&self) -> CancellationToken {
        self.draining.clone()
    }

    /// Ticks whenever the set of owned agents or the lease state changes.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    pub(super) fn changed(&self) {
        let (owned, lease, waiting) = {
            let s = self.lock();
            (s.owned.len(), s.lease, s.waiting_for_gateway.len())
        };
        self.metrics.set(owned, lease);
        self.metrics.set_waiting(waiting);
        self.changes.send_modify(|n| *n += 1);
    }

    /// Counts a take-over by how it ended.
    pub(super) fn took_over(&self, outcome: super::TakeOver) {
        self.lock().take_overs += 1;
        self.metrics.taken_over(outcome);
    }

    /// Records a lease state; returns the previous one.
    pub(super) fn set_lease(
        &self,
        lease: LeaseState,
        valid_until: Option<LeaseTime>,
    ) -> LeaseState {
        let mut s = self.lock();
        let was = s.lease;
        s.lease = lease;
        s.joined_once |= lease == LeaseState::Held;
        if lease == LeaseState::Held {
            s.name_taken = false;
            s.last_error = None;
        }
        if valid_until.is_some() || lease != LeaseState::Unreachable {
            s.valid_until = valid_until;
        }
        drop(s);
        if was != lease {
            self.changed();
        }
        was
    }

    /// Records a coordinator failure (shown in refusals and logs).
    pub(super) fn set_error(&self, error: impl ToString) {
        self.lock().last_error = Some(error.to_string());
    }

    fn unsure(&self, s: &OwnershipState, reason: &'static str, what: &str) -> GateRefusal {
        let cause = s
            .last_error
            .as_deref()
            .map(|e| format!("; last error: {e}"))
            .unwrap_or_default();
        GateRefusal::Unsure {
            reason,
            detail: format!(
                "{what} (instance {}, coordinator {}{cause}); retry shortly",
                self.instance, self.endpoints
            ),
        }
    }
}

impl SignInGate for Ownership {
    fn may_sign_in(&self, agent_id: &str) -> Result<Option<Instant>, GateRefusal> {
        if !self.pool.contains(agent_id) {
            // Agents outside the shared agents file are signed in by callers, as without a pool.
            return Ok(None);
        }
        let s = self.lock();
        // Renewed at the last attempt, and surely not expired since (the lease clock counts a
        // suspended host's time too).
        let valid_until = s
            .valid_until
            .filter(|t| s.lease == LeaseState::Held && LeaseTime::now() < *t);
        if let Some(until) = valid_until {
            if s.owned.contains(agent_id) {
                return Ok(Some(until.as_instant()));
            }
        }
        if let Some(owner) = s.owners.get(agent_id).filter(|o| **o != self.instance) {
            return Err(GateRefusal::Owner(owner.clone()));
        }
        Err(match (s.joined_once, valid_until.is_some()) {
            (false, _) => self.unsure(
                &s,
                "POOL_NOT_JOINED",
                "this instance has not joined the agent pool yet",
            ),
            (true, false) => self.unsure(
                &s,
                "POOL_COORDINATOR_UNAVAILABLE",
                "this instance's pool lease is not confirmed now",
            ),
            (true, true) => self.unsure(
                &s,
                "POOL_AGENT_MOVING",
                "the agent is between owners (being handed over or not yet taken)",
            ),
        })
    }
}
