//! What the stream decodes, into the queue: transactions' boundaries, this outbox's messages, and
//! the messages it cannot read (parked raw in the dead letters).

use std::time::Instant;

use pgwire_replication::ReplicationEvent;

use outbox_core::StoredMessage;

use super::{PgWalStore, State};
use crate::error::Error;
use crate::wal::envelope;
use crate::wal::stream::Next;

/// The first half of the id given to an unreadable message (the second is its WAL position).
const MALFORMED_ID_TAG: u64 = 0x6f75_7462_6f78_0001;

/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01).
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// Events taken from the stream in one claim at most, so that a claim returns promptly.
const EVENTS_PER_CLAIM: usize = 4096;

impl PgWalStore {
    /// Moves what the stream decoded into the queue, while the queue has room.
    pub(super) async fn pull(&self, state: &mut State) -> Result<(), Error> {
        for _ in 0..EVENTS_PER_CLAIM {
            if state.queue.len() >= self.config.buffer_messages
                || state.queue.bytes() >= self.config.buffer_bytes
            {
                break;
            }
            let Some(stream) = state.stream.as_mut() else {
                break;
            };
            match stream.next() {
                Next::Event(event) => self.apply(state, event).await?,
                Next::Empty => break,
                Next::Ended(error) => {
                    let why =
                        error.map_or_else(|| "the server ended it".to_owned(), |e| e.to_string());
                    state.end_stream(&why);
                    break;
                }
            }
        }
        self.confirm(state);
        Ok(())
    }

    async fn apply(&self, state: &mut State, event: ReplicationEvent) -> Result<(), Error> {
        match event {
            ReplicationEvent::Begin {
                commit_time_micros, ..
            } => {
                state.commit_micros = commit_time_micros.saturating_add(PG_EPOCH_MICROS);
                state.queue.begin(state.commit_micros);
            }
            ReplicationEvent::Message {
                lsn,
                prefix,
                content,
                transactional,
            } => {
                if prefix != self.config.prefix {
                    outbox_core::metrics::wal_skipped("foreign_prefix");
                    tracing::debug!(%prefix, lsn = %lsn, "skipping a logical message of another prefix");
                    return Ok(());
                }
                let decoded = envelope::decode(&content)
                    .map_err(|e| e.to_string())
                    .and_then(|message| {
                        message
                            .validate()
                            .map(|()| message)
                            .map_err(|e| format!("unpublishable: {e}"))
                    });
                let commit = if transactional {
                    state.commit_micros
                } else {
                    chrono::Utc::now().timestamp_micros()
                };
                match decoded {
                    Ok(message) => {
                        let lane = outbox_core::lane::slot_for(message.key.as_deref(), &message.id)
                            % self.config.lanes;
                        let stored = StoredMessage {
                            seq: 0,
                            attempts: 0,
                            message,
                        };
                        state.queue.push(stored, lane, lsn.0, commit);
                    }
                    Err(reason) => self.park_malformed(state, lsn.0, &content, &reason).await?,
                }
            }
            ReplicationEvent::Commit { end_lsn, .. } => state.queue.commit(end_lsn.0),
            ReplicationEvent::KeepAlive { wal_end, .. } => state.queue.caught_up(wal_end.0),
            ReplicationEvent::XLogData { .. } | ReplicationEvent::StoppedAt { .. } => {}
        }
        Ok(())
    }

    /// Keeps an unreadable message of this outbox's prefix in the dead letters, raw, with the
    /// reason; an id derived from its position keeps a replayed stream from parking it twice.
    async fn park_malformed(
        &self,
        state: &mut State,
        lsn: u64,
        content: &[u8],
        reason: &str,
    ) -> Result<(), Error> {
        outbox_core::metrics::wal_skipped("malformed");
        let lsn_text = pgwire_replication::Lsn(lsn).to_pg_string();
        tracing::warn!(lsn = %lsn_text, bytes = content.len(), %reason, "a logical message of this outbox cannot be read; keeping it in the dead letters");
        let id = uuid::Uuid::from_u64_pair(MALFORMED_ID_TAG, lsn);
        let started = Instant::now();
        let conn = state.capture.as_mut().ok_or(Error::SessionLost)?;
        sqlx::query(&self.queries.park_malformed)
            .bind(id)
            .bind(content)
            .bind(format!("malformed logical message at {lsn_text}: {reason}"))
            .execute(conn)
            .await?;
        state.renew(started, self.config.lease);
        Ok(())
    }
}
