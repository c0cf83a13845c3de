-- The cluster layer: applied on every node of a ClickHouse cluster after the node's own DDL
-- (every node migration: the same local tables as on one server). `{cluster}` is the configured cluster
-- name (`clickhouse.cluster`), substituted by Tally.
--
-- The names readers use (usage_events, usage_rollups, and the usage_windows view over
-- usage_rollups) become Distributed tables over every shard's local tables, so the enforcer,
-- billing-sync, the query service and analysts read every shard exactly as they read one server.
-- The aggregator writes only shard-local tables (usage_events_p<n>, usage_rollups_p<n>,
-- usage_event_ids, aggregator_batches, aggregator_checkpoints) on the shard its Kafka partition
-- lives on; see aggregator/DESIGN.md, "A ClickHouse cluster".

-- tally:unless-table usage_events_local
RENAME TABLE IF EXISTS usage_events TO usage_events_local;

CREATE TABLE IF NOT EXISTS usage_events AS usage_events_local
ENGINE = Distributed('{cluster}', currentDatabase(), usage_events_local);

-- tally:unless-table usage_rollups_local
RENAME TABLE IF EXISTS usage_rollups TO usage_rollups_local;

CREATE TABLE IF NOT EXISTS usage_rollups AS usage_rollups_local
ENGINE = Distributed('{cluster}', currentDatabase(), usage_rollups_local);

-- Every shard's claims, for the dedup lookup of client retries (an id is found whatever shard
-- holds it), and every shard's checkpoints (where a partition was stored before it had a home).
CREATE TABLE IF NOT EXISTS usage_event_ids_all AS usage_event_ids
ENGINE = Distributed('{cluster}', currentDatabase(), usage_event_ids);

CREATE TABLE IF NOT EXISTS aggregator_checkpoints_all AS aggregator_checkpoints
ENGINE = Distributed('{cluster}', currentDatabase(), aggregator_checkpoints);

-- The shard each Kafka partition's batches are written to, read on the first shard: the first
-- home stored for a partition wins (lowest block number), so every aggregator instance, whatever
-- its configured shard count, writes a partition to the same shard.
CREATE TABLE IF NOT EXISTS aggregator_partition_homes
(
    topic           String,
    kafka_partition UInt32,
    shard           UInt32,
    decided_at      DateTime64(3, 'UTC'),
    decided_by      String
)
ENGINE = MergeTree
ORDER BY (topic, kafka_partition)
SETTINGS non_replicated_deduplication_window = 10000, enable_block_number_column = 1;
