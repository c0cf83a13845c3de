//! `/v1/usage` parameters, from a query string or a JSON body, checked into a [`UsageQuery`].
//! Every refusal names the parameter to fix.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use chrono_tz::Tz;
use serde::Deserialize;
use tally_kit::rollups::Granularity;
use tally_schemas::event::{MAX_ATTRIBUTE_KEY_LEN, MAX_ATTRIBUTE_VALUE_LEN};
use tally_schemas::{MetricCatalogue, MetricKind, TenantId};

use crate::config::QuerySection;
use crate::windows::{self, Window};

/// A parameter that cannot be used, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{parameter}: {message}")]
pub struct BadParameter {
    pub parameter: String,
    pub message: String,
}

fn bad(parameter: &str, message: impl Into<String>) -> BadParameter {
    BadParameter { parameter: parameter.to_owned(), message: message.into() }
}

/// One value or several (JSON), or repeated / comma-separated values (query string).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    #[default]
    None,
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn values(self) -> Vec<String> {
        let raw = match self {
            OneOrMany::None => Vec::new(),
            OneOrMany::One(one) => vec![one],
            OneOrMany::Many(many) => many,
        };
        raw.iter().flat_map(|v| v.split(',')).map(str::trim).filter(|v| !v.is_empty()).map(str::to_owned).collect()
    }
}

/// The parameters as sent (the POST body's shape; a GET's query string is read into it).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRequest {
    #[serde(default)]
    pub metric: OneOrMany,
    pub from: Option<String>,
    pub to: Option<String>,
    pub window: Option<String>,
    pub time_zone: Option<String>,
    #[serde(default)]
    pub tenant: OneOrMany,
    #[serde(default)]
    pub group_by: OneOrMany,
    /// Attribute → accepted values (an event matches when its value is any of them).
    #[serde(default)]
    pub filter: BTreeMap<String, OneOrMany>,
    pub limit: Option<u64>,
    pub order_by: Option<String>,
    pub format: Option<String>,
    /// `zero`: a row for every window of every group, with zero counts where nothing happened.
    pub fill: Option<String>,
}

impl RawRequest {
    /// A GET's query string: repeated keys add values; `filter[key]=value` filters by attribute.
    pub fn from_query_string(query: &str) -> Result<Self, BadParameter> {
        let mut raw = RawRequest::default();
        let mut lists: BTreeMap<&'static str, Vec<String>> = BTreeMap::new();
        let mut filters: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            let value = value.into_owned();
            let single = |slot: &mut Option<String>, name: &str| {
                if slot.replace(value.clone()).is_some() { Err(bad(name, "given more than once")) } else { Ok(()) }
            };
            match key.as_ref() {
                "metric" => lists.entry("metric").or_default().push(value),
                "tenant" => lists.entry("tenant").or_default().push(value),
                "group_by" => lists.entry("group_by").or_default().push(value),
                "from" => single(&mut raw.from, "from")?,
                "to" => single(&mut raw.to, "to")?,
                "window" => single(&mut raw.window, "window")?,
                "time_zone" => single(&mut raw.time_zone, "time_zone")?,
                "order_by" => single(&mut raw.order_by, "order_by")?,
                "format" => single(&mut raw.format, "format")?,
                "fill" => single(&mut raw.fill, "fill")?,
                "limit" => {
                    let limit = value.parse().map_err(|_| bad("limit", format!("{value:?} is not a whole number")))?;
                    raw.limit = Some(limit);
                }
                other => match other.strip_prefix("filter[").and_then(|rest| rest.strip_suffix(']')) {
                    Some(attribute) => filters.entry(attribute.to_owned()).or_default().push(value),
                    None => return Err(bad(other, UNKNOWN_PARAMETER)),
                },
            }
        }
        let mut take = |name| OneOrMany::Many(lists.remove(name).unwrap_or_default());
        raw.metric = take("metric");
        raw.tenant = take("tenant");
        raw.group_by = take("group_by");
        raw.filter = filters.into_iter().map(|(k, v)| (k, OneOrMany::Many(v))).collect();
        Ok(raw)
    }
}

const UNKNOWN_PARAMETER: &str = "unknown parameter; known: metric, from, to, window, time_zone, tenant, group_by, \
     filter[<attribute>], limit, order_by, format, fill";

/// A group-by dimension.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dimension {
    Tenant,
    Metric,
    Attribute(String),
}

/// How rows are ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Window, then tenant, metric and group values.
    Window,
    /// By a value column, largest first.
    Descending(Column),
    /// By a value column, smallest first.
    Ascending(Column),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Column {
    Sum,
    Count,
    Max,
    Latest,
    Distinct,
}

/// What the answer is written as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Csv,
}

/// A checked query: every field is safe to bind as a ClickHouse parameter.
#[derive(Debug, Clone)]
pub struct UsageQuery {
    /// (name, kind, the attribute a unique metric counts).
    pub metrics: Vec<(String, MetricKind, Option<String>)>,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub window: Option<Window>,
    pub zone: Tz,
    /// `None`: every tenant (an analyst or admin key without a tenant filter).
    pub tenants: Option<Vec<String>>,
    pub by_tenant: bool,
    pub attributes: Vec<String>,
    pub filters: Vec<(String, Vec<String>)>,
    pub limit: u64,
    /// Whether `limit` was asked for (a cut) or is the service's bound (past it, a 400).
    pub limit_given: bool,
    pub order: Order,
    pub format: Option<Format>,
    /// Whether windows without events get a zero row (per group; see [`crate::fill`]).
    pub fill_zero: bool,
    /// The window starts (`[from]` without a window), then `to`.
    pub boundaries: Vec<DateTime<Utc>>,
    /// The rollups read; `None`: the raw events (attribute group-by or filters).
    pub source: Option<Granularity>,
}

/// An RFC 3339 time, or a date (`2026-11-01`): the start of that day in `zone`.
fn instant(parameter: &str, raw: Option<&str>, zone: Tz) -> Result<DateTime<Utc>, BadParameter> {
    let raw = raw.ok_or_else(|| {
        bad(parameter, "required: an RFC 3339 time, e.g. 2026-11-01T00:00:00Z, or a date in time_zone, e.g. 2026-11-01")
    })?;
    if let Ok(date) = NaiveDate::parse_from_str(raw, "%Y-%m-%d") {
        return Ok(windows::day_start(zone, date));
    }
    DateTime::parse_from_rfc3339(raw).map(|at| at.with_timezone(&Utc)).map_err(|e| {
        bad(
            parameter,
            format!("{raw:?} is not an RFC 3339 time ({e}) or a date: e.g. 2026-11-01T00:00:00Z or 2026-11-01"),
        )
    })
}

fn attribute_name(parameter: &str, name: &str) -> Result<String, BadParameter> {
    let ok = !name.is_empty()
        && name.len() <= MAX_ATTRIBUTE_KEY_LEN
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(name.to_owned())
    } else {
        Err(bad(
            parameter,
            format!(
                "{name:?}: attribute names are 1 to {MAX_ATTRIBUTE_KEY_LEN} ASCII letters, digits, '_', '-' or '.'"
            ),
        ))
    }
}

fn order(raw: Option<&str>) -> Result<Order, BadParameter> {
    let Some(raw) = raw else { return Ok(Order::Window) };
    let (descending, name) = raw.strip_prefix('-').map_or((false, raw), |name| (true, name));
    let column = match name {
        "window" if !descending => return Ok(Order::Window),
        "sum" => Column::Sum,
        "count" => Column::Count,
        "max" => Column::Max,
        "latest" => Column::Latest,
        "distinct" => Column::Distinct,
        _ => {
            return Err(bad(
                "order_by",
                format!("{raw:?}: one of window, sum, count, max, latest, distinct (a leading '-': largest first)"),
            ));
        }
    };
    Ok(if descending { Order::Descending(column) } else { Order::Ascending(column) })
}

/// Checks `raw` against the catalogue and the service's bounds.
pub fn check(raw: RawRequest, catalogue: &MetricCatalogue, bounds: &QuerySection) -> Result<UsageQuery, BadParameter> {
    let mut metrics = Vec::new();
    let names = raw.metric.values();
    let names = if names.is_empty() { catalogue.names().into_iter().map(str::to_owned).collect() } else { names };
    for name in names {
        let (_, def) = catalogue.lookup(&name).ok_or_else(|| {
            bad("metric", format!("{name:?} is not in the metric catalogue; known: {}", catalogue.names().join(", ")))
        })?;
        if !metrics.iter().any(|(known, _, _)| *known == name) {
            metrics.push((name, def.kind, def.distinct_by.clone()));
        }
    }
    let zone: Tz = match raw.time_zone.as_deref() {
        None | Some("") => Tz::UTC,
        Some(name) => name.parse().map_err(|_| {
            bad("time_zone", format!("{name:?} is not an IANA time zone, e.g. UTC, Asia/Kolkata, America/New_York"))
        })?,
    };
    let window = match raw.window.as_deref() {
        None | Some("" | "none") => None,
        Some(name) => Some(Window::parse(name).ok_or_else(|| {
            bad("window", format!("{name:?}: one of minute, hour, day, month (or leave it out for one total)"))
        })?),
    };
    let from = instant("from", raw.from.as_deref(), zone)?;
    let to = instant("to", raw.to.as_deref(), zone)?;
    if to <= from {
        return Err(bad("to", "must be after `from`"));
    }
    if (to - from).num_days() > i64::from(bounds.max_range_days) {
        return Err(bad(
            "to",
            format!("the range is longer than {} days: ask for less at a time", bounds.max_range_days),
        ));
    }
    let unit = window.unwrap_or(Window::Minute);
    for (name, at) in [("from", from), ("to", to)] {
        let start = windows::floor(unit, zone, at);
        if start != at {
            return Err(bad(
                name,
                format!(
                    "{} is not the start of a {} in {zone}: windows are whole, e.g. {}",
                    windows::show(zone, at),
                    unit.as_str(),
                    windows::show(zone, start)
                ),
            ));
        }
    }
    let mut boundaries = match window {
        Some(window) => windows::starts(window, zone, from, to, bounds.max_windows).ok_or_else(|| {
            bad(
                "window",
                format!(
                    "more than {} {} windows between from and to: a coarser window or a shorter range",
                    bounds.max_windows,
                    window.as_str()
                ),
            )
        })?,
        None => vec![from],
    };
    boundaries.push(to);

    let tenants = raw.tenant.values();
    if tenants.len() > bounds.max_tenants {
        return Err(bad("tenant", format!("at most {} tenants per query", bounds.max_tenants)));
    }
    for tenant in &tenants {
        TenantId::check(tenant).map_err(|(_, rule)| bad("tenant", format!("{tenant:?} is not a tenant id: {rule}")))?;
    }
    let (mut by_tenant, mut attributes) = (false, Vec::new());
    for dimension in raw.group_by.values() {
        match dimension.as_str() {
            "tenant" => by_tenant = true,
            "metric" => {}
            other => {
                let name = attribute_name("group_by", other.strip_prefix("attributes.").unwrap_or(other))?;
                if !attributes.contains(&name) {
                    attributes.push(name);
                }
            }
        }
    }
    if attributes.len() > 8 {
        return Err(bad("group_by", "at most 8 attributes"));
    }
    let mut filters = Vec::new();
    for (name, values) in raw.filter {
        let parameter = format!("filter[{name}]");
        let name = attribute_name(&parameter, &name)?;
        let values = values.values();
        if values.is_empty() || values.len() > 100 || values.iter().any(|v| v.len() > MAX_ATTRIBUTE_VALUE_LEN) {
            return Err(bad(&parameter, format!("1 to 100 values of at most {MAX_ATTRIBUTE_VALUE_LEN} bytes")));
        }
        filters.push((name, values));
    }
    if filters.len() > 16 {
        return Err(bad("filter", "at most 16 attributes"));
    }
    let limit_given = raw.limit.is_some();
    let limit = raw.limit.unwrap_or(bounds.max_rows as u64);
    if limit == 0 || limit > bounds.max_rows as u64 {
        return Err(bad("limit", format!("1 to {}", bounds.max_rows)));
    }
    let format = match raw.format.as_deref() {
        None | Some("") => None,
        Some("json") => Some(Format::Json),
        Some("csv") => Some(Format::Csv),
        Some(other) => return Err(bad("format", format!("{other:?}: json or csv"))),
    };
    let order = order(raw.order_by.as_deref())?;
    let fill_zero = match raw.fill.as_deref() {
        None | Some("" | "none") => false,
        Some("zero") if order == Order::Window => true,
        Some("zero") => return Err(bad("fill", "zero fills windows in window order: leave order_by out")),
        Some(other) => return Err(bad("fill", format!("{other:?}: zero (or none)"))),
    };
    let source = if attributes.is_empty() && filters.is_empty() {
        Some(windows::source_granularity(boundaries.iter().copied()).ok_or_else(|| {
            bad("time_zone", format!("{zone}'s windows do not fall on whole UTC minutes in this range"))
        })?)
    } else {
        None
    };
    Ok(UsageQuery {
        metrics,
        from,
        to,
        window,
        zone,
        tenants: if tenants.is_empty() { None } else { Some(tenants) },
        by_tenant,
        attributes,
        filters,
        limit,
        limit_given,
        order,
        format,
        fill_zero,
        boundaries,
        source,
    })
}
