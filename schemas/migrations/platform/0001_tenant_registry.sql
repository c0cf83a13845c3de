-- The shape of the platform service's tenant registry, which Tally reads. The platform owns these
-- tables in production; tests and the local stack create them from this migration.
CREATE TABLE IF NOT EXISTS tenant (
    id                    TEXT PRIMARY KEY
                          CHECK (id ~ '^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$'),
    name                  TEXT NOT NULL,
    status                TEXT NOT NULL DEFAULT 'active'
                          CHECK (status IN ('active', 'suspended', 'deleted')),
    tier                  TEXT NOT NULL DEFAULT 'STANDARD'
                          CHECK (tier IN ('STANDARD', 'PREMIUM', 'ENTERPRISE')),
    -- Per-tenant overrides of the tier's limits: NULL keeps the default, -1 means unlimited.
    max_users             BIGINT CHECK (max_users >= -1),
    max_storage_bytes     BIGINT CHECK (max_storage_bytes >= -1),
    rate_limit_per_second INTEGER CHECK (rate_limit_per_second >= -1),
    rate_limit_burst      INTEGER CHECK (rate_limit_burst >= 1),
    -- Database-per-tenant: where this tenant's own database lives, if it has one.
    database_url          TEXT,
    created_at            TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at            TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS stripe_customers (
    tenant_id          TEXT PRIMARY KEY REFERENCES tenant (id) ON DELETE CASCADE,
    stripe_customer_id TEXT NOT NULL UNIQUE CHECK (stripe_customer_id ~ '^cus_[A-Za-z0-9]+$')
);
