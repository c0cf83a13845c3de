-- Tally's own tables live in the `tally` schema (the migrator runs with search_path = tally).

-- Keys that authenticate emitters. Only a SHA-256 of the secret is stored; `prefix` is the
-- public part used to find the row and to name the key in logs. A NULL tenant_id is an admin
-- (service) key that may write for any tenant.
CREATE TABLE api_keys (
    prefix      TEXT PRIMARY KEY CHECK (length(prefix) BETWEEN 8 AND 32),
    secret_hash BYTEA NOT NULL CHECK (length(secret_hash) = 32),
    tenant_id   TEXT,
    label       TEXT NOT NULL DEFAULT '',
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    revoked_at  TIMESTAMPTZ
);

CREATE INDEX api_keys_tenant ON api_keys (tenant_id) WHERE revoked_at IS NULL;
