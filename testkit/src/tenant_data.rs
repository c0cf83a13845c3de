//! Tenant data the way the platform keeps it, for the collector's tests and benchmark: databases
//! of their own, schemas in a shared database, rows in shared tables — each with a `users` table
//! (`active` flag) and a `documents` table with an index, filled to a chosen size.

use sqlx::PgPool;
use tally_kit::Secret;
use tally_kit::config::PostgresConfig;

/// The server's maintenance database URL (`TALLY_TEST_POSTGRES_URL`).
pub fn admin_url() -> String {
    crate::env_or("TALLY_TEST_POSTGRES_URL", "postgres://postgres:postgres@127.0.0.1:5432/postgres")
}

/// The URL of `database` on the test server.
pub fn url_of(database: &str) -> String {
    let admin = admin_url();
    let base = admin.rsplit_once('/').map_or(admin.as_str(), |(base, _)| base);
    format!("{base}/{database}")
}

/// A small pool to `url`.
pub fn pool_of(url: &str) -> PgPool {
    let config = PostgresConfig { url: Secret::new(url), max_connections: 2, ..PostgresConfig::default() };
    tally_kit::postgres::pool(&config).unwrap_or_else(|e| panic!("{e}"))
}

async fn run(pool: &PgPool, statement: &str) {
    if let Err(error) = sqlx::query(statement).execute(pool).await {
        panic!("{statement}: {error}");
    }
}

/// Creates database `name` with `users` (`users` active, `inactive` not) and `rows` documents
/// in `public`; returns its URL.
pub async fn create_database(name: &str, users: i64, inactive: i64, rows: i64) -> String {
    let admin = pool_of(&admin_url());
    run(&admin, &format!("CREATE DATABASE \"{name}\"")).await;
    admin.close().await;
    let url = url_of(name);
    let pool = pool_of(&url);
    fill(&pool, "public", users, inactive, rows).await;
    pool.close().await;
    url
}

/// Creates `schema` (if missing) with `users` and `documents` tables, filled.
pub async fn fill(pool: &PgPool, schema: &str, users: i64, inactive: i64, rows: i64) {
    run(pool, &format!("CREATE SCHEMA IF NOT EXISTS {schema}")).await;
    run(
        pool,
        &format!(
            "CREATE TABLE {schema}.users (id BIGSERIAL PRIMARY KEY, email TEXT NOT NULL, active BOOLEAN NOT NULL)"
        ),
    )
    .await;
    run(pool, &format!("CREATE TABLE {schema}.documents (id BIGSERIAL PRIMARY KEY, body TEXT NOT NULL)")).await;
    run(pool, &format!("CREATE INDEX ON {schema}.documents (body)")).await;
    run(
        pool,
        &format!(
            "INSERT INTO {schema}.users (email, active) SELECT 'u' || n, n <= {users} FROM generate_series(1, {}) n",
            users + inactive
        ),
    )
    .await;
    grow(pool, schema, rows).await;
}

/// Adds `rows` documents of about 1.3 kB each to `schema.documents`.
pub async fn grow(pool: &PgPool, schema: &str, rows: i64) {
    run(
        pool,
        &format!(
            "INSERT INTO {schema}.documents (body) SELECT repeat(md5(n::text), 40) FROM generate_series(1, {rows}) n"
        ),
    )
    .await;
}

/// Drops database `name` (closing its sessions).
pub async fn drop_database(name: &str) {
    let admin = pool_of(&admin_url());
    run(&admin, &format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")).await;
    admin.close().await;
}

/// A TCP port that accepts connections and never answers: a tenant server that hangs.
pub async fn silent_server() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("{e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    (addr, task)
}

/// A tenant row with how its data is isolated.
pub async fn register(registry: &PgPool, id: &str, model: &str, url: Option<&str>, schema: Option<&str>) {
    let inserted = sqlx::query(
        "INSERT INTO tenant (id, name, isolation_model, database_url, schema_name) VALUES ($1, $1, $2, $3, $4)",
    )
    .bind(id)
    .bind(model)
    .bind(url)
    .bind(schema)
    .execute(registry)
    .await;
    if let Err(error) = inserted {
        panic!("registering {id}: {error}");
    }
}

/// Thirty tenants in a registry of their own: `db-0`…`db-9` with databases of their own
/// (`n + 1` active users, `200 (n + 1)` documents), `schema-0`…`schema-9` in schemas
/// `tenant_<n>` of one shared database (`5n + 2` users, `300 (n + 1)` documents) and
/// `shared-0`…`shared-9` in its shared `public` tables (`n + 3` users, `100 (n + 1)` documents).
#[derive(Debug)]
pub struct TenantWorld {
    pub registry: crate::TestPostgres,
    /// The shared database's name and URL.
    pub shared: String,
    pub shared_url: String,
    /// The `db-<n>` tenants' database names, in order.
    pub own: Vec<String>,
}

impl TenantWorld {
    pub async fn create() -> Self {
        let registry = crate::TestPostgres::create().await;
        let shared = crate::unique_name("tally_shared").replace('-', "_");
        let shared_url = create_database(&shared, 0, 0, 0).await;
        let shared_pool = pool_of(&shared_url);
        run(&shared_pool, "ALTER TABLE users ADD COLUMN tenant_id TEXT").await;
        run(&shared_pool, "ALTER TABLE documents ADD COLUMN tenant_id TEXT").await;
        let mut own = Vec::new();
        for n in 0..10_i64 {
            let name = crate::unique_name(&format!("tally_tenant{n}")).replace('-', "_");
            let url = create_database(&name, n + 1, n % 3, 200 * (n + 1)).await;
            register(&registry.pool, &format!("db-{n}"), "database", Some(&url), None).await;
            own.push(name);
        }
        for n in 0..10_i64 {
            let schema = format!("tenant_{n}");
            fill(&shared_pool, &schema, 5 * n + 2, 1, 300 * (n + 1)).await;
            register(&registry.pool, &format!("schema-{n}"), "schema", None, Some(&schema)).await;
        }
        for n in 0..10_i64 {
            let tenant = format!("shared-{n}");
            run(
                &shared_pool,
                &format!(
                    "INSERT INTO public.users (email, active, tenant_id) \
                     SELECT 'u' || g, g <= {}, '{tenant}' FROM generate_series(1, {}) g",
                    n + 3,
                    n + 5
                ),
            )
            .await;
            run(
                &shared_pool,
                &format!(
                    "INSERT INTO public.documents (body, tenant_id) \
                     SELECT repeat(md5(g::text), 40), '{tenant}' FROM generate_series(1, {}) g",
                    100 * (n + 1)
                ),
            )
            .await;
            register(&registry.pool, &tenant, "shared", None, None).await;
        }
        shared_pool.close().await;
        Self { registry, shared, shared_url, own }
    }

    /// Drops every database of the world.
    pub async fn drop(self) {
        for name in &self.own {
            drop_database(name).await;
        }
        drop_database(&self.shared).await;
        self.registry.drop_database().await;
    }
}
