# Sourced by bench/api.sh and bench/ui.sh: the catalog seed of the latency benchmarks.
# shellcheck shell=bash
# Same seed on both databases: 20 jobs, 10,000 runs (mixed statuses) with their hourly totals,
# 1,000 snapshots.
seed_sql() { # $1 = expression turning integer i into a 64-hex snapshot id
  cat <<SQL
INSERT INTO jobs (name, kind, agent_id, repository_id, paths, excludes, level, retention, options, enabled, created_at, updated_at)
  SELECT 'job' || i, 'backup', NULL, 1, '["/srv/data' || i || '"]', '[]', 'incremental', NULL, '{}', 1, 0, 0
  FROM (WITH RECURSIVE n(i) AS (SELECT CAST(1 AS BIGINT) UNION ALL SELECT i + 1 FROM n WHERE i < 20) SELECT i FROM n) AS g;
INSERT INTO runs (job_id, kind, level, status, triggered_by, server_id, queued_at, started_at, finished_at, files, bytes, new_bytes, errors, snapshot_id, message, log)
  SELECT (SELECT MIN(id) FROM jobs) + (i % 20), 'backup', 'incremental',
         CASE WHEN i % 10 = 0 THEN 'failed' ELSE 'succeeded' END, 'schedule', 'bench',
         $(date +%s%3N) - (10000 - i) * 60000, $(date +%s%3N) - (10000 - i) * 60000, $(date +%s%3N) - (10000 - i) * 60000 + 30000,
         i * 10, i * 1000, i * 100, 0, NULL, 'seeded', 'seeded run log line'
  FROM (WITH RECURSIVE n(i) AS (SELECT CAST(1 AS BIGINT) UNION ALL SELECT i + 1 FROM n WHERE i < 10000) SELECT i FROM n) AS g;
INSERT INTO run_hourly (hour, succeeded, failed, new_bytes)
  SELECT finished_at - finished_at % 3600000, SUM(CASE WHEN status = 'succeeded' THEN 1 ELSE 0 END),
         SUM(CASE WHEN status = 'failed' THEN 1 ELSE 0 END), SUM(new_bytes)
  FROM runs GROUP BY finished_at - finished_at % 3600000;
-- Snapshots live in a second repository, so the server's start-up sync of "default" keeps them.
INSERT INTO repositories (name, url, key_file, created_at) VALUES ('bench', '/nonexistent', '/nonexistent', 0);
INSERT INTO snapshots (repository_id, id, time, host, paths, tags, parent, files, bytes, new_bytes, partial, job)
  SELECT (SELECT id FROM repositories WHERE name = 'bench'), $1, $(date +%s%3N) - i * 3600000, 'host' || (i % 10), '["/srv"]', '[]', NULL, i, i * 1000, i, 0, 'job' || (i % 20)
  FROM (WITH RECURSIVE n(i) AS (SELECT CAST(1 AS BIGINT) UNION ALL SELECT i + 1 FROM n WHERE i < 1000) SELECT i FROM n) AS g;
SQL
}

