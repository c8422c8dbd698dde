-- WAL capture: the replication slots this outbox reads, and what their active relay reports.
-- A slot not listed here belongs to another program, and the relay refuses to read it.
-- Placeholders in braces are replaced with the configured (validated, quoted) names.

CREATE TABLE IF NOT EXISTS {wal_slots} (
    slot_name             TEXT        PRIMARY KEY,
    publication           TEXT        NOT NULL,
    created_at            TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- Written by the relay that reads the slot, at every renewal of its lease.
    reader_pid            INTEGER,
    heartbeat_at          TIMESTAMPTZ,
    confirmed_lsn         PG_LSN,
    oldest_pending_commit TIMESTAMPTZ
);
