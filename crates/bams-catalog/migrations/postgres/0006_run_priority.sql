-- Run order and per-repository limits: a run carries its job's priority (higher first) and
-- repository, so the queue can be claimed in order and counted per repository.
ALTER TABLE runs ADD COLUMN priority BIGINT NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN repository_id BIGINT;
CREATE INDEX runs_queue ON runs(status, priority, id);
