//! Readiness: whether this bridge can serve its callers now, and why not.
//!
//! **Ready** means: the gateway answers, and every pinned agent (agents file, `--simulate`'s
//! demo agent) is either signed in through this bridge or held by another client (the gateway
//! refuses its sign-in with `100-002`, e.g. the old pod of a rolling update still holds it).
//! An agent held elsewhere is not this bridge's to fight for: counting it would keep a new pod
//! un-Ready until the old one stops, which a rolling update never does (issue 11, point 1).
//! Not ready: the gateway is unreachable, a pinned agent is not signed in yet or its sign-in
//! failed for another reason (wrong password, …), a part such as the agent pool reports a
//! [`Condition::Blocking`] (an instance that never joined its pool), or the bridge is draining.
//!
//! **Degraded** is ready with a warning: a part reports a [`Condition::Degraded`] that does not
//! stop the bridge serving what it holds (the pool's coordinator unreachable or its lease lost:
//! running sessions and the calls on them keep working, only new sign-ins wait). The probe
//! stays successful — failing it would take every replica out of its Service at once during an
//! etcd outage although their sessions work — and the condition shows in `/readyz`'s body and
//! in one log line per change.
//!
//! The check runs on every change of the gateway's reachability and once a second. It is O(1)
//! per tick: [`PinnedAgents`] keeps the count of pinned agents that block readiness up to date
//! as their state changes, and the reason text (which lists agents) is rebuilt only when that
//! state changed. Each change of readiness or of its reason is logged once, with a hint where
//! one exists (`--ca-cert` for an untrusted certificate, …).

use crate::gateway::GatewayClient;
use crate::telemetry::Metrics;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How often readiness is re-checked (and the gateway probed while it looks unreachable).
const TICK: Duration = Duration::from_secs(1);
/// At most this many agents are named in a reason; the rest are counted.
const NAMED_AGENTS: usize = 10;

/// Where one pinned agent stands, as far as readiness is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pinned {
    /// Signed in through this bridge.
    Held,
    /// Signed in by another client (`100-002`): not blocking readiness.
    HeldElsewhere,
    /// Not signed in (yet, or again): why, e.g. the last sign-in error.
    Down(String),
}

impl Pinned {
    fn blocks(&self) -> bool {
        matches!(self, Pinned::Down(_))
    }
}

/// The pinned agents' states with a running count of those blocking readiness, so readiness
/// never scans every agent (the session layer reports each change: `set`, `remove`).
#[derive(Default)]
pub struct PinnedAgents {
    states: Mutex<BTreeMap<Arc<str>, Pinned>>,
    blocking: AtomicUsize,
    /// Bumped on every change, so the reason text is rebuilt only when something changed.
    generation: AtomicU64,
}

impl PinnedAgents {
    fn states(&self) -> std::sync::MutexGuard<'_, BTreeMap<Arc<str>, Pinned>> {
        self.states.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records `agent`'s state (a pinned agent is added by its first `set`).
    pub fn set(&self, agent: &str, state: Pinned) {
        let mut states = self.states();
        let now_blocks = state.blocks();
        let before = match states.get_mut(agent) {
            Some(old) if *old == state => return,
            Some(old) => std::mem::replace(old, state).blocks(),
            None => {
                states.insert(Arc::from(agent), state);
                false
            }
        };
        self.adjust(before, now_blocks);
    }

    /// Forgets `agent` (a caller signed it out: it is no longer pinned).
    pub fn remove(&self, agent: &str) {
        let mut states = self.states();
        if let Some(old) = states.remove(agent) {
            self.adjust(old.blocks(), false);
        }
    }

    fn adjust(&self, before: bool, after: bool) {
        match (before, after) {
            (false, true) => {
                self.blocking.fetch_add(1, Ordering::AcqRel);
            }
            (true, false) => {
                self.blocking.fetch_sub(1, Ordering::AcqRel);
            }
            _ => {}
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// How many pinned agents block readiness (O(1)).
    pub fn blocking(&self) -> usize {
        self.blocking.load(Ordering::Acquire)
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// "1001 (why), 1002 (why) and 3 more": the blocking agents, for a reason.
    fn describe_blocking(&self) -> String {
        let states = self.states();
        let down: Vec<String> = states
            .iter()
            .filter_map(|(id, s)| match s {
                Pinned::Down(why) => Some(format!("{id} ({why})")),
                _ => None,
            })
            .collect();
        let mut text = down
            .iter()
            .take(NAMED_AGENTS)
            .cloned()
            .collect::<Vec<_>>()
            .join(", ");
        if down.len() > NAMED_AGENTS {
            text.push_str(&format!(" and {} more", down.len() - NAMED_AGENTS));
        }
        text
    }

    /// Pinned agents signed in by another client, for the log when ready.
    fn held_elsewhere(&self) -> usize {
        self.states()
            .values()
            .filter(|s| **s == Pinned::HeldElsewhere)
            .count()
    }
}

/// What a part other than the gateway and the pinned agents (the agent pool) reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// Nothing to report.
    Fine,
    /// Serving goes on, with this warning (shown in `/readyz` and logged).
    Degraded(&'static str),
    /// Not ready, for this reason (which may name what was tried and what failed).
    Blocking(Cow<'static, str>),
}

/// What `/readyz` and the `ccgw_ready` gauge show: readiness and its reason, kept by
/// [`Readiness::run`].
pub struct ReadyStatus {
    ready: AtomicBool,
    body: Mutex<Arc<str>>,
}

impl Default for ReadyStatus {
    fn default() -> Self {
        Self {
            ready: AtomicBool::new(false),
            body: Mutex::new(Arc::from("not ready: starting\n")),
        }
    }
}

impl ReadyStatus {
    /// Whether the bridge is ready (a degraded bridge is).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// `/readyz`'s body: `ready`, or `not ready: <reason>`, then one `degraded: …` line per
    /// warning.
    pub fn body(&self) -> Arc<str> {
        self.body.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set(&self, verdict: &Verdict, degraded: Option<&'static str>) {
        let mut body = if *verdict == Verdict::Ready {
            "ready\n".to_owned()
        } else {
            format!("not ready: {verdict}\n")
        };
        if let Some(warning) = degraded {
            body.push_str(&format!("degraded: {warning}\n"));
        }
        *self.body.lock().unwrap_or_else(|p| p.into_inner()) = Arc::from(body);
        self.ready
            .store(*verdict == Verdict::Ready, Ordering::Release);
    }

    /// Marks the bridge not ready because it drains.
    pub fn draining(&self) {
        self.set(&Verdict::Draining, None);
    }
}

/// Why the bridge is not ready (or `Ready`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Serving.
    Ready,
    /// The gateway does not answer: the cause, and a hint when one helps.
    GatewayUnreachable {
        /// The transport error (connect, TLS, timeout).
        cause: String,
        /// What to change, when the cause suggests it.
        hint: Option<&'static str>,
    },
    /// Pinned agents not signed in, with why.
    AgentsNotHeld(String),
    /// A part reports [`Condition::Blocking`].
    Blocked(Cow<'static, str>),
    /// The bridge is shutting down.
    Draining,
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Verdict::Ready => f.write_str("ready"),
            Verdict::GatewayUnreachable { cause, hint } => {
                write!(f, "gateway unreachable: {cause}")?;
                match hint {
                    Some(hint) => write!(f, " (hint: {hint})"),
                    None => Ok(()),
                }
            }
            Verdict::AgentsNotHeld(agents) => {
                write!(f, "pinned agents not signed in: {agents}")
            }
            Verdict::Blocked(reason) => f.write_str(reason),
            Verdict::Draining => f.write_str("draining"),
        }
    }
}

/// A hint for a gateway transport error, when its text points at a known mistake.
pub fn hint_for(cause: &str) -> Option<&'static str> {
    let c = cause.to_ascii_lowercase();
    // BadSignature: a CA of the same name as the issuer, but not the issuer (another
    // installation's CA, a re-generated one).
    if c.contains("unknownissuer")
        || c.contains("badsignature")
        || c.contains("self-signed")
        || c.contains("self signed")
    {
        Some("the gateway's certificate is signed by a CA this bridge does not trust: --ca-cert must hold the PEM of the CA that issued it (without --ca-cert, the system roots are used)")
    } else if c.contains("invalidcontenttype")
        || c.contains("corrupt message")
        || c.contains("http/1")
        || c.contains("wrong version number")
    {
        Some("the port of --gateway-url answered without TLS, like a plain HTTP port: the gateway's agent API is HTTPS (often port 8043); check the port")
    } else if c.contains("notvalidforname") || c.contains("not valid for name") {
        Some("the gateway's certificate does not name the --gateway-url host: use the name (or IP) the certificate was issued for")
    } else if c.contains("expired") {
        Some("the gateway's certificate has expired")
    } else if c.contains("certificate") {
        Some("the gateway's TLS certificate was refused: check --ca-cert (and --client-cert for mutual TLS)")
    } else if c.contains("connection refused") {
        Some("nothing listens at --gateway-url: check its host and port")
    } else if c.contains("timed out") || c.contains("timeout") {
        Some("connection attempts time out (--connect-timeout): check the address and any firewall on the path")
    } else if c.contains("dns") || c.contains("failed to lookup") || c.contains("name resolution") {
        Some("the --gateway-url host name does not resolve")
    } else {
        None
    }
}

/// What the readiness loop drives.
pub struct Readiness {
    /// The gateway client (its reachability, and a probe while it looks unreachable).
    pub gateway: GatewayClient,
    /// The pinned agents' states.
    pub pinned: Arc<PinnedAgents>,
    /// Whether any agent is held (no traffic then shows the gateway's health: probe it).
    pub idle: Box<dyn Fn() -> bool + Send + Sync>,
    /// What another part reports (the agent pool's lease), checked every tick in O(1).
    pub condition: Box<dyn Fn() -> Condition + Send + Sync>,
    /// Read by `/readyz`.
    pub status: Arc<ReadyStatus>,
    /// Exports readiness as a gauge.
    pub metrics: Arc<Metrics>,
}

impl Readiness {
    /// Keeps `ready` (and `on_change`, the gRPC health status) in step with reality until
    /// `draining` is cancelled. Reacts at once to the gateway client's reachability changes and
    /// re-checks every [`TICK`], probing the gateway when no traffic shows its health.
    pub async fn run<F, Fut>(self, draining: CancellationToken, mut on_change: F)
    where
        F: FnMut(bool) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let mut reachability = self.gateway.reachability();
        let mut last: Option<(Verdict, Option<&'static str>)> = None;
        let mut last_probe: Option<Instant> = None;
        // The cause of the last failed probe; cleared whenever the gateway answers.
        let mut cause: Option<String> = None;
        let mut seen_generation = u64::MAX;
        let mut agents_text = String::new();
        loop {
            let mut reachable = *reachability.borrow_and_update();
            if reachable {
                cause = None;
            }
            let probe_due = last_probe.is_none_or(|t| t.elapsed() >= TICK);
            // Probe when idle (nothing else shows the gateway's health), and when unreachable
            // without a known cause (so the change is logged once, with its cause).
            if (!reachable || (self.idle)()) && (probe_due || (!reachable && cause.is_none())) {
                last_probe = Some(Instant::now());
                match self.gateway.probe().await {
                    Ok(()) => {
                        reachable = true;
                        cause = None;
                    }
                    Err(e) => {
                        reachable = false;
                        cause = Some(e);
                    }
                }
                reachability.borrow_and_update();
            }
            let condition = (self.condition)();
            let verdict = if !reachable {
                let cause = cause
                    .clone()
                    .unwrap_or_else(|| "a request could not connect".into());
                Verdict::GatewayUnreachable {
                    hint: hint_for(&cause),
                    cause,
                }
            } else if self.pinned.blocking() > 0 {
                let generation = self.pinned.generation();
                if generation != seen_generation {
                    seen_generation = generation;
                    agents_text = self.pinned.describe_blocking();
                }
                Verdict::AgentsNotHeld(agents_text.clone())
            } else if let Condition::Blocking(reason) = &condition {
                Verdict::Blocked(reason.clone())
            } else {
                Verdict::Ready
            };
            let degraded = match condition {
                Condition::Degraded(warning) => Some(warning),
                _ => None,
            };
            if last.as_ref() != Some(&(verdict.clone(), degraded)) {
                let now = verdict == Verdict::Ready;
                let was = last.as_ref().map(|(v, _)| *v == Verdict::Ready);
                self.status.set(&verdict, degraded);
                self.metrics.set_ready(now);
                if was != Some(now) {
                    on_change(now).await;
                }
                self.log(&verdict, degraded);
                last = Some((verdict, degraded));
            }
            tokio::select! {
                () = draining.cancelled() => {
                    tracing::info!(ready = false, reason = "draining", "readiness changed");
                    return;
                }
                _ = reachability.changed() => {}
                () = tokio::time::sleep(TICK) => {}
            }
        }
    }

    fn log(&self, verdict: &Verdict, degraded: Option<&'static str>) {
        if let Some(warning) = degraded {
            tracing::warn!(ready = *verdict == Verdict::Ready, reason = %verdict, degraded = warning, "readiness changed: degraded");
            return;
        }
        match verdict {
            Verdict::Ready => {
                let elsewhere = self.pinned.held_elsewhere();
                if elsewhere > 0 {
                    tracing::info!(ready = true, pinned_held_elsewhere = elsewhere, "readiness changed: ready; some pinned agents are signed in by another client (100-002) and do not block readiness");
                } else {
                    tracing::info!(ready = true, "readiness changed: ready");
                }
            }
            not_ready => {
                tracing::warn!(ready = false, reason = %not_ready, "readiness changed: not ready");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_blocking_count_follows_every_change() {
        let p = PinnedAgents::default();
        p.set("1001", Pinned::Down("not signed in yet".into()));
        p.set("1002", Pinned::Down("not signed in yet".into()));
        assert_eq!(p.blocking(), 2);
        p.set("1001", Pinned::Held);
        p.set("1001", Pinned::Held);
        assert_eq!(p.blocking(), 1);
        p.set("1002", Pinned::HeldElsewhere);
        assert_eq!(p.blocking(), 0, "held elsewhere does not block");
        p.set("1002", Pinned::Down("WRONG_PASSWORD".into()));
        assert_eq!(p.blocking(), 1);
        assert_eq!(p.describe_blocking(), "1002 (WRONG_PASSWORD)");
        p.remove("1002");
        p.remove("1002");
        assert_eq!(p.blocking(), 0);
    }

    #[test]
    fn many_blocking_agents_are_summarised() {
        let p = PinnedAgents::default();
        for i in 0..25 {
            p.set(&format!("{}", 1000 + i), Pinned::Down("x".into()));
        }
        assert!(p.describe_blocking().ends_with(" and 15 more"));
    }

    #[test]
    fn the_readyz_body_gives_the_reason_and_any_warning() {
        let s = ReadyStatus::default();
        assert!(!s.is_ready());
        s.set(
            &Verdict::Ready,
            Some("agent pool: coordinator (etcd) unreachable"),
        );
        assert!(s.is_ready(), "degraded is still ready");
        assert_eq!(
            &*s.body(),
            "ready\ndegraded: agent pool: coordinator (etcd) unreachable\n"
        );
        s.set(&Verdict::Blocked("agent pool: not joined yet".into()), None);
        assert!(!s.is_ready());
        assert_eq!(&*s.body(), "not ready: agent pool: not joined yet\n");
        s.draining();
        assert_eq!(&*s.body(), "not ready: draining\n");
    }

    #[test]
    fn hints_name_the_fix() {
        let tls = "error sending request: client error (Connect): invalid peer certificate: UnknownIssuer";
        assert!(hint_for(tls).unwrap().contains("--ca-cert"));
        assert!(
            hint_for("tcp connect error: Connection refused (os error 111)")
                .unwrap()
                .contains("--gateway-url")
        );
        assert_eq!(hint_for("something new"), None);
        let v = Verdict::GatewayUnreachable {
            cause: tls.into(),
            hint: hint_for(tls),
        };
        assert!(v.to_string().contains("UnknownIssuer (hint: "), "{v}");
    }
}
