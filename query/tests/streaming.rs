//! CSV answers longer than `[query] stream_after_rows` stream from ClickHouse's cursor: the file
//! is the same as a whole answer's, an asked-for limit cuts it, and one that runs past the
//! service's row bound is broken off (a failed transfer, never a short file).

#![allow(clippy::unwrap_used, clippy::print_stderr)]

mod world;

use serde_json::Value;
use world::World;

/// Every minute with events of every metric and both tenants over the world's first five days:
/// ~550 rows.
const MINUTES: [(&str, &str); 5] = [
    ("from", "2026-03-06T00:00:00Z"),
    ("to", "2026-03-11T00:00:00Z"),
    ("window", "minute"),
    ("group_by", "tenant"),
    ("format", "csv"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_csv_streams_the_same_rows_as_json_and_a_bound_breaks_it_off() {
    let world = World::create_with(|config| {
        config.query.stream_after_rows = 50;
        config.query.max_rows = 400;
    })
    .await;
    let mut json_params = MINUTES[..4].to_vec();
    json_params.push(("limit", "400"));
    let rows = world.rows(&json_params).await;
    assert_eq!(rows.len(), 400, "the world has more than 400 such minutes");

    // Cut by an asked-for limit, streamed: the same 400 rows as the JSON answer, in order.
    let mut params = MINUTES.to_vec();
    params.push(("limit", "400"));
    let (status, csv) = world.get(Some(&world.analyst), &params).await;
    assert_eq!(status, 200);
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 1 + 400);
    assert_eq!(lines[0], "window_start,window_end,tenant_id,metric,kind,count,sum,latest,latest_at,max,distinct");
    for (line, row) in lines[1..].iter().zip(&rows) {
        let fields: Vec<&str> = line.split(',').collect();
        let expected = [&row["window_start"], &row["tenant_id"], &row["metric"], &row["count"]]
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned));
        assert_eq!([fields[0], fields[2], fields[3], fields[5]].map(str::to_owned), expected, "{line}");
    }

    // Without a limit the answer runs past max_rows once streaming has begun: the transfer fails.
    let query = form_urlencoded::Serializer::new(String::new()).extend_pairs(MINUTES).finish();
    let request = world.http.get(format!("{}/v1/usage?{query}", world.base)).bearer_auth(&world.analyst);
    // Broken off mid-body: the headers may or may not have reached the client by then.
    let outcome = match request.send().await {
        Err(error) => Err(error),
        Ok(answer) => answer.text().await,
    };
    assert!(
        outcome.is_err(),
        "a broken-off answer is an error, not a short file: {:?}",
        outcome.map(|b| b.lines().count())
    );

    // A short answer is still whole, and its bound is still a 400.
    let (status, csv) = world.get(Some(&world.analyst), &[&MINUTES[..], &[("limit", "30")]].concat()).await;
    assert_eq!((status, csv.lines().count()), (200, 31));
    let mut days = MINUTES.to_vec();
    days[2] = ("window", "day");
    let (status, csv) = world.get(Some(&world.analyst), &days).await;
    assert_eq!((status, csv.lines().count()), (200, 1 + 30), "5 days × 2 tenants × 3 metrics: {csv}");
    let mut json_minutes = MINUTES[..4].to_vec();
    json_minutes.push(("format", "json"));
    let (status, body) = world.get(Some(&world.analyst), &json_minutes).await;
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!((status, body["parameter"].as_str()), (400, Some("limit")), "JSON answers are whole: {body}");
    world.drop().await;
}
