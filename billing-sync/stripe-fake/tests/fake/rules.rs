//! Stripe's documented rules, one test each, every answer decoded with async-stripe.

use std::sync::Arc;

use futures_util::future::join_all;
use reqwest::StatusCode;
use stripe_billing::{BillingMeter, BillingMeterEvent, BillingMeterEventAdjustment, BillingMeterEventSummary};
use stripe_shared::Customer;
use stripe_types::List;
use tally_stripe_fake::{Clock, Faults};

use crate::{Answer, Client, decode, meter_and_customer, refusal};

async fn event(client: &Client, customer: &str, value: &str, identifier: &str) -> Answer {
    let form = [
        ("event_name", "api_calls"),
        ("payload[stripe_customer_id]", customer),
        ("payload[value]", value),
        ("identifier", identifier),
    ];
    client.post("/v1/billing/meter_events", &form, None).await
}

#[tokio::test]
async fn payload_values_are_whole_numbers_of_at_most_15_significant_digits() {
    let client = Client::start().await;
    let (customer, _) = meter_and_customer(&client).await;
    for (n, bad) in ["1.5", "3600.25", "1e3", "", "12a", "1234567890123456", "+4"].iter().enumerate() {
        let answer = event(&client, &customer, bad, &format!("bad-{n}")).await;
        assert_eq!(answer.status, 400, "{bad:?} is not a whole number Stripe takes");
        let error = refusal(&answer);
        assert_eq!(error.param.as_deref(), Some("payload[value]"), "{bad:?}");
    }
    for (n, good) in ["0", "-3", "123456789012345", "000000000000000000042"].iter().enumerate() {
        let answer = event(&client, &customer, good, &format!("good-{n}")).await;
        assert_eq!(answer.status, 200, "{good:?}: {}", answer.body);
        let _: BillingMeterEvent = decode(&answer);
    }
}

#[tokio::test]
async fn identifier_and_event_name_are_at_most_100_characters() {
    let client = Client::start().await;
    let (customer, _) = meter_and_customer(&client).await;
    let longest = "i".repeat(100);
    let taken: BillingMeterEvent = decode(&event(&client, &customer, "1", &longest).await);
    assert_eq!(taken.identifier, longest);
    let too_long = event(&client, &customer, "1", &"i".repeat(101)).await;
    assert_eq!((too_long.status, refusal(&too_long).param.as_deref()), (StatusCode::BAD_REQUEST, Some("identifier")));
    let name = "m".repeat(101);
    let meter = client
        .post(
            "/v1/billing/meters",
            &[("display_name", "x"), ("event_name", name.as_str()), ("default_aggregation[formula]", "sum")],
            None,
        )
        .await;
    assert_eq!((meter.status, refusal(&meter).param.as_deref()), (StatusCode::BAD_REQUEST, Some("event_name")));
    let form = [("event_name", name.as_str()), ("payload[stripe_customer_id]", &customer), ("payload[value]", "1")];
    let sent = client.post("/v1/billing/meter_events", &form, None).await;
    assert_eq!((sent.status, refusal(&sent).param.as_deref()), (StatusCode::BAD_REQUEST, Some("event_name")));
}

#[tokio::test]
async fn lists_page_with_limit_has_more_starting_after_and_ending_before() {
    let client = Client::start().await;
    for n in 0..25 {
        let name = format!("meter_{n:02}");
        let form =
            [("display_name", name.as_str()), ("event_name", name.as_str()), ("default_aggregation[formula]", "sum")];
        assert_eq!(client.post("/v1/billing/meters", &form, None).await.status, 200);
    }
    let first: List<BillingMeter> = decode(&client.get("/v1/billing/meters").await);
    assert_eq!((first.data.len(), first.has_more), (10, true), "Stripe's default page is 10");
    let mut seen: Vec<String> = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let cursor = after.as_ref().map(|id| format!("&starting_after={id}")).unwrap_or_default();
        let page: List<BillingMeter> = decode(&client.get(&format!("/v1/billing/meters?limit=7{cursor}")).await);
        seen.extend(page.data.iter().map(|m| m.id.to_string()));
        after = page.data.last().map(|m| m.id.to_string());
        if !page.has_more {
            break;
        }
    }
    seen.dedup();
    assert_eq!(seen.len(), 25, "every meter once over the pages");
    let back: List<BillingMeter> =
        decode(&client.get(&format!("/v1/billing/meters?limit=3&ending_before={}", seen[10])).await);
    let ids: Vec<String> = back.data.iter().map(|m| m.id.to_string()).collect();
    assert_eq!((ids, back.has_more), (seen[7..10].to_vec(), true));
    for bad in ["0", "101", "ten"] {
        let answer = client.get(&format!("/v1/billing/meters?limit={bad}")).await;
        assert_eq!((answer.status, refusal(&answer).param.as_deref()), (StatusCode::BAD_REQUEST, Some("limit")));
    }

    let (customer, meter) = meter_and_customer(&client).await;
    let hour = chrono::Utc::now().timestamp() / 3_600 * 3_600 - 3_600;
    let start = hour - 129 * 3_600;
    for n in 0..130 {
        let at = (start + n * 3_600).to_string();
        let form = [
            ("event_name", "api_calls"),
            ("payload[stripe_customer_id]", customer.as_str()),
            ("payload[value]", "2"),
            ("identifier", &format!("w{n}")),
            ("timestamp", at.as_str()),
        ];
        assert_eq!(client.post("/v1/billing/meter_events", &form, None).await.status, 200);
    }
    let path = |cursor: &str| {
        format!(
            "/v1/billing/meters/{meter}/event_summaries?customer={customer}&start_time={start}&end_time={}&value_grouping_window=hour&limit=100{cursor}",
            hour + 3_600
        )
    };
    let page: List<BillingMeterEventSummary> = decode(&client.get(&path("")).await);
    assert_eq!((page.data.len(), page.has_more), (100, true));
    let last = page.data.last().unwrap().id.to_string();
    let rest: List<BillingMeterEventSummary> = decode(&client.get(&path(&format!("&starting_after={last}"))).await);
    assert_eq!((rest.data.len(), rest.has_more), (30, false));
    let total: f64 = page.data.iter().chain(&rest.data).map(|s| s.aggregated_value).sum();
    assert_eq!(total, 260.0);
}

#[tokio::test]
async fn one_idempotency_key_in_concurrent_requests_creates_one_object_and_409s_the_rest() {
    let client = Arc::new(Client::start().await);
    client.control("/_fake/faults", &Faults { delay_ms: 40, ..Faults::default() }).await;
    for round in 0..5 {
        let key = format!("concurrent-{round}");
        let answers = join_all((0..24).map(|_| {
            let client = Arc::clone(&client);
            let key = key.clone();
            async move { client.post("/v1/customers", &[("name", "Acme")], Some(&key)).await }
        }))
        .await;
        let created: Vec<&Answer> = answers.iter().filter(|a| a.status == 200).collect();
        let conflicts: Vec<&Answer> = answers.iter().filter(|a| a.status == 409).collect();
        assert_eq!(created.len() + conflicts.len(), 24);
        for conflict in &conflicts {
            let error = refusal(conflict);
            assert_eq!(error.code.map(|c| c.as_str().to_owned()).as_deref(), Some("idempotency_key_in_use"));
        }
        let ids: std::collections::HashSet<String> =
            created.iter().map(|a| decode::<Customer>(a).id.to_string()).collect();
        assert_eq!(ids.len(), 1, "round {round}: one customer, whatever the interleaving");
    }
}

#[tokio::test]
async fn a_replay_is_recognised_by_its_parameters_in_any_order() {
    let client = Client::start().await;
    let (customer, _) = meter_and_customer(&client).await;
    let form = [
        ("event_name", "api_calls"),
        ("payload[stripe_customer_id]", customer.as_str()),
        ("payload[value]", "5"),
        ("identifier", "ordered"),
    ];
    let first = client.post("/v1/billing/meter_events", &form, Some("order-key")).await;
    let mut reordered = form;
    reordered.reverse();
    let replay = client.post("/v1/billing/meter_events", &reordered, Some("order-key")).await;
    assert!(first.status == 200 && replay.status == 200 && replay.replayed, "{}", replay.body);
    let (a, b): (BillingMeterEvent, BillingMeterEvent) = (decode(&first), decode(&replay));
    assert_eq!(a.identifier, b.identifier);
}

#[tokio::test]
async fn every_answer_carries_a_request_id() {
    let client = Client::start().await;
    let (customer, _) = meter_and_customer(&client).await;
    let unauthorized = client.http.get(format!("{}/v1/billing/meters", client.base)).send().await.unwrap();
    assert!(unauthorized.headers().get("request-id").is_some_and(|v| v.to_str().unwrap().starts_with("req_")));
    let answers = [
        client.get("/v1/billing/meters").await,
        client.get("/v1/customers/cus_none").await,
        event(&client, &customer, "1.5", "x").await,
        client.get("/v1/nowhere").await,
    ];
    let mut ids: Vec<&str> = answers.iter().map(|a| a.request_id.as_deref().unwrap()).collect();
    assert!(ids.iter().all(|id| id.starts_with("req_")));
    ids.dedup();
    assert_eq!(ids.len(), 4, "one id per request");
}

#[tokio::test]
async fn an_adjustment_cancels_an_event_only_within_24_hours_of_receiving_it() {
    let client = Client::start().await;
    let (customer, meter) = meter_and_customer(&client).await;
    for (identifier, value) in [("keep", "10"), ("wrong", "7"), ("late", "3")] {
        assert_eq!(event(&client, &customer, value, identifier).await.status, 200);
    }
    let cancel = |identifier: &'static str| {
        let client = &client;
        async move {
            let form = [("event_name", "api_calls"), ("type", "cancel"), ("cancel[identifier]", identifier)];
            client.post("/v1/billing/meter_event_adjustments", &form, None).await
        }
    };
    let cancelled: BillingMeterEventAdjustment = decode(&cancel("wrong").await);
    assert_eq!(cancelled.cancel.unwrap().identifier.as_deref(), Some("wrong"));
    let twice = cancel("wrong").await;
    assert_eq!(twice.status, 400);
    let _ = refusal(&twice);
    let unknown = cancel("never-sent").await;
    assert_eq!(unknown.status, 404);
    let now = chrono::Utc::now().timestamp() / 60 * 60;
    let path = format!(
        "/v1/billing/meters/{meter}/event_summaries?customer={customer}&start_time={}&end_time={}",
        now - 3_600,
        now + 120
    );
    let total: List<BillingMeterEventSummary> = decode(&client.get(&path).await);
    assert_eq!(total.data[0].aggregated_value, 13.0, "the cancelled event no longer counts");
    client.control("/_fake/clock", &Clock { offset_secs: 25 * 3_600 }).await;
    let too_late = cancel("late").await;
    assert_eq!(
        (too_late.status, refusal(&too_late).param.as_deref()),
        (StatusCode::BAD_REQUEST, Some("cancel[identifier]"))
    );
}

#[tokio::test]
async fn a_second_concurrent_meter_event_for_one_customer_and_meter_is_rate_limited() {
    let client = Arc::new(Client::start().await);
    let (customer, _) = meter_and_customer(&client).await;
    client.control("/_fake/faults", &Faults { delay_ms: 100, ..Faults::default() }).await;
    let answers = join_all((0..2).map(|n| {
        let client = Arc::clone(&client);
        let customer = customer.clone();
        async move { event(&client, &customer, "1", &format!("c{n}")).await }
    }))
    .await;
    let statuses: Vec<u16> = answers.iter().map(|a| a.status.as_u16()).collect();
    assert!(statuses.contains(&200) && statuses.contains(&429), "{statuses:?}");
    let limited = answers.iter().find(|a| a.status == 429).unwrap();
    assert_eq!(refusal(limited).code.map(|c| c.as_str().to_owned()).as_deref(), Some("rate_limit"));
}
