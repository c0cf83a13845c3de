//! The HTTP contract: what is published, what is refused, and that refusals publish nothing.

use reqwest::StatusCode;
use serde_json::{Value, json};
use tally_schemas::{MetricCatalogue, UsageEvent, ValidationContext};

use crate::helpers::{TestApp, event};

fn parse(payload: &[u8]) -> UsageEvent {
    let catalogue = MetricCatalogue::default();
    UsageEvent::from_json_slice(payload, &ValidationContext::new(&catalogue, chrono::Utc::now())).unwrap()
}

#[tokio::test]
async fn events_arrive_keyed_by_tenant_on_the_usage_topic() {
    let app = TestApp::spawn().await;
    let batch = json!([event("a-1", "acme"), event("g-1", "globex"), event("a-2", "acme"), event("g-2", "globex")]);
    let answer = app.post_json(&app.admin_key, &batch).await;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.body);
    assert_eq!(answer.body["accepted"], 4);

    let messages = app.usage(4).await;
    assert_eq!(messages.len(), 4);
    let mut partitions = std::collections::HashMap::new();
    for message in &messages {
        let event = parse(&message.payload);
        assert_eq!(message.key.as_deref(), Some(event.tenant_id.as_str()), "key = tenant id");
        assert_eq!(message.headers["tally-event-id"], event.id.as_str());
        let first = *partitions.entry(event.tenant_id.to_string()).or_insert(message.partition);
        assert_eq!(first, message.partition, "one tenant, one partition");
    }
    app.stop().await;
}

#[tokio::test]
async fn a_batch_with_invalid_events_accepts_the_rest_and_dead_letters_the_invalid() {
    let app = TestApp::spawn().await;
    let mut unknown_metric = event("bad-1", "acme");
    unknown_metric["metric"] = json!("gpu_hours");
    let mut negative = event("bad-2", "acme");
    negative["value"] = json!(-5);
    let batch = json!([event("ok-1", "acme"), unknown_metric, event("ok-2", "acme"), negative, event("ok-3", "acme")]);
    let answer = app.post_json(&app.acme_key, &batch).await;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.body);
    assert_eq!(answer.body["accepted"], 3);
    assert_eq!(answer.body["rejected"], 2);
    let results = answer.body["results"].as_array().unwrap();
    assert_eq!(results[1]["status"], "rejected");
    assert_eq!(results[1]["reason"], "unknown_metric");
    assert_eq!(results[1]["errors"][0]["field"], "metric");
    assert_eq!(results[3]["reason"], "out_of_range");
    assert_eq!(results[4]["status"], "accepted");

    let usage: Vec<String> = app.usage(3).await.iter().map(|m| parse(&m.payload).id.to_string()).collect();
    let mut usage = usage;
    usage.sort();
    assert_eq!(usage, ["ok-1", "ok-2", "ok-3"]);
    let dead = app.dead_letters(2).await;
    assert_eq!(dead.len(), 2);
    let mut reasons: Vec<&str> = dead.iter().map(|m| m.headers["tally-dlq-reason"].as_str()).collect();
    reasons.sort_unstable();
    assert_eq!(reasons, ["out_of_range", "unknown_metric"]);
    for message in &dead {
        assert_eq!(message.headers["tally-dlq-stage"], "ingest");
        assert!(!message.headers["tally-dlq-detail"].is_empty());
        let original: Value = serde_json::from_slice(&message.payload).unwrap();
        assert!(original["id"].as_str().unwrap().starts_with("bad-"), "the sender's event as sent");
    }
    app.stop().await;
}

#[tokio::test]
async fn a_foreign_tenant_key_is_refused_and_publishes_nothing() {
    let app = TestApp::spawn().await;
    let batch = json!([event("a-1", "acme"), event("g-1", "globex")]);
    let answer = app.post_json(&app.acme_key, &batch).await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN, "{}", answer.body);
    let message = answer.body["error"]["message"].as_str().unwrap();
    assert!(message.contains(r#"tenant "globex""#) && message.contains(r#"tenant "acme""#), "{message}");
    assert!(!message.contains("TenantId"), "the tenant is named plainly: {message}");
    let mut invalid_foreign = event("g-2", "globex");
    invalid_foreign["metric"] = json!("nope");
    let answer = app.post_json(&app.acme_key, &json!([invalid_foreign])).await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN, "an invalid foreign event is refused too, not dead-lettered");
    assert_eq!(app.published().await, 0, "nothing reached either topic");
    app.stop().await;
}

#[tokio::test]
async fn keys_are_checked_and_revocation_takes_effect() {
    let app = TestApp::spawn().await;
    let body = serde_json::to_vec(&event("a-1", "acme")).unwrap();
    assert_eq!(app.post(None, "application/json", body.clone()).await.status, StatusCode::UNAUTHORIZED);
    let wrong_secret = format!("{}0", &app.acme_key[..app.acme_key.len() - 1]);
    let wrong_secret = if wrong_secret == app.acme_key {
        format!("{}1", &app.acme_key[..app.acme_key.len() - 1])
    } else {
        wrong_secret
    };
    assert_eq!(app.post(Some(&wrong_secret), "application/json", body.clone()).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(app.post(Some("not-a-key"), "application/json", body.clone()).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(app.post(Some(&app.acme_key), "application/json", body.clone()).await.status, StatusCode::ACCEPTED);
    assert!(tally_kit::auth::revoke_key(&app.pg.pool, &app.acme_key).await.unwrap());
    assert_eq!(app.post(Some(&app.acme_key), "application/json", body).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(app.published().await, 1);
    app.stop().await;
}

#[tokio::test]
async fn suspended_and_unknown_tenants_are_refused() {
    let app = TestApp::spawn().await;
    let frozen = tally_kit::auth::create_key(
        &app.pg.pool,
        tally_kit::auth::Scope::Tenant,
        Some(&tally_schemas::TenantId::parse("frozen").unwrap()),
        "",
    )
    .await
    .unwrap()
    .token;
    let answer = app.post_json(&frozen, &event("f-1", "frozen")).await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN, "{}", answer.body);
    let message = answer.body["error"]["message"].as_str().unwrap();
    assert!(message.contains(r#"tenant "frozen" is suspended"#), "{message}");

    let answer = app
        .post_json(&app.admin_key, &json!([event("f-2", "frozen"), event("n-1", "nobody"), event("a-1", "acme")]))
        .await;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.body);
    assert_eq!(answer.body["results"][0]["reason"], "tenant_not_accepted");
    assert_eq!(answer.body["results"][1]["reason"], "tenant_not_accepted");
    assert_eq!(answer.body["accepted"], 1);
    assert_eq!(app.dead_letters(2).await.len(), 2);
    app.stop().await;
}

#[tokio::test]
async fn malformed_oversized_and_foreign_format_requests_publish_nothing() {
    let app = TestApp::spawn_with(tally_testkit::kafka_config(), Default::default(), |config| {
        config.http.max_body_bytes = 4_096;
        config.http.max_batch_events = 5;
    })
    .await;
    let key = Some(app.admin_key.as_str());
    let cases: Vec<(&str, Vec<u8>, StatusCode)> = vec![
        ("text/csv", b"id,tenant\n1,acme".to_vec(), StatusCode::UNSUPPORTED_MEDIA_TYPE),
        ("application/json", b"{\"id\": ".to_vec(), StatusCode::BAD_REQUEST),
        ("application/json", b"".to_vec(), StatusCode::BAD_REQUEST),
        ("application/json", b"[]".to_vec(), StatusCode::BAD_REQUEST),
        ("application/json", vec![b' '; 5_000], StatusCode::PAYLOAD_TOO_LARGE),
        ("application/json", serde_json::to_vec(&vec![event("x", "acme"); 6]).unwrap(), StatusCode::PAYLOAD_TOO_LARGE),
        ("application/cloudevents-batch+json", b"{}".to_vec(), StatusCode::BAD_REQUEST),
        ("application/json", vec![0xff, 0xfe], StatusCode::BAD_REQUEST),
    ];
    for (content_type, body, expected) in cases {
        let answer = app.post(key, content_type, body).await;
        assert_eq!(answer.status, expected, "{content_type}: {}", answer.body);
        assert!(answer.body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{}", answer.body);
    }
    let all_invalid = app.post_json(&app.admin_key, &json!([{"id": "x"}])).await;
    assert_eq!(all_invalid.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", all_invalid.body);
    assert_eq!(app.topics_usage_size().await, 0, "only the refused event reached the dead-letter topic");
    app.stop().await;
}

#[tokio::test]
async fn cloudevents_structured_and_batch_are_accepted() {
    let app = TestApp::spawn().await;
    let ce = |id: &str| {
        json!({"specversion": "1.0", "id": id, "source": "billing-api", "type": "compute_seconds",
               "subject": "acme", "time": chrono::Utc::now().to_rfc3339(), "data": {"value": "1.25", "attributes": {"region": "eu"}}})
    };
    let one =
        app.post(Some(&app.acme_key), "application/cloudevents+json", serde_json::to_vec(&ce("ce-1")).unwrap()).await;
    assert_eq!(one.status, StatusCode::ACCEPTED, "{}", one.body);
    let batch = app
        .post(
            Some(&app.acme_key),
            "application/cloudevents-batch+json",
            serde_json::to_vec(&json!([ce("ce-2"), ce("ce-3")])).unwrap(),
        )
        .await;
    assert_eq!(batch.status, StatusCode::ACCEPTED, "{}", batch.body);
    let events: Vec<UsageEvent> = app.usage(3).await.iter().map(|m| parse(&m.payload)).collect();
    assert_eq!(events.len(), 3);
    assert!(events.iter().all(|e| e.value.to_string() == "1.25" && e.attributes["region"] == "eu"));
    app.stop().await;
}

#[tokio::test]
async fn a_cloudevent_in_binary_content_mode_round_trips() {
    let app = TestApp::spawn().await;
    let time = chrono::Utc::now().to_rfc3339();
    let headers = |id: &'static str| {
        vec![
            ("ce-specversion", "1.0"),
            ("ce-id", id),
            ("ce-source", "billing-api"),
            ("ce-type", "compute_seconds"),
            ("ce-subject", "acme"),
            ("content-type", "application/json"),
        ]
    };
    let mut first = headers("bin-1");
    first.push(("ce-time", time.as_str()));
    let body = br#"{"value": "2.5", "attributes": {"region": "eu"}}"#.to_vec();
    let answer = app.post_with(Some(&app.acme_key), &first, body.clone()).await;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.body);
    let foreign: Vec<(&str, &str)> =
        headers("bin-2").into_iter().map(|(k, v)| if k == "ce-subject" { (k, "globex") } else { (k, v) }).collect();
    let refused = app.post_with(Some(&app.acme_key), &foreign, body.clone()).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "a binary-mode event is tenant-scoped too: {}", refused.body);
    let incomplete: Vec<(&str, &str)> = headers("bin-3").into_iter().filter(|(k, _)| *k != "ce-type").collect();
    let malformed = app.post_with(Some(&app.acme_key), &incomplete, body).await;
    assert_eq!(malformed.status, StatusCode::BAD_REQUEST, "{}", malformed.body);
    assert!(malformed.body["error"]["message"].as_str().unwrap().contains("binary mode"), "{}", malformed.body);
    let events: Vec<UsageEvent> = app.usage(1).await.iter().map(|m| parse(&m.payload)).collect();
    assert_eq!((events[0].id.as_str(), events[0].tenant_id.as_str()), ("bin-1", "acme"));
    assert_eq!((events[0].metric.as_str(), events[0].value.to_string().as_str()), ("compute_seconds", "2.5"));
    assert_eq!(events[0].attributes["region"], "eu");
    assert_eq!(events[0].timestamp, chrono::DateTime::parse_from_rfc3339(&time).unwrap());
    app.stop().await;
}

#[tokio::test]
async fn operations_endpoints_and_openapi_are_served() {
    let app = TestApp::spawn().await;
    let http = reqwest::Client::new();
    assert_eq!(http.get(app.url("/livez")).send().await.unwrap().status(), StatusCode::OK);
    let ready = http.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
    app.post_json(&app.acme_key, &event("m-1", "acme")).await;
    let metrics = http.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("tally_ingest_events_accepted_total 1"), "{metrics}");
    assert!(metrics.contains("tally_ingest_requests_total{status=\"202\"} 1"), "{metrics}");
    let openapi = http.get(app.url("/openapi.yaml")).send().await.unwrap().text().await.unwrap();
    assert!(openapi.contains("/v1/events"));

    app.stopping.cancel();
    let stopped = tokio::time::timeout(std::time::Duration::from_secs(20), app.running).await;
    assert!(stopped.unwrap().unwrap().is_ok(), "graceful shutdown completes");
    app.pg.drop_database().await;
}
