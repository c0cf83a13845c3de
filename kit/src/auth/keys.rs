//! API keys (`tally.api_keys`), shared by every service that authenticates callers.
//!
//! A key reads `tly_<prefix>_<secret>`: the 12-hex-digit prefix is public (it finds the row and
//! names the key in logs), the 64-hex-digit secret is shown once at creation and only its SHA-256
//! is stored. Each key has a [`Scope`]. Valid keys are cached for the configured TTL, so a
//! revocation takes effect within it; unknown keys are never cached, so nothing a stranger sends
//! is kept.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use sha2::{Digest, Sha256};
use sqlx::PgPool;
use tally_schemas::TenantId;

use super::{AuthError, Principal};
use crate::cache::TtlCache;

pub const TOKEN_PREFIX: &str = "tly_";
const PREFIX_BYTES: usize = 6;
const SECRET_BYTES: usize = 32;

/// What a key may do (see `schemas/migrations/tally/0004_key_scopes_and_enforcer_state.sql`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Its own tenant only.
    Tenant,
    /// A platform service: send usage for and check any tenant; no reads of tenants' data.
    Service,
    /// Everything, for every tenant.
    Admin,
    /// Reads every tenant's usage and limits (analysts, finance); acts for none.
    Analyst,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Tenant => "tenant",
            Scope::Service => "service",
            Scope::Admin => "admin",
            Scope::Analyst => "analyst",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Scope {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        match raw {
            "tenant" => Ok(Scope::Tenant),
            "service" => Ok(Scope::Service),
            "admin" => Ok(Scope::Admin),
            "analyst" => Ok(Scope::Analyst),
            other => Err(format!("unknown key scope {other:?}: one of tenant, service, admin, analyst")),
        }
    }
}

#[derive(Debug, Clone)]
struct StoredKey {
    secret_hash: Vec<u8>,
    principal: Principal,
}

/// A newly created key; `token` is shown once and never stored.
#[derive(Debug)]
pub struct CreatedKey {
    pub prefix: String,
    pub token: String,
}

/// One row of [`list_keys`].
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct KeyInfo {
    pub prefix: String,
    pub scope: String,
    pub tenant_id: Option<String>,
    pub label: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub revoked_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// Looks keys up in PostgreSQL, caching the valid ones.
#[derive(Debug, Clone)]
pub struct KeyStore {
    pool: PgPool,
    cache: TtlCache<StoredKey>,
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

/// Why a lookup found no usable key (never cached).
enum Lookup {
    Missing,
    Failed(sqlx::Error),
}

impl KeyStore {
    pub fn new(pool: PgPool, ttl: Duration) -> Self {
        Self { pool, cache: TtlCache::new(ttl) }
    }

    /// The principal a `tly_…` token authenticates.
    pub async fn authenticate(&self, token: &str) -> Result<Principal, AuthError> {
        let (prefix, secret) = parse_token(token).ok_or(AuthError::Invalid)?;
        let stored = match self.cache.get_or_fetch(prefix, || self.fetch(prefix)).await {
            Ok(stored) => stored,
            Err(Lookup::Missing) => return Err(AuthError::Invalid),
            Err(Lookup::Failed(error)) => return Err(AuthError::Unavailable(error.to_string())),
        };
        if !constant_time_eq(&Sha256::digest(secret.as_bytes()), &stored.secret_hash) {
            return Err(AuthError::Invalid);
        }
        Ok(stored.principal)
    }

    async fn fetch(&self, prefix: &str) -> Result<StoredKey, Lookup> {
        let row: Option<(Vec<u8>, String, Option<String>)> = sqlx::query_as(
            "SELECT secret_hash, scope, tenant_id FROM tally.api_keys WHERE prefix = $1 AND revoked_at IS NULL",
        )
        .bind(prefix)
        .fetch_optional(&self.pool)
        .await
        .map_err(Lookup::Failed)?;
        let (secret_hash, scope, tenant) = row.ok_or(Lookup::Missing)?;
        let principal = match (scope.parse::<Scope>(), tenant) {
            (Ok(Scope::Tenant), Some(tenant)) => {
                Principal::Tenant(TenantId::parse(tenant).map_err(|_| Lookup::Missing)?)
            }
            (Ok(Scope::Service), None) => Principal::Service,
            (Ok(Scope::Admin), None) => Principal::Admin,
            (Ok(Scope::Analyst), None) => Principal::Analyst,
            _ => return Err(Lookup::Missing),
        };
        Ok(StoredKey { secret_hash, principal })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyAdminError {
    #[error("no randomness available to make a key: {0}")]
    Random(getrandom::Error),
    #[error("tenant {0} is not in the tenant registry")]
    UnknownTenant(String),
    #[error("a {0} key names no tenant; a tenant key names exactly one")]
    ScopeAndTenant(Scope),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Creates a key of `scope`; a tenant key names its `tenant`, the others none.
pub async fn create_key(
    pool: &PgPool,
    scope: Scope,
    tenant: Option<&TenantId>,
    label: &str,
) -> Result<CreatedKey, KeyAdminError> {
    if (scope == Scope::Tenant) != tenant.is_some() {
        return Err(KeyAdminError::ScopeAndTenant(scope));
    }
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
    sqlx::query(
        "INSERT INTO tally.api_keys (prefix, secret_hash, scope, tenant_id, label) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(&prefix)
    .bind(Sha256::digest(secret.as_bytes()).to_vec())
    .bind(scope.as_str())
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
        "SELECT prefix, scope, tenant_id, label, created_at, revoked_at FROM tally.api_keys \
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

    #[test]
    fn scopes_round_trip() {
        for scope in [Scope::Tenant, Scope::Service, Scope::Admin, Scope::Analyst] {
            assert_eq!(scope.as_str().parse::<Scope>(), Ok(scope));
        }
        assert!("root".parse::<Scope>().is_err());
    }
}
