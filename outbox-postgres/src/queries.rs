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

/// The transaction-local setting that marks an inbox transaction as open.
const INBOX_MARK: &str = "outbox.inbox_transaction";

/// The filter of the dead-letter statements; parameters `$1..$6` (see `dead_letters.rs`).
const DEAD_LETTER_FILTER: &str = "($1::uuid[] IS NULL OR id = ANY($1))
    AND ($2::text IS NULL OR topic = $2)
    AND ($3::bytea IS NULL OR key = $3)
    AND ($4::text IS NULL OR strpos(lower(error), lower($4)) > 0)
    AND ($5::timestamptz IS NULL OR dead_lettered_at >= $5)
    AND ($6::timestamptz IS NULL OR dead_lettered_at < $6)";

/// Columns of a message row, in the order [`crate::rows`] decodes them.
pub(crate) const MESSAGE_COLUMNS: &str =
    "seq, id, topic, key, event_type, source, content_type, payload, headers, created_at, attempts";

/// What a message is stored with, in outbox and dead-letter rows alike (besides `seq`), in the
/// order [`crate::rows::Columns::bind`] binds them.
pub(crate) const STORED_COLUMNS: &str =
    "id, slot, topic, key, event_type, source, content_type, payload, headers, created_at";

/// [`STORED_COLUMNS`] as the arrays `Columns::bind` binds, parameters `$1..$10`, for `UNNEST`.
pub(crate) const STORED_ARRAYS: &str = "$1::uuid[], $2::int4[], $3::text[], $4::bytea[], $5::text[], $6::text[], $7::text[], $8::bytea[], $9::jsonb[], $10::timestamptz[]";

/// [`STORED_COLUMNS`] of the row named `alias`.
pub(crate) fn stored_columns_of(alias: &str) -> String {
    STORED_COLUMNS
        .split(", ")
        .map(|column| format!("{alias}.{column}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Names of the outbox's objects, for messages.
#[derive(Debug)]
pub(crate) struct Names {
    pub outbox: String,
    pub sequence: String,
    pub next_seq_function: String,
    /// Unqualified: what a default expression names when the schema is on the search path.
    pub next_seq_function_bare: String,
}

#[derive(Debug)]
pub(crate) struct Queries {
    pub names: Names,
    pub namespace: i32,
    pub enqueue: String,
    pub enqueue_quiet: String,
    pub horizon: String,
    pub claim: String,
    pub settle: String,
    pub settle_retaining: String,
    pub purge_published: String,
    pub dead_letter: String,
    pub members: String,
    pub acquire_lanes: String,
    pub release_lanes: String,
    pub inbox_record: String,
    pub inbox_intact: String,
    pub inbox_purge: String,
    pub dead_letters_list: String,
    pub dead_letters_replay: String,
    pub dead_letters_take: String,
    pub dead_letters_purge: String,
    pub dead_letters_show: String,
    pub status_backlog: String,
    pub status_dead_letters: String,
    pub status_relays: String,
    pub status_writers: String,
    pub schema_check: String,
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
        // The writer lock is taken here as well as by the `seq` default (`outbox_next_seq()`,
        // migration 3): a service may run this library against a database not migrated that far
        // yet, whose default is a bare `nextval`. Taking a shared lock the transaction holds
        // already is a lookup in its local lock table.
        let (stored, m_stored) = (STORED_COLUMNS, stored_columns_of("m"));
        let enqueue = |notify: &str| {
            format!(
                "INSERT INTO {outbox} ({stored})
                 SELECT {m_stored}
                 FROM UNNEST({STORED_ARRAYS}) WITH ORDINALITY AS m({stored}, ord)
                 WHERE pg_advisory_xact_lock_shared({ns}, {WRITER_KEY}) IS NOT NULL {notify}
                 ORDER BY m.ord"
            )
        };
        // Failed messages (the CTE `failed`: seq, attempts, error) moved from the outbox into the
        // dead letters, with everything they were stored with.
        let moved = format!(
            "moved AS (
                 DELETE FROM {outbox} AS o USING failed AS f WHERE o.seq = f.seq AND o.published_at IS NULL
                 RETURNING o.seq, {o_stored}, f.attempts AS failed_attempts, f.error AS failed_error
             )",
            o_stored = stored_columns_of("o")
        );
        let park = format!(
            "INSERT INTO {dead_letters} (seq, {stored}, attempts, error)
             SELECT seq, {stored}, failed_attempts, failed_error FROM moved"
        );
        // One statement for the outcome of windows: $1 published; $2..$5 retries (seq, attempts,
        // delay in seconds on the database's clock, error); $6..$8 dead letters (seq, attempts,
        // error). Returns what it changed.
        let settle = |published: &str| {
            format!(
                "WITH published AS ({published}),
                 retried AS (
                     UPDATE {outbox} AS o SET attempts = r.attempts,
                            not_before = now() + r.delay * interval '1 second', last_error = r.error
                     FROM UNNEST($2::int8[], $3::int4[], $4::float8[], $5::text[]) AS r(seq, attempts, delay, error)
                     WHERE o.seq = r.seq AND o.published_at IS NULL
                     RETURNING o.seq
                 ), failed AS (
                     SELECT * FROM UNNEST($6::int8[], $7::int4[], $8::text[]) AS f(seq, attempts, error)
                 ), {moved}, parked AS ({park} RETURNING seq)
                 SELECT ARRAY(SELECT seq FROM published) AS published, ARRAY(SELECT seq FROM retried) AS retried,
                        ARRAY(SELECT seq FROM parked) AS dead_lettered"
            )
        };
        Self {
            names: Names {
                outbox: outbox.clone(),
                sequence: sequence.clone(),
                next_seq_function: tables.next_seq_function(),
                next_seq_function_bare: format!("{}_next_seq", tables.outbox_name()),
            },
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
            // Lane windows. $1 horizon, $2 lane count, $3 the idle lanes to claim from, $4 rows read
            // at most (in seq order, through the unpublished index), $5 rows per lane, $6 lanes,
            // $7 rows in all, $8 bytes in all (the first row is taken whatever its size). A topic
            // of a lane whose message waits for a retry is left out of that lane. The windows are
            // chosen on (seq, lane, size) alone; only the chosen rows are read whole.
            claim: format!(
                "WITH blocked AS (
                     SELECT DISTINCT topic, slot % $2 AS lane FROM {outbox}
                     WHERE published_at IS NULL AND not_before > now()
                 ), prefix AS (
                     SELECT seq, slot % $2 AS lane,
                            octet_length(payload) + coalesce(octet_length(key), 0) + octet_length(headers::text) + 64 AS bytes
                     FROM {outbox} AS o
                     WHERE seq <= $1 AND published_at IS NULL AND (slot % $2) = ANY($3)
                       AND NOT EXISTS (SELECT 1 FROM blocked AS b WHERE b.topic = o.topic AND b.lane = o.slot % $2)
                     ORDER BY seq
                     LIMIT $4
                 ), ranked AS (
                     SELECT *, row_number() OVER (PARTITION BY lane ORDER BY seq) AS nth,
                            min(seq) OVER (PARTITION BY lane) AS head
                     FROM prefix
                 ), chosen AS (
                     SELECT *, dense_rank() OVER (ORDER BY head) AS lane_rank FROM ranked WHERE nth <= $5
                 ), counted AS (
                     SELECT seq, lane, row_number() OVER (ORDER BY seq) AS taken,
                            sum(bytes) OVER (ORDER BY seq) AS taken_bytes
                     FROM chosen WHERE lane_rank <= $6
                 )
                 SELECT {MESSAGE_COLUMNS}, lane FROM counted JOIN {outbox} USING (seq)
                 WHERE taken <= $7 AND (taken = 1 OR taken_bytes <= $8)
                 ORDER BY seq"
            ),
            settle: settle(&format!("DELETE FROM {outbox} WHERE seq = ANY($1) RETURNING seq")),
            // With retention: published rows stay, out of the claims' (partial) index.
            settle_retaining: settle(&format!(
                "UPDATE {outbox} SET published_at = now() WHERE seq = ANY($1) AND published_at IS NULL RETURNING seq"
            )),
            // Oldest first through the partial index on published_at; rows another relay is
            // purging right now are left to it.
            purge_published: format!(
                "DELETE FROM {outbox} WHERE ctid = ANY(ARRAY(
                     SELECT ctid FROM {outbox} WHERE published_at < now() - $1::float8 * interval '1 second'
                     ORDER BY published_at LIMIT $2 FOR UPDATE SKIP LOCKED))"
            ),
            dead_letter: format!(
                "WITH failed AS (
                     SELECT * FROM UNNEST($1::int8[], $2::int4[], $3::text[]) AS f(seq, attempts, error)
                 ), {moved}
                 {park}"
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
            // Marks the transaction as well (a setting local to it), so that `inbox_intact` can
            // tell it still runs: the mark is gone once it ended, however it ended.
            inbox_record: format!(
                "INSERT INTO {inbox} (consumer, message_id)
                 SELECT $1, $2 FROM (SELECT set_config('{INBOX_MARK}', 'open', true)) AS marked
                 ON CONFLICT DO NOTHING"
            ),
            inbox_intact: format!("SELECT coalesce(current_setting('{INBOX_MARK}', true), '') = 'open'"),
            dead_letters_list: format!(
                "SELECT seq, id, topic, key, event_type, length(payload) AS payload_bytes, attempts, error,
                        created_at, dead_lettered_at
                 FROM {dead_letters} WHERE {DEAD_LETTER_FILTER} ORDER BY seq LIMIT $7"
            ),
            // Back into the outbox as an enqueue would: under the writer lock (so the horizon
            // waits for it), numbered in the original order, waking the relays.
            dead_letters_replay: format!(
                "WITH chosen AS (
                     SELECT seq FROM {dead_letters} WHERE {DEAD_LETTER_FILTER} ORDER BY seq LIMIT $7 FOR UPDATE
                 ), moved AS (
                     DELETE FROM {dead_letters} AS d USING chosen WHERE d.seq = chosen.seq RETURNING d.*
                 )
                 INSERT INTO {outbox} ({stored})
                 SELECT {m_stored}
                 FROM moved AS m
                 WHERE pg_advisory_xact_lock_shared({ns}, {WRITER_KEY}) IS NOT NULL
                   AND pg_notify('{channel}', '') IS NOT NULL
                 ORDER BY m.seq"
            ),
            // Taken out to be enqueued again by the caller, in the same transaction.
            dead_letters_take: format!(
                "WITH chosen AS (
                     SELECT seq FROM {dead_letters} WHERE {DEAD_LETTER_FILTER} ORDER BY seq LIMIT $7 FOR UPDATE
                 )
                 DELETE FROM {dead_letters} AS d USING chosen WHERE d.seq = chosen.seq
                 RETURNING d.seq, d.id, d.topic, d.key, d.event_type, d.source, d.content_type, d.payload,
                           d.headers, d.created_at, 0 AS attempts"
            ),
            dead_letters_purge: format!(
                "DELETE FROM {dead_letters} WHERE seq IN (
                     SELECT seq FROM {dead_letters} WHERE {DEAD_LETTER_FILTER} ORDER BY seq LIMIT $7)"
            ),
            dead_letters_show: format!(
                "SELECT seq, {stored}, attempts, error, dead_lettered_at
                 FROM {dead_letters} WHERE id = $1 ORDER BY seq LIMIT 1"
            ),
            // Unpublished rows per topic (retention keeps published ones with `published_at` set).
            status_backlog: format!(
                "SELECT topic, count(*)::int8 AS messages, min(created_at) AS oldest_created_at,
                        greatest(extract(epoch FROM now() - min(created_at)), 0)::float8 AS oldest_age_seconds
                 FROM {outbox} WHERE published_at IS NULL GROUP BY topic ORDER BY topic"
            ),
            status_dead_letters: format!("SELECT count(*)::int8 FROM {dead_letters}"),
            // Sessions of the relay program holding locks of this outbox; the exclusive ones below
            // MEMBER_BASE are lanes.
            status_relays: format!(
                "SELECT a.pid, a.client_addr::text AS client_addr, a.backend_start,
                        (count(*) FILTER (WHERE l.mode = 'ExclusiveLock' AND l.objid::int8 < {MEMBER_BASE}))::int8 AS lanes
                 FROM pg_locks AS l JOIN pg_stat_activity AS a ON a.pid = l.pid
                 WHERE l.locktype = 'advisory' AND l.{this_database} AND l.granted
                   AND l.classid = {ns} AND l.objsubid = 2
                   AND a.application_name = 'outbox-relay' AND a.datname = current_database()
                 GROUP BY a.pid, a.client_addr, a.backend_start
                 ORDER BY a.backend_start, a.pid"
            ),
            // One consumer's rows only, through the (consumer, received_at) index.
            // Transactions holding the writer lock, oldest first: what holds the horizon back.
            status_writers: format!(
                "SELECT a.pid, a.application_name, a.client_addr::text AS client_addr, a.state,
                        greatest(extract(epoch FROM now() - a.xact_start), 0)::float8 AS open_seconds,
                        left(a.query, 200) AS query
                 FROM pg_locks AS l JOIN pg_stat_activity AS a ON a.pid = l.pid
                 WHERE l.locktype = 'advisory' AND l.{this_database} AND l.granted
                   AND l.classid = {ns} AND l.objid = {WRITER_KEY} AND l.objsubid = 2
                 ORDER BY a.xact_start, a.pid"
            ),
            // What the horizon needs of the schema: the sequence hands out one number at a time,
            // and the `seq` default takes the writer lock before it does.
            schema_check: format!(
                "SELECT (SELECT cache_size FROM pg_sequences WHERE schemaname = '{schema}' AND sequencename = '{sequence_name}'),
                        (SELECT pg_get_expr(d.adbin, d.adrelid) FROM pg_attrdef AS d
                         JOIN pg_attribute AS a ON a.attrelid = d.adrelid AND a.attnum = d.adnum
                         WHERE d.adrelid = to_regclass('{outbox_text}') AND a.attname = 'seq')",
                schema = tables.schema_name(),
                sequence_name = tables.sequence_name(),
                outbox_text = outbox.replace('\'', "''"),
            ),
            inbox_purge: format!(
                "DELETE FROM {inbox} WHERE ctid = ANY(ARRAY(
                     SELECT ctid FROM {inbox} WHERE consumer = $1 AND received_at < $2 LIMIT $3))"
            ),
        }
    }
}
