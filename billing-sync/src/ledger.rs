//! The ledger in PostgreSQL (`tally.billing_ledger`, `tally.billing_streams`): what was sent to
//! Stripe for each (tenant, metric) stream and window, and each stream's running totals. See
//! migration `0005_billing_whole_units.sql` for the invariant the head keeps.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use tally_schemas::Quantity;

use crate::config::Window;

/// (tenant, metric)
pub type StreamKey = (String, String);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A meter event of `value` units.
    Event,
    /// A meter event adjustment cancelling the event `cancels` (`value` is minus its value).
    Cancel,
    /// No Stripe call: the window's amount stayed within the carried fraction.
    Carry,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Event => "event",
            Kind::Cancel => "cancel",
            Kind::Carry => "carry",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Pending,
    Acknowledged,
    Refused,
}

/// One ledger row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub granularity: Window,
    pub window_start: i64,
    pub seq: i32,
    pub kind: Kind,
    /// Tally's exact amount this row accounts for.
    pub amount: Quantity,
    /// Whole units sent (negative for corrections).
    pub value: i64,
    pub identifier: String,
    pub cancels: Option<String>,
    pub state: State,
    pub stripe_customer_id: String,
    pub event_name: String,
    pub created_at: DateTime<Utc>,
    pub refused_at: Option<DateTime<Utc>>,
    pub refusal_code: Option<String>,
}

impl Row {
    /// Counts towards what Stripe holds (sent, or being sent).
    pub fn live(&self) -> bool {
        self.state != State::Refused
    }
}

/// A stream's running totals; `version` guards every write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub unit: Quantity,
    pub exact_total: Quantity,
    pub value_total: i64,
    /// 0: not in the table yet.
    pub version: i64,
}

impl Head {
    pub fn new(unit: Quantity) -> Self {
        Self { unit, exact_total: Quantity::ZERO, value_total: 0, version: 0 }
    }

    /// The exact amount accounted but not sent as whole units.
    pub fn carried(&self) -> Quantity {
        Quantity::from_units(self.exact_total.units() - i128::from(self.value_total) * self.unit.units())
    }

    /// The head once `row` is written.
    pub fn with(&self, row: &Row) -> Head {
        Head {
            unit: self.unit,
            exact_total: Quantity::from_units(self.exact_total.units() + row.amount.units()),
            value_total: self.value_total + row.value,
            version: self.version + 1,
        }
    }

    /// The head once `row` (written before) no longer counts.
    pub fn without(&self, row: &Row) -> Head {
        Head {
            unit: self.unit,
            exact_total: Quantity::from_units(self.exact_total.units() - row.amount.units()),
            value_total: self.value_total - row.value,
            version: self.version + 1,
        }
    }
}

type RowTuple = (
    String,
    String,
    String,
    DateTime<Utc>,
    i32,
    String,
    String,
    i64,
    String,
    Option<String>,
    String,
    String,
    String,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
    Option<String>,
);

fn decode_error(what: &str, raw: &str) -> sqlx::Error {
    sqlx::Error::Decode(format!("ledger {what} {raw:?} is not valid").into())
}

/// Every row of windows starting at or after `since`, per stream, in (window, seq) order.
pub async fn load_rows(pool: &PgPool, since: DateTime<Utc>) -> Result<HashMap<StreamKey, Vec<Row>>, sqlx::Error> {
    let rows: Vec<RowTuple> = sqlx::query_as(
        "SELECT tenant_id, metric, granularity, window_start, seq, kind, amount, value, identifier, cancels, state, \
         stripe_customer_id, event_name, created_at, refused_at, refusal_code \
         FROM tally.billing_ledger WHERE window_start >= $1 ORDER BY window_start, seq",
    )
    .bind(since)
    .fetch_all(pool)
    .await?;
    let mut ledger: HashMap<StreamKey, Vec<Row>> = HashMap::new();
    for (
        tenant,
        metric,
        granularity,
        window,
        seq,
        kind,
        amount,
        value,
        identifier,
        cancels,
        state,
        customer,
        event_name,
        created_at,
        refused_at,
        refusal_code,
    ) in rows
    {
        let row = Row {
            granularity: Window::parse(&granularity).ok_or_else(|| decode_error("granularity", &granularity))?,
            window_start: window.timestamp(),
            seq,
            kind: match kind.as_str() {
                "event" => Kind::Event,
                "cancel" => Kind::Cancel,
                "carry" => Kind::Carry,
                _ => return Err(decode_error("kind", &kind)),
            },
            amount: amount.parse().map_err(|_| decode_error("amount", &amount))?,
            value,
            identifier,
            cancels,
            state: match state.as_str() {
                "pending" => State::Pending,
                "acknowledged" => State::Acknowledged,
                "refused" => State::Refused,
                _ => return Err(decode_error("state", &state)),
            },
            stripe_customer_id: customer,
            event_name,
            created_at,
            refused_at,
            refusal_code,
        };
        ledger.entry((tenant, metric)).or_default().push(row);
    }
    Ok(ledger)
}

/// Every stream's head.
pub async fn load_heads(pool: &PgPool) -> Result<HashMap<StreamKey, Head>, sqlx::Error> {
    let rows: Vec<(String, String, String, String, i64, i64)> =
        sqlx::query_as("SELECT tenant_id, metric, unit, exact_total, value_total, version FROM tally.billing_streams")
            .fetch_all(pool)
            .await?;
    rows.into_iter()
        .map(|(tenant, metric, unit, exact, value_total, version)| {
            let head = Head {
                unit: unit.parse().map_err(|_| decode_error("unit", &unit))?,
                exact_total: exact.parse().map_err(|_| decode_error("exact_total", &exact))?,
                value_total,
                version,
            };
            Ok(((tenant, metric), head))
        })
        .collect()
}

/// The deterministic identifier of a row: readable (kind, granularity, window, seq) plus 128
/// bits of SHA-256 over the whole key, so it is unique across tenants and metrics whatever
/// their length, and always within Stripe's 100 characters (at most 60 here).
pub fn identifier(key: &StreamKey, granularity: Window, window_start: i64, seq: i32, kind: Kind) -> String {
    let mut hash = Sha256::new();
    for part in [key.0.as_str(), key.1.as_str(), granularity.granularity(), kind.as_str()] {
        hash.update(part.as_bytes());
        hash.update([0]);
    }
    hash.update(window_start.to_be_bytes());
    hash.update(seq.to_be_bytes());
    let digest = hash.finalize();
    let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
    let window = DateTime::from_timestamp(window_start, 0).unwrap_or_default().format("%Y%m%d%H");
    let prefix = match kind {
        Kind::Cancel => "tlyx",
        Kind::Event | Kind::Carry => "tly",
    };
    let g = &granularity.granularity()[..1];
    format!("{prefix}_{g}{window}_{seq}_{hex}")
}

/// Writes `row` and moves the stream's head from `before` to `after` in one statement; `false`
/// when the head moved meanwhile (another run owns the stream now) and nothing was written.
pub async fn write(
    pool: &PgPool,
    key: &StreamKey,
    before: &Head,
    after: &Head,
    row: &Row,
) -> Result<bool, sqlx::Error> {
    let window = DateTime::from_timestamp(row.window_start, 0).unwrap_or_default();
    let state = if row.kind == Kind::Carry { "acknowledged" } else { "pending" };
    let written: Option<i64> = sqlx::query_scalar(
        "WITH head AS ( \
           INSERT INTO tally.billing_streams AS s (tenant_id, metric, unit, exact_total, value_total, version) \
           VALUES ($1, $2, $3, $4, $5, $6) \
           ON CONFLICT (tenant_id, metric) DO UPDATE \
             SET exact_total = EXCLUDED.exact_total, value_total = EXCLUDED.value_total, \
                 version = EXCLUDED.version, updated_at = now() \
             WHERE s.version = $7 \
           RETURNING 1) \
         INSERT INTO tally.billing_ledger (tenant_id, metric, granularity, window_start, seq, kind, amount, value, \
           identifier, cancels, state, stripe_customer_id, event_name, acknowledged_at) \
         SELECT $1, $2, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, \
           CASE WHEN $16 = 'acknowledged' THEN now() END \
         FROM head \
         RETURNING 1::bigint",
    )
    .bind(&key.0)
    .bind(&key.1)
    .bind(after.unit.to_string())
    .bind(after.exact_total.to_string())
    .bind(after.value_total)
    .bind(after.version)
    .bind(before.version)
    .bind(row.granularity.granularity())
    .bind(window)
    .bind(row.seq)
    .bind(row.kind.as_str())
    .bind(row.amount.to_string())
    .bind(row.value)
    .bind(&row.identifier)
    .bind(&row.cancels)
    .bind(state)
    .bind(&row.stripe_customer_id)
    .bind(&row.event_name)
    .fetch_optional(pool)
    .await?;
    Ok(written.is_some())
}

/// Acknowledgements, written in batches by one task: a row Stripe took is marked acknowledged
/// within a few milliseconds, in one statement per batch. A crash before the batch is written
/// leaves the rows pending; the next run sends them again with the same identifiers and Stripe
/// answers that it holds them, so a late acknowledgement never bills twice.
#[derive(Debug)]
pub struct Acks {
    sender: tokio::sync::mpsc::UnboundedSender<String>,
    writer: tokio::task::JoinHandle<usize>,
}

const ACK_BATCH: usize = 500;

impl Acks {
    pub fn start(pool: PgPool) -> Self {
        let (sender, mut receiver) = tokio::sync::mpsc::unbounded_channel::<String>();
        let writer = tokio::spawn(async move {
            let mut unwritten = 0;
            let mut batch = Vec::with_capacity(ACK_BATCH);
            while receiver.recv_many(&mut batch, ACK_BATCH).await > 0 {
                if let Err(error) = acknowledge(&pool, &batch).await {
                    unwritten += batch.len();
                    tracing::warn!(%error, rows = batch.len(), "acknowledgements not written; the next run resends those rows");
                }
                batch.clear();
            }
            unwritten
        });
        Self { sender, writer }
    }

    pub fn ack(&self, identifier: &str) {
        // The writer only stops once every sender is gone, so the send cannot fail.
        let _ = self.sender.send(identifier.to_owned());
    }

    /// Waits until every acknowledgement is written; the number that could not be.
    pub async fn finish(self) -> usize {
        drop(self.sender);
        self.writer.await.unwrap_or(usize::MAX)
    }
}

async fn acknowledge(pool: &PgPool, identifiers: &[String]) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE tally.billing_ledger SET state = 'acknowledged', acknowledged_at = now() \
         WHERE identifier = ANY($1) AND state = 'pending'",
    )
    .bind(identifiers)
    .execute(pool)
    .await?;
    Ok(())
}

/// Marks `row` refused with Stripe's code and takes it out of the head (`before` → `after`).
pub async fn refuse(
    pool: &PgPool,
    key: &StreamKey,
    (before, after): (&Head, &Head),
    row: &Row,
    (code, message): (&str, &str),
) -> Result<bool, sqlx::Error> {
    let done: Option<i64> = sqlx::query_scalar(
        "WITH head AS ( \
           UPDATE tally.billing_streams SET exact_total = $3, value_total = $4, version = $5, updated_at = now() \
           WHERE tenant_id = $1 AND metric = $2 AND version = $6 \
             AND EXISTS (SELECT 1 FROM tally.billing_ledger WHERE identifier = $7 AND state = 'pending') \
           RETURNING 1) \
         UPDATE tally.billing_ledger SET state = 'refused', refused_at = now(), refusal_code = $8, refusal_message = $9 \
         WHERE identifier = $7 AND EXISTS (SELECT 1 FROM head) RETURNING 1::bigint",
    )
    .bind(&key.0)
    .bind(&key.1)
    .bind(after.exact_total.to_string())
    .bind(after.value_total)
    .bind(after.version)
    .bind(before.version)
    .bind(&row.identifier)
    .bind(code)
    .bind(message)
    .fetch_optional(pool)
    .await?;
    Ok(done.is_some())
}
