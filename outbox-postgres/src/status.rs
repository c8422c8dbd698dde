//! The state of one outbox at a glance: backlog per topic, dead letters, running relays, and the
//! open enqueuing transactions that hold the publish horizon back.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Row};

use crate::error::Error;
use crate::queries::Queries;
use crate::tables::Tables;

/// Unpublished messages of one topic.
#[derive(Debug, Clone, PartialEq)]
pub struct TopicBacklog {
    /// The topic.
    pub topic: String,
    /// How many of its messages are not published yet (`published_at IS NULL`).
    pub messages: i64,
    /// When the oldest of them was created.
    pub oldest_created_at: DateTime<Utc>,
    /// How long ago that was, by the database's clock.
    pub oldest_age: Duration,
}

/// A session of the relay program holding advisory locks of this outbox.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct RelaySession {
    /// The server process id of the session.
    pub pid: i32,
    /// The client's address (`None` for a Unix socket).
    pub client_addr: Option<String>,
    /// When the session started.
    pub backend_start: Option<DateTime<Utc>>,
    /// Lanes it owns (exclusive lane locks it holds).
    pub lanes: i64,
}

/// A transaction that enqueued and is still open. Until it ends, the relay claims nothing numbered
/// after its messages: one writer that keeps its transaction open (waiting on a remote call, say)
/// holds back every lane.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenWriter {
    /// The server process id of its session.
    pub pid: i32,
    /// The session's `application_name`.
    pub application_name: Option<String>,
    /// The client's address (`None` for a Unix socket).
    pub client_addr: Option<String>,
    /// `active`, `idle in transaction`, ...
    pub state: Option<String>,
    /// How long its transaction has been open.
    pub open_for: Duration,
    /// The start of its last statement.
    pub query: Option<String>,
}

/// What [`PgStatus::status`] reports.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxStatus {
    /// Unpublished messages per topic, by topic name.
    pub backlog: Vec<TopicBacklog>,
    /// Messages in the dead-letter table.
    pub dead_letters: i64,
    /// Running relays (sessions with application name `outbox-relay` holding this outbox's locks),
    /// oldest session first.
    pub relays: Vec<RelaySession>,
    /// Open transactions that enqueued, oldest first: what holds the publish horizon back.
    pub writers: Vec<OpenWriter>,
}

impl OutboxStatus {
    /// Unpublished messages over every topic.
    pub fn backlog_total(&self) -> i64 {
        self.backlog.iter().map(|topic| topic.messages).sum()
    }

    /// Age of the oldest unpublished message, if any waits.
    pub fn oldest_age(&self) -> Option<Duration> {
        self.backlog.iter().map(|topic| topic.oldest_age).max()
    }

    /// Creation time of the oldest unpublished message, if any waits.
    pub fn oldest_created_at(&self) -> Option<DateTime<Utc>> {
        self.backlog
            .iter()
            .map(|topic| topic.oldest_created_at)
            .min()
    }
}

/// Reads the status of the outbox in `tables`.
#[derive(Debug, Clone)]
pub struct PgStatus {
    pool: PgPool,
    queries: Arc<Queries>,
}

impl PgStatus {
    /// The status of the outbox in `tables`.
    pub fn new(pool: PgPool, tables: &Tables) -> Self {
        Self {
            pool,
            queries: Arc::new(Queries::new(tables)),
        }
    }

    /// Backlog per topic, dead-letter count, running relays and open writers. Counting the backlog scans the
    /// unpublished rows.
    ///
    /// # Errors
    /// [`Error::Database`] when a query fails.
    pub async fn status(&self) -> Result<OutboxStatus, Error> {
        let backlog = sqlx::query(&self.queries.status_backlog)
            .fetch_all(&self.pool)
            .await?
            .into_iter()
            .map(|row| {
                let age: f64 = row.try_get("oldest_age_seconds")?;
                Ok(TopicBacklog {
                    topic: row.try_get("topic")?,
                    messages: row.try_get("messages")?,
                    oldest_created_at: row.try_get("oldest_created_at")?,
                    oldest_age: Duration::try_from_secs_f64(age).unwrap_or_default(),
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        let dead_letters = sqlx::query_scalar(&self.queries.status_dead_letters)
            .fetch_one(&self.pool)
            .await?;
        let relays = sqlx::query_as(&self.queries.status_relays)
            .fetch_all(&self.pool)
            .await?;
        let writers = sqlx::query(&self.queries.status_writers)
            .fetch_all(&self.pool)
            .await?
            .into_iter()
            .map(|row| {
                let open: f64 = row.try_get("open_seconds")?;
                Ok(OpenWriter {
                    pid: row.try_get("pid")?,
                    application_name: row.try_get("application_name")?,
                    client_addr: row.try_get("client_addr")?,
                    state: row.try_get("state")?,
                    open_for: Duration::try_from_secs_f64(open).unwrap_or_default(),
                    query: row.try_get("query")?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        Ok(OutboxStatus {
            backlog,
            dead_letters,
            relays,
            writers,
        })
    }
}
