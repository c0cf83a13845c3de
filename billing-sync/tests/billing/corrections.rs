//! Over-billing corrected both ways Stripe documents, refusals that wait for their fix, and a
//! daemon that outlives its dependencies' failures.

use std::time::Duration;

use tally_billing_sync::{BillingSync, Mode};
use tokio_util::sync::CancellationToken;

use crate::World;

#[tokio::test]
async fn over_billing_is_cancelled_within_24_hours_and_corrected_negatively_after() {
    let world = World::new().await;
    let acme = world.tenant("acme", true).await.unwrap();
    world.usage("acme", "api_calls", 2, 100).await;
    let sync = world.sync();
    sync.run_once(false).await.unwrap();
    assert_eq!(world.stripe_total(&acme, "api_calls").await, 100.0);

    // Tally's total falls (e.g. a correction upstream): the recent event is cancelled and the
    // window sent again with what it should hold.
    world.usage("acme", "api_calls", 2, -30).await;
    let (report, planned) = sync.run_once(false).await.unwrap();
    assert_eq!((report.cancelled, report.sent, report.negative_corrections), (1, 1, 0), "{planned:?}");
    assert_eq!(world.stripe_total(&acme, "api_calls").await, 70.0);
    assert_eq!(sync.parity(1).await.unwrap().differences, Vec::new());

    // Past the cancellation window, a negative event.
    let mut late = world.config();
    late.billing.cancel_within_hours = 0;
    let late = BillingSync::new(late).unwrap();
    world.usage("acme", "api_calls", 2, -20).await;
    let (report, planned) = late.run_once(false).await.unwrap();
    assert_eq!((report.cancelled, report.negative_corrections), (0, 1), "{planned:?}");
    assert_eq!(planned[0].value, -20);
    assert_eq!(world.stripe_total(&acme, "api_calls").await, 50.0);
    assert_eq!(late.parity(1).await.unwrap().differences, Vec::new());
    world.drop().await;
}

#[tokio::test]
async fn a_refused_customer_blocks_only_its_windows_until_the_fix_and_is_billed_after() {
    let world = World::new().await;
    let gone = world.tenant("gone", true).await.unwrap();
    let fine = world.tenant("fine", true).await.unwrap();
    for hours in 1..4 {
        world.usage("gone", "api_calls", hours, 10).await;
        world.usage("fine", "api_calls", hours, 5).await;
    }
    let deleted = world.http.delete(format!("{}/v1/customers/{gone}", world.stripe)).bearer_auth("sk_test_t");
    assert!(deleted.send().await.unwrap().status().is_success());
    let sync = world.sync();
    let (report, _) = sync.run_once(false).await.unwrap();
    assert_eq!(report.sent, 3, "the other tenant is billed: {report:?}");
    assert_eq!(world.stripe_total(&fine, "api_calls").await, 15.0);
    assert_eq!(report.refused.len(), 1, "the customer is gone for every window: one refusal: {report:?}");
    assert_eq!((report.refused[0].tenant_id.as_str(), report.refused[0].code.as_str()), ("gone", "resource_missing"));

    let (waiting, _) = sync.run_once(false).await.unwrap();
    assert_eq!((waiting.planned, waiting.refused.len()), (0, 1), "no resend before the fix: {waiting:?}");
    assert!(!waiting.refused[0].this_run);

    let replacement = world.post("/v1/customers", &[("name", "gone again")]).await["id"].as_str().unwrap().to_owned();
    sqlx::query("UPDATE stripe_customers SET stripe_customer_id = $1 WHERE tenant_id = 'gone'")
        .bind(&replacement)
        .execute(&world.pg.pool)
        .await
        .unwrap();
    let (fixed, _) = sync.run_once(false).await.unwrap();
    assert_eq!((fixed.sent, fixed.refused.len()), (3, 0), "{fixed:?}");
    assert_eq!(world.stripe_total(&replacement, "api_calls").await, 30.0);
    assert_eq!(sync.parity(1).await.unwrap().differences, Vec::new());
    world.drop().await;
}

async fn metric(http: &reqwest::Client, base: &str, name: &str) -> f64 {
    let text = http.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    text.lines().find_map(|l| l.strip_prefix(name)?.trim().parse().ok()).unwrap_or(0.0)
}

#[tokio::test]
async fn the_daemon_keeps_running_through_failed_runs_and_stops_on_bad_configuration() {
    let world = World::new().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut config = world.config();
    config.billing.listen = ([127, 0, 0, 1], port).into();
    config.clickhouse.url = "http://127.0.0.1:1".to_owned();
    let stopping = CancellationToken::new();
    let daemon = tokio::spawn(BillingSync::new(config).unwrap().run(Mode::Daemon, stopping.clone()));
    let base = format!("http://127.0.0.1:{port}");
    let mut failures = 0.0;
    for _ in 0..200 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        failures = metric(&world.http, &base, "tally_billing_run_failures_total").await;
        if failures >= 2.0 {
            break;
        }
    }
    assert!(failures >= 2.0 && !daemon.is_finished(), "retried with backoff, still running ({failures} failures)");
    assert_eq!(world.http.get(format!("{base}/livez")).send().await.unwrap().status(), 200);
    assert_eq!(world.http.get(format!("{base}/readyz")).send().await.unwrap().status(), 503, "ClickHouse is down");
    stopping.cancel();
    daemon.await.unwrap().unwrap();

    let mut wrong = world.config();
    wrong.billing.listen = ([127, 0, 0, 1], 0).into();
    wrong
        .billing
        .meters
        .insert("api_calls".to_owned(), tally_billing_sync::config::MeterSpec::Name("no_such_meter".to_owned()));
    let stopped = tokio::time::timeout(
        Duration::from_secs(30),
        BillingSync::new(wrong).unwrap().run(Mode::Daemon, CancellationToken::new()),
    )
    .await
    .expect("bad configuration stops the daemon");
    let error = format!("{:#}", stopped.unwrap_err());
    assert!(error.contains("no_such_meter"), "{error}");
    world.drop().await;
}
