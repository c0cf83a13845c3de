//! Rate-limit state shared by every replica, in Redis (or Valkey, or a Redis Cluster).
//!
//! A check is one round trip: a Lua script ([`GCRA`]) runs GCRA on the tenant's single key
//! atomically inside Redis, timed by Redis's own clock (`TIME`). So replicas need not agree on the
//! time (a replica's clock minutes off changes nothing), and however many replicas ask for one
//! tenant, Redis serializes their checks on that key: together they admit at most
//! `rate × seconds + burst`, the same bound as one in-memory limiter. The key carries the quota,
//! so a changed quota starts with a full bucket (as the in-memory store does), and it expires once
//! the bucket would be full again, so an idle tenant costs Redis nothing.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::io::tcp::TcpSettings;
use redis::{ConnectionInfo, IntoConnectionInfo, RedisResult, Script};
use tally_schemas::tiers::RateQuota;

use crate::config::RateStoreConfig;
use crate::rate::RateOutcome;

/// GCRA over one key. KEYS[1]: the tenant's state (its theoretical arrival time, µs).
/// ARGV: emission interval (µs per cell), burst (cells), cost (cells).
/// Returns {allowed (0/1), remaining cells, retry after (µs), full again after (µs)}.
const GCRA: &str = r"
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local tolerance = interval * burst
local new_tat = tat + interval * cost
local wait = new_tat - now - tolerance
if wait > 0 then
  local remaining = math.floor((now + tolerance - tat) / interval + 1e-9)
  if remaining < 0 then remaining = 0 end
  return {0, remaining, math.ceil(wait), math.ceil(tat - now)}
end
redis.call('SET', KEYS[1], string.format('%.3f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
return {1, math.floor((now + tolerance - new_tat) / interval + 1e-9), 0, math.ceil(new_tat - now)}
";

#[derive(Clone)]
enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

/// A Redis rate check's answer: the outcome and when the bucket is full again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RedisOutcome {
    pub outcome: RateOutcome,
    pub full_after: Duration,
}

/// The shared rate store.
#[derive(Clone)]
pub struct RedisRate {
    connection: Connection,
    script: Script,
    prefix: String,
    timeout: Duration,
}

impl std::fmt::Debug for RedisRate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.connection {
            Connection::Single(_) => "single",
            Connection::Cluster(_) => "cluster",
        };
        f.debug_struct("RedisRate").field("connection", &kind).field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RedisRateError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
}

impl RedisRate {
    /// Connects lazily to one server (a first check or a lost connection connects again, so the
    /// enforcer starts and recovers while Redis is away); a comma-separated list is a cluster.
    pub async fn connect(config: &RateStoreConfig) -> Result<Self, String> {
        let timeout = Duration::from_millis(config.redis_timeout_ms.max(1));
        let urls: Vec<&str> = config.redis_url.expose().split(',').map(str::trim).filter(|u| !u.is_empty()).collect();
        let connection = match urls.as_slice() {
            [] => return Err("[enforcer.rate] redis_url is empty: name the Redis server".to_owned()),
            [url] => {
                let client =
                    redis::Client::open(no_delay(url)?).map_err(|e| format!("[enforcer.rate] redis_url: {e}"))?;
                let settings = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(timeout.max(Duration::from_millis(250))))
                    .set_response_timeout(Some(timeout))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_millis(500));
                Connection::Single(
                    ConnectionManager::new_lazy_with_config(client, settings)
                        .map_err(|e| format!("[enforcer.rate] redis: {e}"))?,
                )
            }
            nodes => {
                let nodes = nodes.iter().map(|url| no_delay(url)).collect::<Result<Vec<_>, _>>()?;
                let client = redis::cluster::ClusterClientBuilder::new(nodes)
                    .connection_timeout(timeout.max(Duration::from_millis(250)))
                    .response_timeout(timeout)
                    .retries(1)
                    .build()
                    .map_err(|e| format!("[enforcer.rate] redis_url (cluster): {e}"))?;
                Connection::Cluster(
                    client
                        .get_async_connection()
                        .await
                        .map_err(|e| format!("connecting to the Redis Cluster ([enforcer.rate] redis_url): {e}"))?,
                )
            }
        };
        Ok(Self { connection, script: Script::new(GCRA), prefix: config.key_prefix.clone(), timeout })
    }

    /// The tenant's key for `quota`.
    fn key(&self, tenant: &str, quota: RateQuota) -> String {
        format!("{}{tenant}:{}:{}", self.prefix, quota.per_second, quota.burst)
    }

    /// Takes `cost` cells of the tenant's bucket if they are free. The caller has already refused
    /// a cost above the burst.
    pub async fn check(&self, tenant: &str, quota: RateQuota, cost: u32) -> Result<RedisOutcome, RedisRateError> {
        let interval_us = 1_000_000.0 / f64::from(quota.per_second.get());
        let mut invocation = self.script.key(self.key(tenant, quota));
        invocation.arg(format!("{interval_us:.6}")).arg(quota.burst.get()).arg(cost);
        let answer: RedisResult<(u8, u64, u64, u64)> = match self.connection.clone() {
            Connection::Single(mut connection) => run(&invocation, &mut connection, self.timeout).await?,
            Connection::Cluster(mut connection) => run(&invocation, &mut connection, self.timeout).await?,
        };
        let (allowed, remaining, retry_after_us, full_after_us) = answer?;
        let outcome = if allowed == 1 {
            RateOutcome::Allowed { remaining: u32::try_from(remaining).unwrap_or(u32::MAX) }
        } else {
            RateOutcome::Limited { retry_after: Duration::from_micros(retry_after_us) }
        };
        Ok(RedisOutcome { outcome, full_after: Duration::from_micros(full_after_us) })
    }

    /// Whether Redis answers (for `/readyz`).
    pub async fn ping(&self) -> Result<(), String> {
        let command = redis::cmd("PING");
        let answer: RedisResult<String> = match self.connection.clone() {
            Connection::Single(mut connection) => command.query_async(&mut connection).await,
            Connection::Cluster(mut connection) => command.query_async(&mut connection).await,
        };
        answer.map(drop).map_err(|e| e.to_string())
    }
}

/// `url` with `TCP_NODELAY`: a check is one small request waiting for its answer, which Nagle's
/// algorithm would hold back (redis-rs leaves it off by default).
fn no_delay(url: &str) -> Result<ConnectionInfo, String> {
    let info = url.into_connection_info().map_err(|e| format!("[enforcer.rate] redis_url: {e}"))?;
    Ok(info.set_tcp_settings(TcpSettings::default().set_nodelay(true)))
}

/// Runs the script, bounded by `timeout`: dropping the future abandons only the answer (a check
/// that Redis ran anyway spent its cells, which errs on the side of the limit).
async fn run<C: ConnectionLike + Send>(
    invocation: &redis::ScriptInvocation<'_>,
    connection: &mut C,
    timeout: Duration,
) -> Result<RedisResult<(u8, u64, u64, u64)>, RedisRateError> {
    tokio::time::timeout(timeout, invocation.invoke_async(connection))
        .await
        .map_err(|_elapsed| RedisRateError::Timeout(timeout))
}
