//! What every check answers.

use serde::Serialize;

/// Which check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Rate,
    Users,
    Storage,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Rate => "rate",
            Kind::Users => "users",
            Kind::Storage => "storage",
        }
    }
}

/// Why a check answered as it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Within the limit.
    Ok,
    /// The tier or an override sets no limit for this check.
    Unlimited,
    UnknownTenant,
    TenantSuspended,
    TenantDeleted,
    RateLimited,
    /// The cost asked for is above the burst: it can never pass.
    CostAboveBurst,
    UserCap,
    StorageCap,
    /// Data the check needs is stale or its store did not answer: the failure policy decided.
    Unavailable,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Ok => "ok",
            Reason::Unlimited => "unlimited",
            Reason::UnknownTenant => "unknown_tenant",
            Reason::TenantSuspended => "tenant_suspended",
            Reason::TenantDeleted => "tenant_deleted",
            Reason::RateLimited => "rate_limited",
            Reason::CostAboveBurst => "cost_above_burst",
            Reason::UserCap => "user_cap",
            Reason::StorageCap => "storage_cap",
            Reason::Unavailable => "unavailable",
        }
    }
}

/// One check's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub kind: Kind,
    pub allowed: bool,
    pub reason: Reason,
    /// The cap or burst (`None` when unlimited or unknown).
    pub limit: Option<u64>,
    /// Users or bytes in use (usage plus outstanding reservations); for rate: cells taken.
    pub used: Option<u64>,
    pub remaining: Option<u64>,
    /// Rate: when a denied request could pass.
    pub retry_after_ms: Option<u64>,
    /// Rate: when the bucket is full again.
    pub reset_after_ms: Option<u64>,
    /// Rate: the time the whole burst takes to refill (the policy's window).
    pub window_ms: Option<u64>,
    /// The data was stale or a store failed, and the failure policy answered.
    pub degraded: bool,
    /// Users and storage: the hold to commit or release.
    pub reservation_id: Option<String>,
}

impl Decision {
    pub fn new(kind: Kind, allowed: bool, reason: Reason) -> Self {
        Self {
            kind,
            allowed,
            reason,
            limit: None,
            used: None,
            remaining: None,
            retry_after_ms: None,
            reset_after_ms: None,
            window_ms: None,
            degraded: false,
            reservation_id: None,
        }
    }
}
