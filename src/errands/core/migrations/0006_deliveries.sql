-- Every webhook Errands sends is a delivery: a row sent by one loop on the scheduling core. The id
-- is the webhook-id receivers de-duplicate on, so it stays the same across retries. due_at is the
-- next attempt, NULL once the delivery is delivered, failed or cancelled.
CREATE TABLE deliveries (
    id              uuid PRIMARY KEY,
    source          text NOT NULL,
    transport       text NOT NULL DEFAULT 'http',
    url             text NOT NULL,
    method          text NOT NULL DEFAULT 'POST',
    headers         jsonb NOT NULL DEFAULT '{}',
    body            bytea NOT NULL DEFAULT '',
    status          text NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'delivered', 'failed', 'cancelled')),
    attempts        integer NOT NULL DEFAULT 0,
    -- attempts made before the delivery was last re-queued by hand: each re-queue gets a full round
    requeued_after  integer NOT NULL DEFAULT 0,
    scheduled_at    timestamptz NOT NULL,
    due_at          timestamptz,
    delivered_at    timestamptz,
    last_status     integer,
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    lease_owner     text,
    lease_until     timestamptz,
    CHECK ((status = 'pending') = (due_at IS NOT NULL))
);

CREATE INDEX deliveries_due_at ON deliveries (due_at) WHERE due_at IS NOT NULL;
-- Newest first per status, for keyset pages: (created_at, id) below the cursor.
CREATE INDEX deliveries_by_status ON deliveries (status, created_at DESC, id DESC);

-- The last 20 attempts of each delivery (older ones are pruned as new ones are logged).
CREATE TABLE delivery_attempts (
    delivery_id  uuid NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
    attempt      integer NOT NULL,
    attempted_at timestamptz NOT NULL,
    status_code  integer,
    latency_ms   double precision,
    error        text,
    PRIMARY KEY (delivery_id, attempt)
);
