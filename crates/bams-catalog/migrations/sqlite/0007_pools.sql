-- Pools: a named target repository with its retention and limits. Jobs may name a pool
-- instead of a repository; the pool's repository is copied into jobs.repository_id (kept in
-- step when the pool moves) so the run queue and its per-repository limits stay one lookup.
CREATE TABLE pools (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    name          TEXT   NOT NULL UNIQUE,
    repository_id BIGINT NOT NULL UNIQUE REFERENCES repositories(id),
    retention     TEXT,
    max_bytes     BIGINT,
    max_snapshots BIGINT,
    description   TEXT   NOT NULL DEFAULT '',
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL
);
ALTER TABLE jobs ADD COLUMN pool_id BIGINT REFERENCES pools(id);

-- When a scheduled run was due: the scheduling delay is started_at - scheduled_for.
ALTER TABLE runs ADD COLUMN scheduled_for BIGINT;
