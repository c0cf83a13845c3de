//! The query API against the real ClickHouse and PostgreSQL: answers equal an independent
//! computation from the raw events for every window size in UTC, +5:30, +5:45 and New York across
//! both DST changes; group by an attribute; CSV equals JSON; tenant scoping; 400s that name the
//! parameter.

#![allow(clippy::unwrap_used, clippy::print_stderr)]

mod world;

use world::{Event, World};

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Datelike, FixedOffset, NaiveDateTime, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use serde_json::Value;
use tally_schemas::Quantity;

/// A window's label computed without the service's window code: the local calendar position
/// (and the UTC offset, which tells a repeated DST hour apart).
fn label(window: &str, at: DateTime<FixedOffset>) -> String {
    let local: NaiveDateTime = at.naive_local();
    match window {
        "month" => format!("{}-{:02}", local.year(), local.month()),
        "day" => local.date().to_string(),
        "hour" => format!("{} {:02} {}", local.date(), local.hour(), at.offset()),
        "minute" => at.with_timezone(&Utc).format("%Y-%m-%dT%H:%M").to_string(),
        _ => "total".to_owned(),
    }
}

#[derive(Debug, Default, PartialEq, Eq)]
struct Expected {
    count: u64,
    sum: i128,
    max: i128,
    latest: (DateTime<Utc>, String, i128),
    users: BTreeSet<String>,
}

fn expected(
    events: &[Event],
    zone: Tz,
    window: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    key: impl Fn(&Event) -> String,
) -> BTreeMap<String, Expected> {
    let mut map: BTreeMap<String, Expected> = BTreeMap::new();
    for e in events.iter().filter(|e| e.at >= from && e.at < to) {
        let local = e.at.with_timezone(&zone).fixed_offset();
        let entry = map.entry(format!("{}|{}|{}", label(window, local), e.metric, key(e))).or_default();
        entry.count += 1;
        entry.sum += e.units;
        entry.max = entry.max.max(e.units);
        if (e.at, &e.id) > (entry.latest.0, &entry.latest.1) {
            entry.latest = (e.at, e.id.clone(), e.units);
        }
        entry.users.insert(e.user.clone());
    }
    map
}

fn check_rows(
    rows: &[Value],
    expected: &BTreeMap<String, Expected>,
    window: &str,
    key: impl Fn(&Value) -> String,
    context: &str,
) {
    let mut seen = BTreeSet::new();
    for row in rows {
        let start = DateTime::parse_from_rfc3339(row["window_start"].as_str().unwrap()).unwrap();
        let name = format!("{}|{}|{}", label(window, start), row["metric"].as_str().unwrap(), key(row));
        let want = expected.get(&name).unwrap_or_else(|| panic!("{context}: unexpected row {row}"));
        assert_eq!(row["count"], want.count, "{context} {name}");
        let decimal = |units: i128| Value::String(Quantity::from_units(units).to_string());
        match row["kind"].as_str().unwrap() {
            "counter" => assert_eq!(row["sum"], decimal(want.sum), "{context} {name}"),
            "gauge" => {
                assert_eq!(row["latest"], decimal(want.latest.2), "{context} {name}");
                assert_eq!(row["max"], decimal(want.max), "{context} {name}");
                let at = DateTime::parse_from_rfc3339(row["latest_at"].as_str().unwrap()).unwrap();
                assert_eq!(at, want.latest.0, "{context} {name}");
            }
            _ => assert_eq!(row["distinct"], want.users.len(), "{context} {name}"),
        }
        seen.insert(name);
    }
    let missing: Vec<_> = expected.keys().filter(|k| !seen.contains(*k)).collect();
    assert!(missing.is_empty(), "{context}: rows missing for {missing:?}");
}

fn local(zone: Tz, y: i32, m: u32, d: u32) -> DateTime<Utc> {
    zone.with_ymd_and_hms(y, m, d, 0, 0, 0).single().unwrap().with_timezone(&Utc)
}

fn rfc(at: DateTime<Utc>) -> String {
    at.to_rfc3339()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_window_in_every_zone_equals_the_raw_events() {
    let world = World::create().await;
    for zone_name in ["UTC", "Asia/Kolkata", "Asia/Kathmandu", "America/New_York"] {
        let zone: Tz = zone_name.parse().unwrap();
        for (window, from, to) in [
            ("minute", local(zone, 2026, 11, 1), local(zone, 2026, 11, 2)),
            ("hour", local(zone, 2026, 10, 31), local(zone, 2026, 11, 3)),
            ("hour", local(zone, 2026, 3, 7), local(zone, 2026, 3, 10)),
            ("day", local(zone, 2026, 10, 30), local(zone, 2026, 11, 4)),
            ("day", local(zone, 2026, 3, 6), local(zone, 2026, 3, 11)),
            ("month", local(zone, 2026, 3, 1), local(zone, 2026, 12, 1)),
            ("none", local(zone, 2026, 3, 7), local(zone, 2026, 11, 2)),
        ] {
            let (from_text, to_text) = (rfc(from), rfc(to));
            let params = [
                ("from", from_text.as_str()),
                ("to", to_text.as_str()),
                ("window", window),
                ("time_zone", zone_name),
                ("group_by", "tenant"),
            ];
            let rows = world.rows(&params).await;
            let want = expected(&world.events, zone, window, from, to, |e| e.tenant.to_owned());
            let context = format!("{zone_name} {window} {from_text}..{to_text}");
            check_rows(&rows, &want, window, |row| row["tenant_id"].as_str().unwrap().to_owned(), &context);
            eprintln!("{context}: {} rows equal", rows.len());
        }
    }
    // Grouped by an attribute (read from the raw events), and filtered by one.
    let zone: Tz = "Asia/Kolkata".parse().unwrap();
    let (from, to) = (local(zone, 2026, 10, 30), local(zone, 2026, 11, 4));
    let (from_text, to_text) = (rfc(from), rfc(to));
    let base =
        [("from", from_text.as_str()), ("to", to_text.as_str()), ("window", "day"), ("time_zone", "Asia/Kolkata")];
    let mut params = base.to_vec();
    params.push(("group_by", "region"));
    let rows = world.rows(&params).await;
    let want = expected(&world.events, zone, "day", from, to, |e| e.region.unwrap_or("-").to_owned());
    check_rows(&rows, &want, "day", |row| row["group"]["region"].as_str().unwrap_or("-").to_owned(), "group_by region");
    let mut params = base.to_vec();
    params.extend([("filter[region]", "eu"), ("metric", "api_calls")]);
    let rows = world.rows(&params).await;
    let eu: Vec<Event> =
        world.events.iter().filter(|e| e.region == Some("eu") && e.metric == "api_calls").cloned().collect();
    check_rows(
        &rows,
        &expected(&eu, zone, "day", from, to, |_| String::new()),
        "day",
        |_| String::new(),
        "filter region=eu",
    );

    // CSV holds what JSON holds.
    let mut params = base.to_vec();
    params.extend([("group_by", "tenant"), ("group_by", "region")]);
    let json_rows = world.rows(&params).await;
    params.push(("format", "csv"));
    let (status, csv) = world.get(Some(&world.analyst), &params).await;
    assert_eq!(status, 200, "{csv}");
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let csv_rows: Vec<Vec<&str>> = lines.map(|line| line.split(',').collect()).collect();
    assert_eq!(csv_rows.len(), json_rows.len());
    for (line, row) in csv_rows.iter().zip(&json_rows) {
        for (column, cell) in header.iter().zip(line) {
            let json = match *column {
                "region" => row["group"]["region"].as_str().unwrap_or_default().to_owned(),
                other => match &row[other] {
                    Value::String(s) => s.clone(),
                    Value::Null => String::new(),
                    v => v.to_string(),
                },
            };
            assert_eq!(*cell, json, "{column} of {row}");
        }
    }
    world.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_key_reads_only_its_tenant_and_bad_parameters_are_named() {
    let world = World::create().await;
    let range = [("from", "2026-11-01T00:00:00Z"), ("to", "2026-11-02T00:00:00Z"), ("window", "hour")];
    let with = |extra: &[(&'static str, &'static str)]| {
        let mut params = range.to_vec();
        params.extend_from_slice(extra);
        params
    };
    // A tenant key: its own tenant by default, and never another (filter, group-by, CSV, POST).
    let (status, body) = world.get(Some(&world.acme), &with(&[("group_by", "tenant")])).await;
    assert_eq!(status, 200, "{body}");
    let rows: Value = serde_json::from_str(&body).unwrap();
    let tenants: BTreeSet<&str> =
        rows["rows"].as_array().unwrap().iter().map(|r| r["tenant_id"].as_str().unwrap()).collect();
    assert_eq!(tenants, BTreeSet::from(["acme"]));
    for extra in [
        vec![("tenant", "globex")],
        vec![("tenant", "acme,globex")],
        vec![("tenant", "globex"), ("group_by", "tenant")],
        vec![("tenant", "globex"), ("format", "csv")],
        vec![("tenant", "globex"), ("group_by", "region")],
    ] {
        let (status, body) = world.get(Some(&world.acme), &with(&extra)).await;
        assert_eq!(status, 403, "{extra:?}: {body}");
        assert!(body.contains("globex"), "{body}");
    }
    let posted = world
        .http
        .post(format!("{}/v1/usage", world.base))
        .bearer_auth(&world.acme)
        .json(
            &serde_json::json!({ "from": "2026-11-01T00:00:00Z", "to": "2026-11-02T00:00:00Z", "tenant": ["globex"] }),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status().as_u16(), 403);
    assert_eq!(world.get(Some(&world.service), &range).await.0, 403, "a service key reads no usage");
    assert_eq!(world.get(None, &range).await.0, 401);
    assert_eq!(world.get(Some("tly_notakey_000"), &range).await.0, 401);
    // The analyst sees both tenants.
    let rows = world.rows(&with(&[("group_by", "tenant")])).await;
    let tenants: BTreeSet<&str> = rows.iter().map(|r| r["tenant_id"].as_str().unwrap()).collect();
    assert_eq!(tenants, BTreeSet::from(["acme", "globex"]));

    // Malformed parameters: a 400 naming the parameter.
    for (params, parameter) in [
        (vec![("from", "yesterday"), ("to", "2026-11-02T00:00:00Z")], "from"),
        (vec![("from", "2026-11-01T00:00:00Z")], "to"),
        (with(&[("window", "week")]), "window"),
        (with(&[("time_zone", "Mars/Olympus_Mons")]), "time_zone"),
        (
            vec![
                ("from", "2026-11-01T00:00:00Z"),
                ("to", "2026-11-02T00:00:00Z"),
                ("window", "hour"),
                ("time_zone", "Asia/Kolkata"),
            ],
            "from",
        ),
        (with(&[("metric", "bananas")]), "metric"),
        (with(&[("tenant", "not a tenant!")]), "tenant"),
        (with(&[("group_by", "bad key!")]), "group_by"),
        (with(&[("filter[region]", "")]), "filter[region]"),
        (with(&[("limit", "0")]), "limit"),
        (with(&[("limit", "many")]), "limit"),
        (with(&[("order_by", "sideways")]), "order_by"),
        (with(&[("format", "xml")]), "format"),
        (with(&[("timezone", "UTC")]), "timezone"),
        (vec![("from", "2026-11-02T00:00:00Z"), ("to", "2026-11-01T00:00:00Z")], "to"),
        (vec![("from", "2020-01-01T00:00:00Z"), ("to", "2026-01-01T00:00:00Z")], "to"),
        (vec![("from", "2026-01-01T00:00:00Z"), ("to", "2026-03-01T00:00:00Z"), ("window", "minute")], "window"),
    ] {
        let (status, body) = world.get(Some(&world.analyst), &params).await;
        assert_eq!(status, 400, "{params:?}: {body}");
        let answer: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(answer["parameter"], parameter, "{params:?}: {body}");
    }
    // The Rust client: the same answer as the HTTP API, and refusals that name the parameter.
    let client = tally_client::query::UsageClient::new(&world.base, &world.analyst);
    let mut query = tally_client::query::UsageQuery {
        from: "2026-11-01T00:00:00Z".into(),
        to: "2026-11-02T00:00:00Z".into(),
        window: Some("hour".into()),
        group_by: vec!["tenant".into()],
        ..Default::default()
    };
    let answer = client.query(&query).await.unwrap();
    let direct = world.rows(&with(&[("group_by", "tenant")])).await;
    assert_eq!(answer.rows.len(), direct.len());
    for (typed, row) in answer.rows.iter().zip(&direct) {
        assert_eq!(Some(typed.window_start.as_str()), row["window_start"].as_str());
        assert_eq!((typed.sum.as_deref(), typed.count), (row["sum"].as_str(), row["count"].as_u64().unwrap()));
    }
    // Dates and zero-filled windows: a row for each of the day's 24 hours per tenant.
    let filled = tally_client::query::UsageQuery {
        from: "2026-11-01".into(),
        to: "2026-11-02".into(),
        fill: Some("zero".into()),
        tenant: vec!["acme".into(), "globex".into()],
        metric: vec!["api_calls".into()],
        ..query.clone()
    };
    let answer = client.query(&filled).await.unwrap();
    assert_eq!(answer.rows.len(), 24 * 2);
    assert!(answer.rows.iter().any(|row| row.count == 0) && answer.rows.iter().any(|row| row.count > 0));
    query.time_zone = Some("Nowhere/Atlantis".into());
    match client.query(&query).await {
        Err(tally_client::query::QueryError::Refused { status: 400, parameter, .. }) => {
            assert_eq!(parameter.as_deref(), Some("time_zone"));
        }
        other => panic!("expected a 400 naming time_zone, got {other:?}"),
    }

    // Top tenants by calls: an asked-for limit cuts, ordered.
    let rows = world
        .rows(&[
            ("from", "2026-10-01T00:00:00Z"),
            ("to", "2026-12-01T00:00:00Z"),
            ("metric", "api_calls"),
            ("group_by", "tenant"),
            ("order_by", "-sum"),
            ("limit", "1"),
        ])
        .await;
    assert_eq!(rows.len(), 1);
    world.drop().await;
}
