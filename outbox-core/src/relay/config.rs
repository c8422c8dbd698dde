//! Settings of the relay engine.

use std::ops::RangeInclusive;
use std::time::Duration;

use crate::error::Error;
use crate::retry::RetryPolicy;

/// Settings of the relay engine. Every setter documents its default and its range.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    pub(super) batch_size: usize,
    pub(super) window: usize,
    pub(super) max_in_flight: usize,
    pub(super) max_in_flight_bytes: u64,
    pub(super) phases: usize,
    pub(super) poll_interval: Duration,
    pub(super) retry: RetryPolicy,
    pub(super) shutdown_grace: Duration,
    pub(super) store_backoff: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            batch_size: 500,
            window: 256,
            max_in_flight: 2_000,
            max_in_flight_bytes: 64 * 1024 * 1024,
            phases: 2,
            poll_interval: Duration::from_secs(1),
            retry: RetryPolicy::default(),
            shutdown_grace: Duration::from_secs(10),
            store_backoff: Duration::from_millis(500),
        }
    }
}

/// `value` if it lies in `range`, else an error naming `what`.
pub(crate) fn within<T: PartialOrd + Copy + std::fmt::Debug>(
    what: &str,
    value: T,
    range: &RangeInclusive<T>,
) -> Result<T, Error> {
    if !range.contains(&value) {
        return Err(Error::Config(format!(
            "{what} {value:?} is outside {:?}..={:?}",
            range.start(),
            range.end()
        )));
    }
    Ok(value)
}

impl RelayConfig {
    /// What [`batch_size`](Self::batch_size) accepts.
    pub const BATCH_SIZE: RangeInclusive<usize> = 1..=100_000;
    /// What [`window`](Self::window) accepts.
    pub const WINDOW: RangeInclusive<usize> = 1..=100_000;
    /// What [`max_in_flight`](Self::max_in_flight) accepts.
    pub const MAX_IN_FLIGHT: RangeInclusive<usize> = 1..=1_000_000;
    /// What [`max_in_flight_bytes`](Self::max_in_flight_bytes) accepts: 1 KiB to 16 GiB.
    pub const MAX_IN_FLIGHT_BYTES: RangeInclusive<u64> = 1024..=16 << 30;
    /// What [`phases`](Self::phases) accepts.
    pub const PHASES: RangeInclusive<usize> = 1..=64;
    /// What [`poll_interval`](Self::poll_interval) accepts: 1 ms to 1 h.
    pub const POLL_INTERVAL: RangeInclusive<Duration> =
        Duration::from_millis(1)..=Duration::from_secs(3600);
}

impl RelayConfig {
    /// Most messages one claim takes (over all of its lane windows). Default 500; 1 to 100,000.
    ///
    /// # Errors
    /// [`Error::Config`] outside the range.
    pub fn batch_size(mut self, batch_size: usize) -> Result<Self, Error> {
        self.batch_size = within("batch size", batch_size, &Self::BATCH_SIZE)?;
        Ok(self)
    }

    /// Most messages of one lane in flight at once (the lane's *window*). The next window of a lane
    /// is claimed only after this one's outcome is written back. Default 256; 1 to 100,000.
    ///
    /// # Errors
    /// [`Error::Config`] outside the range.
    pub fn window(mut self, window: usize) -> Result<Self, Error> {
        self.window = within("lane window", window, &Self::WINDOW)?;
        Ok(self)
    }

    /// Most messages handed to the broker and not yet settled, over all windows. Default 2,000;
    /// 1 to 1,000,000. A claim takes no more than what is left of it.
    ///
    /// # Errors
    /// [`Error::Config`] outside the range.
    pub fn max_in_flight(mut self, messages: usize) -> Result<Self, Error> {
        self.max_in_flight = within("in-flight budget", messages, &Self::MAX_IN_FLIGHT)?;
        Ok(self)
    }

    /// Most bytes (payloads, keys and headers) in flight over all windows. Default 64 MiB; 1 KiB to
    /// 16 GiB. One message is always allowed when nothing is in flight, whatever its size, so that
    /// an oversized message reaches the broker client and fails there with a clear error.
    ///
    /// # Errors
    /// [`Error::Config`] outside the range.
    pub fn max_in_flight_bytes(mut self, bytes: u64) -> Result<Self, Error> {
        self.max_in_flight_bytes =
            within("in-flight byte budget", bytes, &Self::MAX_IN_FLIGHT_BYTES)?;
        Ok(self)
    }

    /// Into how many groups the claims split the lanes: one claim takes at most
    /// `ceil(owned lanes / phases)` lanes, so that while one group waits for the broker the database
    /// already claims or settles the next. Default 2; 1 to 64 (1: every claim may take every idle
    /// lane).
    ///
    /// # Errors
    /// [`Error::Config`] outside the range.
    pub fn phases(mut self, phases: usize) -> Result<Self, Error> {
        self.phases = within("phases", phases, &Self::PHASES)?;
        Ok(self)
    }

    /// Longest wait when nothing is due and no wake-up arrives. Default 1 s; 1 ms to 1 h.
    ///
    /// # Errors
    /// [`Error::Config`] outside the range.
    pub fn poll_interval(mut self, interval: Duration) -> Result<Self, Error> {
        self.poll_interval = within("poll interval", interval, &Self::POLL_INTERVAL)?;
        Ok(self)
    }

    /// Backoff and dead-letter threshold for failed messages. Default [`RetryPolicy::default`].
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// On shutdown, how long the windows in flight may take to be acknowledged and settled before
    /// they are abandoned (abandoned messages stay in the outbox and are published again later).
    /// Default 10 s.
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }

    /// How long to wait before claiming again after a claim failed. Default 500 ms.
    pub fn store_backoff(mut self, backoff: Duration) -> Self {
        self.store_backoff = backoff;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_range_settings_are_refused() {
        assert!(RelayConfig::default().batch_size(0).is_err());
        assert!(RelayConfig::default().window(0).is_err());
        assert!(RelayConfig::default().max_in_flight(0).is_err());
        assert!(RelayConfig::default().max_in_flight_bytes(10).is_err());
        assert!(RelayConfig::default().phases(0).is_err());
        assert!(
            RelayConfig::default()
                .poll_interval(Duration::ZERO)
                .is_err()
        );
        let error = RelayConfig::default()
            .batch_size(100_001)
            .expect_err("too large");
        assert!(error.to_string().contains("batch size 100001"), "{error}");
    }
}
