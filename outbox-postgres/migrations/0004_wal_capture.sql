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

-- The WAL envelope of a message, as the library encodes it (version 1, see its `wal/envelope.rs`),
-- for writers without the library:
--   SELECT pg_logical_emit_message(true, 'outbox', {wal_envelope}(id, topic, key, ...));
CREATE OR REPLACE FUNCTION {wal_envelope}(
    id uuid, topic text, key bytea, event_type text, source text, content_type text,
    payload bytea, headers jsonb DEFAULT '{}'::jsonb, created_at timestamptz DEFAULT now()
) RETURNS bytea
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$
    SELECT '\x01'::bytea
        || uuid_send(id)
        || int8send(floor(extract(epoch FROM created_at) * 1000000)::int8)
        || int2send(octet_length(convert_to(topic, 'UTF8'))::int2) || convert_to(topic, 'UTF8')
        || CASE WHEN key IS NULL THEN '\xffffffff'::bytea ELSE int4send(octet_length(key)) || key END
        || CASE WHEN event_type IS NULL THEN '\xffffffff'::bytea
                ELSE int4send(octet_length(convert_to(event_type, 'UTF8'))) || convert_to(event_type, 'UTF8') END
        || CASE WHEN source IS NULL THEN '\xffffffff'::bytea
                ELSE int4send(octet_length(convert_to(source, 'UTF8'))) || convert_to(source, 'UTF8') END
        || int2send(octet_length(convert_to(content_type, 'UTF8'))::int2) || convert_to(content_type, 'UTF8')
        || int4send((SELECT count(*)::int4 FROM jsonb_object_keys(coalesce(headers, '{}'::jsonb))))
        || coalesce((SELECT string_agg(
                         int2send(octet_length(convert_to(h.name, 'UTF8'))::int2) || convert_to(h.name, 'UTF8')
                         || int4send(octet_length(convert_to(h.value, 'UTF8'))) || convert_to(h.value, 'UTF8'),
                         ''::bytea ORDER BY h.name)
                     FROM jsonb_each_text(coalesce(headers, '{}'::jsonb)) AS h(name, value)), ''::bytea)
        || int4send(octet_length(payload)) || payload
$fn$;
