//! The one question the session layer asks a coordinator: may this bridge sign agent X in?
//!
//! Without a coordinator every sign-in is allowed. With the agent pool (`crate::pool`) only the
//! instance that owns an agent, under a lease it knows to be valid, may sign it in; everywhere
//! else the caller is told who owns it, or that the coordinator cannot tell now.

use std::time::Instant;

/// Why the coordinator refused a sign-in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GateRefusal {
    /// Another instance owns the agent: calls for it belong there (retrying here cannot help).
    Owner(String),
    /// This instance cannot tell now (the coordinator is unreachable, not joined yet, or the
    /// agent is moving between instances): a retry may succeed.
    Unsure {
        /// Stable reason for clients (`POOL_…`).
        reason: &'static str,
        /// What was going on, for people (the coordinator's endpoint and the cause).
        detail: String,
    },
}

/// Refuses sign-ins of agents another instance owns (or that no instance surely owns now).
pub trait SignInGate: Send + Sync {
    /// `Ok` if this bridge may sign `agent_id` in now, with the instant by which a *forced*
    /// sign-in must have been answered (the end of the coordinator's lease, after which another
    /// instance may own the agent: a `forcelogin` landing later could kick it); `None` when
    /// nothing bounds it.
    fn may_sign_in(&self, agent_id: &str) -> Result<Option<Instant>, GateRefusal>;
}
