//! Denials kept for auditing (bounded: the most recent `capacity`, all tenants together), and the
//! storage alert that fires once each time a tenant crosses 80 % of its cap.

use std::collections::{HashSet, VecDeque};
use std::sync::{Mutex, PoisonError};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::decision::{Kind, Reason};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Denial {
    pub at: DateTime<Utc>,
    pub tenant_id: String,
    pub kind: Kind,
    pub reason: Reason,
}

#[derive(Debug)]
pub struct AuditLog {
    denials: Mutex<VecDeque<Denial>>,
    capacity: usize,
}

impl AuditLog {
    pub fn new(capacity: usize) -> Self {
        Self { denials: Mutex::new(VecDeque::with_capacity(capacity.min(4_096))), capacity }
    }

    pub fn record(&self, tenant: &str, kind: Kind, reason: Reason) {
        let mut denials = self.denials.lock().unwrap_or_else(PoisonError::into_inner);
        if denials.len() >= self.capacity {
            denials.pop_front();
        }
        denials.push_back(Denial { at: Utc::now(), tenant_id: tenant.to_owned(), kind, reason });
    }

    /// The tenant's most recent denials, newest first.
    pub fn for_tenant(&self, tenant: &str, limit: usize) -> Vec<Denial> {
        let denials = self.denials.lock().unwrap_or_else(PoisonError::into_inner);
        denials.iter().rev().filter(|d| d.tenant_id == tenant).take(limit).cloned().collect()
    }
}

/// Which tenants are above their alert level, so each crossing alerts once.
#[derive(Debug, Default)]
pub struct StorageAlerts {
    above: Mutex<HashSet<String>>,
}

impl StorageAlerts {
    /// Records the tenant's level; `true` when it has just crossed the alert level upwards.
    pub fn observe(&self, tenant: &str, is_above: bool) -> bool {
        let mut above = self.above.lock().unwrap_or_else(PoisonError::into_inner);
        if is_above {
            return above.insert(tenant.to_owned());
        }
        above.remove(tenant);
        false
    }

    pub fn count(&self) -> usize {
        self.above.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_is_bounded_and_filters_by_tenant() {
        let log = AuditLog::new(3);
        for tenant in ["a", "b", "a", "a"] {
            log.record(tenant, Kind::Rate, Reason::RateLimited);
        }
        assert_eq!(log.for_tenant("a", 10).len(), 2, "the oldest was dropped");
        assert_eq!(log.for_tenant("b", 10).len(), 1);
    }

    #[test]
    fn an_alert_fires_once_per_crossing() {
        let alerts = StorageAlerts::default();
        assert!(alerts.observe("a", true));
        assert!(!alerts.observe("a", true));
        assert!(!alerts.observe("a", false));
        assert!(alerts.observe("a", true), "a new crossing alerts again");
    }
}
