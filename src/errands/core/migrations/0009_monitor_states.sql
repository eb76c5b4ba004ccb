-- Alert state moves to a table of its own, written only by sinks. The checker updates a
-- monitor's row at every check; sharing those rows made checker and sink wait on each other's
-- row locks. A monitor without a row here is 'new' with nothing pending.
CREATE TABLE monitor_states (
    monitor_id     uuid PRIMARY KEY REFERENCES monitors (id) ON DELETE CASCADE,
    state          text NOT NULL CHECK (state IN ('new', 'up', 'degraded', 'down')),
    state_since    timestamptz,
    pending_state  text CHECK (pending_state IN ('up', 'degraded', 'down')),
    pending_checks integer NOT NULL DEFAULT 0,
    pending_since  timestamptz,
    tls_warned_for timestamptz
);

INSERT INTO monitor_states (
       monitor_id, state, state_since, pending_state, pending_checks, pending_since,
       tls_warned_for
)
SELECT id, state, state_since, pending_state, pending_checks, pending_since, tls_warned_for
  FROM monitors
 WHERE state <> 'new' OR pending_state IS NOT NULL OR tls_warned_for IS NOT NULL;

ALTER TABLE monitors
    DROP COLUMN state,
    DROP COLUMN state_since,
    DROP COLUMN pending_state,
    DROP COLUMN pending_checks,
    DROP COLUMN pending_since,
    DROP COLUMN tls_warned_for;
