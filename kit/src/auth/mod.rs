//! Who a request acts for: API keys with a scope ([`keys`]) and the platform's JWTs ([`jwt`]),
//! behind one [`Authenticator`] every service uses the same way.

pub mod jwt;
pub mod keys;

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use sqlx::PgPool;
use tally_schemas::TenantId;

pub use self::jwt::{JwtConfig, JwtVerifier};
pub use self::keys::{CreatedKey, KeyAdminError, KeyInfo, KeyStore, Scope, create_key, list_keys, revoke_key};

/// Who a request acts for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// A tenant key or a JWT's tenant claim: that tenant only.
    Tenant(TenantId),
    /// A platform service key: any tenant's usage and checks, no reads of a tenant's data.
    Service,
    /// An admin key: everything.
    Admin,
    /// An analyst key: reads every tenant's usage and limits, acts for none.
    Analyst,
}

impl Principal {
    /// May this caller send usage for, check, reserve, commit or release for `tenant`?
    pub fn may_act_for(&self, tenant: &str) -> bool {
        match self {
            Principal::Tenant(own) => own.as_str() == tenant,
            Principal::Service | Principal::Admin => true,
            Principal::Analyst => false,
        }
    }

    /// May this caller read `tenant`'s limits, usage and denials?
    pub fn may_read(&self, tenant: &str) -> bool {
        match self {
            Principal::Tenant(own) => own.as_str() == tenant,
            Principal::Admin | Principal::Analyst => true,
            Principal::Service => false,
        }
    }

    /// Names the caller in an error message.
    pub fn describe(&self) -> String {
        match self {
            Principal::Tenant(own) => format!("a key of tenant {own}"),
            Principal::Service => "a service key".to_owned(),
            Principal::Admin => "an admin key".to_owned(),
            Principal::Analyst => "an analyst key".to_owned(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing credentials: send `Authorization: Bearer tly_…` with an API key, or a JWT")]
    Missing,
    #[error("the credentials are not valid (an unknown, revoked or mistyped key, or a bad or expired JWT)")]
    Invalid,
    #[error("cannot check the credentials now: {0}")]
    Unavailable(String),
}

/// `[auth]`, shared by every service that authenticates callers.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// How long a valid key's (and a tenant's) lookup is cached: a revocation or suspension
    /// takes effect within this time.
    pub cache_ttl_ms: u64,
    pub jwt: JwtConfig,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self { cache_ttl_ms: 5_000, jwt: JwtConfig::default() }
    }
}

/// API keys, and JWTs where configured.
#[derive(Debug, Clone)]
pub struct Authenticator {
    keys: KeyStore,
    jwt: Option<Arc<JwtVerifier>>,
}

impl Authenticator {
    pub fn new(pool: PgPool, config: &AuthConfig) -> Result<Self, String> {
        let jwt = if config.jwt.is_enabled() { Some(Arc::new(JwtVerifier::from_config(&config.jwt)?)) } else { None };
        Ok(Self { keys: KeyStore::new(pool, Duration::from_millis(config.cache_ttl_ms)), jwt })
    }

    /// Resolves an `Authorization` header value (`Bearer …`) to the principal it authenticates.
    pub async fn authenticate(&self, authorization: Option<&str>) -> Result<Principal, AuthError> {
        let token = authorization
            .and_then(|value| value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer ")))
            .map(str::trim)
            .ok_or(AuthError::Missing)?;
        if token.starts_with(keys::TOKEN_PREFIX) {
            return self.keys.authenticate(token).await;
        }
        match &self.jwt {
            Some(verifier) if token.len() <= 16 * 1024 => verifier.verify(token),
            _ => Err(AuthError::Invalid),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_decide_what_a_caller_may_do() {
        let acme = Principal::Tenant(TenantId::parse("acme").unwrap());
        assert!(acme.may_act_for("acme") && acme.may_read("acme"));
        assert!(!acme.may_act_for("globex") && !acme.may_read("globex"));
        assert!(Principal::Service.may_act_for("globex") && !Principal::Service.may_read("globex"));
        assert!(Principal::Admin.may_act_for("globex") && Principal::Admin.may_read("globex"));
        assert!(!Principal::Analyst.may_act_for("globex") && Principal::Analyst.may_read("globex"));
    }
}
