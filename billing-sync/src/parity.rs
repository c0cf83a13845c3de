//! The parity report: per billed stream and window, Stripe's meter summaries against the
//! ledger's whole units, and Tally's exact totals against what the ledger accounted for.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use tally_schemas::Quantity;

use crate::config::BillingSection;
use crate::ledger::{Kind, State};
use crate::plan::Stream;
use crate::stripe::StripeClient;

/// One window where Stripe, the ledger and Tally do not line up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Difference {
    pub tenant_id: String,
    pub stripe_customer_id: String,
    pub metric: String,
    pub window_start: i64,
    /// `stripe`: Stripe's summary differs from the whole units the ledger has acknowledged
    /// (someone else's events, or lost ones); `unsynced`: Tally's total moved since the last
    /// run (late events, or rows Stripe refused).
    pub kind: &'static str,
    /// Tally's exact total for the window.
    pub tally: String,
    /// Whole units the ledger has acknowledged for the window.
    pub billed: i64,
    /// Stripe's aggregated value for the window.
    pub stripe: i64,
}

/// A stream's fraction below one unit, accounted but not yet sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Carried {
    pub tenant_id: String,
    pub metric: String,
    pub unit: String,
    pub carried: String,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct Parity {
    pub differences: Vec<Difference>,
    pub carried: Vec<Carried>,
}

/// Compares every stream over `[start, end)` (aligned to the configured window).
pub async fn parity(
    stripe: &StripeClient,
    settings: &BillingSection,
    streams: &[Stream],
    (start, end): (i64, i64),
) -> anyhow::Result<Parity> {
    let step = settings.window.seconds();
    let end = end.div_euclid(step) * step;
    let meters = stripe.meters().await?;
    let mut report = Parity::default();
    for stream in streams {
        let Some(meter) = meters.get(&stream.event_name) else {
            anyhow::bail!("Stripe has no meter with event_name {:?} (for metric {})", stream.event_name, stream.key.1);
        };
        let summaries: HashMap<i64, f64> = if end > start {
            stripe.summaries(&meter.id, &stream.customer, (start, end), settings.window).await?
        } else {
            HashMap::new()
        };
        let stripe_at = |at: i64| summaries.get(&at).copied().unwrap_or(0.0).round() as i64;
        let mut billed: BTreeMap<i64, i64> = BTreeMap::new();
        let mut tally: BTreeMap<i64, i128> = BTreeMap::new();
        for window in &stream.windows {
            let at = window.start.div_euclid(step) * step;
            *tally.entry(at).or_default() += window.tally.units();
            for row in &window.rows {
                let counted = row.state == State::Acknowledged && row.kind != Kind::Carry;
                if counted && row.stripe_customer_id == stream.customer {
                    *billed.entry(at).or_default() += row.value;
                }
            }
        }
        let difference = |at: i64, kind: &'static str| Difference {
            tenant_id: stream.key.0.clone(),
            stripe_customer_id: stream.customer.clone(),
            metric: stream.key.1.clone(),
            window_start: at,
            kind,
            tally: Quantity::from_units(tally.get(&at).copied().unwrap_or(0)).to_string(),
            billed: billed.get(&at).copied().unwrap_or(0),
            stripe: stripe_at(at),
        };
        let mut at = start;
        while at < end {
            if stripe_at(at) != billed.get(&at).copied().unwrap_or(0) {
                report.differences.push(difference(at, "stripe"));
            }
            at += step;
        }
        for window in &stream.windows {
            if window.start < end && window.tally.units() != window.accounted() {
                report.differences.push(difference(window.start.div_euclid(step) * step, "unsynced"));
            }
        }
        let carried = stream.head.carried();
        if carried != Quantity::ZERO {
            report.carried.push(Carried {
                tenant_id: stream.key.0.clone(),
                metric: stream.key.1.clone(),
                unit: stream.head.unit.to_string(),
                carried: carried.to_string(),
            });
        }
    }
    Ok(report)
}
