-- When the server stored each claim: the rank between the first claims of a pair on two
-- ClickHouse shards (a pair delivered to partitions homed on different shards; see
-- aggregator/DESIGN.md, "A ClickHouse cluster"). Stamped by the server as it forms the claims'
-- block, just before the commit, so a writer paused before or while sending cannot make its
-- claim look older than it is; a replayed block is dropped, so a claim's stamp never changes.
-- Claims stored before this migration take their batch's plan time, made physical first so the
-- stamp of no row is ever computed at read time.
ALTER TABLE usage_event_ids ADD COLUMN IF NOT EXISTS claimed_at DateTime64(6, 'UTC') DEFAULT toDateTime64(received_at, 6);

ALTER TABLE usage_event_ids MATERIALIZE COLUMN claimed_at;

ALTER TABLE usage_event_ids MODIFY COLUMN claimed_at DateTime64(6, 'UTC') DEFAULT now64(6);
