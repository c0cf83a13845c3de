use std::collections::BTreeMap;

use super::*;
use chrono::TimeDelta;
use tally_schemas::{EventId, MetricName, Quantity, TenantId};

fn plan(last: u64, decided_at: DateTime<Utc>) -> Plan {
    Plan {
        topic: "usage".to_owned(),
        kafka_partition: 2,
        first_offset: 10,
        last_offset: last,
        decided_at: decided_at.timestamp_millis(),
        planned_by: "a".to_owned(),
    }
}

fn event(id: &str, tenant: &str, at: DateTime<Utc>) -> UsageEvent {
    UsageEvent {
        id: EventId::parse(id).unwrap(),
        tenant_id: TenantId::parse(tenant).unwrap(),
        metric: MetricName::parse("api_calls").unwrap(),
        value: Quantity::from_int(2),
        timestamp: at,
        source: "test".to_owned(),
        attributes: BTreeMap::new(),
    }
}

fn message(offset: u64, key: &str, payload: Vec<u8>) -> Message {
    Message { offset, key: Some(key.as_bytes().to_vec()), payload: Some(payload), accepted_at: None }
}

#[test]
fn decoding_refuses_what_cannot_be_counted_and_drops_repeats() {
    let now: DateTime<Utc> = "2026-11-26T12:00:00Z".parse().unwrap();
    let catalogue = MetricCatalogue::default();
    let fresh = event("a", "acme", now - TimeDelta::minutes(1));
    let messages = vec![
        message(9, "acme", event("before", "acme", now).to_json()),
        message(10, "acme", fresh.to_json()),
        message(11, "acme", b"{oops".to_vec()),
        message(12, "acme", event("old", "acme", now - TimeDelta::days(36)).to_json()),
        message(13, "globex", event("b", "acme", now).to_json()),
        message(14, "acme", fresh.to_json()),
        message(15, "acme", event("after", "acme", now).to_json()),
    ];
    let decoded = decode(&plan(14, now), &messages, &catalogue);
    assert_eq!(decoded.events.len(), 1, "offsets 9 and 15 are outside the plan");
    assert_eq!(decoded.events[0], (10, fresh));
    assert_eq!(decoded.duplicates_in_batch, 1);
    let reasons: Vec<(u64, &str)> = decoded.dead_letters.iter().map(|d| (d.offset, d.reason)).collect();
    assert_eq!(reasons, vec![(11, "malformed"), (12, "too_old"), (13, "key_mismatch")]);
}

#[test]
fn lateness_is_judged_at_the_plan_time_not_at_replay_time() {
    let decided: DateTime<Utc> = "2026-11-26T12:00:00Z".parse().unwrap();
    let catalogue = MetricCatalogue::default();
    let nearly_too_old = event("a", "acme", decided - TimeDelta::days(35) + TimeDelta::minutes(1));
    let messages = vec![message(10, "acme", nearly_too_old.to_json())];
    // Replayed a day later, the same plan still accepts it: its decision time is stored.
    let decoded = decode(&plan(10, decided), &messages, &catalogue);
    assert_eq!(decoded.events.len(), 1);
    assert!(decoded.dead_letters.is_empty());
}

#[test]
fn a_batch_claims_every_decoded_event_at_its_offset() {
    let now: DateTime<Utc> = "2026-11-26T12:00:00Z".parse().unwrap();
    let catalogue = MetricCatalogue::default();
    let mut messages: Vec<Message> =
        (0..3).map(|n| message(10 + n, "acme", event(&format!("e{n}"), "acme", now).to_json())).collect();
    messages.push(message(13, "acme", event("e1", "acme", now).to_json()));
    let plan = plan(13, now);
    let claims = claims(&plan, &decode(&plan, &messages, &catalogue).events);
    let claimed: Vec<(&str, u64, u32)> =
        claims.iter().map(|c| (c.event_id.as_str(), c.kafka_offset, c.kafka_partition)).collect();
    assert_eq!(claimed, vec![("e0", 10, 2), ("e1", 11, 2), ("e2", 12, 2)], "one claim per pair, the first occurrence");
    assert!(claims.iter().all(|c| i64::from(c.received_at) == now.timestamp()));
}

#[test]
fn assembling_leaves_out_pairs_counted_before_and_is_deterministic() {
    let now: DateTime<Utc> = "2026-11-26T12:00:00Z".parse().unwrap();
    let catalogue = MetricCatalogue::default();
    let messages: Vec<Message> = (0..4)
        .map(|n| message(10 + n, "acme", event(&format!("e{n}"), "acme", now - TimeDelta::hours(1)).to_json()))
        .collect();
    let plan = plan(13, now);
    let decoded = decode(&plan, &messages, &catalogue);
    let before: HashSet<(String, String)> = [("acme".to_owned(), "e1".to_owned())].into();
    let rows = assemble(&plan, decoded.events, &before, &catalogue);
    assert_eq!(rows.events.iter().map(|r| r.event_id.as_str()).collect::<Vec<_>>(), vec!["e0", "e2", "e3"]);
    assert_eq!((rows.duplicates_before, rows.late), (1, 3));
    let again = assemble(&plan, decode(&plan, &messages, &catalogue).events, &before, &catalogue);
    assert_eq!((again.events, again.rollups), (rows.events, rows.rollups));
    assert_eq!(plan.token(), "usage/2/10-13");
    assert_eq!(plan.plan_token(), "plan/usage/2/10");
}
