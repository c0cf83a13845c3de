//! Tenant tiers, their default limits, and per-tenant overrides.
//!
//! | tier | max users | max storage | rate limit |
//! |---|---|---|---|
//! | STANDARD | 50 | 10 GB | 100 req/s, burst 200 |
//! | PREMIUM | 200 | 50 GB | 1,000 req/s, burst 2,000 |
//! | ENTERPRISE | unlimited | unlimited | unlimited |
//!
//! GB are decimal (10⁹ bytes). Every default is configurable, and a tenant row may override any
//! limit (see `migrations/platform`: NULL keeps the tier's default, -1 means unlimited).

use std::fmt;
use std::num::NonZeroU32;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub const GB: u64 = 1_000_000_000;
/// A tenant is alerted when its storage passes this share of its cap.
pub const STORAGE_ALERT_PERCENT: u64 = 80;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Tier {
    Standard,
    Premium,
    Enterprise,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Standard => "STANDARD",
            Tier::Premium => "PREMIUM",
            Tier::Enterprise => "ENTERPRISE",
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Tier {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "STANDARD" => Ok(Tier::Standard),
            "PREMIUM" => Ok(Tier::Premium),
            "ENTERPRISE" => Ok(Tier::Enterprise),
            other => Err(format!("unknown tier {other:?}; expected STANDARD, PREMIUM or ENTERPRISE")),
        }
    }
}

/// A cap that may be absent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Limit {
    Unlimited,
    Capped(u64),
}

impl Limit {
    /// The platform database's encoding: -1 is unlimited, any other value is a cap.
    pub fn from_db(value: i64) -> Result<Self, String> {
        match value {
            -1 => Ok(Limit::Unlimited),
            v if v >= 0 => Ok(Limit::Capped(v.unsigned_abs())),
            v => Err(format!("limit {v} is invalid: use -1 for unlimited or a value of 0 or more")),
        }
    }

    /// Whether `used + more` stays within the cap.
    pub fn admits(self, used: u64, more: u64) -> bool {
        match self {
            Limit::Unlimited => true,
            Limit::Capped(cap) => used.checked_add(more).is_some_and(|total| total <= cap),
        }
    }
}

/// A GCRA quota: a sustained rate and the burst allowed above it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RateQuota {
    pub per_second: NonZeroU32,
    pub burst: NonZeroU32,
}

impl RateQuota {
    pub const fn new(per_second: NonZeroU32, burst: NonZeroU32) -> Self {
        Self { per_second, burst }
    }
}

/// Rate limiting for a tenant: a quota, or none at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RateLimit {
    Unlimited,
    Quota(RateQuota),
}

/// The limits in force for one tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    pub max_users: Limit,
    pub max_storage_bytes: Limit,
    pub rate: RateLimit,
}

impl Limits {
    /// The storage level at which the 80 % alert fires, if storage is capped.
    pub fn storage_alert_bytes(&self) -> Option<u64> {
        match self.max_storage_bytes {
            Limit::Unlimited => None,
            Limit::Capped(cap) => Some(cap / 100 * STORAGE_ALERT_PERCENT + cap % 100 * STORAGE_ALERT_PERCENT / 100),
        }
    }

    pub fn with_overrides(mut self, overrides: &LimitOverrides) -> Self {
        if let Some(users) = overrides.max_users {
            self.max_users = users;
        }
        if let Some(storage) = overrides.max_storage_bytes {
            self.max_storage_bytes = storage;
        }
        if let Some(rate) = overrides.rate {
            self.rate = rate;
        }
        self
    }
}

/// A tenant row's overrides: `None` keeps the tier's default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitOverrides {
    pub max_users: Option<Limit>,
    pub max_storage_bytes: Option<Limit>,
    pub rate: Option<RateLimit>,
}

/// Default limits per tier (configurable under `[tiers.standard]`, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TierDefaults {
    pub standard: Limits,
    pub premium: Limits,
    pub enterprise: Limits,
}

impl TierDefaults {
    pub fn for_tier(&self, tier: Tier) -> Limits {
        match tier {
            Tier::Standard => self.standard,
            Tier::Premium => self.premium,
            Tier::Enterprise => self.enterprise,
        }
    }

    /// The limits in force for a tenant of `tier` with `overrides`.
    pub fn resolve(&self, tier: Tier, overrides: &LimitOverrides) -> Limits {
        self.for_tier(tier).with_overrides(overrides)
    }
}

const fn quota(per_second: u32, burst: u32) -> RateLimit {
    match (NonZeroU32::new(per_second), NonZeroU32::new(burst)) {
        (Some(per_second), Some(burst)) => RateLimit::Quota(RateQuota::new(per_second, burst)),
        _ => RateLimit::Unlimited,
    }
}

impl Default for TierDefaults {
    fn default() -> Self {
        Self {
            standard: Limits {
                max_users: Limit::Capped(50),
                max_storage_bytes: Limit::Capped(10 * GB),
                rate: quota(100, 200),
            },
            premium: Limits {
                max_users: Limit::Capped(200),
                max_storage_bytes: Limit::Capped(50 * GB),
                rate: quota(1_000, 2_000),
            },
            enterprise: Limits {
                max_users: Limit::Unlimited,
                max_storage_bytes: Limit::Unlimited,
                rate: RateLimit::Unlimited,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_tier_table() {
        let defaults = TierDefaults::default();
        let standard = defaults.for_tier(Tier::Standard);
        assert_eq!(standard.max_users, Limit::Capped(50));
        assert_eq!(standard.max_storage_bytes, Limit::Capped(10 * GB));
        assert_eq!(defaults.for_tier(Tier::Premium).max_users, Limit::Capped(200));
        assert_eq!(defaults.for_tier(Tier::Enterprise).max_storage_bytes, Limit::Unlimited);
    }

    #[test]
    fn overrides_replace_only_what_they_name() {
        let overrides = LimitOverrides { max_users: Some(Limit::Capped(75)), ..LimitOverrides::default() };
        let limits = TierDefaults::default().resolve(Tier::Standard, &overrides);
        assert_eq!(limits.max_users, Limit::Capped(75));
        assert_eq!(limits.max_storage_bytes, Limit::Capped(10 * GB));
    }

    #[test]
    fn storage_alert_is_at_eighty_percent() {
        let limits = TierDefaults::default().for_tier(Tier::Standard);
        assert_eq!(limits.storage_alert_bytes(), Some(8 * GB));
        assert_eq!(TierDefaults::default().for_tier(Tier::Enterprise).storage_alert_bytes(), None);
    }

    #[test]
    fn caps_admit_up_to_the_limit_without_overflow() {
        assert!(Limit::Capped(50).admits(49, 1));
        assert!(!Limit::Capped(50).admits(50, 1));
        assert!(!Limit::Capped(u64::MAX).admits(u64::MAX, 1));
        assert!(Limit::Unlimited.admits(u64::MAX, u64::MAX));
    }

    #[test]
    fn db_encoding_rejects_values_below_minus_one() {
        assert_eq!(Limit::from_db(-1), Ok(Limit::Unlimited));
        assert_eq!(Limit::from_db(10), Ok(Limit::Capped(10)));
        assert!(Limit::from_db(-2).is_err());
    }

    #[test]
    fn tiers_parse_as_the_platform_writes_them() {
        assert_eq!("PREMIUM".parse::<Tier>(), Ok(Tier::Premium));
        assert!("premium".parse::<Tier>().unwrap_err().contains("STANDARD"));
    }
}
