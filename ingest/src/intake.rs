//! From request body to checked events: format by content type, split into items, tenant scope,
//! validation. Nothing here publishes, so a request refused here has sent nothing.

use serde_json::Value;
use serde_json::value::RawValue;
use tally_schemas::{CheckedEvent, EventError, ValidationContext, cloudevents};

use crate::auth::Principal;
use crate::error::ApiError;

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
    pub raw: &'a RawValue,
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
pub fn split(body: &[u8], format: Format, max_events: usize) -> Result<Vec<&RawValue>, ApiError> {
    let text = std::str::from_utf8(body).map_err(|e| ApiError::Malformed(format!("body is not UTF-8: {e}")))?;
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
    if items.len() > max_events {
        return Err(ApiError::TooLarge(format!(
            "the batch holds {} events; at most {max_events} are accepted per request: split it",
            items.len()
        )));
    }
    Ok(items)
}

/// Validates every item; refuses the whole request when a tenant key names another tenant.
pub fn check<'a>(
    items: Vec<&'a RawValue>,
    format: Format,
    principal: &Principal,
    ctx: &ValidationContext<'_>,
) -> Result<Vec<Item<'a>>, ApiError> {
    let mut checked = Vec::with_capacity(items.len());
    for (index, raw) in items.into_iter().enumerate() {
        let outcome = match format {
            Format::Json => CheckedEvent::from_json_str(raw.get(), ctx),
            Format::CloudEvent | Format::CloudEventBatch => {
                cloudevents::from_slice(raw.get().as_bytes(), ctx).map(CheckedEvent::from)
            }
        };
        // A valid event names its tenant; an invalid one is read again only to learn which
        // tenant it claims (for the scope check and the dead-letter key).
        let claimed_tenant = match &outcome {
            Ok(_) => None,
            Err(_) => serde_json::from_str::<Value>(raw.get())
                .ok()
                .and_then(|value| value.get(format.tenant_field()).and_then(Value::as_str).map(str::to_owned)),
        };
        let item = Item { raw, outcome, claimed_tenant };
        if let (Principal::Tenant(own), Some(claimed)) = (principal, item.tenant())
            && claimed != own.as_str()
        {
            return Err(ApiError::Forbidden(format!(
                "event {index} is for tenant {claimed:?} but the API key belongs to tenant {own:?}: \
                 a tenant key writes only its own tenant's events; nothing was accepted"
            )));
        }
        checked.push(item);
    }
    Ok(checked)
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
        assert_eq!(split(b"{\"a\":1}", Format::Json, 10).unwrap().len(), 1);
        assert_eq!(split(b" [{}, {}]", Format::Json, 10).unwrap().len(), 2);
        assert!(matches!(split(b"[{}, {}, {}]", Format::Json, 2), Err(ApiError::TooLarge(_))));
        assert!(matches!(split(b"[]", Format::Json, 2), Err(ApiError::Malformed(_))));
        assert!(matches!(split(b"", Format::Json, 2), Err(ApiError::Malformed(_))));
        assert!(matches!(split(b"{\"a\":", Format::Json, 2), Err(ApiError::Malformed(_))));
        assert!(matches!(split(b"{}", Format::CloudEventBatch, 2), Err(ApiError::Malformed(_))));
    }
}
