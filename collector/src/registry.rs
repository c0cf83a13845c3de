//! The tenants to measure, from the platform's registry: active tenants whose isolation model is
//! recorded (`schemas/migrations/platform/0002_tenant_isolation.sql`).

use sqlx::PgPool;

/// How a tenant's data is kept apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Isolation {
    /// A database of its own, at this URL.
    Database { url: String },
    /// Schema `schema` of the database at `url`.
    Schema { url: String, schema: String },
    /// Rows carrying the tenant id in the shared tables of the database at `url`.
    Shared { url: String },
}

impl Isolation {
    pub fn model(&self) -> &'static str {
        match self {
            Isolation::Database { .. } => "database",
            Isolation::Schema { .. } => "schema",
            Isolation::Shared { .. } => "shared",
        }
    }

    pub fn url(&self) -> &str {
        match self {
            Isolation::Database { url } | Isolation::Schema { url, .. } | Isolation::Shared { url } => url,
        }
    }
}

/// A tenant to measure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    pub id: String,
    pub isolation: Isolation,
}

/// A registry row the collector cannot measure, and why (reported, never fatal).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unmeasurable {
    pub id: String,
    pub reason: &'static str,
}

#[derive(Debug, sqlx::FromRow)]
struct Row {
    id: String,
    isolation_model: Option<String>,
    schema_name: Option<String>,
    database_url: Option<String>,
}

/// Active tenants with a recorded isolation model; `shared_url` stands in for a missing
/// `database_url` of `schema` and `shared` tenants.
pub async fn load(pool: &PgPool, shared_url: &str) -> Result<(Vec<Tenant>, Vec<Unmeasurable>), sqlx::Error> {
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT id, isolation_model, schema_name, database_url FROM tenant \
         WHERE status = 'active' AND isolation_model IS NOT NULL ORDER BY id",
    )
    .fetch_all(pool)
    .await?;
    let (mut tenants, mut unmeasurable) = (Vec::new(), Vec::new());
    for row in rows {
        let shared = || row.database_url.clone().or_else(|| (!shared_url.is_empty()).then(|| shared_url.to_owned()));
        let isolation = match row.isolation_model.as_deref() {
            Some("database") => {
                row.database_url.clone().map(|url| Isolation::Database { url }).ok_or("no_database_url")
            }
            Some("schema") => match (shared(), row.schema_name.clone()) {
                (Some(url), Some(schema)) => Ok(Isolation::Schema { url, schema }),
                (None, _) => Err("no_database_url"),
                (_, None) => Err("no_schema_name"),
            },
            Some("shared") => shared().map(|url| Isolation::Shared { url }).ok_or("no_database_url"),
            _ => Err("unknown_isolation_model"),
        };
        match isolation {
            Ok(isolation) => tenants.push(Tenant { id: row.id, isolation }),
            Err(reason) => unmeasurable.push(Unmeasurable { id: row.id, reason }),
        }
    }
    Ok((tenants, unmeasurable))
}
