//! Per-tenant API keys.
//!
//! A key reads `tly_<prefix>_<secret>`: the 12-hex-digit prefix is public (it finds the row and
//! names the key in logs), the 64-hex-digit secret is shown once at creation and only its SHA-256
//! is stored (`tally.api_keys`). A key with no tenant is an admin (service) key that may write for
//! any tenant. Lookups are cached for the configured TTL, so a revocation takes effect within it.

use std::time::Duration;

use sha2::{Digest, Sha256};
use sqlx::PgPool;
use tally_kit::cache::TtlCache;
use tally_schemas::TenantId;

const TOKEN_PREFIX: &str = "tly_";
const PREFIX_BYTES: usize = 6;
const SECRET_BYTES: usize = 32;

/// Who a request acts for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    Tenant(TenantId),
    Admin,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("missing credentials: send `Authorization: Bearer tly_…` with an API key")]
    Missing,
    #[error("the API key is not valid (unknown, revoked or mistyped)")]
    Invalid,
    #[error("cannot check the API key now: {0}")]
    Unavailable(#[from] sqlx::Error),
}

#[derive(Debug, Clone)]
struct StoredKey {
    secret_hash: Vec<u8>,
    tenant_id: Option<String>,
}

/// A newly created key; `token` is shown once and never stored.
#[derive(Debug)]
pub struct CreatedKey {
    pub prefix: String,
    pub token: String,
}

/// One row of `list`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct KeyInfo {
    pub prefix: String,
    pub tenant_id: Option<String>,
    pub label: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub revoked_at: Option<chrono::DateTime<chrono::Utc>>,
}

#[derive(Debug, Clone)]
pub struct KeyStore {
    pool: PgPool,
    cache: TtlCache<Option<StoredKey>>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn random_hex(len: usize) -> Result<String, getrandom::Error> {
    let mut bytes = vec![0u8; len];
    getrandom::fill(&mut bytes)?;
    Ok(hex(&bytes))
}

/// Splits `tly_<prefix>_<secret>`; `None` when the shape is wrong.
fn parse_token(token: &str) -> Option<(&str, &str)> {
    let (prefix, secret) = token.strip_prefix(TOKEN_PREFIX)?.split_once('_')?;
    let is_hex = |s: &str| s.bytes().all(|b| b.is_ascii_hexdigit());
    (prefix.len() == PREFIX_BYTES * 2 && secret.len() == SECRET_BYTES * 2 && is_hex(prefix) && is_hex(secret))
        .then_some((prefix, secret))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl KeyStore {
    pub fn new(pool: PgPool, ttl: Duration) -> Self {
        Self { pool, cache: TtlCache::new(ttl) }
    }

    /// Resolves an `Authorization` header value to the principal it authenticates.
    pub async fn authenticate(&self, authorization: Option<&str>) -> Result<Principal, AuthError> {
        let token = authorization
            .and_then(|value| value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer ")))
            .map(str::trim)
            .ok_or(AuthError::Missing)?;
        let (prefix, secret) = parse_token(token).ok_or(AuthError::Invalid)?;
        let stored = self.lookup(prefix).await?.ok_or(AuthError::Invalid)?;
        if !constant_time_eq(&Sha256::digest(secret.as_bytes()), &stored.secret_hash) {
            return Err(AuthError::Invalid);
        }
        match stored.tenant_id {
            None => Ok(Principal::Admin),
            Some(tenant) => TenantId::parse(tenant).map(Principal::Tenant).map_err(|_| AuthError::Invalid),
        }
    }

    async fn lookup(&self, prefix: &str) -> Result<Option<StoredKey>, sqlx::Error> {
        self.cache
            .get_or_fetch(prefix, || async {
                let row: Option<(Vec<u8>, Option<String>)> = sqlx::query_as(
                    "SELECT secret_hash, tenant_id FROM tally.api_keys WHERE prefix = $1 AND revoked_at IS NULL",
                )
                .bind(prefix)
                .fetch_optional(&self.pool)
                .await?;
                Ok(row.map(|(secret_hash, tenant_id)| StoredKey { secret_hash, tenant_id }))
            })
            .await
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyAdminError {
    #[error("no randomness available to make a key: {0}")]
    Random(getrandom::Error),
    #[error("tenant {0:?} is not in the tenant registry")]
    UnknownTenant(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Creates a key for `tenant` (or an admin key when `None`).
pub async fn create_key(pool: &PgPool, tenant: Option<&TenantId>, label: &str) -> Result<CreatedKey, KeyAdminError> {
    if let Some(tenant) = tenant {
        let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM tenant WHERE id = $1)")
            .bind(tenant.as_str())
            .fetch_one(pool)
            .await?;
        if !exists {
            return Err(KeyAdminError::UnknownTenant(tenant.to_string()));
        }
    }
    let prefix = random_hex(PREFIX_BYTES).map_err(KeyAdminError::Random)?;
    let secret = random_hex(SECRET_BYTES).map_err(KeyAdminError::Random)?;
    sqlx::query("INSERT INTO tally.api_keys (prefix, secret_hash, tenant_id, label) VALUES ($1, $2, $3, $4)")
        .bind(&prefix)
        .bind(Sha256::digest(secret.as_bytes()).to_vec())
        .bind(tenant.map(TenantId::as_str))
        .bind(label)
        .execute(pool)
        .await?;
    Ok(CreatedKey { token: format!("{TOKEN_PREFIX}{prefix}_{secret}"), prefix })
}

/// Revokes the key with `prefix` (a full token is accepted too); returns whether one was revoked.
pub async fn revoke_key(pool: &PgPool, prefix_or_token: &str) -> Result<bool, KeyAdminError> {
    let prefix = parse_token(prefix_or_token).map_or(prefix_or_token, |(prefix, _)| prefix);
    let result = sqlx::query("UPDATE tally.api_keys SET revoked_at = now() WHERE prefix = $1 AND revoked_at IS NULL")
        .bind(prefix)
        .execute(pool)
        .await?;
    Ok(result.rows_affected() == 1)
}

/// Lists keys, newest first, optionally for one tenant.
pub async fn list_keys(pool: &PgPool, tenant: Option<&TenantId>) -> Result<Vec<KeyInfo>, KeyAdminError> {
    Ok(sqlx::query_as(
        "SELECT prefix, tenant_id, label, created_at, revoked_at FROM tally.api_keys \
         WHERE $1::text IS NULL OR tenant_id = $1 ORDER BY created_at DESC",
    )
    .bind(tenant.map(TenantId::as_str))
    .fetch_all(pool)
    .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_have_one_shape() {
        let prefix = "a".repeat(12);
        let secret = "b".repeat(64);
        assert_eq!(parse_token(&format!("tly_{prefix}_{secret}")), Some((prefix.as_str(), secret.as_str())));
        assert_eq!(parse_token(&format!("tly_{prefix}_{}", "b".repeat(63))), None);
        assert_eq!(parse_token(&format!("xyz_{prefix}_{secret}")), None);
        assert_eq!(parse_token(&format!("tly_{}_{secret}", "g".repeat(12))), None);
    }

    #[test]
    fn comparison_needs_every_byte() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
