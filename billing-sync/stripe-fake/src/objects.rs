//! The fake's stored objects and their JSON, shaped on Stripe's own examples
//! (`../shared/stripe/fixtures3.json`): every field Stripe returns is present, with Stripe's
//! types, so a client decoding real responses decodes these.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Customer {
    pub id: String,
    pub created: i64,
    pub name: Option<String>,
    pub email: Option<String>,
    pub metadata: BTreeMap<String, String>,
}

impl Customer {
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "object": "customer",
            "address": null,
            "balance": 0,
            "created": self.created,
            "currency": null,
            "default_source": null,
            "delinquent": false,
            "description": null,
            "discount": null,
            "email": self.email,
            "invoice_prefix": self.id.trim_start_matches("cus_").chars().take(8).collect::<String>().to_uppercase(),
            "invoice_settings": {
                "custom_fields": null,
                "default_payment_method": null,
                "footer": null,
                "rendering_options": null
            },
            "livemode": false,
            "metadata": self.metadata,
            "name": self.name,
            "next_invoice_sequence": 1,
            "phone": null,
            "preferred_locales": [],
            "shipping": null,
            "tax_exempt": "none",
            "test_clock": null
        })
    }
}

/// How a meter combines its events' values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Formula {
    Sum,
    Count,
    Last,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Meter {
    pub id: String,
    pub created: i64,
    pub display_name: String,
    pub event_name: String,
    pub formula: Formula,
    pub customer_payload_key: String,
    pub value_payload_key: String,
}

impl Meter {
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "object": "billing.meter",
            "created": self.created,
            "customer_mapping": { "event_payload_key": self.customer_payload_key, "type": "by_id" },
            "default_aggregation": { "formula": self.formula },
            "display_name": self.display_name,
            "event_name": self.event_name,
            "event_time_window": null,
            "livemode": false,
            "status": "active",
            "status_transitions": { "deactivated_at": null },
            "updated": self.created,
            "value_settings": { "event_payload_key": self.value_payload_key }
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MeterEvent {
    pub identifier: String,
    pub event_name: String,
    pub customer: String,
    /// Whole number (Stripe takes no fractions).
    #[serde(deserialize_with = "whole_value")]
    pub value: i64,
    /// The payload as sent (string values), returned as it came.
    pub payload: BTreeMap<String, String>,
    pub timestamp: i64,
    pub created: i64,
    /// Cancelled by a meter event adjustment: no longer aggregated.
    #[serde(default)]
    pub canceled: bool,
}

impl MeterEvent {
    pub fn to_json(&self) -> Value {
        json!({
            "object": "billing.meter_event",
            "created": self.created,
            "event_name": self.event_name,
            "identifier": self.identifier,
            "livemode": false,
            "payload": self.payload,
            "timestamp": self.timestamp
        })
    }
}

/// A stored value: a whole number, or the decimal text of state files from before the fake
/// enforced whole numbers (read as its whole part).
fn whole_value<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<i64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Stored {
        Whole(i64),
        Text(String),
    }
    match Stored::deserialize(deserializer)? {
        Stored::Whole(value) => Ok(value),
        Stored::Text(text) => {
            let quantity: tally_schemas::Quantity = text.parse().map_err(serde::de::Error::custom)?;
            i64::try_from(quantity.units() / tally_schemas::Quantity::from_int(1).units())
                .map_err(serde::de::Error::custom)
        }
    }
}

pub fn summary_json(id: &str, meter: &str, start: i64, end: i64, aggregated: f64) -> Value {
    json!({
        "id": id,
        "object": "billing.meter_event_summary",
        "aggregated_value": aggregated,
        "end_time": end,
        "livemode": false,
        "meter": meter,
        "start_time": start
    })
}

pub fn list_json(url: &str, data: Vec<Value>, has_more: bool) -> Value {
    json!({ "object": "list", "data": data, "has_more": has_more, "url": url })
}

pub fn adjustment_json(event_name: &str, identifier: &str) -> Value {
    json!({
        "object": "billing.meter_event_adjustment",
        "cancel": { "identifier": identifier },
        "event_name": event_name,
        "livemode": false,
        "status": "complete",
        "type": "cancel"
    })
}

/// Stripe's error object.
pub fn error_json(kind: &str, code: Option<&str>, message: &str, param: Option<&str>) -> Value {
    let mut error = json!({ "type": kind, "message": message });
    if let Some(code) = code {
        error["code"] = json!(code);
    }
    if let Some(param) = param {
        error["param"] = json!(param);
    }
    json!({ "error": error })
}
