//! A ClickHouse cluster's nodes, from `[clickhouse] cluster` and `shards`: the list of nodes the
//! DDL is applied on, and the check that the configured shard order is the servers' own (shard
//! `i` of the config must be shard `i` of `<remote_servers>`: `_shard_num` in a Distributed read
//! names it, and a Kafka partition's home is stored by that number).

use clickhouse::{Client, Row};
use serde::Deserialize;

use crate::config::{ClickHouseConfig, redact_url};

/// One server of the deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// 0-based position of the node's shard in `shards` (and in `<remote_servers>`).
    pub shard: usize,
    pub url: String,
}

/// Every configured node, shard by shard; the single server when no cluster is configured.
pub fn nodes(config: &ClickHouseConfig) -> Vec<Node> {
    if config.cluster.trim().is_empty() {
        return vec![Node { shard: 0, url: config.url.clone() }];
    }
    config
        .shards
        .0
        .iter()
        .enumerate()
        .flat_map(|(shard, replicas)| replicas.iter().map(move |url| Node { shard, url: url.clone() }))
        .collect()
}

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

/// The nodes of a cluster's shards: `shards[i]` holds shard `i + 1`'s replica URLs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShardList(pub Vec<Vec<String>>);

impl<'de> Deserialize<'de> for ShardList {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            List(Vec<String>),
            Text(String),
        }
        let entries: Vec<String> = match Raw::deserialize(deserializer)? {
            Raw::List(entries) => entries,
            Raw::Text(text) => text.split(';').map(str::to_owned).collect(),
        };
        let shards = entries
            .iter()
            .map(|shard| shard.split(',').map(str::trim).filter(|url| !url.is_empty()).map(str::to_owned).collect())
            .filter(|replicas: &Vec<String>| !replicas.is_empty())
            .collect();
        Ok(Self(shards))
    }
}

impl ClickHouseConfig {
    /// The cluster layout, `None` for one server; refuses settings that cannot work.
    pub fn layout(&self) -> Result<Option<tally_schemas::cluster::ClusterLayout>, String> {
        use tally_schemas::cluster::{ClusterLayout, Replication};
        if self.cluster.trim().is_empty() {
            if !self.shards.0.is_empty() || self.replicated || self.on_cluster {
                return Err(
                    "[clickhouse] shards, replicated and on_cluster need cluster = \"<name in remote_servers>\""
                        .to_owned(),
                );
            }
            return Ok(None);
        }
        if !self.cluster.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
            return Err(format!("[clickhouse] cluster = {:?}: letters, digits, _ and - only", self.cluster));
        }
        if self.shards.0.is_empty() {
            return Err(
                "[clickhouse] cluster is set but shards is empty: list each shard's URL, in <remote_servers> order"
                    .to_owned(),
            );
        }
        if !self.replicated && self.shards.0.iter().any(|replicas| replicas.len() > 1) {
            return Err("[clickhouse] a shard lists several replicas but replicated = false: unreplicated tables hold different rows on each node".to_owned());
        }
        let replication = if self.replicated {
            for (value, needs, key) in [
                (&self.replica_path, ["{shard}", "{table}"].as_slice(), "replica_path"),
                (&self.replica_name, ["{replica}"].as_slice(), "replica_name"),
            ] {
                if let Some(missing) = needs.iter().find(|macro_name| !value.contains(*macro_name)) {
                    return Err(format!(
                        "[clickhouse] {key} = {value:?} lacks {missing}: every table and shard needs a Keeper path (and every replica a name) of its own"
                    ));
                }
                if value.contains('\'') {
                    return Err(format!("[clickhouse] {key} must not contain a quote"));
                }
            }
            Some(Replication { path: self.replica_path.clone(), replica: self.replica_name.clone() })
        } else {
            None
        };
        Ok(Some(ClusterLayout { cluster: self.cluster.clone(), replication, on_cluster: self.on_cluster }))
    }
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

    #[test]
    fn shards_read_from_a_list_or_one_string() {
        let from_toml: ShardList = toml_shards(r#"shards = ["http://a1, http://a2", "http://b1"]"#);
        let from_env: ShardList = serde_json::from_value(serde_json::json!("http://a1,http://a2;http://b1")).unwrap();
        let expected = ShardList(vec![vec!["http://a1".into(), "http://a2".into()], vec!["http://b1".into()]]);
        assert_eq!((from_toml, from_env), (expected.clone(), expected));
    }

    fn toml_shards(text: &str) -> ShardList {
        #[derive(Deserialize)]
        struct Wrapper {
            shards: ShardList,
        }
        let value: serde_json::Value = ::config::Config::builder()
            .add_source(::config::File::from_str(text, ::config::FileFormat::Toml))
            .build()
            .and_then(|c| c.try_deserialize())
            .unwrap();
        serde_json::from_value::<Wrapper>(value).unwrap().shards
    }

    #[test]
    fn layouts_that_cannot_work_are_refused_with_the_key_to_fix() {
        let one = |urls: &[&str]| urls.iter().map(|u| (*u).to_owned()).collect::<Vec<_>>();
        let base = ClickHouseConfig::default();
        assert_eq!(base.layout(), Ok(None), "one server is the default");
        let refused = |config: ClickHouseConfig| config.layout().unwrap_err();
        assert!(refused(ClickHouseConfig { replicated: true, ..base.clone() }).contains("need cluster"));
        let cluster = ClickHouseConfig { cluster: "c".to_owned(), ..base.clone() };
        assert!(refused(cluster.clone()).contains("shards is empty"));
        let two = ClickHouseConfig { shards: ShardList(vec![one(&["http://a1", "http://a2"])]), ..cluster.clone() };
        assert!(refused(two.clone()).contains("replicated = false"));
        let replicated = ClickHouseConfig { replicated: true, ..two };
        let layout = replicated.layout().unwrap().unwrap();
        assert_eq!(layout.replication.unwrap().path, "/clickhouse/tables/{shard}/{database}/{table}");
        let shared_path = ClickHouseConfig { replica_path: "/tables/{table}".to_owned(), ..replicated.clone() };
        assert!(refused(shared_path).contains("lacks {shard}"));
        let unnamed = ClickHouseConfig { replica_name: "r1".to_owned(), ..replicated };
        assert!(refused(unnamed).contains("lacks {replica}"));
        assert!(refused(ClickHouseConfig { cluster: "a b".to_owned(), ..cluster }).contains("letters, digits"));
    }

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
