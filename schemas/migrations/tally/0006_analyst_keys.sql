-- Analyst keys: read every tenant's usage and limits (the query service, the console), act for none.
ALTER TABLE api_keys DROP CONSTRAINT api_keys_scope;
ALTER TABLE api_keys ADD CONSTRAINT api_keys_scope CHECK (
    (scope = 'tenant' AND tenant_id IS NOT NULL) OR (scope IN ('service', 'admin', 'analyst') AND tenant_id IS NULL)
);
