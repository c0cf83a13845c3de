//! ClickHouse side of the exactly-once protocol: batch plans, checkpoints, the dedup lookup, and
//! the token-deduplicated inserts of a batch's rows. Every call here is safe to repeat.

use std::collections::HashSet;

use clickhouse::{Client, Row};
use serde::{Deserialize, Serialize};

use crate::batch::{Plan, Rows};

/// Where a partition stands in ClickHouse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// The first offset not yet stored (0 for a partition never stored).
    pub next_offset: u64,
    /// The plan already made for the batch starting there, if a crash left it unfinished.
    pub pending: Option<Plan>,
}

#[derive(Debug, Row, Serialize)]
struct CheckpointRow<'a> {
    topic: &'a str,
    kafka_partition: u32,
    next_offset: u64,
    first_offset: u64,
    stored_at: i64,
}

#[derive(Debug, Row, Serialize)]
struct LookupRow<'a> {
    token: &'a str,
    tenant_id: &'a str,
    event_id: &'a str,
    created_at: u32,
}

#[derive(Debug, Row, Deserialize)]
struct Pair {
    tenant_id: String,
    event_id: String,
}

/// The aggregator's ClickHouse tables.
#[derive(Debug, Clone)]
pub struct Store {
    client: Client,
}

/// The tables a batch writes with a token, and so need a deduplication window.
pub const DEDUPLICATED_TABLES: [&str; 5] =
    ["usage_events", "usage_event_ids", "usage_rollups", "aggregator_checkpoints", "aggregator_batches"];

/// A table whose settings break the exactly-once protocol.
#[derive(Debug, thiserror::Error)]
pub enum DedupWindowError {
    #[error(
        "ClickHouse table {table} has non_replicated_deduplication_window = {found}, below the {needed} the \
         exactly-once protocol needs (a replayed batch must find its blocks): \
         ALTER TABLE {table} MODIFY SETTING non_replicated_deduplication_window = {needed}"
    )]
    TooSmall { table: String, found: u64, needed: u64 },
    #[error("ClickHouse table {0} is missing: apply the DDL in schemas/clickhouse")]
    Missing(String),
    #[error("reading the tables' settings: {0}")]
    Query(#[from] clickhouse::error::Error),
}

#[derive(Debug, Row, Deserialize)]
struct TableSettings {
    name: String,
    engine_full: String,
}

/// An insert with everything exactly-once rests on pinned on the query itself, whatever the
/// user's profile says: deduplication on, synchronous (an async insert's blocks are formed
/// server-side, so the token would not name this block), and the token.
fn pinned<T: Row>(insert: clickhouse::insert::Insert<T>, token: &str) -> clickhouse::insert::Insert<T> {
    insert
        .with_setting("insert_deduplicate", "1")
        .with_setting("async_insert", "0")
        .with_setting("insert_deduplication_token", token)
}

impl Store {
    pub fn new(client: Client) -> Self {
        Self { client }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Refuses tables whose deduplication window is below `needed` blocks (or missing).
    pub async fn verify_dedup_windows(&self, needed: u64) -> Result<(), DedupWindowError> {
        let tables: Vec<TableSettings> = self
            .client
            .query("SELECT name, engine_full FROM system.tables WHERE database = currentDatabase() AND name IN ?")
            .bind(DEDUPLICATED_TABLES)
            .fetch_all()
            .await?;
        for table in DEDUPLICATED_TABLES {
            let Some(settings) = tables.iter().find(|t| t.name == table) else {
                return Err(DedupWindowError::Missing(table.to_owned()));
            };
            let found = settings
                .engine_full
                .split("non_replicated_deduplication_window = ")
                .nth(1)
                .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|digits| digits.parse().ok())
                .unwrap_or(0);
            if found < needed {
                return Err(DedupWindowError::TooSmall { table: table.to_owned(), found, needed });
            }
        }
        Ok(())
    }

    /// The stored position of a partition and the plan waiting there.
    pub async fn position(&self, topic: &str, partition: u32) -> clickhouse::error::Result<Position> {
        let next_offset: u64 = self
            .client
            .query("SELECT max(next_offset) FROM aggregator_checkpoints WHERE topic = ? AND kafka_partition = ?")
            .bind(topic)
            .bind(partition)
            .fetch_one()
            .await?;
        let pending = self.plan_at(topic, partition, next_offset).await?;
        Ok(Position { next_offset, pending })
    }

    async fn plan_at(&self, topic: &str, partition: u32, first: u64) -> clickhouse::error::Result<Option<Plan>> {
        self.client
            .query(
                "SELECT ?fields FROM aggregator_batches WHERE topic = ? AND kafka_partition = ? AND first_offset = ? \
                 ORDER BY last_offset LIMIT 1",
            )
            .bind(topic)
            .bind(partition)
            .bind(first)
            .fetch_optional::<Plan>()
            .await
    }

    /// Stores `proposal` unless a plan for its first offset exists; returns the plan in force.
    pub async fn settle_plan(&self, proposal: &Plan) -> clickhouse::error::Result<Plan> {
        let mut insert = pinned(self.client.insert::<Plan>("aggregator_batches").await?, &proposal.plan_token());
        insert.write(proposal).await?;
        insert.end().await?;
        let settled = self.plan_at(&proposal.topic, proposal.kafka_partition, proposal.first_offset).await?;
        // The insert returned, so a plan is stored; reading nothing back would be a server fault.
        Ok(settled.unwrap_or_else(|| proposal.clone()))
    }

    /// Whether the partition has already moved past the plan's first offset (another writer
    /// stored this batch).
    pub async fn already_stored(&self, plan: &Plan) -> clickhouse::error::Result<bool> {
        let position = self.position(&plan.topic, plan.kafka_partition).await?;
        Ok(position.next_offset > plan.first_offset)
    }

    /// The (tenant, id) pairs among `pairs` counted before the plan's batch: anywhere except this
    /// partition at or after the batch's first offset (which is this batch or a replay of it).
    /// The pairs travel as rows of `aggregator_lookups`, then one indexed query finds them.
    pub async fn counted_before(
        &self,
        plan: &Plan,
        pairs: &[(&str, &str)],
    ) -> clickhouse::error::Result<HashSet<(String, String)>> {
        if pairs.is_empty() {
            return Ok(HashSet::new());
        }
        let token = plan.token();
        let created_at = u32::try_from(chrono::Utc::now().timestamp()).unwrap_or(0);
        let mut insert =
            self.client.insert::<LookupRow<'_>>("aggregator_lookups").await?.with_setting("async_insert", "0");
        for (tenant_id, event_id) in pairs {
            insert.write(&LookupRow { token: &token, tenant_id, event_id, created_at }).await?;
        }
        insert.end().await?;
        let rows: Vec<Pair> = self
            .client
            .query(
                "SELECT tenant_id, event_id FROM usage_event_ids \
                 WHERE (tenant_id, event_id) IN (SELECT tenant_id, event_id FROM aggregator_lookups WHERE token = ?) \
                 AND NOT (kafka_partition = ? AND kafka_offset >= ?)",
            )
            .bind(token.as_str())
            .bind(plan.kafka_partition)
            .bind(plan.first_offset)
            .fetch_all()
            .await?;
        Ok(rows.into_iter().map(|pair| (pair.tenant_id, pair.event_id)).collect())
    }

    /// Writes the batch's rows to the three tables at once, each insert under the batch's token.
    pub async fn store_rows(&self, plan: &Plan, rows: &Rows) -> clickhouse::error::Result<()> {
        let token = plan.token();
        tokio::try_join!(
            self.insert_all("usage_events", &token, &rows.events),
            self.insert_all("usage_event_ids", &token, &rows.ids),
            self.insert_all("usage_rollups", &token, &rows.rollups),
        )?;
        Ok(())
    }

    /// Records the batch as stored: the partition resumes after its last offset.
    pub async fn checkpoint(&self, plan: &Plan) -> clickhouse::error::Result<()> {
        let row = CheckpointRow {
            topic: &plan.topic,
            kafka_partition: plan.kafka_partition,
            next_offset: plan.next_offset(),
            first_offset: plan.first_offset,
            stored_at: chrono::Utc::now().timestamp_millis(),
        };
        let mut insert =
            pinned(self.client.insert::<CheckpointRow<'_>>("aggregator_checkpoints").await?, &plan.token());
        insert.write(&row).await?;
        insert.end().await
    }

    async fn insert_all<T>(&self, table: &str, token: &str, rows: &[T]) -> clickhouse::error::Result<()>
    where
        T: Row + Serialize + for<'a> Row<Value<'a> = T>,
    {
        if rows.is_empty() {
            return Ok(());
        }
        let mut insert = pinned(self.client.insert::<T>(table).await?, token);
        for row in rows {
            insert.write(row).await?;
        }
        insert.end().await
    }
}
