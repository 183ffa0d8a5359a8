-- Lock objects written through the repository endpoint by restricted (append-only, agent)
-- credentials: such a credential may delete only the locks it wrote, never another client's
-- (a backup's or prune's). Rows go with the lock; leftovers of crashed clients expire.
CREATE TABLE endpoint_locks (
    repository_id BIGINT NOT NULL REFERENCES repositories(id) ON DELETE CASCADE,
    lock_key      TEXT   NOT NULL,
    token_id      BIGINT NOT NULL,
    created_at    BIGINT NOT NULL,
    PRIMARY KEY (repository_id, lock_key)
);
