//! Whole units with carried fractions, identifiers within Stripe's 100 characters, paged parity
//! and a change of `billing.window`.

use chrono::Utc;
use tally_billing_sync::BillingSync;
use tally_billing_sync::config::{MeterSpec, Window};

use crate::World;

/// `hours_ago` of hour `hour` (0–23, UTC) on the day `days_ago` days before today.
fn hours_ago(days_ago: i64, hour: i64) -> i64 {
    let now_hour = Utc::now().timestamp() / 3_600;
    let today = now_hour / 24 * 24;
    now_hour - (today - 24 * days_ago + hour)
}

#[tokio::test]
async fn fractions_carry_from_window_to_window_and_units_bundle_amounts() {
    let world = World::new().await;
    let acme = world.tenant("acme", true).await.unwrap();
    for (hours, seconds) in [(4, "0.4"), (3, "0.4"), (2, "0.4"), (1, "2.9")] {
        world.usage_exact("acme", "compute_seconds", hours, seconds).await;
    }
    for (hours, calls) in [(4, 1_500), (3, 400), (2, 200)] {
        world.usage("acme", "api_calls", hours, calls).await;
    }
    let mut config = world.config();
    config.billing.meters.insert(
        "api_calls".to_owned(),
        MeterSpec::Full { event_name: "api_calls".to_owned(), unit: "1000".parse().unwrap() },
    );
    let sync = BillingSync::new(config).unwrap();
    let (report, _) = sync.run_once(false).await.unwrap();
    assert!(report.failures.is_empty() && report.refused.is_empty(), "{report:?}");
    // 0.4 + 0.4 + 0.4 + 2.9 = 4.1 seconds: 4 sent, 0.1 carried; 2,100 calls: 2 thousands, 100 carried.
    assert_eq!(world.stripe_total(&acme, "compute_seconds").await, 4.0);
    assert_eq!(world.stripe_total(&acme, "api_calls").await, 2.0);
    assert_eq!(report.carried.get("compute_seconds").map(String::as_str), Some("0.1"), "{report:?}");
    assert_eq!(report.carried.get("api_calls").map(String::as_str), Some("100"));
    assert_eq!(report.carried_rows, 3, "0.4, the second 0.4 and the 400 calls stayed below a unit: {report:?}");
    let rows: Vec<(String, i64, String)> = sqlx::query_as(
        "SELECT kind, value, amount FROM tally.billing_ledger WHERE metric = 'compute_seconds' ORDER BY window_start",
    )
    .fetch_all(&world.pg.pool)
    .await
    .unwrap();
    let values: Vec<i64> = rows.iter().map(|r| r.1).collect();
    assert_eq!(values, vec![0, 0, 1, 3], "floor of the running total, window after window: {rows:?}");
    let parity = sync.parity(2).await.unwrap();
    assert_eq!(parity.differences, Vec::new());
    assert!(parity.carried.iter().any(|c| c.metric == "compute_seconds" && c.carried == "0.1"), "{parity:?}");

    world.usage_exact("acme", "compute_seconds", 4, "0.95").await;
    let (late, _) = sync.run_once(false).await.unwrap();
    assert_eq!(late.sent, 1, "5.05 s: one more whole second, from the late window: {late:?}");
    assert_eq!(world.stripe_total(&acme, "compute_seconds").await, 5.0);
    assert_eq!(sync.parity(2).await.unwrap().differences, Vec::new());
    world.drop().await;
}

#[tokio::test]
async fn identifiers_stay_within_100_characters_for_the_longest_names() {
    let mut world = World::new().await;
    let tenant = "t".repeat(64);
    let metric = "m".repeat(64);
    let customer = world.tenant(&tenant, true).await.unwrap();
    world.meter(&metric).await;
    world.usage(&tenant, &metric, 2, 7).await;
    let mut config = world.config();
    config.billing.meters = [(metric.clone(), MeterSpec::Name(metric.clone()))].into();
    let sync = BillingSync::new(config).unwrap();
    let (dry, planned) = sync.run_once(true).await.unwrap();
    assert_eq!(dry.planned, 1);
    assert!(planned[0].identifier.len() <= 100, "{}", planned[0].identifier);
    let (report, _) = sync.run_once(false).await.unwrap();
    assert!(report.failures.is_empty() && report.refused.is_empty(), "{report:?}");
    assert_eq!(world.stripe_total(&customer, &metric).await, 7.0);
    world.drop().await;
}

#[tokio::test]
async fn parity_reads_every_page_of_more_than_100_windows() {
    let world = World::new().await;
    let acme = world.tenant("acme", true).await.unwrap();
    for hours in 1..=130 {
        world.usage("acme", "api_calls", hours, 3).await;
    }
    let sync = world.sync();
    let (report, _) = sync.run_once(false).await.unwrap();
    assert_eq!((report.sent, report.failures.len()), (130, 0), "{report:?}");
    assert_eq!(sync.parity(7).await.unwrap().differences, Vec::new(), "168 hourly summaries, over two pages");
    world.usage("acme", "api_calls", 120, 2).await;
    let at_110 = (Utc::now().timestamp() / 3_600 - 110) * 3_600;
    world.stripe_event(&acme, "api_calls", 4, at_110).await;
    let differences = sync.parity(7).await.unwrap().differences;
    let found: Vec<(&str, i64)> = differences.iter().map(|d| (d.kind, d.window_start)).collect();
    let at_120 = (Utc::now().timestamp() / 3_600 - 120) * 3_600;
    assert_eq!(found.len(), 2, "{differences:?}");
    assert!(found.contains(&("unsynced", at_120)) && found.contains(&("stripe", at_110)), "{found:?}");
    world.drop().await;
}

#[tokio::test]
async fn changing_the_window_between_hour_and_day_never_bills_a_period_twice() {
    let world = World::new().await;
    let acme = world.tenant("acme", true).await.unwrap();
    for hour in [3, 9, 20] {
        world.usage("acme", "api_calls", hours_ago(2, hour), 10).await;
        world.usage("acme", "api_calls", hours_ago(1, hour), 100).await;
    }
    let hourly = world.config();
    let mut daily = world.config();
    daily.billing.window = Window::Day;
    let (report, _) = BillingSync::new(hourly.clone()).unwrap().run_once(false).await.unwrap();
    assert_eq!(report.sent, 6);
    assert_eq!(world.stripe_total(&acme, "api_calls").await, 330.0);

    // Days already billed by the hour stay hourly; a day with no rows yet is billed whole.
    world.usage("acme", "api_calls", hours_ago(1, 21), 1).await;
    world.usage("acme", "api_calls", hours_ago(3, 5), 1_000).await;
    world.usage("acme", "api_calls", hours_ago(3, 6), 2_000).await;
    let (switched, planned) = BillingSync::new(daily.clone()).unwrap().run_once(false).await.unwrap();
    assert_eq!(switched.sent, 2, "{planned:?}");
    let kinds: Vec<(&str, i64)> = planned.iter().map(|p| (p.granularity, p.value)).collect();
    assert!(kinds.contains(&("hour", 1)) && kinds.contains(&("day", 3_000)), "{kinds:?}");
    assert_eq!(world.stripe_total(&acme, "api_calls").await, 3_331.0);
    let (again, _) = BillingSync::new(daily).unwrap().run_once(false).await.unwrap();
    assert_eq!(again.planned, 0);

    // And back: the day billed whole stays whole.
    world.usage("acme", "api_calls", hours_ago(3, 7), 5).await;
    let back = BillingSync::new(hourly).unwrap();
    let (report, planned) = back.run_once(false).await.unwrap();
    assert_eq!((report.sent, planned[0].granularity), (1, "day"), "{planned:?}");
    assert_eq!(world.stripe_total(&acme, "api_calls").await, 3_336.0);
    assert_eq!(back.parity(4).await.unwrap().differences, Vec::new());
    world.drop().await;
}
