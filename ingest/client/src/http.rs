//! Batches as `POST /v1/events`.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use crate::worker::Attempt;
use crate::{ClientConfig, EmitError, Queued};

#[derive(Debug)]
pub struct HttpTransport {
    client: reqwest::Client,
    url: String,
    api_key: String,
}

impl HttpTransport {
    pub fn new(config: &ClientConfig) -> Result<Self, EmitError> {
        let client = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .build()
            .map_err(|e| EmitError::Invalid(format!("http client: {e}")))?;
        let url = format!("{}/v1/events", config.endpoint.trim_end_matches('/'));
        Ok(Self { client, url, api_key: config.api_key.clone() })
    }

    pub(crate) async fn send(&self, batch: &[Queued]) -> Attempt {
        let events: Vec<&tally_schemas::UsageEvent> = batch.iter().map(|q| &q.event).collect();
        let request = self.client.post(&self.url).bearer_auth(&self.api_key).json(&events);
        let response = match request.send().await {
            Ok(response) => response,
            Err(error) => return Attempt::Retry { after: None, error: error.to_string() },
        };
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .map(Duration::from_secs);
        let body: Value = response.json().await.unwrap_or(Value::Null);
        match status {
            StatusCode::ACCEPTED | StatusCode::UNPROCESSABLE_ENTITY => Attempt::Done(outcomes(&body, batch.len())),
            StatusCode::TOO_MANY_REQUESTS => Attempt::Retry { after: retry_after, error: message(&body, status) },
            status if status.is_server_error() => Attempt::Retry { after: retry_after, error: message(&body, status) },
            status => Attempt::Fatal(EmitError::Refused { status: status.as_u16(), message: message(&body, status) }),
        }
    }
}

fn message(body: &Value, status: StatusCode) -> String {
    body["error"]["message"].as_str().map_or_else(|| format!("HTTP {status}"), str::to_owned)
}

/// Per-event outcomes from the answer's `results` (by index).
fn outcomes(body: &Value, count: usize) -> Vec<Result<(), EmitError>> {
    let mut outcomes =
        vec![Err(EmitError::Rejected { reason: "unknown".to_owned(), message: "no result".to_owned() }); count];
    for result in body["results"].as_array().into_iter().flatten() {
        let Some(index) = result["index"].as_u64().and_then(|i| usize::try_from(i).ok()).filter(|i| *i < count) else {
            continue;
        };
        outcomes[index] = match result["status"].as_str() {
            Some("accepted") => Ok(()),
            _ => Err(EmitError::Rejected {
                reason: result["reason"].as_str().unwrap_or("rejected").to_owned(),
                message: result["errors"]
                    .as_array()
                    .map(|errors| errors.iter().filter_map(|e| e["message"].as_str()).collect::<Vec<_>>().join("; "))
                    .unwrap_or_default(),
            }),
        };
    }
    outcomes
}
