//! The platform's tenant registry, read through a short-lived cache.
//!
//! Services ask "does tenant T exist, is it active, what tier?" on hot paths; the answer is cached
//! for `ttl` so a burst of requests costs one query, and a change in PostgreSQL (suspension,
//! tier change) is seen within `ttl`.

use std::time::Duration;

use sqlx::PgPool;

use crate::cache::TtlCache;

/// A tenant's registry row, as far as Tally needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantRecord {
    pub status: String,
    pub tier: String,
}

impl TenantRecord {
    pub fn is_active(&self) -> bool {
        self.status == "active"
    }
}

#[derive(Debug, Clone)]
pub struct TenantDirectory {
    pool: PgPool,
    cache: TtlCache<Option<TenantRecord>>,
}

impl TenantDirectory {
    pub fn new(pool: PgPool, ttl: Duration) -> Self {
        Self { pool, cache: TtlCache::new(ttl) }
    }

    /// The tenant's record, or `None` when the registry has no such tenant.
    pub async fn lookup(&self, tenant_id: &str) -> Result<Option<TenantRecord>, sqlx::Error> {
        self.cache
            .get_or_fetch(tenant_id, || async {
                let row: Option<(String, String)> = sqlx::query_as("SELECT status, tier FROM tenant WHERE id = $1")
                    .bind(tenant_id)
                    .fetch_optional(&self.pool)
                    .await?;
                Ok(row.map(|(status, tier)| TenantRecord { status, tier }))
            })
            .await
    }
}

/// A tenant as a list of tenants shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, sqlx::FromRow)]
pub struct TenantSummary {
    pub id: String,
    pub name: String,
    pub status: String,
    pub tier: String,
}

/// Up to `limit` tenants whose id sorts after `after`, in id order; with `search`, only those
/// whose id or name contains it (case-insensitive).
pub async fn list(
    pool: &PgPool,
    after: Option<&str>,
    search: Option<&str>,
    limit: i64,
) -> Result<Vec<TenantSummary>, sqlx::Error> {
    // `search` is matched literally: LIKE's wildcards in it are escaped.
    let pattern = search.map(|s| format!("%{}%", s.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_")));
    sqlx::query_as(
        "SELECT id, name, status, tier FROM tenant \
         WHERE ($1::text IS NULL OR id > $1) AND ($2::text IS NULL OR id ILIKE $2 OR name ILIKE $2) \
         ORDER BY id LIMIT $3",
    )
    .persistent(false)
    .bind(after)
    .bind(pattern)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// One tenant's summary, or `None` when the registry has no such tenant.
pub async fn summary(pool: &PgPool, id: &str) -> Result<Option<TenantSummary>, sqlx::Error> {
    sqlx::query_as("SELECT id, name, status, tier FROM tenant WHERE id = $1").bind(id).fetch_optional(pool).await
}
