//! A CC-Gateway ("AgentGateway") simulator: an HTTPS server that speaks the vendor's agent REST
//! interface (`/agentgateway/resource/...`) as described in `shared/ccgw/api-notes.md`, so the
//! bridge can be tested end to end without a real gateway.
//!
//! It exists to be *faithful where the vendor is specific* (URIs, Guid rules, retcodes, event
//! sequences, long-poll holding, idle sign-out) and *configurable where the vendor is vague*
//! (empty poll body, Guid rotation overlap, `Set-GUID` attributes), and to inject faults that a
//! real gateway or the network produces rarely but a bridge must survive.
//!
//! It shares no code with the bridge's gateway client on purpose: a misunderstanding of the wire
//! format in one must not be hidden by the same misunderstanding in the other.
//!
//! Besides the Rust API there is a small HTTP control plane on the same listener under `/_sim/`
//! for out-of-process users such as benchmarks or a Python test (see below).
//!
//! # Control plane
//! - `POST /_sim/agents/{id}/signout` — [`Simulator::force_sign_out`]
//! - `POST /_sim/agents/{id}/kill` — [`Simulator::kill_session`]
//! - `POST /_sim/agents/{id}/rotate` — [`Simulator::rotate_guid`]
//! - `POST /_sim/agents/{id}/events` (body: one raw event object) — [`Simulator::queue_event`]
//! - `GET /_sim/stats` — [`Simulator::stats`] as JSON
//! - `GET /_sim/requests` — [`Simulator::requests`] as a JSON array

#![warn(missing_docs)]

mod control;
mod faults;
mod idle;
mod play;
mod playback;
mod poll;
mod push;
mod record;
mod routes;
mod server;
mod shared;
mod signin;
mod state;
mod sync;
mod tls;
mod wire;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use faults::{Fault, FaultKind, FaultMatch, Interface};
pub use push::{PushFault, Pushed};
pub use record::RecordedRequest;
pub use shared::SimStats;
pub use state::{Client, EndCause, SessionEnd};

use shared::Shared;

/// How the simulated gateway authenticates operation requests (vendor setting `AUTHMODE`).
///
/// The bridge cannot query the mode of a real gateway, so it must cope with both; the simulator
/// lets tests choose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// `AUTHMODE=1`: the Guid from sign-in stays valid for the whole session.
    Static,
    /// `AUTHMODE=2`: a new Guid is delivered (`Set-GUID`) on the first poll answer after
    /// `rotate_every` elapsed; the simulator wakes a held poll when rotation is due, so rotations
    /// really happen at that interval.
    ///
    /// `strict`: the previous Guid is refused (`100-006`) as soon as the new one was delivered.
    /// Not strict: the previous Guid is still accepted for `overlap` after delivery (the vendor's
    /// `GUIDTIMEOUT - GUIDINTERVAL` reading of the notes).
    Dynamic {
        /// Time between two rotations (vendor `GUIDINTERVAL`, 60 s there).
        rotate_every: Duration,
        /// Refuse the previous Guid as soon as the new one was delivered.
        strict: bool,
        /// How long the previous Guid stays valid after delivery when not strict.
        overlap: Duration,
    },
}

/// Body of a long-poll answer that carries no event. The vendor does not document it (notes §9.1),
/// so clients must tolerate every variant; `Rotate` exercises all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmptyPollStyle {
    /// `{"message":"","retcode":"0","event":null}`
    Null,
    /// `{"message":"","retcode":"0"}`
    Absent,
    /// `{"message":"","retcode":"0","event":{}}`
    EmptyObject,
    /// Cycle through `Null`, `Absent`, `EmptyObject` (one counter for the whole simulator).
    Rotate,
}

/// Behaviour knobs of one simulator instance. Defaults follow the vendor's documented defaults
/// (10 s poll hold, 120 s idle sign-out) so that an unconfigured simulator behaves like a gateway.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Static or dynamic Guid authentication.
    pub auth: AuthMode,
    /// How long a poll is held when no event is pending (vendor: 100 × 100 ms = 10 s).
    pub poll_hold: Duration,
    /// An agent is signed out after this long without any authenticated request from it
    /// (vendor `MAXTIME`, 120 s). A poll that is being held counts as activity.
    pub idle_timeout: Duration,
    /// Gap between consecutive events of a play sequence.
    pub play_step: Duration,
    /// Time from `AgentMediaEvent_Play_Succ` until playback ends by itself (`StopPlayDone` cause 0).
    pub play_duration: Duration,
    /// `Some(p)`: every agent must sign in with `p`, else `100-004`. `None`: any password.
    pub password: Option<String>,
    /// Body of an empty poll answer.
    pub empty_poll: EmptyPollStyle,
    /// Append `; Path=/agentgateway; Secure; HttpOnly` to every `Set-GUID` value, to test that
    /// clients parse the header defensively (notes §9.9).
    pub set_guid_attributes: bool,
    /// Push mode: a CA (PEM) trusted for callbacks besides the simulator's own (whose server
    /// certificate, [`Simulator::server_cert_pem`], a receiver may present).
    pub callback_ca_pem: Option<String>,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            auth: AuthMode::Static,
            poll_hold: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
            play_step: Duration::from_millis(20),
            play_duration: Duration::from_secs(30),
            password: None,
            empty_poll: EmptyPollStyle::Rotate,
            set_guid_attributes: false,
            callback_ca_pem: None,
        }
    }
}

/// A running simulator. Dropping the handle (or calling [`Simulator::shutdown`]) stops the server,
/// closes every connection and removes the CA file.
pub struct Simulator {
    shared: Arc<Shared>,
    addr: SocketAddr,
    ca_pem: String,
    server_cert_pem: String,
    server_key_pem: zeroize::Zeroizing<String>,
    /// The CA written to a file, on first request only: the in-process `--simulate` needs no
    /// file, and a container's read-only root has no writable temp directory.
    ca_path: std::sync::OnceLock<PathBuf>,
}

impl Simulator {
    /// Binds `addr` (use `127.0.0.1:0` in tests), generates a self-signed CA and a leaf
    /// certificate for `localhost`, `127.0.0.1` and `::1`, and serves HTTPS (HTTP/1.1 and h2
    /// via ALPN) until shut down. Nothing is written to disk ([`Simulator::ca_file`] writes the
    /// CA when asked).
    pub async fn start(config: SimConfig, addr: SocketAddr) -> std::io::Result<Simulator> {
        let certs = tls::SimCerts::generate()?;
        let acceptor = tls::acceptor(&certs)?;
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let push = push::Push::new(&certs.ca_pem, config.callback_ca_pem.as_deref())?;
        let (shared, push_starts) = Shared::new(config, push);
        let shared = Arc::new(shared);
        tokio::spawn(shared::start_pushers(Arc::clone(&shared), push_starts));
        tokio::spawn(server::serve(listener, acceptor, Arc::clone(&shared)));
        tokio::spawn(idle::reap_idle_agents(Arc::clone(&shared)));
        Ok(Simulator {
            shared,
            addr,
            server_cert_pem: certs.leaf_pem,
            server_key_pem: certs.leaf_key_pem,
            ca_pem: certs.ca_pem,
            ca_path: std::sync::OnceLock::new(),
        })
    }

    /// Base URL, scheme host and port only (`https://127.0.0.1:PORT`), as the bridge's
    /// `--gateway-url` expects it.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The bound address (useful when started on port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// PEM of the CA that signed the server certificate, for clients that take certificates in
    /// memory.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The simulator's own server certificate (PEM; for `localhost`, `127.0.0.1`, `::1`,
    /// signed by [`Simulator::ca_pem`]). A push-mode receiver on loopback may present it: the
    /// simulator trusts its own CA for callbacks (the `--simulate` demo does).
    pub fn server_cert_pem(&self) -> &str {
        &self.server_cert_pem
    }

    /// The private key of [`Simulator::server_cert_pem`] (PEM).
    pub fn server_key_pem(&self) -> &str {
        &self.server_key_pem
    }

    /// Adds a fault for a later callback POST of push mode (one per POST attempt, in order).
    pub fn add_push_fault(&self, fault: PushFault) {
        self.shared.push.add_fault(fault)
    }

    /// Every event delivered to the agent's push callbacks so far, in delivery order (a
    /// duplicated delivery appears twice): the simulator's record of what it pushed.
    pub fn pushed(&self, agent_id: &str) -> Vec<serde_json::Value> {
        self.shared.push.pushed(agent_id)
    }

    /// [`Simulator::pushed`] with the gateway session of each delivery: what a test compares
    /// watchers with session by session (a pool's hand-overs change sessions).
    pub fn pushed_records(&self, agent_id: &str) -> Vec<Pushed> {
        self.shared.push.records(agent_id)
    }

    /// Waits (event driven) until at least `n` events were delivered to the agent's callbacks;
    /// returns them all.
    pub async fn wait_pushed(&self, agent_id: &str, n: usize) -> Vec<serde_json::Value> {
        self.shared.push.wait_pushed(agent_id, n).await
    }

    /// Callback POSTs that were not answered with success (refused, or failed in transport).
    pub fn push_failures(&self) -> u64 {
        self.shared
            .push
            .failures
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// File holding [`Simulator::ca_pem`], for clients configured by path (`--ca-cert`): written
    /// to the temp directory on the first call, removed when the simulator is dropped.
    pub fn ca_file(&self) -> std::io::Result<&Path> {
        if let Some(path) = self.ca_path.get() {
            return Ok(path);
        }
        let path = tls::write_ca_file(&self.ca_pem, self.addr.port())?;
        if let Err(path) = self.ca_path.set(path) {
            // Another thread wrote one first: keep that one.
            let _ = std::fs::remove_file(path);
        }
        Ok(self.ca_path.get().expect("set above"))
    }

    /// [`Simulator::ca_file`] for tests and tools that cannot go on without it.
    ///
    /// # Panics
    /// If the temp directory is not writable.
    pub fn ca_path(&self) -> &Path {
        self.ca_file().unwrap_or_else(|e| {
            panic!(
                "cannot write the simulator's CA to {}: {e}",
                std::env::temp_dir().display()
            )
        })
    }

    /// Every gateway request received so far (control-plane requests excluded), in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.log.all()
    }

    /// Forgets the recorded requests, so a test can assert on what follows only.
    pub fn clear_requests(&self) {
        self.shared.log.clear()
    }

    /// Resolves with the first recorded request matching `pred`, waiting (event driven, no
    /// polling) until one arrives if none has yet.
    pub async fn wait_for_request(
        &self,
        pred: impl Fn(&RecordedRequest) -> bool,
    ) -> RecordedRequest {
        self.shared.log.wait_for(pred).await
    }

    /// Adds a fault. Faults apply in insertion order; the first matching one with a remaining
    /// count wins and consumes one use.
    pub fn add_fault(&self, fault: Fault) {
        self.shared.faults.add(fault)
    }

    /// Removes every fault not yet used up.
    pub fn clear_faults(&self) {
        self.shared.faults.clear()
    }

    /// As if an inspector forced the agent out: `AgentOther_ShutdownService` is delivered by the
    /// next (or the currently held) poll, and the session is gone (later calls answer `100-006`).
    pub fn force_sign_out(&self, agent_id: &str) {
        self.shared.agents.force_sign_out(agent_id)
    }

    /// The session disappears silently: the next call or poll (a held poll at once) answers
    /// `100-006`, with no event.
    pub fn kill_session(&self, agent_id: &str) {
        self.shared.agents.kill_session(agent_id)
    }

    /// Issues a new Guid now. It is delivered by `Set-GUID` on the next poll answer (a held poll
    /// is woken); the old Guid is then refused or kept for the overlap as configured (static mode
    /// behaves as strict).
    pub fn rotate_guid(&self, agent_id: &str) {
        self.shared.agents.rotate_guid(agent_id)
    }

    /// Like [`Simulator::rotate_guid`], but the poll answer that delivers the new Guid is lost
    /// after the gateway rotated (the connection closes without an answer): the client never
    /// sees the new Guid while the gateway refuses the old one (at once in strict mode).
    pub fn rotate_guid_lost(&self, agent_id: &str) {
        self.shared.agents.rotate_guid_lost(agent_id)
    }

    /// Disaster recovery: every later request with the session's Guids (polls included, a held
    /// poll at once) answers `retcode` (`105-005`, `105-006` or `105-007`: "sign in again"). The
    /// gateway still counts the agent signed in: a plain login answers `100-002`, a forcelogin
    /// replaces the session.
    pub fn require_sign_in_again(&self, agent_id: &str, retcode: &'static str) {
        self.shared.agents.require_sign_in_again(agent_id, retcode)
    }

    /// Another client signs the agent in (`forcelogin` when `force`), as a second bridge or an
    /// agent's desktop would; not recorded among [`Simulator::requests`]. Returns the retcode
    /// of a refusal (`100-002` when the agent is signed in and `force` is false).
    pub fn sign_in_elsewhere(&self, agent_id: &str, force: bool) -> Result<(), &'static str> {
        signin::sign_in(&self.shared, agent_id, None, force, Client::Person, None).map(|_| ())
    }

    /// A supervisor replaces whatever session the agent has with a person's: the old session
    /// ends as a forced sign-out does (its poller gets `AgentOther_ShutdownService`), and a
    /// person holds the agent from then on (a plain login answers `100-002`). Not a bridge's
    /// doing, so not counted in [`SimStats::other_clients_kicked`].
    pub fn supervisor_replaces(&self, agent_id: &str) {
        let _ = signin::sign_in(&self.shared, agent_id, None, true, Client::Supervisor, None);
    }

    /// A person signs the agent out at their softphone (the session of another client ends,
    /// with no event): the agent is free. Nothing happens if a bridge holds it.
    pub fn person_signs_out(&self, agent_id: &str) -> bool {
        self.shared.agents.end_other_client_session(agent_id)
    }

    /// Whether the agent's session was signed in by another client
    /// ([`Simulator::sign_in_elsewhere`]) rather than over the gateway interface.
    pub fn held_by_other_client(&self, agent_id: &str) -> bool {
        self.shared.agents.held_by_other_client(agent_id)
    }

    /// Queues a raw `event` object, delivered as-is by a poll (a held poll is woken). Ignored if
    /// the agent is not signed in.
    pub fn queue_event(&self, agent_id: &str, event: serde_json::Value) {
        self.shared.agents.queue_raw_event(agent_id, event)
    }

    /// Events queued for the agent's session and not yet delivered by a poll (0 without one).
    pub fn pending_events(&self, agent_id: &str) -> usize {
        self.shared.agents.pending_events(agent_id)
    }

    /// Whether the agent currently has a session.
    pub fn signed_in(&self, agent_id: &str) -> bool {
        self.shared.agents.signed_in(agent_id)
    }

    /// The Guid the gateway currently expects from the agent (the newest one delivered).
    pub fn current_guid(&self, agent_id: &str) -> Option<String> {
        self.shared.agents.current_guid(agent_id)
    }

    /// How every session so far ended, and who had created it, oldest first: what the
    /// gateway saw, for invariants such as "no bridge ended a person's session"
    /// ([`SessionEnd::kicked_someone`]).
    pub fn session_ends(&self) -> Vec<SessionEnd> {
        self.shared.agents.ends()
    }

    /// Counters since start.
    pub fn stats(&self) -> SimStats {
        self.shared.stats()
    }

    /// Stops accepting, closes every connection and stops every timer. Idempotent.
    pub fn shutdown(&self) {
        self.shared.shutdown.cancel()
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        self.shutdown();
        // Best effort: a leftover temp file is harmless.
        if let Some(path) = self.ca_path.get() {
            let _ = std::fs::remove_file(path);
        }
    }
}
