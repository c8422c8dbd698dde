-- Numbering under the writer lock for every writer, plain SQL ones included; the slot function
-- that lets them place keys as the library does; the inbox purged per consumer.
-- Placeholders in braces are replaced with the configured (validated, quoted) names.

-- The publish horizon needs every row numbered while its transaction holds the writer lock (see
-- the library's `horizon.rs`). As the column's default, the lock covers a trigger, a script or a
-- service in another language that inserts rows without the library.
CREATE OR REPLACE FUNCTION {next_seq}() RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $fn$
BEGIN
    PERFORM pg_advisory_xact_lock_shared({lock_namespace}, {writer_key});
    RETURN nextval('{sequence_text}');
END
$fn$;

ALTER TABLE {outbox} ALTER COLUMN seq SET DEFAULT {next_seq}();

-- A cached block of numbers could be handed out long after the horizon passed it.
ALTER SEQUENCE {sequence} CACHE 1;

-- The slot of a message, as the library computes it: Kafka's murmur2 of the key (of the id's 16
-- bytes when there is no key), positive, modulo {slots}. Same key, same slot, whoever writes it.
CREATE OR REPLACE FUNCTION {slot_function}(key bytea, id uuid) RETURNS integer
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $fn$
DECLARE
    data bytea := coalesce(key, uuid_send(id));
    len integer := length(coalesce(key, uuid_send(id)));
    m constant bigint := 1540483477;
    h bigint := 2538058380 # len;
    k bigint;
    i integer := 0;
BEGIN
    -- 32-bit arithmetic in bigint: products are split at 16 bits so that none overflows.
    WHILE i + 4 <= len LOOP
        k := get_byte(data, i)::bigint | (get_byte(data, i + 1)::bigint << 8)
             | (get_byte(data, i + 2)::bigint << 16) | (get_byte(data, i + 3)::bigint << 24);
        k := ((((k >> 16) * m) & 65535) << 16) + (k & 65535) * m & 4294967295;
        k := k # (k >> 24);
        k := ((((k >> 16) * m) & 65535) << 16) + (k & 65535) * m & 4294967295;
        h := ((((h >> 16) * m) & 65535) << 16) + (h & 65535) * m & 4294967295;
        h := h # k;
        i := i + 4;
    END LOOP;
    IF len - i >= 3 THEN
        h := h # (get_byte(data, i + 2)::bigint << 16);
    END IF;
    IF len - i >= 2 THEN
        h := h # (get_byte(data, i + 1)::bigint << 8);
    END IF;
    IF len - i >= 1 THEN
        h := h # get_byte(data, i)::bigint;
        h := ((((h >> 16) * m) & 65535) << 16) + (h & 65535) * m & 4294967295;
    END IF;
    h := h # (h >> 13);
    h := ((((h >> 16) * m) & 65535) << 16) + (h & 65535) * m & 4294967295;
    h := h # (h >> 15);
    RETURN ((h & 2147483647) % {slots})::integer;
END
$fn$;

-- Each consumer purges its own rows.
CREATE INDEX IF NOT EXISTS {inbox_name}_purge_idx ON {inbox} (consumer, received_at);
DROP INDEX IF EXISTS {schema}.{inbox_name}_received_at_idx;
