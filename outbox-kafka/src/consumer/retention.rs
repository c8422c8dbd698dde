use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use outbox_core::Inbox;
use outbox_core::relay::error_chain;

use crate::error::Error;

use super::Shared;
use super::stats::Counters;

/// How long inbox rows are kept, and how often the runner purges older ones. Only the rows of the
/// runner's own consumer name are purged ([`Inbox::purge`]).
///
/// The period kept **must exceed the longest redelivery window**: the topic's retention, or the longest
/// a consumer group may lag behind or be replayed. A message redelivered after its inbox row was
/// purged is applied again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InboxRetention {
    kept_for: Duration,
    interval: Duration,
    batch: u32,
}

impl InboxRetention {
    /// Keeps inbox rows for `period`; purges every hour in batches of 1,000 rows unless changed.
    pub fn keep(period: Duration) -> Self {
        Self {
            kept_for: period,
            interval: Duration::from_secs(3600),
            batch: 1000,
        }
    }

    /// How often to purge. Default one hour; the first purge runs when the consumer starts.
    pub fn every(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// Rows deleted per statement. Default 1,000.
    pub fn batch(mut self, batch: u32) -> Self {
        self.batch = batch;
        self
    }

    pub(super) fn validate(&self) -> Result<(), Error> {
        if self.kept_for.is_zero() || self.interval.is_zero() || self.batch == 0 {
            return Err(Error::Config(format!(
                "inbox retention needs a period kept, an interval and a batch size above zero (got {:?}, {:?}, {})",
                self.kept_for, self.interval, self.batch
            )));
        }
        chrono::Duration::from_std(self.kept_for).map_err(|_| {
            Error::Config(format!(
                "inbox retention period {:?} is too long",
                self.kept_for
            ))
        })?;
        Ok(())
    }
}

/// Purges `shared`'s inbox rows (its consumer name's only) at the retention's interval until
/// aborted.
pub(super) async fn purge_loop<I: Inbox + 'static>(
    retention: InboxRetention,
    shared: Arc<Shared<I>>,
) {
    let kept_for = chrono::Duration::from_std(retention.kept_for).unwrap_or(chrono::Duration::MAX);
    let name = &shared.name;
    loop {
        let before = Utc::now() - kept_for;
        match shared.inbox.purge(name, before, retention.batch).await {
            Ok(purged) => {
                Counters::add(&shared.counters.purged, purged);
                if purged > 0 {
                    tracing::info!(consumer = %name, purged, %before, "purged inbox rows older than the period kept");
                }
            }
            Err(error) => {
                tracing::warn!(consumer = %name, error = %error_chain(&error), "purging the inbox failed; trying again at the next interval");
            }
        }
        tokio::time::sleep(retention.interval).await;
    }
}
