-- Partition-scoped batch tables (see aggregator/DESIGN.md, "Stalled writers").
--
-- A batch of Kafka partition n writes its raw events to usage_events_p<n> and its rollups to
-- usage_rollups_p<n>, so each table's deduplication window counts the blocks of one partition
-- only, whose batches are stored one after another: a replay of a batch finds its blocks however
-- many blocks the other partitions wrote meanwhile. The aggregator creates a partition's tables
-- when it first owns the partition, as copies of the _base tables (columns, engine, settings).
-- usage_events and usage_rollups become Merge tables over the _base table (which keeps the rows
-- written before this migration) and every partition table, so every query stays as it was.

-- tally:unless-table usage_events_base
RENAME TABLE IF EXISTS usage_events TO usage_events_base;

CREATE TABLE IF NOT EXISTS usage_events AS usage_events_base
ENGINE = Merge(currentDatabase(), '^usage_events_(base|p[0-9]+)$');

-- tally:unless-table usage_rollups_base
RENAME TABLE IF EXISTS usage_rollups TO usage_rollups_base;

CREATE TABLE IF NOT EXISTS usage_rollups AS usage_rollups_base
ENGINE = Merge(currentDatabase(), '^usage_rollups_(base|p[0-9]+)$');

-- "First stored wins" is read as the lowest block number: a MergeTree numbers a part when it
-- commits it, under the table's lock, so block order is the order rows became visible, and the
-- number survives merges once the column is enabled.
ALTER TABLE usage_event_ids MODIFY SETTING enable_block_number_column = 1;

ALTER TABLE aggregator_batches MODIFY SETTING enable_block_number_column = 1;

-- A batch's (tenant, id) pairs now travel in a temporary table of the batch's own session.
DROP TABLE IF EXISTS aggregator_lookups;
