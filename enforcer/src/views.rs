//! What a tenant's key (or an admin key) may read: the tenant's limits with current use, and its
//! recent denials.

use axum::Extension;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tally_kit::auth::Principal;
use tally_schemas::tiers::{Limit, RateLimit};

use crate::api::{AppState, error};
use crate::reservations::Resource;

fn cap_view(limit: Limit, reported: u64, in_use: u64) -> serde_json::Value {
    match limit {
        Limit::Unlimited => json!({ "limit": null, "used": in_use, "reported": reported, "percent": null }),
        Limit::Capped(cap) => json!({
            "limit": cap,
            "used": in_use,
            "reported": reported,
            "held": in_use.saturating_sub(reported),
            "remaining": cap.saturating_sub(in_use),
            "percent": if cap == 0 { 100.0 } else { in_use as f64 * 100.0 / cap as f64 },
        }),
    }
}

/// A tenant's status, tier, limits, current usage (reported plus outstanding holds) and percentages.
pub async fn tenant_limits(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(tenant): Path<String>,
) -> Response {
    let tenant = match state.access.read_for(&principal, &tenant) {
        Ok(tenant) => tenant,
        Err(refusal) => return refusal.into_response(),
    };
    let checks = &state.checks;
    let found = checks.registry.with(tenant, |found| found.map(|(_, entry)| (entry.status, entry.tier, *entry.limits)));
    let Some((status, tier, limits)) = found else {
        return error(
            StatusCode::NOT_FOUND,
            "unknown_tenant",
            format!("tenant {tenant} is not in the platform's registry"),
        );
    };
    let usage = checks.usage.get(tenant);
    let users = checks.in_use(tenant, Resource::Users, &limits).await;
    let storage = checks.in_use(tenant, Resource::Storage, &limits).await;
    let rate = match limits.rate {
        RateLimit::Unlimited => json!(null),
        RateLimit::Quota(quota) => json!({ "per_second": quota.per_second, "burst": quota.burst }),
    };
    Json(json!({
        "tenant_id": tenant,
        "status": status,
        "tier": tier,
        "users": cap_view(limits.max_users, usage.users, users.unwrap_or(usage.users)),
        "storage_bytes": cap_view(limits.max_storage_bytes, usage.storage_bytes, storage.unwrap_or(usage.storage_bytes)),
        "storage_alert_bytes": limits.storage_alert_bytes(),
        "rate_limit": rate,
        "usage_age_ms": checks.usage.age().map(|age| age.as_millis() as u64),
        "holds_unavailable": users.is_none() || storage.is_none(),
    }))
    .into_response()
}

pub async fn tenant_denials(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(tenant): Path<String>,
) -> Response {
    match state.access.read_for(&principal, &tenant) {
        Ok(tenant) => {
            Json(json!({ "tenant_id": tenant, "denials": state.checks.audit.for_tenant(tenant, 100) })).into_response()
        }
        Err(refusal) => refusal.into_response(),
    }
}
