//! The usage console in a real browser (Debian's chromium through chromedriver) against the real
//! pipeline: events through Kafka and the aggregator into ClickHouse, the enforcer's limits, the
//! query service. An analyst picks a tenant; the chart draws one mark per window with the values
//! the test sent; the limits panel shows the tenant's caps and the 80 % storage line; a tenant's
//! own key sees only its tenant. A screenshot is kept in `target/artefacts/console.png`.

#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::{TimeDelta, Utc};
use serde_json::{Value, json};
use tally_aggregator::{Aggregator, AggregatorConfig};
use tally_enforcer::{Enforcer, EnforcerConfig};
use tally_kit::auth::{self, Scope};
use tally_kit::producer::Publisher;
use tally_query::{QueryConfig, QueryService};
use tally_schemas::{TenantId, Topics, UsageEvent};
use tally_testkit::browser::{Browser, Element, artefact_dir};
use tally_testkit::{TestClickHouse, TestPostgres, kafka_config, unique_name};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(30);

fn event(id: &str, tenant: &str, metric: &str, value: u64, at: chrono::DateTime<Utc>) -> UsageEvent {
    serde_json::from_value(json!({
        "id": id, "tenant_id": tenant, "metric": metric, "value": value.to_string(),
        "timestamp": at.to_rfc3339(), "source": "console-test",
    }))
    .unwrap()
}

async fn publish(publisher: &Publisher, topic: &str, events: &[UsageEvent]) {
    let acks = publisher.acks();
    for event in events {
        publisher.enqueue_usage(&acks, topic, event, Utc::now()).unwrap();
    }
    acks.settled().await.into_result().unwrap();
}

/// Waits until the chart has drawn (its `data-state` is `ready`) `windows` marks of `tenant`'s
/// `metric` per `window`.
async fn drawn(browser: &Browser, tenant: &str, metric: &str, window: &str, windows: usize) -> Vec<Element> {
    let started = Instant::now();
    let css = format!(
        "#chart[data-state=ready][data-windows=\"{windows}\"][data-tenant=\"{tenant}\"][data-metric=\"{metric}\"][data-window=\"{window}\"]"
    );
    loop {
        let ready = browser.find_all(&css).await.unwrap();
        if !ready.is_empty() {
            return browser.find_all("#chart svg rect.mark").await.unwrap();
        }
        if started.elapsed() > WAIT {
            let status = browser.find_all("#chart-status").await.unwrap();
            let status = browser.text(&status[0]).await.unwrap_or_default();
            panic!("the chart did not draw {windows} windows: {status:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `GET url` with `key`: status and JSON body.
async fn get(http: &reqwest::Client, url: &str, key: &str) -> (u16, Value) {
    let answer = http.get(url).bearer_auth(key).send().await.unwrap();
    (answer.status().as_u16(), answer.json().await.unwrap_or(Value::Null))
}

async fn choose(browser: &Browser, select: &str, value: &str) {
    let option = browser.wait_for(&format!("#{select} option[value=\"{value}\"]"), WAIT).await.unwrap();
    browser.click(&option).await.unwrap();
}

async fn text_of(browser: &Browser, css: &str) -> String {
    let element = browser.wait_for(css, WAIT).await.unwrap();
    browser.text(&element).await.unwrap()
}

async fn sign_in(browser: &Browser, base: &str, key: &str) {
    browser.goto(&format!("{base}/console")).await.unwrap();
    let field = match browser.wait_for("#api-key", WAIT).await {
        Ok(field) => field,
        Err(error) => panic!("{error}: the page is {}", browser.describe().await),
    };
    browser.type_text(&field, key).await.unwrap();
    browser.click(&browser.wait_for("#signin-button", WAIT).await.unwrap()).await.unwrap();
    if let Err(error) = browser.wait_for("#app:not([hidden])", WAIT).await {
        let refusal = text_of(browser, "#signin-error").await;
        panic!("signing in failed: {error}; the page says {refusal:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_analyst_sees_a_tenants_usage_per_window_against_its_limits() {
    let (pg, ch) = (TestPostgres::create().await, TestClickHouse::create().await);
    for (id, name, tier) in [("acme", "Acme Inc", "STANDARD"), ("globex", "Globex", "PREMIUM")] {
        sqlx::query("INSERT INTO tenant (id, name, tier) VALUES ($1, $2, $3)")
            .bind(id)
            .bind(name)
            .bind(tier)
            .execute(&pg.pool)
            .await
            .unwrap();
    }
    let analyst = auth::create_key(&pg.pool, Scope::Analyst, None, "console").await.unwrap().token;
    let acme = TenantId::parse("acme").unwrap();
    let acme_key = auth::create_key(&pg.pool, Scope::Tenant, Some(&acme), "console").await.unwrap().token;
    let topics = Topics {
        usage_events: unique_name("console-usage"),
        dead_letter: unique_name("console-dlq"),
        partitions: 1,
        ..Topics::default()
    };
    tally_kit::kafka::ensure_topics(&kafka_config(), &topics).await.unwrap();

    let stopping = CancellationToken::new();
    let mut aggregator = AggregatorConfig {
        kafka: kafka_config(),
        clickhouse: ch.config.clone(),
        topics: topics.clone(),
        ..AggregatorConfig::default()
    };
    aggregator.aggregator.listen = "127.0.0.1:0".parse().unwrap();
    aggregator.aggregator.group_id = unique_name("console-aggregators");
    aggregator.aggregator.instance_id = "console".to_owned();
    aggregator.aggregator.linger_ms = 100;
    let aggregating = tokio::spawn(Aggregator::build(aggregator, stopping.clone()).await.unwrap().run_until_stopped());
    let mut enforcer =
        EnforcerConfig { postgres: pg.config.clone(), clickhouse: ch.config.clone(), ..EnforcerConfig::default() };
    enforcer.enforcer.listen = "127.0.0.1:0".parse().unwrap();
    enforcer.enforcer.grpc_listen = None;
    enforcer.enforcer.usage_refresh_ms = 100;
    let enforcer_stopping = CancellationToken::new();
    let enforcer = Enforcer::build(enforcer, enforcer_stopping.clone()).await.unwrap();
    let enforcer_addr = enforcer.local_addr();
    let enforcing = tokio::spawn(enforcer.run_until_stopped());
    let mut query =
        QueryConfig { clickhouse: ch.config.clone(), postgres: pg.config.clone(), ..QueryConfig::default() };
    query.query.listen = "127.0.0.1:0".parse().unwrap();
    query.query.enforcer_url = Some(format!("http://{enforcer_addr}"));
    let query = QueryService::build(query, stopping.clone()).await.unwrap();
    let base = format!("http://{}", query.local_addr());
    let querying = tokio::spawn(query.run_until_stopped());

    // Acme's API calls over the last six days, one every 47 minutes; 8.5 GB stored (85 % of the
    // STANDARD cap); 12 users. Globex a little, which acme's key must never see.
    let now = Utc::now();
    let mut events = Vec::new();
    let mut per_day: BTreeMap<String, u64> = BTreeMap::new();
    for k in 0..180 {
        let at = now - TimeDelta::minutes(47 * k);
        let value = u64::try_from(k % 5 + 1).unwrap();
        *per_day.entry(at.format("%Y-%m-%dT00:00:00Z").to_string()).or_default() += value;
        events.push(event(&format!("call-{k}"), "acme", "api_calls", value, at));
        events.push(event(&format!("globex-{k}"), "globex", "api_calls", 1_000, at));
    }
    events.push(event("storage-1", "acme", "storage_bytes", 8_500_000_000, now - TimeDelta::minutes(1)));
    events.push(event("users-1", "acme", "active_users", 12, now - TimeDelta::minutes(1)));
    let publisher = Publisher::new(&kafka_config(), &Default::default()).unwrap();
    publish(&publisher, &topics.usage_events, &events).await;

    // Counted, and the enforcer sees acme's storage.
    let http = reqwest::Client::new();
    let day = |offset: i64| (now + TimeDelta::days(offset)).format("%Y-%m-%d").to_string();
    let started = Instant::now();
    loop {
        let (_, limits) = get(&http, &format!("{base}/v1/tenants/acme/limits"), &analyst).await;
        let seen = limits["storage_bytes"]["reported"] == 8_500_000_000_u64;
        let total: u64 = per_day.values().sum();
        let url = format!("{base}/v1/usage?metric=api_calls&tenant=acme&from={}&to={}", day(-8), day(1));
        let (_, usage) = get(&http, &url, &analyst).await;
        if seen && usage["rows"][0]["sum"].as_str() == Some(total.to_string().as_str()) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "not counted in time: {limits} {usage}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let browser = Browser::start(1440, 1000).await.unwrap();
    sign_in(&browser, &base, &analyst).await;
    assert_eq!(text_of(&browser, "#who").await, "Analyst key");
    choose(&browser, "zone", "UTC").await;
    choose(&browser, "range", "7d").await;
    choose(&browser, "window", "day").await;
    choose(&browser, "metric", "api_calls").await;
    let tenant = browser.wait_for("#tenant", WAIT).await.unwrap();
    browser.type_text(&tenant, "acme\u{E004}").await.unwrap();

    // Seven day windows, each as tall as what acme sent that day.
    let marks = drawn(&browser, "acme", "api_calls", "day", 7).await;
    assert_eq!(marks.len(), 7, "one mark per window");
    let mut drawn_days = BTreeMap::new();
    for mark in &marks {
        let start = browser.attribute(mark, "data-start").await.unwrap().unwrap();
        let value: u64 = browser.attribute(mark, "data-value").await.unwrap().unwrap().parse().unwrap();
        drawn_days.insert(start, value);
    }
    let mut expected: BTreeMap<String, u64> = drawn_days.keys().map(|day| (day.clone(), 0)).collect();
    expected.extend(per_day.clone());
    assert_eq!(drawn_days, expected, "each day's mark is acme's sum, empty days zero");
    assert_eq!(text_of(&browser, "#chart-title").await, "api_calls · acme");

    // The limits panel: STANDARD's caps, storage at 85 % past the 80 % line.
    browser.wait_for("#limits[data-state=ready]", WAIT).await.unwrap();
    assert_eq!(text_of(&browser, "[data-cap=users] .cap-limit").await, "50");
    assert_eq!(text_of(&browser, "[data-cap=users] .cap-used").await, "12");
    assert_eq!(text_of(&browser, "[data-cap=storage] .cap-limit").await, "10.0 GB");
    assert_eq!(text_of(&browser, "[data-cap=storage] .cap-used").await, "8.5 GB");
    assert_eq!(text_of(&browser, "[data-cap=storage] .cap-alert").await, "alert line 8.0 GB");
    browser.wait_for("[data-cap=storage] .meter.warn .alert-line", WAIT).await.unwrap();
    assert_eq!(text_of(&browser, "[data-cap=rate] .cap-limit").await, "100/s, burst 200");
    assert_eq!(text_of(&browser, ".badge.tier").await, "STANDARD");

    // Hour windows: 168 marks.
    choose(&browser, "window", "hour").await;
    assert_eq!(drawn(&browser, "acme", "api_calls", "hour", 168).await.len(), 168);
    let shot = browser.screenshot().await.unwrap();
    assert_eq!(&shot[..8], b"\x89PNG\r\n\x1a\n");
    let path = artefact_dir().join("console.png");
    std::fs::write(&path, &shot).unwrap();
    eprintln!("console screenshot: {}", path.display());

    // "Download CSV" hands over what the chart drew: a row per hour, the same sums.
    let capture = "window.tallyCsv = null; const made = URL.createObjectURL; \
                   URL.createObjectURL = (blob) => { blob.text().then((text) => { window.tallyCsv = text; }); return made(blob); };";
    browser.execute(capture, vec![]).await.unwrap();
    browser.click(&browser.wait_for("#download", WAIT).await.unwrap()).await.unwrap();
    let started = Instant::now();
    let csv = loop {
        if let Value::String(csv) = browser.execute("return window.tallyCsv", vec![]).await.unwrap() {
            break csv;
        }
        assert!(started.elapsed() < WAIT, "no CSV was made");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 1 + 168, "{}", lines[0]);
    let columns: Vec<&str> = lines[0].split(',').collect();
    let sum_at = columns.iter().position(|c| *c == "sum").unwrap();
    let csv_total: u64 =
        lines[1..].iter().map(|line| line.split(',').nth(sum_at).unwrap().parse::<u64>().unwrap()).sum();
    assert_eq!(csv_total, per_day.values().sum::<u64>());

    // Acme's own key: acme only, the picker fixed.
    browser.click(&browser.wait_for("#sign-out", WAIT).await.unwrap()).await.unwrap();
    sign_in(&browser, &base, &acme_key).await;
    assert_eq!(text_of(&browser, "#who").await, "Tenant acme");
    let picker = "const tenant = document.querySelector('#tenant'); return [tenant.value, tenant.disabled]";
    assert_eq!(browser.execute(picker, vec![]).await.unwrap(), json!(["acme", true]));
    browser.wait_for("#limits[data-state=ready]", WAIT).await.unwrap();
    browser.quit().await;

    // The limits endpoint answers as its document says, with a real enforcer behind it.
    let options = ["--include-path", "/v1/tenants/{id}/limits"];
    for key in [&analyst, &acme_key] {
        tally_testkit::schemathesis::fuzz(
            &format!("{base}/openapi.yaml"),
            key,
            &["positive_data_acceptance"],
            &options,
        )
        .await;
    }

    // Through the query service, a tenant key reads its own limits only; the enforcer gone is a 502.
    let (status, proxied) = get(&http, &format!("{base}/v1/tenants/acme/limits"), &acme_key).await;
    assert_eq!(status, 200);
    let (_, direct) = get(&http, &format!("http://{enforcer_addr}/v1/tenants/acme/limits"), &acme_key).await;
    assert_eq!(proxied["storage_bytes"], direct["storage_bytes"]);
    assert_eq!(get(&http, &format!("{base}/v1/tenants/globex/limits"), &acme_key).await.0, 403);
    enforcer_stopping.cancel();
    enforcing.await.unwrap().unwrap();
    let (status, gone) = get(&http, &format!("{base}/v1/tenants/acme/limits"), &analyst).await;
    assert_eq!((status, gone["reason"].as_str()), (502, Some("enforcer_unavailable")), "{gone}");

    stopping.cancel();
    aggregating.await.unwrap().unwrap();
    querying.await.unwrap().unwrap();
    ch.drop_database().await;
    pg.drop_database().await;
    tally_testkit::delete_topics(&kafka_config(), &[&topics.usage_events, &topics.dead_letter]).await;
}
