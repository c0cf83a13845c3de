//! The fake behaves as Stripe's API does for what Tally calls, and every answer decodes with
//! `async-stripe` (Stripe's own types).

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use serde_json::Value;
use stripe_billing::{BillingMeter, BillingMeterEvent, BillingMeterEventSummary};
use stripe_shared::{ApiErrors, Customer};
use stripe_types::List;
use tally_stripe_fake::{Fake, Faults, router};

struct Client {
    base: String,
    http: reqwest::Client,
}

struct Answer {
    status: StatusCode,
    replayed: bool,
    request_id: Option<String>,
    body: Value,
}

impl Client {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router(Arc::new(Fake::new(0)))).await.unwrap() });
        Self { base, http: reqwest::Client::new() }
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Answer {
        let response = request.bearer_auth("sk_test_tally").send().await.unwrap();
        let status = response.status();
        let replayed = response.headers().get("idempotent-replayed").is_some();
        let request_id = response.headers().get("request-id").map(|v| v.to_str().unwrap().to_owned());
        let body = response.json().await.unwrap_or(Value::Null);
        Answer { status, replayed, request_id, body }
    }

    async fn post(&self, path: &str, form: &[(&str, &str)], key: Option<&str>) -> Answer {
        let mut request = self.http.post(format!("{}{path}", self.base)).form(form);
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        self.send(request).await
    }

    async fn get(&self, path: &str) -> Answer {
        self.send(self.http.get(format!("{}{path}", self.base))).await
    }

    async fn control(&self, path: &str, body: &impl serde::Serialize) {
        let answer = self.http.post(format!("{}{path}", self.base)).json(body).send().await.unwrap();
        assert_eq!(answer.status(), 200);
    }
}

/// Stripe's error object of a refused answer, decoded with async-stripe.
fn refusal(answer: &Answer) -> ApiErrors {
    decode(&Answer { body: answer.body["error"].clone(), request_id: None, ..*answer })
}

/// Decodes with Stripe's type, failing the test with the body if it does not fit.
fn decode<T: DeserializeOwned>(answer: &Answer) -> T {
    serde_json::from_value(answer.body.clone()).unwrap_or_else(|e| {
        panic!("{} does not decode as Stripe's type: {e}\n{}", std::any::type_name::<T>(), answer.body)
    })
}

async fn meter_and_customer(client: &Client) -> (String, String) {
    let customer = client.post("/v1/customers", &[("name", "Acme"), ("metadata[tenant_id]", "acme")], None).await;
    assert_eq!(customer.status, 200);
    let customer: Customer = decode(&customer);
    let meter = client
        .post(
            "/v1/billing/meters",
            &[
                ("display_name", "API calls"),
                ("event_name", "api_calls"),
                ("default_aggregation[formula]", "sum"),
                ("customer_mapping[event_payload_key]", "stripe_customer_id"),
                ("customer_mapping[type]", "by_id"),
                ("value_settings[event_payload_key]", "value"),
            ],
            None,
        )
        .await;
    assert_eq!(meter.status, 200, "{}", meter.body);
    let meter: BillingMeter = decode(&meter);
    (customer.id.to_string(), meter.id.to_string())
}

#[tokio::test]
async fn customers_meters_events_and_summaries_behave_and_decode_as_stripes() {
    let client = Client::start().await;
    let (customer, meter) = meter_and_customer(&client).await;
    let fetched: Customer = decode(&client.get(&format!("/v1/customers/{customer}")).await);
    assert_eq!(fetched.metadata.unwrap()["tenant_id"], "acme");
    let meters: List<BillingMeter> = decode(&client.get("/v1/billing/meters").await);
    assert_eq!(meters.data.len(), 1);

    let hour = chrono::Utc::now().timestamp() / 3_600 * 3_600 - 3_600;
    for (identifier, value, at) in [("a", "25", hour + 10), ("b", "17", hour + 20), ("c", "8", hour - 3_590)] {
        let at = at.to_string();
        let form = [
            ("event_name", "api_calls"),
            ("payload[stripe_customer_id]", customer.as_str()),
            ("payload[value]", value),
            ("identifier", identifier),
            ("timestamp", at.as_str()),
        ];
        let event = client.post("/v1/billing/meter_events", &form, None).await;
        assert_eq!(event.status, 200, "{}", event.body);
        let event: BillingMeterEvent = decode(&event);
        assert_eq!(event.identifier, identifier);
    }
    let again = client
        .post(
            "/v1/billing/meter_events",
            &[
                ("event_name", "api_calls"),
                ("payload[stripe_customer_id]", &customer),
                ("payload[value]", "25"),
                ("identifier", "a"),
            ],
            None,
        )
        .await;
    assert_eq!(again.status, 400);
    let error = refusal(&again);
    assert_eq!(error.code.map(|code| code.as_str().to_owned()).as_deref(), Some("resource_already_exists"));

    let path = format!(
        "/v1/billing/meters/{meter}/event_summaries?customer={customer}&start_time={}&end_time={}&value_grouping_window=hour",
        hour - 3_600,
        hour + 3_600
    );
    let summaries: List<BillingMeterEventSummary> = decode(&client.get(&path).await);
    let values: Vec<f64> = summaries.data.iter().map(|s| s.aggregated_value).collect();
    assert_eq!(values, vec![8.0, 42.0]);
    let whole = format!(
        "/v1/billing/meters/{meter}/event_summaries?customer={customer}&start_time={}&end_time={}",
        hour - 3_600,
        hour + 3_600
    );
    let total: List<BillingMeterEventSummary> = decode(&client.get(&whole).await);
    assert_eq!(total.data[0].aggregated_value, 50.0);
}

#[tokio::test]
async fn stripes_rules_refuse_what_stripe_refuses() {
    let client = Client::start().await;
    let (customer, _meter) = meter_and_customer(&client).await;
    let unauthorized = client.http.get(format!("{}/v1/billing/meters", client.base)).send().await.unwrap();
    assert_eq!(unauthorized.status(), 401);
    let live_key =
        client.http.get(format!("{}/v1/billing/meters", client.base)).bearer_auth("sk_live_x").send().await.unwrap();
    assert_eq!(live_key.status(), 401, "only test keys");
    let basic = client
        .http
        .get(format!("{}/v1/billing/meters", client.base))
        .basic_auth("sk_test_tally", None::<&str>)
        .send()
        .await
        .unwrap();
    assert_eq!(basic.status(), 200, "Stripe also takes the key as a basic-auth user name");
    let old = (chrono::Utc::now().timestamp() - 36 * 86_400).to_string();
    let ahead = (chrono::Utc::now().timestamp() + 600).to_string();
    for at in [old.as_str(), ahead.as_str()] {
        let answer = client
            .post(
                "/v1/billing/meter_events",
                &[
                    ("event_name", "api_calls"),
                    ("payload[stripe_customer_id]", &customer),
                    ("payload[value]", "1"),
                    ("timestamp", at),
                ],
                None,
            )
            .await;
        assert_eq!((answer.status.as_u16(), answer.body["error"]["param"].as_str()), (400, Some("timestamp")));
    }
    let unknown =
        client.post("/v1/billing/meter_events", &[("event_name", "nope"), ("payload[value]", "1")], None).await;
    assert_eq!(unknown.status, 400);
    let missing = client.get("/v1/customers/cus_missing").await;
    assert_eq!((missing.status.as_u16(), missing.body["error"]["code"].as_str()), (404, Some("resource_missing")));
}

#[tokio::test]
async fn idempotency_keys_replay_and_lost_answers_are_recovered_by_retrying() {
    let client = Client::start().await;
    let (customer, meter) = meter_and_customer(&client).await;
    let form = [
        ("event_name", "api_calls"),
        ("payload[stripe_customer_id]", customer.as_str()),
        ("payload[value]", "5"),
        ("identifier", "k1"),
    ];
    let first = client.post("/v1/billing/meter_events", &form, Some("key-1")).await;
    let second = client.post("/v1/billing/meter_events", &form, Some("key-1")).await;
    assert_eq!((first.status, second.status), (StatusCode::OK, StatusCode::OK));
    assert!(second.replayed && !first.replayed);
    assert_eq!(first.body, second.body, "the same answer, not a second event");
    let other = [
        ("event_name", "api_calls"),
        ("payload[stripe_customer_id]", customer.as_str()),
        ("payload[value]", "6"),
        ("identifier", "k2"),
    ];
    let misuse = client.post("/v1/billing/meter_events", &other, Some("key-1")).await;
    assert_eq!((misuse.status.as_u16(), misuse.body["error"]["type"].as_str()), (400, Some("idempotency_error")));

    // Every answer lost: the event is applied, the client sees a 502 and retries with its key.
    let set = client
        .http
        .post(format!("{}/_fake/faults", client.base))
        .json(&Faults { drop_percent: 100, seed: 1, ..Faults::default() })
        .send()
        .await
        .unwrap();
    assert_eq!(set.status(), 200);
    let lost_form = [
        ("event_name", "api_calls"),
        ("payload[stripe_customer_id]", customer.as_str()),
        ("payload[value]", "7"),
        ("identifier", "k3"),
    ];
    assert_eq!(client.post("/v1/billing/meter_events", &lost_form, Some("key-3")).await.status, 502);
    client.http.post(format!("{}/_fake/faults", client.base)).json(&Faults::default()).send().await.unwrap();
    let retried = client.post("/v1/billing/meter_events", &lost_form, Some("key-3")).await;
    assert!(retried.status == 200 && retried.replayed);
    let now = chrono::Utc::now().timestamp() / 60 * 60;
    let path = format!(
        "/v1/billing/meters/{meter}/event_summaries?customer={customer}&start_time={}&end_time={}",
        now - 3_600,
        now + 60
    );
    let total: List<BillingMeterEventSummary> = decode(&client.get(&path).await);
    assert_eq!(total.data[0].aggregated_value, 12.0, "5 + 7: nothing counted twice");

    client
        .http
        .post(format!("{}/_fake/faults", client.base))
        .json(&Faults { rate_limit_percent: 100, seed: 1, ..Faults::default() })
        .send()
        .await
        .unwrap();
    let limited = client.get("/v1/billing/meters").await;
    assert_eq!((limited.status.as_u16(), limited.body["error"]["code"].as_str()), (429, Some("rate_limit")));
}

mod rules;
