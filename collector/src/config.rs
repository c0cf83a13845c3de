//! The collector's configuration: the platform database, where gauge events go, and `[collector]`.

use std::net::SocketAddr;

use serde::Deserialize;
use tally_kit::Secret;
use tally_kit::config::{KafkaConfig, PostgresConfig, TelemetryConfig};
use tally_schemas::Topics;

/// Other services' sections are tolerated (one file or environment may configure several).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct CollectorConfig {
    pub collector: CollectorSection,
    /// The platform database holding the tenant registry.
    pub postgres: PostgresConfig,
    pub kafka: KafkaConfig,
    pub topics: Topics,
    pub telemetry: TelemetryConfig,
}

impl tally_kit::service::ServiceConfig for CollectorConfig {
    fn telemetry(&self) -> &TelemetryConfig {
        &self.telemetry
    }
}

/// Where the measured gauges are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EmitVia {
    /// Straight to the usage topic (`[kafka]`, `[topics]`).
    Kafka,
    /// To ingest's HTTP API (`ingest_url`, `ingest_api_key`: a service key).
    Http,
}

/// A shared table whose size is split between tenants by their share of its rows.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SharedTable {
    /// `table` or `schema.table`.
    pub table: String,
    /// The column holding the tenant id.
    #[serde(default = "tenant_id")]
    pub tenant_column: String,
}

fn tenant_id() -> String {
    "tenant_id".to_owned()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CollectorSection {
    /// `/livez`, `/readyz` and `/metrics`.
    pub listen: SocketAddr,
    /// Seconds between sweeps; also the sample slot of the emitted events' ids.
    pub interval_secs: u64,
    /// Tenants measured at once (and so the most tenant connections open at once).
    pub concurrency: usize,
    pub connect_timeout_ms: u64,
    /// Per statement, set on every tenant connection.
    pub statement_timeout_ms: u64,
    pub emit: EmitVia,
    pub ingest_url: String,
    pub ingest_api_key: Secret,
    /// A read-only monitoring role used for every tenant database instead of the credentials in
    /// `database_url` (empty: those).
    pub monitor_user: String,
    pub monitor_password: Secret,
    /// The database of `schema` and `shared` tenants whose registry row has no `database_url`.
    pub shared_database_url: Secret,
    /// Active users in a tenant's own database.
    pub users_sql_database: String,
    /// Active users in a tenant's schema; `{schema}` is replaced by the quoted schema name.
    pub users_sql_schema: String,
    /// Active users of a tenant in shared tables; `$1` is the tenant id.
    pub users_sql_shared: String,
    /// The shared tables whose size `shared` tenants are charged a share of (an estimate).
    pub shared_tables: Vec<SharedTable>,
}

impl Default for CollectorSection {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8085)),
            interval_secs: 300,
            concurrency: 16,
            connect_timeout_ms: 3_000,
            statement_timeout_ms: 5_000,
            emit: EmitVia::Kafka,
            ingest_url: "http://127.0.0.1:8080".to_owned(),
            ingest_api_key: Secret::new(""),
            monitor_user: String::new(),
            monitor_password: Secret::new(""),
            shared_database_url: Secret::new(""),
            users_sql_database: "SELECT count(*) FROM users WHERE active".to_owned(),
            users_sql_schema: "SELECT count(*) FROM {schema}.users WHERE active".to_owned(),
            users_sql_shared: "SELECT count(*) FROM users WHERE active AND tenant_id = $1".to_owned(),
            shared_tables: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::io::Write as _;

    use super::*;

    #[test]
    fn loads_from_a_file_and_the_environment_beside_other_services_sections() {
        let mut file = tempfile_in_target();
        writeln!(
            file.1,
            "[collector]\ninterval_secs = 60\nshared_tables = [{{ table = \"public.documents\" }}]\n\
             [enforcer]\nusage_refresh_ms = 100"
        )
        .unwrap();
        let env = HashMap::from([
            ("TALLY_COLLECTOR__CONCURRENCY".to_owned(), "4".to_owned()),
            ("TALLY_COLLECTOR__EMIT".to_owned(), "http".to_owned()),
            ("TALLY_CLICKHOUSE__URL".to_owned(), "http://127.0.0.1:8123".to_owned()),
        ]);
        let config: CollectorConfig = tally_kit::config::load(Some(&file.0), &env).unwrap();
        let section = &config.collector;
        assert_eq!((section.interval_secs, section.concurrency, section.emit), (60, 4, EmitVia::Http));
        assert_eq!(
            section.shared_tables,
            vec![SharedTable { table: "public.documents".to_owned(), tenant_column: "tenant_id".to_owned() }]
        );
        let typo = HashMap::from([("TALLY_COLLECTOR__INTERVAL".to_owned(), "5".to_owned())]);
        let refused = tally_kit::config::load::<CollectorConfig>(None, &typo);
        assert!(refused.is_err(), "an unknown [collector] key is refused");
        let _ = std::fs::remove_file(&file.0);
    }

    fn tempfile_in_target() -> (std::path::PathBuf, std::fs::File) {
        let path = std::env::temp_dir().join(format!("tally-collector-config-{}.toml", std::process::id()));
        let file = std::fs::File::create(&path).unwrap();
        (path, file)
    }
}
