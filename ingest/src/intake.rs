//! From request body to checked events: format by content type, split into items, tenant scope,
//! validation. Nothing here publishes, so a request refused here has sent nothing.
//!
//! A plain-JSON body in the common shape is read in one pass ([`batch::read_plain_json`]);
//! anything else is split into raw items first and each is parsed on its own, which reports
//! every error.

use serde_json::Value;
use serde_json::value::RawValue;
use tally_schemas::{CheckedEvent, EventError, ValidationContext, batch, cloudevents};

use crate::error::ApiError;
use tally_kit::auth::Principal;

/// The body formats `POST /v1/events` takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `application/json`: one event object or an array of them.
    Json,
    /// `application/cloudevents+json`: one structured-mode CloudEvent.
    CloudEvent,
    /// `application/cloudevents-batch+json`: an array of structured-mode CloudEvents.
    CloudEventBatch,
}

impl Format {
    pub fn from_content_type(content_type: Option<&str>) -> Result<Self, ApiError> {
        let raw = content_type.unwrap_or("application/json");
        let essence = raw.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
        match essence.as_str() {
            "application/json" => Ok(Format::Json),
            cloudevents::CONTENT_TYPE => Ok(Format::CloudEvent),
            cloudevents::BATCH_CONTENT_TYPE => Ok(Format::CloudEventBatch),
            _ => Err(ApiError::UnsupportedMediaType(raw.to_owned())),
        }
    }

    /// The field naming the tenant in this format.
    fn tenant_field(self) -> &'static str {
        match self {
            Format::Json => "tenant_id",
            Format::CloudEvent | Format::CloudEventBatch => "subject",
        }
    }
}

/// One item of a request, kept as the sender wrote it (for the dead-letter topic).
#[derive(Debug)]
pub struct Item<'a> {
    /// The item's JSON text as sent.
    pub raw: &'a str,
    pub outcome: Result<CheckedEvent<'a>, EventError>,
    /// The tenant a refused item names, if it names one as a string.
    pub claimed_tenant: Option<String>,
}

impl Item<'_> {
    /// The tenant the item is for: the event's, or the one a refused item claims.
    pub fn tenant(&self) -> Option<&str> {
        match &self.outcome {
            Ok(event) => Some(event.tenant_id()),
            Err(_) => self.claimed_tenant.as_deref(),
        }
    }
}

/// Splits the body into items without interpreting them.
fn split(text: &str, format: Format, max_events: usize) -> Result<Vec<&RawValue>, ApiError> {
    let trimmed = text.trim_start();
    let items: Vec<&RawValue> = match (format, trimmed.as_bytes().first()) {
        (_, None) => return Err(ApiError::Malformed("empty body: send an event or a batch of events".to_owned())),
        (Format::Json, Some(b'[')) | (Format::CloudEventBatch, _) => serde_json::from_str(text)
            .map_err(|e| ApiError::Malformed(format!("body is not a JSON array of events: {e}")))?,
        (Format::Json | Format::CloudEvent, _) => {
            vec![
                serde_json::from_str(text)
                    .map_err(|e| ApiError::Malformed(format!("body is not a JSON event: {e}")))?,
            ]
        }
    };
    if items.is_empty() {
        return Err(ApiError::Malformed("the batch is empty".to_owned()));
    }
    within_bound(items.len(), max_events)?;
    Ok(items)
}

/// Reads and validates every item; refuses the whole request when a tenant key names another
/// tenant.
pub fn read<'a>(
    body: &'a [u8],
    format: Format,
    max_events: usize,
    principal: &Principal,
    ctx: &ValidationContext<'_>,
) -> Result<Vec<Item<'a>>, ApiError> {
    let text = std::str::from_utf8(body).map_err(|e| ApiError::Malformed(format!("body is not UTF-8: {e}")))?;
    let read_in_one_pass = match format {
        Format::Json => batch::read_plain_json(text, ctx),
        Format::CloudEvent | Format::CloudEventBatch => None,
    };
    let outcomes = match read_in_one_pass {
        Some(events) => {
            within_bound(events.len(), max_events)?;
            events
        }
        None => split(text, format, max_events)?
            .into_iter()
            .map(|raw| {
                let raw = raw.get();
                let outcome = match format {
                    Format::Json => CheckedEvent::from_json_str(raw, ctx),
                    Format::CloudEvent | Format::CloudEventBatch => {
                        cloudevents::from_slice(raw.as_bytes(), ctx).map(CheckedEvent::from)
                    }
                };
                (raw, outcome)
            })
            .collect(),
    };
    let mut items = Vec::with_capacity(outcomes.len());
    for (index, (raw, outcome)) in outcomes.into_iter().enumerate() {
        // A valid event names its tenant; an invalid one is read again only to learn which
        // tenant it claims (for the scope check and the dead-letter key).
        let claimed_tenant = match &outcome {
            Ok(_) => None,
            Err(_) => serde_json::from_str::<Value>(raw)
                .ok()
                .and_then(|value| value.get(format.tenant_field()).and_then(Value::as_str).map(str::to_owned)),
        };
        let item = Item { raw, outcome, claimed_tenant };
        if let (Principal::Tenant(own), Some(claimed)) = (principal, item.tenant())
            && claimed != own.as_str()
        {
            return Err(ApiError::Forbidden(format!(
                "event {index} is for tenant {claimed:?} but the API key belongs to tenant \"{}\": \
                 a tenant key writes only its own tenant's events; nothing was accepted",
                own.as_str()
            )));
        }
        items.push(item);
    }
    Ok(items)
}

fn within_bound(events: usize, max_events: usize) -> Result<(), ApiError> {
    if events > max_events {
        return Err(ApiError::TooLarge(format!(
            "the batch holds {events} events; at most {max_events} are accepted per request: split it"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types_pick_the_format() {
        assert_eq!(Format::from_content_type(None).unwrap(), Format::Json);
        assert_eq!(Format::from_content_type(Some("application/json; charset=utf-8")).unwrap(), Format::Json);
        assert_eq!(Format::from_content_type(Some("application/cloudevents+json")).unwrap(), Format::CloudEvent);
        assert_eq!(
            Format::from_content_type(Some("application/cloudevents-batch+json")).unwrap(),
            Format::CloudEventBatch
        );
        assert!(matches!(Format::from_content_type(Some("text/csv")), Err(ApiError::UnsupportedMediaType(_))));
    }

    #[test]
    fn splitting_bounds_and_shapes() {
        assert_eq!(split("{\"a\":1}", Format::Json, 10).unwrap().len(), 1);
        assert_eq!(split(" [{}, {}]", Format::Json, 10).unwrap().len(), 2);
        assert!(matches!(split("[{}, {}, {}]", Format::Json, 2), Err(ApiError::TooLarge(_))));
        assert!(matches!(split("[]", Format::Json, 2), Err(ApiError::Malformed(_))));
        assert!(matches!(split("", Format::Json, 2), Err(ApiError::Malformed(_))));
        assert!(matches!(split("{\"a\":", Format::Json, 2), Err(ApiError::Malformed(_))));
        assert!(matches!(split("{}", Format::CloudEventBatch, 2), Err(ApiError::Malformed(_))));
    }

    #[test]
    fn both_reading_paths_give_items_with_their_text_and_bounds() {
        let catalogue = tally_schemas::MetricCatalogue::default();
        let ctx = ValidationContext::new(&catalogue, chrono::Utc::now());
        let event =
            |id: &str| format!(r#"{{"id":"{id}","tenant_id":"acme","metric":"api_calls","value":1,"source":"s"}}"#);
        // One pass (plain), and split then parsed (an escape in the second id).
        for body in [format!("[{}, {}]", event("a"), event("b")), format!("[{}, {}]", event("a"), event("\\u0062"))] {
            let items = read(body.as_bytes(), Format::Json, 10, &Principal::Admin, &ctx).unwrap();
            assert_eq!(items.len(), 2);
            assert_eq!(items[0].raw, event("a"));
            assert_eq!(items[1].outcome.as_ref().unwrap().id(), "b");
            assert!(matches!(
                read(body.as_bytes(), Format::Json, 1, &Principal::Admin, &ctx),
                Err(ApiError::TooLarge(_))
            ));
            let globex = Principal::Tenant(tally_schemas::TenantId::parse("globex").unwrap());
            assert!(matches!(read(body.as_bytes(), Format::Json, 10, &globex, &ctx), Err(ApiError::Forbidden(_))));
        }
    }
}
