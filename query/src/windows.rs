//! Windows in an IANA time zone, and which UTC rollups can answer them exactly.
//!
//! Rollups are kept per UTC minute, hour, day and month. A window in another zone is the union of
//! whole rollup windows of the coarsest granularity on whose boundaries every one of the query's
//! window boundaries falls: hour windows in `Asia/Kolkata` (+5:30) or `Asia/Kathmandu` (+5:45) are
//! read from minutes, day windows in `America/New_York` from hours (across DST too: its days start
//! at 04:00 or 05:00 UTC), UTC days from days. That is what makes a zone's answer exact.

use chrono::{DateTime, Datelike, Duration, LocalResult, Months, NaiveDate, NaiveDateTime, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use tally_kit::rollups::Granularity;

/// The window size a query asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    Minute,
    Hour,
    Day,
    Month,
}

impl Window {
    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "minute" => Some(Window::Minute),
            "hour" => Some(Window::Hour),
            "day" => Some(Window::Day),
            "month" => Some(Window::Month),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Window::Minute => "minute",
            Window::Hour => "hour",
            Window::Day => "day",
            Window::Month => "month",
        }
    }
}

/// The first instant at or after a local wall time (a time inside a DST gap starts when the gap
/// ends; an ambiguous one, at its earlier instant).
fn resolve(zone: Tz, local: NaiveDateTime) -> DateTime<Utc> {
    let mut probe = local;
    for _ in 0..=24 * 60 {
        match zone.from_local_datetime(&probe) {
            LocalResult::Single(at) => return at.with_timezone(&Utc),
            LocalResult::Ambiguous(earlier, _) => return earlier.with_timezone(&Utc),
            LocalResult::None => probe += Duration::minutes(1),
        }
    }
    Utc.from_utc_datetime(&local)
}

fn midnight(date: NaiveDate) -> NaiveDateTime {
    date.and_hms_opt(0, 0, 0).unwrap_or_default()
}

/// The first instant of `date` in `zone` (midnight, or when a DST gap at midnight ends).
pub fn day_start(zone: Tz, date: NaiveDate) -> DateTime<Utc> {
    resolve(zone, midnight(date))
}

/// The start of the `window` holding `at`, in `zone`.
pub fn floor(window: Window, zone: Tz, at: DateTime<Utc>) -> DateTime<Utc> {
    let local = at.with_timezone(&zone).naive_local();
    let truncated = match window {
        Window::Minute => local.with_second(0).and_then(|t| t.with_nanosecond(0)),
        Window::Hour => local.with_minute(0).and_then(|t| t.with_second(0)).and_then(|t| t.with_nanosecond(0)),
        Window::Day => Some(midnight(local.date())),
        Window::Month => local.date().with_day(1).map(midnight),
    }
    .unwrap_or(local);
    match zone.from_local_datetime(&truncated) {
        // A repeated hour (DST ends): the occurrence this instant lies in.
        LocalResult::Ambiguous(earlier, later) => {
            let later = later.with_timezone(&Utc);
            if later <= at { later } else { earlier.with_timezone(&Utc) }
        }
        LocalResult::Single(start) => start.with_timezone(&Utc),
        LocalResult::None => resolve(zone, truncated),
    }
}

/// The start of the window after the one starting at `start`.
pub fn next(window: Window, zone: Tz, start: DateTime<Utc>) -> DateTime<Utc> {
    match window {
        // Minutes and hours are counted in absolute time, so a repeated local hour is two windows.
        Window::Minute => floor(window, zone, start + Duration::minutes(1)),
        Window::Hour => floor(window, zone, start + Duration::hours(1)),
        Window::Day => {
            let date = start.with_timezone(&zone).date_naive();
            resolve(zone, midnight(date.succ_opt().unwrap_or(date)))
        }
        Window::Month => {
            let date = start.with_timezone(&zone).date_naive();
            let first = date.with_day(1).unwrap_or(date);
            resolve(zone, midnight(first.checked_add_months(Months::new(1)).unwrap_or(first)))
        }
    }
}

/// Every window start in `[from, to)`, if there are at most `max` of them (else `None`).
pub fn starts(
    window: Window,
    zone: Tz,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    max: usize,
) -> Option<Vec<DateTime<Utc>>> {
    let mut starts = Vec::new();
    let mut at = from;
    while at < to {
        if starts.len() == max {
            return None;
        }
        starts.push(at);
        at = next(window, zone, at);
    }
    Some(starts)
}

fn aligned(granularity: Granularity, at: DateTime<Utc>) -> bool {
    granularity.window_start(at) == at
}

/// The coarsest UTC rollup granularity on whose windows every boundary falls; `None` when not even
/// whole minutes do (a zone with an offset in seconds).
pub fn source_granularity(boundaries: impl IntoIterator<Item = DateTime<Utc>> + Clone) -> Option<Granularity> {
    [Granularity::Month, Granularity::Day, Granularity::Hour, Granularity::Minute]
        .into_iter()
        .find(|granularity| boundaries.clone().into_iter().all(|at| aligned(*granularity, at)))
}

/// `at` written in `zone` (RFC 3339 with the zone's offset then).
pub fn show(zone: Tz, at: DateTime<Utc>) -> String {
    at.with_timezone(&zone).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    #[test]
    fn half_and_three_quarter_hour_zones_read_minutes() {
        let kolkata: Tz = "Asia/Kolkata".parse().unwrap();
        let hours = starts(Window::Hour, kolkata, at("2026-11-30T18:30:00Z"), at("2026-11-30T21:30:00Z"), 10).unwrap();
        assert_eq!(hours.len(), 3);
        assert_eq!(
            source_granularity(hours.iter().copied().chain([at("2026-11-30T21:30:00Z")])),
            Some(Granularity::Minute)
        );
        let kathmandu: Tz = "Asia/Kathmandu".parse().unwrap();
        assert_eq!(floor(Window::Hour, kathmandu, at("2026-11-30T07:20:00Z")), at("2026-11-30T07:15:00Z"));
        assert_eq!(floor(Window::Day, kathmandu, at("2026-11-30T07:20:00Z")), at("2026-11-29T18:15:00Z"));
    }

    #[test]
    fn new_york_days_follow_dst_and_read_hours() {
        let new_york: Tz = "America/New_York".parse().unwrap();
        let days = starts(Window::Day, new_york, at("2026-10-31T04:00:00Z"), at("2026-11-03T05:00:00Z"), 10).unwrap();
        assert_eq!(days, vec![at("2026-10-31T04:00:00Z"), at("2026-11-01T04:00:00Z"), at("2026-11-02T05:00:00Z")]);
        assert_eq!(source_granularity(days.iter().copied()), Some(Granularity::Hour));
        // The repeated hour 01:00-02:00 is two windows.
        let hours = starts(Window::Hour, new_york, at("2026-11-01T04:00:00Z"), at("2026-11-01T08:00:00Z"), 10).unwrap();
        assert_eq!(hours.len(), 4);
        assert_eq!(floor(Window::Hour, new_york, at("2026-11-01T06:30:00Z")), at("2026-11-01T06:00:00Z"));
        assert_eq!(floor(Window::Hour, new_york, at("2026-11-01T05:30:00Z")), at("2026-11-01T05:00:00Z"));
        // Spring forward: a 23-hour day.
        assert_eq!(next(Window::Day, new_york, at("2026-03-08T05:00:00Z")), at("2026-03-09T04:00:00Z"));
    }

    #[test]
    fn utc_windows_read_their_own_granularity() {
        let utc: Tz = "UTC".parse().unwrap();
        let months = starts(Window::Month, utc, at("2026-01-01T00:00:00Z"), at("2026-04-01T00:00:00Z"), 10).unwrap();
        assert_eq!(months.len(), 3);
        assert_eq!(source_granularity(months), Some(Granularity::Month));
        assert!(starts(Window::Minute, utc, at("2026-01-01T00:00:00Z"), at("2026-01-02T00:00:00Z"), 100).is_none());
    }
}
