//! ClickHouse beyond one server: the DDL each node of a cluster runs.
//!
//! Every node holds the same local tables as a single server (every node migration), then the
//! [`CLUSTER_LAYER`], which turns the names readers use into `Distributed` tables over every
//! shard. With [`Replication`], the MergeTree family becomes `Replicated*MergeTree` with one
//! Keeper path per table and shard, and `non_replicated_deduplication_window` becomes
//! `replicated_deduplication_window` (the insert tokens then live in Keeper, shared by the
//! shard's replicas). With `on_cluster`, statements carry `ON CLUSTER` for the server's
//! distributed DDL queue.

use crate::ddl::{CLICKHOUSE_MIGRATIONS, ClickHouseMigration, Statement};

/// The cluster layer, applied on every node after the node's own migrations. Its version sits
/// apart from the node migrations, which stay numbered as on one server.
pub const CLUSTER_LAYER: ClickHouseMigration = ClickHouseMigration {
    version: 1000,
    name: "cluster_distributed_reads",
    sql: include_str!("../clickhouse/cluster/distributed_reads.sql"),
};

/// Reader-facing tables that become `Distributed` on a cluster; the node's own table is renamed
/// `<name>_local`.
pub const DISTRIBUTED_READS: [&str; 2] = ["usage_events", "usage_rollups"];
/// Every shard's claims (`usage_event_ids`), for the dedup lookup.
pub const CLAIMS_OF_EVERY_SHARD: &str = "usage_event_ids_all";
/// Every shard's checkpoints (`aggregator_checkpoints`).
pub const CHECKPOINTS_OF_EVERY_SHARD: &str = "aggregator_checkpoints_all";
/// The shard each Kafka partition is written to, kept on the first shard.
pub const PARTITION_HOMES: &str = "aggregator_partition_homes";

/// Where a replicated table keeps its state in Keeper.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replication {
    /// The table's Keeper path. Tally substitutes `{table}`; the server expands its macros
    /// (`{shard}`, `{replica}`, `{database}`, …) when it creates the table.
    pub path: String,
    /// The replica's name, normally the `{replica}` macro.
    pub replica: String,
}

/// How the nodes of a cluster are laid out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterLayout {
    /// The cluster's name in the servers' `<remote_servers>`.
    pub cluster: String,
    pub replication: Option<Replication>,
    /// Statements carry `ON CLUSTER` (needs Keeper and the distributed DDL queue).
    pub on_cluster: bool,
}

impl ClusterLayout {
    /// `migration`'s statements as a node of this cluster runs them.
    pub fn statements(&self, migration: &ClickHouseMigration) -> Vec<Statement> {
        migration.statements().into_iter().map(|s| Statement { sql: self.node_sql(&s.sql), ..s }).collect()
    }

    /// The cluster layer's statements, with the cluster's name in the `Distributed` engines.
    pub fn layer(&self) -> Vec<Statement> {
        CLUSTER_LAYER
            .statements()
            .into_iter()
            .map(|s| Statement { sql: self.node_sql(&s.sql.replace("{cluster}", &self.cluster)), ..s })
            .collect()
    }

    /// Everything a node of this cluster runs, in order: every migration, then the layer.
    pub fn node_ddl(&self) -> Vec<(u32, Vec<Statement>)> {
        CLICKHOUSE_MIGRATIONS
            .iter()
            .map(|migration| (migration.version, self.statements(migration)))
            .chain(std::iter::once((CLUSTER_LAYER.version, self.layer())))
            .collect()
    }

    /// One statement as a node of this cluster runs it.
    pub fn node_sql(&self, sql: &str) -> String {
        let mut sql = sql.to_owned();
        if let Some(replication) = &self.replication {
            sql = replicated(&sql, replication);
        }
        if self.on_cluster {
            sql = on_cluster(&sql, &self.cluster);
        }
        sql
    }

    /// Creates `table`'s table for Kafka partition `partition`. Unreplicated, a copy of the base
    /// (`AS <table>_base`, as on one server); replicated, the base's engine clause under a Keeper
    /// path of the partition table's own (a copied path would name the base's replicas).
    pub fn create_partition_table(&self, table: &str, partition: u32) -> String {
        match &self.replication {
            None => self.node_sql(&crate::ddl::create_partition_table(table, partition)),
            Some(_) => self.node_sql(&partition_table_with_engine(table, partition)),
        }
    }
}

/// `CREATE TABLE IF NOT EXISTS <table>_p<n> AS <table>_base ENGINE = …` with the engine clause
/// (engine, partitioning, order, TTL, settings) of the statement that first created `table`.
pub fn partition_table_with_engine(table: &str, partition: u32) -> String {
    let engine = CLICKHOUSE_MIGRATIONS
        .iter()
        .flat_map(ClickHouseMigration::statements)
        .find(|s| object_name(&s.sql, CREATE_TABLE) == Some(table) && s.sql.contains("ENGINE = "))
        .and_then(|s| s.sql.find("ENGINE =").map(|at| s.sql[at..].split_whitespace().collect::<Vec<_>>().join(" ")));
    // A table no migration creates has no clause to copy: the plain copy then fails loudly on a
    // replicated server (its Keeper path is the base's) rather than sharing the base's state.
    let engine = engine.map(|clause| format!(" {clause}")).unwrap_or_default();
    format!("CREATE TABLE IF NOT EXISTS {} AS {table}_base{engine}", crate::ddl::partition_table(table, partition))
}

/// The name right after `head` in `sql`, if `sql` starts with it.
fn object_name<'a>(sql: &'a str, head: &str) -> Option<&'a str> {
    let rest = sql.strip_prefix(head)?;
    if !rest.starts_with(char::is_whitespace) {
        return None;
    }
    let rest = rest.trim_start();
    let end = rest.find(|c: char| c.is_whitespace() || c == '(').unwrap_or(rest.len());
    Some(&rest[..end])
}

const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS";
/// Statement heads followed by the object's name, where `ON CLUSTER` goes after the name.
const NAMED_HEADS: [&str; 3] = [CREATE_TABLE, "CREATE VIEW IF NOT EXISTS", "ALTER TABLE"];

/// The MergeTree family as its Replicated form, with the table's Keeper path and replica name;
/// the count-based dedup window becomes the Keeper one.
fn replicated(sql: &str, replication: &Replication) -> String {
    let Some(table) = object_name(sql, CREATE_TABLE) else {
        return sql.to_owned();
    };
    let mut out = sql.to_owned();
    if let Some(at) = out.find("ENGINE = ") {
        let name_at = at + "ENGINE = ".len();
        let name_end = out[name_at..].find(|c: char| !c.is_ascii_alphanumeric()).map_or(out.len(), |n| name_at + n);
        let engine = out[name_at..name_end].to_owned();
        if engine.ends_with("MergeTree") && !engine.starts_with("Replicated") {
            let keeper = format!("'{}', '{}'", replication.path.replace("{table}", table), replication.replica);
            let (args, rest_at) = match out[name_end..].strip_prefix('(') {
                Some(rest) => {
                    let close = rest.find(')').map_or(out.len(), |c| name_end + 1 + c);
                    let inner = out[name_end + 1..close].trim().to_owned();
                    (if inner.is_empty() { keeper } else { format!("{keeper}, {inner}") }, close + 1)
                }
                None => (keeper, name_end),
            };
            out = format!("{}Replicated{engine}({args}){}", &out[..name_at], &out[rest_at..]);
        }
    }
    out.replace("non_replicated_deduplication_window", "replicated_deduplication_window")
}

/// `sql` with `ON CLUSTER '<cluster>'` where ClickHouse's grammar puts it.
fn on_cluster(sql: &str, cluster: &str) -> String {
    let clause = format!("ON CLUSTER '{cluster}'");
    for head in NAMED_HEADS {
        if let Some(name) = object_name(sql, head) {
            let rest = sql[head.len()..].trim_start();
            let after = &rest[name.len()..];
            return format!("{head} {name} {clause}{after}");
        }
    }
    if sql.starts_with("RENAME TABLE") || sql.starts_with("DROP TABLE") {
        return format!("{sql} {clause}");
    }
    sql.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(replicated: bool, on_cluster: bool) -> ClusterLayout {
        ClusterLayout {
            cluster: "metering".to_owned(),
            replication: replicated.then(|| Replication {
                path: "/clickhouse/tables/{shard}/{database}/{table}".to_owned(),
                replica: "{replica}".to_owned(),
            }),
            on_cluster,
        }
    }

    /// A node's server-side macros, expanded as ClickHouse does when it creates a table.
    fn expand(sql: &str, shard: &str, replica: &str) -> String {
        sql.replace("{shard}", shard).replace("{replica}", replica).replace("{database}", "tally")
    }

    #[test]
    fn a_two_by_two_cluster_gets_replicated_tables_with_shared_paths_per_shard() {
        let l = layout(true, false);
        let mut statements: Vec<String> = l.node_ddl().into_iter().flat_map(|(_, s)| s).map(|s| s.sql).collect();
        statements.extend(crate::ddl::PARTITION_SCOPED_TABLES.map(|t| l.create_partition_table(t, 0)));
        let engines: Vec<&String> = statements.iter().filter(|s| s.contains("MergeTree")).collect();
        assert!(engines.len() >= 8, "{engines:#?}");
        let mut paths = std::collections::BTreeSet::new();
        for sql in &engines {
            let table = object_name(sql, CREATE_TABLE).unwrap();
            assert!(sql.contains("ENGINE = Replicated"), "{table} is not replicated: {sql}");
            let path = format!("'/clickhouse/tables/{{shard}}/{{database}}/{table}', '{{replica}}'");
            assert!(sql.contains(&path), "{table}: {sql}");
            assert!(paths.insert(table.to_owned()), "{table} created twice");
            assert!(!sql.contains("non_replicated_deduplication_window"), "{sql}");
        }
        let windowed =
            ["usage_events", "usage_rollups", "usage_event_ids", "aggregator_batches", "aggregator_checkpoints"];
        for table in windowed.into_iter().chain(["usage_events_p0", "usage_rollups_p0"]) {
            let sql = engines.iter().find(|s| object_name(s, CREATE_TABLE) == Some(table)).unwrap();
            let window: u64 = sql
                .split("replicated_deduplication_window = ")
                .nth(1)
                .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            assert!(window >= 1_000, "{table}: window {window}");
        }
        // Two shards of two replicas: replicas of a shard share each table's Keeper path and
        // differ by name; the shards' paths differ.
        let nodes = [("01", "r1"), ("01", "r2"), ("02", "r1"), ("02", "r2")];
        for sql in &engines {
            let expanded: Vec<String> = nodes.iter().map(|(shard, replica)| expand(sql, shard, replica)).collect();
            let keeper = |s: &str| {
                s.split("Replicated").nth(1).and_then(|r| r.split('\'').nth(1)).unwrap_or_default().to_owned()
            };
            let name = |s: &str| {
                s.split("Replicated").nth(1).and_then(|r| r.split('\'').nth(3)).unwrap_or_default().to_owned()
            };
            assert_eq!(keeper(&expanded[0]), keeper(&expanded[1]));
            assert_ne!(name(&expanded[0]), name(&expanded[1]));
            assert_ne!(keeper(&expanded[0]), keeper(&expanded[2]));
            assert_eq!(keeper(&expanded[2]), keeper(&expanded[3]));
        }
    }

    #[test]
    fn engines_become_replicated_with_their_own_keeper_path() {
        let sql = "CREATE TABLE IF NOT EXISTS usage_rollups\n(\n x UInt8\n)\nENGINE = AggregatingMergeTree\n\
                   ORDER BY x\nSETTINGS non_replicated_deduplication_window = 10000";
        let out = layout(true, false).node_sql(sql);
        assert!(
            out.contains(
                "ENGINE = ReplicatedAggregatingMergeTree('/clickhouse/tables/{shard}/{database}/usage_rollups', '{replica}')\n"
            ),
            "{out}"
        );
        assert!(out.contains("SETTINGS replicated_deduplication_window = 10000"), "{out}");
        let with_args = layout(true, false)
            .node_sql("CREATE TABLE IF NOT EXISTS t (v UInt8) ENGINE = ReplacingMergeTree(v) ORDER BY v");
        assert!(with_args.contains(
            "ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/t', '{replica}', v) ORDER BY v"
        ));
        let merge =
            "CREATE TABLE IF NOT EXISTS usage_events AS usage_events_base ENGINE = Merge(currentDatabase(), 'x')";
        assert_eq!(layout(true, false).node_sql(merge), merge, "only the MergeTree family replicates");
    }

    #[test]
    fn on_cluster_goes_after_the_name_or_at_the_end() {
        let l = layout(false, true);
        assert_eq!(
            l.node_sql("CREATE TABLE IF NOT EXISTS a\n(\n x UInt8\n) ENGINE = Memory"),
            "CREATE TABLE IF NOT EXISTS a ON CLUSTER 'metering'\n(\n x UInt8\n) ENGINE = Memory"
        );
        assert_eq!(
            l.node_sql("ALTER TABLE a MODIFY SETTING x = 1"),
            "ALTER TABLE a ON CLUSTER 'metering' MODIFY SETTING x = 1"
        );
        assert_eq!(l.node_sql("RENAME TABLE IF EXISTS a TO b"), "RENAME TABLE IF EXISTS a TO b ON CLUSTER 'metering'");
        assert_eq!(l.node_sql("DROP TABLE IF EXISTS a"), "DROP TABLE IF EXISTS a ON CLUSTER 'metering'");
        assert_eq!(
            l.node_sql("CREATE VIEW IF NOT EXISTS v AS SELECT 1"),
            "CREATE VIEW IF NOT EXISTS v ON CLUSTER 'metering' AS SELECT 1"
        );
    }

    #[test]
    fn the_layer_names_the_cluster_and_keeps_its_guards() {
        let statements = layout(false, false).layer();
        assert!(statements.iter().all(|s| !s.sql.contains("{cluster}")));
        assert!(
            statements.iter().any(|s| s.sql.contains("Distributed('metering', currentDatabase(), usage_events_local)"))
        );
        for table in DISTRIBUTED_READS {
            let rename =
                statements.iter().find(|s| s.sql.starts_with(&format!("RENAME TABLE IF EXISTS {table} "))).unwrap();
            assert_eq!(
                rename.unless_table,
                Some(format!("{table}_local")),
                "a second run must not rename the Distributed table"
            );
        }
    }

    #[test]
    fn partition_tables_copy_the_base_engine_clause() {
        let sql = partition_table_with_engine("usage_events", 3);
        assert!(sql.starts_with("CREATE TABLE IF NOT EXISTS usage_events_p3 AS usage_events_base ENGINE = MergeTree PARTITION BY toYYYYMM(timestamp)"), "{sql}");
        assert!(sql.ends_with("SETTINGS non_replicated_deduplication_window = 10000"), "{sql}");
        assert_eq!(
            layout(false, false).create_partition_table("usage_rollups", 2),
            "CREATE TABLE IF NOT EXISTS usage_rollups_p2 AS usage_rollups_base"
        );
        let replicated = layout(true, false).create_partition_table("usage_rollups", 2);
        assert!(
            replicated.contains(
                "ReplicatedAggregatingMergeTree('/clickhouse/tables/{shard}/{database}/usage_rollups_p2', '{replica}')"
            ),
            "{replicated}"
        );
    }
}
