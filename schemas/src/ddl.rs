//! Versioned database schemas.
//!
//! * ClickHouse: [`CLICKHOUSE_MIGRATIONS`], applied in order by `tally-kit` and recorded with a
//!   checksum in the `tally_schema_migrations` table; every statement is idempotent
//!   (`IF NOT EXISTS`) so a crash half-way through a migration is repaired by applying it again.
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
    /// The migration's statements: split on `;` at line ends, comment-only lines dropped.
    pub fn statements(&self) -> Vec<String> {
        let mut statements = Vec::new();
        let mut current = String::new();
        for line in self.sql.lines() {
            let trimmed = line.trim();
            if trimmed.is_empty() || trimmed.starts_with("--") {
                continue;
            }
            current.push_str(line);
            current.push('\n');
            if trimmed.ends_with(';') {
                let statement = current.trim().trim_end_matches(';').trim().to_owned();
                statements.push(statement);
                current.clear();
            }
        }
        if !current.trim().is_empty() {
            statements.push(current.trim().to_owned());
        }
        statements
    }
}

pub const CLICKHOUSE_MIGRATIONS: &[ClickHouseMigration] = &[
    ClickHouseMigration { version: 1, name: "usage_events", sql: include_str!("../clickhouse/0001_usage_events.sql") },
    ClickHouseMigration { version: 2, name: "aggregator", sql: include_str!("../clickhouse/0002_aggregator.sql") },
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
            for statement in statements {
                assert!(!statement.ends_with(';'));
                assert!(
                    statement.contains("IF NOT EXISTS") || statement.contains("IF EXISTS"),
                    "statement is not idempotent: {statement}"
                );
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
        assert!(statements[0].starts_with("CREATE TABLE IF NOT EXISTS a (\n  x UInt8\n)"));
        assert_eq!(statements[1], "DROP TABLE IF EXISTS b");
    }
}
