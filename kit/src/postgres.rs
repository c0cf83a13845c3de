//! PostgreSQL pools from config, database creation, and the two sets of migrations.
//!
//! The platform migrations create the shape of the platform's `tenant` and `stripe_customers`
//! tables (tests and the local stack only: production's platform service owns them). Tally's
//! migrations run with `search_path = tally`, so its tables and its migration history
//! (`tally._sqlx_migrations`) stay in its own schema, apart from the platform's.

use std::time::Duration;

pub use sqlx::PgPool;
use sqlx::migrate::{MigrateError, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection};
use tally_schemas::ddl::TALLY_PG_SCHEMA;

use crate::config::{PostgresConfig, redact_url};

pub static PLATFORM_MIGRATOR: Migrator = sqlx::migrate!("../schemas/migrations/platform");
pub static TALLY_MIGRATOR: Migrator = sqlx::migrate!("../schemas/migrations/tally");

#[derive(Debug, thiserror::Error)]
pub enum PostgresSetupError {
    #[error("postgres url is invalid: {0} (expected postgres://user:password@host:port/database)")]
    BadUrl(sqlx::Error),
    #[error("postgres at {url}: {source}")]
    Connect { url: String, source: sqlx::Error },
    #[error("postgres at {url}: migrating {which}: {source}")]
    Migrate { url: String, which: &'static str, source: MigrateError },
}

fn options(config: &PostgresConfig) -> Result<PgConnectOptions, PostgresSetupError> {
    let options: PgConnectOptions = config.url.expose().parse().map_err(PostgresSetupError::BadUrl)?;
    Ok(options.log_statements(tracing::log::LevelFilter::Debug))
}

fn connect_error(config: &PostgresConfig) -> impl FnOnce(sqlx::Error) -> PostgresSetupError + '_ {
    |source| PostgresSetupError::Connect { url: redact_url(config.url.expose()), source }
}

/// A pool sized and bounded by config; connections are made lazily, so a database that is down
/// shows in `/readyz` instead of stopping the service from starting.
pub fn pool(config: &PostgresConfig) -> Result<PgPool, PostgresSetupError> {
    Ok(PgPoolOptions::new()
        .max_connections(config.max_connections)
        .acquire_timeout(Duration::from_millis(config.acquire_timeout_ms))
        .connect_lazy_with(options(config)?))
}

/// Creates the configured database if it is missing (connecting to `postgres` to do so).
/// Returns whether it was created.
pub async fn ensure_database(config: &PostgresConfig) -> Result<bool, PostgresSetupError> {
    let options = options(config)?;
    let Some(database) = options.get_database().map(str::to_owned) else {
        return Ok(false);
    };
    let mut admin =
        PgConnection::connect_with(&options.clone().database("postgres")).await.map_err(connect_error(config))?;
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(&database)
        .fetch_one(&mut admin)
        .await
        .map_err(connect_error(config))?;
    if exists {
        return Ok(false);
    }
    let quoted = format!("\"{}\"", database.replace('"', "\"\""));
    match sqlx::query(&format!("CREATE DATABASE {quoted}")).execute(&mut admin).await {
        Ok(_) => Ok(true),
        // Another process created it between the check and the create.
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => Ok(false),
        Err(e) => Err(connect_error(config)(e)),
    }
}

/// Applies the platform-shape migrations (tests and the local stack).
pub async fn migrate_platform(config: &PostgresConfig) -> Result<(), PostgresSetupError> {
    let mut connection = PgConnection::connect_with(&options(config)?).await.map_err(connect_error(config))?;
    run(config, "platform tables", &PLATFORM_MIGRATOR, &mut connection).await
}

/// Applies Tally's own migrations inside the `tally` schema.
pub async fn migrate_tally(config: &PostgresConfig) -> Result<(), PostgresSetupError> {
    let options = options(config)?;
    let mut connection = PgConnection::connect_with(&options).await.map_err(connect_error(config))?;
    sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {TALLY_PG_SCHEMA}"))
        .execute(&mut connection)
        .await
        .map_err(connect_error(config))?;
    connection.close().await.map_err(connect_error(config))?;
    let mut connection = PgConnection::connect_with(&options.options([("search_path", TALLY_PG_SCHEMA)]))
        .await
        .map_err(connect_error(config))?;
    run(config, "tally schema", &TALLY_MIGRATOR, &mut connection).await
}

async fn run(
    config: &PostgresConfig,
    which: &'static str,
    migrator: &Migrator,
    connection: &mut PgConnection,
) -> Result<(), PostgresSetupError> {
    migrator.run(connection).await.map_err(|source| PostgresSetupError::Migrate {
        url: redact_url(config.url.expose()),
        which,
        source,
    })
}

/// `SELECT 1` through the pool.
pub async fn ping(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT 1").execute(pool).await.map(drop)
}
