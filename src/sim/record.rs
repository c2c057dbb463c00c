//! The log of received requests, so tests can assert on exactly what the bridge put on the wire
//! (headers, Guid, body) and wait for a request without sleeping.

use std::collections::VecDeque;
use std::sync::Mutex;

use serde::Serialize;
use tokio::sync::Notify;

use super::sync::lock;

/// Requests kept at most; older ones are forgotten so a long benchmark cannot exhaust memory.
const MAX_RECORDED: usize = 200_000;

/// One request as the simulator received it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecordedRequest {
    /// HTTP method, e.g. `PUT`.
    pub method: String,
    /// Path without the query, e.g. `/agentgateway/resource/onlineagent/101`.
    pub path: String,
    /// Query string without `?`, if any.
    pub query: Option<String>,
    /// Headers in arrival order, names lower-case.
    pub headers: Vec<(String, String)>,
    /// Body as text (lossy UTF-8).
    pub body: String,
    /// Agent id from the path, when the path is an agent interface.
    pub agent_id: Option<String>,
    /// Which TLS connection brought it: the simulator numbers connections from 0 in the order
    /// their handshakes completed, so tests can count the connections a kind of request used.
    pub connection: u64,
}

impl RecordedRequest {
    /// First value of a header, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body parsed as JSON, if it is JSON.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_str(&self.body).ok()
    }
}

/// Append-only (bounded) request log with a wake-up for waiters.
#[derive(Default)]
pub(crate) struct RequestLog {
    entries: Mutex<VecDeque<RecordedRequest>>,
    added: Notify,
}

impl RequestLog {
    /// Records a request and wakes the waiters.
    pub fn push(&self, request: RecordedRequest) {
        {
            let mut entries = lock(&self.entries);
            if entries.len() >= MAX_RECORDED {
                entries.pop_front();
            }
            entries.push_back(request);
        }
        self.added.notify_waiters();
    }

    /// A copy of the recorded requests, oldest first.
    pub fn all(&self) -> Vec<RecordedRequest> {
        lock(&self.entries).iter().cloned().collect()
    }

    /// Forgets every recorded request.
    pub fn clear(&self) {
        lock(&self.entries).clear()
    }

    /// The first recorded request matching `pred`, waiting for new ones until one matches.
    pub async fn wait_for(&self, pred: impl Fn(&RecordedRequest) -> bool) -> RecordedRequest {
        loop {
            let added = self.added.notified();
            tokio::pin!(added);
            // Register before looking, so a push between the look and the wait is not missed.
            added.as_mut().enable();
            if let Some(found) = lock(&self.entries).iter().find(|r| pred(r)) {
                return found.clone();
            }
            added.await;
        }
    }
}
