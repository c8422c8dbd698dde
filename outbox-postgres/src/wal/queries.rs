//! The SQL of WAL capture, rendered once for the configured tables and slot.

use crate::queries::{STORED_ARRAYS, STORED_COLUMNS};
use crate::tables::Tables;

use super::slot::SlotName;

/// Second half of the capture lock's key: apart from the lanes (below 1024), the membership lock
/// and the writer lock of table mode.
const CAPTURE_KEY_BASE: i32 = 5 << 20;

#[derive(Debug)]
pub(crate) struct WalQueries {
    pub try_lock: String,
    pub park_malformed: String,
    pub dead_letter: String,
    pub heartbeat: String,
    pub advance: String,
}

impl WalQueries {
    pub(crate) fn new(tables: &Tables, slot: &SlotName) -> Self {
        let ns = tables.lock_namespace();
        // Slots of one outbox get distinct keys; the slot name is a checked identifier, so it
        // can be written into the statements as a literal.
        let key = CAPTURE_KEY_BASE
            + (outbox_core::lane::murmur2(slot.as_str().as_bytes()) & 0x000f_ffff) as i32;
        let dead_letters = tables.dead_letters_table();
        let sequence = tables.sequence().replace('\'', "''");
        let wal_slots = tables.wal_slots_table();
        Self {
            try_lock: format!("SELECT pg_try_advisory_lock({ns}, {key})"),
            park_malformed: format!(
                "INSERT INTO {dead_letters} (seq, {STORED_COLUMNS}, attempts, error)
                 SELECT nextval('{sequence}'), $1, 0, '', NULL, NULL, NULL, 'application/octet-stream',
                        $2, '{{}}'::jsonb, now(), 0, $3
                 WHERE NOT EXISTS (SELECT 1 FROM {dead_letters} WHERE id = $1)"
            ),
            // A message replayed by a new stream and failing again is not parked twice.
            dead_letter: format!(
                "INSERT INTO {dead_letters} (seq, {STORED_COLUMNS}, attempts, error)
                 SELECT nextval('{sequence}'), f.*
                 FROM UNNEST({STORED_ARRAYS}, $11::int4[], $12::text[])
                      AS f({STORED_COLUMNS}, attempts, error)
                 WHERE NOT EXISTS (SELECT 1 FROM {dead_letters} AS d WHERE d.id = f.id)"
            ),
            heartbeat: format!(
                "WITH s AS (SELECT confirmed_flush_lsn,
                                   pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::int8 AS lag_bytes
                            FROM pg_replication_slots WHERE slot_name = '{slot}')
                 UPDATE {wal_slots} SET reader_pid = pg_backend_pid(), heartbeat_at = now(),
                        confirmed_lsn = (SELECT confirmed_flush_lsn FROM s), oldest_pending_commit = $1
                 WHERE slot_name = '{slot}'
                 RETURNING (SELECT lag_bytes FROM s) AS lag_bytes"
            ),
            advance: format!("SELECT pg_replication_slot_advance('{slot}', $1::text::pg_lsn)"),
        }
    }
}
