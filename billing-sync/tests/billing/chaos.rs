//! SIGKILL the billing-sync process at random moments mid-run: Stripe ends equal to Tally,
//! fractional amounts included (floor of the running total, the fraction carried).

use std::process::{Command, Stdio};
use std::time::Duration;

use tally_stripe_fake::Faults;

use crate::World;

/// What customer `n` owes in whole units: api_calls n+1 … n+5, and 5 windows of n.35 seconds,
/// of which Stripe holds floor(5n + 1.75) with 0.75 carried.
fn due(n: i64) -> (f64, f64) {
    ((1..6).map(|h| n + h).sum::<i64>() as f64, (5 * n + 1) as f64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_sync_at_twenty_moments_leaves_no_window_double_billed_or_missed() {
    let world = World::new().await;
    let mut customers = Vec::new();
    for n in 0..60 {
        let tenant = format!("t{n:02}");
        customers.push(world.tenant(&tenant, true).await.unwrap());
        for hours_ago in 1..6 {
            world.usage(&tenant, "api_calls", hours_ago, n + hours_ago).await;
            world.usage_exact(&tenant, "compute_seconds", hours_ago, &format!("{n}.35")).await;
        }
    }
    // 600 meter events at 4 in flight and 15 ms each: a run takes over 2 s, so kills land mid-run.
    let chaos = Faults { delay_ms: 15, drop_percent: 5, seed: 9, ..Faults::default() };
    world.faults(chaos).await;
    let config = std::env::temp_dir().join(format!("{}-billing.toml", world.pg.database));
    std::fs::write(
        &config,
        format!(
            "[postgres]\nurl = \"{}\"\n[clickhouse]\nurl = \"{}\"\ndatabase = \"{}\"\n[billing]\nstripe_url = \"{}\"\nsettle_minutes = 0\nconcurrency = 4\nmax_attempts = 4\n[telemetry]\nfilter = \"error\"\nformat = \"text\"\n",
            world.pg.config.url.expose(),
            world.ch.config.url,
            world.ch.config.database,
            world.stripe
        ),
    )
    .unwrap();
    let run = || {
        let mut command = Command::new(env!("CARGO_BIN_EXE_tally-billing-sync"));
        for (name, _) in std::env::vars().filter(|(name, _)| name.starts_with("TALLY_")) {
            command.env_remove(name);
        }
        command.arg("--once").arg("--config").arg(&config).stdout(Stdio::null()).stderr(Stdio::null());
        command
    };
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    for _ in 0..22 {
        let mut child = run().spawn().unwrap();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        tokio::time::sleep(Duration::from_millis(150 + x % 1_200)).await;
        child.kill().unwrap();
        child.wait().unwrap();
        // Whatever instant the kill hit, Stripe never holds more than is due.
        world.faults(Faults::default()).await;
        for (n, customer) in customers.iter().enumerate() {
            let (calls, compute) = due(n as i64);
            assert!(world.stripe_total(customer, "api_calls").await <= calls, "customer {n} over-billed");
            assert!(world.stripe_total(customer, "compute_seconds").await <= compute, "customer {n} over-billed");
        }
        world.faults(chaos).await;
    }
    let acknowledged: i64 =
        sqlx::query_scalar("SELECT count(*) FROM tally.billing_ledger WHERE state = 'acknowledged'")
            .fetch_one(&world.pg.pool)
            .await
            .unwrap();
    assert!(acknowledged > 0, "the killed runs made progress");
    world.faults(Faults { delay_ms: 0, ..Faults::default() }).await;
    let mut finished = false;
    for _ in 0..5 {
        if run().status().unwrap().success() {
            finished = true;
            break;
        }
    }
    assert!(finished, "a clean run finishes with exit code 0");
    for (n, customer) in customers.iter().enumerate() {
        let (calls, compute) = due(n as i64);
        assert_eq!(world.stripe_total(customer, "api_calls").await, calls, "customer {n} api_calls");
        assert_eq!(world.stripe_total(customer, "compute_seconds").await, compute, "customer {n} compute_seconds");
    }
    let parity = world.sync().parity(1).await.unwrap();
    assert_eq!(parity.differences, Vec::new());
    assert!(parity.carried.iter().filter(|c| c.metric == "compute_seconds").all(|c| c.carried == "0.75"));
    let _ = std::fs::remove_file(&config);
    world.drop().await;
}
