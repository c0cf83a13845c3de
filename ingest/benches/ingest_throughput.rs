//! Sustained HTTP batch ingest vs a bare rdkafka producer, same broker, same process.
//!
//! Needs the local stack (`deploy/local/up.sh`). Run:
//! `cargo bench -p tally-ingest --bench ingest_throughput [-- EVENTS BATCH CONCURRENCY ROUNDS]`
//! (defaults 1000000 1000 8 7). `TALLY_BENCH_SIDE=http` runs only the ingest side, for profiling.
//! The baseline produces the very messages ingest writes (tenant key, JSON payload, event id
//! header) with the same producer settings (idempotent, acks=all, linger, compression) and waits
//! for every acknowledgement, counted in the delivery callback (rdkafka's cheapest way: no
//! channel or future per message, unlike `FutureProducer`); ingest is driven over loopback HTTP with batches from concurrent
//! clients and counts only 202-acknowledged events. Each round uses fresh topics; each side
//! starts with the broker idle, in alternating order. Reports events/s for both, their ratio
//! (goal ≥ 0.8) and the process's peak RSS.

#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use std::sync::atomic::{AtomicUsize, Ordering};

use axum::body::Bytes;
use rdkafka::ClientContext;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use serde_json::{Value, json};
use tally_ingest::Ingest;
use tally_ingest::config::{IngestConfig, ProducerConfig};
use tally_kit::auth;
use tally_kit::config::KafkaConfig;
use tally_schemas::topics::HEADER_EVENT_ID;
use tally_schemas::{MetricCatalogue, Topics, UsageEvent, ValidationContext};
use tally_testkit::bench::{arg, peak_rss_mib, process_cpu_seconds, spread};
use tally_testkit::{TestPostgres, unique_name};
use tokio_util::sync::CancellationToken;

const TENANTS: usize = 100;

// The same allocator as the `tally-ingest` binary (mimalloc, also for librdkafka's C allocations).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn event(round: usize, i: usize) -> Value {
    json!({
        "id": format!("r{round}-e{i}"),
        "tenant_id": format!("tenant-{}", i % TENANTS),
        "metric": "api_calls",
        "value": 1,
        "source": "bench",
        "attributes": {"route": "/v1/things", "region": "eu-west-1"},
    })
}

/// Counts delivery reports: the cheapest way to learn that rdkafka's messages were acknowledged
/// (no channel or future per message).
#[derive(Default)]
struct DeliveryCount {
    acknowledged: AtomicUsize,
    failed: AtomicUsize,
}

impl ClientContext for DeliveryCount {}

impl ProducerContext for DeliveryCount {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        let counter = if result.is_ok() { &self.acknowledged } else { &self.failed };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

type BareProducer = ThreadedProducer<DeliveryCount>;

/// A bare rdkafka producer with exactly the settings ingest's producer uses.
fn producer(kafka: &KafkaConfig, config: &ProducerConfig) -> BareProducer {
    tally_kit::producer::producer_config(kafka, config).create_with_context(DeliveryCount::default()).expect("producer")
}

/// The baseline: the messages ingest would write (key, payload, event id header), straight to the
/// broker, acknowledgements counted by the delivery callback.
async fn bare_producer(producer: &BareProducer, topic: &str, round: usize, events: usize) -> Phase {
    let catalogue = MetricCatalogue::default();
    let ctx = ValidationContext::new(&catalogue, chrono::Utc::now());
    let messages: Vec<(String, String, Vec<u8>)> = (0..events)
        .map(|i| {
            let e = UsageEvent::from_json_value(event(round, i), &ctx).unwrap();
            (e.tenant_id.to_string(), e.id.to_string(), e.to_json())
        })
        .collect();
    let reports = producer.context();
    let before = reports.acknowledged.load(Ordering::Relaxed);
    let phase = Phase::start();
    for (key, id, payload) in &messages {
        loop {
            let headers = OwnedHeaders::new_with_capacity(1).insert(Header { key: HEADER_EVENT_ID, value: Some(id) });
            match producer.send(BaseRecord::to(topic).key(key).payload(payload).headers(headers)) {
                Ok(()) => break,
                Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
            }
        }
    }
    while reports.acknowledged.load(Ordering::Relaxed) - before < events {
        assert_eq!(reports.failed.load(Ordering::Relaxed), 0, "every message acknowledged");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    phase.end(events)
}

/// One side's measured phase: events per second, and the bench process's CPU time per event (the
/// broker's is not in it).
#[derive(Clone, Copy)]
struct Phase {
    rate: f64,
    cpu_micros_per_event: f64,
}

struct PhaseStart {
    wall: Instant,
    cpu: f64,
}

impl Phase {
    const SKIPPED: Phase = Phase { rate: f64::NAN, cpu_micros_per_event: f64::NAN };

    fn start() -> PhaseStart {
        PhaseStart { wall: Instant::now(), cpu: process_cpu_seconds() }
    }
}

impl PhaseStart {
    fn end(self, events: usize) -> Phase {
        let cpu = process_cpu_seconds() - self.cpu;
        Phase {
            rate: events as f64 / self.wall.elapsed().as_secs_f64(),
            cpu_micros_per_event: cpu * 1e6 / events as f64,
        }
    }
}

/// The part of ingest's answer the load generator reads.
#[derive(serde::Deserialize)]
struct Accepted {
    accepted: u64,
}

/// Ingest over HTTP: `concurrency` clients post pre-built batches until `events` are acknowledged.
async fn http_ingest(url: &str, key: &str, round: usize, events: usize, batch: usize, concurrency: usize) -> Phase {
    // `Bytes`, so that sending (and resending) a body does not copy it.
    let bodies: Vec<Bytes> = (0..events)
        .step_by(batch)
        .map(|start| {
            let batch: Vec<Value> = (start..(start + batch).min(events)).map(|i| event(round, i)).collect();
            Bytes::from(serde_json::to_vec(&batch).unwrap())
        })
        .collect();
    let bodies = Arc::new(tokio::sync::Mutex::new(bodies));
    let client = reqwest::Client::new();
    let phase = Phase::start();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (bodies, client, url, key) = (bodies.clone(), client.clone(), url.to_owned(), key.to_owned());
        workers.push(tokio::spawn(async move {
            let mut accepted = 0u64;
            loop {
                let Some(body) = bodies.lock().await.pop() else { break };
                loop {
                    let response = client
                        .post(&url)
                        .bearer_auth(&key)
                        .header("content-type", "application/json")
                        .body(body.clone())
                        .send()
                        .await
                        .unwrap();
                    let status = response.status();
                    let bytes = response.bytes().await.unwrap();
                    if status == reqwest::StatusCode::ACCEPTED {
                        accepted += serde_json::from_slice::<Accepted>(&bytes).unwrap().accepted;
                        break;
                    }
                    let answer = String::from_utf8_lossy(&bytes);
                    assert!(
                        status == reqwest::StatusCode::TOO_MANY_REQUESTS
                            || status == reqwest::StatusCode::SERVICE_UNAVAILABLE,
                        "unexpected {status}: {answer}"
                    );
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            accepted
        }));
    }
    let mut accepted = 0;
    for worker in workers {
        accepted += worker.await.unwrap();
    }
    assert_eq!(accepted, events as u64, "every event acknowledged");
    phase.end(events)
}

fn main() {
    let events = arg(0, 1_000_000);
    let batch = arg(1, 1_000);
    let concurrency = arg(2, 8);
    let rounds = arg(3, 7);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let kafka = tally_testkit::kafka_config();
        let pg = TestPostgres::create().await;
        let tenants: Vec<String> = (0..TENANTS).map(|i| format!("('tenant-{i}', 'Tenant {i}')")).collect();
        sqlx::query(&format!("INSERT INTO tenant (id, name) VALUES {}", tenants.join(", ")))
            .execute(&pg.pool)
            .await
            .unwrap();
        let key = auth::create_key(&pg.pool, auth::Scope::Admin, None, "bench").await.unwrap().token;
        let (mut bare, mut http) = (Vec::new(), Vec::new());
        // TALLY_BENCH_SIDE=http runs only the ingest side (for profiling it alone).
        let http_only = std::env::var("TALLY_BENCH_SIDE").is_ok_and(|side| side == "http");
        for round in 1..=rounds {
            // Fresh topics each round, deleted after it: the local broker's cost of keeping data
            // grows with what it holds, and would otherwise weigh more on every later round.
            let topics = Topics {
                usage_events: unique_name("bench-usage"),
                dead_letter: unique_name("bench-dlq"),
                ..Topics::default()
            };
            tally_kit::kafka::ensure_topics(&kafka, &topics).await.unwrap();
            let baseline_topic = unique_name("bench-bare");
            tally_kit::kafka::create_topics(&kafka, &[&baseline_topic], topics.partitions, 1).await.unwrap();
            let mut config = IngestConfig {
                kafka: kafka.clone(),
                postgres: pg.config.clone(),
                topics: topics.clone(),
                ..IngestConfig::default()
            };
            config.http.listen = "127.0.0.1:0".parse().unwrap();
            let bare_client = producer(&kafka, &config.producer);
            let stopping = CancellationToken::new();
            let ingest = Ingest::build(config, stopping.clone()).await.unwrap();
            let url = format!("http://{}/v1/events", ingest.local_addr());
            let running = tokio::spawn(ingest.run_until_stopped());
            // Both sides warm first (connections, metadata, producer ids, caches); not measured.
            bare_producer(&bare_client, &baseline_topic, 0, 5_000).await;
            http_ingest(&url, &key, 0, 5_000, batch, concurrency).await;
            // Each side starts with the broker idle and holding nothing but its own fresh topic; the
            // order alternates so neither side always follows the other.
            let measure_bare = async || {
                tally_testkit::bench::settle().await;
                let phase = bare_producer(&bare_client, &baseline_topic, round, events).await;
                tally_testkit::delete_topics(&kafka, &[&baseline_topic]).await;
                phase
            };
            let measure_http = async || {
                tally_testkit::bench::settle().await;
                http_ingest(&url, &key, round, events, batch, concurrency).await
            };
            let (bare_phase, http_phase) = match (http_only, round % 2) {
                (true, _) => (Phase::SKIPPED, measure_http().await),
                (false, 1) => {
                    let bare_phase = measure_bare().await;
                    (bare_phase, measure_http().await)
                }
                (false, _) => {
                    let http_phase = measure_http().await;
                    (measure_bare().await, http_phase)
                }
            };
            stopping.cancel();
            running.await.unwrap().unwrap();
            tally_testkit::delete_topics(&kafka, &[&topics.usage_events, &topics.dead_letter]).await;
            bare.push(bare_phase);
            http.push(http_phase);
            println!(
                "round {round}: bare producer {:>9.0} events/s ({:.2} us CPU/event), HTTP ingest {:>9.0} events/s ({:.2} us CPU/event)",
                bare_phase.rate, bare_phase.cpu_micros_per_event, http_phase.rate, http_phase.cpu_micros_per_event
            );
        }
        let ratios: Vec<f64> = http.iter().zip(&bare).map(|(h, b)| h.rate / b.rate).collect();
        let cpu = |phases: &[Phase]| spread(phases.iter().map(|p| p.cpu_micros_per_event).collect());
        let (bare_cpu, http_cpu) = (cpu(&bare), cpu(&http));
        let rates = |phases: &[Phase]| spread(phases.iter().map(|p| p.rate).collect());
        let (bare, http, ratio) = (rates(&bare), rates(&http), spread(ratios));
        println!(
            "events per round {events}, batch {batch}, {concurrency} clients, {rounds} rounds (min / median / max)"
        );
        println!("bare rdkafka producer: {:.0} / {:.0} / {:.0} events/s", bare.0, bare.1, bare.2);
        println!("HTTP batch ingest:     {:.0} / {:.0} / {:.0} events/s", http.0, http.1, http.2);
        println!("ratio ingest / bare per round: {:.2} / {:.2} / {:.2} (goal >= 0.80)", ratio.0, ratio.1, ratio.2);
        println!(
            "bench process CPU per event (load generator included, broker not): bare {:.2} / {:.2} / {:.2} us, ingest {:.2} / {:.2} / {:.2} us",
            bare_cpu.0, bare_cpu.1, bare_cpu.2, http_cpu.0, http_cpu.1, http_cpu.2
        );
        println!("peak RSS (bench process: ingest + load + baseline): {:.0} MiB", peak_rss_mib());
        pg.drop_database().await;
    });
}
