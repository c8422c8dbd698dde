use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use outbox_core::BoxError;
use outbox_core::relay::error_chain;

use crate::error::Error;

use super::stats::Counters;

/// How long inbox rows are kept, and how often the runner purges older ones.
///
/// The horizon **must exceed the longest redelivery window**: the topic's retention, or the longest
/// a consumer group may lag behind or be replayed. A message redelivered after its inbox row was
/// purged is applied again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InboxRetention {
    horizon: Duration,
    interval: Duration,
    batch: u32,
}

impl InboxRetention {
    /// Keeps inbox rows for `horizon`; purges every hour in batches of 1,000 rows unless changed.
    pub fn keep(horizon: Duration) -> Self {
        Self {
            horizon,
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
        if self.horizon.is_zero() || self.interval.is_zero() || self.batch == 0 {
            return Err(Error::Config(format!(
                "inbox retention needs a horizon, an interval and a batch size above zero (got {:?}, {:?}, {})",
                self.horizon, self.interval, self.batch
            )));
        }
        chrono::Duration::from_std(self.horizon).map_err(|_| {
            Error::Config(format!(
                "inbox retention horizon {:?} is too long",
                self.horizon
            ))
        })?;
        Ok(())
    }
}

/// The purge behind [`InboxRetention`]: deletes rows received before the given time, at most the
/// given number per statement, and returns how many it deleted.
pub(super) type PurgeFn = Arc<
    dyn Fn(DateTime<Utc>, u32) -> Pin<Box<dyn Future<Output = Result<u64, BoxError>> + Send>>
        + Send
        + Sync,
>;

/// Purges the inbox at the retention's interval until aborted.
pub(super) async fn purge_loop(
    retention: InboxRetention,
    purge: PurgeFn,
    counters: Arc<Counters>,
    name: String,
) {
    let horizon = chrono::Duration::from_std(retention.horizon).unwrap_or(chrono::Duration::MAX);
    loop {
        let before = Utc::now() - horizon;
        match purge(before, retention.batch).await {
            Ok(purged) => {
                Counters::add(&counters.purged, purged);
                if purged > 0 {
                    tracing::info!(consumer = %name, purged, %before, "purged inbox rows past the retention horizon");
                }
            }
            Err(error) => {
                tracing::warn!(consumer = %name, error = %error_chain(&*error), "purging the inbox failed; trying again at the next interval");
            }
        }
        tokio::time::sleep(retention.interval).await;
    }
}
