-- What a key may do. `tenant`: act for its own tenant only (send its usage, check, reserve,
-- commit and release for it, read its limits and denials). `service`: a trusted platform service
-- (API gateway, Envoy, an emitter for many tenants) that may send usage for and check any tenant,
-- but not read tenants' limits or denials. `admin`: everything, for every tenant.
ALTER TABLE api_keys ADD COLUMN scope TEXT;
UPDATE api_keys SET scope = CASE WHEN tenant_id IS NULL THEN 'admin' ELSE 'tenant' END;
ALTER TABLE api_keys ALTER COLUMN scope SET NOT NULL;
ALTER TABLE api_keys ADD CONSTRAINT api_keys_scope CHECK (
    (scope = 'tenant' AND tenant_id IS NOT NULL) OR (scope IN ('service', 'admin') AND tenant_id IS NULL)
);

-- Storage alerts that fired and are still standing: a tenant's row is inserted by the one
-- replica that sees the crossing first (ON CONFLICT DO NOTHING), so the alert fires once across
-- replicas and restarts, and is deleted when the tenant falls back below the alert level.
CREATE TABLE storage_alerts (
    tenant_id     TEXT PRIMARY KEY,
    storage_bytes BIGINT NOT NULL,
    cap_bytes     BIGINT NOT NULL,
    fired_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
