//! The emitter client against a running ingest, and in direct-to-Kafka mode.

use std::time::Duration;

use tally_client::{ClientConfig, EmitError, Emitter, event};

use crate::helpers::{TestApp, event_ids};

#[tokio::test]
async fn emitted_events_are_batched_acknowledged_and_refusals_reported() {
    let app = TestApp::spawn().await;
    let mut config = ClientConfig::new(app.url(""), app.acme_key.clone());
    config.max_batch_events = 7;
    let emitter = Emitter::http(config).unwrap();
    let mut deliveries = Vec::new();
    for i in 0..20 {
        deliveries.push(
            emitter.emit(event(&format!("c-{i:02}"), "acme", "api_calls", 1, "client-test").unwrap()).await.unwrap(),
        );
    }
    let unknown = emitter.emit(event("c-bad", "acme", "gpu_hours", 1, "client-test").unwrap()).await.unwrap();
    for delivery in deliveries {
        delivery.acknowledged().await.unwrap();
    }
    match unknown.acknowledged().await {
        Err(EmitError::Rejected { reason, .. }) => assert_eq!(reason, "unknown_metric"),
        other => panic!("expected a rejection, got {other:?}"),
    }
    let foreign = emitter.emit(event("c-foreign", "globex", "api_calls", 1, "client-test").unwrap()).await.unwrap();
    assert!(matches!(foreign.acknowledged().await, Err(EmitError::Refused { status: 403, .. })));
    emitter.close().await;
    let expected: Vec<String> = (0..20).map(|i| format!("c-{i:02}")).collect();
    assert_eq!(event_ids(&app.usage(20).await), expected);
    app.stop().await;
}

#[tokio::test]
async fn an_unreachable_ingest_is_retried_with_the_same_ids_until_it_answers() {
    let app = TestApp::spawn().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut config = ClientConfig::new(format!("http://127.0.0.1:{port}"), app.acme_key.clone());
    config.initial_backoff = Duration::from_millis(100);
    config.max_attempts = 100;
    let emitter = Emitter::http(config).unwrap();
    let delivery = emitter.emit(event("retry-1", "acme", "api_calls", 1, "client-test").unwrap()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;

    // A second ingest comes up on the port the client keeps trying.
    let mut late = app.config.clone();
    late.http.listen = format!("127.0.0.1:{port}").parse().unwrap();
    let stopping = tokio_util::sync::CancellationToken::new();
    let ingest = tally_ingest::Ingest::build(late, stopping.clone()).await.unwrap();
    let running = tokio::spawn(ingest.run_until_stopped());
    tokio::time::timeout(Duration::from_secs(20), delivery.acknowledged()).await.unwrap().unwrap();
    emitter.close().await;
    assert_eq!(event_ids(&app.usage(1).await), ["retry-1"]);
    stopping.cancel();
    running.await.unwrap().unwrap();

    // Nothing listening at all: the client gives up after its attempts, saying why.
    let dead_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut config = ClientConfig::new(format!("http://127.0.0.1:{dead_port}"), app.acme_key.clone());
    config.max_attempts = 3;
    config.initial_backoff = Duration::from_millis(10);
    let emitter = Emitter::http(config).unwrap();
    let delivery = emitter.emit(event("never", "acme", "api_calls", 1, "client-test").unwrap()).await.unwrap();
    assert!(matches!(delivery.acknowledged().await, Err(EmitError::GaveUp { attempts: 3, .. })));
    emitter.close().await;
    app.stop().await;
}

#[tokio::test]
async fn a_full_buffer_pushes_back_on_the_caller() {
    let dead_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut config = ClientConfig::new(format!("http://127.0.0.1:{dead_port}"), "tly_x");
    config.buffer_events = 2;
    config.max_batch_events = 1;
    config.linger = Duration::ZERO;
    config.max_attempts = 1_000;
    config.initial_backoff = Duration::from_secs(10);
    let emitter = Emitter::http(config).unwrap();
    // The sender takes the first event and sits in its 10 s backoff; two more fill the buffer.
    let emit = |id: &str| emitter.try_emit(event(id, "acme", "api_calls", 1, "client-test").unwrap());
    emit("b-0").unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    emit("b-1").unwrap();
    emit("b-2").unwrap();
    assert!(matches!(emit("b-3"), Err(EmitError::Full)), "a bounded buffer refuses once full");
    let waiting = emitter.emit(event("b-wait", "acme", "api_calls", 1, "client-test").unwrap());
    assert!(tokio::time::timeout(Duration::from_millis(200), waiting).await.is_err(), "emit waits for room");
}

#[tokio::test]
async fn direct_mode_writes_what_ingest_writes() {
    let app = TestApp::spawn().await;
    let emitter = Emitter::kafka(ClientConfig::new("unused", "unused"), &app.kafka, &app.topics).unwrap();
    let delivery = emitter.emit(event("direct-1", "acme", "compute_seconds", 3, "client-test").unwrap()).await.unwrap();
    delivery.acknowledged().await.unwrap();
    emitter.close().await;
    let messages = app.usage(1).await;
    assert_eq!(event_ids(&messages), ["direct-1"]);
    assert_eq!(messages[0].key.as_deref(), Some("acme"));
    assert_eq!(messages[0].headers["tally-event-id"], "direct-1");
    app.stop().await;
}
