//! Debian's Prometheus server, with `deploy/prometheus/tally-rules.yaml`, scrapes every Tally
//! service of a running pipeline (jobs named tally-<role>, as the ServiceMonitors name them).
//! A tenant pushed past 80 % of its storage cap (a gauge event through Kafka, the aggregator,
//! ClickHouse and the enforcer) makes `TallyTenantStorageAboveAlertLine` fire naming it, through
//! Prometheus's API, and a tenant below the line does not; every metric named by an alert rule or
//! a Grafana dashboard is one Prometheus scraped, and every /metrics passes `promtool check metrics`.

#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{TimeDelta, Utc};
use serde_json::{Value, json};
use tally_kit::auth::{self, Scope};
use tally_kit::producer::Publisher;
use tally_schemas::{Topics, UsageEvent};
use tally_testkit::{TestClickHouse, TestPostgres, kafka_config, unique_name};
use tokio_util::sync::CancellationToken;

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A Prometheus server of the test's own; stopped when dropped.
struct Prometheus {
    child: Child,
    base: String,
    _dir: PathBuf,
}

impl Prometheus {
    fn start(targets: &[(&str, SocketAddr)]) -> Self {
        let dir = std::env::temp_dir().join(unique_name("tally-prometheus"));
        std::fs::create_dir_all(&dir).unwrap();
        let rules = repo().join("deploy/prometheus/tally-rules.yaml").canonicalize().unwrap();
        let mut config = format!(
            "global: {{ scrape_interval: 1s, evaluation_interval: 1s }}\nrule_files: [\"{}\"]\nscrape_configs:\n",
            rules.display()
        );
        for (role, addr) in targets {
            config
                .push_str(&format!("  - job_name: tally-{role}\n    static_configs: [{{ targets: [\"{addr}\"] }}]\n"));
        }
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let listen = free_addr();
        let program = std::env::var("TALLY_TEST_PROMETHEUS").unwrap_or_else(|_| "prometheus".to_owned());
        let child = Command::new(&program)
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={listen}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{program} (apt-get install prometheus; up.sh installs it): {e}"));
        Self { child, base: format!("http://{listen}"), _dir: dir }
    }

    async fn api(&self, http: &reqwest::Client, path: &str) -> Option<Value> {
        let answer: Value = http.get(format!("{}{path}", self.base)).send().await.ok()?.json().await.ok()?;
        (answer["status"] == "success").then(|| answer["data"].clone())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn until<T>(what: &str, limit: Duration, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(found) = probe().await {
            return found;
        }
        assert!(started.elapsed() < limit, "{what} did not happen within {limit:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn gauge(id: &str, tenant: &str, metric: &str, value: u64) -> UsageEvent {
    serde_json::from_value(json!({
        "id": id, "tenant_id": tenant, "metric": metric, "value": value.to_string(),
        "timestamp": (Utc::now() - TimeDelta::seconds(30)).to_rfc3339(), "source": "alerts-test",
    }))
    .unwrap()
}

/// What `promtool check metrics` says of an exposition (nothing when it passes).
fn check_metrics(exposition: &str) -> String {
    use std::io::Write as _;
    let program = std::env::var("TALLY_TEST_PROMTOOL").unwrap_or_else(|_| "promtool".to_owned());
    let mut child = Command::new(&program)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    child.stdin.take().unwrap().write_all(exposition.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    let report = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    if output.status.success() { report } else { format!("exit {:?}: {report}", output.status.code()) }
}

/// The metric names an alert rule or a dashboard queries.
fn named_metrics() -> BTreeSet<String> {
    let mut texts = vec![std::fs::read_to_string(repo().join("deploy/prometheus/tally-rules.yaml")).unwrap()];
    for dashboard in ["tally-pipeline.json", "tally-enforcer.json"] {
        texts.push(std::fs::read_to_string(repo().join("deploy/grafana").join(dashboard)).unwrap());
    }
    let mut names = BTreeSet::new();
    for text in texts {
        for (start, _) in text.match_indices("tally_").chain(text.match_indices("process_")) {
            let name: String = text[start..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            // `tally_` also starts words that are not metrics (a rule file's own name).
            if text[..start].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '/') {
                continue;
            }
            names.insert(name);
        }
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_fires_the_storage_alert_naming_the_tenant_and_sees_every_named_metric() {
    let (pg, ch) = (TestPostgres::create().await, TestClickHouse::create().await);
    for (id, tier) in [("acme", "STANDARD"), ("globex", "STANDARD")] {
        sqlx::query("INSERT INTO tenant (id, name, tier) VALUES ($1, $1, $2)")
            .bind(id)
            .bind(tier)
            .execute(&pg.pool)
            .await
            .unwrap();
    }
    let analyst = auth::create_key(&pg.pool, Scope::Analyst, None, "alerts").await.unwrap().token;
    let topics = Topics {
        usage_events: unique_name("alerts-usage"),
        dead_letter: unique_name("alerts-dlq"),
        partitions: 2,
        ..Topics::default()
    };
    tally_kit::kafka::ensure_topics(&kafka_config(), &topics).await.unwrap();
    let stopping = CancellationToken::new();
    let mut tasks = Vec::new();

    let mut ingest = tally_ingest::IngestConfig {
        kafka: kafka_config(),
        postgres: pg.config.clone(),
        topics: topics.clone(),
        ..Default::default()
    };
    ingest.http.listen = free_addr();
    let ingest_addr = ingest.http.listen;
    tasks.push(tokio::spawn(tally_ingest::serve(ingest, stopping.clone())));

    let mut aggregator = tally_aggregator::AggregatorConfig {
        kafka: kafka_config(),
        clickhouse: ch.config.clone(),
        topics: topics.clone(),
        ..Default::default()
    };
    aggregator.aggregator.listen = free_addr();
    aggregator.aggregator.group_id = unique_name("alerts-aggregators");
    aggregator.aggregator.instance_id = "alerts".to_owned();
    aggregator.aggregator.linger_ms = 100;
    let aggregator_addr = aggregator.aggregator.listen;
    tasks.push(tokio::spawn(tally_aggregator::serve(aggregator, stopping.clone())));

    let mut enforcer = tally_enforcer::EnforcerConfig {
        postgres: pg.config.clone(),
        clickhouse: ch.config.clone(),
        ..Default::default()
    };
    enforcer.enforcer.listen = free_addr();
    enforcer.enforcer.grpc_listen = Some(free_addr());
    enforcer.enforcer.usage_refresh_ms = 200;
    let enforcer_addr = enforcer.enforcer.listen;
    tasks.push(tokio::spawn(tally_enforcer::serve(enforcer, stopping.clone())));

    let mut query =
        tally_query::QueryConfig { clickhouse: ch.config.clone(), postgres: pg.config.clone(), ..Default::default() };
    query.query.listen = free_addr();
    query.query.enforcer_url = Some(format!("http://{enforcer_addr}"));
    let query_addr = query.query.listen;
    tasks.push(tokio::spawn(tally_query::serve(query, stopping.clone())));

    let mut collector = tally_collector::CollectorConfig {
        postgres: pg.config.clone(),
        kafka: kafka_config(),
        topics: topics.clone(),
        ..Default::default()
    };
    collector.collector.listen = free_addr();
    let collector_addr = collector.collector.listen;
    let collecting = tally_collector::Collector::new(collector).unwrap();
    tasks.push(tokio::spawn(collecting.run(tally_collector::Mode::Daemon, stopping.clone())));

    let fake = Arc::new(tally_stripe_fake::Fake::new(0));
    let stripe = tally_testkit::bench::serve_on_loopback(tally_stripe_fake::router(fake)).await;
    let meters = ["api_calls", "compute_seconds"];
    tally_testkit::stripe::create_meters(&format!("http://{stripe}"), "sk_test_alerts", &meters).await;
    let mut billing = tally_billing_sync::BillingConfig {
        postgres: pg.config.clone(),
        clickhouse: ch.config.clone(),
        ..Default::default()
    };
    billing.billing.listen = free_addr();
    billing.billing.stripe_url = format!("http://{stripe}");
    billing.billing.stripe_key = tally_kit::Secret::new("sk_test_alerts");
    let billing_addr = billing.billing.listen;
    let billing_sync = tally_billing_sync::BillingSync::new(billing).unwrap();
    tasks.push(tokio::spawn(billing_sync.run(tally_billing_sync::Mode::Daemon, stopping.clone())));

    let targets = [
        ("ingest", ingest_addr),
        ("aggregator", aggregator_addr),
        ("enforcer", enforcer_addr),
        ("query", query_addr),
        ("collector", collector_addr),
        ("billing-sync", billing_addr),
    ];
    let prometheus = Prometheus::start(&targets);
    let http = reqwest::Client::new();
    until("every target up", Duration::from_secs(60), async || {
        let targets = prometheus.api(&http, "/api/v1/targets").await?;
        let active = targets["activeTargets"].as_array()?;
        (active.len() == 6 && active.iter().all(|t| t["health"] == "up")).then_some(())
    })
    .await;

    // Every service's /metrics passes promtool's lint (names, suffixes, help texts).
    for (role, addr) in targets {
        let exposition = http.get(format!("http://{addr}/metrics")).send().await.unwrap().text().await.unwrap();
        let report = tokio::task::spawn_blocking(move || check_metrics(&exposition)).await.unwrap();
        assert_eq!(report, "", "promtool check metrics on {role}'s /metrics");
    }

    // acme at 85 % of STANDARD's 10 GB, globex at 10 %.
    let publisher = Publisher::new(&kafka_config(), &Default::default()).unwrap();
    let acks = publisher.acks();
    for event in [
        gauge("acme-bytes", "acme", "storage_bytes", 8_500_000_000),
        gauge("globex-bytes", "globex", "storage_bytes", 1_000_000_000),
    ] {
        publisher.enqueue_usage(&acks, &topics.usage_events, &event, Utc::now()).unwrap();
    }
    acks.settled().await.into_result().unwrap();
    // One query, so the query service's request counters have a series.
    let usage = http.get(format!(
        "http://{query_addr}/v1/usage?metric=storage_bytes&from={}&to={}",
        Utc::now().date_naive(),
        Utc::now().date_naive().succ_opt().unwrap()
    ));
    assert_eq!(usage.bearer_auth(&analyst).send().await.unwrap().status(), 200);

    let alert = until("the storage alert firing", Duration::from_secs(90), async || {
        let alerts = prometheus.api(&http, "/api/v1/alerts").await?;
        alerts["alerts"]
            .as_array()?
            .iter()
            .find(|a| a["labels"]["alertname"] == "TallyTenantStorageAboveAlertLine" && a["state"] == "firing")
            .cloned()
    })
    .await;
    assert_eq!(alert["labels"]["tenant"], "acme", "{alert}");
    assert_eq!(alert["annotations"]["summary"], "Tenant acme uses 85.0 % of its storage cap", "{alert}");
    let alerts = prometheus.api(&http, "/api/v1/alerts").await.unwrap();
    let named: Vec<&Value> =
        alerts["alerts"].as_array().unwrap().iter().filter(|a| a["labels"]["tenant"].is_string()).collect();
    assert!(named.iter().all(|a| a["labels"]["tenant"] == "acme"), "globex (10 %) is not named: {alerts}");
    let down: Vec<&Value> = alerts["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["labels"]["alertname"] == "TallyServiceDown")
        .collect();
    assert!(down.is_empty(), "{down:?}");

    // Every metric a rule or a dashboard names was scraped from a running service.
    let named = named_metrics();
    let started = Instant::now();
    let unscraped = loop {
        let scraped: BTreeSet<String> = prometheus
            .api(&http, "/api/v1/label/__name__/values")
            .await
            .and_then(|names| names.as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|name| name.as_str().map(str::to_owned))
            .collect();
        let missing: Vec<&String> = named.difference(&scraped).collect();
        if missing.is_empty() || started.elapsed() > Duration::from_secs(30) {
            break format!("{missing:?}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(unscraped, "[]", "named by a rule or a dashboard but not exported");
    eprintln!("{} metrics named by rules and dashboards, all scraped: {named:?}", named.len());

    drop(prometheus);
    stopping.cancel();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    ch.drop_database().await;
    pg.drop_database().await;
    tally_testkit::delete_topics(&kafka_config(), &[&topics.usage_events, &topics.dead_letter]).await;
}
