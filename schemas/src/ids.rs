//! Identifiers with a fixed format: tenant ids, event ids and metric names.
//!
//! Each is checked once, at the edge, so that everything downstream (Kafka keys, ClickHouse rows,
//! Stripe identifiers) can rely on its length and charset.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::violation::Rule;

/// The format an identifier must have; `describe()` is what an error message shows.
struct Format {
    max_len: usize,
    first: fn(u8) -> bool,
    rest: fn(u8) -> bool,
    describe: &'static str,
}

impl Format {
    /// Inlined into each identifier's `check`, where the format is a constant: the byte classes
    /// become direct (inlined) tests instead of a call through a pointer per byte.
    #[inline(always)]
    fn check(&self, value: &str) -> Result<(), (Rule, String)> {
        let bytes = value.as_bytes();
        let valid = match bytes.split_first() {
            Some((first, rest)) => {
                bytes.len() <= self.max_len && (self.first)(*first) && rest.iter().all(|b| (self.rest)(*b))
            }
            None => false,
        };
        if valid { Ok(()) } else { self.explain(value) }
    }

    /// Why `value` does not have the format.
    #[cold]
    fn explain(&self, value: &str) -> Result<(), (Rule, String)> {
        let bytes = value.as_bytes();
        if bytes.is_empty() || bytes.len() > self.max_len {
            return Err((
                Rule::Length,
                format!(
                    "must be 1 to {} characters, got {}; allowed: {}",
                    self.max_len,
                    value.chars().count(),
                    self.describe
                ),
            ));
        }
        let bad = bytes.iter().enumerate().find(|(i, b)| !if *i == 0 { (self.first)(**b) } else { (self.rest)(**b) });
        match bad {
            None => Ok(()),
            Some((i, _)) => {
                let shown: String = value[i..].chars().take(1).collect();
                Err((
                    Rule::Charset,
                    format!("character {shown:?} at position {i} is not allowed; allowed: {}", self.describe),
                ))
            }
        }
    }
}

/// The longest tenant id (the platform registry's constraint).
pub const TENANT_ID_MAX_LEN: usize = 64;

fn alnum(b: u8) -> bool {
    b.is_ascii_alphanumeric()
}

macro_rules! identifier {
    ($(#[$doc:meta])* $name:ident, $format:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            const FORMAT: Format = $format;

            /// Checks `value` against the format; the error names the rule and what is allowed.
            pub fn parse(value: impl Into<String>) -> Result<Self, (Rule, String)> {
                let value = value.into();
                Self::FORMAT.check(&value)?;
                Ok(Self(value))
            }

            /// Checks `value` against the format without taking it.
            pub fn check(value: &str) -> Result<(), (Rule, String)> {
                Self::FORMAT.check(value)
            }

            /// A value that already passed [`Self::check`].
            pub(crate) fn from_checked(value: String) -> Self {
                Self(value)
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// What the format allows, for documentation and error messages.
            pub fn allowed() -> &'static str {
                Self::FORMAT.describe
            }
        }

        impl TryFrom<String> for $name {
            type Error = String;
            fn try_from(value: String) -> Result<Self, Self::Error> {
                Self::parse(value).map_err(|(_, message)| message)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

identifier!(
    /// A tenant id as the platform database holds it: slugs and UUIDs both fit.
    TenantId,
    Format {
        max_len: TENANT_ID_MAX_LEN,
        first: alnum,
        rest: |b| alnum(b) || b == b'_' || b == b'-',
        describe: "ASCII letters, digits, '_' and '-', starting with a letter or digit, at most 64",
    }
);

identifier!(
    /// The client-chosen idempotency key of an event: unique per tenant.
    EventId,
    Format {
        max_len: 128,
        first: alnum,
        rest: |b| alnum(b) || matches!(b, b'_' | b'-' | b'.' | b':'),
        describe: "ASCII letters, digits, '_', '-', '.' and ':', starting with a letter or digit, at most 128",
    }
);

identifier!(
    /// A metric's name in the catalogue.
    MetricName,
    Format {
        max_len: 64,
        first: |b| b.is_ascii_lowercase(),
        rest: |b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_',
        describe: "lowercase ASCII letters, digits and '_', starting with a letter, at most 64",
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_slugs_and_uuids_as_tenant_ids() {
        assert!(TenantId::parse("acme-corp_eu").is_ok());
        assert!(TenantId::parse("6f1c2b9e-3d4a-4f5b-8c7d-9e0f1a2b3c4d").is_ok());
    }

    #[test]
    fn rejects_bad_tenant_ids_with_the_rule() {
        assert_eq!(TenantId::parse("").unwrap_err().0, Rule::Length);
        assert_eq!(TenantId::parse("a".repeat(65)).unwrap_err().0, Rule::Length);
        let (rule, message) = TenantId::parse("-acme").unwrap_err();
        assert_eq!(rule, Rule::Charset);
        assert!(message.contains("position 0"), "{message}");
        let (rule, message) = TenantId::parse("acme corp").unwrap_err();
        assert_eq!(rule, Rule::Charset);
        assert!(message.contains("' '") || message.contains("\" \""), "{message}");
    }

    #[test]
    fn multibyte_characters_are_reported_not_panicked_on() {
        let (rule, message) = EventId::parse("évt-1").unwrap_err();
        assert_eq!(rule, Rule::Charset);
        assert!(message.contains('é'), "{message}");
    }

    #[test]
    fn metric_names_are_lowercase_snake_case() {
        assert!(MetricName::parse("api_calls").is_ok());
        assert_eq!(MetricName::parse("ApiCalls").unwrap_err().0, Rule::Charset);
        assert_eq!(MetricName::parse("1calls").unwrap_err().0, Rule::Charset);
    }
}
