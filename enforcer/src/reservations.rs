//! Reservations of users and storage in PostgreSQL (`tally.reservations`): reserve → commit or
//! release, with expiry.
//!
//! A group of reservations for one (tenant, kind) is decided in one transaction holding an
//! advisory lock on (tenant, kind), so concurrent requests on any number of replicas are
//! serialized and a cap is never overshot. Every wait inside that transaction is bounded by
//! PostgreSQL itself (`lock_timeout`, `statement_timeout`, and `idle_in_transaction_session_timeout`
//! so a replica paused mid-transaction loses its lock instead of holding it): the caller never has
//! to drop a future inside a transaction, which would hand the connection back to the pool with
//! the transaction still open.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tally_schemas::tiers::Limit;

/// Holds never exceed this (BIGINT); larger amounts are refused at the edge.
pub const MAX_AMOUNT: u64 = i64::MAX as u64;

/// What is being reserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Resource {
    Users,
    Storage,
}

impl Resource {
    pub fn as_str(self) -> &'static str {
        match self {
            Resource::Users => "users",
            Resource::Storage => "storage",
        }
    }
}

/// The cap and reported usage a group of reservations is judged against.
#[derive(Debug, Clone, Copy)]
pub struct Judged {
    pub cap: Limit,
    /// Current usage reported by the aggregator…
    pub used: u64,
    /// …as of this event time: committed reservations after it are not in `used` yet.
    pub used_as_of: DateTime<Utc>,
    /// `false` ignores the cap (a degraded, fail-open answer) but still records the hold.
    pub enforce_cap: bool,
}

/// How long a hold lives and how long PostgreSQL may take.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub ttl_secs: u64,
    pub timeout_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reserved {
    pub allowed: bool,
    /// Usage plus outstanding reservations, before this one.
    pub in_use: u64,
    pub id: Option<String>,
}

const OUTSTANDING: &str = "SELECT LEAST(COALESCE(sum(amount), 0), 9223372036854775807)::BIGINT \
     FROM tally.reservations WHERE tenant_id = $1 AND kind = $2 AND expires_at > now() \
       AND (state = 'held' OR committed_at > $3)";

/// Decides `amounts` in order for one (tenant, kind) and records the admitted holds, atomically
/// across replicas. The sum of outstanding holds saturates instead of overflowing.
pub async fn reserve_group(
    pool: &PgPool,
    tenant: &str,
    resource: Resource,
    judged: Judged,
    bounds: Bounds,
    amounts: &[u64],
) -> Result<Vec<Reserved>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let timeout = format!("{}ms", bounds.timeout_ms.max(1));
    let idle = format!("{}ms", (bounds.timeout_ms * 2).max(1_000));
    sqlx::query(
        "SELECT set_config('lock_timeout', $1, true), set_config('statement_timeout', $1, true), \
                set_config('idle_in_transaction_session_timeout', $2, true)",
    )
    .bind(&timeout)
    .bind(&idle)
    .execute(&mut *tx)
    .await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(format!("{tenant}/{}", resource.as_str()))
        .execute(&mut *tx)
        .await?;
    // A new statement after the lock: under READ COMMITTED it sees every hold committed before.
    let outstanding: i64 = sqlx::query_scalar(OUTSTANDING)
        .bind(tenant)
        .bind(resource.as_str())
        .bind(judged.used_as_of)
        .fetch_one(&mut *tx)
        .await?;
    let mut in_use = judged.used.saturating_add(outstanding.unsigned_abs());
    let mut answers = Vec::with_capacity(amounts.len());
    let (mut ids, mut admitted) = (Vec::new(), Vec::new());
    for &amount in amounts {
        let allowed = !judged.enforce_cap || judged.cap.admits(in_use, amount);
        let id = allowed.then(|| uuid::Uuid::new_v4().to_string());
        if let Some(id) = &id {
            ids.push(id.clone());
            admitted.push(i64::try_from(amount.min(MAX_AMOUNT)).unwrap_or(i64::MAX));
        }
        answers.push(Reserved { allowed, in_use, id });
        if allowed {
            in_use = in_use.saturating_add(amount);
        }
    }
    if !ids.is_empty() {
        sqlx::query(
            "INSERT INTO tally.reservations (id, tenant_id, kind, amount, state, expires_at) \
             SELECT id, $3, $4, amount, 'held', now() + make_interval(secs => $5) \
             FROM unnest($1::text[], $2::bigint[]) AS held (id, amount)",
        )
        .bind(&ids)
        .bind(&admitted)
        .bind(tenant)
        .bind(resource.as_str())
        .bind(bounds.ttl_secs as f64)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(answers)
}

/// The tenant's outstanding holds of `resource` that reported usage does not include yet.
pub async fn outstanding(
    pool: &PgPool,
    tenant: &str,
    resource: Resource,
    used_as_of: DateTime<Utc>,
) -> Result<u64, sqlx::Error> {
    let sum: i64 =
        sqlx::query_scalar(OUTSTANDING).bind(tenant).bind(resource.as_str()).bind(used_as_of).fetch_one(pool).await?;
    Ok(sum.unsigned_abs())
}

/// How a commit or release ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finished {
    Done,
    /// Already committed: a commit again is a no-op; a release is refused (it has happened).
    Committed,
    /// Unknown to this tenant and kind, released or expired.
    Unknown,
}

async fn state_of(pool: &PgPool, id: &str, tenant: &str, resource: Resource) -> Result<Finished, sqlx::Error> {
    let state: Option<String> = sqlx::query_scalar(
        "SELECT state FROM tally.reservations WHERE id = $1 AND tenant_id = $2 AND kind = $3 AND expires_at > now()",
    )
    .bind(id)
    .bind(tenant)
    .bind(resource.as_str())
    .fetch_optional(pool)
    .await?;
    Ok(if state.as_deref() == Some("committed") { Finished::Committed } else { Finished::Unknown })
}

/// Turns the tenant's hold into a committed use; it keeps counting until usage reports it (or
/// `ttl_secs`). Only the hold's own tenant and kind find it.
pub async fn commit(
    pool: &PgPool,
    id: &str,
    tenant: &str,
    resource: Resource,
    ttl_secs: u64,
) -> Result<Finished, sqlx::Error> {
    let updated = sqlx::query(
        "UPDATE tally.reservations SET state = 'committed', committed_at = now(), \
         expires_at = now() + make_interval(secs => $4) \
         WHERE id = $1 AND tenant_id = $2 AND kind = $3 AND state = 'held' AND expires_at > now()",
    )
    .bind(id)
    .bind(tenant)
    .bind(resource.as_str())
    .bind(ttl_secs as f64)
    .execute(pool)
    .await?;
    if updated.rows_affected() == 1 { Ok(Finished::Done) } else { state_of(pool, id, tenant, resource).await }
}

/// Gives the tenant's hold back. A committed one is not released: the operation happened, and it
/// counts until usage reports it.
pub async fn release(pool: &PgPool, id: &str, tenant: &str, resource: Resource) -> Result<Finished, sqlx::Error> {
    let deleted =
        sqlx::query("DELETE FROM tally.reservations WHERE id = $1 AND tenant_id = $2 AND kind = $3 AND state = 'held'")
            .bind(id)
            .bind(tenant)
            .bind(resource.as_str())
            .execute(pool)
            .await?;
    if deleted.rows_affected() == 1 { Ok(Finished::Done) } else { state_of(pool, id, tenant, resource).await }
}

/// Deletes reservations that expired over an hour ago.
pub async fn purge_expired(pool: &PgPool) -> Result<u64, sqlx::Error> {
    let deleted = sqlx::query("DELETE FROM tally.reservations WHERE expires_at < now() - interval '1 hour'")
        .execute(pool)
        .await?;
    Ok(deleted.rows_affected())
}
