-- Timers are sent by the delivery core: a timer's webhook is the delivery with the timer's id, and
-- its state (pending, delivered, failed, cancelled, attempts) is that delivery's. The timers table
-- keeps what only a timer has: its fire time as asked and its Idempotency-Key.
INSERT INTO deliveries (id, source, url, method, headers, body, status, attempts, scheduled_at,
                        due_at, delivered_at, last_error, created_at)
SELECT id,
       'timer',
       url,
       'POST',
       '{"Content-Type": "application/json"}',
       convert_to(json_build_object('id', id::text)::text, 'UTF8'),
       CASE status WHEN 'fired' THEN 'delivered' ELSE status END,
       attempts,
       fire_at,
       due_at,
       fired_at,
       last_error,
       created_at
  FROM timers;

DROP INDEX timers_due_at;
ALTER TABLE timers
    DROP COLUMN status,
    DROP COLUMN attempts,
    DROP COLUMN fired_at,
    DROP COLUMN last_error,
    DROP COLUMN due_at,
    DROP COLUMN lease_owner,
    DROP COLUMN lease_until,
    -- The key a client sent with POST /timer, and a digest of the body it sent with it: the same
    -- key within 24 hours returns this timer for the same body and is refused for another.
    ADD COLUMN idempotency_key text,
    ADD COLUMN request_digest bytea;

CREATE UNIQUE INDEX timers_idempotency_key ON timers (idempotency_key)
    WHERE idempotency_key IS NOT NULL;
-- GET /timers pages newest first.
CREATE INDEX timers_created ON timers (created_at DESC, id DESC);

-- Recurring schedules: each occurrence becomes a delivery of its own (a new webhook-id). due_at
-- is the next occurrence, NULL while paused; the "timers" loop claims due schedules on the
-- scheduling core and enqueues their deliveries.
CREATE TABLE schedules (
    id          uuid PRIMARY KEY,
    cron        text,
    timezone    text NOT NULL DEFAULT 'UTC',
    every_s     integer CHECK (every_s > 0),
    url         text NOT NULL,
    method      text NOT NULL DEFAULT 'POST',
    headers     jsonb NOT NULL DEFAULT '{}',
    body        bytea,
    paused      boolean NOT NULL DEFAULT false,
    next_at     timestamptz NOT NULL,
    due_at      timestamptz,
    fired       integer NOT NULL DEFAULT 0,
    last_fired_at timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now(),
    lease_owner text,
    lease_until timestamptz,
    CHECK ((cron IS NULL) <> (every_s IS NULL)),
    CHECK (paused = (due_at IS NULL))
);

CREATE INDEX schedules_due_at ON schedules (due_at) WHERE due_at IS NOT NULL;
CREATE INDEX schedules_created ON schedules (created_at DESC, id DESC);
