//! CSV answers too large to hold: rows are read from ClickHouse's cursor and written out as they
//! come, so a 200,000-row export holds at most `[query] stream_after_rows` rows in memory.
//!
//! An answer of at most `stream_after_rows` rows is sent whole, with every refusal a 400 can
//! give. A longer one is committed to streaming; if it then runs past the service's row bound
//! (no `limit` asked for), the body is broken off with an error, so a client sees a failed
//! transfer and never a silently short file.

use axum::body::{Body, Bytes};
use clickhouse::query::RowCursor;
use futures_util::stream;
use prometheus::IntCounter;

use crate::render;
use crate::request::UsageQuery;
use crate::sql::{self, UsageRow};

/// What the cursor gave before the answer had to stream.
#[allow(missing_debug_implementations)] // the cursor has no Debug
pub enum Fetched {
    /// The whole answer (the cursor ended).
    Whole(Vec<UsageRow>),
    /// The first rows; the rest are still in the cursor.
    Streaming(Vec<UsageRow>, RowCursor<UsageRow>),
}

/// Runs `query` for at most `rows` rows, reading up to `hold` of them before it streams.
pub async fn fetch(
    client: &clickhouse::Client,
    query: &UsageQuery,
    rows: u64,
    max_execution_secs: u32,
    hold: usize,
) -> clickhouse::error::Result<Fetched> {
    let mut cursor = sql::statement(client, query, rows, max_execution_secs).fetch::<UsageRow>()?;
    let mut head = Vec::new();
    while head.len() < hold {
        match cursor.next().await? {
            Some(row) => head.push(row),
            None => return Ok(Fetched::Whole(head)),
        }
    }
    Ok(Fetched::Streaming(head, cursor))
}

/// How many CSV bytes gather before a chunk is sent.
const CHUNK_BYTES: usize = 64 * 1024;

struct Writer {
    query: UsageQuery,
    cursor: RowCursor<UsageRow>,
    rows: render::CsvRows,
    /// Rows written so far.
    written: u64,
    /// `Some(n)`: more than `n` rows breaks the answer off (the service's bound).
    bound: Option<u64>,
    counted: IntCounter,
    done: bool,
}

impl Writer {
    async fn chunk(&mut self) -> Option<Result<Bytes, std::io::Error>> {
        if self.done {
            return None;
        }
        let mut out = String::with_capacity(CHUNK_BYTES + 1024);
        while out.len() < CHUNK_BYTES {
            match self.cursor.next().await {
                Ok(Some(row)) => {
                    self.written += 1;
                    if self.bound.is_some_and(|bound| self.written > bound) {
                        self.done = true;
                        let bound = self.bound.unwrap_or_default();
                        tracing::warn!(bound, "a streamed CSV answer ran past the row bound and was broken off");
                        return Some(Err(std::io::Error::other(format!(
                            "the answer has more than {bound} rows: narrow the query or set a limit"
                        ))));
                    }
                    self.counted.inc();
                    self.rows.write(&self.query, &row, &mut out);
                }
                Ok(None) => {
                    self.done = true;
                    break;
                }
                Err(error) => {
                    self.done = true;
                    tracing::warn!(%error, "the usage store failed mid-answer");
                    return Some(Err(std::io::Error::other(format!("the usage store failed mid-answer: {error}"))));
                }
            }
        }
        Some(Ok(Bytes::from(out)))
    }
}

/// The CSV body: the header and `head`, then the cursor's rows as they come.
pub fn csv_body(
    query: UsageQuery,
    head: &[UsageRow],
    cursor: RowCursor<UsageRow>,
    bound: Option<u64>,
    counted: IntCounter,
) -> Body {
    let mut first = render::csv_header(&query);
    let mut rows = render::CsvRows::default();
    for row in head {
        rows.write(&query, row, &mut first);
    }
    counted.inc_by(head.len() as u64);
    let writer = Writer { query, cursor, rows, written: head.len() as u64, bound, counted, done: false };
    let first = stream::once(async move { Ok::<_, std::io::Error>(Bytes::from(first)) });
    let rest = stream::unfold(writer, |mut writer| async move { writer.chunk().await.map(|chunk| (chunk, writer)) });
    Body::from_stream(futures_util::StreamExt::chain(first, rest))
}
