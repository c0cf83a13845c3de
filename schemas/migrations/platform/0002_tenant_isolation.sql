-- How the platform isolates each tenant's data, as its registry records it (read by the usage
-- collector). NULL keeps a tenant unmeasured (registries older than this column).
--   database: the tenant has a database of its own, at database_url;
--   schema:   the tenant's tables are in schema schema_name of the database at database_url
--             (or the collector's [collector] shared_database_url);
--   shared:   the tenant's rows carry its id in shared tables under row-level security.
ALTER TABLE tenant ADD COLUMN IF NOT EXISTS isolation_model TEXT
    CHECK (isolation_model IN ('database', 'schema', 'shared'));
ALTER TABLE tenant ADD COLUMN IF NOT EXISTS schema_name TEXT
    CHECK (schema_name ~ '^[a-z_][a-z0-9_]{0,62}$');
