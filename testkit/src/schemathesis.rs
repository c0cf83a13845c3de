//! Runs schemathesis (installed by the local stack, `TALLY_TEST_SCHEMATHESIS`) against a running
//! service's OpenAPI document: it generates requests, valid and invalid, and checks every answer's
//! status, content type and body against the document, and that invalid requests are refused.

use std::process::Command;

/// Fuzzes the service whose document is at `spec_url` with `key`, skipping `excluded` checks,
/// with `options` for schemathesis (e.g. `--exclude-path`); panics with schemathesis's report
/// when an answer differs from the document.
pub async fn fuzz(spec_url: &str, key: &str, excluded: &[&str], options: &[&str]) {
    let program = std::env::var("TALLY_TEST_SCHEMATHESIS").expect(
        "TALLY_TEST_SCHEMATHESIS is unset: run deploy/local/up.sh (it installs schemathesis) and source .stack/env",
    );
    let (spec, header) = (spec_url.to_owned(), format!("Authorization: Bearer {key}"));
    let excluded = excluded.join(",");
    let options: Vec<String> = options.iter().map(|o| (*o).to_owned()).collect();
    // schemathesis keeps a cache where it runs: in the target directory, not the source tree.
    let workdir = crate::browser::artefact_dir().join("schemathesis");
    std::fs::create_dir_all(&workdir).expect("a directory for schemathesis");
    let run = tokio::task::spawn_blocking(move || {
        let mut command = Command::new(program);
        command.current_dir(workdir).args([
            "run",
            &spec,
            "--header",
            &header,
            "--max-examples",
            "60",
            "--seed",
            "7",
            "--no-color",
        ]);
        if !excluded.is_empty() {
            command.args(["--exclude-checks", &excluded]);
        }
        command.args(&options);
        command.output()
    })
    .await
    .expect("the schemathesis task")
    .expect("schemathesis runs");
    let report = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "schemathesis found answers that differ from the document:\n{report}");
    assert!(report.contains("passed"), "schemathesis ran cases:\n{report}");
}
