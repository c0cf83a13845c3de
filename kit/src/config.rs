//! Layered configuration: defaults in code, then an optional TOML file, then the environment.
//!
//! Environment overrides are `TALLY_<SECTION>__<KEY>` (a double underscore between levels, e.g.
//! `TALLY_KAFKA__BROKERS`, `TALLY_POSTGRES__MAX_CONNECTIONS`). Variables without a double
//! underscore (such as the local stack's `TALLY_KAFKA_PORT`) are not configuration and are ignored.
//! The loader takes the environment as a map so precedence is testable. A binary ignores the
//! sections other services read (one file may configure them all) but refuses unknown keys inside
//! its own sections and section names no Tally service knows.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::DeserializeOwned;

const ENV_PREFIX: &str = "TALLY_";

/// Every top-level section any Tally binary reads. One file or environment may configure several
/// services, so a binary tolerates the others' sections but refuses a name that is none of these
/// (a typo).
pub const KNOWN_SECTIONS: &[&str] = &[
    "auth",
    "clickhouse",
    "enforcer",
    "http",
    "kafka",
    "metrics",
    "postgres",
    "producer",
    "stripe",
    "telemetry",
    "tiers",
    "topics",
    "aggregator",
    "billing",
    "collector",
    "query",
];
const ENV_SEPARATOR: &str = "__";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("configuration is invalid: {0} (check the file and TALLY_*__* environment variables)")]
    Invalid(String),
}

/// Loads `T` from its defaults, the file (if any) and the environment, in that order.
pub fn load<T: DeserializeOwned>(file: Option<&Path>, env: &HashMap<String, String>) -> Result<T, ConfigError> {
    let mut builder = ::config::Config::builder();
    if let Some(path) = file {
        if !path.is_file() {
            return Err(ConfigError::File {
                path: path.to_owned(),
                message: "does not exist or is not a file".to_owned(),
            });
        }
        builder = builder.add_source(::config::File::from(path).format(::config::FileFormat::Toml));
    }
    let overrides: HashMap<String, String> = env
        .iter()
        .filter(|(key, _)| key.strip_prefix(ENV_PREFIX).is_some_and(|rest| rest.contains(ENV_SEPARATOR)))
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect();
    builder = builder.add_source(
        ::config::Environment::with_prefix(ENV_PREFIX.trim_end_matches('_'))
            .prefix_separator("_")
            .separator(ENV_SEPARATOR)
            .source(Some(overrides)),
    );
    let merged = builder.build().map_err(|e| match (file, &e) {
        (Some(path), ::config::ConfigError::FileParse { .. } | ::config::ConfigError::Foreign(_)) => {
            ConfigError::File { path: path.to_owned(), message: e.to_string() }
        }
        _ => ConfigError::Invalid(e.to_string()),
    })?;
    let sections: HashMap<String, serde::de::IgnoredAny> =
        merged.clone().try_deserialize().map_err(|e| ConfigError::Invalid(e.to_string()))?;
    if let Some(unknown) = sections.keys().find(|key| !KNOWN_SECTIONS.contains(&key.as_str())) {
        return Err(ConfigError::Invalid(format!(
            "unknown section `{unknown}`; known sections: {}",
            KNOWN_SECTIONS.join(", ")
        )));
    }
    merged.try_deserialize().map_err(|e| ConfigError::Invalid(e.to_string()))
}

/// Loads from the process environment.
pub fn load_from_process<T: DeserializeOwned>(file: Option<&Path>) -> Result<T, ConfigError> {
    load(file, &std::env::vars().collect())
}

/// A secret (password, URL with credentials, API key): never shown by `Debug` or `Display`.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself: pass it to the client that needs it, never to a log.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// `scheme://user:password@host/…` with the password masked, for logs.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "[unparsable url]".to_owned();
    };
    let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
    let shown_authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{user}:***@{host}")
        }
        None => authority.to_owned(),
    };
    let path = path.split('?').next().unwrap_or_default();
    format!("{scheme}://{shown_authority}/{path}")
}

/// The Kafka connection (`[kafka]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// Comma-separated `host:port` list.
    pub brokers: String,
    pub client_id: String,
    /// Extra librdkafka properties (security.protocol, sasl.*, …), passed through as they are.
    pub properties: BTreeMap<String, String>,
    /// Upper bound on any single admin or metadata call.
    pub timeout_ms: u64,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".to_owned(),
            client_id: "tally".to_owned(),
            properties: BTreeMap::new(),
            timeout_ms: 10_000,
        }
    }
}

/// The ClickHouse connection (`[clickhouse]`), over HTTP.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClickHouseConfig {
    /// The server readers query; on a cluster, any node (they all hold the Distributed tables).
    pub url: String,
    pub database: String,
    pub user: String,
    pub password: Secret,
    /// The cluster's name in the servers' `<remote_servers>`; empty for one server (the default).
    pub cluster: String,
    /// Each shard's nodes, in `<remote_servers>` order: a TOML list with one entry per shard,
    /// its replicas' URLs separated by commas (or one string, shards separated by `;`).
    pub shards: ShardList,
    /// `Replicated*MergeTree` tables (needs Keeper and at least one replica per shard).
    pub replicated: bool,
    /// A replicated table's Keeper path; `{table}` is the table, the rest server macros.
    pub replica_path: String,
    /// A replica's name in Keeper, normally the server's `{replica}` macro.
    pub replica_name: String,
    /// Apply the DDL once, `ON CLUSTER`, through the first node (the server's distributed DDL
    /// queue, which needs Keeper) rather than on every node in turn.
    pub on_cluster: bool,
}

impl Default for ClickHouseConfig {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:8123".to_owned(),
            database: "tally".to_owned(),
            user: "default".to_owned(),
            password: Secret::default(),
            cluster: String::new(),
            shards: ShardList::default(),
            replicated: false,
            replica_path: "/clickhouse/tables/{shard}/{database}/{table}".to_owned(),
            replica_name: "{replica}".to_owned(),
            on_cluster: false,
        }
    }
}

/// The nodes of a cluster's shards: `shards[i]` holds shard `i + 1`'s replica URLs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShardList(pub Vec<Vec<String>>);

impl<'de> Deserialize<'de> for ShardList {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            List(Vec<String>),
            Text(String),
        }
        let entries: Vec<String> = match Raw::deserialize(deserializer)? {
            Raw::List(entries) => entries,
            Raw::Text(text) => text.split(';').map(str::to_owned).collect(),
        };
        let shards = entries
            .iter()
            .map(|shard| shard.split(',').map(str::trim).filter(|url| !url.is_empty()).map(str::to_owned).collect())
            .filter(|replicas: &Vec<String>| !replicas.is_empty())
            .collect();
        Ok(Self(shards))
    }
}

/// The PostgreSQL connection (`[postgres]`): the platform database, which holds Tally's schema too.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PostgresConfig {
    pub url: Secret,
    pub max_connections: u32,
    pub acquire_timeout_ms: u64,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        Self {
            url: Secret::new("postgres://postgres:postgres@127.0.0.1:5432/tally"),
            max_connections: 10,
            acquire_timeout_ms: 5_000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Json,
    Text,
}

/// Logging (`[telemetry]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    pub format: LogFormat,
    /// An `EnvFilter` directive, e.g. `info,tally_ingest=debug`. `RUST_LOG` wins when set.
    pub filter: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self { format: LogFormat::Json, filter: "info".to_owned() }
    }
}

/// The Kafka producer (`[producer]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProducerConfig {
    /// How long the producer keeps trying to deliver a message before giving up on it.
    pub message_timeout_ms: u64,
    /// Bound on messages waiting for the broker; past it, sends are refused as overload.
    pub max_queue_messages: u32,
    /// How long the producer waits to fill a batch.
    pub linger_ms: u32,
    /// `none`, `gzip`, `snappy` or `lz4`.
    pub compression: String,
    /// How long shutdown waits for in-flight messages.
    pub flush_timeout_ms: u64,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        Self {
            message_timeout_ms: 10_000,
            max_queue_messages: 200_000,
            linger_ms: 5,
            compression: "lz4".to_owned(),
            flush_timeout_ms: 15_000,
        }
    }
}
