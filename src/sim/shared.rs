//! State shared by every connection of one simulator: configuration, agents, faults, the request
//! log and counters.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use std::sync::Arc;

use tokio::sync::mpsc;

use super::faults::FaultTable;
use super::push::Push;
use super::record::RequestLog;
use super::state::{Agent, Agents};
use super::{EmptyPollStyle, SimConfig};

/// Counters since the simulator started, so tests and benchmarks can check connection reuse and
/// load without parsing logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SimStats {
    /// Gateway requests received (control-plane requests excluded).
    pub requests: u64,
    /// Event-poll requests received.
    pub polls: u64,
    /// Successful sign-ins (login and forcelogin).
    pub sign_ins: u64,
    /// TLS handshakes completed (i.e. connections accepted).
    pub tls_handshakes: u64,
    /// Connections currently open.
    pub active_connections: u64,
    /// The most sign-in requests (login and forcelogin) ever in progress at once, from the
    /// request's arrival until its answer is handed to the connection.
    pub max_concurrent_sign_ins: u64,
    /// Sessions of another client (a person's softphone or a supervisor's desk:
    /// [`super::Simulator::sign_in_elsewhere`], [`super::Simulator::supervisor_replaces`]) that
    /// a request over the gateway interface ended, by any path (`forcelogin`, `logout`,
    /// `forcelogout`): a bridge kicking someone. Every test expects 0.
    pub other_clients_kicked: u64,
}

/// Everything a request handler or a timer needs.
pub(crate) struct Shared {
    pub config: SimConfig,
    pub agents: Agents,
    pub faults: FaultTable,
    pub log: RequestLog,
    pub shutdown: CancellationToken,
    pub requests: AtomicU64,
    pub polls: AtomicU64,
    pub sign_ins: AtomicU64,
    pub tls_handshakes: AtomicU64,
    pub active_connections: AtomicU64,
    /// Sign-in requests in progress now.
    pub sign_ins_in_progress: AtomicU64,
    /// The most sign-in requests ever in progress at once.
    pub max_concurrent_sign_ins: AtomicU64,
    /// See [`SimStats::other_clients_kicked`].
    pub other_clients_kicked: AtomicU64,
    empty_polls: AtomicU64,
    /// Push mode's client, faults and delivery record.
    pub push: Push,
    /// Push sessions whose pusher is to be started (see [`start_pushers`]).
    push_starts: mpsc::UnboundedSender<(Arc<Agent>, u64)>,
}

/// Starts a pusher for every push session announced on `starts`, until shutdown. (Sign-in
/// handlers hold only `&Shared`; the pusher needs its own `Arc`.)
pub(crate) async fn start_pushers(
    shared: Arc<Shared>,
    mut starts: mpsc::UnboundedReceiver<(Arc<Agent>, u64)>,
) {
    loop {
        tokio::select! {
            () = shared.shutdown.cancelled() => return,
            start = starts.recv() => match start {
                Some((agent, serial)) => {
                    tokio::spawn(super::push::pusher(Arc::clone(&shared), agent, serial));
                }
                None => return,
            },
        }
    }
}

impl Shared {
    /// Fresh state for a simulator configured by `config`, and the receiving end of its
    /// pusher starts (for [`start_pushers`]).
    pub fn new(
        config: SimConfig,
        push: Push,
    ) -> (Shared, mpsc::UnboundedReceiver<(Arc<Agent>, u64)>) {
        let (push_starts, starts) = mpsc::unbounded_channel();
        let shared = Shared {
            agents: Agents::new(&config),
            config,
            faults: FaultTable::default(),
            log: RequestLog::default(),
            shutdown: CancellationToken::new(),
            requests: AtomicU64::new(0),
            polls: AtomicU64::new(0),
            sign_ins: AtomicU64::new(0),
            tls_handshakes: AtomicU64::new(0),
            active_connections: AtomicU64::new(0),
            sign_ins_in_progress: AtomicU64::new(0),
            max_concurrent_sign_ins: AtomicU64::new(0),
            other_clients_kicked: AtomicU64::new(0),
            empty_polls: AtomicU64::new(0),
            push,
            push_starts,
        };
        (shared, starts)
    }

    /// Has a pusher started for push session `serial` of `agent`.
    pub fn start_pusher(&self, agent: &Arc<Agent>, serial: u64) {
        // Fails only when the simulator shuts down: no one is left to push to then.
        let _ = self.push_starts.send((Arc::clone(agent), serial));
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> SimStats {
        SimStats {
            requests: self.requests.load(Ordering::Relaxed),
            polls: self.polls.load(Ordering::Relaxed),
            sign_ins: self.sign_ins.load(Ordering::Relaxed),
            tls_handshakes: self.tls_handshakes.load(Ordering::Relaxed),
            active_connections: self.active_connections.load(Ordering::Relaxed),
            max_concurrent_sign_ins: self.max_concurrent_sign_ins.load(Ordering::Relaxed),
            other_clients_kicked: self.other_clients_kicked.load(Ordering::Relaxed),
        }
    }

    /// The style of the next empty poll answer (advances the rotation when configured so).
    pub fn next_empty_style(&self) -> EmptyPollStyle {
        match self.config.empty_poll {
            EmptyPollStyle::Rotate => match self.empty_polls.fetch_add(1, Ordering::Relaxed) % 3 {
                0 => EmptyPollStyle::Null,
                1 => EmptyPollStyle::Absent,
                _ => EmptyPollStyle::EmptyObject,
            },
            fixed => fixed,
        }
    }
}

/// Counts one sign-in request as in progress while it lives (see
/// [`SimStats::max_concurrent_sign_ins`]).
pub(crate) struct SignInInProgress<'a>(&'a Shared);

impl<'a> SignInInProgress<'a> {
    /// Starts counting a sign-in request that just arrived.
    pub fn start(shared: &'a Shared) -> Self {
        let now = shared.sign_ins_in_progress.fetch_add(1, Ordering::AcqRel) + 1;
        shared
            .max_concurrent_sign_ins
            .fetch_max(now, Ordering::AcqRel);
        SignInInProgress(shared)
    }
}

impl Drop for SignInInProgress<'_> {
    fn drop(&mut self) {
        self.0.sign_ins_in_progress.fetch_sub(1, Ordering::AcqRel);
    }
}
