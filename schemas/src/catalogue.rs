//! The metric catalogue: which metrics exist, how they aggregate, and their unit.
//!
//! Loaded from configuration (`[metrics.<name>]` tables); the defaults are the platform's four
//! metrics. An event naming a metric outside the catalogue is refused.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ids::MetricName;
use crate::quantity::Quantity;

/// How a metric's events combine in a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MetricKind {
    /// Values add up: sum and count per window (API calls, compute seconds).
    Counter,
    /// Each value replaces the last: latest (by event time) and max per window (storage, users).
    Gauge,
    /// Distinct values of one attribute per window (e.g. distinct `user_id`).
    Unique,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricDef {
    pub kind: MetricKind,
    /// Unit shown to analysts and sent to billing, e.g. `calls`, `seconds`, `bytes`.
    pub unit: String,
    #[serde(default)]
    pub description: String,
    /// For `unique` metrics: the attribute whose distinct values are counted (required there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distinct_by: Option<String>,
    /// Largest value one event may carry; defaults to [`DEFAULT_MAX_VALUE`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_value: Option<Quantity>,
}

/// Largest value an event may carry unless its metric sets `max_value`: 10¹⁸.
pub const DEFAULT_MAX_VALUE: Quantity = Quantity::from_int(1_000_000_000_000_000_000);

impl MetricDef {
    pub fn max_value(&self) -> Quantity {
        self.max_value.unwrap_or(DEFAULT_MAX_VALUE)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CatalogueError {
    #[error("metric name {name:?}: {message}")]
    BadName { name: String, message: String },
    #[error("metric {name:?} is `unique` and must name the attribute to count in `distinct_by`")]
    MissingDistinctBy { name: String },
    #[error("metric {name:?} sets `distinct_by`, which only `unique` metrics take")]
    UnexpectedDistinctBy { name: String },
    #[error("metric {name:?}: `max_value` must be positive")]
    BadMaxValue { name: String },
    #[error("metric {name:?}: `unit` must not be empty")]
    EmptyUnit { name: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "BTreeMap<String, MetricDef>", into = "BTreeMap<String, MetricDef>")]
pub struct MetricCatalogue {
    metrics: BTreeMap<MetricName, MetricDef>,
}

impl MetricCatalogue {
    pub fn get(&self, name: &MetricName) -> Option<&MetricDef> {
        self.metrics.get(name)
    }

    /// Looks a metric up by its raw name (no allocation on the hot path).
    pub fn lookup(&self, name: &str) -> Option<(&MetricName, &MetricDef)> {
        self.metrics.get_key_value(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&MetricName, &MetricDef)> {
        self.metrics.iter()
    }

    pub fn names(&self) -> Vec<&str> {
        self.metrics.keys().map(MetricName::as_str).collect()
    }
}

impl TryFrom<BTreeMap<String, MetricDef>> for MetricCatalogue {
    type Error = CatalogueError;

    fn try_from(raw: BTreeMap<String, MetricDef>) -> Result<Self, Self::Error> {
        let mut metrics = BTreeMap::new();
        for (name, def) in raw {
            let key = MetricName::parse(name.clone())
                .map_err(|(_, message)| CatalogueError::BadName { name: name.clone(), message })?;
            match (def.kind, &def.distinct_by) {
                (MetricKind::Unique, None) => return Err(CatalogueError::MissingDistinctBy { name }),
                (MetricKind::Counter | MetricKind::Gauge, Some(_)) => {
                    return Err(CatalogueError::UnexpectedDistinctBy { name });
                }
                _ => {}
            }
            if def.max_value.is_some_and(|max| max <= Quantity::ZERO) {
                return Err(CatalogueError::BadMaxValue { name });
            }
            if def.unit.trim().is_empty() {
                return Err(CatalogueError::EmptyUnit { name });
            }
            metrics.insert(key, def);
        }
        Ok(Self { metrics })
    }
}

impl From<MetricCatalogue> for BTreeMap<String, MetricDef> {
    fn from(catalogue: MetricCatalogue) -> Self {
        catalogue.metrics.into_iter().map(|(name, def)| (name.into(), def)).collect()
    }
}

impl Default for MetricCatalogue {
    /// The platform's metrics: API calls, compute time, storage bytes and active users.
    fn default() -> Self {
        let def = |kind, unit: &str, description: &str| MetricDef {
            kind,
            unit: unit.to_owned(),
            description: description.to_owned(),
            distinct_by: None,
            max_value: None,
        };
        let raw = BTreeMap::from([
            ("api_calls".to_owned(), def(MetricKind::Counter, "calls", "API calls served")),
            ("compute_seconds".to_owned(), def(MetricKind::Counter, "seconds", "compute time used")),
            ("storage_bytes".to_owned(), def(MetricKind::Gauge, "bytes", "bytes stored now")),
            ("active_users".to_owned(), def(MetricKind::Gauge, "users", "active user count now")),
        ]);
        Self::try_from(raw).unwrap_or_else(|e| unreachable!("default catalogue is valid: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_hold_the_platform_metrics() {
        let catalogue = MetricCatalogue::default();
        assert_eq!(catalogue.names(), ["active_users", "api_calls", "compute_seconds", "storage_bytes"]);
        assert_eq!(catalogue.lookup("storage_bytes").unwrap().1.kind, MetricKind::Gauge);
    }

    #[test]
    fn unique_metrics_need_distinct_by() {
        let raw = serde_json::json!({"seen_users": {"kind": "unique", "unit": "users"}});
        let err = serde_json::from_value::<MetricCatalogue>(raw).unwrap_err();
        assert!(err.to_string().contains("distinct_by"), "{err}");
        let raw = serde_json::json!({"seen_users": {"kind": "unique", "unit": "users", "distinct_by": "user_id"}});
        assert!(serde_json::from_value::<MetricCatalogue>(raw).is_ok());
    }

    #[test]
    fn bad_names_and_fields_are_named() {
        let raw = serde_json::json!({"API Calls": {"kind": "counter", "unit": "calls"}});
        let err = serde_json::from_value::<MetricCatalogue>(raw).unwrap_err();
        assert!(err.to_string().contains("API Calls"), "{err}");
        let raw = serde_json::json!({"calls": {"kind": "counter", "unit": "calls", "colour": "red"}});
        let err = serde_json::from_value::<MetricCatalogue>(raw).unwrap_err();
        assert!(err.to_string().contains("colour"), "{err}");
    }
}
