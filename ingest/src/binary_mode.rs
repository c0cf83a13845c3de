//! CloudEvents HTTP binary content mode: the event's attributes travel in `ce-*` headers and the
//! body is its `data` (the default of several CloudEvents SDKs and of Knative). The official SDK
//! reads the binding (header names, percent-decoding, the content type as `datacontenttype`);
//! the event is then written as one structured-mode event, so exactly the same validation and
//! error messages apply. Only requests carrying `ce-specversion` take this path.

use axum::http::HeaderMap;
use cloudevents::{AttributesReader as _, Data};

use crate::error::ApiError;

/// Whether the request is a binary-mode CloudEvent.
pub fn is_binary(headers: &HeaderMap) -> bool {
    headers.contains_key(cloudevents::binding::http::SPEC_VERSION_HEADER)
}

/// The structured-mode JSON of a binary-mode event.
pub fn to_structured(headers: &HeaderMap, body: &[u8]) -> Result<Vec<u8>, ApiError> {
    let mut event = cloudevents::binding::http::to_event(headers, body.to_vec()).map_err(|error| {
        ApiError::Malformed(format!(
            "CloudEvents binary mode: {error} (send ce-specversion: 1.0, ce-id, ce-source, ce-type, ce-subject \
             as headers and the data as an application/json body)"
        ))
    })?;
    // The SDK keeps a binary-mode body as bytes; a JSON body is the event's JSON `data`.
    if let Some(Data::Binary(bytes)) = event.data()
        && event.datacontenttype().is_some_and(is_json)
    {
        let data: serde_json::Value = serde_json::from_slice(bytes).map_err(|error| {
            ApiError::Malformed(format!("CloudEvents binary mode: the application/json body is not JSON: {error}"))
        })?;
        event.set_data_unchecked(Data::Json(data));
    }
    serde_json::to_vec(&event).map_err(|error| ApiError::Malformed(format!("CloudEvents binary mode: {error}")))
}

/// `application/json` or any `+json` media type, parameters aside.
fn is_json(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    essence == "application/json" || essence.ends_with("+json")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use axum::http::HeaderValue;
    use serde_json::Value;

    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn headers_and_body_become_one_structured_event() {
        let map = headers(&[
            ("ce-specversion", "1.0"),
            ("ce-id", "evt-1"),
            ("ce-source", "/billing/api"),
            ("ce-type", "api_calls"),
            ("ce-subject", "acme"),
            ("ce-time", "2026-12-01T10:00:00Z"),
            ("content-type", "application/json"),
        ]);
        assert!(is_binary(&map));
        let structured: Value = serde_json::from_slice(&to_structured(&map, br#"{"value": "3"}"#).unwrap()).unwrap();
        assert_eq!(structured["id"], "evt-1");
        assert_eq!(structured["subject"], "acme");
        assert_eq!(structured["type"], "api_calls");
        assert_eq!(structured["data"]["value"], "3", "{structured}");
        assert_eq!(structured["datacontenttype"], "application/json");
    }

    #[test]
    fn a_binary_event_without_its_required_attributes_is_refused_by_name() {
        let map = headers(&[("ce-specversion", "1.0"), ("ce-source", "/x"), ("content-type", "application/json")]);
        let error = to_structured(&map, b"{}").unwrap_err().to_string();
        assert!(error.contains("CloudEvents binary mode"), "{error}");
        assert!(!is_binary(&headers(&[("content-type", "application/json")])));
    }
}
