//! Push mode (api-notes §3.3): a session signed in with both `callBackUri` and `serviceToken`
//! gets its events POSTed to the callback instead of polled, and must send a heartbeat
//! (`POST /onlineagent/{id}/handshake`) or be signed out after the idle limit.
//!
//! One pusher task per push session: it takes every event queued for the session (all of
//! them: events queued while a POST is in flight go out together in the next batch), POSTs
//! `{"workNo", "eventList"}` with headers `Guid` and `service_token`, and on anything but
//! HTTP 200 with `retcode` `"0"` puts the batch back at the head of the queue and tries again
//! after a back-off. [Unsure: the vendor documents neither retries nor their pacing; a gateway
//! that dropped a refused batch would lose events the receiver refused.] Everything delivered
//! is recorded ([`super::Simulator::pushed`]), so tests can prove nothing was lost or
//! duplicated.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::header::HeaderName;
use serde_json::{json, Value};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::shared::Shared;
use super::state::{Agent, NOT_SIGNED_IN};
use super::sync::lock;
use super::wire::{self, Reply};

/// Where and how a push session's events are delivered (from its sign-in body).
#[derive(Debug, Clone)]
pub(crate) struct PushTarget {
    pub uri: String,
    pub token: String,
}

/// A fault of the gateway's (or the network's) side of a callback, taken one per POST attempt
/// in insertion order ([`super::Simulator::add_push_fault`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushFault {
    /// Wait this long before the POST; events queued meanwhile join the batch.
    Slow(Duration),
    /// Open a TCP connection to the callback and close it without a handshake or request;
    /// the batch is retried.
    ConnectionReset,
    /// After a delivery, deliver the same batch again (a gateway retrying a batch whose answer
    /// it lost). Both deliveries are recorded.
    Duplicate,
    /// Present a wrong `service_token`; the batch is retried with the right one.
    WrongToken,
    /// Present a Guid the session never had; the batch is retried with the right one.
    WrongGuid,
}

/// One event the simulator delivered to a callback.
#[derive(Debug, Clone, PartialEq)]
pub struct Pushed {
    /// The agent.
    pub agent_id: String,
    /// The gateway session it was pushed for (the simulator numbers each agent's sessions in
    /// the order they began), so a test can compare what watchers saw session by session.
    pub session: u64,
    /// The event object as sent.
    pub event: Value,
}

/// The pushers' shared parts: the HTTPS client, faults and the delivery record.
pub(crate) struct Push {
    client: reqwest::Client,
    faults: Mutex<VecDeque<PushFault>>,
    record: Mutex<Vec<Pushed>>,
    recorded: Notify,
    /// Callback POSTs not answered with success (refusals, transport failures).
    pub failures: std::sync::atomic::AtomicU64,
}

impl Push {
    /// A client trusting the simulator's own CA and `extra_ca` (PEM), TLS 1.2+, HTTP/1.1.
    pub fn new(ca_pem: &str, extra_ca: Option<&str>) -> std::io::Result<Push> {
        // The client takes the process's rustls provider; make sure there is one.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut certs = Vec::new();
        for pem in std::iter::once(ca_pem).chain(extra_ca) {
            certs.extend(
                reqwest::Certificate::from_pem_bundle(pem.as_bytes())
                    .map_err(std::io::Error::other)?,
            );
        }
        let client = reqwest::Client::builder()
            .http1_only()
            .tls_certs_only(certs)
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(15))
            .build()
            .map_err(std::io::Error::other)?;
        Ok(Push {
            client,
            faults: Mutex::new(VecDeque::new()),
            record: Mutex::new(Vec::new()),
            recorded: Notify::new(),
            failures: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Adds a fault for a later POST attempt.
    pub fn add_fault(&self, fault: PushFault) {
        lock(&self.faults).push_back(fault);
    }

    /// Every event delivered to `agent_id`'s callbacks, in delivery order.
    pub fn pushed(&self, agent_id: &str) -> Vec<Value> {
        lock(&self.record)
            .iter()
            .filter(|p| p.agent_id == agent_id)
            .map(|p| p.event.clone())
            .collect()
    }

    /// Every delivery to `agent_id`'s callbacks, with its session, in delivery order.
    pub fn records(&self, agent_id: &str) -> Vec<Pushed> {
        lock(&self.record)
            .iter()
            .filter(|p| p.agent_id == agent_id)
            .cloned()
            .collect()
    }

    /// Waits (event driven) until at least `n` events were delivered to `agent_id`.
    pub async fn wait_pushed(&self, agent_id: &str, n: usize) -> Vec<Value> {
        loop {
            let woken = self.recorded.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let pushed = self.pushed(agent_id);
            if pushed.len() >= n {
                return pushed;
            }
            woken.await;
        }
    }

    fn record(&self, agent_id: &str, session: u64, events: &[Value]) {
        lock(&self.record).extend(events.iter().map(|event| Pushed {
            agent_id: agent_id.to_owned(),
            session,
            event: event.clone(),
        }));
        self.recorded.notify_waiters();
    }
}

/// `POST /onlineagent/{id}/handshake`: keeps the session alive (like any authenticated
/// request) and, in dynamic auth, delivers a due Guid rotation as `Set-GUID`.
pub(crate) fn heartbeat(shared: &Shared, agent_id: &str, guid: Option<&str>) -> Reply {
    let Some(agent) = shared.agents.get(agent_id) else {
        return Reply::retcode(NOT_SIGNED_IN);
    };
    let new_guid = {
        let mut state = agent.lock();
        let now = Instant::now();
        let due = match state.authenticate(guid, now) {
            Ok(session) => session.rotation_due(now),
            Err(retcode) => return Reply::retcode(retcode),
        };
        if due {
            state.replace_guid(&shared.agents, now)
        } else {
            None
        }
    };
    let reply = Reply::json(&json!({"message": "success", "retcode": "0"}));
    match new_guid {
        Some(guid) => reply.with_header(
            HeaderName::from_static("set-guid"),
            wire::set_guid(&guid, shared.config.set_guid_attributes),
        ),
        None => reply,
    }
}

/// What a push session has to deliver now.
enum Take {
    /// A batch: events, with the Guid and target to present.
    Batch {
        events: Vec<Value>,
        guid: String,
        target: PushTarget,
        work_no: String,
    },
    /// Nothing queued: wait for a wake-up.
    Wait,
    /// The session is over and owes nothing.
    Done,
}

/// Delivers the events of push session `serial` of `agent` until it ended and owes nothing.
pub(crate) async fn pusher(shared: Arc<Shared>, agent: Arc<Agent>, serial: u64) {
    let mut failures: u32 = 0;
    loop {
        let woken = agent.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let (events, guid, target, work_no) = match take(&agent, serial) {
            Take::Done => return,
            Take::Wait => {
                tokio::select! {
                    () = &mut woken => continue,
                    () = shared.shutdown.cancelled() => return,
                }
            }
            Take::Batch {
                events,
                guid,
                target,
                work_no,
            } => (events, guid, target, work_no),
        };
        let fault = lock(&shared.push.faults).pop_front();
        if let Some(PushFault::Slow(delay)) = fault {
            // Put the batch back, wait, then take everything queued by then.
            requeue(&agent, serial, events, 0);
            tokio::select! {
                () = tokio::time::sleep(delay) => continue,
                () = shared.shutdown.cancelled() => return,
            }
        }
        let body = json!({"workNo": work_no, "eventList": events});
        let delivered = tokio::select! {
            ok = post(&shared, &target, &guid, &body, fault.as_ref()) => ok,
            () = shared.shutdown.cancelled() => return,
        };
        if delivered {
            failures = 0;
            shared.push.record(&agent.id, serial, &events);
            if fault == Some(PushFault::Duplicate)
                && post(&shared, &target, &guid, &body, None).await
            {
                shared.push.record(&agent.id, serial, &events);
            }
            settle_farewell(&agent, serial);
        } else {
            shared
                .push
                .failures
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            failures = failures.saturating_add(1);
            if !requeue(&agent, serial, events, failures) {
                return;
            }
            let pause = Duration::from_millis(50 << failures.min(6));
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = shared.shutdown.cancelled() => return,
            }
        }
    }
}

/// One POST; whether the receiver answered HTTP 200 with `retcode` `"0"`.
async fn post(
    shared: &Shared,
    target: &PushTarget,
    guid: &str,
    body: &Value,
    fault: Option<&PushFault>,
) -> bool {
    if fault == Some(&PushFault::ConnectionReset) {
        reset(&target.uri).await;
        return false;
    }
    let token = match fault {
        Some(PushFault::WrongToken) => "WrongToken0000000000000000000000",
        _ => target.token.as_str(),
    };
    let guid = match fault {
        Some(PushFault::WrongGuid) => "00000000-0000-4000-8000-000000000000.AgentGateway0",
        _ => guid,
    };
    let sent = shared
        .push
        .client
        .post(&target.uri)
        .header(http::header::CONTENT_TYPE, wire::JSON_CONTENT_TYPE)
        .header("Guid", guid)
        .header("service_token", token)
        .body(body.to_string())
        .send()
        .await;
    let Ok(response) = sent else {
        return false;
    };
    if response.status() != http::StatusCode::OK {
        return false;
    }
    response
        .json::<Value>()
        .await
        .is_ok_and(|v| v.get("retcode").and_then(Value::as_str) == Some("0"))
}

/// Connects to the callback's host and port and closes at once, without a handshake or request.
async fn reset(uri: &str) {
    let Ok(url) = reqwest::Url::parse(uri) else {
        return;
    };
    let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
        return;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    // Connected, then closed before any TLS or HTTP: the receiver sees a connection end.
    drop(tokio::net::TcpStream::connect((host, port)).await);
}

/// Takes everything the push session `serial` has queued (the session's queue, or after a
/// forced end, what its farewell still owes).
fn take(agent: &Agent, serial: u64) -> Take {
    let mut state = agent.lock();
    if let Some(session) = state.session.as_mut().filter(|s| s.serial == serial) {
        let Some(target) = session.push.clone() else {
            return Take::Done;
        };
        if session.events.is_empty() {
            return Take::Wait;
        }
        return Take::Batch {
            events: session.events.drain(..).collect(),
            guid: session.guid().to_owned(),
            target,
            work_no: session.work_no.clone(),
        };
    }
    let Some(farewell) = state.farewell.as_mut().filter(|f| f.serial == serial) else {
        return Take::Done;
    };
    let (Some(target), Some(guid)) = (farewell.push.clone(), farewell.guids.first().cloned())
    else {
        return Take::Done;
    };
    if farewell.events.is_empty() {
        state.farewell = None;
        return Take::Done;
    }
    Take::Batch {
        events: farewell.events.drain(..).collect(),
        guid,
        target,
        work_no: agent.id.clone(),
    }
}

/// Farewell deliveries (after the session ended) tried at most this often: the receiver may
/// be gone, or hold a newer session that rightly refuses the old token.
const FAREWELL_TRIES: u32 = 5;

/// Puts an undelivered batch back at the head of the queue it came from; `false` when there
/// is nothing left to deliver to (the session ended without a farewell, or its farewell was
/// tried `FAREWELL_TRIES` times: then it is dropped, as a gateway would have to).
fn requeue(agent: &Agent, serial: u64, events: Vec<Value>, failures: u32) -> bool {
    let mut state = agent.lock();
    let queue = if let Some(session) = state.session.as_mut().filter(|s| s.serial == serial) {
        &mut session.events
    } else if failures >= FAREWELL_TRIES {
        if state.farewell.as_ref().is_some_and(|f| f.serial == serial) {
            state.farewell = None;
        }
        return false;
    } else if let Some(farewell) = state.farewell.as_mut().filter(|f| f.serial == serial) {
        &mut farewell.events
    } else {
        return false;
    };
    for event in events.into_iter().rev() {
        queue.push_front(event);
    }
    true
}

/// Forgets a push session's farewell once it is delivered.
fn settle_farewell(agent: &Agent, serial: u64) {
    let mut state = agent.lock();
    if state
        .farewell
        .as_ref()
        .is_some_and(|f| f.serial == serial && f.events.is_empty())
    {
        state.farewell = None;
    }
}
