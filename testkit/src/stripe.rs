//! Setting up the Stripe fake (`tally-stripe-fake`) over its HTTP API, as Stripe itself is set
//! up: the meters billing-sync sends to, and customers.

use serde_json::Value;

async fn post(base: &str, key: &str, path: &str, form: &[(&str, &str)]) -> Value {
    let answer = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .bearer_auth(key)
        .form(form)
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {path} to the Stripe fake: {e}"));
    answer.json().await.unwrap_or_else(|e| panic!("POST {path}: not JSON: {e}"))
}

/// Creates a `sum` meter for each event name; returns their ids in the same order.
pub async fn create_meters(base: &str, key: &str, event_names: &[&str]) -> Vec<String> {
    let mut ids = Vec::new();
    for name in event_names {
        let form = [("display_name", *name), ("event_name", *name), ("default_aggregation[formula]", "sum")];
        let meter = post(base, key, "/v1/billing/meters", &form).await;
        ids.push(meter["id"].as_str().unwrap_or_else(|| panic!("no meter id: {meter}")).to_owned());
    }
    ids
}

/// Creates a customer; returns its id.
pub async fn create_customer(base: &str, key: &str, name: &str) -> String {
    let customer = post(base, key, "/v1/customers", &[("name", name)]).await;
    customer["id"].as_str().unwrap_or_else(|| panic!("no customer id: {customer}")).to_owned()
}
