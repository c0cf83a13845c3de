//! Sending one meter event to Stripe, retried until Stripe has it or refuses it for good.
//! Every attempt carries the same `identifier` and `Idempotency-Key`, so a retry after a lost
//! answer, a timeout or a crash is never a second event.

use std::time::Duration;

use serde_json::Value;
use tally_kit::Secret;

/// One meter event to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeterEvent {
    pub event_name: String,
    pub customer: String,
    /// Exact decimal text.
    pub value: String,
    pub identifier: String,
    pub timestamp: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// Stripe refused the event for a reason a retry will not change.
    #[error("stripe refused the meter event ({status}): {message}")]
    Refused { status: u16, message: String },
    /// Every attempt failed with a retryable error (the last one given).
    #[error("stripe did not take the meter event after {attempts} attempts: {last}")]
    GaveUp { attempts: u32, last: String },
}

#[derive(Debug, Clone)]
pub struct StripeClient {
    http: reqwest::Client,
    base: String,
    key: Secret,
    max_attempts: u32,
}

enum Attempt {
    Taken,
    Retry(String),
    Refused(u16, String),
}

impl StripeClient {
    pub fn new(base: &str, key: Secret, timeout: Duration, max_attempts: u32) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder().timeout(timeout).build()?;
        Ok(Self { http, base: base.trim_end_matches('/').to_owned(), key, max_attempts: max_attempts.max(1) })
    }

    async fn attempt(&self, event: &MeterEvent) -> Attempt {
        let timestamp = event.timestamp.to_string();
        let form = [
            ("event_name", event.event_name.as_str()),
            ("payload[stripe_customer_id]", event.customer.as_str()),
            ("payload[value]", event.value.as_str()),
            ("identifier", event.identifier.as_str()),
            ("timestamp", timestamp.as_str()),
        ];
        let sent = self
            .http
            .post(format!("{}/v1/billing/meter_events", self.base))
            .bearer_auth(self.key.expose())
            .header("Idempotency-Key", &event.identifier)
            .form(&form)
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            Err(error) => return Attempt::Retry(error.to_string()),
        };
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        let error = &body["error"];
        match status {
            200 => Attempt::Taken,
            // Stripe already holds an event with this identifier: it is ours, sent before.
            400 if error["code"] == "resource_already_exists" && error["param"] == "identifier" => Attempt::Taken,
            429 | 500..=599 => Attempt::Retry(format!("{status} {}", error["message"].as_str().unwrap_or("(no body)"))),
            _ => Attempt::Refused(status, error["message"].as_str().unwrap_or("(no Stripe error body)").to_owned()),
        }
    }

    /// Sends until Stripe has the event: backoff 0.2 s × 2ⁿ (at most 10 s) with full jitter.
    pub async fn send(&self, event: &MeterEvent) -> Result<(), SendError> {
        let mut last = String::new();
        for attempt in 0..self.max_attempts {
            match self.attempt(event).await {
                Attempt::Taken => return Ok(()),
                Attempt::Refused(status, message) => return Err(SendError::Refused { status, message }),
                Attempt::Retry(reason) => last = reason,
            }
            let ceiling = Duration::from_millis(200).saturating_mul(1 << attempt.min(6)).min(Duration::from_secs(10));
            tokio::time::sleep(ceiling.mul_f64(jitter())).await;
        }
        Err(SendError::GaveUp { attempts: self.max_attempts, last })
    }
}

impl StripeClient {
    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        let response = self.http.get(format!("{}{path}", self.base)).bearer_auth(self.key.expose()).send().await?;
        let status = response.status();
        let body: Value = response.json().await?;
        if !status.is_success() {
            anyhow::bail!("stripe GET {path}: {status} {}", body["error"]["message"]);
        }
        Ok(body)
    }

    /// Meter ids by `event_name`.
    pub async fn meters_by_event_name(&self) -> anyhow::Result<std::collections::HashMap<String, String>> {
        let meters = self.get("/v1/billing/meters?limit=100").await?;
        Ok(meters["data"]
            .as_array()
            .map(|data| {
                data.iter()
                    .filter_map(|m| Some((m["event_name"].as_str()?.to_owned(), m["id"].as_str()?.to_owned())))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// The meter's aggregated value per window for one customer over `[start, end)`.
    pub async fn summaries(
        &self,
        meter: &str,
        customer: &str,
        start: i64,
        end: i64,
        window: crate::config::Window,
    ) -> anyhow::Result<std::collections::HashMap<i64, f64>> {
        let path = format!(
            "/v1/billing/meters/{meter}/event_summaries?customer={customer}&start_time={start}&end_time={end}&value_grouping_window={}&limit=100",
            window.granularity()
        );
        let summaries = self.get(&path).await?;
        Ok(summaries["data"]
            .as_array()
            .map(|data| {
                data.iter().filter_map(|s| Some((s["start_time"].as_i64()?, s["aggregated_value"].as_f64()?))).collect()
            })
            .unwrap_or_default())
    }
}

/// A factor in [0.1, 1) from the clock's nanoseconds: enough to spread retries apart.
fn jitter() -> f64 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    0.1 + f64::from(nanos % 900) / 1_000.0
}
