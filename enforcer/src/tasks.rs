//! Background work: refreshing usage (and raising storage alerts), purging expired
//! reservations, and keeping the gauges current.

use std::sync::Arc;
use std::time::Duration;

use clickhouse::Client;
use serde_json::json;
use tally_schemas::tiers::Limit;
use tokio_util::sync::CancellationToken;

use crate::checks::Checks;

async fn every(period: Duration, stopping: &CancellationToken) -> bool {
    tokio::select! {
        () = stopping.cancelled() => false,
        () = tokio::time::sleep(period) => true,
    }
}

/// Reads usage every `usage_refresh_ms` and alerts on storage crossings.
pub async fn refresh_usage(checks: Arc<Checks>, client: Client, http: reqwest::Client, stopping: CancellationToken) {
    let period = Duration::from_millis(checks.settings.usage_refresh_ms);
    loop {
        match checks.usage.refresh(&client).await {
            Ok(_) => alert_storage(&checks, &http).await,
            Err(error) => tracing::warn!(error = %error, "reading current usage failed; checks use the last state"),
        }
        if !every(period, &stopping).await {
            return;
        }
    }
}

/// Alerts each tenant that crossed 80 % of its storage cap, once per crossing across every replica
/// and restart (`tally.storage_alerts` decides which replica alerts).
async fn alert_storage(checks: &Checks, http: &reqwest::Client) {
    let mut above = Vec::new();
    for (tenant, usage) in checks.usage.snapshot() {
        let cap = checks.registry.with(&tenant, |found| found.map(|(_, entry)| *entry.limits));
        let Some(limits) = cap else { continue };
        let (Some(alert_at), Limit::Capped(cap)) = (limits.storage_alert_bytes(), limits.max_storage_bytes) else {
            continue;
        };
        let is_above = usage.storage_bytes >= alert_at;
        if is_above {
            above.push((tenant.clone(), usage.storage_bytes as f64 * 100.0 / cap.max(1) as f64));
        }
        match checks.alerts.observe(&checks.pool, &tenant, usage.storage_bytes, cap, is_above).await {
            Ok(true) => {}
            Ok(false) => continue,
            Err(error) => {
                tracing::warn!(tenant, error = %error, "recording a storage alert failed; trying again next refresh");
                continue;
            }
        }
        checks.metrics.storage_alerts.inc();
        tracing::warn!(tenant, storage_bytes = usage.storage_bytes, cap, "tenant passed 80 % of its storage cap");
        let webhook = checks.settings.alert_webhook.clone();
        if webhook.is_empty() {
            continue;
        }
        let body = json!({
            "type": "storage_cap_80_percent",
            "tenant_id": tenant,
            "storage_bytes": usage.storage_bytes,
            "max_storage_bytes": cap,
            "percent": usage.storage_bytes.saturating_mul(100) / cap.max(1),
        });
        let http = http.clone();
        tokio::spawn(async move {
            if let Err(error) = http.post(&webhook).json(&body).send().await.and_then(|r| r.error_for_status()) {
                tracing::warn!(error = %error, "the storage alert webhook failed");
            }
        });
    }
    checks.metrics.tenants_above_storage_alert.set(i64::try_from(checks.alerts.count()).unwrap_or(i64::MAX));
    checks.metrics.storage_alert_series.publish(above, checks.settings.alert_series_max);
}

/// Judges the registry's freshness every second; purges old reservations and updates the
/// gauges every `housekeeping_ms`.
pub async fn housekeeping(checks: Arc<Checks>, stopping: CancellationToken) {
    let tick = Duration::from_millis(checks.settings.housekeeping_ms.min(1_000));
    let period = Duration::from_millis(checks.settings.housekeeping_ms);
    let stale_after = Duration::from_millis(checks.settings.registry_stale_after_ms);
    let mut since_purge = Duration::ZERO;
    while every(tick, &stopping).await {
        checks.registry.judge_freshness(stale_after);
        since_purge += tick;
        if since_purge < period {
            continue;
        }
        since_purge = Duration::ZERO;
        if let Err(error) = crate::reservations::purge_expired(&checks.pool).await {
            tracing::warn!(error = %error, "purging expired reservations failed");
        }
        let metrics = &checks.metrics;
        let seconds = |age: Option<Duration>| age.map_or(-1, |age| i64::try_from(age.as_secs()).unwrap_or(i64::MAX));
        metrics.usage_age_seconds.set(seconds(checks.usage.age()));
        metrics.registry_age_seconds.set(seconds(checks.registry.age()));
        metrics.tenants_known.set(i64::try_from(checks.registry.len()).unwrap_or(i64::MAX));
        metrics.audit_log_bytes.set(i64::try_from(checks.audit.bytes()).unwrap_or(i64::MAX));
    }
}
