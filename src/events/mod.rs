//! Agent events: their sources (the per-agent poll loop, or the gateway pushing), decoding, sequence numbers, the retained window and
//! fan-out to watchers.

mod budget;
#[cfg(test)]
mod budget_tests;
mod event;
mod hub;
mod source;

pub use budget::{EventBudget, DEFAULT_BUDGET_BYTES, DEFAULT_MAX_AGE};
pub use event::{play_type, Event, SHUTDOWN_SERVICE};
pub use hub::{End, Hub, Next, SubscribeError, Subscription};
pub use source::poll::{backoff, unix_ms, PollEnd, PollSettings, Poller};
pub use source::push::{
    constant_time_eq, parse_callback, CallbackBatch, CallbackError, Closed, Heartbeat,
    HeartbeatSettings, PushInbox, ServiceToken, HEARTBEAT_LANES,
};
pub use source::SessionLink;
