//! Agent events: the per-agent poll loop, decoding, sequence numbers, the retained window and
//! fan-out to watchers.

mod budget;
mod event;
mod hub;
mod poller;

pub use budget::{EventBudget, DEFAULT_BUDGET_BYTES, DEFAULT_MAX_AGE};
pub use event::{play_type, Event, SHUTDOWN_SERVICE};
pub use hub::{End, Hub, Next, SubscribeError, Subscription};
pub use poller::{backoff, unix_ms, PollEnd, PollSettings, Poller};
