//! The bridge-wide bound on retained events: a byte budget and an age, shared by every session.
//!
//! Each session keeps a window of recent events so watchers can resume. Without a global bound
//! that memory grows with the number of busy agents times the per-session window (at 1,000 busy
//! agents, gigabytes). The budget makes it a fixed, configured amount: every published event is
//! entered in one bridge-wide ledger, oldest first, and when the ledger's total exceeds the budget
//! (or its oldest entry exceeds the age) the oldest events — whichever session holds them — are
//! dropped from their windows. The per-session window stays a cap on top.
//!
//! An event the session released by itself (its window cap dropped it, or the session ended) is
//! released in the ledger at once: from then on only its ledger entry is charged, until the
//! ledger drops the entry too (entries of released events are compacted away when they are at
//! least half of the ledger and the budget is full). So a busy session's released events never
//! push out a quiet session's real ones.
//!
//! The budget never evicts a session's newest event, nor one at or after the cursor of any of its
//! watchers still in the window (a watcher waiting for the next event, or reading what came): it
//! evicts the next-oldest unprotected event instead. Those protected events may exceed the budget;
//! a watcher stops protecting once it has fallen out of its window (`--event-window`), so they are
//! bounded by the window of each session with a lagging watcher. The age bound drops events
//! whatever protects them.

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
    /// Entries whose event its session released already (charged `ENTRY_BYTES` only).
    released: usize,
}

/// One retained event as the ledger sees it: where it lives and what it costs.
struct Entry {
    hub: Weak<Hub>,
    sequence: u64,
    bytes: usize,
    at: Instant,
}

/// Events to drop, collected under the ledger lock and dropped after it is released (a hub's
/// window lock is never taken while the ledger lock is held, and vice versa). It also holds the
/// hubs the ledger looked at, so none is dropped (which takes the ledger lock) under that lock.
pub(super) struct Evictions {
    evict: Vec<(Arc<Hub>, u64, EvictionCause)>,
    _seen: Vec<Arc<Hub>>,
}

impl Evictions {
    /// Drops every listed event (and anything older in the same window), counting in
    /// `metrics` the events actually dropped.
    pub(super) fn apply(self, metrics: &Metrics) {
        for (hub, sequence, cause) in &self.evict {
            metrics.events_evicted(*cause, hub.evict_through(*sequence));
        }
    }
}

/// Where a ledger entry's event stands.
enum Standing {
    /// Released by its session (window cap, end): only the entry is left.
    Released,
    /// Its session's newest, or not yet read by a watcher in the window: only age evicts it.
    Protected(Arc<Hub>),
    /// Held and evictable.
    Held(Arc<Hub>),
}

fn standing(entry: &Entry, seen: &mut Vec<Arc<Hub>>) -> Standing {
    let Some(hub) = entry.hub.upgrade() else {
        return Standing::Released;
    };
    let standing = if entry.sequence <= hub.released_through() {
        Standing::Released
    } else if entry.sequence >= hub.protected_from() {
        Standing::Protected(hub.clone())
    } else {
        Standing::Held(hub.clone())
    };
    seen.push(hub);
    standing
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

    /// The session released `events` (sequence, charge) by itself: its window cap dropped
    /// them, or (`ended`) the session is gone. Their charges are released, but for their ledger
    /// entries; each at most once, whoever releases it first.
    pub(super) fn release(
        &self,
        hub: &Hub,
        events: impl Iterator<Item = (u64, usize)>,
        ended: bool,
        metrics: &Metrics,
    ) {
        let mut s = self.lock();
        let through = hub.released_through();
        let mut newest = through;
        for (sequence, bytes) in events.filter(|(sequence, _)| *sequence > through) {
            s.used -= bytes - ENTRY_BYTES;
            s.released += 1;
            newest = newest.max(sequence);
        }
        hub.set_released_through(if ended { u64::MAX } else { newest });
        metrics.set_retained_event_bytes(s.used);
    }

    /// Drops events older than the age bound (a resume must not reach them).
    pub(super) fn expire(&self, metrics: &Metrics) -> Evictions {
        let mut s = self.lock();
        self.collect(&mut s, Instant::now(), 0, metrics)
    }

    /// Pops what exceeds the bounds: past the age bound from the oldest on (but the newest
    /// `keep`), then over the budget the oldest unprotected events. Sets the bytes-in-use gauge
    /// under the lock, so the last value set is the current one.
    fn collect(&self, s: &mut State, now: Instant, keep: usize, metrics: &Metrics) -> Evictions {
        let mut out = Evictions {
            evict: Vec::new(),
            _seen: Vec::new(),
        };
        while s.entries.len() > keep
            && now.saturating_duration_since(s.entries[0].at) >= self.inner.max_age
        {
            self.drop_entry(s, 0, EvictionCause::Age, &mut out);
        }
        if s.used > self.inner.max_bytes && s.released * 2 > s.entries.len() {
            self.compact(s, &mut out._seen);
        }
        let mut i = 0;
        while s.used > self.inner.max_bytes && i < s.entries.len() {
            if matches!(
                standing(&s.entries[i], &mut out._seen),
                Standing::Protected(_)
            ) {
                i += 1;
            } else {
                self.drop_entry(s, i, EvictionCause::Budget, &mut out);
            }
        }
        metrics.set_retained_event_bytes(s.used);
        out
    }

    /// Removes entry `i`, releasing what it is charged, and lists its event for eviction if
    /// its session still holds it.
    fn drop_entry(&self, s: &mut State, i: usize, cause: EvictionCause, out: &mut Evictions) {
        let standing = standing(&s.entries[i], &mut out._seen);
        let Some(e) = s.entries.remove(i) else {
            return;
        };
        let (Standing::Held(hub) | Standing::Protected(hub)) = standing else {
            s.used -= ENTRY_BYTES;
            s.released = s.released.saturating_sub(1);
            return;
        };
        s.used -= e.bytes;
        hub.set_released_through(e.sequence);
        // Consecutive entries of one hub and cause collapse into one eviction up to the newest.
        match out.evict.last_mut() {
            Some((h, seq, c)) if Arc::ptr_eq(h, &hub) && *c == cause => *seq = e.sequence,
            _ => out.evict.push((hub, e.sequence, cause)),
        }
    }

    /// Drops the entries of released events.
    fn compact(&self, s: &mut State, seen: &mut Vec<Arc<Hub>>) {
        let before = s.entries.len();
        s.entries
            .retain(|e| !matches!(standing(e, seen), Standing::Released));
        s.used -= (before - s.entries.len()) * ENTRY_BYTES;
        s.released = 0;
    }
}
