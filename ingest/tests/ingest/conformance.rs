//! The OpenAPI document matches what ingest does: schemathesis (installed by the local stack,
//! `TALLY_TEST_SCHEMATHESIS`) generates requests from `/openapi.yaml`, valid and invalid, and
//! checks every answer's status, content type and body against the document, and that invalid
//! requests are refused. Left out: "schema-valid requests are accepted" — an event's validity
//! also depends on what no schema can say (its age against the clock, the configured metric
//! catalogue), and ingest answers those with a documented 422.

use std::process::Command;

use crate::helpers::TestApp;

async fn fuzz(app: &TestApp, key: &str) {
    let program = std::env::var("TALLY_TEST_SCHEMATHESIS").expect(
        "TALLY_TEST_SCHEMATHESIS is unset: run deploy/local/up.sh (it installs schemathesis) and source .stack/env",
    );
    let spec = app.url("/openapi.yaml");
    let header = format!("Authorization: Bearer {key}");
    let run = tokio::task::spawn_blocking(move || {
        Command::new(program)
            .args(["run", &spec, "--header", &header, "--max-examples", "60", "--seed", "7", "--no-color"])
            .args(["--exclude-checks", "positive_data_acceptance"])
            .output()
    })
    .await
    .unwrap()
    .expect("schemathesis runs");
    let report = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "schemathesis found answers that differ from the document:\n{report}");
    assert!(report.contains("passed"), "schemathesis ran cases:\n{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_answer_outside_the_openapi_document() {
    let app = TestApp::spawn().await;
    fuzz(&app, &app.acme_key.clone()).await;
    fuzz(&app, &app.admin_key.clone()).await;
    app.stop().await;
}
