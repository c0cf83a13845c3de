//! The OpenAPI document matches what the query service does: schemathesis generates requests
//! from `/openapi.yaml` (every endpoint, valid and invalid) and checks each answer's status,
//! content type and body against it, with an analyst key and with a tenant key. Left out:
//! "schema-valid requests are accepted" — a query's validity also depends on what no schema can
//! say (`from` before `to`, window starts in the zone, the metric catalogue), answered with a
//! documented 400 that names the parameter. `/v1/tenants/{id}/limits` asks the enforcer, which
//! these tests do not run: `e2e/tests/console.rs` fuzzes it with a real one.

#![allow(clippy::unwrap_used, clippy::print_stderr)]

mod world;

use world::World;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_answer_outside_the_openapi_document() {
    let world = World::create().await;
    let spec = format!("{}/openapi.yaml", world.base);
    for key in [&world.analyst, &world.acme] {
        let options = ["--exclude-path", "/v1/tenants/{id}/limits"];
        tally_testkit::schemathesis::fuzz(&spec, key, &["positive_data_acceptance"], &options).await;
    }
    world.drop().await;
}
