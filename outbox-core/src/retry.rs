//! How long to wait before trying a failed message again, and when to give up.

use std::ops::RangeInclusive;
use std::time::Duration;

use rand::Rng;

use crate::error::Error;
use crate::publisher::PublishError;

/// Capped exponential backoff with jitter, and the number of attempts before a dead letter.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    max_attempts: u32,
    initial_backoff: Duration,
    max_backoff: Duration,
    multiplier: f64,
    jitter: bool,
}

impl Default for RetryPolicy {
    /// 10 attempts, backoff from 200 ms doubling up to 60 s, with jitter.
    fn default() -> Self {
        Self {
            max_attempts: 10,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(60),
            multiplier: 2.0,
            jitter: true,
        }
    }
}

/// What to do with a message whose publication failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Offer it again after this delay.
    RetryAfter(Duration),
    /// Move it to the dead-letter table.
    DeadLetter,
}

impl RetryPolicy {
    /// What [`max_attempts`](Self::max_attempts) accepts.
    pub const MAX_ATTEMPTS: RangeInclusive<u32> = 1..=1000;
    /// What [`backoff`](Self::backoff) accepts for each of its two durations: 1 ms to a day.
    pub const BACKOFF: RangeInclusive<Duration> =
        Duration::from_millis(1)..=Duration::from_secs(86_400);

    /// Attempts (the first one included) before a retriable failure becomes a dead letter.
    /// Default 10; 1 to 1,000.
    ///
    /// # Errors
    /// [`Error::Config`] outside the range.
    pub fn max_attempts(mut self, attempts: u32) -> Result<Self, Error> {
        if !Self::MAX_ATTEMPTS.contains(&attempts) {
            return Err(Error::Config(format!(
                "max_attempts {attempts} is outside {:?}",
                Self::MAX_ATTEMPTS
            )));
        }
        self.max_attempts = attempts;
        Ok(self)
    }

    /// Backoff after the first failure, and the cap that later backoffs grow to. Default 200 ms and
    /// 60 s; each 1 ms to a day.
    ///
    /// # Errors
    /// [`Error::Config`] when either is outside the range or `initial` is larger than `max`.
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Result<Self, Error> {
        if !Self::BACKOFF.contains(&initial) || !Self::BACKOFF.contains(&max) || initial > max {
            return Err(Error::Config(format!(
                "backoff must satisfy 1ms <= initial ({initial:?}) <= max ({max:?}) <= 1 day"
            )));
        }
        self.initial_backoff = initial;
        self.max_backoff = max;
        Ok(self)
    }

    /// Turns jitter on or off. Default on: each backoff is drawn from its upper half, so relays
    /// that failed together do not retry together.
    pub fn jitter(mut self, jitter: bool) -> Self {
        self.jitter = jitter;
        self
    }

    /// The configured number of attempts.
    pub fn attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The wait before attempt `failed + 1`, after `failed` failures (at least 1).
    pub fn delay_after(&self, failed: u32) -> Duration {
        let exponent = failed.saturating_sub(1).min(63) as i32;
        let grown = self.initial_backoff.as_secs_f64() * self.multiplier.powi(exponent);
        let capped = grown.min(self.max_backoff.as_secs_f64());
        let seconds = if self.jitter {
            rand::rng().random_range(capped / 2.0..=capped)
        } else {
            capped
        };
        Duration::from_secs_f64(seconds)
    }

    /// Decides the fate of a message that has now failed `failed` times, the last time with `error`.
    /// Outages ([`PublishErrorKind::Unavailable`](crate::PublishErrorKind::Unavailable)) are
    /// retried whatever the count.
    pub fn decide(&self, failed: u32, error: &PublishError) -> Decision {
        if error.is_retriable() && (failed < self.max_attempts || !error.kind().counts_as_attempt())
        {
            Decision::RetryAfter(self.delay_after(failed))
        } else {
            Decision::DeadLetter
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::publisher::{PublishError, PublishErrorKind};

    fn error(kind: PublishErrorKind) -> PublishError {
        PublishError::new(kind, "boom")
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let policy = RetryPolicy::default()
            .backoff(Duration::from_millis(100), Duration::from_secs(1))
            .expect("valid")
            .jitter(false);
        let delays: Vec<u128> = (1..=6).map(|n| policy.delay_after(n).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
    }

    #[test]
    fn jittered_backoff_stays_in_the_upper_half() {
        let policy = RetryPolicy::default();
        for _ in 0..100 {
            let delay = policy.delay_after(3);
            assert!(delay >= Duration::from_millis(400) && delay <= Duration::from_millis(800));
        }
    }

    #[test]
    fn transient_errors_retry_until_the_limit_and_permanent_ones_never() {
        let policy = RetryPolicy::default().max_attempts(3).expect("valid");
        let transient = error(PublishErrorKind::Transient);
        assert!(matches!(
            policy.decide(1, &transient),
            Decision::RetryAfter(_)
        ));
        assert!(matches!(
            policy.decide(2, &transient),
            Decision::RetryAfter(_)
        ));
        assert_eq!(policy.decide(3, &transient), Decision::DeadLetter);
        assert_eq!(
            policy.decide(1, &error(PublishErrorKind::MessageTooLarge)),
            Decision::DeadLetter
        );
    }

    #[test]
    fn invalid_settings_are_refused() {
        assert!(RetryPolicy::default().max_attempts(0).is_err());
        assert!(
            RetryPolicy::default()
                .backoff(Duration::ZERO, Duration::from_secs(1))
                .is_err()
        );
        assert!(
            RetryPolicy::default()
                .backoff(Duration::from_secs(2), Duration::from_secs(1))
                .is_err()
        );
    }
}
