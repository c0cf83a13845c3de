-- billing-sync's ledger, second form: Stripe takes whole-number meter values only.
--
-- A billing stream is one (tenant, metric). Its head in `billing_streams` holds the exact Tally
-- amount the ledger has accounted for (`exact_total`) and the whole units sent for it
-- (`value_total`); every write keeps value_total = floor(exact_total / unit), so the fraction
-- below one unit is carried to the next window, never lost and never rounded twice.
-- Each ledger row accounts `amount` (exact, may be negative) for one window and sends `value`
-- whole units: an `event` (a meter event), a `cancel` (a meter event adjustment cancelling the
-- event whose identifier is in `cancels`; value is minus that event's value) or a `carry` (no
-- Stripe call: the amount stayed below one unit). The head and the row are written in one
-- statement, guarded by the head's `version`, so two runs never both write a stream.
ALTER TABLE billing_ledger ADD COLUMN granularity TEXT;
-- Rows from before: a stream whose windows all start at midnight was billed by day. (An hourly
-- stream with usage only at midnight hours reads as daily too, which bills the same: a day's
-- granularity is fixed by its first row and its later hours join that day's window.)
UPDATE billing_ledger l SET granularity = CASE
    WHEN EXISTS (
        SELECT 1 FROM billing_ledger o
        WHERE o.tenant_id = l.tenant_id AND o.metric = l.metric
          AND o.window_start <> date_trunc('day', o.window_start AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
    ) THEN 'hour' ELSE 'day' END;
ALTER TABLE billing_ledger ALTER COLUMN granularity SET NOT NULL;
ALTER TABLE billing_ledger ADD CONSTRAINT billing_ledger_granularity CHECK (granularity IN ('hour', 'day'));
ALTER TABLE billing_ledger DROP CONSTRAINT billing_ledger_pkey;
ALTER TABLE billing_ledger ADD PRIMARY KEY (tenant_id, metric, granularity, window_start, seq);

ALTER TABLE billing_ledger ADD COLUMN kind TEXT NOT NULL DEFAULT 'event'
    CHECK (kind IN ('event', 'cancel', 'carry'));
ALTER TABLE billing_ledger ADD COLUMN cancels TEXT;
-- Rows from before were sent as the exact amount; the whole part is what Stripe could hold.
ALTER TABLE billing_ledger ADD COLUMN value BIGINT;
UPDATE billing_ledger SET value = floor(amount::numeric);
ALTER TABLE billing_ledger ALTER COLUMN value SET NOT NULL;

ALTER TABLE billing_ledger DROP CONSTRAINT billing_ledger_state_check;
ALTER TABLE billing_ledger ADD CONSTRAINT billing_ledger_state
    CHECK (state IN ('pending', 'acknowledged', 'refused'));
-- A refused row: Stripe's error code and when; it no longer counts, and the window is tried
-- again after `refusal_retry_minutes` or once the tenant's Stripe customer changes.
ALTER TABLE billing_ledger ADD COLUMN refusal_code TEXT;
ALTER TABLE billing_ledger ADD COLUMN refusal_message TEXT;
ALTER TABLE billing_ledger ADD COLUMN refused_at TIMESTAMPTZ;
CREATE INDEX billing_ledger_refused ON billing_ledger (window_start) WHERE state = 'refused';

CREATE TABLE billing_streams (
    tenant_id   TEXT NOT NULL,
    metric      TEXT NOT NULL,
    -- Tally's amount per whole unit sent, exact decimal text.
    unit        TEXT NOT NULL,
    exact_total TEXT NOT NULL,
    value_total BIGINT NOT NULL,
    version     BIGINT NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, metric)
);
INSERT INTO billing_streams (tenant_id, metric, unit, exact_total, value_total, version)
SELECT tenant_id, metric, '1', sum(amount::numeric)::text, sum(value), 1
FROM billing_ledger WHERE state <> 'refused' GROUP BY tenant_id, metric;
