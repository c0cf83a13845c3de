//! Where a ClickHouse deployment's nodes are, from `[clickhouse]`: one server, or the shards of a
//! cluster and their replicas, and the layout their DDL follows.

use crate::config::ClickHouseConfig;

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

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;
    use crate::config::ShardList;

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
}
