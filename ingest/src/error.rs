//! Request-level failures and the one place they become HTTP answers.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use tally_kit::auth::AuthError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("{0}")]
    Forbidden(String),
    #[error(
        "unsupported content type {0:?}: send application/json, application/cloudevents+json, application/cloudevents-batch+json, or one CloudEvent in binary mode (ce-* headers)"
    )]
    UnsupportedMediaType(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    Malformed(String),
    /// The broker queue is full: slow down.
    #[error("ingest is overloaded: the broker queue is full; retry after {retry_after_secs} s")]
    Overloaded { retry_after_secs: u64, results: Option<Value> },
    /// The broker (or the registry) did not answer: nothing this request sent can be counted on.
    #[error("{message}; retry after {retry_after_secs} s (retries are safe: events are deduplicated by id)")]
    Unavailable { message: String, retry_after_secs: u64, results: Option<Value> },
}

impl ApiError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::Auth(AuthError::Missing | AuthError::Invalid) => (StatusCode::UNAUTHORIZED, "unauthenticated"),
            ApiError::Auth(AuthError::Unavailable(_)) => (StatusCode::SERVICE_UNAVAILABLE, "auth_unavailable"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::UnsupportedMediaType(_) => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
            ApiError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ApiError::Malformed(_) => (StatusCode::BAD_REQUEST, "malformed"),
            ApiError::Overloaded { .. } => (StatusCode::TOO_MANY_REQUESTS, "overloaded"),
            ApiError::Unavailable { .. } => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        }
    }

    /// The status code, for metrics.
    pub fn status(&self) -> StatusCode {
        self.status_and_code().0
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let retry_after = match &self {
            ApiError::Overloaded { retry_after_secs, .. } | ApiError::Unavailable { retry_after_secs, .. } => {
                Some(*retry_after_secs)
            }
            ApiError::Auth(AuthError::Unavailable(_)) => Some(1),
            _ => None,
        };
        let mut body = json!({"error": {"code": code, "message": self.to_string()}});
        if let ApiError::Overloaded { results: Some(results), .. }
        | ApiError::Unavailable { results: Some(results), .. } = self
        {
            body["results"] = results;
        }
        let mut response = (status, Json(body)).into_response();
        if let Some(seconds) = retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
