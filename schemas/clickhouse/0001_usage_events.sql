-- Raw usage events, one row per accepted event, as consumed from the usage topic.
-- Values are exact: Decimal(38, 9). Times are UTC.
-- (kafka_partition, kafka_offset) record where each row came from, for exactly-once replay.
CREATE TABLE IF NOT EXISTS usage_events
(
    tenant_id       String,
    event_id        String,
    metric          LowCardinality(String),
    value           Decimal(38, 9),
    timestamp       DateTime64(9, 'UTC'),
    source          LowCardinality(String),
    attributes      Map(String, String),
    ingested_at     DateTime64(3, 'UTC'),
    kafka_partition UInt32,
    kafka_offset    UInt64,
    INDEX event_id_bloom event_id TYPE bloom_filter(0.001) GRANULARITY 4
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(timestamp)
ORDER BY (tenant_id, metric, timestamp, event_id)
SETTINGS non_replicated_deduplication_window = 10000;
