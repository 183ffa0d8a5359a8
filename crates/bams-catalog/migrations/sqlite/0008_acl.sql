-- Access control entries: a role for one user on an object path (/repositories/NAME,
-- /pools/NAME, /appliance/tape, …), refining the user's global role there and, with
-- propagate, below it. The server owns what paths and roles mean (bams-server::policy).
CREATE TABLE acl_entries (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    path       TEXT   NOT NULL,
    user_id    BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    role       TEXT   NOT NULL,
    propagate  BIGINT NOT NULL DEFAULT 1,
    created_at BIGINT NOT NULL,
    UNIQUE (path, user_id)
);
