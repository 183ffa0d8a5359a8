-- Agents (file daemons): enrolled with a one-time token (only its hash is kept), then
-- authenticated with a per-agent credential that is an API token of the agent's own user
-- (scope 'agent': the repository endpoint and the agent session routes only).
CREATE TABLE agents (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    name              TEXT   NOT NULL UNIQUE,
    status            TEXT   NOT NULL,          -- pending | active | disabled | revoked
    enroll_hash       TEXT   UNIQUE,
    enroll_expires_at BIGINT,
    user_id           BIGINT REFERENCES users(id) ON DELETE SET NULL,
    token_id          BIGINT,
    hostname          TEXT,
    version           TEXT,
    last_seen_at      BIGINT,
    created_at        BIGINT NOT NULL,
    enrolled_at       BIGINT
);

-- Runs executed by an agent: which one, and its last sign of life.
ALTER TABLE runs ADD COLUMN agent_id BIGINT;
ALTER TABLE runs ADD COLUMN heartbeat_at BIGINT;
CREATE INDEX runs_agent ON runs(agent_id, status);
