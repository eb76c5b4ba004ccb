-- The sweeper's work on the scheduling core: one row per expiry, due when that expiry should
-- run next. However many processes run the sweeper, the one that claims a row runs its expiry
-- and moves it to the next interval, so each expiry runs once per interval.
CREATE TABLE sweeps (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name        text NOT NULL UNIQUE,
    due_at      timestamptz,
    lease_owner text,
    lease_until timestamptz
);
