-- Optional retention of published messages (`PgRelayStoreConfig::retention`): instead of being
-- deleted, a published row gets `published_at` and stays until the relay purges it.
-- Placeholders in braces are replaced with the configured (validated, quoted) names.

ALTER TABLE {outbox} ADD COLUMN IF NOT EXISTS published_at TIMESTAMPTZ;

-- Claims walk the unpublished rows in seq order; retained rows are not in this index, so however
-- many are kept, a claim never reads them.
CREATE INDEX IF NOT EXISTS {outbox_name}_unpublished_idx ON {outbox} (seq)
    WHERE published_at IS NULL;

-- The purge finds the oldest retained rows without a scan. Empty without retention.
CREATE INDEX IF NOT EXISTS {outbox_name}_published_at_idx ON {outbox} (published_at)
    WHERE published_at IS NOT NULL;
