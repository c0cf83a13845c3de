//! One sync run: for every billable (tenant, metric, window) with a Stripe customer, send what
//! Stripe does not have yet — unfinished events first (same identifier), then the difference
//! between Tally's total and what Stripe acknowledged.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use clickhouse::Row;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use tally_schemas::Quantity;

use crate::config::BillingSection;
use crate::ledger::{self, Entry, Key};
use crate::stripe::{MeterEvent, StripeClient};

#[derive(Debug, Row, Deserialize)]
struct Total {
    tenant_id: String,
    metric: String,
    window_start: u32,
    total: i128,
}

/// Tally's total per (tenant, billable metric, window) over `[start, end)`, from the rollups.
async fn totals(
    clickhouse: &clickhouse::Client,
    settings: &BillingSection,
    start: i64,
    end: i64,
) -> clickhouse::error::Result<Vec<Total>> {
    let metrics: Vec<&str> = settings.meters.keys().map(String::as_str).collect();
    clickhouse
        .query(
            "SELECT tenant_id, metric, toUInt32(window_start) AS window_start, total FROM usage_windows \
             WHERE granularity = ? AND window_start >= toDateTime(?, 'UTC') AND window_start < toDateTime(?, 'UTC') \
             AND metric IN ? ORDER BY tenant_id, metric, window_start",
        )
        .bind(settings.window.granularity())
        .bind(start)
        .bind(end)
        .bind(&metrics)
        .fetch_all()
        .await
}

/// One meter event to send, with the ledger key it belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Planned {
    pub tenant_id: String,
    pub metric: String,
    pub window_start: i64,
    pub seq: i32,
    pub stripe_customer_id: String,
    pub event_name: String,
    pub value: String,
    pub identifier: String,
    /// `true` when a crash left it unacknowledged and it is sent again as it was.
    pub resend: bool,
}

/// What a run did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Report {
    pub planned: usize,
    pub sent: usize,
    pub resent: usize,
    /// Tenants with usage but no row in `stripe_customers`.
    pub tenants_without_customer: usize,
    /// Windows where Stripe already holds more than Tally's total (reported, never "unsent").
    pub over_billed_windows: usize,
    /// tenant → the errors of its events that did not reach Stripe.
    pub failures: BTreeMap<String, Vec<String>>,
    /// Seconds since the end of the oldest window this run had to send something for (0 when
    /// nothing was missing): how far behind Stripe is.
    pub oldest_unsynced_lag_secs: i64,
}

/// The windows a run covers: settled ones inside Stripe's 35-day limit.
pub fn range(settings: &BillingSection, now: DateTime<Utc>) -> (i64, i64) {
    let step = settings.window.seconds();
    let end = (now - TimeDelta::minutes(settings.settle_minutes)).timestamp().div_euclid(step) * step;
    let start = (now - TimeDelta::days(settings.lookback_days)).timestamp().div_euclid(step) * step + step;
    (start, end)
}

/// Works out every meter event the run must send.
pub async fn plan(
    pool: &PgPool,
    clickhouse: &clickhouse::Client,
    settings: &BillingSection,
    now: DateTime<Utc>,
    report: &mut Report,
) -> anyhow::Result<Vec<Planned>> {
    let (start, end) = range(settings, now);
    let customers: HashMap<String, String> =
        sqlx::query_as::<_, (String, String)>("SELECT tenant_id, stripe_customer_id FROM stripe_customers")
            .fetch_all(pool)
            .await?
            .into_iter()
            .collect();
    let totals = totals(clickhouse, settings, start, end).await?;
    let since = DateTime::from_timestamp(start, 0).unwrap_or_default();
    let ledger = ledger::load(pool, since).await?;
    let mut planned = Vec::new();
    let mut without_customer = std::collections::HashSet::new();
    for total in totals {
        let Some(customer) = customers.get(&total.tenant_id) else {
            without_customer.insert(total.tenant_id.clone());
            continue;
        };
        let Some(event_name) = settings.meters.get(&total.metric) else { continue };
        let key: Key = (total.tenant_id.clone(), total.metric.clone(), i64::from(total.window_start));
        let entries = ledger.get(&key).map(Vec::as_slice).unwrap_or_default();
        let planned_for = |entry: &Entry, resend: bool| Planned {
            tenant_id: key.0.clone(),
            metric: key.1.clone(),
            window_start: key.2,
            seq: entry.seq,
            stripe_customer_id: entry.stripe_customer_id.clone(),
            event_name: entry.event_name.clone(),
            value: entry.amount.to_string(),
            identifier: entry.identifier.clone(),
            resend,
        };
        let pending: Vec<&Entry> = entries.iter().filter(|e| !e.acknowledged).collect();
        if !pending.is_empty() {
            // Finish what a crashed run started before deciding anything new for this window.
            planned.extend(pending.into_iter().map(|entry| planned_for(entry, true)));
            continue;
        }
        let sent: i128 = entries.iter().map(|e| e.amount.units()).sum();
        let missing = total.total - sent;
        if missing < 0 {
            report.over_billed_windows += 1;
            tracing::warn!(tenant = key.0, metric = key.1, window = key.2, "Stripe holds more than Tally's total");
            continue;
        }
        if missing == 0 {
            continue;
        }
        let seq = entries.iter().map(|e| e.seq + 1).max().unwrap_or(0);
        let entry = Entry {
            seq,
            amount: Quantity::from_units(missing),
            identifier: ledger::identifier(&key, seq),
            acknowledged: false,
            stripe_customer_id: customer.clone(),
            event_name: event_name.clone(),
        };
        planned.push(planned_for(&entry, false));
    }
    report.tenants_without_customer = without_customer.len();
    report.planned = planned.len();
    report.oldest_unsynced_lag_secs = planned
        .iter()
        .map(|p| p.window_start + settings.window.seconds())
        .min()
        .map_or(0, |end| (now.timestamp() - end).max(0));
    Ok(planned)
}

/// One (customer, meter, window) where Stripe's summary and Tally's total differ.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Difference {
    pub tenant_id: String,
    pub stripe_customer_id: String,
    pub metric: String,
    pub window_start: i64,
    pub tally: f64,
    pub stripe: f64,
}

/// Compares, per billed customer and meter, Tally's window totals with Stripe's meter event
/// summaries over `[start, end)` (window-aligned) and lists every difference.
pub async fn parity(
    pool: &PgPool,
    clickhouse: &clickhouse::Client,
    stripe: &StripeClient,
    settings: &BillingSection,
    (start, end): (i64, i64),
) -> anyhow::Result<Vec<Difference>> {
    let customers: Vec<(String, String)> =
        sqlx::query_as("SELECT tenant_id, stripe_customer_id FROM stripe_customers ORDER BY tenant_id")
            .fetch_all(pool)
            .await?;
    let totals = totals(clickhouse, settings, start, end).await?;
    let tally: HashMap<(String, String, i64), i128> =
        totals.into_iter().map(|t| ((t.tenant_id, t.metric, i64::from(t.window_start)), t.total)).collect();
    let meters = stripe.meters_by_event_name().await?;
    let mut differences = Vec::new();
    for (tenant, customer) in &customers {
        for (metric, event_name) in &settings.meters {
            let Some(meter) = meters.get(event_name) else {
                anyhow::bail!("Stripe has no meter with event_name {event_name:?} (for metric {metric})");
            };
            let summaries = stripe.summaries(meter, customer, start, end, settings.window).await?;
            let mut at = start;
            while at < end {
                let ours = tally.get(&(tenant.clone(), metric.clone(), at)).copied().unwrap_or(0) as f64 / 1e9;
                let theirs = summaries.get(&at).copied().unwrap_or(0.0);
                if (ours - theirs).abs() > 1e-9 * ours.abs().max(1.0) {
                    differences.push(Difference {
                        tenant_id: tenant.clone(),
                        stripe_customer_id: customer.clone(),
                        metric: metric.clone(),
                        window_start: at,
                        tally: ours,
                        stripe: theirs,
                    });
                }
                at += settings.window.seconds();
            }
        }
    }
    Ok(differences)
}

/// Sends the planned events, `concurrency` at a time; each is written to the ledger as pending
/// first and marked acknowledged once Stripe has it. One event's failure stops nothing else.
pub async fn send(
    pool: &PgPool,
    stripe: &StripeClient,
    planned: Vec<Planned>,
    concurrency: usize,
    report: &mut Report,
) {
    let pool = Arc::new(pool.clone());
    // Drawn only on an interactive terminal (indicatif hides it otherwise): long catch-up runs.
    let progress = indicatif::ProgressBar::new(planned.len() as u64).with_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} meter events, {per_sec}, eta {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let outcomes = futures_util::stream::iter(planned)
        .map(|item| {
            let pool = Arc::clone(&pool);
            async move {
                let outcome = send_one(&pool, stripe, &item).await;
                (item, outcome)
            }
        })
        .buffer_unordered(concurrency.max(1))
        .inspect(|_| progress.inc(1))
        .collect::<Vec<_>>()
        .await;
    progress.finish_and_clear();
    for (item, outcome) in outcomes {
        match outcome {
            Ok(()) if item.resend => report.resent += 1,
            Ok(()) => report.sent += 1,
            Err(error) => report
                .failures
                .entry(item.tenant_id.clone())
                .or_default()
                .push(format!("{} window {}: {error}", item.metric, item.window_start)),
        }
    }
}

async fn send_one(pool: &PgPool, stripe: &StripeClient, item: &Planned) -> anyhow::Result<()> {
    if !item.resend {
        let key: Key = (item.tenant_id.clone(), item.metric.clone(), item.window_start);
        let entry = Entry {
            seq: item.seq,
            amount: item.value.parse().map_err(|e| anyhow::anyhow!("amount {}: {e}", item.value))?,
            identifier: item.identifier.clone(),
            acknowledged: false,
            stripe_customer_id: item.stripe_customer_id.clone(),
            event_name: item.event_name.clone(),
        };
        if !ledger::write_pending(pool, &key, &entry).await? {
            // Another run wrote this row first and owns it; a later run resends it if unfinished.
            return Ok(());
        }
    }
    let event = MeterEvent {
        event_name: item.event_name.clone(),
        customer: item.stripe_customer_id.clone(),
        value: item.value.clone(),
        identifier: item.identifier.clone(),
        timestamp: item.window_start,
    };
    stripe.send(&event).await?;
    ledger::acknowledge(pool, &item.identifier).await?;
    Ok(())
}
