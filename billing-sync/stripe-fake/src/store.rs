//! The fake's state and the rules Stripe applies to it.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::objects::{Customer, Formula, Meter, MeterEvent};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A saved answer to a request sent with an `Idempotency-Key`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SavedAnswer {
    /// SHA-256 of method, path and the sorted parameters: Stripe compares parameters, not bytes,
    /// so the same request with its fields in another order is a replay.
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
/// Stripe's maximum length of `identifier` and `event_name`.
pub const MAX_NAME_LEN: usize = 100;
/// An event can be cancelled until this long after Stripe received it.
pub const CANCEL_WINDOW_SECS: i64 = 24 * 3_600;
/// Stripe's payload values: whole numbers of at most 15 significant digits.
const MAX_SIGNIFICANT_DIGITS: usize = 15;

/// Refuses a string parameter longer than Stripe allows.
pub fn at_most_100(value: &str, param: &str) -> Result<(), Refusal> {
    let length = value.chars().count();
    if length > MAX_NAME_LEN {
        return Err(invalid(
            Some("parameter_invalid_string_length"),
            format!("Invalid {param}: must be at most {MAX_NAME_LEN} characters long (got {length})."),
            Some(param),
        ));
    }
    Ok(())
}

/// A meter event's value as Stripe takes it: an optionally signed run of digits, no fraction,
/// no exponent, at most 15 significant digits.
pub fn whole_number(raw: &str, param: &str) -> Result<i64, Refusal> {
    let digits = raw.strip_prefix('-').unwrap_or(raw);
    let refused = |why: &str| invalid(None, format!("Invalid value {raw:?} for {param}: {why}."), Some(param));
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(refused("the value only accepts whole numbers"));
    }
    if digits.trim_start_matches('0').len() > MAX_SIGNIFICANT_DIGITS {
        return Err(refused("at most 15 significant digits are accepted"));
    }
    raw.parse().map_err(|_| refused("not a number"))
}

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
        at_most_100(event_name, "event_name")?;
        if let Some(identifier) = &identifier {
            at_most_100(identifier, "identifier")?;
        }
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
        let value = whole_number(raw_value, &format!("payload[{}]", meter.value_payload_key))?;
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
            canceled: false,
        };
        self.events.push(event.clone());
        Ok(event)
    }

    /// A meter event adjustment of type `cancel`: the event stops counting. Stripe only cancels
    /// events it received within the last 24 hours.
    pub fn cancel_event(&mut self, event_name: &str, identifier: &str, now: i64) -> Result<(), Refusal> {
        at_most_100(identifier, "cancel[identifier]")?;
        if self.meter_by_event(event_name).is_none() {
            return Err(invalid(
                Some("resource_missing"),
                format!("No active meter was found matching event_name {event_name:?}."),
                Some("event_name"),
            ));
        }
        let event = self
            .events
            .iter_mut()
            .find(|e| e.identifier == identifier && e.event_name == event_name)
            .ok_or_else(|| missing(format!("No such meter event: '{identifier}'"), Some("cancel[identifier]")))?;
        if now - event.created > CANCEL_WINDOW_SECS {
            return Err(invalid(
                None,
                format!(
                    "Meter event '{identifier}' cannot be cancelled: events can only be cancelled within 24 hours of Stripe receiving them."
                ),
                Some("cancel[identifier]"),
            ));
        }
        if event.canceled {
            return Err(invalid(
                None,
                format!("Meter event '{identifier}' is already cancelled."),
                Some("cancel[identifier]"),
            ));
        }
        event.canceled = true;
        Ok(())
    }

    /// The meter's aggregate for one customer over `[start, end)`.
    pub fn aggregate(&self, meter: &Meter, customer: &str, start: i64, end: i64) -> Option<f64> {
        let mut events: Vec<&MeterEvent> = self
            .events
            .iter()
            .filter(|e| !e.canceled && e.event_name == meter.event_name && e.customer == customer)
            .filter(|e| (start..end).contains(&e.timestamp))
            .collect();
        if events.is_empty() {
            return None;
        }
        let value = match meter.formula {
            Formula::Sum => events.iter().map(|e| i128::from(e.value)).sum::<i128>(),
            Formula::Count => i128::try_from(events.len()).unwrap_or(i128::MAX),
            Formula::Last => {
                events.sort_by_key(|e| (e.timestamp, e.created));
                events.last().map_or(0, |e| i128::from(e.value))
            }
        };
        Some(value as f64)
    }
}
