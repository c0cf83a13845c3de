//! What is wrong with an event, field by field, in words an emitter can act on.

use std::fmt;

/// The rule an event broke; `code()` is the stable, machine-readable name used in API answers,
/// dead-letter headers and metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rule {
    /// A required field is absent or null.
    Missing,
    /// The field has the wrong JSON type (a number where a string belongs, …).
    WrongType,
    /// The field is empty or longer than allowed.
    Length,
    /// The field holds characters outside its allowed set.
    Charset,
    /// The metric is not in the catalogue.
    UnknownMetric,
    /// The value is negative or above the metric's maximum.
    OutOfRange,
    /// The value has more decimal places or significant digits than can be kept exactly.
    Precision,
    /// The timestamp is older than the lateness window.
    TooOld,
    /// The timestamp is further in the future than allowed.
    InFuture,
    /// The timestamp is not RFC 3339.
    Format,
    /// Too many attributes.
    TooMany,
    /// A field the format does not define.
    UnknownField,
    /// A value the format does not allow (CloudEvents `specversion`, `datacontenttype`).
    Unsupported,
}

impl Rule {
    pub const ALL: [Rule; 13] = [
        Rule::Missing,
        Rule::WrongType,
        Rule::Length,
        Rule::Charset,
        Rule::UnknownMetric,
        Rule::OutOfRange,
        Rule::Precision,
        Rule::TooOld,
        Rule::InFuture,
        Rule::Format,
        Rule::TooMany,
        Rule::UnknownField,
        Rule::Unsupported,
    ];

    pub fn code(self) -> &'static str {
        match self {
            Rule::Missing => "missing",
            Rule::WrongType => "wrong_type",
            Rule::Length => "length",
            Rule::Charset => "charset",
            Rule::UnknownMetric => "unknown_metric",
            Rule::OutOfRange => "out_of_range",
            Rule::Precision => "precision",
            Rule::TooOld => "too_old",
            Rule::InFuture => "in_future",
            Rule::Format => "format",
            Rule::TooMany => "too_many",
            Rule::UnknownField => "unknown_field",
            Rule::Unsupported => "unsupported",
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// One broken rule: the field (as the sender named it), the rule, and what is allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub field: String,
    pub rule: Rule,
    pub message: String,
}

impl Violation {
    pub fn new(field: impl Into<String>, rule: Rule, message: impl Into<String>) -> Self {
        Self { field: field.into(), rule, message: message.into() }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` ({}): {}", self.field, self.rule, self.message)
    }
}

/// Why an event was refused: it is not a JSON object of the expected shape, or it broke rules.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("malformed event: {0}")]
    Malformed(String),
    #[error("invalid event: {}", join(.0))]
    Invalid(Vec<Violation>),
}

impl EventError {
    /// The violations, empty for a malformed event.
    pub fn violations(&self) -> &[Violation] {
        match self {
            EventError::Malformed(_) => &[],
            EventError::Invalid(violations) => violations,
        }
    }

    /// Every code [`Self::reason_code`] can give (metrics pre-create a series for each).
    pub fn reason_codes() -> impl Iterator<Item = &'static str> {
        ["malformed", "invalid"].into_iter().chain(Rule::ALL.map(Rule::code))
    }

    /// A short machine-readable reason: `malformed` or the first broken rule's code.
    pub fn reason_code(&self) -> &'static str {
        match self {
            EventError::Malformed(_) => "malformed",
            EventError::Invalid(violations) => violations.first().map_or("invalid", |v| v.rule.code()),
        }
    }
}

fn join(violations: &[Violation]) -> String {
    violations.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}
