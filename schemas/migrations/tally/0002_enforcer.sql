-- The enforcer's reservations: users and storage held for an operation in progress (reserve →
-- commit / release, with expiry). Replicas serialize reservations of one (tenant, kind) with a
-- transaction-scoped advisory lock, so concurrent requests can never overshoot a cap together.
CREATE TABLE reservations (
    id           TEXT PRIMARY KEY,
    tenant_id    TEXT NOT NULL,
    kind         TEXT NOT NULL CHECK (kind IN ('users', 'storage')),
    amount       BIGINT NOT NULL CHECK (amount > 0),
    state        TEXT NOT NULL CHECK (state IN ('held', 'committed')),
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    committed_at TIMESTAMPTZ,
    expires_at   TIMESTAMPTZ NOT NULL
);

CREATE INDEX reservations_outstanding ON reservations (tenant_id, kind, expires_at);

-- Tells listening enforcers that a tenant's registry row changed (tier, status, overrides), so a
-- change takes effect at once instead of at the next full reload. The platform's `tenant` table
-- is expected in the `public` schema.
CREATE FUNCTION notify_tenant_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('tally_tenant_changed', OLD.id);
    ELSE
        PERFORM pg_notify('tally_tenant_changed', NEW.id);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER tally_tenant_changed
    AFTER INSERT OR UPDATE OR DELETE ON public.tenant
    FOR EACH ROW EXECUTE FUNCTION notify_tenant_change();
