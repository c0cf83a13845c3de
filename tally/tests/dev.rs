//! `tally dev`, the real binary, every role in one process on the local stack, passes the same
//! end-to-end check as `up.sh`'s pipeline: an event in through ingest, counted by the aggregator
//! (seen through the query service), enforced (a rate check and the tenant's limits), billed by
//! billing-sync's daemon to the tenant's customer in the Stripe fake; SIGTERM stops every role and
//! the process exits 0.

#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tally_kit::auth::{self, Scope};
use tally_schemas::{TenantId, Topics};
use tally_testkit::{TestClickHouse, TestPostgres, kafka_config, unique_name};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

async fn answer_of(request: reqwest::RequestBuilder) -> Value {
    request.send().await.unwrap().json().await.unwrap()
}

async fn until(what: &str, mut probe: impl AsyncFnMut() -> Option<Value>) -> Value {
    let started = Instant::now();
    loop {
        if let Some(found) = probe().await {
            return found;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "{what} did not happen within 60 s");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tally_dev_takes_an_event_in_counts_enforces_and_bills_it() {
    let (pg, ch) = (TestPostgres::create().await, TestClickHouse::create().await);
    let topics =
        Topics { usage_events: unique_name("dev-usage"), dead_letter: unique_name("dev-dlq"), ..Topics::default() };
    tally_kit::kafka::ensure_topics(&kafka_config(), &topics).await.unwrap();
    sqlx::query("INSERT INTO tenant (id, name, tier) VALUES ('acme', 'Acme', 'STANDARD')")
        .execute(&pg.pool)
        .await
        .unwrap();
    let acme = TenantId::parse("acme").unwrap();
    let key = auth::create_key(&pg.pool, Scope::Tenant, Some(&acme), "dev").await.unwrap().token;

    // The Stripe fake, with the meters billing-sync sends to and acme's customer.
    let fake = Arc::new(tally_stripe_fake::Fake::new(0));
    let stripe = tally_testkit::bench::serve_on_loopback(tally_stripe_fake::router(Arc::clone(&fake))).await;
    let http = reqwest::Client::new();
    let base = format!("http://{stripe}");
    let meters = tally_testkit::stripe::create_meters(&base, "sk_test_dev", &["api_calls", "compute_seconds"]).await;
    let (meter, customer) = (&meters[0], tally_testkit::stripe::create_customer(&base, "sk_test_dev", "Acme").await);
    sqlx::query("INSERT INTO stripe_customers (tenant_id, stripe_customer_id) VALUES ('acme', $1)")
        .bind(&customer)
        .execute(&pg.pool)
        .await
        .unwrap();

    let ports: Vec<u16> = (0..7).map(|_| free_port()).collect();
    let [ingest, aggregator, enforcer, grpc, billing, collector, query] = ports[..] else { unreachable!() };
    let mut command = Command::new(env!("CARGO_BIN_EXE_tally"));
    // The configuration is this environment alone: the stack's TALLY_* variables would add to it.
    for (name, _) in std::env::vars().filter(|(name, _)| name.starts_with("TALLY_")) {
        command.env_remove(name);
    }
    let kafka = kafka_config();
    command
        .arg("dev")
        .env("TALLY_KAFKA__BROKERS", &kafka.brokers)
        .env("TALLY_TOPICS__USAGE_EVENTS", &topics.usage_events)
        .env("TALLY_TOPICS__DEAD_LETTER", &topics.dead_letter)
        .env("TALLY_CLICKHOUSE__URL", &ch.config.url)
        .env("TALLY_CLICKHOUSE__DATABASE", &ch.config.database)
        .env("TALLY_POSTGRES__URL", pg.config.url.expose())
        .env("TALLY_HTTP__LISTEN", format!("127.0.0.1:{ingest}"))
        .env("TALLY_AGGREGATOR__LISTEN", format!("127.0.0.1:{aggregator}"))
        .env("TALLY_AGGREGATOR__GROUP_ID", unique_name("dev-aggregators"))
        .env("TALLY_AGGREGATOR__INSTANCE_ID", "dev-0")
        .env("TALLY_AGGREGATOR__LINGER_MS", "100")
        .env("TALLY_ENFORCER__LISTEN", format!("127.0.0.1:{enforcer}"))
        .env("TALLY_ENFORCER__GRPC_LISTEN", format!("127.0.0.1:{grpc}"))
        .env("TALLY_ENFORCER__USAGE_REFRESH_MS", "200")
        .env("TALLY_BILLING__LISTEN", format!("127.0.0.1:{billing}"))
        .env("TALLY_BILLING__STRIPE_URL", format!("http://{stripe}"))
        .env("TALLY_BILLING__STRIPE_KEY", "sk_test_dev")
        .env("TALLY_BILLING__INTERVAL_SECS", "1")
        // Bill the open hour too (later runs would send the rest as corrections), as up.sh does.
        .env("TALLY_BILLING__SETTLE_MINUTES", "-60")
        .env("TALLY_COLLECTOR__LISTEN", format!("127.0.0.1:{collector}"))
        .env("TALLY_QUERY__LISTEN", format!("127.0.0.1:{query}"))
        .env("TALLY_QUERY__ENFORCER_URL", format!("http://127.0.0.1:{enforcer}"))
        .env("TALLY_TELEMETRY__FILTER", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    let mut dev = command.spawn().unwrap();

    // Every role answers on its own port.
    for port in [ingest, aggregator, enforcer, billing, collector, query] {
        let url = format!("http://127.0.0.1:{port}/livez");
        until(&format!("port {port} answering"), async || {
            http.get(&url).send().await.ok().filter(|a| a.status().is_success()).map(|_| Value::Null)
        })
        .await;
    }

    // In: one event of 7 API calls.
    let event = json!([{ "id": "dev-1", "tenant_id": "acme", "metric": "api_calls", "value": 7,
                         "timestamp": chrono::Utc::now().to_rfc3339(), "source": "dev-test" }]);
    let answer =
        http.post(format!("http://127.0.0.1:{ingest}/v1/events")).bearer_auth(&key).json(&event).send().await.unwrap();
    assert_eq!(answer.status(), 202, "{:?}", answer.text().await);

    // Counted, as the query service reads it.
    let today = chrono::Utc::now().date_naive();
    let usage_url =
        format!("http://127.0.0.1:{query}/v1/usage?metric=api_calls&from={today}&to={}", today.succ_opt().unwrap());
    let counted = until("counting", async || {
        let answer: Value = http.get(&usage_url).bearer_auth(&key).send().await.ok()?.json().await.ok()?;
        (answer["rows"][0]["sum"] == "7").then_some(answer)
    })
    .await;
    assert_eq!(counted["rows"][0]["count"], 1);

    // Enforced: a rate check, and the limits (through the query service) with STANDARD's caps.
    let rate_check =
        http.post(format!("http://127.0.0.1:{enforcer}/v1/check/rate")).json(&json!({ "tenant_id": "acme" }));
    let check = answer_of(rate_check.bearer_auth(&key)).await;
    assert_eq!(check["allowed"], true, "{check}");
    let limits =
        answer_of(http.get(format!("http://127.0.0.1:{query}/v1/tenants/acme/limits")).bearer_auth(&key)).await;
    assert_eq!((limits["tier"].as_str(), limits["users"]["limit"].as_u64()), (Some("STANDARD"), Some(50)), "{limits}");

    // Billed: the customer's meter summary in the fake shows the 7 calls.
    let now = chrono::Utc::now().timestamp();
    let (start, end) = ((now / 3_600 - 24) * 3_600, (now / 3_600 + 1) * 3_600);
    let summary_url = format!(
        "http://{stripe}/v1/billing/meters/{meter}/event_summaries?customer={customer}&start_time={start}&end_time={end}"
    );
    until("billing", async || {
        let answer: Value = http.get(&summary_url).bearer_auth("sk_test_dev").send().await.ok()?.json().await.ok()?;
        (answer["data"][0]["aggregated_value"].as_f64() == Some(7.0)).then_some(answer)
    })
    .await;

    // One SIGTERM stops every role; the process exits 0.
    let status = Command::new("kill").args(["-TERM", &dev.id().to_string()]).status().unwrap();
    assert!(status.success());
    let started = Instant::now();
    let exit = loop {
        if let Some(exit) = dev.try_wait().unwrap() {
            break exit;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "tally dev did not stop on SIGTERM");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(exit.success(), "{exit:?}");
    ch.drop_database().await;
    pg.drop_database().await;
    tally_testkit::delete_topics(&kafka_config(), &[&topics.usage_events, &topics.dead_letter]).await;
}
