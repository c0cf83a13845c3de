//! The fenced insert: a batch's rows are stored only if, when the server holds all of them, the
//! partition's checkpoint still stands at the batch's first offset.
//!
//! Invariant enforced here: the check and the write are one statement that the server runs
//! without waiting on the writer. `INSERT … SELECT … FROM input() WHERE throwIf(<checkpoint moved>)`
//! evaluates its scalar subquery when the statement is analysed, and the server analyses an
//! `INSERT` only after reading `max_query_size` bytes of the request (query and data), which is
//! set above the body's length — so a writer paused anywhere, even half-way through sending its
//! rows, is judged against the checkpoint as it stands after the pause. A batch some other
//! instance stored meanwhile has moved the checkpoint, and the stale insert fails with
//! [`FENCED`] instead of storing the batch a second time.

use bytes::Bytes;
use clickhouse::Client;
use clickhouse::insert_formatted::InsertFormatted;

use crate::batch::Plan;
use crate::rowbinary::{RowBinary, encode_all};

/// ClickHouse's error code for `throwIf` (FUNCTION_THROW_IF_VALUE_IS_NON_ZERO).
const THROW_IF_CODE: &str = "Code: 395";
/// The message the fence throws with, to tell it from any other `throwIf` (a SQL string literal:
/// no quotes).
pub const FENCED: &str = "tally fence: the checkpoint of the partition moved past this batch";

/// What a fenced insert did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// The rows are stored (or were already, under the same token).
    Stored,
    /// The partition's checkpoint is not at the batch's first offset: nothing was written.
    Fenced,
}

/// Inserts `rows` into `table` under the plan's token, unless the partition moved past the plan.
pub async fn insert<T: RowBinary>(
    client: &Client,
    table: &str,
    plan: &Plan,
    rows: &[T],
) -> clickhouse::error::Result<Written> {
    if rows.is_empty() {
        return Ok(Written::Stored);
    }
    let body = encode_all(rows);
    let mut insert = begin::<T>(client, table, plan, body.len());
    insert.send(Bytes::from(body)).await?;
    outcome(insert.end().await)
}

/// The fenced statement for `body_len` bytes of `T` rows, ready to send (tests send in parts).
pub fn begin<T: RowBinary>(client: &Client, table: &str, plan: &Plan, body_len: usize) -> InsertFormatted {
    let sql = format!(
        "INSERT INTO {table} ({columns}) SELECT {columns} FROM input('{structure}') \
         WHERE throwIf((SELECT max(next_offset) FROM aggregator_checkpoints \
                        WHERE topic = {{fence_topic:String}} AND kafka_partition = {{fence_partition:UInt32}}) \
                       != {{fence_first:UInt64}}, '{FENCED}') = 0 \
         FORMAT RowBinary",
        columns = T::COLUMNS,
        structure = T::STRUCTURE,
    );
    // Above the whole request, so the server reads every row before it judges the fence.
    let read_before_analysis = (sql.len() + body_len + 64 * 1024).to_string();
    client
        .insert_formatted_with(sql)
        .with_setting("insert_deduplicate", "1")
        .with_setting("async_insert", "0")
        .with_setting("insert_deduplication_token", plan.token())
        .with_setting("max_query_size", read_before_analysis)
        .with_setting("param_fence_topic", plan.topic.as_str())
        .with_setting("param_fence_partition", plan.kafka_partition.to_string())
        .with_setting("param_fence_first", plan.first_offset.to_string())
}

/// What the server's answer to a fenced statement means.
pub fn outcome(answer: clickhouse::error::Result<()>) -> clickhouse::error::Result<Written> {
    match answer {
        Ok(()) => Ok(Written::Stored),
        Err(error) if is_fenced(&error) => Ok(Written::Fenced),
        Err(error) => Err(error),
    }
}

fn is_fenced(error: &clickhouse::error::Error) -> bool {
    let message = error.to_string();
    message.contains(THROW_IF_CODE) && message.contains(FENCED)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fence_message_is_a_plain_sql_literal() {
        assert!(!FENCED.contains('\'') && !FENCED.contains('\\'));
    }
}
