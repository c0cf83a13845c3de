//! Clients of a ClickHouse cluster's nodes (see [`crate::topology`]), and the check that the
//! configured shard order is the servers' own: shard `i` of the config must be shard `i` of
//! `<remote_servers>`, since `_shard_num` in a Distributed read names it and a Kafka partition's
//! home is stored by that number.

use clickhouse::{Client, Row};
use serde::Deserialize;

use crate::config::{ClickHouseConfig, redact_url};
use crate::topology::nodes;

/// Clients of each shard's replicas (`[shard][replica]`), on the configured database; one shard
/// of one node when no cluster is configured.
pub fn clients(config: &ClickHouseConfig) -> Vec<Vec<Client>> {
    let mut shards: Vec<Vec<Client>> = Vec::new();
    for node in nodes(config) {
        if shards.len() <= node.shard {
            shards.resize_with(node.shard + 1, Vec::new);
        }
        let node_config = ClickHouseConfig { url: node.url, ..config.clone() };
        shards[node.shard].push(crate::clickhouse::client(&node_config));
    }
    shards
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("{0}")]
    Config(String),
    #[error("clickhouse at {url}: {source}")]
    Query { url: String, source: clickhouse::error::Error },
    #[error(
        "[clickhouse] shards lists {configured} shard(s) but cluster {cluster} has {found} in the servers' \
         <remote_servers>: list every shard, in that order"
    )]
    ShardCount { cluster: String, configured: usize, found: u64 },
    #[error(
        "[clickhouse] shards[{index}] ({url}) is not a node of cluster {cluster} in its own <remote_servers> \
         (no entry is local to it): check the cluster name and the node's host and port there"
    )]
    NotInCluster { cluster: String, index: usize, url: String },
    #[error(
        "[clickhouse] shards[{index}] ({url}) is shard {found} of cluster {cluster}, not shard {expected}: list \
         the shards in <remote_servers> order"
    )]
    WrongOrder { cluster: String, index: usize, url: String, expected: usize, found: u32 },
}

#[derive(Debug, Row, Deserialize)]
struct Shards {
    shards: u64,
    local: Vec<u32>,
}

/// Refuses a cluster whose servers disagree with the configured shards (a no-op on one server).
pub async fn verify(config: &ClickHouseConfig) -> Result<(), ClusterError> {
    let Some(layout) = config.layout().map_err(ClusterError::Config)? else {
        return Ok(());
    };
    let configured = config.shards.0.len();
    for node in nodes(config) {
        let client = crate::clickhouse::client(&ClickHouseConfig { url: node.url.clone(), ..config.clone() });
        let seen: Shards = client
            .query(
                "SELECT uniqExact(shard_num) AS shards, groupUniqArrayIf(shard_num, is_local) AS local \
                 FROM system.clusters WHERE cluster = ?",
            )
            .bind(&layout.cluster)
            .fetch_one()
            .await
            .map_err(|source| ClusterError::Query { url: redact_url(&node.url), source })?;
        let url = redact_url(&node.url);
        if seen.shards != configured as u64 {
            return Err(ClusterError::ShardCount { cluster: layout.cluster, configured, found: seen.shards });
        }
        match seen.local.as_slice() {
            [] => return Err(ClusterError::NotInCluster { cluster: layout.cluster, index: node.shard, url }),
            [found] if *found as usize != node.shard + 1 => {
                return Err(ClusterError::WrongOrder {
                    cluster: layout.cluster,
                    index: node.shard,
                    url,
                    expected: node.shard + 1,
                    found: *found,
                });
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ShardList;
    use crate::topology::Node;

    #[test]
    fn nodes_follow_the_shard_order_and_one_server_is_shard_zero() {
        let single = ClickHouseConfig::default();
        assert_eq!(nodes(&single), vec![Node { shard: 0, url: single.url.clone() }]);
        let cluster = ClickHouseConfig {
            cluster: "c".to_owned(),
            shards: ShardList(vec![vec!["http://a1".to_owned(), "http://a2".to_owned()], vec!["http://b1".to_owned()]]),
            replicated: true,
            ..ClickHouseConfig::default()
        };
        let listed: Vec<(usize, String)> = nodes(&cluster).into_iter().map(|n| (n.shard, n.url)).collect();
        let expected = [(0, "http://a1"), (0, "http://a2"), (1, "http://b1")].map(|(s, u)| (s, u.to_owned()));
        assert_eq!(listed, expected.to_vec());
        assert_eq!(clients(&cluster).iter().map(Vec::len).collect::<Vec<_>>(), vec![2, 1]);
    }
}
