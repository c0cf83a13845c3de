//! Authentication and tenant scope on every endpoint, HTTP and gRPC: API keys by scope, the
//! platform's JWTs (HS256, RS256 by PEM and by JWKS), and `auth = "none"` only when said.

use std::path::PathBuf;
use std::process::Command;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tally_kit::auth::Scope;
use tonic::Code;

use crate::helpers::{App, Stores};
use crate::rls::ask_as;

const BAD_KEY: &str = "tly_0123456789ab_0000000000000000000000000000000000000000000000000000000000000000";

/// Every check endpoint with a body that is valid for tenant acme.
fn endpoints(reservation: &str) -> Vec<(&'static str, String, Value)> {
    let finish = json!({ "tenant_id": "acme", "kind": "users" });
    vec![
        ("POST", "/v1/check/rate".to_owned(), json!({ "tenant_id": "acme" })),
        ("POST", "/v1/check/users".to_owned(), json!({ "tenant_id": "acme" })),
        ("POST", "/v1/check/storage".to_owned(), json!({ "tenant_id": "acme", "amount": 5 })),
        ("POST", "/v1/check".to_owned(), json!({ "tenant_id": "acme", "rate_cost": 1 })),
        ("POST", format!("/v1/reservations/{reservation}/commit"), finish.clone()),
        ("POST", format!("/v1/reservations/{reservation}/release"), finish),
        ("GET", "/v1/tenants/acme/limits".to_owned(), Value::Null),
        ("GET", "/v1/tenants/acme/denials".to_owned(), Value::Null),
    ]
}

async fn call(app: &App, key: Option<&str>, (method, path, body): &(&str, String, Value)) -> (u16, Value) {
    if *method == "GET" {
        let (status, answer) = app.get_as(key, path).await;
        (status.as_u16(), answer)
    } else {
        let (status, _, answer) = app.post_as(key, path, body.clone()).await;
        (status.as_u16(), answer)
    }
}

async fn tenants(stores: &Stores) {
    stores.tenant("acme", "STANDARD").await;
    stores.tenant("globex", "STANDARD").await;
    stores.gauge("acme", "active_users", 1).await;
}

#[tokio::test]
async fn every_endpoint_refuses_a_missing_or_bad_key_and_another_tenants_key() {
    let stores = Stores::new().await;
    tenants(&stores).await;
    let app = App::spawn(&stores, stores.config()).await;
    let acme = stores.key(Scope::Tenant, Some("acme")).await;
    let globex = stores.key(Scope::Tenant, Some("globex")).await;
    app.usage_read().await;
    let (status, _, held) = app.post_as(Some(&acme), "/v1/check/users", json!({ "tenant_id": "acme" })).await;
    assert_eq!(status, 200, "{held}");
    let reservation = held["reservation_id"].as_str().unwrap().to_owned();

    for endpoint in endpoints(&reservation) {
        let (status, answer) = call(&app, None, &endpoint).await;
        assert_eq!((status, answer["reason"].as_str()), (401, Some("unauthenticated")), "{endpoint:?}: no key");
        assert_eq!(call(&app, Some(BAD_KEY), &endpoint).await.0, 401, "{endpoint:?}: an unknown key");
        assert_eq!(call(&app, Some("not-a-token"), &endpoint).await.0, 401, "{endpoint:?}: garbage");
        let (status, answer) = call(&app, Some(&globex), &endpoint).await;
        assert_eq!((status, answer["reason"].as_str()), (403, Some("forbidden")), "{endpoint:?}: another tenant's key");
    }
    // Another tenant naming itself cannot find acme's hold: 404, the hold stays.
    let finish = json!({ "tenant_id": "globex", "kind": "users" });
    let (status, _, _) = app.post_as(Some(&globex), &format!("/v1/reservations/{reservation}/release"), finish).await;
    assert_eq!(status, 404);
    // The wrong kind does not find it either.
    let wrong_kind = json!({ "kind": "storage" });
    let (status, _, _) = app.post_as(Some(&acme), &format!("/v1/reservations/{reservation}/commit"), wrong_kind).await;
    assert_eq!(status, 404);
    let (status, limits) = app.get_as(Some(&acme), "/v1/tenants/acme/limits").await;
    assert_eq!((status.as_u16(), limits["users"]["used"].as_u64()), (200, Some(2)), "1 reported + the hold: {limits}");
    let (status, _, _) =
        app.post_as(Some(&acme), &format!("/v1/reservations/{reservation}/commit"), json!({ "kind": "users" })).await;
    assert_eq!(status, 200, "its own tenant's key commits it (tenant taken from the key)");

    let service = stores.key(Scope::Service, None).await;
    assert_eq!(app.post_as(Some(&service), "/v1/check/rate", json!({ "tenant_id": "globex" })).await.0, 200);
    let (status, answer) = app.get_as(Some(&service), "/v1/tenants/globex/limits").await;
    assert_eq!((status.as_u16(), answer["reason"].as_str()), (403, Some("forbidden")), "a service key reads nothing");
    let (status, _, answer) =
        app.post_as(Some(&service), "/v1/reservations/x/release", json!({ "kind": "users" })).await;
    assert_eq!(status, 400, "a service key names the tenant: {answer}");
    assert_eq!(app.get_as(Some(&stores.admin_key), "/v1/tenants/globex/denials").await.0, 200);
    app.stop().await;
    stores.drop().await;
}

#[tokio::test]
async fn envoy_calls_need_a_key_in_their_metadata_and_a_tenant_key_checks_only_its_tenant() {
    let stores = Stores::new().await;
    tenants(&stores).await;
    let app = App::spawn(&stores, stores.config()).await;
    let descriptor = || vec![vec![("tenant", "acme")]];
    let missing = ask_as(&app, None, descriptor()).await.unwrap_err();
    assert_eq!(missing.code(), Code::Unauthenticated, "{missing:?}");
    assert_eq!(ask_as(&app, Some(BAD_KEY), descriptor()).await.unwrap_err().code(), Code::Unauthenticated);
    let globex = stores.key(Scope::Tenant, Some("globex")).await;
    let foreign = ask_as(&app, Some(&globex), descriptor()).await.unwrap_err();
    assert_eq!(foreign.code(), Code::PermissionDenied, "{foreign:?}");
    let service = stores.key(Scope::Service, None).await;
    assert_eq!(ask_as(&app, Some(&service), descriptor()).await.unwrap().overall_code, 1, "a service key checks any");
    let acme = stores.key(Scope::Tenant, Some("acme")).await;
    assert_eq!(ask_as(&app, Some(&acme), descriptor()).await.unwrap().overall_code, 1, "its own tenant");
    app.stop().await;
    stores.drop().await;
}

fn token(claims: &Value, header: &Header, key: &EncodingKey) -> String {
    jsonwebtoken::encode(header, claims, key).unwrap()
}

fn claims(tenant: &str, audience: &str, expires_in: i64) -> Value {
    let now = chrono::Utc::now().timestamp();
    json!({ "iss": "platform", "aud": audience, "exp": now + expires_in, "tenant_id": tenant, "sub": "svc" })
}

/// An RSA key pair made by openssl for this test: (private PEM, public PEM path).
fn rsa_pair(dir: &std::path::Path) -> (Vec<u8>, PathBuf) {
    let private = dir.join("private.pem");
    let public = dir.join("public.pem");
    let made = Command::new("openssl").args(["genrsa", "-out"]).arg(&private).arg("2048").output().unwrap();
    assert!(made.status.success(), "openssl genrsa: {made:?}");
    let made = Command::new("openssl")
        .args(["rsa", "-pubout", "-in"])
        .arg(&private)
        .arg("-out")
        .arg(&public)
        .output()
        .unwrap();
    assert!(made.status.success(), "openssl rsa -pubout: {made:?}");
    (std::fs::read(&private).unwrap(), public)
}

#[tokio::test]
async fn platform_jwts_scope_the_caller_by_their_tenant_claim() {
    let stores = Stores::new().await;
    tenants(&stores).await;
    let dir = std::env::temp_dir().join(tally_testkit::unique_name("tally-jwt"));
    std::fs::create_dir_all(&dir).unwrap();
    let (private_pem, public_pem) = rsa_pair(&dir);
    let rsa = EncodingKey::from_rsa_pem(&private_pem).unwrap();
    let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&rsa, Algorithm::RS256).unwrap();
    jwk.common.key_id = Some("key-1".to_owned());
    let jwks = dir.join("jwks.json");
    std::fs::write(&jwks, json!({ "keys": [jwk] }).to_string()).unwrap();

    let mut config = stores.config();
    config.auth.jwt.hs256_secret = tally_kit::Secret::new("a shared secret of the platform");
    config.auth.jwt.rs256_public_key_file = public_pem.display().to_string();
    config.auth.jwt.jwks_file = jwks.display().to_string();
    config.auth.jwt.issuer = "platform".to_owned();
    config.auth.jwt.audience = "tally".to_owned();
    let app = App::spawn(&stores, config).await;
    let hs = EncodingKey::from_secret(b"a shared secret of the platform").unwrap();
    let hs_header = Header::new(Algorithm::HS256);
    let rs_header = Header::new(Algorithm::RS256);
    let mut kid_header = Header::new(Algorithm::RS256);
    kid_header.kid = Some("key-1".to_owned());
    let good = [
        token(&claims("acme", "tally", 300), &hs_header, &hs),
        token(&claims("acme", "tally", 300), &rs_header, &rsa),
        token(&claims("acme", "tally", 300), &kid_header, &rsa),
    ];
    for jwt in &good {
        let (status, _, answer) = app.post_as(Some(jwt), "/v1/check/rate", json!({ "tenant_id": "acme" })).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(app.get_as(Some(jwt), "/v1/tenants/acme/limits").await.0, 200, "its own tenant's limits");
        let (status, _, _) = app.post_as(Some(jwt), "/v1/check/rate", json!({ "tenant_id": "globex" })).await;
        assert_eq!(status, 403, "the claim scopes the caller like a tenant key");
    }
    let other_secret = EncodingKey::from_secret(b"not the platform's secret").unwrap();
    let bad = [
        ("expired", token(&claims("acme", "tally", -3_600), &hs_header, &hs)),
        ("another audience", token(&claims("acme", "billing", 300), &hs_header, &hs)),
        ("another signer", token(&claims("acme", "tally", 300), &hs_header, &other_secret)),
        (
            "no tenant claim",
            token(
                &json!({ "iss": "platform", "aud": "tally", "exp": chrono::Utc::now().timestamp() + 300 }),
                &hs_header,
                &hs,
            ),
        ),
        ("a bad tenant claim", token(&claims("no/such tenant", "tally", 300), &hs_header, &hs)),
    ];
    for (what, jwt) in &bad {
        let (status, _, _) = app.post_as(Some(jwt), "/v1/check/rate", json!({ "tenant_id": "acme" })).await;
        assert_eq!(status, 401, "{what}");
    }
    let mut unsigned = good[0].rsplit_once('.').unwrap().0.to_owned();
    unsigned.push('.');
    assert_eq!(app.post_as(Some(&unsigned), "/v1/check/rate", json!({ "tenant_id": "acme" })).await.0, 401);
    app.stop().await;
    std::fs::remove_dir_all(&dir).unwrap();
    stores.drop().await;
}

#[tokio::test]
async fn auth_none_is_open_only_when_configured() {
    let stores = Stores::new().await;
    tenants(&stores).await;
    let mut config = stores.config();
    config.enforcer.auth = tally_enforcer::config::AuthMode::None;
    let app = App::spawn(&stores, config).await;
    let (status, _, _) = app.post_as(None, "/v1/check/rate", json!({ "tenant_id": "acme" })).await;
    assert_eq!(status, 200);
    assert_eq!(ask_as(&app, None, vec![vec![("tenant", "acme")]]).await.unwrap().overall_code, 1);
    app.stop().await;
    stores.drop().await;
}
