//! Reading usage back: `tally-query`'s `POST /v1/usage` (see `query/openapi.yaml`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A usage query; unset fields take the service's defaults (every metric, one total, UTC, the
/// key's own tenant for a tenant key).
#[derive(Debug, Clone, Default, Serialize)]
pub struct UsageQuery {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub metric: Vec<String>,
    /// RFC 3339, or a date (`2026-11-01`: the start of that day in `time_zone`); the start of a
    /// window in `time_zone`.
    pub from: String,
    /// RFC 3339 or a date, exclusive.
    pub to: String,
    /// `minute`, `hour`, `day`, `month`; `None`: one total.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
    /// IANA time zone; `None`: UTC.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tenant: Vec<String>,
    /// `tenant`, `metric` or event attribute names.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub group_by: Vec<String>,
    /// Attribute → accepted values.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub filter: BTreeMap<String, Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    /// `window`, or a value column (`sum`, `count`, `max`, `latest`, `distinct`), `-` first for largest first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order_by: Option<String>,
    /// `zero`: a row for every window of every group, count 0 where nothing happened.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fill: Option<String>,
}

/// One window of one series. Decimals are exact strings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct UsageRow {
    pub window_start: String,
    pub window_end: String,
    pub tenant_id: Option<String>,
    pub metric: String,
    pub group: Option<BTreeMap<String, Option<String>>>,
    /// `counter`, `gauge` or `unique`.
    pub kind: String,
    pub count: u64,
    pub sum: Option<String>,
    pub latest: Option<String>,
    pub latest_at: Option<String>,
    pub max: Option<String>,
    pub distinct: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct UsageAnswer {
    pub from: String,
    pub to: String,
    pub window: Option<String>,
    pub time_zone: String,
    /// The rollups read (`minute` … `month`) or `events`.
    pub source: String,
    pub rows: Vec<UsageRow>,
}

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("the query service refused the query ({status}, {reason}): {message}")]
    Refused { status: u16, reason: String, message: String, parameter: Option<String> },
    #[error("the query service did not answer: {0}")]
    Transport(#[from] reqwest::Error),
}

#[derive(Debug, Deserialize)]
struct Refusal {
    error: String,
    reason: String,
    parameter: Option<String>,
}

/// A client of the query API with one key.
#[derive(Debug, Clone)]
pub struct UsageClient {
    http: reqwest::Client,
    base_url: String,
    api_key: String,
}

impl UsageClient {
    pub fn new(base_url: impl Into<String>, api_key: impl Into<String>) -> Self {
        Self { http: reqwest::Client::new(), base_url: base_url.into(), api_key: api_key.into() }
    }

    /// Runs `query`.
    pub async fn query(&self, query: &UsageQuery) -> Result<UsageAnswer, QueryError> {
        let url = format!("{}/v1/usage", self.base_url.trim_end_matches('/'));
        let answer = self.http.post(url).bearer_auth(&self.api_key).json(query).send().await?;
        let status = answer.status();
        if status.is_success() {
            return Ok(answer.json().await?);
        }
        let refusal: Refusal = answer.json().await?;
        Err(QueryError::Refused {
            status: status.as_u16(),
            reason: refusal.reason,
            message: refusal.error,
            parameter: refusal.parameter,
        })
    }
}
