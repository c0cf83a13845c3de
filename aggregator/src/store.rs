//! ClickHouse side of the exactly-once protocol: batch plans, checkpoints, the dedup lookup, and
//! the token-deduplicated inserts of a batch's rows. Every call here is safe to repeat.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use clickhouse::{Client, Row};
use serde::{Deserialize, Serialize};
use tally_schemas::ddl::{PARTITION_SCOPED_TABLES, create_partition_table, partition_table};

use crate::batch::{IdRow, Plan, Rows};
use crate::fence::{self, Written};

fn base(table: &str) -> String {
    format!("{table}_base")
}

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
struct PairRow<'a> {
    tenant_id: &'a str,
    event_id: &'a str,
}

#[derive(Debug, Row, Deserialize)]
struct Pair {
    tenant_id: String,
    event_id: String,
}

/// A session of its own for each claim attempt (sessions run one query at a time).
fn session_id() -> String {
    static ATTEMPTS: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("tally-claim-{}-{nanos}-{}", std::process::id(), ATTEMPTS.fetch_add(1, Ordering::Relaxed))
}

/// The aggregator's ClickHouse tables.
#[derive(Debug, Clone)]
pub struct Store {
    client: Client,
    /// Kafka partitions whose tables this process has created (or found).
    partition_tables: Arc<Mutex<HashSet<u32>>>,
}

/// Tables whose first stored row wins, read as the lowest `_block_number`: they need the
/// persisted block number column (migration 3).
pub const FIRST_WINS_TABLES: [&str; 2] = ["usage_event_ids", "aggregator_batches"];

/// A table whose settings break the exactly-once protocol.
#[derive(Debug, thiserror::Error)]
pub enum DedupWindowError {
    #[error(
        "ClickHouse table {table} has non_replicated_deduplication_window = {found}, below the {needed} the \
         exactly-once protocol needs (a replayed batch must find its blocks): \
         ALTER TABLE {table} MODIFY SETTING non_replicated_deduplication_window = {needed}"
    )]
    TooSmall { table: String, found: u64, needed: u64 },
    #[error(
        "ClickHouse table {0} lacks enable_block_number_column = 1 (its first stored row must be knowable): \
         ALTER TABLE {0} MODIFY SETTING enable_block_number_column = 1"
    )]
    NoBlockNumbers(String),
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

impl TableSettings {
    fn setting(&self, name: &str) -> u64 {
        self.engine_full
            .split(&format!("{name} = "))
            .nth(1)
            .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|digits| digits.parse().ok())
            .unwrap_or(0)
    }
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
        Self { client, partition_tables: Arc::default() }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Refuses tables that break the protocol: a partition-scoped table (or the base it is copied
    /// from) whose deduplication window is below `needed` blocks, or a first-wins table without
    /// block numbers.
    pub async fn verify_tables(&self, needed: u64) -> Result<(), DedupWindowError> {
        let tables: Vec<TableSettings> = self
            .client
            .query(
                "SELECT name, engine_full FROM system.tables WHERE database = currentDatabase() \
                 AND (name IN ? OR match(name, '^(usage_events|usage_rollups)_p[0-9]+$'))",
            )
            .bind(
                FIRST_WINS_TABLES
                    .map(str::to_owned)
                    .into_iter()
                    .chain(PARTITION_SCOPED_TABLES.map(base))
                    .collect::<Vec<_>>(),
            )
            .fetch_all()
            .await?;
        for table in FIRST_WINS_TABLES {
            match tables.iter().find(|t| t.name == table) {
                None => return Err(DedupWindowError::Missing(table.to_owned())),
                Some(settings) if settings.setting("enable_block_number_column") != 1 => {
                    return Err(DedupWindowError::NoBlockNumbers(table.to_owned()));
                }
                Some(_) => {}
            }
        }
        for table in PARTITION_SCOPED_TABLES.map(base) {
            if !tables.iter().any(|t| t.name == table) {
                return Err(DedupWindowError::Missing(table));
            }
        }
        for settings in tables.iter().filter(|t| !FIRST_WINS_TABLES.contains(&t.name.as_str())) {
            let found = settings.setting("non_replicated_deduplication_window");
            if found < needed {
                return Err(DedupWindowError::TooSmall { table: settings.name.clone(), found, needed });
            }
        }
        Ok(())
    }

    /// Creates the partition's scoped tables if they are missing (once per process).
    pub async fn ensure_partition_tables(&self, partition: u32) -> clickhouse::error::Result<()> {
        if self.partition_tables.lock().is_ok_and(|known| known.contains(&partition)) {
            return Ok(());
        }
        for table in PARTITION_SCOPED_TABLES {
            self.client.query(&create_partition_table(table, partition)).execute().await?;
        }
        if let Ok(mut known) = self.partition_tables.lock() {
            known.insert(partition);
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
                 ORDER BY _block_number LIMIT 1",
            )
            .bind(topic)
            .bind(partition)
            .bind(first)
            .fetch_optional::<Plan>()
            .await
    }

    /// Stores `proposal` unless a plan for its first offset exists; returns the plan in force: the
    /// first one stored (lowest block number), even if a stale writer's late plan got in after
    /// the token was forgotten.
    pub async fn settle_plan(&self, proposal: &Plan) -> clickhouse::error::Result<Plan> {
        let mut insert = pinned(self.client.insert::<Plan>("aggregator_batches").await?, &proposal.plan_token());
        insert.write(proposal).await?;
        insert.end().await?;
        let settled = self.plan_at(&proposal.topic, proposal.kafka_partition, proposal.first_offset).await?;
        // The insert returned, so a plan is stored; reading nothing back would be a server fault.
        Ok(settled.unwrap_or_else(|| proposal.clone()))
    }

    /// Claims the batch's (tenant, id) pairs and returns those another batch claimed first:
    /// counted before (a client retry) or by a batch of another partition (a partition-count
    /// change, another partitioner). Each pair's first claim — the lowest block number in
    /// `usage_event_ids`, which is commit order — decides, so two batches that race for a pair
    /// agree on one winner, and a replay decides as the first attempt did: claims only accrue
    /// after it, with higher numbers.
    ///
    /// The pairs travel once more, into a temporary table of a session of this attempt alone (in
    /// memory, gone with the session), so one indexed query finds the claims of other batches on
    /// them; only when there are some (rare) are all claims on the pairs compared.
    pub async fn claim(&self, plan: &Plan, claims: &[IdRow]) -> clickhouse::error::Result<HashSet<(String, String)>> {
        if claims.is_empty() {
            return Ok(HashSet::new());
        }
        let session =
            self.client.clone().with_setting("session_id", session_id()).with_setting("session_timeout", "60");
        let lookups = async {
            session
                .query("CREATE TEMPORARY TABLE IF NOT EXISTS claim_lookup (tenant_id String, event_id String) ENGINE = Memory")
                .execute()
                .await?;
            let mut insert = session.insert::<PairRow<'_>>("claim_lookup").await?;
            for claim in claims {
                insert.write(&PairRow { tenant_id: &claim.tenant_id, event_id: &claim.event_id }).await?;
            }
            insert.end().await
        };
        let token = plan.token();
        tokio::try_join!(lookups, self.insert_all("usage_event_ids", &token, claims))?;
        let foreign: Vec<Pair> = session
            .query(
                "SELECT tenant_id, event_id FROM usage_event_ids \
                 WHERE (tenant_id, event_id) IN (SELECT tenant_id, event_id FROM claim_lookup) \
                 AND NOT (kafka_partition = ? AND kafka_offset BETWEEN ? AND ?) LIMIT 1",
            )
            .bind(plan.kafka_partition)
            .bind(plan.first_offset)
            .bind(plan.last_offset)
            .fetch_all()
            .await?;
        if foreign.is_empty() {
            return Ok(HashSet::new());
        }
        // Some pair was claimed elsewhere too: who was first, for each such pair.
        let lost: Vec<Pair> = session
            .query(
                "SELECT tenant_id, event_id FROM usage_event_ids \
                 WHERE (tenant_id, event_id) IN (SELECT tenant_id, event_id FROM claim_lookup) \
                 GROUP BY tenant_id, event_id \
                 HAVING NOT (argMin(kafka_partition, _block_number) = ? \
                             AND argMin(kafka_offset, _block_number) BETWEEN ? AND ?)",
            )
            .bind(plan.kafka_partition)
            .bind(plan.first_offset)
            .bind(plan.last_offset)
            .fetch_all()
            .await?;
        Ok(lost.into_iter().map(|claim| (claim.tenant_id, claim.event_id)).collect())
    }

    /// Writes the batch's raw events and rollups to its partition's tables, fenced (see
    /// [`crate::fence`]): nothing is written once the partition moved past the plan.
    pub async fn store_rows(&self, plan: &Plan, rows: &Rows) -> clickhouse::error::Result<Written> {
        let (events, rollups) = (
            partition_table("usage_events", plan.kafka_partition),
            partition_table("usage_rollups", plan.kafka_partition),
        );
        let written = tokio::try_join!(
            fence::insert(&self.client, &events, plan, &rows.events),
            fence::insert(&self.client, &rollups, plan, &rows.rollups),
        )?;
        Ok(if written == (Written::Stored, Written::Stored) { Written::Stored } else { Written::Fenced })
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
