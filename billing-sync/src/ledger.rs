//! The ledger in PostgreSQL (`tally.billing_ledger`): what was sent to Stripe, and what Stripe
//! acknowledged, per tenant × metric × window.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tally_schemas::Quantity;

/// One ledger row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub seq: i32,
    pub amount: Quantity,
    pub identifier: String,
    pub acknowledged: bool,
    pub stripe_customer_id: String,
    pub event_name: String,
}

/// (tenant, metric, window start in seconds)
pub type Key = (String, String, i64);

type Row = (String, String, DateTime<Utc>, i32, String, String, String, String, String);

/// Every row for windows starting at or after `since`.
pub async fn load(pool: &PgPool, since: DateTime<Utc>) -> Result<HashMap<Key, Vec<Entry>>, sqlx::Error> {
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT tenant_id, metric, window_start, seq, amount, identifier, state, stripe_customer_id, event_name \
         FROM tally.billing_ledger WHERE window_start >= $1 ORDER BY seq",
    )
    .bind(since)
    .fetch_all(pool)
    .await?;
    let mut ledger: HashMap<Key, Vec<Entry>> = HashMap::new();
    for (tenant, metric, window, seq, amount, identifier, state, customer, event_name) in rows {
        let amount =
            amount.parse().map_err(|e| sqlx::Error::Decode(format!("ledger amount {amount:?}: {e}").into()))?;
        ledger.entry((tenant, metric, window.timestamp())).or_default().push(Entry {
            seq,
            amount,
            identifier,
            acknowledged: state == "acknowledged",
            stripe_customer_id: customer,
            event_name,
        });
    }
    Ok(ledger)
}

/// The deterministic identifier of a window's `seq`-th meter event.
pub fn identifier(key: &Key, seq: i32) -> String {
    format!("tally:{}:{}:{}:{seq}", key.0, key.1, key.2)
}

/// Records an event about to be sent. `false` if that row exists already (another run).
pub async fn write_pending(pool: &PgPool, key: &Key, entry: &Entry) -> Result<bool, sqlx::Error> {
    let window = DateTime::from_timestamp(key.2, 0).unwrap_or_default();
    let inserted = sqlx::query(
        "INSERT INTO tally.billing_ledger \
         (tenant_id, metric, window_start, seq, stripe_customer_id, event_name, amount, identifier, state) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'pending') ON CONFLICT DO NOTHING",
    )
    .bind(&key.0)
    .bind(&key.1)
    .bind(window)
    .bind(entry.seq)
    .bind(&entry.stripe_customer_id)
    .bind(&entry.event_name)
    .bind(entry.amount.to_string())
    .bind(&entry.identifier)
    .execute(pool)
    .await?;
    Ok(inserted.rows_affected() == 1)
}

pub async fn acknowledge(pool: &PgPool, identifier: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE tally.billing_ledger SET state = 'acknowledged', acknowledged_at = now() \
         WHERE identifier = $1 AND state = 'pending'",
    )
    .bind(identifier)
    .execute(pool)
    .await?;
    Ok(())
}
