//! Measuring one tenant: its storage bytes and active users, per isolation model.
//!
//! * `database`: one connection to the tenant's own database (closed after), `pg_database_size`
//!   of it and the users query.
//! * `schema`: a pooled connection to the shared database, the sum of `pg_total_relation_size`
//!   (table + indexes + TOAST) over the schema's tables, and the users query in the schema.
//! * `shared`: the tenant's share of each configured shared table (its rows / all rows × the
//!   table's total size: an estimate, computed once per sweep and table), and the users query
//!   bound to the tenant id.
//!
//! Every tenant connection has a connect timeout and a statement timeout, and uses the
//! monitoring role when one is configured. URLs are never logged with their password.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};

use crate::config::CollectorSection;
use crate::registry::{Isolation, Tenant};

/// Idle pooled connections to a shared database are closed after this long.
const IDLE_CLOSE: Duration = Duration::from_secs(60);

/// What one tenant measured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Measurement {
    pub storage_bytes: i64,
    pub active_users: i64,
}

/// Why a tenant could not be measured: `reason` is a bounded label, `detail` for the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {detail}")]
pub struct Failure {
    pub reason: &'static str,
    pub detail: String,
}

/// Every failure reason, for metrics created at zero.
pub const REASONS: [&str; 7] =
    ["connect", "connect_timeout", "missing_database", "missing_schema", "query", "timeout", "bad_url"];

fn failure(reason: &'static str, detail: impl std::fmt::Display) -> Failure {
    Failure { reason, detail: detail.to_string() }
}

fn query_failure(error: sqlx::Error) -> Failure {
    match error.as_database_error().and_then(|e| e.code()).as_deref() {
        Some("57014") => failure("timeout", "statement timeout"),
        Some("3D000") => failure("missing_database", error),
        Some("3F000") => failure("missing_schema", error),
        _ => failure("query", error),
    }
}

/// `"name"` with inner quotes doubled: a PostgreSQL identifier.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Measures tenants; holds one lazily made pool per shared database.
#[derive(Debug, Clone)]
pub struct Measurer {
    section: Arc<CollectorSection>,
    pools: Arc<Mutex<HashMap<String, PgPool>>>,
}

impl Measurer {
    pub fn new(section: Arc<CollectorSection>) -> Self {
        Self { section, pools: Arc::default() }
    }

    fn options(&self, url: &str) -> Result<PgConnectOptions, Failure> {
        let mut options = PgConnectOptions::from_str(url)
            .map_err(|_| failure("bad_url", "database_url is not a postgres:// URL"))?
            .options([("statement_timeout", self.section.statement_timeout_ms.to_string())])
            .application_name("tally-collector");
        if !self.section.monitor_user.is_empty() {
            options = options.username(&self.section.monitor_user).password(self.section.monitor_password.expose());
        }
        Ok(options)
    }

    fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.section.connect_timeout_ms)
    }

    /// The pool of a shared database (made on first use; idle connections close).
    pub fn pool(&self, url: &str) -> Result<PgPool, Failure> {
        let mut pools = self.pools.lock().map_err(|_| failure("query", "pool map poisoned"))?;
        if let Some(pool) = pools.get(url) {
            return Ok(pool.clone());
        }
        let pool = PgPoolOptions::new()
            .max_connections(u32::try_from(self.section.concurrency.max(1)).unwrap_or(u32::MAX))
            .min_connections(0)
            .idle_timeout(IDLE_CLOSE)
            .acquire_timeout(self.connect_timeout())
            .connect_lazy_with(self.options(url)?);
        pools.insert(url.to_owned(), pool.clone());
        Ok(pool)
    }

    /// Measures one tenant; `shared_bytes` is its share of the shared tables (shared model).
    pub async fn measure(&self, tenant: &Tenant, shared_bytes: Option<i64>) -> Result<Measurement, Failure> {
        match &tenant.isolation {
            Isolation::Database { url } => self.own_database(url).await,
            Isolation::Schema { url, schema } => self.schema(url, schema).await,
            Isolation::Shared { url } => {
                let pool = self.pool(url)?;
                let users = sqlx::query_scalar(&self.section.users_sql_shared)
                    .bind(&tenant.id)
                    .fetch_one(&pool)
                    .await
                    .map_err(pool_failure)?;
                Ok(Measurement { storage_bytes: shared_bytes.unwrap_or(0), active_users: users })
            }
        }
    }

    async fn own_database(&self, url: &str) -> Result<Measurement, Failure> {
        let options = self.options(url)?;
        let mut connection = match tokio::time::timeout(self.connect_timeout(), PgConnection::connect_with(&options))
            .await
        {
            Err(_) => return Err(failure("connect_timeout", format!("no answer within {:?}", self.connect_timeout()))),
            Ok(Err(error)) => return Err(connect_failure(error)),
            Ok(Ok(connection)) => connection,
        };
        // One statement, not kept prepared: the connection is used once.
        let sql = format!(
            "SELECT pg_database_size(current_database())::bigint, ({})::bigint",
            self.section.users_sql_database.trim().trim_end_matches(';')
        );
        let row: Result<(i64, i64), _> = sqlx::query_as(&sql).persistent(false).fetch_one(&mut connection).await;
        let _closed = connection.close().await;
        let (storage_bytes, active_users) = row.map_err(query_failure)?;
        Ok(Measurement { storage_bytes, active_users })
    }

    async fn schema(&self, url: &str, schema: &str) -> Result<Measurement, Failure> {
        let pool = self.pool(url)?;
        let size: Option<i64> = sqlx::query_scalar(
            "SELECT (SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint FROM pg_class c \
                     WHERE c.relnamespace = n.oid AND c.relkind IN ('r', 'm')) \
             FROM pg_namespace n WHERE n.nspname = $1",
        )
        .bind(schema)
        .fetch_optional(&pool)
        .await
        .map_err(pool_failure)?;
        let storage_bytes = size.ok_or_else(|| failure("missing_schema", format!("schema {schema} does not exist")))?;
        let users_sql = self.section.users_sql_schema.replace("{schema}", &quote_ident(schema));
        let active_users = sqlx::query_scalar(&users_sql).fetch_one(&pool).await.map_err(pool_failure)?;
        Ok(Measurement { storage_bytes, active_users })
    }

    /// Each tenant's share of the configured shared tables of the database at `url`, in bytes:
    /// Σ over tables of size × (tenant's rows / all rows).
    pub async fn shared_shares(&self, url: &str) -> Result<HashMap<String, i64>, Failure> {
        let pool = self.pool(url)?;
        let mut shares: HashMap<String, f64> = HashMap::new();
        for table in &self.section.shared_tables {
            let size: i64 = sqlx::query_scalar("SELECT pg_total_relation_size($1::regclass)")
                .bind(&table.table)
                .fetch_one(&pool)
                .await
                .map_err(pool_failure)?;
            let sql = format!(
                "SELECT {column}::text, count(*) FROM {table} GROUP BY 1",
                column = quote_ident(&table.tenant_column),
                table = table.table.split('.').map(quote_ident).collect::<Vec<_>>().join("."),
            );
            let counts: Vec<(String, i64)> = sqlx::query_as(&sql).fetch_all(&pool).await.map_err(pool_failure)?;
            let rows: i64 = counts.iter().map(|(_, n)| n).sum::<i64>().max(1);
            for (tenant, count) in counts {
                *shares.entry(tenant).or_default() += size as f64 * count as f64 / rows as f64;
            }
        }
        Ok(shares.into_iter().map(|(tenant, bytes)| (tenant, bytes.round() as i64)).collect())
    }
}

fn connect_failure(error: sqlx::Error) -> Failure {
    match error.as_database_error().and_then(|e| e.code()).as_deref() {
        Some("3D000") => failure("missing_database", "the tenant's database does not exist"),
        _ => failure("connect", error),
    }
}

fn pool_failure(error: sqlx::Error) -> Failure {
    match error {
        sqlx::Error::PoolTimedOut => failure("connect_timeout", "no connection to the shared database in time"),
        error @ (sqlx::Error::Io(_) | sqlx::Error::Tls(_)) => connect_failure(error),
        error => query_failure(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("tenant_a"), "\"tenant_a\"");
        assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
    }
}
