//! What the console asks besides `/v1/usage`'s basics, against the real ClickHouse and
//! PostgreSQL: zero-filled windows, dates as the starts of days in the query's zone, the tenant
//! list (scoped, paged, searched) and the limits endpoint's checks before the enforcer is asked.

#![allow(clippy::unwrap_used, clippy::print_stderr)]

mod world;

use serde_json::Value;
use world::World;

async fn answer(world: &World, key: Option<&str>, path: &str) -> (u16, Value) {
    let mut request = world.http.get(format!("{}{path}", world.base));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let answer = request.send().await.unwrap();
    let status = answer.status().as_u16();
    (status, answer.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_filled_windows_and_dates_in_the_zone() {
    let world = World::create().await;
    // 2026-03-09 and -10 hold events, 11 to 13 none (the world's events stop on the 11th at 00:00 UTC).
    let base = [("tenant", "acme"), ("from", "2026-03-09"), ("to", "2026-03-14"), ("window", "day")];
    for metric in ["api_calls", "storage_bytes"] {
        let mut params = base.to_vec();
        params.push(("metric", metric));
        let plain = world.rows(&params).await;
        params.push(("fill", "zero"));
        let filled = world.rows(&params).await;
        assert_eq!(plain.len(), 2, "{metric}: two days with events");
        assert_eq!(filled.len(), 5, "{metric}: one row per day, empty days included");
        let starts: Vec<&str> = filled.iter().map(|r| r["window_start"].as_str().unwrap()).collect();
        assert_eq!(
            starts,
            [
                "2026-03-09T00:00:00Z",
                "2026-03-10T00:00:00Z",
                "2026-03-11T00:00:00Z",
                "2026-03-12T00:00:00Z",
                "2026-03-13T00:00:00Z"
            ]
        );
        assert_eq!(filled[..2], plain[..], "{metric}: days with events are answered as without fill");
        for empty in &filled[2..] {
            assert_eq!(empty["count"], 0, "{empty}");
            match metric {
                "api_calls" => assert_eq!(empty["sum"], "0"),
                _ => assert!(empty["latest"].is_null() && empty["max"].is_null(), "a gauge without samples: {empty}"),
            }
        }
    }
    // CSV of a filled answer has the same rows.
    let (status, csv) = world
        .get(
            Some(&world.analyst),
            &[&base[..], &[("metric", "api_calls"), ("fill", "zero"), ("format", "csv")]].concat(),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(csv.lines().count(), 1 + 5, "{csv}");

    // A date is the start of that day in time_zone: the same answer as the explicit instant.
    for (zone, instant, next) in [
        ("Asia/Kathmandu", "2026-11-01T00:00:00+05:45", "2026-11-03T00:00:00+05:45"),
        ("America/New_York", "2026-11-01T00:00:00-04:00", "2026-11-03T00:00:00-05:00"),
    ] {
        let with = |from, to| {
            vec![("metric", "api_calls"), ("from", from), ("to", to), ("window", "hour"), ("time_zone", zone)]
        };
        let by_date = world.rows(&with("2026-11-01", "2026-11-03")).await;
        let by_instant = world.rows(&with(instant, next)).await;
        assert!(!by_date.is_empty(), "{zone}");
        assert_eq!(by_date, by_instant, "{zone}");
    }

    // fill's refusals name it.
    for (fill, order) in [("zero", Some("-sum")), ("ones", None)] {
        let mut params = base.to_vec();
        params.extend([("metric", "api_calls"), ("fill", fill)]);
        params.extend(order.map(|o| ("order_by", o)));
        let (status, body) = world.get(Some(&world.analyst), &params).await;
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!((status, body["parameter"].as_str()), (400, Some("fill")), "{body}");
    }
    world.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tenant_list_is_scoped_paged_and_searched() {
    let world = World::create().await;
    for (id, name) in [("initech", "Initech 100%"), ("umbrella", "Umbrella Corp"), ("hooli", "Hooli_XYZ")] {
        sqlx::query("INSERT INTO tenant (id, name, tier) VALUES ($1, $2, 'PREMIUM')")
            .bind(id)
            .bind(name)
            .execute(&world.pg.pool)
            .await
            .unwrap();
    }
    let ids = |answer: &Value| -> Vec<String> {
        answer["tenants"].as_array().unwrap().iter().map(|t| t["id"].as_str().unwrap().to_owned()).collect()
    };
    let (status, all) = answer(&world, Some(&world.analyst), "/v1/tenants").await;
    assert_eq!(status, 200, "{all}");
    assert_eq!(ids(&all), ["acme", "globex", "hooli", "initech", "umbrella"]);
    assert_eq!(all["scope"], "analyst");
    assert!(all["next_after"].is_null());
    assert_eq!(
        all["tenants"][3],
        serde_json::json!({"id": "initech", "name": "Initech 100%", "status": "active", "tier": "PREMIUM"})
    );

    let (_, first) = answer(&world, Some(&world.analyst), "/v1/tenants?limit=2").await;
    assert_eq!(
        (ids(&first), first["next_after"].as_str()),
        (vec!["acme".to_owned(), "globex".to_owned()], Some("globex"))
    );
    let (_, second) = answer(&world, Some(&world.analyst), "/v1/tenants?limit=2&after=globex").await;
    assert_eq!(ids(&second), ["hooli", "initech"]);
    let (_, last) = answer(&world, Some(&world.analyst), "/v1/tenants?limit=2&after=initech").await;
    assert_eq!((ids(&last), last["next_after"].is_null()), (vec!["umbrella".to_owned()], true));

    // Search matches id or name, case-insensitively, and LIKE's wildcards literally.
    for (search, found) in [
        ("GLO", vec!["globex"]),
        ("corp", vec!["umbrella"]),
        ("100%", vec!["initech"]),
        ("_x", vec!["hooli"]),
        ("%", vec!["initech"]),
        ("zzz", vec![]),
    ] {
        let path =
            format!("/v1/tenants?search={}", form_urlencoded::byte_serialize(search.as_bytes()).collect::<String>());
        let (status, body) = answer(&world, Some(&world.analyst), &path).await;
        assert_eq!((status, ids(&body)), (200, found.iter().map(|s| s.to_string()).collect()), "search {search:?}");
    }

    // A tenant key sees its own tenant only; a service key none; no key is 401; bad input is named.
    let (status, own) = answer(&world, Some(&world.acme), "/v1/tenants").await;
    assert_eq!((status, ids(&own), own["scope"].as_str()), (200, vec!["acme".to_owned()], Some("tenant")));
    let (status, own) = answer(&world, Some(&world.acme), "/v1/tenants?search=globex").await;
    assert_eq!((status, ids(&own)), (200, vec!["acme".to_owned()]), "search never widens a tenant key");
    assert_eq!(answer(&world, Some(&world.service), "/v1/tenants").await.0, 403);
    assert_eq!(answer(&world, None, "/v1/tenants").await.0, 401);
    assert_eq!(answer(&world, Some("tly_not_a_key"), "/v1/tenants").await.0, 401);
    for (path, parameter) in
        [("/v1/tenants?limit=0", "limit"), ("/v1/tenants?limit=x", "limit"), ("/v1/tenants?tier=PREMIUM", "tier")]
    {
        let (status, body) = answer(&world, Some(&world.analyst), path).await;
        assert_eq!((status, body["parameter"].as_str()), (400, Some(parameter)), "{path}: {body}");
    }

    // Limits: the caller is checked before the enforcer is asked (none is configured here).
    let (status, body) = answer(&world, Some(&world.acme), "/v1/tenants/globex/limits").await;
    assert_eq!((status, body["reason"].as_str()), (403, Some("forbidden")), "{body}");
    let (status, body) = answer(&world, Some(&world.analyst), "/v1/tenants/not%20a%20tenant/limits").await;
    assert_eq!((status, body["parameter"].as_str()), (400, Some("id")), "{body}");
    assert_eq!(answer(&world, None, "/v1/tenants/acme/limits").await.0, 401);
    let (status, body) = answer(&world, Some(&world.acme), "/v1/tenants/acme/limits").await;
    assert_eq!((status, body["reason"].as_str()), (503, Some("enforcer_not_configured")), "{body}");
    world.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_is_served_from_the_binary_with_a_strict_policy() {
    let world = World::create().await;
    let page = world.http.get(format!("{}/console", world.base)).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let policy = page.headers()["content-security-policy"].to_str().unwrap().to_owned();
    assert!(policy.contains("script-src 'self'") && policy.contains("frame-ancestors 'none'"), "{policy}");
    assert!(page.text().await.unwrap().contains("/console/app.js"));
    for asset in ["app.js", "chart.js", "limits.js", "format.js", "console.css"] {
        let answer = world.http.get(format!("{}/console/{asset}", world.base)).send().await.unwrap();
        assert_eq!(answer.status(), 200, "{asset}");
    }
    let root = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let answer = root.get(format!("{}/", world.base)).send().await.unwrap();
    assert_eq!((answer.status().as_u16(), answer.headers()["location"].to_str().unwrap()), (303, "/console"));
    world.drop().await;
}
