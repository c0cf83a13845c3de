//! What one window of a stream needs, decided from the stream's head and the window's rows.
//!
//! The invariant every decision keeps: after the rows are written, the head's
//! `value_total = floor(exact_total / unit)`. A window's new amount (Tally's total minus what
//! its live rows accounted) moves `exact_total`; the whole units to send are the new floor
//! minus the units already sent. Fractions therefore carry from window to window in the order
//! rows are written; a window's rounding is never lost or applied twice. At most one unit can
//! land in the window after a Stripe billing-period boundary, where the fraction completed.
//!
//! Over-billing (fewer units due than were sent) is corrected by cancelling the window's
//! events Stripe received within `cancel_within` (a meter event adjustment) and sending one
//! event with what the window should hold; past that, by a negative event, which Stripe's
//! `sum` meters add up (Stripe: "fix incorrectly recorded usage data by recording negative
//! quantities"). Cancelling first keeps Stripe's event history free of the wrong figure.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, TimeDelta, Utc};
use tally_schemas::Quantity;

use crate::config::Window;
use crate::ledger::{self, Head, Kind, Row, State, StreamKey};

/// One window of a stream: Tally's exact total and the ledger's rows for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowState {
    pub granularity: Window,
    pub start: i64,
    pub tally: Quantity,
    pub rows: Vec<Row>,
}

impl WindowState {
    /// What the window's live rows accounted for.
    pub fn accounted(&self) -> i128 {
        self.rows.iter().filter(|r| r.live()).map(|r| r.amount.units()).sum()
    }
}

/// What billing-sync owes one tenant on one metric.
#[derive(Debug, Clone)]
pub struct Stream {
    pub key: StreamKey,
    pub customer: String,
    pub event_name: String,
    pub head: Head,
    pub windows: Vec<WindowState>,
}

/// The clock and the policy decisions read.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub now: DateTime<Utc>,
    pub cancel_within: TimeDelta,
    pub refusal_retry: TimeDelta,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Stripe holds what the window needs.
    Nothing,
    /// Stripe refused the window's last row recently, for the same customer: wait.
    Blocked { code: String },
    /// Rows to write and send, in order.
    Rows(Vec<Row>),
}

/// The rows `window` needs, given the stream's head before them.
pub fn decide(stream: &Stream, head: &Head, window: &WindowState, policy: &Policy) -> Decision {
    let delta = window.tally.units() - window.accounted();
    if delta == 0 {
        return Decision::Nothing;
    }
    if let Some(last) = window.rows.last()
        && last.state == State::Refused
        && last.stripe_customer_id == stream.customer
        && last.refused_at.is_some_and(|at| policy.now - at < policy.refusal_retry)
    {
        return Decision::Blocked { code: last.refusal_code.clone().unwrap_or_default() };
    }
    let unit = head.unit.units().max(1);
    let target = (head.exact_total.units() + delta).div_euclid(unit);
    let Ok(mut want) = i64::try_from(target - i128::from(head.value_total)) else {
        return Decision::Blocked { code: "value_out_of_range".to_owned() };
    };
    let mut seq = window.rows.iter().map(|r| r.seq + 1).max().unwrap_or(0);
    let mut row = |kind: Kind, amount: i128, value: i64, cancels: Option<&Row>| {
        let row = Row {
            granularity: window.granularity,
            window_start: window.start,
            seq,
            kind,
            amount: Quantity::from_units(amount),
            value,
            identifier: ledger::identifier(&stream.key, window.granularity, window.start, seq, kind),
            cancels: cancels.map(|c| c.identifier.clone()),
            state: State::Pending,
            stripe_customer_id: cancels.map_or_else(|| stream.customer.clone(), |c| c.stripe_customer_id.clone()),
            event_name: cancels.map_or_else(|| stream.event_name.clone(), |c| c.event_name.clone()),
            created_at: policy.now,
            refused_at: None,
            refusal_code: None,
        };
        seq += 1;
        row
    };
    let mut rows = Vec::new();
    if want < 0 {
        let cancelled: HashSet<&str> = window
            .rows
            .iter()
            .filter(|r| r.live() && r.kind == Kind::Cancel)
            .filter_map(|r| r.cancels.as_deref())
            .collect();
        let cancellable: Vec<&Row> = window
            .rows
            .iter()
            .filter(|r| r.kind == Kind::Event && r.state == State::Acknowledged && r.value > 0)
            .filter(|r| !cancelled.contains(r.identifier.as_str()))
            .filter(|r| policy.now - r.created_at < policy.cancel_within)
            .collect();
        let cancellable_units: i64 = cancellable.iter().map(|r| r.value).sum();
        if !cancellable.is_empty() && cancellable_units >= -want {
            for event in cancellable {
                rows.push(row(Kind::Cancel, 0, -event.value, Some(event)));
            }
            want += cancellable_units;
        }
    }
    let kind = if want == 0 { Kind::Carry } else { Kind::Event };
    rows.push(row(kind, delta, want, None));
    Decision::Rows(rows)
}

/// Arranges a stream's windows. A UTC day is billed at the granularity of its first ledger row
/// (the configured one when it has none), so changing `billing.window` never bills a period
/// twice: days billed by the hour stay hourly, days billed whole stay whole, and new days
/// follow the configuration. Only windows inside `[start, settled)` are kept.
pub fn windows(
    configured: Window,
    totals: &HashMap<(Window, i64), Quantity>,
    rows: Vec<Row>,
    (start, settled): (i64, i64),
) -> Vec<WindowState> {
    const DAY: i64 = 86_400;
    let mut day_granularity: HashMap<i64, Window> = HashMap::new();
    for row in &rows {
        day_granularity.entry(row.window_start.div_euclid(DAY)).or_insert(row.granularity);
    }
    let granularity_of = |at: i64| day_granularity.get(&at.div_euclid(DAY)).copied().unwrap_or(configured);
    let mut by_window: BTreeMap<i64, WindowState> = BTreeMap::new();
    let keep = |granularity: Window, at: i64| {
        granularity_of(at) == granularity && at >= start && at + granularity.seconds() <= settled
    };
    for (&(granularity, at), &tally) in totals {
        if keep(granularity, at) {
            by_window.insert(at, WindowState { granularity, start: at, tally, rows: Vec::new() });
        }
    }
    for row in rows {
        if !keep(row.granularity, row.window_start) {
            continue;
        }
        by_window
            .entry(row.window_start)
            .or_insert_with(|| WindowState {
                granularity: row.granularity,
                start: row.window_start,
                tally: Quantity::ZERO,
                rows: Vec::new(),
            })
            .rows
            .push(row);
    }
    by_window.into_values().collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const HOUR: i64 = 3_600;

    fn q(text: &str) -> Quantity {
        text.parse().unwrap()
    }

    fn policy() -> Policy {
        Policy {
            now: DateTime::from_timestamp(100 * HOUR, 0).unwrap(),
            cancel_within: TimeDelta::hours(23),
            refusal_retry: TimeDelta::hours(1),
        }
    }

    fn stream(unit: &str) -> Stream {
        Stream {
            key: ("acme".to_owned(), "compute_seconds".to_owned()),
            customer: "cus_1".to_owned(),
            event_name: "compute_seconds".to_owned(),
            head: Head::new(q(unit)),
            windows: Vec::new(),
        }
    }

    fn window(start: i64, tally: &str, rows: Vec<Row>) -> WindowState {
        WindowState { granularity: Window::Hour, start, tally: q(tally), rows }
    }

    fn rows(decision: Decision) -> Vec<Row> {
        match decision {
            Decision::Rows(rows) => rows,
            other => panic!("expected rows, got {other:?}"),
        }
    }

    /// Decides every window in turn as a run does, every row taken.
    fn run(stream: &Stream, windows: &[WindowState]) -> (Vec<(Kind, i64)>, Head) {
        let mut head = stream.head.clone();
        let mut sent = Vec::new();
        for window in windows {
            if let Decision::Rows(rows) = decide(stream, &head, window, &policy()) {
                for row in rows {
                    head = head.with(&row);
                    sent.push((row.kind, row.value));
                }
            }
        }
        (sent, head)
    }

    #[test]
    fn whole_units_follow_the_floor_of_the_running_total() {
        let stream = stream("1");
        let windows: Vec<WindowState> = ["0.4", "0.4", "0.4", "2.9"]
            .iter()
            .enumerate()
            .map(|(n, t)| window(n as i64 * HOUR, t, Vec::new()))
            .collect();
        let (sent, head) = run(&stream, &windows);
        assert_eq!(sent, vec![(Kind::Carry, 0), (Kind::Carry, 0), (Kind::Event, 1), (Kind::Event, 3)]);
        assert_eq!((head.value_total, head.carried()), (4, q("0.1")));
    }

    #[test]
    fn a_unit_bundles_amounts_and_never_rounds_up() {
        let stream = stream("1000");
        let windows: Vec<WindowState> = ["999", "1", "1999.999999999"]
            .iter()
            .enumerate()
            .map(|(n, t)| window(n as i64 * HOUR, t, Vec::new()))
            .collect();
        let (sent, head) = run(&stream, &windows);
        assert_eq!(sent, vec![(Kind::Carry, 0), (Kind::Event, 1), (Kind::Event, 1)]);
        assert_eq!(head.carried(), q("999.999999999"));
    }

    fn sent(stream: &Stream, start: i64, value: i64, created_hours_ago: i64) -> Row {
        let mut row =
            rows(decide(stream, &stream.head, &window(start, &value.to_string(), Vec::new()), &policy())).remove(0);
        row.state = State::Acknowledged;
        row.created_at = policy().now - TimeDelta::hours(created_hours_ago);
        row
    }

    #[test]
    fn over_billing_cancels_recent_events_and_resends_the_window() {
        let mut stream = stream("1");
        let event = sent(&stream, 0, 100, 2);
        stream.head = stream.head.with(&event);
        let corrected = rows(decide(&stream, &stream.head, &window(0, "70", vec![event.clone()]), &policy()));
        let shape: Vec<(Kind, i64, Option<&str>)> =
            corrected.iter().map(|r| (r.kind, r.value, r.cancels.as_deref())).collect();
        assert_eq!(shape, vec![(Kind::Cancel, -100, Some(event.identifier.as_str())), (Kind::Event, 70, None)]);
        let head = corrected.iter().fold(stream.head.clone(), |head, row| head.with(row));
        assert_eq!((head.value_total, head.exact_total), (70, q("70")));
    }

    #[test]
    fn over_billing_past_the_cancellation_window_sends_a_negative_event() {
        let mut stream = stream("1");
        let event = sent(&stream, 0, 100, 30);
        stream.head = stream.head.with(&event);
        let corrected = rows(decide(&stream, &stream.head, &window(0, "70", vec![event]), &policy()));
        let shape: Vec<(Kind, i64)> = corrected.iter().map(|r| (r.kind, r.value)).collect();
        assert_eq!(shape, vec![(Kind::Event, -30)]);
    }

    #[test]
    fn a_recent_refusal_waits_unless_the_customer_changed() {
        let mut stream = stream("1");
        let mut refused = rows(decide(&stream, &stream.head, &window(0, "5", Vec::new()), &policy())).remove(0);
        refused.state = State::Refused;
        refused.refused_at = Some(policy().now - TimeDelta::minutes(5));
        refused.refusal_code = Some("resource_missing".to_owned());
        let waiting = window(0, "5", vec![refused]);
        assert_eq!(
            decide(&stream, &stream.head, &waiting, &policy()),
            Decision::Blocked { code: "resource_missing".to_owned() }
        );
        stream.customer = "cus_2".to_owned();
        let retried = rows(decide(&stream, &stream.head, &waiting, &policy()));
        assert_eq!((retried[0].seq, retried[0].value, retried[0].stripe_customer_id.as_str()), (1, 5, "cus_2"));
    }

    #[test]
    fn a_day_keeps_the_granularity_of_its_first_row() {
        let stream = stream("1");
        let mut day_row = rows(decide(&stream, &stream.head, &window(0, "5", Vec::new()), &policy())).remove(0);
        day_row.granularity = Window::Day;
        let totals = HashMap::from([
            ((Window::Hour, 2 * HOUR), q("1")),
            ((Window::Day, 0), q("6")),
            ((Window::Hour, 24 * HOUR + HOUR), q("2")),
            ((Window::Day, 24 * HOUR), q("2")),
        ]);
        let arranged = windows(Window::Hour, &totals, vec![day_row], (0, 100 * HOUR));
        let shape: Vec<(Window, i64)> = arranged.iter().map(|w| (w.granularity, w.start)).collect();
        assert_eq!(shape, vec![(Window::Day, 0), (Window::Hour, 25 * HOUR)]);
    }
}
