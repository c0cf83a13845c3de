//! ClickHouse clients from config, a health check, and the versioned DDL.

use clickhouse::Client;
use clickhouse::sql::Identifier;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tally_schemas::cluster::{CLUSTER_LAYER, ClusterLayout};
use tally_schemas::ddl::{CLICKHOUSE_MIGRATIONS, CLICKHOUSE_MIGRATIONS_TABLE, ClickHouseMigration, Statement};

use crate::config::ClickHouseConfig;

#[derive(Debug, thiserror::Error)]
pub enum ClickHouseSetupError {
    #[error("clickhouse at {url}: {source}")]
    Query { url: String, source: clickhouse::error::Error },
    #[error("{0}")]
    Config(String),
    #[error(
        "clickhouse migration {version} ({name}) was applied with checksum {applied} but the file now has {current}: \
         applied DDL must not change; add a new migration instead"
    )]
    ChecksumMismatch { version: u32, name: &'static str, applied: String, current: String },
}

/// A client for the configured database. Inserts are synchronous (`async_insert = 0`): an insert
/// that returned is stored, and insert deduplication tokens apply.
pub fn client(config: &ClickHouseConfig) -> Client {
    server_client(config).with_database(&config.database)
}

fn server_client(config: &ClickHouseConfig) -> Client {
    Client::default()
        .with_url(&config.url)
        .with_user(&config.user)
        .with_password(config.password.expose())
        .with_setting("async_insert", "0")
}

/// `SELECT 1` against the server.
pub async fn ping(client: &Client) -> Result<(), clickhouse::error::Error> {
    client.query("SELECT 1").fetch_one::<u8>().await.map(drop)
}

/// Creates the configured database if it is missing.
pub async fn ensure_database(config: &ClickHouseConfig) -> Result<(), ClickHouseSetupError> {
    let on_cluster = match config.layout().map_err(ClickHouseSetupError::Config)? {
        Some(layout) if layout.on_cluster => format!(" ON CLUSTER '{}'", layout.cluster),
        _ => String::new(),
    };
    server_client(config)
        .query(&format!("CREATE DATABASE IF NOT EXISTS ?{on_cluster}"))
        .bind(Identifier(&config.database))
        .execute()
        .await
        .map_err(|source| ClickHouseSetupError::Query { url: config.url.clone(), source })
}

async fn table_exists(client: &Client, table: &str) -> Result<bool, clickhouse::error::Error> {
    let found: u64 = client
        .query("SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = ?")
        .bind(table)
        .fetch_one()
        .await?;
    Ok(found > 0)
}

#[derive(Debug, clickhouse::Row, Deserialize)]
struct Applied {
    version: u32,
    checksum: String,
}

fn checksum(migration: &ClickHouseMigration) -> String {
    Sha256::digest(migration.sql.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// Applies the DDL versions not applied yet, in order; returns the versions applied now.
/// Safe to run again at any time, and after a crash half-way through. On a cluster, every node
/// runs the node DDL and then the cluster layer, and keeps its own record of what it applied
/// (or, with `on_cluster`, the first node runs each statement `ON CLUSTER` and keeps the record).
pub async fn apply_migrations(config: &ClickHouseConfig) -> Result<Vec<u32>, ClickHouseSetupError> {
    apply_migrations_through(config, u32::MAX).await
}

/// [`apply_migrations`] up to and including version `last` (an upgrade from an older release).
pub async fn apply_migrations_through(config: &ClickHouseConfig, last: u32) -> Result<Vec<u32>, ClickHouseSetupError> {
    let Some(layout) = config.layout().map_err(ClickHouseSetupError::Config)? else {
        return apply_on_node(config, None, last).await;
    };
    let mut nodes = crate::topology::nodes(config);
    if layout.on_cluster {
        nodes.truncate(1);
    }
    let mut applied = Vec::new();
    for node in nodes {
        let node_config = ClickHouseConfig { url: node.url, ..config.clone() };
        applied.extend(apply_on_node(&node_config, Some(&layout), last).await?);
    }
    applied.sort_unstable();
    applied.dedup();
    Ok(applied)
}

/// The statements of `migration` as this server runs them.
fn statements_for(migration: &ClickHouseMigration, layout: Option<&ClusterLayout>) -> Vec<Statement> {
    match layout {
        None => migration.statements(),
        Some(layout) if migration.version == CLUSTER_LAYER.version => layout.layer(),
        Some(layout) => layout.statements(migration),
    }
}

async fn apply_on_node(
    config: &ClickHouseConfig,
    layout: Option<&ClusterLayout>,
    last: u32,
) -> Result<Vec<u32>, ClickHouseSetupError> {
    ensure_database(config).await?;
    // A migration that rewrites a column (MATERIALIZE) is applied when its statement returns.
    let client = client(config).with_setting("mutations_sync", "2");
    let fail = |source| ClickHouseSetupError::Query { url: config.url.clone(), source };
    let record = format!(
        "CREATE TABLE IF NOT EXISTS {CLICKHOUSE_MIGRATIONS_TABLE} \
         (version UInt32, name String, checksum String, applied_at DateTime64(3, 'UTC') DEFAULT now64(3)) \
         ENGINE = MergeTree ORDER BY version"
    );
    client.query(&record).execute().await.map_err(fail)?;
    let applied: Vec<Applied> = client
        .query(&format!(
            "SELECT version, any(checksum) AS checksum FROM {CLICKHOUSE_MIGRATIONS_TABLE} GROUP BY version ORDER BY version"
        ))
        .fetch_all()
        .await
        .map_err(fail)?;
    let layer = layout.map(|_| &CLUSTER_LAYER);
    let mut applied_now = Vec::new();
    for migration in CLICKHOUSE_MIGRATIONS.iter().chain(layer).filter(|m| m.version <= last) {
        let current = checksum(migration);
        if let Some(done) = applied.iter().find(|a| a.version == migration.version) {
            if done.checksum != current {
                return Err(ClickHouseSetupError::ChecksumMismatch {
                    version: migration.version,
                    name: migration.name,
                    applied: done.checksum.clone(),
                    current,
                });
            }
            continue;
        }
        for statement in statements_for(migration, layout) {
            if let Some(table) = &statement.unless_table
                && table_exists(&client, table).await.map_err(fail)?
            {
                continue;
            }
            client.query(&statement.sql).execute().await.map_err(fail)?;
        }
        client
            .query(&format!("INSERT INTO {CLICKHOUSE_MIGRATIONS_TABLE} (version, name, checksum) VALUES (?, ?, ?)"))
            .bind(migration.version)
            .bind(migration.name)
            .bind(current.as_str())
            .execute()
            .await
            .map_err(fail)?;
        tracing::info!(url = %config.url, version = migration.version, name = migration.name, "clickhouse migration applied");
        applied_now.push(migration.version);
    }
    Ok(applied_now)
}
