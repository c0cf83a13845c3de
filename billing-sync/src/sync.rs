//! One sync run: load every stream's windows, then bring each stream's Stripe meter up to
//! Tally's totals — streams side by side, each stream's rows one at a time (Stripe takes one
//! concurrent meter event per customer and meter, and each row's whole units depend on the
//! head the previous row left).

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, TimeDelta, Utc};
use clickhouse::Row as ChRow;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use tally_schemas::Quantity;

use crate::config::{BillingSection, Window};
use crate::ledger::{self, Head, Kind, Row, State, StreamKey};
use crate::plan::{self, Decision, Policy, Stream};
use crate::stripe::{MeterEvent, Outcome, StripeClient};

#[derive(Debug, ChRow, Deserialize)]
struct Total {
    tenant_id: String,
    metric: String,
    granularity: String,
    window_start: u32,
    total: i128,
}

/// The windows a run covers: from the lookback (inside Stripe's 35 days) to the settled edge.
pub fn range(settings: &BillingSection, now: DateTime<Utc>) -> (i64, i64) {
    let step = settings.window.seconds();
    let settled = (now - TimeDelta::minutes(settings.settle_minutes)).timestamp();
    let start = (now - TimeDelta::days(settings.lookback_days)).timestamp().div_euclid(step) * step + step;
    (start, settled)
}

/// A configuration mistake that no retry fixes: the daemon stops on it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Every billed stream over `[start, settled)`, and the tenants with usage but no customer.
pub async fn load(
    pool: &PgPool,
    clickhouse: &clickhouse::Client,
    settings: &BillingSection,
    (start, settled): (i64, i64),
) -> anyhow::Result<(Vec<Stream>, usize)> {
    let customers: HashMap<String, String> =
        sqlx::query_as::<_, (String, String)>("SELECT tenant_id, stripe_customer_id FROM stripe_customers")
            .fetch_all(pool)
            .await?
            .into_iter()
            .collect();
    let heads = ledger::load_heads(pool).await?;
    // From the start of the first day: a day's granularity is set by its first row, which may
    // lie before `start` (a day billed whole, seen from an hourly lookback edge).
    let since = DateTime::from_timestamp(start.div_euclid(86_400) * 86_400, 0).unwrap_or_default();
    let mut rows = ledger::load_rows(pool, since).await?;
    let mut granularities: HashSet<&'static str> = HashSet::from([settings.window.granularity()]);
    granularities.extend(rows.values().flatten().map(|r| r.granularity.granularity()));
    let metrics: Vec<&str> = settings.meters.keys().map(String::as_str).collect();
    let granularities: Vec<&str> = granularities.into_iter().collect();
    let totals: Vec<Total> = clickhouse
        .query(
            "SELECT tenant_id, metric, granularity, toUInt32(window_start) AS window_start, total FROM usage_windows \
             WHERE granularity IN ? AND window_start >= toDateTime(?, 'UTC') AND window_start < toDateTime(?, 'UTC') \
             AND metric IN ?",
        )
        .bind(&granularities)
        .bind(start)
        .bind(settled)
        .bind(&metrics)
        .fetch_all()
        .await?;
    let mut by_stream: HashMap<StreamKey, HashMap<(Window, i64), Quantity>> = HashMap::new();
    for total in totals {
        let Some(granularity) = Window::parse(&total.granularity) else { continue };
        by_stream
            .entry((total.tenant_id, total.metric))
            .or_default()
            .insert((granularity, i64::from(total.window_start)), Quantity::from_units(total.total));
    }
    let keys: HashSet<StreamKey> = by_stream.keys().chain(rows.keys()).cloned().collect();
    let mut without_customer = HashSet::new();
    let mut streams = Vec::new();
    for key in keys {
        let Some(spec) = settings.meters.get(&key.1) else { continue };
        let head = heads.get(&key).cloned().unwrap_or_else(|| Head::new(spec.unit()));
        if head.unit != spec.unit() {
            return Err(ConfigError(format!(
                "[billing.meters.{}] unit is {}, but the ledger bills this metric in units of {}: a unit cannot change \
                 under sent events. Bill the new unit as a new metric name (and Stripe meter), or restore unit = \"{}\"",
                key.1,
                spec.unit(),
                head.unit,
                head.unit
            ))
            .into());
        }
        let totals = by_stream.remove(&key).unwrap_or_default();
        let windows = plan::windows(settings.window, &totals, rows.remove(&key).unwrap_or_default(), (start, settled));
        let Some(customer) = customers.get(&key.0) else {
            if windows.iter().any(|w| w.tally != Quantity::ZERO) {
                without_customer.insert(key.0.clone());
            }
            continue;
        };
        if windows.is_empty() {
            continue;
        }
        streams.push(Stream {
            customer: customer.clone(),
            event_name: spec.event_name().to_owned(),
            key,
            head,
            windows,
        });
    }
    streams.sort_by(|a, b| a.key.cmp(&b.key));
    Ok((streams, without_customer.len()))
}

/// One row a run sent or would send.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Planned {
    pub tenant_id: String,
    pub metric: String,
    pub granularity: &'static str,
    pub window_start: i64,
    pub seq: i32,
    pub kind: &'static str,
    /// Tally's exact amount the row accounts for.
    pub amount: String,
    /// Whole units sent to Stripe.
    pub value: i64,
    pub identifier: String,
    pub stripe_customer_id: String,
    pub event_name: String,
    pub cancels: Option<String>,
    /// A row a crashed run left pending, sent again as it was.
    pub resend: bool,
}

impl Planned {
    fn of(key: &StreamKey, row: &Row, resend: bool) -> Self {
        Self {
            tenant_id: key.0.clone(),
            metric: key.1.clone(),
            granularity: row.granularity.granularity(),
            window_start: row.window_start,
            seq: row.seq,
            kind: match row.kind {
                Kind::Event => "event",
                Kind::Cancel => "cancel",
                Kind::Carry => "carry",
            },
            amount: row.amount.to_string(),
            value: row.value,
            identifier: row.identifier.clone(),
            stripe_customer_id: row.stripe_customer_id.clone(),
            event_name: row.event_name.clone(),
            cancels: row.cancels.clone(),
            resend,
        }
    }
}

/// A window Stripe refused, left out of billing until the cause is fixed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Refused {
    pub tenant_id: String,
    pub metric: String,
    pub window_start: i64,
    pub code: String,
    /// Refused by Stripe in this run (else still waiting from an earlier refusal).
    pub this_run: bool,
}

impl Refused {
    fn of(stream: &Stream, window_start: i64, code: String, this_run: bool) -> Self {
        Self { tenant_id: stream.key.0.clone(), metric: stream.key.1.clone(), window_start, code, this_run }
    }
}

/// What a run did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Report {
    /// Rows written (or, in a dry run, that would be).
    pub planned: usize,
    /// Meter events sent (negative corrections included).
    pub sent: usize,
    pub resent: usize,
    /// Events cancelled by a meter event adjustment (over-billing within 24 h).
    pub cancelled: usize,
    /// Negative events sent (over-billing older than the cancellation window).
    pub negative_corrections: usize,
    /// Windows whose new amount stayed within the carried fraction.
    pub carried_rows: usize,
    /// Tenants with usage but no row in `stripe_customers`.
    pub tenants_without_customer: usize,
    /// Windows Stripe refused (this run, or still waiting for their retry).
    pub refused: Vec<Refused>,
    /// tenant → the errors of its rows that did not reach Stripe (retried by the next run).
    pub failures: BTreeMap<String, Vec<String>>,
    /// The Stripe key was refused: nothing can be sent until the configuration is fixed.
    pub unauthorized: bool,
    /// Seconds since the end of the oldest window this run had to send something for.
    pub oldest_unsynced_lag_secs: i64,
    /// metric → the exact fractions carried over all tenants, below one unit each.
    pub carried: BTreeMap<String, String>,
}

/// Where a stream goes after one row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    Row,
    /// Stripe refused the row: the window's later rows assumed it, so they wait for next run.
    Window,
    Stop,
}

#[derive(Debug, Default)]
struct StreamRun {
    report: Report,
    planned: Vec<Planned>,
    oldest_window_end: Option<i64>,
    head: Option<Head>,
}

/// The shared pieces a run needs.
#[derive(Debug, Clone, Copy)]
pub struct Run<'a> {
    pub pool: &'a PgPool,
    pub acks: &'a ledger::Acks,
    pub stripe: &'a StripeClient,
    pub policy: Policy,
    pub dry_run: bool,
    pub window_seconds: i64,
}

impl Run<'_> {
    /// Runs every stream, `concurrency` streams at a time.
    pub async fn all(self, streams: Vec<Stream>, concurrency: usize, report: &mut Report) -> Vec<Planned> {
        let now = self.policy.now.timestamp();
        let runs: Vec<(StreamKey, StreamRun)> = futures_util::stream::iter(streams)
            .map(|stream| async move { (stream.key.clone(), self.stream(stream).await) })
            .buffer_unordered(concurrency.max(1))
            .collect()
            .await;
        let mut planned = Vec::new();
        let mut carried: BTreeMap<String, i128> = BTreeMap::new();
        for (key, run) in runs {
            let part = run.report;
            report.planned += part.planned;
            report.sent += part.sent;
            report.resent += part.resent;
            report.cancelled += part.cancelled;
            report.negative_corrections += part.negative_corrections;
            report.carried_rows += part.carried_rows;
            report.unauthorized |= part.unauthorized;
            report.refused.extend(part.refused);
            for (tenant, errors) in part.failures {
                report.failures.entry(tenant).or_default().extend(errors);
            }
            if let Some(end) = run.oldest_window_end {
                report.oldest_unsynced_lag_secs = report.oldest_unsynced_lag_secs.max(now - end);
            }
            if let Some(head) = run.head {
                *carried.entry(key.1).or_default() += head.carried().units();
            }
            planned.extend(run.planned);
        }
        report
            .refused
            .sort_by(|a, b| (&a.tenant_id, &a.metric, a.window_start).cmp(&(&b.tenant_id, &b.metric, b.window_start)));
        report.carried =
            carried.into_iter().map(|(metric, units)| (metric, Quantity::from_units(units).to_string())).collect();
        planned
    }

    async fn stream(self, stream: Stream) -> StreamRun {
        let mut run = StreamRun::default();
        let mut head = stream.head.clone();
        let pending: Vec<Row> =
            stream.windows.iter().flat_map(|w| &w.rows).filter(|r| r.state == State::Pending).cloned().collect();
        for row in pending {
            run.oldest_window_end.get_or_insert(row.window_start + self.window_seconds);
            run.planned.push(Planned::of(&stream.key, &row, true));
            if !self.dry_run && self.deliver(&stream, &mut head, &row, true, &mut run).await == Next::Stop {
                run.head = Some(head);
                return run;
            }
        }
        for window in &stream.windows {
            let rows = match plan::decide(&stream, &head, window, &self.policy) {
                Decision::Nothing => continue,
                Decision::Blocked { code } => {
                    // A missing customer or meter is the whole stream's cause: its later windows wait too.
                    let stream_wide = code == "resource_missing";
                    run.report.refused.push(Refused::of(&stream, window.start, code, false));
                    if stream_wide {
                        break;
                    }
                    continue;
                }
                Decision::Rows(rows) => rows,
            };
            run.oldest_window_end.get_or_insert(window.start + window.granularity.seconds());
            for row in rows {
                run.report.planned += 1;
                run.planned.push(Planned::of(&stream.key, &row, false));
                if self.dry_run {
                    head = head.with(&row);
                    continue;
                }
                let after = head.with(&row);
                match ledger::write(self.pool, &stream.key, &head, &after, &row).await {
                    Ok(true) => head = after,
                    Ok(false) => {
                        tracing::info!(
                            tenant = stream.key.0,
                            metric = stream.key.1,
                            "another run is billing this stream"
                        );
                        run.head = Some(head);
                        return run;
                    }
                    Err(error) => {
                        fail(&mut run, &stream, &row, &error.to_string());
                        run.head = Some(head);
                        return run;
                    }
                }
                if row.kind == Kind::Carry {
                    run.report.carried_rows += 1;
                    continue;
                }
                match self.deliver(&stream, &mut head, &row, false, &mut run).await {
                    Next::Row => {}
                    Next::Window => break,
                    Next::Stop => {
                        run.head = Some(head);
                        return run;
                    }
                }
            }
        }
        run.head = Some(head);
        run
    }

    /// Sends a written row and records Stripe's answer.
    async fn deliver(&self, stream: &Stream, head: &mut Head, row: &Row, resend: bool, run: &mut StreamRun) -> Next {
        let outcome = match row.kind {
            Kind::Event => {
                let event = MeterEvent {
                    event_name: &row.event_name,
                    customer: &row.stripe_customer_id,
                    value: row.value,
                    identifier: &row.identifier,
                    timestamp: row.window_start,
                };
                self.stripe.send_event(&event).await
            }
            Kind::Cancel => {
                let cancels = row.cancels.as_deref().unwrap_or_default();
                self.stripe.cancel_event(&row.event_name, cancels, &row.identifier).await
            }
            Kind::Carry => Outcome::Taken,
        };
        match outcome {
            Outcome::Taken => {
                self.acks.ack(&row.identifier);
                match (row.kind, resend, row.value < 0) {
                    (_, true, _) => run.report.resent += 1,
                    (Kind::Cancel, false, _) => run.report.cancelled += 1,
                    (_, false, true) => {
                        run.report.negative_corrections += 1;
                        run.report.sent += 1;
                    }
                    _ => run.report.sent += 1,
                }
                Next::Row
            }
            Outcome::Refused { code, message, stream_wide } => {
                tracing::warn!(
                    tenant = stream.key.0, metric = stream.key.1, window = row.window_start, %code, %message,
                    "stripe refused the row; the window waits until the cause is fixed"
                );
                let after = head.without(row);
                match ledger::refuse(self.pool, &stream.key, (head, &after), row, (&code, &message)).await {
                    Ok(true) => *head = after,
                    Ok(false) => return Next::Stop,
                    Err(error) => {
                        fail(run, stream, row, &error.to_string());
                        return Next::Stop;
                    }
                }
                run.report.refused.push(Refused::of(stream, row.window_start, code, true));
                if stream_wide { Next::Stop } else { Next::Window }
            }
            Outcome::Failed(error) => {
                run.report.unauthorized |= error.is_unauthorized();
                fail(run, stream, row, &error.to_string());
                Next::Stop
            }
        }
    }
}

fn fail(run: &mut StreamRun, stream: &Stream, row: &Row, error: &str) {
    run.report
        .failures
        .entry(stream.key.0.clone())
        .or_default()
        .push(format!("{} window {}: {error}", stream.key.1, row.window_start));
}
