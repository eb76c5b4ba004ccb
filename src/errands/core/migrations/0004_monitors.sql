-- Monitors (a claimable table: due_at is the next check's slot) and their check results.

CREATE TABLE monitors (
    id          uuid PRIMARY KEY,
    url         text NOT NULL UNIQUE,
    method      text NOT NULL DEFAULT 'GET' CHECK (method IN ('GET', 'HEAD')),
    interval_s  integer NOT NULL CHECK (interval_s >= 5),
    timeout_s   double precision NOT NULL CHECK (timeout_s > 0),
    regex       text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    due_at      timestamptz,
    lease_owner text,
    lease_until timestamptz
);

CREATE INDEX monitors_due_at ON monitors (due_at) WHERE due_at IS NOT NULL;

-- One row per check, partitioned by day so retention drops whole partitions. Partitions are
-- created by the sink (ahead of time and on demand). Columns are ordered widest first so rows
-- carry no alignment padding. The primary key serves both the per-monitor time-range reads and
-- idempotency: a redelivered message has the same monitor, time and check id.
CREATE TABLE checks (
    monitor_id       uuid NOT NULL,
    check_id         uuid NOT NULL,
    checked_at       timestamptz NOT NULL,
    response_time_ms real,
    dns_ms           real,
    connect_ms       real,
    tls_ms           real,
    first_byte_ms    real,
    status_code      smallint,
    up               boolean NOT NULL,
    regex_matched    boolean,
    error_kind       text,
    error            text,
    PRIMARY KEY (monitor_id, checked_at, check_id)
) PARTITION BY RANGE (checked_at);

-- Per monitor per UTC hour, kept in step with `checks` by the sink in the same transaction.
-- latency_histogram[i] counts responses in bucket i of the fixed bounds in monitors/results.py.
CREATE TABLE check_rollups (
    monitor_id        uuid NOT NULL,
    hour              timestamptz NOT NULL,
    checks            integer NOT NULL,
    up                integer NOT NULL,
    responses         integer NOT NULL,
    sum_ms            double precision NOT NULL,
    min_ms            real,
    max_ms            real,
    latency_histogram integer[] NOT NULL,
    PRIMARY KEY (monitor_id, hour)
);

CREATE INDEX check_rollups_hour ON check_rollups (hour);

-- Counts latency buckets into a histogram of `size` buckets (bucket numbers from width_bucket,
-- 0 to size - 1), so a rollup's histogram is one aggregate in the sink's GROUP BY.
CREATE FUNCTION latency_histogram_add(histogram integer[], bucket integer, size integer)
RETURNS integer[]
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    IF histogram IS NULL THEN
        histogram := array_fill(0, ARRAY[size]);
    END IF;
    IF bucket IS NOT NULL THEN
        histogram[bucket + 1] := histogram[bucket + 1] + 1;
    END IF;
    RETURN histogram;
END
$$;

CREATE AGGREGATE latency_histogram(integer, integer) (
    SFUNC = latency_histogram_add,
    STYPE = integer[]
);
