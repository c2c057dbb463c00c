//! The bridge-wide bound on retained events: a byte budget and an age, shared by every session.
//!
//! Each session keeps a window of recent events so watchers can resume. Without a global bound
//! that memory grows with the number of busy agents times the per-session window (at 1,000 busy
//! agents, gigabytes). The budget makes it a fixed, configured amount: every published event is
//! entered in one bridge-wide ledger, oldest first, and when the ledger's total exceeds the budget
//! (or its oldest entry exceeds the age) the oldest events — whichever session holds them — are
//! dropped from their windows. The per-session window stays a cap on top.
//!
//! The ledger counts an event until *it* evicts it, even when the session's own cap or the end of
//! the session released the event earlier; so the count can only overstate what is held, and the
//! memory held by retained events never exceeds the budget.

use super::hub::Hub;
use crate::telemetry::{EvictionCause, Metrics};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// Default bridge-wide budget of retained events.
pub const DEFAULT_BUDGET_BYTES: usize = 16 << 20;
/// Default age after which a retained event is dropped.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(600);

/// Memory one ledger entry costs beside the event it accounts for; part of every event's charge.
pub(super) const ENTRY_BYTES: usize = std::mem::size_of::<Entry>();

/// A handle on the bridge-wide ledger; clones share it.
#[derive(Clone)]
pub struct EventBudget {
    inner: Arc<Ledger>,
}

struct Ledger {
    max_bytes: usize,
    max_age: Duration,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    used: usize,
    entries: VecDeque<Entry>,
}

/// One retained event as the ledger sees it: where it lives and what it costs.
struct Entry {
    hub: Weak<Hub>,
    sequence: u64,
    bytes: usize,
    at: Instant,
}

/// Events to drop, collected under the ledger lock and dropped after it is released (a hub's
/// window lock is never taken while the ledger lock is held, and vice versa).
pub(super) struct Evictions(Vec<(Weak<Hub>, u64, EvictionCause)>);

impl Evictions {
    /// Drops every listed event (and anything older in the same window), counting in
    /// `metrics` the events actually dropped (not those the session's own window or its end
    /// had released already).
    pub(super) fn apply(self, metrics: &Metrics) {
        for (hub, sequence, cause) in self.0 {
            if let Some(hub) = hub.upgrade() {
                metrics.events_evicted(cause, hub.evict_through(sequence));
            }
        }
    }
}

impl std::fmt::Debug for EventBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventBudget")
            .field("max_bytes", &self.inner.max_bytes)
            .field("max_age", &self.inner.max_age)
            .field("used", &self.used())
            .finish()
    }
}

impl Default for EventBudget {
    fn default() -> Self {
        Self::new(DEFAULT_BUDGET_BYTES, DEFAULT_MAX_AGE)
    }
}

impl EventBudget {
    /// A ledger holding at most `max_bytes` of events, none older than `max_age`.
    pub fn new(max_bytes: usize, max_age: Duration) -> Self {
        Self {
            inner: Arc::new(Ledger {
                max_bytes,
                max_age,
                state: Mutex::new(State::default()),
            }),
        }
    }

    /// The configured budget in bytes.
    pub fn max_bytes(&self) -> usize {
        self.inner.max_bytes
    }

    /// Bytes currently charged (an upper bound of what retained events hold).
    pub fn used(&self) -> usize {
        self.lock().used
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Charges a just-retained event and returns what must go to stay within the bounds. The
    /// newest entry itself is never evicted, so a live watcher always gets the latest event.
    pub(super) fn charge(
        &self,
        hub: &Arc<Hub>,
        sequence: u64,
        bytes: usize,
        metrics: &Metrics,
    ) -> Evictions {
        let now = Instant::now();
        let mut s = self.lock();
        s.used += bytes;
        s.entries.push_back(Entry {
            hub: Arc::downgrade(hub),
            sequence,
            bytes,
            at: now,
        });
        self.collect(&mut s, now, 1, metrics)
    }

    /// Drops events older than the age bound (a resume must not reach them).
    pub(super) fn expire(&self, metrics: &Metrics) -> Evictions {
        let mut s = self.lock();
        self.collect(&mut s, Instant::now(), 0, metrics)
    }

    /// Pops what exceeds the bounds; sets the bytes-in-use gauge under the lock, so the last
    /// value set is the current one.
    fn collect(&self, s: &mut State, now: Instant, keep: usize, metrics: &Metrics) -> Evictions {
        let mut out: Vec<(Weak<Hub>, u64, EvictionCause)> = Vec::new();
        while s.entries.len() > keep {
            let front = &s.entries[0];
            let over = s.used > self.inner.max_bytes;
            let stale = now.saturating_duration_since(front.at) >= self.inner.max_age;
            if !over && !stale {
                break;
            }
            let Some(e) = s.entries.pop_front() else {
                break;
            };
            s.used -= e.bytes;
            // An event past the age bound would go anyway: age, even when the budget is over too.
            let cause = if stale {
                EvictionCause::Age
            } else {
                EvictionCause::Budget
            };
            // Consecutive entries of one hub and cause collapse into one eviction up to the newest.
            match out.last_mut() {
                Some((hub, seq, c)) if Weak::ptr_eq(hub, &e.hub) && *c == cause => {
                    *seq = e.sequence
                }
                _ => out.push((e.hub, e.sequence, cause)),
            }
        }
        metrics.set_retained_event_bytes(s.used);
        Evictions(out)
    }
}
