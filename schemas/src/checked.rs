//! A validated event whose text still borrows from the request body, and the event's wire form.
//!
//! Ingest checks an event and publishes it at once: building an owned [`UsageEvent`] (a string per
//! field, a map node per attribute) only to serialise it again would cost more than the checks.
//! [`CheckedEvent`] holds what validation proved and writes the very bytes
//! [`UsageEvent::to_json`] writes, through the same code.

use std::borrow::Cow;

use chrono::{DateTime, Datelike, SecondsFormat, Timelike, Utc};

use crate::event::UsageEvent;
use crate::ids::{EventId, MetricName, TenantId};
use crate::quantity::{Quantity, TEXT_CAPACITY};
use crate::rules::AttributePairs;

/// An event that passed every rule. Built only by validation (or from a [`UsageEvent`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedEvent<'a> {
    pub(crate) id: Cow<'a, str>,
    pub(crate) tenant_id: Cow<'a, str>,
    pub(crate) metric: Cow<'a, str>,
    pub(crate) value: Quantity,
    pub(crate) timestamp: DateTime<Utc>,
    pub(crate) source: Cow<'a, str>,
    /// Sorted by name, each name once (a repeated name keeps its last value, as a map does).
    pub(crate) attributes: AttributePairs<'a>,
}

impl<'a> CheckedEvent<'a> {
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn tenant_id(&self) -> &str {
        &self.tenant_id
    }

    pub fn metric(&self) -> &str {
        &self.metric
    }

    pub fn value(&self) -> Quantity {
        self.value
    }

    pub fn timestamp(&self) -> DateTime<Utc> {
        self.timestamp
    }

    /// The event's wire form: what [`UsageEvent::to_json`] writes for the same event.
    pub fn to_json(&self) -> Vec<u8> {
        let attributes = self.attributes.iter().map(|(k, v)| (k.as_ref(), v.as_ref()));
        let parts = WireParts {
            id: &self.id,
            tenant_id: &self.tenant_id,
            metric: &self.metric,
            value: self.value,
            timestamp: self.timestamp,
            source: &self.source,
        };
        parts.to_json(attributes)
    }
}

/// Attribute (name, value) pairs sorted by name, each name once: the last value of a repeated
/// name wins, as in a map.
pub(crate) fn normalise_attributes<'a>(mut pairs: AttributePairs<'a>) -> AttributePairs<'a> {
    if pairs.windows(2).all(|pair| pair[0].0 < pair[1].0) {
        return pairs;
    }
    // Reversed then stably sorted, the last value of a name comes first and survives dedup.
    pairs.reverse();
    pairs.sort_by(|a, b| a.0.cmp(&b.0));
    pairs.dedup_by(|later, first| later.0 == first.0);
    pairs
}

/// Whether normalised `pairs` hold `name`.
pub(crate) fn has_attribute(pairs: &[(Cow<'_, str>, Cow<'_, str>)], name: &str) -> bool {
    pairs.binary_search_by(|(key, _)| key.as_ref().cmp(name)).is_ok()
}

impl From<CheckedEvent<'_>> for UsageEvent {
    fn from(event: CheckedEvent<'_>) -> Self {
        UsageEvent {
            id: EventId::from_checked(event.id.into_owned()),
            tenant_id: TenantId::from_checked(event.tenant_id.into_owned()),
            metric: MetricName::from_checked(event.metric.into_owned()),
            value: event.value,
            timestamp: event.timestamp,
            source: event.source.into_owned(),
            attributes: event.attributes.into_iter().map(|(k, v)| (k.into_owned(), v.into_owned())).collect(),
        }
    }
}

impl From<UsageEvent> for CheckedEvent<'static> {
    fn from(event: UsageEvent) -> Self {
        CheckedEvent {
            id: Cow::Owned(event.id.into()),
            tenant_id: Cow::Owned(event.tenant_id.into()),
            metric: Cow::Owned(event.metric.into()),
            value: event.value,
            timestamp: event.timestamp,
            source: Cow::Owned(event.source),
            attributes: event.attributes.into_iter().map(|(k, v)| (Cow::Owned(k), Cow::Owned(v))).collect(),
        }
    }
}

/// The wire form of [`UsageEvent::to_json`].
pub(crate) fn usage_event_json(event: &UsageEvent) -> Vec<u8> {
    let parts = WireParts {
        id: event.id.as_str(),
        tenant_id: event.tenant_id.as_str(),
        metric: event.metric.as_str(),
        value: event.value,
        timestamp: event.timestamp,
        source: &event.source,
    };
    parts.to_json(event.attributes.iter().map(|(k, v)| (k.as_str(), v.as_str())))
}

/// One writer for both event types. Its output is exactly serde_json's form of the derived
/// `Serialize` (the tests hold it to that): fields in declaration order, value and timestamp as
/// strings, attributes sorted by name and left out when there are none. Written by hand because
/// this runs once per ingested event and serde's generic path costs several times more.
struct WireParts<'e> {
    id: &'e str,
    tenant_id: &'e str,
    metric: &'e str,
    value: Quantity,
    timestamp: DateTime<Utc>,
    source: &'e str,
}

impl<'e> WireParts<'e> {
    fn to_json(&self, attributes: impl Iterator<Item = (&'e str, &'e str)> + Clone) -> Vec<u8> {
        let text_len = self.id.len() + self.tenant_id.len() + self.metric.len() + self.source.len();
        let attributes_len: usize = attributes.clone().map(|(k, v)| k.len() + v.len() + 6).sum();
        let mut out = Vec::with_capacity(text_len + attributes_len + 140);
        out.extend_from_slice(b"{\"id\":");
        write_str(&mut out, self.id);
        out.extend_from_slice(b",\"tenant_id\":");
        write_str(&mut out, self.tenant_id);
        out.extend_from_slice(b",\"metric\":");
        write_str(&mut out, self.metric);
        out.extend_from_slice(b",\"value\":\"");
        out.extend_from_slice(self.value.write_text(&mut [0; TEXT_CAPACITY]).as_bytes());
        out.extend_from_slice(b"\",\"timestamp\":");
        let mut time_text = [0u8; 30];
        match write_rfc3339(self.timestamp, &mut time_text) {
            Some(text) => write_str(&mut out, text),
            None => write_str(&mut out, &self.timestamp.to_rfc3339_opts(SecondsFormat::AutoSi, true)),
        }
        out.extend_from_slice(b",\"source\":");
        write_str(&mut out, self.source);
        let mut attributes = attributes.peekable();
        if attributes.peek().is_some() {
            out.extend_from_slice(b",\"attributes\":{");
            for (index, (name, value)) in attributes.enumerate() {
                if index > 0 {
                    out.push(b',');
                }
                write_str(&mut out, name);
                out.push(b':');
                write_str(&mut out, value);
            }
            out.push(b'}');
        }
        out.push(b'}');
        out
    }
}

/// A JSON string as serde_json writes it: copied as is unless it holds a byte JSON must escape.
fn write_str(out: &mut Vec<u8>, text: &str) {
    if text.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
        serde_json::to_writer(&mut *out, text).unwrap_or_else(|e| unreachable!("a string serialises: {e}"));
    } else {
        out.push(b'"');
        out.extend_from_slice(text.as_bytes());
        out.push(b'"');
    }
}

/// Writes `time` as chrono's serde does (RFC 3339, `Z`, 0, 3, 6 or 9 fraction digits) into
/// `buffer`; `None` for what this form does not cover (years outside 0..=9999, leap seconds).
fn write_rfc3339(time: DateTime<Utc>, buffer: &mut [u8; 30]) -> Option<&str> {
    let time = time.naive_utc();
    let year = u32::try_from(time.year()).ok().filter(|year| *year <= 9999)?;
    let nanos = time.nanosecond();
    if nanos >= 1_000_000_000 {
        return None;
    }
    let mut digits = |at: usize, value: u32, width: usize| {
        let mut value = value;
        for slot in buffer[at..at + width].iter_mut().rev() {
            *slot = b'0' + (value % 10) as u8;
            value /= 10;
        }
    };
    digits(0, year, 4);
    digits(5, time.month(), 2);
    digits(8, time.day(), 2);
    digits(11, time.hour(), 2);
    digits(14, time.minute(), 2);
    digits(17, time.second(), 2);
    let (fraction, width) = match nanos {
        0 => (0, 0),
        n if n % 1_000_000 == 0 => (n / 1_000_000, 3),
        n if n % 1_000 == 0 => (n / 1_000, 6),
        n => (n, 9),
    };
    if width > 0 {
        digits(20, fraction, width);
        buffer[19] = b'.';
    }
    for (at, separator) in [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':')] {
        buffer[at] = separator;
    }
    let end = if width > 0 { 20 + width } else { 19 };
    buffer[end] = b'Z';
    std::str::from_utf8(&buffer[..=end]).ok()
}
