//! JWTs the platform's own services carry: a signed token whose `tenant_id` claim (the name is
//! configurable) scopes the caller like a tenant key. HS256 with a shared secret, RS256 with a
//! PEM public key, or RS256 keys from a JWKS file chosen by the token's `kid`. Expiry (`exp`,
//! required), issuer and audience are always checked.

use std::collections::HashMap;
use std::path::Path;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;
use tally_schemas::TenantId;

use super::{AuthError, Principal};
use crate::config::Secret;

/// `[auth.jwt]`: JWTs are accepted when a secret, a public key or a JWKS file is given.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JwtConfig {
    /// HS256 shared secret (empty: no HS256).
    pub hs256_secret: Secret,
    /// RS256 public key, a PEM file (empty: none).
    pub rs256_public_key_file: String,
    /// RS256 keys as a JWKS document (a file; each key chosen by the token's `kid`).
    pub jwks_file: String,
    /// Required `iss`.
    pub issuer: String,
    /// Required `aud` (one of the token's audiences).
    pub audience: String,
    /// The claim naming the caller's tenant.
    pub tenant_claim: String,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway_secs: u64,
}

impl Default for JwtConfig {
    fn default() -> Self {
        Self {
            hs256_secret: Secret::default(),
            rs256_public_key_file: String::new(),
            jwks_file: String::new(),
            issuer: String::new(),
            audience: String::new(),
            tenant_claim: "tenant_id".to_owned(),
            leeway_secs: 30,
        }
    }
}

impl JwtConfig {
    pub fn is_enabled(&self) -> bool {
        !self.hs256_secret.expose().is_empty() || !self.rs256_public_key_file.is_empty() || !self.jwks_file.is_empty()
    }
}

/// Verifies tokens against the configured keys.
pub struct JwtVerifier {
    hs256: Option<DecodingKey>,
    rs256: Option<DecodingKey>,
    jwks: HashMap<String, DecodingKey>,
    validation_hs: Validation,
    validation_rs: Validation,
    tenant_claim: String,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("hs256", &self.hs256.is_some())
            .field("rs256", &self.rs256.is_some())
            .field("jwks_keys", &self.jwks.len())
            .finish_non_exhaustive()
    }
}

fn validation(algorithm: Algorithm, config: &JwtConfig) -> Validation {
    let mut validation = Validation::new(algorithm);
    validation.set_issuer(&[config.issuer.as_str()]);
    validation.set_audience(&[config.audience.as_str()]);
    validation.set_required_spec_claims(&["exp", "iss", "aud"]);
    validation.leeway = config.leeway_secs;
    validation.validate_nbf = true;
    validation
}

fn read(path: &str, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(Path::new(path)).map_err(|e| format!("[auth.jwt] {what} {path}: {e}"))
}

impl JwtVerifier {
    /// Reads the configured keys; a missing issuer or audience, or an unreadable key, is an error.
    pub fn from_config(config: &JwtConfig) -> Result<Self, String> {
        if config.issuer.is_empty() || config.audience.is_empty() {
            return Err("[auth.jwt] needs issuer and audience: tokens are only accepted from a named issuer for Tally"
                .to_owned());
        }
        let hs256 = (!config.hs256_secret.expose().is_empty())
            .then(|| DecodingKey::from_secret(config.hs256_secret.expose().as_bytes()))
            .transpose()
            .map_err(|e| format!("[auth.jwt] hs256_secret: {e}"))?;
        let rs256 = if config.rs256_public_key_file.is_empty() {
            None
        } else {
            let pem = read(&config.rs256_public_key_file, "rs256_public_key_file")?;
            Some(DecodingKey::from_rsa_pem(&pem).map_err(|e| format!("[auth.jwt] rs256_public_key_file: {e}"))?)
        };
        let mut jwks = HashMap::new();
        if !config.jwks_file.is_empty() {
            let raw = read(&config.jwks_file, "jwks_file")?;
            let set: JwkSet = serde_json::from_slice(&raw).map_err(|e| format!("[auth.jwt] jwks_file: {e}"))?;
            for jwk in &set.keys {
                let Some(kid) = jwk.common.key_id.clone() else { continue };
                let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("[auth.jwt] jwks_file key {kid}: {e}"))?;
                jwks.insert(kid, key);
            }
            if jwks.is_empty() {
                return Err("[auth.jwt] jwks_file holds no key with a kid".to_owned());
            }
        }
        Ok(Self {
            hs256,
            rs256,
            jwks,
            validation_hs: validation(Algorithm::HS256, config),
            validation_rs: validation(Algorithm::RS256, config),
            tenant_claim: config.tenant_claim.clone(),
        })
    }

    /// The tenant principal a token authenticates.
    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Invalid)?;
        // The algorithm is fixed by the key, never taken from the token alone.
        let (key, validation) = match header.alg {
            Algorithm::HS256 => (self.hs256.as_ref(), &self.validation_hs),
            Algorithm::RS256 => {
                let from_jwks = header.kid.as_deref().and_then(|kid| self.jwks.get(kid));
                (from_jwks.or(self.rs256.as_ref()), &self.validation_rs)
            }
            _ => (None, &self.validation_rs),
        };
        let key = key.ok_or(AuthError::Invalid)?;
        let data = jsonwebtoken::decode::<HashMap<String, Value>>(token, key, validation).map_err(|e| {
            tracing::debug!(error = %e, "a JWT was refused");
            AuthError::Invalid
        })?;
        let tenant = data.claims.get(&self.tenant_claim).and_then(Value::as_str).ok_or(AuthError::Invalid)?;
        TenantId::parse(tenant).map(Principal::Tenant).map_err(|_| AuthError::Invalid)
    }
}
