//! The bridge-wide bound on retained events: a byte budget and an age, shared by every session.
//!
//! Each session keeps a window of recent events so watchers can resume. Without a global bound
//! that memory grows with the number of busy agents times the per-session window (at 1,000 busy
//! agents, gigabytes). The budget makes it a fixed, configured amount: every retained event is
//! entered in one bridge-wide ledger, oldest first, and when the ledger's total would exceed the
//! budget (or its oldest entry exceeds the age) the oldest events — whichever session holds them
//! — are dropped from their windows. The per-session window stays a cap on top.
//!
//! The ledger's accounting is exact by construction: `used` is the sum of the charges of the
//! entries it holds, and an entry leaves exactly once, under the ledger's lock — evicted by the
//! ledger, or released by its session (its window cap dropped the event, the budget dropped an
//! older one of the same session, or the session is gone). The session keeps each event's
//! [`Charge`] beside it; a charge the ledger already dropped is stale (its slot's generation moved
//! on), so releasing it releases nothing. A session enters an event under its window's lock, so
//! one session's entries are in sequence order and its window and ledger never disagree for
//! longer than one eviction in flight.
//!
//! Everything retained counts against the budget. The budget prefers to evict events no one is
//! about to read: it passes over a session's newest event and those a watcher still inside the
//! window has not read (a waiting watcher, or one reading a burst), moving them once to a
//! second queue, the spared one; it evicts from there only the front entry once no watcher needs
//! it any more, or any front entry when nothing else is left. A watcher whose unread events were
//! evicted has fallen behind its window and is told so, as when its window cap overtakes it. Each
//! entry is thus looked at a bounded number of times (entered, moved at most once, evicted or
//! released), so a publish costs O(1) amortised under the lock whatever the watchers do. The age
//! bound drops events whatever protects them.

use super::hub::Hub;
use crate::telemetry::{EvictionCause, Metrics};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// Default bridge-wide budget of retained events.
pub const DEFAULT_BUDGET_BYTES: usize = 16 << 20;
/// Default age after which a retained event is dropped.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(600);

/// Memory one ledger slot costs beside the event it accounts for; part of every event's charge.
pub(super) const ENTRY_BYTES: usize = std::mem::size_of::<Slot>();

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

/// Where a retained event's charge sits in the ledger. The session keeps it beside the event to
/// release exactly that charge; once the ledger dropped the entry it is stale and releases
/// nothing.
#[derive(Clone, Copy, Debug)]
pub(super) struct Charge {
    slot: u32,
    generation: u32,
}

/// No slot: the end of a queue or of the free list.
const NIL: u32 = u32::MAX;

/// The two queues an entry can wait in, each oldest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Queue {
    /// Where every entry starts.
    Fresh = 0,
    /// Entries the budget passed over once because someone still needed them.
    Spared = 1,
}

/// One slot of the ledger: an entry linked into its queue, or free.
struct Slot {
    entry: Option<Entry>,
    /// Bumped each time the slot is freed, so older [`Charge`]s no longer match it.
    generation: u32,
    queue: Queue,
    prev: u32,
    /// The next entry of the queue, or the next free slot.
    next: u32,
}

/// One retained event as the ledger sees it: where it lives and what it costs.
struct Entry {
    hub: Weak<Hub>,
    sequence: u64,
    bytes: usize,
    at: Instant,
}

#[derive(Clone, Copy)]
struct Ends {
    head: u32,
    tail: u32,
}

struct State {
    /// The sum of the charges of the entries held: what retained events hold, exactly.
    used: usize,
    slots: Vec<Slot>,
    free: u32,
    queues: [Ends; 2],
    /// Entries looked at to decide an eviction, for the tests of the cost of a publish.
    #[cfg(test)]
    examined: u64,
}

impl Default for State {
    fn default() -> Self {
        Self {
            used: 0,
            slots: Vec::new(),
            free: NIL,
            queues: [Ends {
                head: NIL,
                tail: NIL,
            }; 2],
            #[cfg(test)]
            examined: 0,
        }
    }
}

impl State {
    fn slot(&self, i: u32) -> &Slot {
        &self.slots[i as usize]
    }

    fn slot_mut(&mut self, i: u32) -> &mut Slot {
        &mut self.slots[i as usize]
    }

    fn entry(&self, i: u32) -> &Entry {
        self.slot(i)
            .entry
            .as_ref()
            .expect("queued slots hold an entry")
    }

    fn front(&self, queue: Queue) -> Option<u32> {
        let head = self.queues[queue as usize].head;
        (head != NIL).then_some(head)
    }

    /// The older of the two queues' fronts.
    fn oldest(&self) -> Option<u32> {
        match (self.front(Queue::Fresh), self.front(Queue::Spared)) {
            (Some(f), Some(s)) => Some(if self.entry(s).at < self.entry(f).at {
                s
            } else {
                f
            }),
            (f, s) => f.or(s),
        }
    }

    /// Enters `entry` at the back of the fresh queue.
    fn insert(&mut self, entry: Entry) -> Charge {
        let i = if self.free == NIL {
            let i = u32::try_from(self.slots.len())
                .ok()
                .filter(|&i| i != NIL)
                .expect("fewer than 2^32 - 1 retained events");
            self.slots.push(Slot {
                entry: None,
                generation: 0,
                queue: Queue::Fresh,
                prev: NIL,
                next: NIL,
            });
            i
        } else {
            let i = self.free;
            self.free = self.slot(i).next;
            i
        };
        self.used += entry.bytes;
        self.slot_mut(i).entry = Some(entry);
        self.link(i, Queue::Fresh);
        Charge {
            slot: i,
            generation: self.slot(i).generation,
        }
    }

    fn link(&mut self, i: u32, queue: Queue) {
        let tail = self.queues[queue as usize].tail;
        let slot = self.slot_mut(i);
        slot.queue = queue;
        slot.prev = tail;
        slot.next = NIL;
        if tail == NIL {
            self.queues[queue as usize].head = i;
        } else {
            self.slot_mut(tail).next = i;
        }
        self.queues[queue as usize].tail = i;
    }

    fn unlink(&mut self, i: u32) {
        let Slot {
            queue, prev, next, ..
        } = *self.slot(i);
        let ends = &mut self.queues[queue as usize];
        if prev == NIL {
            ends.head = next;
        } else {
            self.slots[prev as usize].next = next;
        }
        let ends = &mut self.queues[queue as usize];
        if next == NIL {
            ends.tail = prev;
        } else {
            self.slots[next as usize].prev = prev;
        }
    }

    /// Removes the entry in slot `i`, releasing its charge: the only way `used` goes down.
    fn take(&mut self, i: u32) -> Entry {
        self.unlink(i);
        let free = self.free;
        let slot = self.slot_mut(i);
        let entry = slot.entry.take().expect("queued slots hold an entry");
        slot.generation = slot.generation.wrapping_add(1);
        slot.next = free;
        self.free = i;
        self.used -= entry.bytes;
        entry
    }

    /// Removes the entry `charge` names, unless the ledger dropped it already.
    fn release(&mut self, charge: Charge) {
        let current = self
            .slots
            .get(charge.slot as usize)
            .is_some_and(|s| s.generation == charge.generation && s.entry.is_some());
        if current {
            self.take(charge.slot);
        }
    }
}

/// Events to drop, collected under the ledger lock and dropped after it is released (the ledger
/// never takes a window's lock). It also holds the hubs the ledger looked at, so none is dropped
/// (which takes the ledger lock) under that lock.
#[derive(Default)]
pub(super) struct Evictions {
    evict: Vec<(Arc<Hub>, u64, EvictionCause)>,
    seen: Vec<Arc<Hub>>,
}

impl Evictions {
    /// Drops every listed event (and anything older in the same window), counting in
    /// `metrics` the events actually dropped.
    pub(super) fn apply(self, metrics: &Metrics) {
        for (hub, sequence, cause) in &self.evict {
            metrics.events_evicted(*cause, hub.evict_through(*sequence));
        }
        drop(self.seen);
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
    /// A ledger holding at most `max_bytes` of events (or a single larger one), none older than
    /// `max_age`.
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

    /// Bytes currently charged: exactly what the retained events' charges add up to.
    pub fn used(&self) -> usize {
        self.lock().used
    }

    /// Entries looked at so far to decide evictions.
    #[cfg(test)]
    pub(super) fn examined(&self) -> u64 {
        self.lock().examined
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Enters an event `hub` is about to retain (called under its window's lock), first
    /// releasing `released` (the event its window cap just dropped) and making room: returns
    /// the new event's charge and what must go to stay within the bounds. The new event itself
    /// is never evicted here, so a live watcher always gets the latest event.
    pub(super) fn charge(
        &self,
        hub: &Arc<Hub>,
        sequence: u64,
        bytes: usize,
        released: Option<Charge>,
        metrics: &Metrics,
    ) -> (Charge, Evictions) {
        let now = Instant::now();
        let mut s = self.lock();
        if let Some(released) = released {
            s.release(released);
        }
        let out = self.collect(&mut s, now, bytes);
        let charge = s.insert(Entry {
            hub: Arc::downgrade(hub),
            sequence,
            bytes,
            at: now,
        });
        metrics.set_retained_event_bytes(s.used);
        (charge, out)
    }

    /// The session no longer holds these events (its window dropped them, or it is gone):
    /// their charges are released, each at most once, whoever removes it first.
    pub(super) fn release(&self, charges: impl Iterator<Item = Charge>, metrics: &Metrics) {
        let mut s = self.lock();
        for charge in charges {
            s.release(charge);
        }
        metrics.set_retained_event_bytes(s.used);
    }

    /// Drops events older than the age bound (a resume must not reach them).
    pub(super) fn expire(&self, metrics: &Metrics) -> Evictions {
        let mut s = self.lock();
        let out = self.collect(&mut s, Instant::now(), 0);
        metrics.set_retained_event_bytes(s.used);
        out
    }

    /// Pops what exceeds the bounds once `incoming` more bytes are entered: past the age bound
    /// from the oldest on, then over the budget the oldest events no one needs, then the oldest.
    fn collect(&self, s: &mut State, now: Instant, incoming: usize) -> Evictions {
        let mut out = Evictions::default();
        while let Some(i) = s.oldest() {
            count_examined(s);
            if now.saturating_duration_since(s.entry(i).at) < self.inner.max_age {
                break;
            }
            evict(s, i, EvictionCause::Age, &mut out);
        }
        // The spared front found needed is not asked again while it stays the front.
        let mut still_needed = NIL;
        while s.used + incoming > self.inner.max_bytes {
            let spared = s.front(Queue::Spared).filter(|&i| i != still_needed);
            if let Some(i) = spared {
                if needed(s, i, &mut out) {
                    still_needed = i;
                } else {
                    evict(s, i, EvictionCause::Budget, &mut out);
                }
            } else if let Some(i) = s.front(Queue::Fresh) {
                if needed(s, i, &mut out) {
                    s.unlink(i);
                    s.link(i, Queue::Spared);
                } else {
                    evict(s, i, EvictionCause::Budget, &mut out);
                }
            } else if let Some(i) = s.front(Queue::Spared) {
                // Only needed events are left: the oldest goes, and its watchers fall behind.
                evict(s, i, EvictionCause::Budget, &mut out);
            } else {
                break;
            }
        }
        out
    }
}

#[cfg(test)]
fn count_examined(s: &mut State) {
    s.examined += 1;
}

#[cfg(not(test))]
fn count_examined(_: &mut State) {}

/// Whether the event in slot `i` is its session's newest or not yet read by a watcher still in
/// the window. Its session gone, no one needs it.
fn needed(s: &mut State, i: u32, out: &mut Evictions) -> bool {
    count_examined(s);
    let entry = s.entry(i);
    let Some(hub) = entry.hub.upgrade() else {
        return false;
    };
    let needed = entry.sequence >= hub.protected_from();
    out.seen.push(hub);
    needed
}

/// Removes the entry in slot `i` and lists its event for eviction if its session still holds it.
fn evict(s: &mut State, i: u32, cause: EvictionCause, out: &mut Evictions) {
    let e = s.take(i);
    let Some(hub) = e.hub.upgrade() else {
        return;
    };
    // Consecutive entries of one hub and cause collapse into one eviction up to the newest.
    match out.evict.last_mut() {
        Some((h, seq, c)) if Arc::ptr_eq(h, &hub) && *c == cause => *seq = (*seq).max(e.sequence),
        _ => out.evict.push((hub, e.sequence, cause)),
    }
}
