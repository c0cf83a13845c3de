-- The aggregator's tables: the dedup index of event ids, the rollups, and the per-partition batch
-- log that makes the Kafka -> ClickHouse path exactly-once (see aggregator/DESIGN.md).
-- Every table that takes batch data sets non_replicated_deduplication_window: a batch is written
-- with an insert_deduplication_token derived from (topic, partition, first offset), so replaying it
-- after a crash stores nothing twice.

-- Ids of the events counted in the last 35 days (+ margin): the dedup state for client retries.
-- A retry of (tenant_id, event_id) is found here by primary key; rows expire by TTL, so the state
-- grows with the events of 40 days and no further.
CREATE TABLE IF NOT EXISTS usage_event_ids
(
    tenant_id       String,
    event_id        String,
    received_at     DateTime('UTC'),
    kafka_partition UInt32,
    kafka_offset    UInt64
)
ENGINE = MergeTree
PARTITION BY toYYYYMMDD(received_at)
ORDER BY (tenant_id, event_id)
TTL received_at + INTERVAL 40 DAY
SETTINGS non_replicated_deduplication_window = 10000, ttl_only_drop_parts = 1;

-- The (tenant, id) pairs of a batch being stored, sent as data (a RowBinary insert) rather than as
-- a query literal, so the dedup lookup can read them with an indexed IN (subquery). Rows are only
-- needed while their batch is stored; whole hours are dropped a day later.
CREATE TABLE IF NOT EXISTS aggregator_lookups
(
    token      String,
    tenant_id  String,
    event_id   String,
    created_at DateTime('UTC')
)
ENGINE = MergeTree
PARTITION BY toStartOfHour(created_at)
ORDER BY token
TTL created_at + INTERVAL 1 DAY
SETTINGS ttl_only_drop_parts = 1;

-- Per tenant x metric x window partial aggregates; every column merges exactly, so a query that
-- aggregates (or reads usage_windows) is exact before and after background merges.
CREATE TABLE IF NOT EXISTS usage_rollups
(
    granularity     LowCardinality(String), -- minute, hour, day or month
    window_start    DateTime('UTC'),
    tenant_id       String,
    metric          LowCardinality(String),
    events          SimpleAggregateFunction(sum, UInt64),
    value_sum       SimpleAggregateFunction(sum, Decimal(38, 9)),
    value_max       SimpleAggregateFunction(max, Decimal(38, 9)),
    latest          SimpleAggregateFunction(max, Tuple(DateTime64(9, 'UTC'), String, Decimal(38, 9))), -- (event time, event id, value)
    distinct_values SimpleAggregateFunction(groupUniqArrayArray, Array(String))
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(window_start)
ORDER BY (granularity, tenant_id, metric, window_start)
SETTINGS non_replicated_deduplication_window = 10000;

-- The rollups, one row per window: what analysts and billing read.
CREATE VIEW IF NOT EXISTS usage_windows AS
SELECT
    granularity,
    window_start,
    tenant_id,
    metric,
    sum(events)                                  AS events,
    sum(value_sum)                               AS total,
    max(value_max)                               AS max_value,
    tupleElement(max(latest), 3)                 AS latest_value,
    tupleElement(max(latest), 1)                 AS latest_at,
    length(groupUniqArrayArray(distinct_values)) AS distinct_count
FROM usage_rollups
GROUP BY granularity, window_start, tenant_id, metric;

-- One row per planned batch: the first writer's plan for (topic, partition, first_offset) wins
-- (its token dedups every later plan), so a replay covers exactly the same offsets.
CREATE TABLE IF NOT EXISTS aggregator_batches
(
    topic           String,
    kafka_partition UInt32,
    first_offset    UInt64,
    last_offset     UInt64,
    decided_at      DateTime64(3, 'UTC'),
    planned_by      String
)
ENGINE = MergeTree
ORDER BY (topic, kafka_partition, first_offset)
SETTINGS non_replicated_deduplication_window = 100000;

-- One row per stored batch: the partition's next offset to read. Written last.
CREATE TABLE IF NOT EXISTS aggregator_checkpoints
(
    topic           String,
    kafka_partition UInt32,
    next_offset     UInt64,
    first_offset    UInt64,
    stored_at       DateTime64(3, 'UTC')
)
ENGINE = MergeTree
ORDER BY (topic, kafka_partition, next_offset)
SETTINGS non_replicated_deduplication_window = 100000;
