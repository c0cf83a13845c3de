//! Stripe's list paging: `limit` (1–100, default 10), `starting_after` / `ending_before` (an
//! object id of the list, at most one of them) and `has_more`.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::store::{Refusal, invalid};

const DEFAULT_LIMIT: usize = 10;
const MAX_LIMIT: usize = 100;

/// One page of `items` (in the list's order) as the query asks; `true` when more follow in the
/// direction of travel.
pub fn page(items: Vec<Value>, query: &BTreeMap<String, String>) -> Result<(Vec<Value>, bool), Refusal> {
    let limit = match query.get("limit") {
        None => DEFAULT_LIMIT,
        Some(raw) => match raw.parse::<usize>() {
            Ok(limit) if (1..=MAX_LIMIT).contains(&limit) => limit,
            _ => {
                return Err(invalid(
                    Some("parameter_invalid_integer"),
                    format!("Invalid limit: must be an integer between 1 and {MAX_LIMIT} (got {raw:?})."),
                    Some("limit"),
                ));
            }
        },
    };
    let position = |param: &str, id: &str| {
        items.iter().position(|item| item["id"] == id).ok_or_else(|| {
            invalid(Some("resource_missing"), format!("No such object for {param}: '{id}'"), Some(param))
        })
    };
    match (query.get("starting_after"), query.get("ending_before")) {
        (Some(_), Some(_)) => Err(invalid(
            None,
            "You may only specify one of these parameters: ending_before, starting_after.",
            Some("starting_after"),
        )),
        (Some(after), None) => {
            let from = position("starting_after", after)? + 1;
            let rest: Vec<Value> = items.into_iter().skip(from).collect();
            let has_more = rest.len() > limit;
            Ok((rest.into_iter().take(limit).collect(), has_more))
        }
        (None, Some(before)) => {
            let until = position("ending_before", before)?;
            let from = until.saturating_sub(limit);
            Ok((items[from..until].to_vec(), from > 0))
        }
        (None, None) => {
            let has_more = items.len() > limit;
            Ok((items.into_iter().take(limit).collect(), has_more))
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;

    fn ids(page: &[Value]) -> Vec<i64> {
        page.iter().map(|v| v["n"].as_i64().unwrap()).collect()
    }

    #[test]
    fn pages_forward_and_back_by_cursor() {
        let items: Vec<Value> = (0..25).map(|n| json!({"id": format!("o{n}"), "n": n})).collect();
        let query = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        let (first, more) = page(items.clone(), &query(&[])).unwrap();
        assert_eq!((ids(&first), more), ((0..10).collect(), true));
        let (last, more) = page(items.clone(), &query(&[("limit", "10"), ("starting_after", "o19")])).unwrap();
        assert_eq!((ids(&last), more), ((20..25).collect(), false));
        let (back, more) = page(items.clone(), &query(&[("limit", "3"), ("ending_before", "o5")])).unwrap();
        assert_eq!((ids(&back), more), ((2..5).collect(), true));
        for bad in ["0", "101", "x", "-1"] {
            assert_eq!(page(items.clone(), &query(&[("limit", bad)])).unwrap_err().param.as_deref(), Some("limit"));
        }
        assert!(page(items.clone(), &query(&[("starting_after", "nope")])).is_err());
        assert!(page(items, &query(&[("starting_after", "o1"), ("ending_before", "o3")])).is_err());
    }
}
