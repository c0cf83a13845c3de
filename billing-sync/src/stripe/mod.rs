//! What billing-sync asks of Stripe, through async-stripe's requests and types: meters (paged),
//! meter events, meter event adjustments (cancel) and meter event summaries (paged). Every
//! write carries an `Idempotency-Key` equal to its ledger row's identifier, so a retry after a
//! lost answer, a timeout or a crash is never a second event.

mod transport;

use std::collections::HashMap;
use std::time::Duration;

use futures_util::TryStreamExt;
use stripe_billing::billing_meter::ListBillingMeter;
use stripe_billing::billing_meter_event::CreateBillingMeterEvent;
use stripe_billing::billing_meter_event_adjustment::{
    CreateBillingMeterEventAdjustment, CreateBillingMeterEventAdjustmentCancel,
};
use stripe_billing::billing_meter_event_summary::{
    ListIdBillingMeterEventSummary, ListIdBillingMeterEventSummaryValueGroupingWindow as Grouping,
};
use stripe_billing::{
    BillingMeterEventAdjustmentType, BillingMeterResourceAggregationSettingsFormula, BillingMeterStatus,
};
use stripe_client_core::{IdempotencyKey, RequestStrategy, StripeRequest};
use tally_kit::Secret;

pub use self::transport::{StripeError, Transport};
use crate::config::Window;

/// Stripe's largest page.
const PAGE: i64 = 100;

/// A meter as billing-sync needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meter {
    pub id: String,
    pub active: bool,
    /// Only `sum` meters add corrections and negative events up.
    pub sums: bool,
}

/// What Stripe did with one write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Stripe has it (now, or from an earlier attempt with the same identifier or key).
    Taken,
    /// Stripe refused it for good; `stream_wide` when the cause (the customer, the meter) is
    /// shared by every window of the tenant's metric.
    Refused { code: String, message: String, stream_wide: bool },
    /// Not known to have reached Stripe after every attempt: the next run sends it again.
    Failed(StripeError),
}

/// One meter event, as a ledger row describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeterEvent<'a> {
    pub event_name: &'a str,
    pub customer: &'a str,
    pub value: i64,
    pub identifier: &'a str,
    pub timestamp: i64,
}

#[derive(Debug, Clone)]
pub struct StripeClient {
    transport: Transport,
}

fn key(identifier: &str) -> RequestStrategy {
    // Identifiers are at most 100 characters, within the key's 255.
    IdempotencyKey::new(identifier).map_or(RequestStrategy::Once, RequestStrategy::Idempotent)
}

fn classify(result: Result<(), StripeError>, stream_wide_params: &[&str]) -> Outcome {
    match result {
        Ok(()) => Outcome::Taken,
        Err(error @ StripeError::Api { .. }) if !error.is_unauthorized() => {
            let StripeError::Api { code, param, message, .. } = &error else { unreachable!("matched above") };
            let param = param.as_deref().unwrap_or_default();
            Outcome::Refused {
                code: error.code().to_owned(),
                message: message.clone(),
                stream_wide: code.as_deref() == Some("resource_missing")
                    && stream_wide_params.iter().any(|p| param.starts_with(p)),
            }
        }
        Err(error) => Outcome::Failed(error),
    }
}

impl StripeClient {
    pub fn new(base: &str, key: Secret, timeout: Duration, max_attempts: u32) -> Result<Self, reqwest::Error> {
        Ok(Self { transport: Transport::new(base, key, timeout, max_attempts)? })
    }

    /// Every meter, by `event_name`, following `has_more` to the end.
    pub async fn meters(&self) -> Result<HashMap<String, Meter>, StripeError> {
        let meters: Vec<stripe_billing::BillingMeter> =
            ListBillingMeter::new().limit(PAGE).paginate().stream(&self.transport).try_collect().await?;
        Ok(meters
            .into_iter()
            .map(|m| {
                let meter = Meter {
                    id: m.id.to_string(),
                    active: m.status == BillingMeterStatus::Active,
                    sums: m.default_aggregation.formula == BillingMeterResourceAggregationSettingsFormula::Sum,
                };
                (m.event_name, meter)
            })
            .collect())
    }

    /// Sends one meter event. An event Stripe already holds under this identifier is taken.
    pub async fn send_event(&self, event: &MeterEvent<'_>) -> Outcome {
        let payload = HashMap::from([
            ("stripe_customer_id".to_owned(), event.customer.to_owned()),
            ("value".to_owned(), event.value.to_string()),
        ]);
        let request = CreateBillingMeterEvent::new(event.event_name, payload)
            .identifier(event.identifier)
            .timestamp(event.timestamp);
        let result = request.customize().request_strategy(key(event.identifier)).send(&self.transport).await;
        match result {
            Err(StripeError::Api { code: Some(code), param: Some(param), .. })
                if code == "resource_already_exists" && param == "identifier" =>
            {
                Outcome::Taken
            }
            other => classify(other.map(drop), &["payload", "event_name"]),
        }
    }

    /// Cancels the event `cancels` with a meter event adjustment, keyed by `identifier`.
    pub async fn cancel_event(&self, event_name: &str, cancels: &str, identifier: &str) -> Outcome {
        let mut cancel = CreateBillingMeterEventAdjustmentCancel::new();
        cancel.identifier = Some(cancels.to_owned());
        let request =
            CreateBillingMeterEventAdjustment::new(event_name, BillingMeterEventAdjustmentType::Cancel).cancel(cancel);
        let result = request.customize().request_strategy(key(identifier)).send(&self.transport).await;
        classify(result.map(drop), &["event_name"])
    }

    /// The meter's aggregated value per window for one customer over `[start, end)`, every page.
    pub async fn summaries(
        &self,
        meter: &str,
        customer: &str,
        (start, end): (i64, i64),
        window: Window,
    ) -> Result<HashMap<i64, f64>, StripeError> {
        let grouping = match window {
            Window::Hour => Grouping::Hour,
            Window::Day => Grouping::Day,
        };
        let summaries: Vec<stripe_billing::BillingMeterEventSummary> =
            ListIdBillingMeterEventSummary::new(meter, customer, end, start)
                .value_grouping_window(grouping)
                .limit(PAGE)
                .paginate()
                .stream(&self.transport)
                .try_collect()
                .await?;
        Ok(summaries.into_iter().map(|s| (s.start_time, s.aggregated_value)).collect())
    }
}
