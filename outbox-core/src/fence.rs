//! A fence: the moment until which this relay may still act on what it claimed.
//!
//! The store extends the fence whenever it confirms that the relay still owns its lanes (a
//! successful round trip on the session holding them), and expires it when ownership is lost. The
//! publisher checks it before handing each message to the broker, and the engine checks it before
//! settling: a relay that was paused past its lease (a stopped process, a long GC-like stall, a
//! partitioned host) resumes with an expired fence and leaves the batch to the lane's new owner.

//!
//! The arithmetic, in one place. A store leases lanes for `lease`: after its last successful round
//! trip started, another relay can take them over no sooner than `lease` later. The fence closes a
//! [`margin`] earlier, `lease / 5`. A record handed to the broker's client just before the fence
//! closed is delivered or failed within the publisher's send timeout, so a send timeout of at most
//! the margin ([`max_send_timeout`]) keeps every send of this relay before the first send of its
//! successor.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long before the end of a lease the fence closes: a fifth of it.
pub fn margin(lease: Duration) -> Duration {
    lease / 5
}

/// Until when the fence holds after a round trip that started at `started` and confirmed the
/// lease.
pub fn deadline(started: Instant, lease: Duration) -> Instant {
    started + lease - margin(lease)
}

/// The longest send timeout a publisher may have under `lease`: a record handed over as the fence
/// closes is settled (delivered or failed) before the lease ends.
pub fn max_send_timeout(lease: Duration) -> Duration {
    margin(lease)
}

/// Shared, cheaply cloned view of the lease deadline.
#[derive(Debug, Clone)]
pub struct Fence {
    base: Instant,
    /// Nanoseconds after `base` until which the fence holds; `u64::MAX` never expires.
    until: Arc<AtomicU64>,
}

impl Default for Fence {
    fn default() -> Self {
        Self::unbounded()
    }
}

impl Fence {
    /// A fence that never expires, for stores without leases.
    pub fn unbounded() -> Self {
        Self {
            base: Instant::now(),
            until: Arc::new(AtomicU64::new(u64::MAX)),
        }
    }

    /// A fence that has already expired; [`extend_to`](Self::extend_to) opens it.
    pub fn expired() -> Self {
        Self {
            base: Instant::now(),
            until: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Holds the fence open until `deadline` (never moves it back).
    pub fn extend_to(&self, deadline: Instant) {
        let nanos = deadline.saturating_duration_since(self.base).as_nanos();
        let nanos = u64::try_from(nanos).unwrap_or(u64::MAX - 1);
        self.until.fetch_max(nanos, Ordering::AcqRel);
    }

    /// Closes the fence at once.
    pub fn expire(&self) {
        self.until.store(0, Ordering::Release);
    }

    /// Whether the relay may still act on its claims.
    pub fn is_valid(&self) -> bool {
        let until = self.until.load(Ordering::Acquire);
        until == u64::MAX || (self.base.elapsed().as_nanos() as u64) < until
    }

    /// Time left before the fence expires (`None` for an unbounded fence).
    pub fn remaining(&self) -> Option<Duration> {
        let until = self.until.load(Ordering::Acquire);
        (until != u64::MAX).then(|| Duration::from_nanos(until).saturating_sub(self.base.elapsed()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fence_holds_until_its_deadline_and_can_be_closed() {
        let fence = Fence::expired();
        assert!(!fence.is_valid());
        fence.extend_to(Instant::now() + Duration::from_secs(60));
        assert!(fence.is_valid());
        fence.extend_to(Instant::now());
        assert!(fence.is_valid(), "extending never shortens");
        let clone = fence.clone();
        clone.expire();
        assert!(!fence.is_valid(), "clones share the deadline");
        fence.extend_to(Instant::now() + Duration::from_millis(1));
        std::thread::sleep(Duration::from_millis(5));
        assert!(!fence.is_valid(), "a deadline in the past does not hold");
        assert!(Fence::unbounded().is_valid());
        assert_eq!(Fence::unbounded().remaining(), None);
    }
}
