//! The deployment artefacts say what the services do. `docker-compose.yaml` and every manifest in
//! `deploy/kubernetes`: each Tally container's environment loads as valid config for every role
//! (a misspelt key or section is refused), its health checks and probes ask `/livez` or `/readyz`
//! on the port its role listens on; the Kubernetes objects a platform team relies on are there
//! (PodDisruptionBudgets, autoscalers, the aggregator's stable instance ids, the enforcer's
//! NetworkPolicy, a ServiceMonitor per service). The alert rules pass `promtool check rules` and
//! their unit tests, and every dashboard panel has a query.

#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize as _;
use serde_yaml::Value;
use tally_kit::config::load;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every YAML document of a file, with `<<` merge keys applied.
fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml::Deserializer::from_str(&text)
        .map(|document| {
            let mut value = Value::deserialize(document).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            value.apply_merge().unwrap();
            value
        })
        .filter(|value| !value.is_null())
        .collect()
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => panic!("not a scalar: {other:?}"),
    }
}

/// What every role's config says of `env`: each role's listen ports (HTTP, and the enforcer's gRPC).
fn load_every_role(env: &HashMap<String, String>, context: &str) -> BTreeMap<&'static str, Vec<u16>> {
    fn as_role<T: serde::de::DeserializeOwned>(env: &HashMap<String, String>, context: &str, role: &str) -> T {
        load(None, env).unwrap_or_else(|error| panic!("{context}: as {role} config: {error}"))
    }
    let ingest: tally_ingest::IngestConfig = as_role(env, context, "ingest");
    let aggregator: tally_aggregator::AggregatorConfig = as_role(env, context, "aggregator");
    let enforcer: tally_enforcer::EnforcerConfig = as_role(env, context, "enforcer");
    let query: tally_query::QueryConfig = as_role(env, context, "query");
    let collector: tally_collector::CollectorConfig = as_role(env, context, "collector");
    let billing: tally_billing_sync::BillingConfig = as_role(env, context, "billing-sync");
    let _: tally_admin::AdminConfig = as_role(env, context, "admin");
    let mut enforcer_ports = vec![enforcer.enforcer.listen.port()];
    enforcer_ports.extend(enforcer.enforcer.grpc_listen.map(|addr| addr.port()));
    BTreeMap::from([
        ("ingest", vec![ingest.http.listen.port()]),
        ("aggregator", vec![aggregator.aggregator.listen.port()]),
        ("enforcer", enforcer_ports),
        ("query", vec![query.query.listen.port()]),
        ("collector", vec![collector.collector.listen.port()]),
        ("billing-sync", vec![billing.billing.listen.port()]),
    ])
}

/// `${NAME:-default}` as compose expands it when NAME is unset.
fn compose_default(value: &str) -> String {
    match value.strip_prefix("${").and_then(|rest| rest.strip_suffix('}')) {
        Some(inner) => inner.split_once(":-").map_or(String::new(), |(_, default)| default.to_owned()),
        None => value.to_owned(),
    }
}

const OPERATIONS_PATHS: [&str; 2] = ["/livez", "/readyz"];

#[test]
fn compose_environments_are_valid_config_and_health_checks_ask_real_paths() {
    let compose = &documents(&repo().join("docker-compose.yaml"))[0];
    let mut roles_seen = Vec::new();
    for (name, service) in compose["services"].as_mapping().unwrap() {
        let name = text(name);
        if service["image"].as_str() != Some("tally:latest") {
            continue;
        }
        let env: HashMap<String, String> = service["environment"]
            .as_mapping()
            .unwrap_or_else(|| panic!("{name}: no environment"))
            .iter()
            .map(|(k, v)| (text(k), compose_default(&text(v))))
            .collect();
        let ports = load_every_role(&env, &format!("docker-compose.yaml service {name}"));
        let command: Vec<String> = service["command"].as_sequence().unwrap().iter().map(text).collect();
        if command[0] == "admin" {
            assert_eq!(command[1], "setup", "{name}");
            continue;
        }
        let role = command[0].as_str();
        let listen = ports.get(role).unwrap_or_else(|| panic!("{name}: {role} is not a role"));
        assert!(
            service["depends_on"]["setup"]["condition"].as_str() == Some("service_completed_successfully"),
            "{name} starts after setup"
        );
        let check: Vec<String> = service["healthcheck"]["test"].as_sequence().unwrap().iter().map(text).collect();
        assert_eq!(check[..3], ["CMD", "tally", "probe"], "{name}: the image's own probe");
        let url = check[3].strip_prefix("http://127.0.0.1:").unwrap_or_else(|| panic!("{name}: {}", check[3]));
        let (port, path) = url.split_once('/').unwrap();
        assert_eq!(port.parse::<u16>().unwrap(), listen[0], "{name}: the health check asks the port {role} listens on");
        assert!(OPERATIONS_PATHS.contains(&format!("/{path}").as_str()), "{name}: /{path}");
        assert!(env.values().all(|v| !v.starts_with("${")), "{name}");
        roles_seen.push(role.to_owned());
    }
    roles_seen.sort();
    assert_eq!(roles_seen, ["aggregator", "billing-sync", "collector", "enforcer", "ingest", "query"]);
}

/// The manifests of `deploy/kubernetes/base`, by kind and name.
fn manifests() -> BTreeMap<(String, String), Value> {
    let base = repo().join("deploy/kubernetes/base");
    let kustomization = &documents(&base.join("kustomization.yaml"))[0];
    let mut objects = BTreeMap::new();
    for file in kustomization["resources"].as_sequence().unwrap() {
        for object in documents(&base.join(text(file))) {
            let key = (text(&object["kind"]), text(&object["metadata"]["name"]));
            assert!(objects.insert(key.clone(), object).is_none(), "{key:?} twice");
        }
    }
    objects
}

fn string_map(value: &Value) -> HashMap<String, String> {
    value.as_mapping().map(|m| m.iter().map(|(k, v)| (text(k), text(v))).collect()).unwrap_or_default()
}

/// A container's environment as the pod sees it (`fieldRef: metadata.name` as pod 0's name).
fn container_env(objects: &BTreeMap<(String, String), Value>, container: &Value, pod: &str) -> HashMap<String, String> {
    let mut env = HashMap::new();
    for source in container["envFrom"].as_sequence().unwrap() {
        let (kind, field, name) = match (&source["configMapRef"], &source["secretRef"]) {
            (Value::Mapping(r), _) => ("ConfigMap", "data", text(&r["name"])),
            (_, Value::Mapping(r)) => ("Secret", "stringData", text(&r["name"])),
            _ => panic!("envFrom {source:?}"),
        };
        let object =
            objects.get(&(kind.to_owned(), name.clone())).unwrap_or_else(|| panic!("{kind} {name} is missing"));
        env.extend(string_map(&object[field]));
    }
    for var in container["env"].as_sequence().into_iter().flatten() {
        let value = match (&var["value"], &var["valueFrom"]["fieldRef"]["fieldPath"]) {
            (Value::String(value), _) => value.clone(),
            (_, Value::String(path)) if path == "metadata.name" => pod.to_owned(),
            other => panic!("env {var:?}: {other:?}"),
        };
        env.insert(text(&var["name"]), value);
    }
    env
}

#[test]
fn kubernetes_manifests_are_valid_config_with_probes_budgets_and_monitors() {
    let objects = manifests();
    let mut roles_seen = Vec::new();
    for ((kind, name), object) in objects.iter().filter(|((kind, _), _)| kind == "Deployment" || kind == "StatefulSet")
    {
        let pod = &object["spec"]["template"]["spec"];
        assert_eq!(pod["securityContext"]["runAsNonRoot"], Value::Bool(true), "{name}");
        let container = &pod["containers"][0];
        let role = text(&container["args"][0]);
        let env = container_env(&objects, container, &format!("{name}-0"));
        let ports = load_every_role(&env, &format!("{kind} {name}"));
        let listen = &ports[role.as_str()];
        let named: BTreeMap<String, u16> = container["ports"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|p| (text(&p["name"]), text(&p["containerPort"]).parse().unwrap()))
            .collect();
        let (mut declared, mut listening) = (named.values().copied().collect::<Vec<_>>(), listen.clone());
        declared.sort_unstable();
        listening.sort_unstable();
        assert_eq!(declared, listening, "{name}: container ports are the role's listen ports");
        for (probe, path) in [("livenessProbe", "/livez"), ("readinessProbe", "/readyz")] {
            let get = &container[probe]["httpGet"];
            assert_eq!(get["path"].as_str(), Some(path), "{name} {probe}");
            assert_eq!(named.get(&text(&get["port"])), Some(&listen[0]), "{name} {probe}: the HTTP listen port");
        }
        for bound in ["requests", "limits"] {
            for resource in ["cpu", "memory"] {
                assert!(!container["resources"][bound][resource].is_null(), "{name}: resources.{bound}.{resource}");
            }
        }
        assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], Value::Bool(true), "{name}");
        assert_eq!(name, &format!("tally-{role}"));
        // A Service of the same name, and its ServiceMonitor on the port named http.
        let service = &objects[&("Service".to_owned(), name.clone())];
        assert!(service["spec"]["ports"].as_sequence().unwrap().iter().any(|p| p["name"].as_str() == Some("http")));
        let monitor = &objects[&("ServiceMonitor".to_owned(), name.clone())];
        assert_eq!(monitor["spec"]["endpoints"][0]["port"].as_str(), Some("http"), "{name}");
        assert_eq!(monitor["spec"]["endpoints"][0]["path"].as_str(), Some("/metrics"), "{name}");
        if role == "aggregator" {
            assert_eq!(kind, "StatefulSet", "the aggregator keeps a stable instance id");
            assert_eq!(env["TALLY_AGGREGATOR__INSTANCE_ID"], "tally-aggregator-0");
        }
        if ["ingest", "enforcer", "query"].contains(&role.as_str()) {
            let budget = &objects[&("PodDisruptionBudget".to_owned(), name.clone())];
            assert_eq!(budget["spec"]["selector"]["matchLabels"], object["spec"]["selector"]["matchLabels"], "{name}");
            let scaler = &objects[&("HorizontalPodAutoscaler".to_owned(), name.clone())];
            assert_eq!(scaler["spec"]["scaleTargetRef"]["name"].as_str(), Some(name.as_str()));
        }
        roles_seen.push(role);
    }
    roles_seen.sort();
    assert_eq!(roles_seen, ["aggregator", "billing-sync", "collector", "enforcer", "ingest", "query"]);

    // Only gateways, the query service and monitoring reach the enforcer.
    let policy = &objects[&("NetworkPolicy".to_owned(), "tally-enforcer".to_owned())];
    assert_eq!(policy["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/name"].as_str(), Some("tally-enforcer"));
    let sources: Vec<&Value> = policy["spec"]["ingress"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|rule| rule["from"].as_sequence().unwrap())
        .collect();
    assert!(!sources.is_empty() && sources.iter().all(|from| from.as_mapping().is_some_and(|m| !m.is_empty())));
    let setup = &objects[&("Job".to_owned(), "tally-setup".to_owned())]["spec"]["template"]["spec"]["containers"][0];
    load_every_role(&container_env(&objects, setup, "tally-setup"), "Job tally-setup");

    // The overlays patch objects the base has.
    for name in ["production", "clickhouse-cluster"] {
        let overlay = repo().join("deploy/kubernetes/overlays").join(name);
        for patch in documents(&overlay.join("kustomization.yaml"))[0]["patches"].as_sequence().unwrap() {
            for object in documents(&overlay.join(text(&patch["path"]))) {
                let key = (text(&object["kind"]), text(&object["metadata"]["name"]));
                assert!(objects.contains_key(&key), "{name} patches {key:?}, which the base lacks");
            }
        }
    }
}

#[test]
fn the_cluster_overlay_configures_two_replicated_shards_for_every_role() {
    let objects = manifests();
    let overlay = repo().join("deploy/kubernetes/overlays/clickhouse-cluster");
    let mut env = string_map(&objects[&("ConfigMap".to_owned(), "tally-config".to_owned())]["data"]);
    env.extend(string_map(&documents(&overlay.join("clickhouse.yaml"))[0]["data"]));
    load_every_role(&env, "the clickhouse-cluster overlay");
    let aggregator: tally_aggregator::AggregatorConfig = load(None, &env).unwrap();
    let layout = aggregator.clickhouse.layout().unwrap().expect("a cluster");
    assert_eq!(layout.cluster, "tally");
    assert!(layout.replication.is_some());
    let shards = tally_kit::shards::clients(&aggregator.clickhouse);
    assert_eq!(shards.iter().map(Vec::len).collect::<Vec<_>>(), vec![2, 2], "2 shards x 2 replicas");
}

fn promtool(args: &[&str]) {
    let program = std::env::var("TALLY_TEST_PROMTOOL").unwrap_or_else(|_| "promtool".to_owned());
    let output = Command::new(&program)
        .args(args)
        .current_dir(repo().join("deploy/prometheus"))
        .output()
        .unwrap_or_else(|e| panic!("{program} (apt-get install prometheus; up.sh installs it): {e}"));
    let report = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "promtool {args:?}:\n{report}");
    assert!(report.contains("SUCCESS"), "{report}");
}

#[test]
fn alert_rules_pass_promtool_and_their_unit_tests() {
    promtool(&["check", "rules", "tally-rules.yaml"]);
    promtool(&["test", "rules", "tests/tally-rules.test.yaml"]);
}

#[test]
fn every_dashboard_panel_has_a_query_on_the_templated_datasource() {
    for name in ["tally-pipeline.json", "tally-enforcer.json"] {
        let path = repo().join("deploy/grafana").join(name);
        let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let panels = dashboard["panels"].as_array().unwrap();
        assert!(panels.len() >= 8, "{name}");
        for panel in panels {
            let targets = panel["targets"].as_array().unwrap();
            assert!(!targets.is_empty(), "{name}: {}", panel["title"]);
            for target in targets {
                assert!(target["expr"].as_str().is_some_and(|e| e.contains("tally_") || e.contains("process_")));
                assert_eq!(target["datasource"]["uid"], "${datasource}");
            }
        }
    }
}
