-- BAMS catalog v1 (SQLite). Times are Unix milliseconds (BIGINT) so the same queries run on
-- SQLite and PostgreSQL through sqlx's Any driver; lists are JSON text.
CREATE TABLE users (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    username      TEXT    NOT NULL UNIQUE,
    password_hash TEXT    NOT NULL,
    role          TEXT    NOT NULL,
    disabled      BIGINT  NOT NULL DEFAULT 0,
    created_at    BIGINT  NOT NULL
);

-- Login sessions and API tokens: only a hash of the secret is stored.
CREATE TABLE tokens (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id      BIGINT  NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    kind         TEXT    NOT NULL,            -- session | api
    name         TEXT    NOT NULL,
    secret_hash  TEXT    NOT NULL UNIQUE,
    scope        TEXT    NOT NULL,            -- full | append-only
    csrf         TEXT,
    created_at   BIGINT  NOT NULL,
    expires_at   BIGINT,
    last_used_at BIGINT,
    revoked_at   BIGINT
);
CREATE INDEX tokens_user ON tokens(user_id);

CREATE TABLE repositories (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    name       TEXT   NOT NULL UNIQUE,
    url        TEXT   NOT NULL,
    key_file   TEXT   NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE retention_policies (
    id     INTEGER PRIMARY KEY AUTOINCREMENT,
    name   TEXT NOT NULL UNIQUE,
    policy TEXT NOT NULL
);

CREATE TABLE jobs (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    name          TEXT   NOT NULL UNIQUE,
    kind          TEXT   NOT NULL,
    agent_id      BIGINT,
    repository_id BIGINT NOT NULL REFERENCES repositories(id),
    paths         TEXT   NOT NULL,
    excludes      TEXT   NOT NULL,
    level         TEXT   NOT NULL,
    retention     TEXT,
    options       TEXT   NOT NULL,
    enabled       BIGINT NOT NULL DEFAULT 1,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL
);

CREATE TABLE schedules (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id      BIGINT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    cron        TEXT   NOT NULL,
    timezone    TEXT   NOT NULL,
    level       TEXT,
    enabled     BIGINT NOT NULL DEFAULT 1,
    next_run_at BIGINT,
    last_run_at BIGINT
);
CREATE INDEX schedules_due ON schedules(next_run_at);

CREATE TABLE runs (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id           BIGINT REFERENCES jobs(id) ON DELETE SET NULL,
    kind             TEXT   NOT NULL,
    level            TEXT,
    status           TEXT   NOT NULL,
    triggered_by     TEXT   NOT NULL,
    server_id        TEXT,
    queued_at        BIGINT NOT NULL,
    started_at       BIGINT,
    finished_at      BIGINT,
    files            BIGINT NOT NULL DEFAULT 0,
    bytes            BIGINT NOT NULL DEFAULT 0,
    new_bytes        BIGINT NOT NULL DEFAULT 0,
    errors           BIGINT NOT NULL DEFAULT 0,
    snapshot_id      TEXT,
    message          TEXT,
    log              TEXT   NOT NULL DEFAULT '',
    cancel_requested BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX runs_job ON runs(job_id, id);
CREATE INDEX runs_status ON runs(status);

CREATE TABLE snapshots (
    repository_id BIGINT NOT NULL REFERENCES repositories(id) ON DELETE CASCADE,
    id            TEXT   NOT NULL,
    time          BIGINT NOT NULL,
    host          TEXT   NOT NULL,
    paths         TEXT   NOT NULL,
    tags          TEXT   NOT NULL,
    parent        TEXT,
    files         BIGINT NOT NULL,
    bytes         BIGINT NOT NULL,
    new_bytes     BIGINT NOT NULL,
    partial       BIGINT NOT NULL,
    job           TEXT,
    PRIMARY KEY (repository_id, id)
);
CREATE INDEX snapshots_time ON snapshots(repository_id, time);

CREATE TABLE audit (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    time        BIGINT NOT NULL,
    username    TEXT,
    method      TEXT   NOT NULL,
    route       TEXT   NOT NULL,
    target      TEXT,
    status      BIGINT NOT NULL,
    result      TEXT   NOT NULL,
    remote_addr TEXT
);
CREATE INDEX audit_time ON audit(time);
