//! The one question the session layer asks a coordinator: may this bridge sign agent X in?
//!
//! Without a coordinator every sign-in is allowed. With the agent pool (`crate::pool`) only the
//! instance that owns an agent, under a lease it knows to be valid, may sign it in; everywhere
//! else the caller is told who owns it.

/// Refuses sign-ins of agents another instance owns (or that no instance owns yet).
pub trait SignInGate: Send + Sync {
    /// `Ok` if this bridge may sign `agent_id` in now; otherwise the owner's instance name, if
    /// one is known.
    fn may_sign_in(&self, agent_id: &str) -> Result<(), Option<String>>;
}
