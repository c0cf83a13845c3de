//! A broker stopped mid-load: requests fail with 503 (or 429), never a 202 for an event the broker
//! does not have; after the broker returns, ingest recovers by itself. And a shutdown under load
//! loses no acknowledged event.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;
use tally_ingest::config::ProducerConfig;
use tally_testkit::{TestBroker, read_topic};

use crate::helpers::{TestApp, event, event_ids};

fn batch(request: usize) -> (Vec<String>, Value) {
    let ids: Vec<String> = (0..20).map(|i| format!("r{request}-e{i}")).collect();
    let events: Vec<Value> =
        ids.iter().map(|id| event(id, if request.is_multiple_of(2) { "acme" } else { "globex" })).collect();
    (ids, Value::Array(events))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_stopped_mid_load_yields_503s_and_never_a_202_for_an_unpublished_event() {
    let mut broker = TestBroker::start().await;
    let producer = ProducerConfig { message_timeout_ms: 2_000, ..ProducerConfig::default() };
    let app = TestApp::spawn_with(broker.kafka_config(), producer, |_| {}).await;

    let mut acknowledged: BTreeSet<String> = BTreeSet::new();
    let (mut accepted_before, mut refused_while_down) = (0, 0);
    let mut request = 0;
    let started = Instant::now();
    let mut stopped_at = None;
    while started.elapsed() < Duration::from_secs(30) {
        request += 1;
        if request == 15 {
            broker.stop().await;
            stopped_at = Some(Instant::now());
        }
        let (ids, body) = batch(request);
        let answer = app.post_json(&app.admin_key, &body).await;
        match answer.status {
            StatusCode::ACCEPTED => {
                assert!(stopped_at.is_none(), "a 202 while the broker is down: {}", answer.body);
                accepted_before += 1;
                acknowledged.extend(ids);
            }
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS => {
                assert!(answer.retry_after.is_some(), "backpressure says when to retry");
                refused_while_down += 1;
                for result in answer.body["results"].as_array().into_iter().flatten() {
                    assert_ne!(result["status"], "accepted", "a refused request marks no event accepted unless acked");
                }
            }
            other => panic!("unexpected {other}: {}", answer.body),
        }
        if stopped_at.is_some_and(|at| at.elapsed() > Duration::from_secs(6)) && refused_while_down >= 2 {
            break;
        }
    }
    assert!(accepted_before >= 10, "load was accepted before the stop");
    assert!(refused_while_down >= 2, "requests during the outage were refused");

    broker.restart().await;
    let mut recovered = false;
    for attempt in 0..30 {
        let (ids, body) = batch(10_000 + attempt);
        if app.post_json(&app.admin_key, &body).await.status == StatusCode::ACCEPTED {
            acknowledged.extend(ids);
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(recovered, "ingest accepts again once the broker is back");

    let messages = read_topic(&broker.kafka_config(), &app.topics.usage_events, 0, Duration::from_secs(10)).await;
    let on_topic: BTreeSet<String> = event_ids(&messages).into_iter().collect();
    let missing: Vec<&String> = acknowledged.difference(&on_topic).collect();
    assert!(missing.is_empty(), "{} acknowledged events are not on the topic: {missing:?}", missing.len());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_under_load_loses_no_acknowledged_event() {
    let app = TestApp::spawn().await;
    let url = app.url("/v1/events");
    let mut loops = Vec::new();
    for client in 0..4 {
        let (url, key) = (url.clone(), app.admin_key.clone());
        loops.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut acknowledged = Vec::new();
            for request in 0.. {
                let (ids, body) = batch(client * 1_000_000 + request);
                let Ok(response) = http.post(&url).bearer_auth(&key).json(&body).send().await else { break };
                match response.status() {
                    StatusCode::ACCEPTED => acknowledged.extend(ids),
                    StatusCode::SERVICE_UNAVAILABLE => break,
                    other => panic!("unexpected {other}"),
                }
            }
            acknowledged
        }));
    }
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    app.stopping.cancel();
    let mut acknowledged = BTreeSet::new();
    for handle in loops {
        acknowledged.extend(handle.await.unwrap());
    }
    assert!(acknowledged.len() >= 100, "load ran before the shutdown");
    let running = app.running;
    tokio::time::timeout(Duration::from_secs(30), running).await.unwrap().unwrap().unwrap();

    let messages = read_topic(&app.kafka, &app.topics.usage_events, acknowledged.len(), Duration::from_secs(20)).await;
    let on_topic: BTreeSet<String> = event_ids(&messages).into_iter().collect();
    let missing: Vec<&String> = acknowledged.difference(&on_topic).collect();
    assert!(missing.is_empty(), "{} acknowledged events lost in shutdown: {missing:?}", missing.len());
    app.pg.drop_database().await;
}
