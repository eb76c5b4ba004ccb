-- Webhook timers. A pending timer is due for firing at due_at (its fire time, or the time of its
-- next retry); due_at is NULL once it is fired, failed or cancelled, so the claim index only holds
-- the pending ones.
CREATE TABLE timers (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    url         text NOT NULL,
    fire_at     timestamptz NOT NULL,
    status      text NOT NULL DEFAULT 'pending'
                CHECK (status IN ('pending', 'fired', 'failed', 'cancelled')),
    attempts    integer NOT NULL DEFAULT 0,
    fired_at    timestamptz,
    last_error  text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    due_at      timestamptz,
    lease_owner text,
    lease_until timestamptz,
    CHECK ((status = 'pending') = (due_at IS NOT NULL))
);

CREATE INDEX timers_due_at ON timers (due_at) WHERE due_at IS NOT NULL;
