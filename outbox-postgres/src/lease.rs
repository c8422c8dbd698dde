//! The lease of a session that holds advisory locks (a relay's lanes in table mode, the capture
//! lock of WAL capture), in one place. Its arithmetic is `outbox_core::fence`'s; this module is
//! what PostgreSQL is told and what the session does to keep it.
//!
//! Invariants, for a lease `L`:
//! 1. The server ends the session once it is idle, or idle inside a transaction, for `L`
//!    ([`session_limits`]); its locks go with it, and only then can another relay take them.
//! 2. A statement is cancelled after `L / 2` and a lock wait after `L / 4`, so no single round
//!    trip of a healthy relay comes near `L`.
//! 3. The fence is renewed only by a round trip that succeeded, to `started + L - L / 5`
//!    ([`SessionLease::renew`]), where `started` is when that round trip began: the server saw the
//!    session busy no earlier than that, so it cannot end it before `started + L`.
//! 4. A heartbeat runs a round trip every [`heartbeat_period`] (`L / 4`) when nothing else did, so
//!    a healthy relay never lets the fence close.
//! 5. Hence a relay paused past its fence resumes with the fence closed, and sends, settles and
//!    confirms nothing more: its successor's first action comes after `L`, its own last before
//!    `L - L / 5` plus the publisher's send timeout (at most `L / 5`, checked by `Relay::new`).

use std::time::{Duration, Instant};

use outbox_core::Fence;

/// The statements that make the server enforce the lease on the session (invariants 1 and 2).
pub(crate) fn session_limits(lease: Duration) -> String {
    let lease_ms = lease.as_millis();
    format!(
        "SET idle_session_timeout = {lease_ms}; SET idle_in_transaction_session_timeout = {lease_ms}; \
         SET statement_timeout = {}; SET lock_timeout = {}",
        lease_ms / 2,
        lease_ms / 4
    )
}

/// How often a heartbeat keeps the session busy (invariant 4).
pub(crate) fn heartbeat_period(lease: Duration) -> Duration {
    lease / 4
}

/// The fence of one session and when its last round trip succeeded. Empty (closed) until
/// [`start`](Self::start)ed.
#[derive(Debug, Default)]
pub(crate) struct SessionLease {
    fence: Option<Fence>,
    last_ok: Option<Instant>,
}

impl SessionLease {
    /// A new fence for a session whose first successful round trip started at `started`.
    pub fn start(&mut self, started: Instant, lease: Duration) {
        self.end();
        self.fence = Some(Fence::expired());
        self.renew(started, lease);
    }

    /// Records a successful round trip that started at `started` (invariant 3).
    pub fn renew(&mut self, started: Instant, lease: Duration) {
        self.last_ok = Some(started);
        if let Some(fence) = &self.fence {
            fence.extend_to(outbox_core::fence::deadline(started, lease));
        }
    }

    /// Whether the fence is open: the session's locks are still ours.
    pub fn holds(&self) -> bool {
        self.fence.as_ref().is_some_and(Fence::is_valid)
    }

    /// The fence, for what is claimed now (a closed one when the session is gone).
    pub fn fence(&self) -> Fence {
        self.fence.clone().unwrap_or_else(Fence::expired)
    }

    /// Whether a round trip succeeded less than `period` ago (the heartbeat can skip a beat).
    pub fn renewed_within(&self, period: Duration) -> bool {
        self.last_ok.is_some_and(|at| at.elapsed() < period)
    }

    /// Closes the fence for good: the session is lost or given up.
    pub fn end(&mut self) {
        if let Some(fence) = self.fence.take() {
            fence.expire();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_ends_an_idle_session_at_the_lease_and_a_statement_well_before() {
        assert_eq!(
            session_limits(Duration::from_secs(20)),
            "SET idle_session_timeout = 20000; SET idle_in_transaction_session_timeout = 20000; \
             SET statement_timeout = 10000; SET lock_timeout = 5000"
        );
        assert_eq!(
            heartbeat_period(Duration::from_secs(20)),
            Duration::from_secs(5)
        );
    }

    #[test]
    fn the_fence_opens_on_start_follows_renewals_and_closes_for_good_on_end() {
        let lease = Duration::from_secs(10);
        let mut session = SessionLease::default();
        assert!(!session.holds(), "closed before the first round trip");
        session.start(Instant::now(), lease);
        assert!(session.holds());
        let fence = session.fence();
        session.renew(Instant::now(), lease);
        assert!(
            fence.is_valid(),
            "the fence handed out follows the renewals"
        );
        session.end();
        assert!(!fence.is_valid() && !session.holds());
        session.renew(Instant::now(), lease);
        assert!(!session.holds(), "an ended lease is not renewed");
    }
}
