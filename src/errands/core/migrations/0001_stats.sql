-- API usage stats. Each process adds its own counts to its own row per route and minute, so no
-- row is written by two processes and counting never serialises requests; readers sum the rows.
-- `histogram` holds request counts per log-spaced latency bin (bin edges in errands.stats), so
-- percentiles across processes come from summed bins. Minute rows older than two hours are
-- folded into one row per route and day with process '' to keep the table small.
CREATE TABLE stats_buckets (
    method    text NOT NULL,
    route     text NOT NULL,
    minute    timestamptz NOT NULL,
    process   text NOT NULL,
    count     bigint NOT NULL,
    errors    bigint NOT NULL,
    sum_ms    double precision NOT NULL,
    histogram bigint[] NOT NULL,
    PRIMARY KEY (method, route, minute, process)
);

CREATE INDEX stats_buckets_minute ON stats_buckets (minute);

-- When this database began counting: "since start" in GET /stats means since then.
CREATE TABLE stats_origin (
    started_at timestamptz NOT NULL DEFAULT now()
);

INSERT INTO stats_origin DEFAULT VALUES;
