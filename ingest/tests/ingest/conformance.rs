//! The OpenAPI document matches what ingest does: schemathesis (installed by the local stack,
//! `TALLY_TEST_SCHEMATHESIS`) generates requests from `/openapi.yaml`, valid and invalid, and
//! checks every answer's status, content type and body against the document, and that invalid
//! requests are refused. Left out: "schema-valid requests are accepted" — an event's validity
//! also depends on what no schema can say (its age against the clock, the configured metric
//! catalogue), and ingest answers those with a documented 422.

use crate::helpers::TestApp;

async fn fuzz(app: &TestApp, key: &str) {
    tally_testkit::schemathesis::fuzz(&app.url("/openapi.yaml"), key, &["positive_data_acceptance"], &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_answer_outside_the_openapi_document() {
    let app = TestApp::spawn().await;
    fuzz(&app, &app.acme_key.clone()).await;
    fuzz(&app, &app.admin_key.clone()).await;
    app.stop().await;
}
