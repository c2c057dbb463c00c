//! One session's event window and its fan-out to any number of watchers.
//!
//! The poll loop appends; watchers read from the shared window at their own pace, each with its
//! own cursor. Nothing per watcher is queued, so a stalled watcher costs no memory and cannot
//! slow the poll loop or anyone else: it simply falls out of the window and is told so.
//!
//! A window is bounded three ways: its own event count (`--event-window`), and the bridge-wide
//! byte budget and age of [`EventBudget`], which may drop a session's oldest events earlier.
//! Either way a watcher that has not read them yet has fallen behind, and is told so.

use super::budget::{Charge, EventBudget};
use super::event::Event;
use crate::gateway::RawEvent;
use crate::proto::PlayEventType;
use crate::telemetry::Metrics;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use tokio::sync::watch;

/// Why a session's event stream ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// Signed out through the bridge: streams complete normally.
    SignedOut,
    /// Signed out because the agent pool moved the agent to instance `to` (a rebalancing
    /// hand-over): watchers are told where to watch next, unlike a deliberate sign-out.
    Moved {
        /// The instance that should hold the agent next.
        to: Arc<str>,
    },
    /// The gateway ended the session (forced sign-out, timeout, Guid lost) or it was replaced.
    SessionEnded,
    /// The bridge is shutting down.
    Shutdown,
}

/// What a watcher gets next.
#[derive(Debug)]
pub enum Next {
    /// The next event in sequence.
    Event(Arc<Event>),
    /// The stream is over.
    Ended(End),
    /// The watcher fell behind the window; `last_sent` is the last sequence it was given.
    Overrun {
        /// Last sequence handed to this watcher (0 if none).
        last_sent: u64,
        /// Oldest sequence the window still holds.
        oldest: u64,
    },
}

/// Why a subscription could not start where asked.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SubscribeError {
    /// The requested position is no longer (or not yet) in the window.
    #[error("resume_after {requested} is outside the retained window (oldest held: {oldest}, newest: {newest})")]
    OutOfRange {
        /// What the caller asked for.
        requested: u64,
        /// Oldest sequence still held.
        oldest: u64,
        /// Newest sequence issued.
        newest: u64,
    },
}

struct Window {
    events: VecDeque<Held>,
    next_seq: u64,
    end: Option<End>,
}

impl Window {
    fn first_seq(&self) -> u64 {
        self.next_seq - self.events.len() as u64
    }
}

/// A retained event and its charge in the budget's ledger.
struct Held {
    event: Arc<Event>,
    charge: Charge,
}

/// Memory one window slot takes; part of every event's charge.
pub(super) const SLOT_BYTES: usize = std::mem::size_of::<Held>();

/// The per-session event hub.
pub struct Hub {
    window: RwLock<Window>,
    tick: watch::Sender<()>,
    watchers: AtomicU32,
    capacity: usize,
    budget: EventBudget,
    metrics: Arc<Metrics>,
    agent_id: Arc<str>,
    session_id: Arc<str>,
    /// Newest sequence published (0 before the first), readable without the window lock.
    newest: AtomicU64,
    /// Oldest sequence the window holds (the next one if empty), readable without its lock.
    oldest: AtomicU64,
    /// Each watcher's next sequence: the budget prefers not to evict from the oldest one that
    /// is still in the window.
    cursors: Mutex<Vec<Weak<AtomicU64>>>,
    /// Whether a play runs, as the events tell: from `AgentMediaEvent_Play` until it failed
    /// (`_Play_Fail`) or stopped (`_StopPlayDone`, also when it ends by itself); `_Play_Succ`
    /// only says it started well. The agent pool moves an agent only once it is idle.
    playing: AtomicBool,
}

impl Hub {
    /// A hub for one session, retaining at most `capacity` events (at least 1) and no more than
    /// the shared `budget` lets it keep.
    pub fn new(
        capacity: usize,
        budget: &EventBudget,
        metrics: Arc<Metrics>,
        agent_id: Arc<str>,
        session_id: Arc<str>,
    ) -> Self {
        Self {
            window: RwLock::new(Window {
                // Grown on the first event: most signed-in agents are idle, and 1,000 idle
                // agents would otherwise hold 0.5 MiB of empty windows.
                events: VecDeque::new(),
                next_seq: 1,
                end: None,
            }),
            tick: watch::Sender::new(()),
            watchers: AtomicU32::new(0),
            capacity: capacity.max(1),
            budget: budget.clone(),
            metrics,
            agent_id,
            session_id,
            newest: AtomicU64::new(0),
            oldest: AtomicU64::new(1),
            cursors: Mutex::new(Vec::new()),
            playing: AtomicBool::new(false),
        }
    }

    /// Whether the session's events say a play runs now (see the field).
    pub fn playing(&self) -> bool {
        self.playing.load(Ordering::Acquire)
    }

    /// The oldest sequence the budget would rather not evict: the session's newest event, or the
    /// next event of its oldest watcher still in the window, whichever is older.
    pub(super) fn protected_from(&self) -> u64 {
        let oldest = self.oldest.load(Ordering::Acquire);
        let cursors = self.cursors.lock().unwrap_or_else(|p| p.into_inner());
        cursors
            .iter()
            .filter_map(Weak::upgrade)
            .map(|c| c.load(Ordering::Acquire))
            .filter(|&next| next >= oldest)
            .fold(self.newest.load(Ordering::Acquire), u64::min)
    }

    /// Numbers and stores an event, wakes every watcher, then lets the budget drop the oldest
    /// retained events bridge-wide if it is exceeded. Events after the end are dropped.
    pub fn publish(self: &Arc<Self>, raw: RawEvent) -> Option<Arc<Event>> {
        let (event, evictions) = {
            let mut w = self.window.write().unwrap_or_else(|p| p.into_inner());
            if w.end.is_some() {
                return None;
            }
            let event = Arc::new(Event::new(
                w.next_seq,
                raw,
                &self.agent_id,
                &self.session_id,
            ));
            w.next_seq += 1;
            let dropped = if w.events.len() == self.capacity {
                w.events.pop_front()
            } else {
                None
            };
            self.newest.store(event.sequence, Ordering::Release);
            match event.play_type {
                Some(PlayEventType::PlayFailed | PlayEventType::PlayStopped) => {
                    self.playing.store(false, Ordering::Release)
                }
                Some(_) => self.playing.store(true, Ordering::Release),
                None => {}
            }
            // Entered in the ledger under the window's lock, so the window and the ledger agree
            // on what this session holds (and its entries are in sequence order).
            let (charge, evictions) = self.budget.charge(
                self,
                event.sequence,
                event.retained_bytes(),
                dropped.map(|d| d.charge),
                &self.metrics,
            );
            w.events.push_back(Held {
                event: event.clone(),
                charge,
            });
            self.oldest.store(w.first_seq(), Ordering::Release);
            (event, evictions)
        };
        self.metrics.event_received();
        self.tick.send_replace(());
        evictions.apply(&self.metrics);
        Some(event)
    }

    /// Drops every retained event up to and including `sequence` (the budget's eviction) and
    /// releases their charges (those the ledger has not dropped already); how many were still
    /// held. Watchers still behind it are told they overran, like with the per-session cap.
    pub(super) fn evict_through(&self, sequence: u64) -> u64 {
        let mut w = self.window.write().unwrap_or_else(|p| p.into_inner());
        let keep = w.next_seq.saturating_sub(sequence + 1) as usize;
        let drop = w.events.len().saturating_sub(keep);
        self.budget
            .release(w.events.drain(..drop).map(|h| h.charge), &self.metrics);
        // A window the budget emptied gives its slots back: only held events are charged for
        // theirs.
        if w.events.capacity() > 4 * w.events.len() + 16 {
            let len = w.events.len();
            w.events.shrink_to(2 * len);
        }
        self.oldest.store(w.first_seq(), Ordering::Release);
        drop as u64
    }

    /// What the events this window holds are charged (for the budget's tests).
    #[cfg(test)]
    pub(super) fn held_bytes(&self) -> usize {
        let w = self.window.read().unwrap_or_else(|p| p.into_inner());
        w.events.iter().map(|h| h.event.retained_bytes()).sum()
    }

    /// Ends the stream for every watcher (the first reason given wins).
    pub fn close(&self, end: End) {
        {
            let mut w = self.window.write().unwrap_or_else(|p| p.into_inner());
            if w.end.is_some() {
                return;
            }
            w.end = Some(end);
        }
        self.tick.send_replace(());
    }

    /// Whether the stream has ended (a push callback for it is refused, not applied).
    pub fn is_closed(&self) -> bool {
        self.window
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .end
            .is_some()
    }

    /// Sequence of the newest event (0 before the first).
    pub fn last_sequence(&self) -> u64 {
        self.window
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .next_seq
            - 1
    }

    /// Open watchers right now.
    pub fn watchers(&self) -> u32 {
        self.watchers.load(Ordering::Relaxed)
    }

    /// Starts a cursor: live from the next event, or after `resume_after` if still held.
    pub fn subscribe(
        self: &Arc<Self>,
        resume_after: Option<u64>,
    ) -> Result<Subscription, SubscribeError> {
        if resume_after.is_some() {
            self.budget.expire(&self.metrics).apply(&self.metrics);
        }
        let mut rx = self.tick.subscribe();
        rx.borrow_and_update();
        let next = {
            let w = self.window.read().unwrap_or_else(|p| p.into_inner());
            match resume_after {
                None => w.next_seq,
                Some(after) => {
                    let oldest = w.first_seq();
                    // Checked: a caller may send any u64 (u64::MAX + 1 would overflow).
                    if after >= w.next_seq || after.checked_add(1).is_none_or(|n| n < oldest) {
                        return Err(SubscribeError::OutOfRange {
                            requested: after,
                            oldest,
                            newest: w.next_seq - 1,
                        });
                    }
                    after + 1
                }
            }
        };
        let cursor = Arc::new(AtomicU64::new(next));
        {
            let mut cursors = self.cursors.lock().unwrap_or_else(|p| p.into_inner());
            cursors.retain(|c| c.strong_count() > 0);
            cursors.push(Arc::downgrade(&cursor));
        }
        self.watchers.fetch_add(1, Ordering::Relaxed);
        self.metrics.watchers_add(1);
        Ok(Subscription {
            hub: self.clone(),
            rx,
            next,
            cursor,
        })
    }
}

/// One watcher's cursor into a hub. Dropping it releases the watcher at once.
pub struct Subscription {
    hub: Arc<Hub>,
    rx: watch::Receiver<()>,
    next: u64,
    /// `next` as the budget sees it (registered in the hub's cursors).
    cursor: Arc<AtomicU64>,
}

impl Subscription {
    /// Waits for the next event, the end of the stream, or an overrun.
    pub async fn next(&mut self) -> Next {
        loop {
            // Mark notifications seen *before* looking, so a publish racing with the look
            // still wakes the wait below.
            self.rx.borrow_and_update();
            {
                let w = self.hub.window.read().unwrap_or_else(|p| p.into_inner());
                let first = w.first_seq();
                if self.next < first {
                    self.hub.metrics.watcher_overrun();
                    return Next::Overrun {
                        last_sent: self.next - 1,
                        oldest: first,
                    };
                }
                if self.next < w.next_seq {
                    let event = w.events[(self.next - first) as usize].event.clone();
                    self.next += 1;
                    self.cursor.store(self.next, Ordering::Release);
                    return Next::Event(event);
                }
                if let Some(end) = &w.end {
                    return Next::Ended(end.clone());
                }
            }
            if self.rx.changed().await.is_err() {
                return Next::Ended(End::Shutdown);
            }
        }
    }
}

impl Drop for Hub {
    /// The session is gone: its retained events no longer count against the budget.
    fn drop(&mut self) {
        let window = self.window.get_mut().unwrap_or_else(|p| p.into_inner());
        self.budget
            .release(window.events.drain(..).map(|h| h.charge), &self.metrics);
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.watchers.fetch_sub(1, Ordering::Relaxed);
        self.hub.metrics.watchers_add(-1);
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use serde_json::Value;
    use std::time::Duration;

    pub(in crate::events) fn raw(name: &str) -> RawEvent {
        RawEvent {
            event_type: name.into(),
            content: Value::Null,
        }
    }

    fn hub(cap: usize) -> Arc<Hub> {
        hub_in(cap, &EventBudget::default())
    }

    #[test]
    fn a_play_runs_from_its_start_to_its_end_as_the_events_tell() {
        let h = hub(8);
        assert!(!h.playing());
        h.publish(raw("AgentMediaEvent_Play"));
        assert!(h.playing());
        h.publish(raw("AgentOther_Something"));
        h.publish(raw("AgentMediaEvent_PausePlayDone"));
        assert!(h.playing(), "a paused play still runs");
        h.publish(raw("AgentMediaEvent_StopPlayDone"));
        assert!(!h.playing());
        h.publish(raw("AgentMediaEvent_Play"));
        h.publish(raw("AgentMediaEvent_Play_Succ"));
        assert!(h.playing(), "a play that started well runs until it stops");
        h.publish(raw("AgentMediaEvent_Play_Fail"));
        assert!(!h.playing());
    }

    pub(in crate::events) fn hub_in(cap: usize, budget: &EventBudget) -> Arc<Hub> {
        Arc::new(Hub::new(
            cap,
            budget,
            Arc::new(Metrics::default()),
            Arc::from("1001"),
            Arc::from("s"),
        ))
    }

    /// What one `raw("X")` event is charged.
    pub(in crate::events) fn charge_of_one() -> usize {
        let h = hub(1);
        h.publish(raw("X")).unwrap().retained_bytes()
    }

    fn oldest_held(h: &Hub) -> u64 {
        h.window.read().unwrap().first_seq()
    }

    #[tokio::test]
    async fn the_shared_budget_evicts_the_oldest_events_bridge_wide() {
        let one = charge_of_one();
        let budget = EventBudget::new(4 * one, Duration::from_secs(3600));
        let (a, b) = (hub_in(100, &budget), hub_in(100, &budget));
        for _ in 0..3 {
            a.publish(raw("X"));
        }
        assert_eq!(budget.used(), 3 * one);
        // Busy agent b pushes a's events out although a's own window (100) has room.
        for _ in 0..3 {
            b.publish(raw("X"));
        }
        assert!(budget.used() <= budget.max_bytes());
        assert_eq!(oldest_held(&a), 3, "a's two oldest events were dropped");
        assert_eq!(
            a.subscribe(Some(1)).err(),
            Some(SubscribeError::OutOfRange {
                requested: 1,
                oldest: 3,
                newest: 3
            })
        );
        for _ in 0..4 {
            b.publish(raw("X"));
        }
        assert_eq!(oldest_held(&a), 3, "a's newest event is never evicted");
        assert_eq!(oldest_held(&b), 5, "b keeps its newest three");
        assert_eq!(budget.used(), 4 * one);
    }

    #[tokio::test]
    async fn the_newest_event_is_kept_even_when_larger_than_the_budget() {
        let budget = EventBudget::new(1, Duration::from_secs(3600));
        let h = hub_in(8, &budget);
        let mut live = h.subscribe(None).unwrap();
        h.publish(raw("A"));
        assert_eq!(seq(&mut live).await, 1);
        h.publish(raw("B"));
        assert_eq!(seq(&mut live).await, 2);
        assert_eq!(h.window.read().unwrap().events.len(), 1);
    }

    #[tokio::test]
    async fn events_older_than_the_age_bound_are_dropped() {
        let budget = EventBudget::new(1 << 20, Duration::ZERO);
        let h = hub_in(8, &budget);
        h.publish(raw("A"));
        h.publish(raw("B"));
        assert_eq!(oldest_held(&h), 2, "each publish expires what is older");
        assert_eq!(
            h.subscribe(Some(1)).err(),
            Some(SubscribeError::OutOfRange {
                requested: 1,
                oldest: 3,
                newest: 2
            }),
            "a resume expires first, so the last event is gone too"
        );
    }

    /// The value of the sample `line` starts (name and labels) in `metrics`' text.
    fn sample(metrics: &Metrics, line: &str) -> String {
        let text = metrics.render();
        text.lines()
            .find_map(|l| l.strip_prefix(line))
            .map(|v| v.trim().to_owned())
            .unwrap_or_else(|| panic!("no {line} in {text}"))
    }

    #[tokio::test]
    async fn evictions_and_bytes_in_use_are_exported() {
        let one = charge_of_one();
        let metrics = Arc::new(Metrics::default());
        let hub_with = |budget: &EventBudget| {
            Arc::new(Hub::new(
                100,
                budget,
                metrics.clone(),
                Arc::from("1001"),
                Arc::from("s"),
            ))
        };
        let budget = EventBudget::new(2 * one, Duration::from_secs(3600));
        let (a, b) = (hub_with(&budget), hub_with(&budget));
        a.publish(raw("X"));
        a.publish(raw("X"));
        assert_eq!(
            sample(&metrics, "ccgw_retained_event_bytes "),
            (2 * one).to_string()
        );
        for _ in 0..3 {
            b.publish(raw("X"));
        }
        // a's first and b's two oldest went to the budget (a's newest is spared); each counted
        // once, as events.
        assert_eq!(
            sample(&metrics, "ccgw_events_evicted_total{cause=\"budget\"} "),
            "3"
        );
        assert_eq!(
            sample(&metrics, "ccgw_events_evicted_total{cause=\"age\"} "),
            "0"
        );
        assert_eq!(
            sample(&metrics, "ccgw_retained_event_bytes "),
            (2 * one).to_string()
        );

        let aged = EventBudget::new(1 << 20, Duration::ZERO);
        let c = hub_with(&aged);
        c.publish(raw("A"));
        c.publish(raw("B"));
        assert!(c.subscribe(Some(1)).is_err());
        assert_eq!(
            sample(&metrics, "ccgw_events_evicted_total{cause=\"age\"} "),
            "2"
        );
        assert_eq!(sample(&metrics, "ccgw_retained_event_bytes "), "0");
    }

    #[tokio::test]
    async fn a_dropped_session_releases_nothing_twice() {
        let one = charge_of_one();
        let budget = EventBudget::new(2 * one, Duration::from_secs(3600));
        let a = hub_in(100, &budget);
        a.publish(raw("X"));
        drop(a);
        let b = hub_in(100, &budget);
        for _ in 0..3 {
            b.publish(raw("X"));
        }
        assert_eq!(budget.used(), 2 * one);
        assert_eq!(oldest_held(&b), 2);
    }

    /// Issue 17 defect 12: an event the session's own window cap dropped no longer counts
    /// against the budget (its ledger entry goes with it), so a busy session's released events
    /// do not push out a quiet session's real ones.
    #[tokio::test]
    async fn events_the_window_cap_dropped_are_no_longer_charged() {
        let one = charge_of_one();
        let budget = EventBudget::new(3 * one, Duration::from_secs(3600));
        let quiet = hub_in(100, &budget);
        quiet.publish(raw("X"));
        let busy = hub_in(1, &budget);
        for _ in 0..3 {
            busy.publish(raw("X"));
        }
        assert_eq!(budget.used(), 2 * one);
        assert_eq!(oldest_held(&quiet), 1, "the quiet session keeps its event");
    }

    /// Issue 17 defect 12: a dropped session's events no longer count against the budget.
    #[tokio::test]
    async fn a_dropped_session_releases_its_charge() {
        let one = charge_of_one();
        let budget = EventBudget::new(100 * one, Duration::from_secs(3600));
        let a = hub_in(100, &budget);
        for _ in 0..3 {
            a.publish(raw("X"));
        }
        drop(a);
        assert_eq!(budget.used(), 0);
    }

    /// Issue 17 defect 13: another session's publish never evicts a session's newest event, nor
    /// one its waiting watcher has not read: the next-oldest unprotected event goes instead.
    #[tokio::test]
    async fn a_waiting_watchers_events_are_never_evicted_by_another_session() {
        let one = charge_of_one();
        let budget = EventBudget::new(3 * one, Duration::from_secs(3600));
        let (a, b) = (hub_in(100, &budget), hub_in(100, &budget));
        let mut waiting = a.subscribe(None).unwrap();
        let reader = tokio::spawn(async move {
            let first = seq(&mut waiting).await;
            (first, seq(&mut waiting).await)
        });
        // The watcher runs until it waits (one runtime thread: the spawned task goes first).
        tokio::task::yield_now().await;
        a.publish(raw("X"));
        a.publish(raw("X"));
        b.publish(raw("X"));
        b.publish(raw("X"));
        assert_eq!(oldest_held(&a), 1, "a's unread events are kept");
        assert_eq!(oldest_held(&b), 2, "b's older event went instead");
        assert_eq!(reader.await.unwrap(), (1, 2));
    }

    async fn seq(sub: &mut Subscription) -> u64 {
        match sub.next().await {
            Next::Event(e) => e.sequence,
            other => panic!("expected an event, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn live_watchers_see_every_event_in_order() {
        let h = hub(8);
        let mut a = h.subscribe(None).unwrap();
        let mut b = h.subscribe(None).unwrap();
        for n in ["A", "B", "C"] {
            h.publish(raw(n));
        }
        for s in 1..=3 {
            assert_eq!(seq(&mut a).await, s);
            assert_eq!(seq(&mut b).await, s);
        }
        assert_eq!(h.watchers(), 2);
        drop(a);
        assert_eq!(h.watchers(), 1);
        h.close(End::SignedOut);
        assert!(matches!(b.next().await, Next::Ended(End::SignedOut)));
    }

    #[tokio::test]
    async fn resume_within_and_outside_the_window() {
        let h = hub(4);
        for _ in 0..6 {
            h.publish(raw("X"));
        }
        // holds 3..=6
        let mut r = h.subscribe(Some(2)).unwrap();
        assert_eq!(seq(&mut r).await, 3);
        assert_eq!(
            h.subscribe(Some(1)).err(),
            Some(SubscribeError::OutOfRange {
                requested: 1,
                oldest: 3,
                newest: 6
            })
        );
        assert!(
            h.subscribe(Some(7)).is_err(),
            "future positions are refused"
        );
        assert!(
            h.subscribe(Some(6)).is_ok(),
            "after the newest: live from here"
        );
        assert_eq!(
            h.subscribe(Some(u64::MAX)).err(),
            Some(SubscribeError::OutOfRange {
                requested: u64::MAX,
                oldest: 3,
                newest: 6
            }),
            "no overflow on the largest position"
        );
    }

    #[tokio::test]
    async fn a_slow_watcher_is_told_where_it_stopped() {
        let h = hub(4);
        let mut slow = h.subscribe(None).unwrap();
        h.publish(raw("A"));
        assert_eq!(seq(&mut slow).await, 1);
        for _ in 0..10 {
            h.publish(raw("B"));
        }
        match slow.next().await {
            Next::Overrun { last_sent, oldest } => assert_eq!((last_sent, oldest), (1, 8)),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_waiting_watcher_wakes_on_publish() {
        let h = hub(4);
        let mut w = h.subscribe(None).unwrap();
        let waiter = tokio::spawn(async move { seq(&mut w).await });
        tokio::task::yield_now().await;
        h.publish(raw("A"));
        assert_eq!(waiter.await.unwrap(), 1);
    }
}
