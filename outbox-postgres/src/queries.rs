//! Every statement of the backend, rendered once for the configured names.
//!
//! Advisory locks of one outbox share a first key (the namespace derived from the outbox's name); the
//! second key says what the lock is for:
//!
//! | second key | mode | held by | for |
//! | --- | --- | --- | --- |
//! | `0 .. lanes` | exclusive, session | the relay owning the lane | lane ownership |
//! | `MEMBER_BASE + lanes` | shared, session | every running relay | counting relays, agreeing on lanes |
//! | `WRITER_KEY` | shared, transaction | every transaction that enqueued | the publish horizon |

use crate::tables::Tables;

/// Relays hold `MEMBER_BASE + lanes`, shared.
pub(crate) const MEMBER_BASE: i32 = 1 << 20;
/// Enqueuing transactions hold this, shared, until they end.
pub(crate) const WRITER_KEY: i32 = 2 << 20;

/// Columns of a message row, in the order [`crate::rows`] decodes them.
pub(crate) const MESSAGE_COLUMNS: &str =
    "seq, id, topic, key, event_type, source, content_type, payload, headers, created_at, attempts";

#[derive(Debug)]
pub(crate) struct Queries {
    pub namespace: i32,
    pub enqueue: String,
    pub enqueue_quiet: String,
    pub horizon: String,
    pub claim: String,
    pub delete: String,
    pub retry: String,
    pub dead_letter: String,
    pub members: String,
    pub acquire_lanes: String,
    pub release_lanes: String,
    pub inbox_record: String,
    pub inbox_purge: String,
}

impl Queries {
    pub(crate) fn new(tables: &Tables) -> Self {
        let outbox = tables.outbox_table();
        let dead_letters = tables.dead_letters_table();
        let inbox = tables.inbox_table();
        let sequence = tables.sequence();
        let ns = tables.lock_namespace();
        let channel = tables.channel();
        // pg_locks lists the locks of every database of the server; advisory locks are per database.
        let this_database =
            "database = (SELECT oid FROM pg_database WHERE datname = current_database())";
        let enqueue = |notify: &str| {
            format!(
                "INSERT INTO {outbox} (id, slot, topic, key, event_type, source, content_type, payload, headers, created_at)
                 SELECT m.id, m.slot, m.topic, m.key, m.event_type, m.source, m.content_type, m.payload, m.headers, m.created_at
                 FROM UNNEST($1::uuid[], $2::int4[], $3::text[], $4::bytea[], $5::text[], $6::text[], $7::text[], $8::bytea[], $9::jsonb[], $10::timestamptz[])
                      WITH ORDINALITY AS m(id, slot, topic, key, event_type, source, content_type, payload, headers, created_at, ord)
                 WHERE pg_advisory_xact_lock_shared({ns}, {WRITER_KEY}) IS NOT NULL {notify}
                 ORDER BY m.ord"
            )
        };
        Self {
            namespace: ns,
            enqueue: enqueue(&format!("AND pg_notify('{channel}', '') IS NOT NULL")),
            enqueue_quiet: enqueue(""),
            // Two statements, run in this order: first the highest number handed out, then the
            // transactions that may still hold lower numbers. See `horizon.rs`.
            horizon: format!(
                "SELECT (CASE WHEN is_called THEN last_value ELSE last_value - 1 END)::text FROM {sequence};
                 SELECT coalesce(string_agg(virtualtransaction, ','), '') FROM pg_locks
                 WHERE locktype = 'advisory' AND {this_database}
                   AND classid = {ns} AND objid = {WRITER_KEY} AND objsubid = 2 AND granted"
            ),
            claim: format!(
                "SELECT {MESSAGE_COLUMNS} FROM {outbox}
                 WHERE seq <= $1
                   AND (slot % $2) = ANY($3)
                   AND (slot % $2) <> ALL(ARRAY(SELECT DISTINCT slot % $2 FROM {outbox} WHERE not_before > now()))
                 ORDER BY seq
                 LIMIT $4"
            ),
            delete: format!("DELETE FROM {outbox} WHERE seq = ANY($1)"),
            retry: format!(
                "UPDATE {outbox} AS o SET attempts = r.attempts, not_before = r.not_before, last_error = r.error
                 FROM UNNEST($1::int8[], $2::int4[], $3::timestamptz[], $4::text[]) AS r(seq, attempts, not_before, error)
                 WHERE o.seq = r.seq"
            ),
            dead_letter: format!(
                "WITH failed AS (
                     SELECT * FROM UNNEST($1::int8[], $2::int4[], $3::text[]) AS f(seq, attempts, error)
                 ), moved AS (
                     DELETE FROM {outbox} AS o USING failed AS f WHERE o.seq = f.seq
                     RETURNING o.seq, o.id, o.slot, o.topic, o.key, o.event_type, o.source, o.content_type,
                               o.payload, o.headers, o.created_at, f.attempts AS failed_attempts, f.error AS failed_error
                 )
                 INSERT INTO {dead_letters} (seq, id, slot, topic, key, event_type, source, content_type, payload, headers, created_at, attempts, error)
                 SELECT seq, id, slot, topic, key, event_type, source, content_type, payload, headers, created_at, failed_attempts, failed_error
                 FROM moved"
            ),
            members: format!(
                "SELECT (objid::int8 - {MEMBER_BASE})::int4 AS lanes, count(*)::int8 AS relays FROM pg_locks
                 WHERE locktype = 'advisory' AND {this_database} AND classid = {ns} AND objsubid = 2 AND granted
                   AND objid::int8 BETWEEN {MEMBER_BASE} AND {MEMBER_BASE} + 1024
                 GROUP BY 1"
            ),
            acquire_lanes: format!(
                // CASE, not AND: PostgreSQL may evaluate AND operands in any order, and locking a
                // lane this relay already owns again would make a later release leave it held.
                "SELECT lane FROM generate_series(0, $1 - 1) AS lane
                 WHERE CASE WHEN lane = ANY($2) THEN false ELSE pg_try_advisory_lock({ns}, lane) END
                 LIMIT $3"
            ),
            release_lanes: format!(
                "SELECT count(*) FILTER (WHERE pg_advisory_unlock({ns}, lane)) FROM UNNEST($1::int4[]) AS lane"
            ),
            inbox_record: format!(
                "INSERT INTO {inbox} (consumer, message_id) VALUES ($1, $2) ON CONFLICT DO NOTHING"
            ),
            inbox_purge: format!(
                "DELETE FROM {inbox} WHERE ctid = ANY(ARRAY(
                     SELECT ctid FROM {inbox} WHERE received_at < $1 LIMIT $2))"
            ),
        }
    }
}
