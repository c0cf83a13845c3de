//! ClickHouse side of the exactly-once protocol: batch plans, checkpoints, the dedup lookup, and
//! the token-deduplicated inserts of a batch's rows. Every call here is safe to repeat.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use clickhouse::{Client, Row};
use serde::{Deserialize, Serialize};
use tally_schemas::cluster::{CLAIMS_OF_EVERY_SHARD, ClusterLayout};
use tally_schemas::ddl::{PARTITION_SCOPED_TABLES, partition_table};

use crate::batch::{IdRow, Plan, Rows};
use crate::fence::{self, Written};
use crate::shards::{HomeError, Shards};
pub use crate::verify::DedupWindowError;

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

/// A pair claimed by several batches, and on how many shards.
#[derive(Debug, Row, Deserialize)]
struct Contest {
    tenant_id: String,
    event_id: String,
    shards: u64,
}

/// What a batch's claims found.
#[derive(Debug, Default)]
pub struct Claimed {
    /// Pairs another batch claimed first: not counted by this one.
    pub lost: HashSet<(String, String)>,
    /// Of those, pairs claimed on more than one shard (a tenant whose partitions live on
    /// different shards: see DESIGN.md).
    pub across_shards: u64,
}

/// Why a plan could not be settled.
#[derive(Debug, thiserror::Error)]
pub enum PlanNotVisible {
    #[error(transparent)]
    Query(#[from] clickhouse::error::Error),
    #[error("a plan for partition {partition} is stored but not visible on this replica yet")]
    Behind { partition: u32 },
}

/// A session of its own for each claim attempt (sessions run one query at a time).
fn session_id() -> String {
    static ATTEMPTS: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("tally-claim-{}-{nanos}-{}", std::process::id(), ATTEMPTS.fetch_add(1, Ordering::Relaxed))
}

/// The aggregator's ClickHouse tables, on one server or on the home shard of each partition
/// (see [`crate::shards`]).
#[derive(Debug, Clone)]
pub struct Store {
    shards: Arc<Shards>,
    /// How partition tables are created: `None` on one server.
    layout: Option<ClusterLayout>,
    /// Kafka partitions whose tables this process has created (or found).
    partition_tables: Arc<Mutex<HashSet<u32>>>,
}

/// Where the claims of every partition are read: this server's table, or every shard's.
fn claims_source(clustered: bool) -> (&'static str, &'static str, &'static str) {
    if clustered { (CLAIMS_OF_EVERY_SHARD, "GLOBAL IN", "_shard_num") } else { ("usage_event_ids", "IN", "1") }
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
    /// One server.
    pub fn new(client: Client) -> Self {
        Self::on_shards(Shards::single(client), None)
    }

    /// The shards of `layout` (or one server, for `None`).
    pub fn on_shards(shards: Shards, layout: Option<ClusterLayout>) -> Self {
        Self { shards: Arc::new(shards), layout, partition_tables: Arc::default() }
    }

    /// The first shard's active replica (the one-server client).
    pub fn client(&self) -> &Client {
        self.shards.client(0)
    }

    pub fn shards(&self) -> &Shards {
        &self.shards
    }

    /// A call for `partition` failed: a replicated shard moves on to its next replica.
    pub fn failed(&self, partition: u32) {
        self.shards.failed(self.shards.home(partition));
    }

    /// Brings the replica `partition`'s batches go to up to date if it was just switched to (a
    /// no-op unreplicated).
    pub async fn ready(&self, partition: u32) -> clickhouse::error::Result<()> {
        self.shards.ready(self.shards.home(partition)).await
    }

    /// Refuses tables that break the protocol: a partition-scoped table (or the base it is copied
    /// from) whose deduplication window is below `needed` blocks, or a first-wins table without
    /// block numbers.
    pub async fn verify_tables(&self, needed: u64) -> Result<(), DedupWindowError> {
        for node in self.shards.nodes() {
            crate::verify::node(node, self.shards.replicated, needed).await?;
        }
        Ok(())
    }

    /// Creates the partition's scoped tables on its home shard if they are missing (once per
    /// process): on every replica of the shard, which each register in Keeper.
    pub async fn ensure_partition_tables(&self, partition: u32) -> clickhouse::error::Result<()> {
        if self.partition_tables.lock().is_ok_and(|known| known.contains(&partition)) {
            return Ok(());
        }
        let home = self.shards.home(partition);
        let replicas = match &self.layout {
            Some(layout) if layout.on_cluster => &self.shards.replicas(home)[..1],
            _ => self.shards.replicas(home),
        };
        for table in PARTITION_SCOPED_TABLES {
            let create = match &self.layout {
                Some(layout) => layout.create_partition_table(table, partition),
                None => tally_schemas::ddl::create_partition_table(table, partition),
            };
            for replica in replicas {
                replica.query(&create).execute().await?;
            }
        }
        if let Ok(mut known) = self.partition_tables.lock() {
            known.insert(partition);
        }
        Ok(())
    }

    /// The stored position of a partition and the plan waiting there, read on its home shard
    /// (settled first, with its tables), once that shard's replica is up to date.
    pub async fn position(&self, topic: &str, partition: u32, instance: &str) -> Result<Position, HomeError> {
        let home = self.shards.resolve_home(topic, partition, instance).await?;
        self.shards.ready(home).await?;
        self.ensure_partition_tables(partition).await?;
        let next_offset: u64 = self
            .shards
            .client(home)
            .query("SELECT max(next_offset) FROM aggregator_checkpoints WHERE topic = ? AND kafka_partition = ?")
            .bind(topic)
            .bind(partition)
            .fetch_one()
            .await?;
        let pending = self.plan_at(topic, partition, next_offset).await?;
        Ok(Position { next_offset, pending })
    }

    async fn plan_at(&self, topic: &str, partition: u32, first: u64) -> clickhouse::error::Result<Option<Plan>> {
        self.shards
            .home_client(partition)
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
    pub async fn settle_plan(&self, proposal: &Plan) -> Result<Plan, PlanNotVisible> {
        let client = self.shards.home_client(proposal.kafka_partition);
        let mut insert = pinned(client.insert::<Plan>("aggregator_batches").await?, &proposal.plan_token());
        insert.write(proposal).await?;
        insert.end().await?;
        // The insert returned, so a plan is stored — maybe another writer's, dropped as ours was
        // (on a replicated shard, the token is Keeper's): never assume the proposal won.
        self.plan_at(&proposal.topic, proposal.kafka_partition, proposal.first_offset)
            .await?
            .ok_or(PlanNotVisible::Behind { partition: proposal.kafka_partition })
    }

    /// Claims the batch's (tenant, id) pairs and returns those another batch claimed first:
    /// counted before (a client retry) or by a batch of another partition (a partition-count
    /// change, another partitioner). Each pair's first claim — the lowest block number in
    /// `usage_event_ids`, which is commit order — decides, so two batches that race for a pair
    /// agree on one winner, and a replay decides as the first attempt did: claims only accrue
    /// after it, with higher numbers.
    ///
    /// On a cluster the claims are written on the batch's home shard and looked up on every
    /// shard (a retry is found whatever shard holds the first copy). Block numbers order one
    /// shard's claims only: between shards, the shards' first claims are ordered by when their
    /// server stored them (`claimed_at`), then shard number. Claims are stored before they are
    /// looked up, so of two batches racing for a pair on two shards at least one sees the
    /// other's claim, and the one that saw none stored its claim first — see DESIGN.md (a
    /// tenant whose partitions all live on one shard never needs it).
    ///
    /// The pairs travel once more, into a temporary table of a session of this attempt alone (in
    /// memory, gone with the session), so one indexed query finds the claims of other batches on
    /// them; only when there are some (rare) are all claims on the pairs compared.
    pub async fn claim(&self, plan: &Plan, claims: &[IdRow]) -> clickhouse::error::Result<Claimed> {
        if claims.is_empty() {
            return Ok(Claimed::default());
        }
        let home = self.shards.home(plan.kafka_partition);
        let session = self
            .shards
            .client(home)
            .clone()
            .with_setting("session_id", session_id())
            .with_setting("session_timeout", "60");
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
        tokio::try_join!(lookups, self.insert_all(home, "usage_event_ids", &token, claims))?;
        let (ids, within, shard) = claims_source(self.shards.clustered);
        let home_shard = home as u32 + 1;
        let foreign: Option<u8> = session
            .query(&format!(
                "SELECT 1 FROM {ids} \
                 WHERE (tenant_id, event_id) {within} (SELECT tenant_id, event_id FROM claim_lookup) \
                 AND NOT ({shard} = ? AND kafka_partition = ? AND kafka_offset BETWEEN ? AND ?) LIMIT 1"
            ))
            .bind(home_shard)
            .bind(plan.kafka_partition)
            .bind(plan.first_offset)
            .bind(plan.last_offset)
            .fetch_optional()
            .await?;
        if foreign.is_none() {
            return Ok(Claimed::default());
        }
        // Some pair was claimed elsewhere too: who was first, for each such pair — on each shard
        // the lowest block number, between shards the earliest stored.
        let lost: Vec<Contest> = session
            .query(&format!(
                "SELECT tenant_id, event_id, toUInt64(shards) AS shards FROM ( \
                   SELECT tenant_id, event_id, uniqExact(shard) AS shards, \
                          argMin((shard, tupleElement(first, 2), tupleElement(first, 3)), \
                                 (tupleElement(first, 1), shard)) AS winner \
                   FROM (SELECT tenant_id, event_id, toUInt32({shard}) AS shard, \
                                argMin((claimed_at, kafka_partition, kafka_offset), _block_number) AS first \
                         FROM {ids} \
                         WHERE (tenant_id, event_id) {within} (SELECT tenant_id, event_id FROM claim_lookup) \
                         GROUP BY tenant_id, event_id, shard) \
                   GROUP BY tenant_id, event_id) \
                 WHERE NOT (tupleElement(winner, 1) = ? AND tupleElement(winner, 2) = ? \
                            AND tupleElement(winner, 3) BETWEEN ? AND ?)"
            ))
            .bind(home_shard)
            .bind(plan.kafka_partition)
            .bind(plan.first_offset)
            .bind(plan.last_offset)
            .fetch_all()
            .await?;
        let across_shards = lost.iter().filter(|contest| contest.shards > 1).count() as u64;
        Ok(Claimed { lost: lost.into_iter().map(|c| (c.tenant_id, c.event_id)).collect(), across_shards })
    }

    /// Writes the batch's raw events and rollups to its partition's tables, fenced (see
    /// [`crate::fence`]): nothing is written once the partition moved past the plan.
    pub async fn store_rows(&self, plan: &Plan, rows: &Rows) -> clickhouse::error::Result<Written> {
        let (events, rollups) = (
            partition_table("usage_events", plan.kafka_partition),
            partition_table("usage_rollups", plan.kafka_partition),
        );
        let client = self.shards.home_client(plan.kafka_partition);
        let written = tokio::try_join!(
            fence::insert(client, &events, plan, &rows.events),
            fence::insert(client, &rollups, plan, &rows.rollups),
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
        let mut insert = pinned(
            self.shards.home_client(plan.kafka_partition).insert::<CheckpointRow<'_>>("aggregator_checkpoints").await?,
            &plan.token(),
        );
        insert.write(&row).await?;
        insert.end().await
    }

    async fn insert_all<T>(&self, shard: usize, table: &str, token: &str, rows: &[T]) -> clickhouse::error::Result<()>
    where
        T: Row + Serialize + for<'a> Row<Value<'a> = T>,
    {
        if rows.is_empty() {
            return Ok(());
        }
        let mut insert = pinned(self.shards.client(shard).insert::<T>(table).await?, token);
        for row in rows {
            insert.write(row).await?;
        }
        insert.end().await
    }
}
