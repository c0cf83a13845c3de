//! Versioned database schemas.
//!
//! * ClickHouse: [`CLICKHOUSE_MIGRATIONS`], applied in order by `tally-kit` and recorded with a
//!   checksum in the `tally_schema_migrations` table; every statement is idempotent
//!   (`IF NOT EXISTS`, or guarded, see [`Statement`]) so a crash half-way through a migration is
//!   repaired by applying it again.
//! * PostgreSQL: `migrations/platform` (the shape of the platform service's `tenant` and
//!   `stripe_customers` tables, for tests and the local stack) and `migrations/tally` (Tally's own
//!   tables, in the [`TALLY_PG_SCHEMA`] schema), applied with sqlx by `tally-kit`.

/// Tally's own PostgreSQL schema; the platform's tables stay in theirs.
pub const TALLY_PG_SCHEMA: &str = "tally";
/// The ClickHouse table recording which DDL versions were applied.
pub const CLICKHOUSE_MIGRATIONS_TABLE: &str = "tally_schema_migrations";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClickHouseMigration {
    pub version: u32,
    pub name: &'static str,
    pub sql: &'static str,
}

impl ClickHouseMigration {
    /// The migration's statements: split on `;` at line ends, comment-only lines dropped. A
    /// `-- tally:unless-table <name>` line guards the statement after it (see [`Statement`]).
    pub fn statements(&self) -> Vec<Statement> {
        let mut statements = Vec::new();
        let mut current = String::new();
        let mut unless_table = None;
        for line in self.sql.lines() {
            let trimmed = line.trim();
            if let Some(table) = trimmed.strip_prefix(UNLESS_TABLE) {
                unless_table = Some(table.trim().to_owned());
                continue;
            }
            if trimmed.is_empty() || trimmed.starts_with("--") {
                continue;
            }
            current.push_str(line);
            current.push('\n');
            if trimmed.ends_with(';') {
                let sql = current.trim().trim_end_matches(';').trim().to_owned();
                statements.push(Statement { sql, unless_table: unless_table.take() });
                current.clear();
            }
        }
        if !current.trim().is_empty() {
            statements.push(Statement { sql: current.trim().to_owned(), unless_table });
        }
        statements
    }
}

const UNLESS_TABLE: &str = "-- tally:unless-table ";

/// One statement of a migration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    pub sql: String,
    /// Skip the statement when this table exists: makes a statement that cannot say
    /// `IF NOT EXISTS` itself (a `RENAME`) safe to apply again after a crash half-way.
    pub unless_table: Option<String>,
}

/// The tables a batch writes scoped to its Kafka partition: `<table>_p<partition>`, created as a
/// copy of `<table>_base`, all read through the Merge table `<table>` (migration 3).
pub const PARTITION_SCOPED_TABLES: [&str; 2] = ["usage_events", "usage_rollups"];

/// The table of `table` that Kafka partition `partition` writes.
pub fn partition_table(table: &str, partition: u32) -> String {
    format!("{table}_p{partition}")
}

/// Creates `table`'s table for `partition`, with the columns, engine and settings of its base.
pub fn create_partition_table(table: &str, partition: u32) -> String {
    format!("CREATE TABLE IF NOT EXISTS {} AS {table}_base", partition_table(table, partition))
}

pub const CLICKHOUSE_MIGRATIONS: &[ClickHouseMigration] = &[
    ClickHouseMigration { version: 1, name: "usage_events", sql: include_str!("../clickhouse/0001_usage_events.sql") },
    ClickHouseMigration { version: 2, name: "aggregator", sql: include_str!("../clickhouse/0002_aggregator.sql") },
    ClickHouseMigration {
        version: 3,
        name: "partition_scoped_tables",
        sql: include_str!("../clickhouse/0003_partition_scoped_tables.sql"),
    },
    ClickHouseMigration { version: 4, name: "claim_times", sql: include_str!("../clickhouse/0004_claim_times.sql") },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_increase_and_every_migration_has_statements() {
        let mut last = 0;
        for migration in CLICKHOUSE_MIGRATIONS {
            assert!(migration.version > last, "version {} out of order", migration.version);
            last = migration.version;
            let statements = migration.statements();
            assert!(!statements.is_empty(), "{} has no statements", migration.name);
            for Statement { sql, unless_table } in statements {
                assert!(!sql.ends_with(';'));
                // A RENAME says IF EXISTS but would rename the new table on a second run.
                let guarded = !sql.starts_with("RENAME") || unless_table.is_some();
                // Materializing a column already stored, or setting a column's type and default
                // to what they are, changes nothing on a second run.
                let idempotent =
                    ["IF NOT EXISTS", "IF EXISTS", "MODIFY SETTING", "MATERIALIZE COLUMN", "MODIFY COLUMN"]
                        .iter()
                        .any(|form| sql.contains(form));
                assert!(guarded && idempotent, "statement is not idempotent: {sql}");
                assert!(!sql.contains('?'), "the client would read ? as a bind placeholder: {sql}");
            }
        }
    }

    #[test]
    fn splitting_ignores_comments_and_keeps_multiline_statements() {
        let migration = ClickHouseMigration {
            version: 9,
            name: "t",
            sql: "-- a comment;\nCREATE TABLE IF NOT EXISTS a (\n  x UInt8\n) ENGINE = Memory;\n\nDROP TABLE IF EXISTS b;\n",
        };
        let statements = migration.statements();
        assert_eq!(statements.len(), 2);
        assert!(statements[0].sql.starts_with("CREATE TABLE IF NOT EXISTS a (\n  x UInt8\n)"));
        assert_eq!(statements[1].sql, "DROP TABLE IF EXISTS b");
        assert!(statements.iter().all(|s| s.unless_table.is_none()));
    }

    #[test]
    fn a_guard_line_applies_to_the_next_statement_only() {
        let migration = ClickHouseMigration {
            version: 9,
            name: "t",
            sql: "-- tally:unless-table b\nRENAME TABLE IF EXISTS a TO b;\nCREATE TABLE IF NOT EXISTS a AS b;\n",
        };
        let statements = migration.statements();
        assert_eq!(statements[0].unless_table.as_deref(), Some("b"));
        assert_eq!(statements[1].unless_table, None);
    }

    #[test]
    fn partition_tables_are_named_after_their_base() {
        assert_eq!(partition_table("usage_events", 7), "usage_events_p7");
        assert_eq!(
            create_partition_table("usage_rollups", 12),
            "CREATE TABLE IF NOT EXISTS usage_rollups_p12 AS usage_rollups_base"
        );
        let merge = CLICKHOUSE_MIGRATIONS.iter().find(|m| m.version == 3).map(|m| m.sql).unwrap_or_default();
        for table in PARTITION_SCOPED_TABLES {
            assert!(merge.contains(&format!("'^{table}_(base|p[0-9]+)$'")), "{table} reads every partition table");
        }
    }
}
