-- The outbox, its dead letters and the inbox.
-- Placeholders in braces are replaced with the configured (validated, quoted) names.

CREATE SEQUENCE IF NOT EXISTS {sequence} AS BIGINT NO CYCLE;

CREATE TABLE IF NOT EXISTS {outbox} (
    seq          BIGINT      PRIMARY KEY DEFAULT nextval('{sequence_text}'),
    id           UUID        NOT NULL,
    slot         INTEGER     NOT NULL CHECK (slot >= 0 AND slot < 1024),
    topic        TEXT        NOT NULL,
    key          BYTEA,
    event_type   TEXT,
    source       TEXT,
    content_type TEXT        NOT NULL,
    payload      BYTEA       NOT NULL,
    headers      JSONB       NOT NULL DEFAULT '{}'::jsonb,
    created_at   TIMESTAMPTZ NOT NULL,
    attempts     INTEGER     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    not_before   TIMESTAMPTZ,
    last_error   TEXT
);

ALTER SEQUENCE {sequence} OWNED BY {outbox}.seq;

CREATE UNIQUE INDEX IF NOT EXISTS {outbox_name}_id_key ON {outbox} (id);

-- Messages waiting for a retry hold their lane back; this finds them without a scan.
CREATE INDEX IF NOT EXISTS {outbox_name}_not_before_idx ON {outbox} (not_before)
    WHERE not_before IS NOT NULL;

CREATE TABLE IF NOT EXISTS {dead_letters} (
    seq             BIGINT      PRIMARY KEY,
    id              UUID        NOT NULL,
    slot            INTEGER     NOT NULL,
    topic           TEXT        NOT NULL,
    key             BYTEA,
    event_type      TEXT,
    source          TEXT,
    content_type    TEXT        NOT NULL,
    payload         BYTEA       NOT NULL,
    headers         JSONB       NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL,
    attempts        INTEGER     NOT NULL,
    error           TEXT        NOT NULL,
    dead_lettered_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS {dead_letters_name}_topic_idx ON {dead_letters} (topic, seq);

CREATE TABLE IF NOT EXISTS {inbox} (
    consumer    TEXT        NOT NULL,
    message_id  UUID        NOT NULL,
    received_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, message_id)
);

CREATE INDEX IF NOT EXISTS {inbox_name}_received_at_idx ON {inbox} (received_at);
