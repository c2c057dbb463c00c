//! The lease clock: time since boot *including* time suspended.
//!
//! A lease is valid until `sent + ttl` of its last acknowledged renewal. `Instant` (Linux
//! `CLOCK_MONOTONIC`) stops while the host or VM is suspended, so a bridge resumed after a
//! suspend longer than its lease would still believe the lease valid and could send a
//! `forcelogin` that kicks the agent's new owner. `CLOCK_BOOTTIME` keeps counting through a
//! suspend; a stopped process (SIGSTOP) is covered by either.

use std::time::{Duration, Instant};

/// A reading of the lease clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct LeaseTime(Duration);

impl LeaseTime {
    /// Now.
    pub fn now() -> Self {
        Self(boot_time())
    }

    /// This reading plus `d`.
    pub fn after(self, d: Duration) -> Self {
        Self(self.0.saturating_add(d))
    }

    /// The time from now until this reading, or `None` if it has passed.
    pub fn remaining(self) -> Option<Duration> {
        self.0.checked_sub(boot_time()).filter(|d| !d.is_zero())
    }

    /// The `Instant` at which the lease clock reads `self`, assuming no suspend from now on (a
    /// bound for timers; the validity itself is always checked on the lease clock).
    pub fn as_instant(self) -> Instant {
        Instant::now() + self.0.saturating_sub(boot_time())
    }
}

#[cfg(target_os = "linux")]
fn boot_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_BOOTTIME exists on every Linux since
    // 2.6.39, and the call writes nothing else.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    if rc != 0 {
        return monotonic();
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Elsewhere (development machines): the monotonic clock.
#[cfg(not(target_os = "linux"))]
fn boot_time() -> Duration {
    monotonic()
}

fn monotonic() -> Duration {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lease_clock_moves_forward_with_time() {
        let a = LeaseTime::now();
        let b = a.after(Duration::from_secs(3));
        assert!(b > a);
        assert!(LeaseTime::now() < b);
        assert!(b.remaining().is_some_and(|d| d <= Duration::from_secs(3)));
        assert_eq!(
            a.remaining(),
            None,
            "a reading in the past has nothing left"
        );
        let until = b.as_instant();
        assert!(until > Instant::now() + Duration::from_secs(2));
    }
}
