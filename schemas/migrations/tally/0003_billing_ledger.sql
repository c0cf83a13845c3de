-- billing-sync's ledger: every meter event it sends to Stripe, written before sending (pending)
-- and marked acknowledged once Stripe has it. The acknowledged amounts of a (tenant, metric,
-- window) add up to what Stripe holds for it; a later, larger Tally total (late events) is sent
-- as one more row with the difference. Identifiers are deterministic, so a resend after a crash
-- is recognised by Stripe.
CREATE TABLE billing_ledger (
    tenant_id          TEXT NOT NULL,
    metric             TEXT NOT NULL,
    window_start       TIMESTAMPTZ NOT NULL,
    seq                INTEGER NOT NULL CHECK (seq >= 0),
    stripe_customer_id TEXT NOT NULL,
    event_name         TEXT NOT NULL,
    -- The value sent, exact decimal text (Stripe meter event payload values are strings).
    amount             TEXT NOT NULL,
    identifier         TEXT NOT NULL UNIQUE,
    state              TEXT NOT NULL CHECK (state IN ('pending', 'acknowledged')),
    created_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    acknowledged_at    TIMESTAMPTZ,
    PRIMARY KEY (tenant_id, metric, window_start, seq)
);

CREATE INDEX billing_ledger_pending ON billing_ledger (window_start) WHERE state = 'pending';
