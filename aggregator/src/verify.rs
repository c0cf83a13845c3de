//! What startup refuses: tables whose settings break the exactly-once protocol, on every node.

use clickhouse::{Client, Row};
use serde::Deserialize;
use tally_schemas::ddl::PARTITION_SCOPED_TABLES;

fn base(table: &str) -> String {
    format!("{table}_base")
}

/// Tables whose first stored row wins, read as the lowest `_block_number`: they need the
/// persisted block number column (migration 3).
pub const FIRST_WINS_TABLES: [&str; 2] = ["usage_event_ids", "aggregator_batches"];

/// A table whose settings break the exactly-once protocol.
#[derive(Debug, thiserror::Error)]
pub enum DedupWindowError {
    #[error(
        "ClickHouse table {table} has {window} = {found}, below the {needed} the \
         exactly-once protocol needs (a replayed batch must find its blocks): \
         ALTER TABLE {table} MODIFY SETTING {window} = {needed}"
    )]
    TooSmall { table: String, window: &'static str, found: u64, needed: u64 },
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

/// Refuses a node's tables that break the protocol: a partition-scoped table (or the base it is
/// copied from) whose deduplication window (`replicated_deduplication_window` on a replicated
/// cluster) is below `needed` blocks, or a first-wins table without block numbers.
pub async fn node(node: &Client, replicated: bool, needed: u64) -> Result<(), DedupWindowError> {
    let window = if replicated { "replicated_deduplication_window" } else { "non_replicated_deduplication_window" };
    let tables: Vec<TableSettings> = node
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
        let found = settings.setting(window);
        if found < needed {
            return Err(DedupWindowError::TooSmall { table: settings.name.clone(), window, found, needed });
        }
    }
    Ok(())
}
