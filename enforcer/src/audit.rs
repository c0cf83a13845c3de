//! Denials kept for auditing, and the storage alert that fires once each time a tenant crosses
//! 80 % of its cap.
//!
//! The audit log holds the most recent `capacity` denials of tenants in the registry, all tenants
//! together, each in a fixed-size entry (tenant ids are at most 64 bytes): its size in bytes is
//! bounded by its capacity, whatever callers send. Unknown tenants are counted in metrics only.

use std::collections::{HashSet, VecDeque};
use std::sync::{Mutex, PoisonError};

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use tally_schemas::ids::TENANT_ID_MAX_LEN;

use crate::decision::{Kind, Reason};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Denial {
    pub at: DateTime<Utc>,
    pub tenant_id: String,
    pub kind: Kind,
    pub reason: Reason,
}

/// A denial as stored: the tenant id inline, so every entry has the same size.
#[derive(Debug, Clone, Copy)]
struct Entry {
    at: DateTime<Utc>,
    tenant: [u8; TENANT_ID_MAX_LEN],
    tenant_len: u8,
    kind: Kind,
    reason: Reason,
}

impl Entry {
    fn tenant(&self) -> &str {
        std::str::from_utf8(&self.tenant[..usize::from(self.tenant_len)]).unwrap_or_default()
    }
}

#[derive(Debug)]
pub struct AuditLog {
    denials: Mutex<VecDeque<Entry>>,
    capacity: usize,
}

impl AuditLog {
    pub fn new(capacity: usize) -> Self {
        Self { denials: Mutex::new(VecDeque::with_capacity(capacity.min(4_096))), capacity }
    }

    /// Records a denial of a registered tenant (ids longer than a tenant id can be are ignored).
    pub fn record(&self, tenant: &str, kind: Kind, reason: Reason) {
        let Ok(tenant_len) = u8::try_from(tenant.len()) else { return };
        if tenant.len() > TENANT_ID_MAX_LEN || self.capacity == 0 {
            return;
        }
        let mut inline = [0u8; TENANT_ID_MAX_LEN];
        inline[..tenant.len()].copy_from_slice(tenant.as_bytes());
        let entry = Entry { at: Utc::now(), tenant: inline, tenant_len, kind, reason };
        let mut denials = self.denials.lock().unwrap_or_else(PoisonError::into_inner);
        if denials.len() >= self.capacity {
            denials.pop_front();
        }
        denials.push_back(entry);
    }

    /// The tenant's most recent denials, newest first.
    pub fn for_tenant(&self, tenant: &str, limit: usize) -> Vec<Denial> {
        let denials = self.denials.lock().unwrap_or_else(PoisonError::into_inner);
        denials
            .iter()
            .rev()
            .filter(|d| d.tenant() == tenant)
            .take(limit)
            .map(|d| Denial { at: d.at, tenant_id: d.tenant().to_owned(), kind: d.kind, reason: d.reason })
            .collect()
    }

    /// Heap bytes the log holds now (its buffer).
    pub fn bytes(&self) -> usize {
        self.denials.lock().unwrap_or_else(PoisonError::into_inner).capacity() * std::mem::size_of::<Entry>()
    }
}

/// Which tenants stand above their alert level. The truth is `tally.storage_alerts` in
/// PostgreSQL: the replica whose insert creates a tenant's row fires the alert, so a crossing
/// alerts once across replicas and restarts; this set only saves a query per tenant and refresh.
#[derive(Debug, Default)]
pub struct StorageAlerts {
    above: Mutex<HashSet<String>>,
}

impl StorageAlerts {
    /// Takes the standing alerts from PostgreSQL (at start, so a restart does not alert again).
    pub async fn load(&self, pool: &PgPool) -> Result<usize, sqlx::Error> {
        let standing: Vec<String> =
            sqlx::query_scalar("SELECT tenant_id FROM tally.storage_alerts").fetch_all(pool).await?;
        let count = standing.len();
        *self.above.lock().unwrap_or_else(PoisonError::into_inner) = standing.into_iter().collect();
        Ok(count)
    }

    /// Records the tenant's level; `true` when this replica must alert: the tenant has just crossed
    /// the alert level upwards and no replica has alerted this crossing yet.
    pub async fn observe(
        &self,
        pool: &PgPool,
        tenant: &str,
        storage_bytes: u64,
        cap: u64,
        is_above: bool,
    ) -> Result<bool, sqlx::Error> {
        let known = self.above.lock().unwrap_or_else(PoisonError::into_inner).contains(tenant);
        match (is_above, known) {
            (true, false) => {
                let inserted = sqlx::query(
                    "INSERT INTO tally.storage_alerts (tenant_id, storage_bytes, cap_bytes) VALUES ($1, $2, $3) \
                     ON CONFLICT (tenant_id) DO NOTHING",
                )
                .bind(tenant)
                .bind(i64::try_from(storage_bytes).unwrap_or(i64::MAX))
                .bind(i64::try_from(cap).unwrap_or(i64::MAX))
                .execute(pool)
                .await?;
                self.above.lock().unwrap_or_else(PoisonError::into_inner).insert(tenant.to_owned());
                Ok(inserted.rows_affected() == 1)
            }
            (false, true) => {
                sqlx::query("DELETE FROM tally.storage_alerts WHERE tenant_id = $1").bind(tenant).execute(pool).await?;
                self.above.lock().unwrap_or_else(PoisonError::into_inner).remove(tenant);
                Ok(false)
            }
            _ => Ok(false),
        }
    }

    pub fn count(&self) -> usize {
        self.above.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_is_bounded_in_entries_and_bytes_and_filters_by_tenant() {
        let log = AuditLog::new(3);
        for tenant in ["a", "b", "a", "a"] {
            log.record(tenant, Kind::Rate, Reason::RateLimited);
        }
        assert_eq!(log.for_tenant("a", 10).len(), 2, "the oldest was dropped");
        assert_eq!(log.for_tenant("b", 10).len(), 1);
        let bytes = log.bytes();
        log.record(&"x".repeat(1 << 20), Kind::Rate, Reason::RateLimited);
        for _ in 0..100 {
            log.record(&"y".repeat(TENANT_ID_MAX_LEN), Kind::Users, Reason::UserCap);
        }
        assert_eq!(log.bytes(), bytes, "a full log keeps its size");
        assert!(log.for_tenant(&"x".repeat(1 << 20), 10).is_empty());
    }
}
