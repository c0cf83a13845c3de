//! Which ClickHouse shard a Kafka partition's batches go to, and the clients that reach it.
//!
//! Invariant enforced here: every write of a batch — plan, claims, rows, checkpoint — and every
//! read the protocol decides on goes to the partition's *home* shard, so the insert tokens, the
//! fence and the checkpoint stay shard-local and a replay lands where the first attempt did. A
//! partition's home is stored once, first stored wins, on the first shard
//! (`aggregator_partition_homes`), so instances configured with different shard counts (a
//! rolling change that adds a shard) still agree; a partition that already has checkpoints
//! (a single server grown into a cluster) keeps the shard that holds them.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use clickhouse::{Client, Row};
use serde::Serialize;
use tally_kit::config::ClickHouseConfig;
use tally_schemas::cluster::{CHECKPOINTS_OF_EVERY_SHARD, PARTITION_HOMES};

/// The protocol's tables on a replicated shard, brought up to date before a replica is trusted.
const PROTOCOL_TABLES: [&str; 3] = ["aggregator_checkpoints", "aggregator_batches", "usage_event_ids"];

#[derive(Debug, Row, Serialize)]
struct HomeRow<'a> {
    topic: &'a str,
    kafka_partition: u32,
    /// 1-based, as `_shard_num` and `<remote_servers>` number shards.
    shard: u32,
    decided_at: i64,
    decided_by: &'a str,
}

/// The shards of the deployment: one for a single server.
#[derive(Debug)]
pub struct Shards {
    /// `[shard][replica]`.
    replicas: Vec<Vec<Client>>,
    /// The replica each shard's traffic is pinned to (a writer reads its own writes).
    active: Vec<AtomicUsize>,
    /// Replicas switched to but not yet brought up to date.
    unsynced: Mutex<Vec<bool>>,
    homes: Mutex<HashMap<u32, usize>>,
    pub clustered: bool,
    pub replicated: bool,
}

impl Shards {
    /// One server.
    pub fn single(client: Client) -> Self {
        Self::new(vec![vec![client]], false, false)
    }

    /// The configured server or cluster.
    pub fn from_config(config: &ClickHouseConfig) -> Self {
        let replicas = tally_kit::shards::clients(config)
            .into_iter()
            .map(|shard| shard.into_iter().map(|client| protocol_client(client, config.replicated)).collect())
            .collect();
        Self::new(replicas, !config.cluster.trim().is_empty(), config.replicated)
    }

    fn new(replicas: Vec<Vec<Client>>, clustered: bool, replicated: bool) -> Self {
        let count = replicas.len();
        Self {
            replicas,
            active: (0..count).map(|_| AtomicUsize::new(0)).collect(),
            unsynced: Mutex::new(vec![replicated; count]),
            homes: Mutex::default(),
            clustered,
            replicated,
        }
    }

    /// Every node: each shard's replicas.
    pub fn nodes(&self) -> impl Iterator<Item = &Client> {
        self.replicas.iter().flatten()
    }

    /// The replicas of shard `shard`.
    pub fn replicas(&self, shard: usize) -> &[Client] {
        &self.replicas[shard]
    }

    pub fn count(&self) -> usize {
        self.replicas.len()
    }

    /// The active replica of shard `shard` (0-based).
    pub fn client(&self, shard: usize) -> &Client {
        let replicas = &self.replicas[shard.min(self.replicas.len() - 1)];
        &replicas[self.active[shard].load(Ordering::Relaxed) % replicas.len()]
    }

    /// The home shard of `partition`, once [`Self::resolve_home`] has found it.
    pub fn home(&self, partition: u32) -> usize {
        self.homes.lock().ok().and_then(|homes| homes.get(&partition).copied()).unwrap_or(0)
    }

    /// The active replica of `partition`'s home shard.
    pub fn home_client(&self, partition: u32) -> &Client {
        self.client(self.home(partition))
    }

    /// A call to `shard` failed: on a replicated shard, the next call goes to its next replica,
    /// which is brought up to date first (see [`Self::ready`]).
    pub fn failed(&self, shard: usize) {
        if !self.replicated || self.replicas[shard].len() < 2 {
            return;
        }
        self.active[shard].fetch_add(1, Ordering::Relaxed);
        if let Ok(mut unsynced) = self.unsynced.lock() {
            unsynced[shard] = true;
        }
    }

    /// Makes shard `shard`'s active replica safe to decide on: a replica just switched to (or
    /// first used) fetches every part committed anywhere before this call, so it holds every
    /// write acknowledged to this process and to any writer that finished before.
    pub async fn ready(&self, shard: usize) -> clickhouse::error::Result<()> {
        if !self.unsynced.lock().is_ok_and(|unsynced| unsynced[shard]) {
            return Ok(());
        }
        for table in PROTOCOL_TABLES {
            self.client(shard).query(&format!("SYSTEM SYNC REPLICA {table}")).execute().await?;
        }
        if let Ok(mut unsynced) = self.unsynced.lock() {
            unsynced[shard] = false;
        }
        Ok(())
    }

    /// Finds (or, for a partition without one, settles) the shard `partition` is written to.
    pub async fn resolve_home(&self, topic: &str, partition: u32, instance: &str) -> Result<usize, HomeError> {
        if !self.clustered {
            return Ok(0);
        }
        if let Some(home) = self.homes.lock().ok().and_then(|homes| homes.get(&partition).copied()) {
            return Ok(home);
        }
        let catalogue = self.client(0);
        let shard = match stored_home(catalogue, topic, partition).await? {
            Some(shard) => shard,
            None => {
                let proposal = self.propose_home(topic, partition).await?;
                let row = HomeRow {
                    topic,
                    kafka_partition: partition,
                    shard: proposal,
                    decided_at: chrono::Utc::now().timestamp_millis(),
                    decided_by: instance,
                };
                let mut insert = catalogue
                    .insert::<HomeRow<'_>>(PARTITION_HOMES)
                    .await?
                    .with_setting("insert_deduplicate", "1")
                    .with_setting("async_insert", "0")
                    .with_setting("insert_deduplication_token", format!("home/{topic}/{partition}"));
                insert.write(&row).await?;
                insert.end().await?;
                stored_home(catalogue, topic, partition).await?.ok_or(HomeError::NotVisible { partition })?
            }
        };
        let index = shard as usize;
        if index == 0 || index > self.count() {
            return Err(HomeError::Unknown { partition, shard, configured: self.count() });
        }
        if let Ok(mut homes) = self.homes.lock() {
            homes.insert(partition, index - 1);
        }
        Ok(index - 1)
    }

    /// The shard that already holds the partition's checkpoints, else `partition mod shards`:
    /// with partition counts that are multiples of the shard count, a tenant (its partition is a
    /// hash of its id modulo the partition count) keeps its shard when partitions are added.
    async fn propose_home(&self, topic: &str, partition: u32) -> clickhouse::error::Result<u32> {
        let holder: Option<u32> = self
            .client(0)
            .query(&format!(
                "SELECT toUInt32(_shard_num) FROM {CHECKPOINTS_OF_EVERY_SHARD} \
                 WHERE topic = ? AND kafka_partition = ? ORDER BY next_offset DESC LIMIT 1"
            ))
            .bind(topic)
            .bind(partition)
            .fetch_optional()
            .await?;
        Ok(holder.unwrap_or(partition % self.count() as u32 + 1))
    }
}

/// A replicated shard acknowledges the protocol's inserts only once a majority of its replicas
/// holds them: a batch acknowledged by one replica that is then lost for good would leave its
/// tokens in Keeper, and its replay would be dropped as a duplicate of rows nobody holds.
fn protocol_client(client: Client, replicated: bool) -> Client {
    let client = client.with_validation(false);
    if replicated { client.with_setting("insert_quorum", "auto") } else { client }
}

async fn stored_home(client: &Client, topic: &str, partition: u32) -> clickhouse::error::Result<Option<u32>> {
    client
        .query(&format!(
            "SELECT shard FROM {PARTITION_HOMES} WHERE topic = ? AND kafka_partition = ? ORDER BY _block_number LIMIT 1"
        ))
        .bind(topic)
        .bind(partition)
        .fetch_optional()
        .await
}

#[derive(Debug, thiserror::Error)]
pub enum HomeError {
    #[error("{0}")]
    Query(#[from] clickhouse::error::Error),
    #[error("the home of partition {partition} was stored but is not visible yet on the first shard; retrying")]
    NotVisible { partition: u32 },
    #[error(
        "partition {partition} is stored on shard {shard} but [clickhouse] shards lists {configured}: shards may only \
         be appended, never removed or reordered"
    )]
    Unknown { partition: u32, shard: u32, configured: usize },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shards(replicated: bool, replicas: usize) -> Shards {
        let clients = (0..2).map(|_| (0..replicas).map(|_| Client::default()).collect()).collect();
        Shards::new(clients, true, replicated)
    }

    fn active(shards: &Shards, shard: usize) -> usize {
        shards.active[shard].load(Ordering::Relaxed) % shards.replicas[shard].len()
    }

    #[test]
    fn a_failure_moves_a_replicated_shard_to_its_next_replica_which_must_sync_first() {
        let replicated = shards(true, 2);
        assert!(replicated.unsynced.lock().unwrap().iter().all(|&u| u), "a replica is synced before first use");
        replicated.unsynced.lock().unwrap().fill(false);
        replicated.failed(1);
        assert_eq!((active(&replicated, 0), active(&replicated, 1)), (0, 1), "only the failing shard moves");
        assert_eq!(*replicated.unsynced.lock().unwrap(), vec![false, true]);
        replicated.failed(1);
        assert_eq!(active(&replicated, 1), 0, "and round again");

        let unreplicated = shards(false, 1);
        unreplicated.failed(0);
        assert_eq!(active(&unreplicated, 0), 0);
        assert!(unreplicated.unsynced.lock().unwrap().iter().all(|&u| !u), "nothing to sync without replicas");
    }

    #[test]
    fn one_server_is_its_own_home_for_every_partition() {
        let single = Shards::single(Client::default());
        assert_eq!((single.count(), single.home(7), single.clustered), (1, 0, false));
    }
}
