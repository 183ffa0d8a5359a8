-- Dashboard counters: finished runs summed per hour, maintained when a run ends, so the
-- dashboard reads at most 25 rows however many runs there are.
CREATE TABLE run_hourly (
    hour      BIGINT NOT NULL PRIMARY KEY,   -- Unix ms of the hour's start
    succeeded BIGINT NOT NULL DEFAULT 0,
    failed    BIGINT NOT NULL DEFAULT 0,     -- failed or interrupted
    new_bytes BIGINT NOT NULL DEFAULT 0
);
