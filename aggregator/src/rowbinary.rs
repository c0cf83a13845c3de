//! The RowBinary encoding of the rows a fenced insert sends (see [`crate::fence`]): the
//! `clickhouse` crate encodes rows only for the `INSERT INTO t(cols) FORMAT …` statement it writes
//! itself, and a fenced insert is an `INSERT … SELECT … FROM input(…)` of our own.
//!
//! Each row type states the `input()` structure it is encoded in; the aggregator's tests read back
//! what the server stored and compare it with what was sent.

use tally_kit::rollups::RollupRow;

use crate::batch::EventRow;

/// A row encodable as RowBinary in the column order of [`RowBinary::STRUCTURE`].
pub trait RowBinary {
    /// The `input()` structure: `name Type, …`, in encoding order.
    const STRUCTURE: &'static str;
    /// The column names of the structure, comma-separated.
    const COLUMNS: &'static str;
    fn encode(&self, out: &mut Vec<u8>);
}

fn varint(mut n: u64, out: &mut Vec<u8>) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn string(s: &str, out: &mut Vec<u8>) {
    varint(s.len() as u64, out);
    out.extend_from_slice(s.as_bytes());
}

impl RowBinary for EventRow {
    const STRUCTURE: &'static str = "tenant_id String, event_id String, metric String, value Decimal(38, 9), \
         timestamp DateTime64(9), source String, attributes Map(String, String), \
         ingested_at DateTime64(3), kafka_partition UInt32, kafka_offset UInt64";
    const COLUMNS: &'static str =
        "tenant_id, event_id, metric, value, timestamp, source, attributes, ingested_at, kafka_partition, kafka_offset";

    fn encode(&self, out: &mut Vec<u8>) {
        string(&self.tenant_id, out);
        string(&self.event_id, out);
        string(&self.metric, out);
        out.extend_from_slice(&self.value.to_le_bytes());
        out.extend_from_slice(&self.timestamp.to_le_bytes());
        string(&self.source, out);
        varint(self.attributes.len() as u64, out);
        for (key, value) in &self.attributes {
            string(key, out);
            string(value, out);
        }
        out.extend_from_slice(&self.ingested_at.to_le_bytes());
        out.extend_from_slice(&self.kafka_partition.to_le_bytes());
        out.extend_from_slice(&self.kafka_offset.to_le_bytes());
    }
}

impl RowBinary for RollupRow {
    const STRUCTURE: &'static str = "granularity String, window_start DateTime, tenant_id String, \
         metric String, events UInt64, value_sum Decimal(38, 9), value_max Decimal(38, 9), \
         latest Tuple(DateTime64(9), String, Decimal(38, 9)), distinct_values Array(String)";
    const COLUMNS: &'static str =
        "granularity, window_start, tenant_id, metric, events, value_sum, value_max, latest, distinct_values";

    fn encode(&self, out: &mut Vec<u8>) {
        string(self.granularity, out);
        out.extend_from_slice(&self.window_start.to_le_bytes());
        string(&self.tenant_id, out);
        string(&self.metric, out);
        out.extend_from_slice(&self.events.to_le_bytes());
        out.extend_from_slice(&self.value_sum.to_le_bytes());
        out.extend_from_slice(&self.value_max.to_le_bytes());
        out.extend_from_slice(&self.latest.0.to_le_bytes());
        string(&self.latest.1, out);
        out.extend_from_slice(&self.latest.2.to_le_bytes());
        varint(self.distinct_values.len() as u64, out);
        for value in &self.distinct_values {
            string(value, out);
        }
    }
}

/// Every row encoded, one after another.
pub fn encode_all<T: RowBinary>(rows: &[T]) -> Vec<u8> {
    let mut out = Vec::with_capacity(rows.len() * 128);
    for row in rows {
        row.encode(&mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_are_leb128() {
        let encoded = |n| {
            let mut out = Vec::new();
            varint(n, &mut out);
            out
        };
        assert_eq!(encoded(0), [0]);
        assert_eq!(encoded(127), [127]);
        assert_eq!(encoded(128), [0x80, 1]);
        assert_eq!(encoded(300), [0xac, 0x02]);
    }

    #[test]
    fn the_structure_names_the_columns_in_order() {
        for (structure, columns) in
            [(EventRow::STRUCTURE, EventRow::COLUMNS), (RollupRow::STRUCTURE, RollupRow::COLUMNS)]
        {
            // It is quoted as a SQL string literal in `input('…')`; times are instants, so the
            // time zones of the tables' columns do not matter to the encoding.
            assert!(!structure.contains('\''), "{structure}");
            let mut depth = 0;
            let mut names = Vec::new();
            let mut current = String::new();
            for c in structure.chars() {
                match c {
                    '(' => depth += 1,
                    ')' => depth -= 1,
                    ',' if depth == 0 => {
                        names.push(current.split_whitespace().next().unwrap_or_default().to_owned());
                        current.clear();
                        continue;
                    }
                    _ => {}
                }
                current.push(c);
            }
            names.push(current.split_whitespace().next().unwrap_or_default().to_owned());
            assert_eq!(names.join(", "), columns);
        }
    }
}
