//! async-stripe's requests over Tally's transport.
//!
//! async-stripe builds every request (paths, form encoding, pagination cursors) and decodes
//! every answer into Stripe's types; this module is its [`StripeClient`]. It replaces
//! async-stripe's hyper client for three reasons:
//!
//! * connections are pooled (async-stripe's client keeps none, so every meter event would pay a
//!   new TCP and TLS handshake to api.stripe.com);
//! * the retry policy keeps **one** Idempotency-Key across attempts: async-stripe's
//!   `RequestStrategy::Idempotent` never retries, and its retrying strategies draw a new key per
//!   request, which after a lost answer would make a second event;
//! * backoff is 0.2 s × 2ⁿ (at most 10 s) with full jitter, bounded per attempt by the request
//!   timeout, and honours `Stripe-Should-Retry` (async-stripe's doubles from 1 s, no jitter).
//!
//! Retried: transport errors, timeouts, 409 (`idempotency_key_in_use`), 424, 429 and 5xx, and
//! answers that are not Stripe's (a proxy's 502). Everything else is Stripe's final word.

use std::time::Duration;

use bytes::Bytes;
use stripe_client_core::{CustomizedStripeRequest, StripeClient, StripeClientErr, StripeMethod};
use tally_kit::Secret;

/// A failed Stripe call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StripeError {
    /// Stripe's answer, with its error object.
    #[error("stripe answered {status} {kind}{}: {message} (request {request_id})", code.as_deref().map(|c| format!(" {c}")).unwrap_or_default())]
    Api { status: u16, kind: String, code: Option<String>, param: Option<String>, message: String, request_id: String },
    /// Every attempt failed with something a retry might fix (the last one given).
    #[error("stripe did not answer usably after {attempts} attempts: {last}")]
    Unavailable { attempts: u32, last: String },
    #[error("stripe's answer did not decode: {0}")]
    Decode(String),
}

impl StripeClientErr for StripeError {
    fn deserialize_err(msg: impl std::fmt::Display) -> Self {
        Self::Decode(msg.to_string())
    }
}

impl StripeError {
    /// Stripe's code (or its error type when it gave no code).
    pub fn code(&self) -> &str {
        match self {
            StripeError::Api { code: Some(code), .. } => code,
            StripeError::Api { kind, .. } => kind,
            StripeError::Unavailable { .. } => "unavailable",
            StripeError::Decode(_) => "undecodable_answer",
        }
    }

    /// 401 / 403: the key is wrong for everything, not for one event.
    pub fn is_unauthorized(&self) -> bool {
        matches!(self, StripeError::Api { status: 401 | 403, .. })
    }
}

/// Tally's Stripe client: a pooled HTTP client, the key, and the retry policy.
#[derive(Debug, Clone)]
pub struct Transport {
    http: reqwest::Client,
    base: String,
    key: Secret,
    max_attempts: u32,
}

enum Attempt {
    Done(Bytes),
    Final(StripeError),
    Retry { reason: String, stripe_says_no: bool },
}

impl Transport {
    pub fn new(base: &str, key: Secret, timeout: Duration, max_attempts: u32) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder().timeout(timeout).pool_idle_timeout(Duration::from_secs(60)).build()?;
        Ok(Self { http, base: base.trim_end_matches('/').to_owned(), key, max_attempts: max_attempts.max(1) })
    }

    async fn attempt(&self, request: &reqwest::Request) -> Attempt {
        let Some(request) = request.try_clone() else {
            return Attempt::Final(StripeError::Decode("request body cannot be resent".to_owned()));
        };
        let response = match self.http.execute(request).await {
            Ok(response) => response,
            Err(error) => return Attempt::Retry { reason: error.to_string(), stripe_says_no: false },
        };
        let status = response.status().as_u16();
        let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let request_id = header("request-id").unwrap_or_default();
        let should_retry = header("stripe-should-retry");
        let body = match response.bytes().await {
            Ok(body) => body,
            Err(error) => {
                return Attempt::Retry { reason: format!("{status}: body lost: {error}"), stripe_says_no: false };
            }
        };
        if (200..300).contains(&status) {
            return Attempt::Done(body);
        }
        let decoded = std::str::from_utf8(&body)
            .ok()
            .and_then(|text| miniserde::json::from_str::<stripe_shared::Error>(text).ok());
        let Some(decoded) = decoded else {
            // Not Stripe's error object: a proxy or a connection cut between us and Stripe.
            return Attempt::Retry { reason: format!("{status} without Stripe's error body"), stripe_says_no: false };
        };
        let error = decoded.error;
        let error = StripeError::Api {
            status,
            kind: error.type_.as_str().to_owned(),
            code: error.code.as_ref().map(|c| c.as_str().to_owned()),
            param: error.param.clone(),
            message: error.message.clone().unwrap_or_default(),
            request_id,
        };
        let retryable = matches!(status, 409 | 424 | 429 | 500..=599);
        match (retryable, should_retry.as_deref()) {
            (_, Some("true")) | (true, None) => Attempt::Retry { reason: error.to_string(), stripe_says_no: false },
            (true, Some(_)) => Attempt::Retry { reason: error.to_string(), stripe_says_no: true },
            (false, _) => Attempt::Final(error),
        }
    }
}

impl StripeClient for Transport {
    type Err = StripeError;

    async fn execute(&self, request: CustomizedStripeRequest) -> Result<Bytes, StripeError> {
        let (built, overrides) = request.into_pieces();
        let url = format!("{}/v1{}", self.base, built.path);
        let url = match &built.query {
            Some(query) => format!("{url}?{query}"),
            None => url,
        };
        let method = match built.method {
            StripeMethod::Get => reqwest::Method::GET,
            StripeMethod::Post => reqwest::Method::POST,
            StripeMethod::Delete => reqwest::Method::DELETE,
        };
        let mut request = self
            .http
            .request(method, url)
            .bearer_auth(self.key.expose())
            .header("stripe-version", stripe_client_core::VERSION.as_str());
        // The key chosen by the caller (derived from the ledger row) is kept for every attempt.
        if let Some(key) = overrides.request_strategy.as_ref().and_then(|s| s.get_key()) {
            request = request.header("idempotency-key", key.as_str());
        }
        if let Some(body) = built.body {
            request = request.header("content-type", "application/x-www-form-urlencoded").body(body);
        }
        let request = request.build().map_err(|e| StripeError::Decode(format!("building the request: {e}")))?;
        let mut last = String::new();
        for attempt in 0..self.max_attempts {
            match self.attempt(&request).await {
                Attempt::Done(body) => return Ok(body),
                Attempt::Final(error) => return Err(error),
                Attempt::Retry { reason, stripe_says_no } => {
                    tracing::debug!(attempt, %reason, "stripe request will be retried");
                    last = reason;
                    if stripe_says_no {
                        break;
                    }
                }
            }
            if attempt + 1 < self.max_attempts {
                let ceiling =
                    Duration::from_millis(200).saturating_mul(1 << attempt.min(6)).min(Duration::from_secs(10));
                tokio::time::sleep(ceiling.mul_f64(jitter())).await;
            }
        }
        Err(StripeError::Unavailable { attempts: self.max_attempts, last })
    }
}

/// A factor in [0.1, 1) from the clock's nanoseconds: enough to spread retries apart.
fn jitter() -> f64 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    0.1 + f64::from(nanos % 900) / 1_000.0
}
