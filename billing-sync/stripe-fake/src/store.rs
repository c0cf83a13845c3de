//! The fake's state and the rules Stripe applies to it.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tally_schemas::Quantity;

use crate::objects::{Customer, Formula, Meter, MeterEvent};

/// A saved answer to a request sent with an `Idempotency-Key`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SavedAnswer {
    /// SHA-256 of method, path and body: the same key with another request is an error.
    pub fingerprint: String,
    pub body: Value,
}

/// Everything the fake holds; saved to the state file when one is configured.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Store {
    pub customers: BTreeMap<String, Customer>,
    pub meters: BTreeMap<String, Meter>,
    pub events: Vec<MeterEvent>,
    pub identifiers: HashSet<String>,
    pub idempotency: HashMap<String, SavedAnswer>,
    pub counter: u64,
}

/// A refused request: Stripe's status, error type, code, message and parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub kind: &'static str,
    pub code: Option<&'static str>,
    pub message: String,
    pub param: Option<String>,
}

pub fn invalid(code: Option<&'static str>, message: impl Into<String>, param: Option<&str>) -> Refusal {
    Refusal {
        status: 400,
        kind: "invalid_request_error",
        code,
        message: message.into(),
        param: param.map(str::to_owned),
    }
}

pub fn missing(message: impl Into<String>, param: Option<&str>) -> Refusal {
    Refusal { status: 404, code: Some("resource_missing"), ..invalid(None, message, param) }
}

/// Stripe's meter event timestamps: at most 35 days back and 5 minutes ahead.
const MAX_AGE_SECS: i64 = 35 * 86_400;
const MAX_AHEAD_SECS: i64 = 5 * 60;

impl Store {
    pub fn next_id(&mut self, prefix: &str) -> String {
        self.counter += 1;
        format!("{prefix}_{:014}{}", self.counter, "Tf")
    }

    pub fn meter_by_event(&self, event_name: &str) -> Option<&Meter> {
        self.meters.values().find(|m| m.event_name == event_name)
    }

    /// Records a meter event; refuses what Stripe refuses.
    pub fn record_event(
        &mut self,
        event_name: &str,
        payload: BTreeMap<String, String>,
        identifier: Option<String>,
        timestamp: Option<i64>,
        now: i64,
    ) -> Result<MeterEvent, Refusal> {
        let meter = self.meter_by_event(event_name).cloned().ok_or_else(|| {
            invalid(
                Some("resource_missing"),
                format!("No active meter was found matching event_name {event_name:?}."),
                Some("event_name"),
            )
        })?;
        let customer = payload.get(&meter.customer_payload_key).cloned().ok_or_else(|| {
            let key = &meter.customer_payload_key;
            invalid(None, format!("The payload must contain {key:?}."), Some(&format!("payload[{key}]")))
        })?;
        if !self.customers.contains_key(&customer) {
            return Err(missing(format!("No such customer: '{customer}'"), Some("payload")));
        }
        let raw_value = payload.get(&meter.value_payload_key).ok_or_else(|| {
            let key = &meter.value_payload_key;
            invalid(None, format!("The payload must contain {key:?}."), Some(&format!("payload[{key}]")))
        })?;
        let value: Quantity = raw_value
            .parse()
            .map_err(|_| invalid(None, format!("The value {raw_value:?} is not a number."), Some("payload[value]")))?;
        let timestamp = timestamp.unwrap_or(now);
        if timestamp < now - MAX_AGE_SECS || timestamp > now + MAX_AHEAD_SECS {
            return Err(invalid(
                Some("timestamp_outside_window"),
                "The timestamp must be within the past 35 calendar days or up to 5 minutes in the future.",
                Some("timestamp"),
            ));
        }
        let identifier = match identifier {
            Some(identifier) => identifier,
            None => self.next_id("mev"),
        };
        if !self.identifiers.insert(identifier.clone()) {
            return Err(invalid(
                Some("resource_already_exists"),
                format!("An event with identifier {identifier:?} already exists."),
                Some("identifier"),
            ));
        }
        let event = MeterEvent {
            identifier,
            event_name: event_name.to_owned(),
            customer,
            value,
            payload,
            timestamp,
            created: now,
        };
        self.events.push(event.clone());
        Ok(event)
    }

    /// The meter's aggregate for one customer over `[start, end)`.
    pub fn aggregate(&self, meter: &Meter, customer: &str, start: i64, end: i64) -> Option<f64> {
        let mut events: Vec<&MeterEvent> = self
            .events
            .iter()
            .filter(|e| e.event_name == meter.event_name && e.customer == customer)
            .filter(|e| (start..end).contains(&e.timestamp))
            .collect();
        if events.is_empty() {
            return None;
        }
        let units = match meter.formula {
            Formula::Sum => events.iter().map(|e| e.value.units()).sum::<i128>(),
            Formula::Count => i128::try_from(events.len()).unwrap_or(i128::MAX) * Quantity::from_int(1).units(),
            Formula::Last => {
                events.sort_by_key(|e| (e.timestamp, e.created));
                events.last().map_or(0, |e| e.value.units())
            }
        };
        Some(units as f64 / 1e9)
    }
}
