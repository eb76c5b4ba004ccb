-- Monitors that tell someone: alert rules and alert state on monitors, notification channels,
-- incidents, the alerts each transition caused, and maintenance windows.

ALTER TABLE monitors
    ADD COLUMN name              text,  -- NULL: shown as the URL's host
    ADD COLUMN failure_threshold integer NOT NULL DEFAULT 3
        CHECK (failure_threshold BETWEEN 1 AND 100),
    ADD COLUMN success_threshold integer NOT NULL DEFAULT 1
        CHECK (success_threshold BETWEEN 1 AND 100),
    ADD COLUMN expected_status   text NOT NULL DEFAULT '200-399',
    ADD COLUMN max_response_ms   real CHECK (max_response_ms > 0),
    ADD COLUMN regex_mode        text NOT NULL DEFAULT 'must_match'
        CHECK (regex_mode IN ('must_match', 'must_not_match')),
    ADD COLUMN tls_expiry_days   integer NOT NULL DEFAULT 14
        CHECK (tls_expiry_days BETWEEN 0 AND 365),
    ADD COLUMN paused            boolean NOT NULL DEFAULT false,
    ADD COLUMN public            boolean NOT NULL DEFAULT false,
    -- Alert state, written only by the sink as it stores checks. `pending_state` is the state
    -- the latest `pending_checks` checks agree on while it differs from `state`, and
    -- `pending_since` the time of the first of them.
    ADD COLUMN state             text NOT NULL DEFAULT 'new'
        CHECK (state IN ('new', 'up', 'degraded', 'down')),
    ADD COLUMN state_since       timestamptz,
    ADD COLUMN pending_state     text CHECK (pending_state IN ('up', 'degraded', 'down')),
    ADD COLUMN pending_checks    integer NOT NULL DEFAULT 0,
    ADD COLUMN pending_since     timestamptz,
    -- The certificate expiry last warned about, so each certificate is warned about once.
    ADD COLUMN tls_warned_for    timestamptz;

-- When the certificate of an https target expires, as the check saw it.
ALTER TABLE checks ADD COLUMN tls_expires_at timestamptz;

-- `target` is the webhook URL (kind 'webhook') or the Apprise URL (kind 'apprise').
CREATE TABLE channels (
    id         uuid PRIMARY KEY,
    name       text NOT NULL,
    kind       text NOT NULL CHECK (kind IN ('webhook', 'apprise')),
    target     text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE monitor_channels (
    monitor_id uuid NOT NULL REFERENCES monitors (id) ON DELETE CASCADE,
    channel_id uuid NOT NULL REFERENCES channels (id) ON DELETE CASCADE,
    PRIMARY KEY (monitor_id, channel_id)
);

CREATE INDEX monitor_channels_channel ON monitor_channels (channel_id);

-- A time a monitor was down or degraded; at most one is open (resolved_at NULL) per monitor.
CREATE TABLE incidents (
    id          uuid PRIMARY KEY,
    monitor_id  uuid NOT NULL REFERENCES monitors (id) ON DELETE CASCADE,
    state       text NOT NULL CHECK (state IN ('down', 'degraded')),
    cause       text NOT NULL,
    started_at  timestamptz NOT NULL,
    resolved_at timestamptz
);

CREATE UNIQUE INDEX incidents_one_open ON incidents (monitor_id) WHERE resolved_at IS NULL;
CREATE INDEX incidents_monitor ON incidents (monitor_id, started_at DESC);

-- One row per transition (or certificate warning), written with the check that caused it. Its
-- id is derived from that check, so storing the check again can never make a second alert.
-- `held`: it fell in a maintenance window, so it was recorded but sent to no channel.
CREATE TABLE alerts (
    id          uuid PRIMARY KEY,
    monitor_id  uuid NOT NULL REFERENCES monitors (id) ON DELETE CASCADE,
    incident_id uuid REFERENCES incidents (id) ON DELETE SET NULL,
    check_id    uuid NOT NULL,
    type        text NOT NULL
        CHECK (type IN ('monitor.down', 'monitor.up', 'monitor.degraded', 'monitor.tls_expiring')),
    from_state  text NOT NULL,
    to_state    text NOT NULL,
    held        boolean NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX alerts_monitor ON alerts (monitor_id, created_at);

-- Notifications are held while a window is open: from starts_at to ends_at (one-off), or for
-- duration_s after each time the cron expression names (recurring, in UTC, from starts_at on).
-- monitor_ids NULL means every monitor.
CREATE TABLE maintenance_windows (
    id          uuid PRIMARY KEY,
    monitor_ids uuid[],
    starts_at   timestamptz NOT NULL,
    ends_at     timestamptz,
    cron        text,
    duration_s  integer CHECK (duration_s > 0),
    created_at  timestamptz NOT NULL DEFAULT now(),
    CHECK ((cron IS NULL) = (duration_s IS NULL)),
    CHECK (cron IS NOT NULL OR ends_at > starts_at)
);
