//! The query API against the real ClickHouse and PostgreSQL: answers equal an independent
//! computation from the raw events for every window size in UTC, +5:30, +5:45 and New York across
//! both DST changes; group by an attribute; CSV equals JSON; tenant scoping; 400s that name the
//! parameter.

#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Datelike, Duration, FixedOffset, NaiveDateTime, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use clickhouse::Row;
use serde::Serialize;
use serde_json::Value;
use tally_kit::auth::{self, Scope};
use tally_kit::rollups::{Granularity, RollupRow};
use tally_query::{QueryConfig, QueryService};
use tally_schemas::{Quantity, TenantId};
use tally_testkit::{TestClickHouse, TestPostgres, catalogue_with_unique};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Row, Serialize)]
struct EventRow {
    tenant_id: String,
    event_id: String,
    metric: String,
    value: i128,
    timestamp: i64,
    source: String,
    attributes: Vec<(String, String)>,
    ingested_at: i64,
    kafka_partition: u32,
    kafka_offset: u64,
}

#[derive(Debug, Clone)]
struct Event {
    tenant: &'static str,
    id: String,
    metric: &'static str,
    units: i128,
    at: DateTime<Utc>,
    region: Option<&'static str>,
    user: String,
}

/// Events every 13 minutes around both 2026 New York DST changes, rotating tenant, metric,
/// region and user; values with fractions.
fn events() -> Vec<Event> {
    let mut events = Vec::new();
    for (start, end) in
        [("2026-03-06T00:00:00Z", "2026-03-11T00:00:00Z"), ("2026-10-30T00:00:00Z", "2026-11-04T00:00:00Z")]
    {
        let (mut at, end): (DateTime<Utc>, DateTime<Utc>) = (start.parse().unwrap(), end.parse().unwrap());
        while at < end {
            let n = events.len();
            events.push(Event {
                tenant: ["acme", "globex"][n % 2],
                id: format!("e-{n}"),
                metric: ["api_calls", "storage_bytes", "distinct_users"][(n / 2) % 3],
                units: i128::try_from(n % 17 + 1).unwrap() * 250_000_000,
                at: at + Duration::seconds(i64::try_from(n % 50).unwrap()),
                region: [Some("eu"), Some("us"), None][(n / 6) % 3],
                user: format!("u{}", n % 7),
            });
            at += Duration::minutes(13);
        }
    }
    events
}

fn rollups(events: &[Event]) -> Vec<RollupRow> {
    type Key = (Granularity, DateTime<Utc>, &'static str, &'static str);
    type Partial = (u64, i128, i128, (i64, String, i128), BTreeSet<String>);
    let mut windows: BTreeMap<Key, Partial> = BTreeMap::new();
    for e in events {
        for g in Granularity::ALL {
            let latest = (e.at.timestamp_nanos_opt().unwrap(), e.id.clone(), e.units);
            let w = windows.entry((g, g.window_start(e.at), e.tenant, e.metric)).or_insert((
                0,
                0,
                e.units,
                latest.clone(),
                BTreeSet::new(),
            ));
            w.0 += 1;
            w.1 += e.units;
            w.2 = w.2.max(e.units);
            if (latest.0, &latest.1) > (w.3.0, &w.3.1) {
                w.3 = latest;
            }
            if e.metric == "distinct_users" {
                w.4.insert(e.user.clone());
            }
        }
    }
    windows
        .into_iter()
        .map(|((g, start, tenant, metric), (events, sum, max, latest, distinct))| RollupRow {
            granularity: g.as_str(),
            window_start: u32::try_from(start.timestamp()).unwrap(),
            tenant_id: tenant.to_owned(),
            metric: metric.to_owned(),
            events,
            value_sum: sum,
            value_max: max,
            latest,
            distinct_values: distinct.into_iter().collect(),
        })
        .collect()
}

struct World {
    ch: TestClickHouse,
    pg: TestPostgres,
    base: String,
    analyst: String,
    acme: String,
    service: String,
    http: reqwest::Client,
    stopping: CancellationToken,
    events: Vec<Event>,
}

impl World {
    async fn create() -> Self {
        let (ch, pg) = (TestClickHouse::create().await, TestPostgres::create().await);
        let events = events();
        let mut insert = ch.client.insert::<EventRow>("usage_events_base").await.unwrap();
        for (offset, e) in events.iter().enumerate() {
            let mut attributes = vec![("user_id".to_owned(), e.user.clone())];
            attributes.extend(e.region.map(|r| ("region".to_owned(), r.to_owned())));
            let row = EventRow {
                tenant_id: e.tenant.to_owned(),
                event_id: e.id.clone(),
                metric: e.metric.to_owned(),
                value: e.units,
                timestamp: e.at.timestamp_nanos_opt().unwrap(),
                source: "test".to_owned(),
                attributes,
                ingested_at: e.at.timestamp_millis(),
                kafka_partition: 0,
                kafka_offset: offset as u64,
            };
            insert.write(&row).await.unwrap();
        }
        insert.end().await.unwrap();
        let mut insert = ch.client.insert::<RollupRow>("usage_rollups_base").await.unwrap();
        for row in rollups(&events) {
            insert.write(&row).await.unwrap();
        }
        insert.end().await.unwrap();
        for tenant in ["acme", "globex"] {
            sqlx::query("INSERT INTO tenant (id, name) VALUES ($1, $1)").bind(tenant).execute(&pg.pool).await.unwrap();
        }
        let key = async |scope, tenant: Option<&str>| {
            let tenant = tenant.map(|t| TenantId::parse(t).unwrap());
            auth::create_key(&pg.pool, scope, tenant.as_ref(), "test").await.unwrap().token
        };
        let (analyst, acme, service) =
            (key(Scope::Analyst, None).await, key(Scope::Tenant, Some("acme")).await, key(Scope::Service, None).await);
        let mut config = QueryConfig {
            clickhouse: ch.config.clone(),
            postgres: pg.config.clone(),
            metrics: catalogue_with_unique(),
            ..QueryConfig::default()
        };
        config.query.listen = "127.0.0.1:0".parse().unwrap();
        let stopping = CancellationToken::new();
        let service_handle = QueryService::build(config, stopping.clone()).await.unwrap();
        let base = format!("http://{}", service_handle.local_addr());
        tokio::spawn(service_handle.run_until_stopped());
        Self { ch, pg, base, analyst, acme, service, http: reqwest::Client::new(), stopping, events }
    }

    async fn get(&self, key: Option<&str>, params: &[(&str, &str)]) -> (u16, String) {
        let query = form_urlencoded::Serializer::new(String::new()).extend_pairs(params).finish();
        let mut request = self.http.get(format!("{}/v1/usage?{query}", self.base));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        let answer = request.send().await.unwrap();
        (answer.status().as_u16(), answer.text().await.unwrap())
    }

    async fn rows(&self, params: &[(&str, &str)]) -> Vec<Value> {
        let (status, body) = self.get(Some(&self.analyst), params).await;
        assert_eq!(status, 200, "{params:?}: {body}");
        let answer: Value = serde_json::from_str(&body).unwrap();
        answer["rows"].as_array().unwrap().clone()
    }

    async fn drop(self) {
        self.stopping.cancel();
        self.ch.drop_database().await;
        self.pg.drop_database().await;
    }
}

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
