-- Bare-metal images (issue 15): users own images; each version is a snapshot in an image
-- repository; image sets freeze (image, version, update) lists; machines network-boot them.
ALTER TABLE users ADD COLUMN email TEXT;

CREATE TABLE images (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    uuid          TEXT    NOT NULL UNIQUE,
    name          TEXT    NOT NULL,
    owner_id      BIGINT  NOT NULL REFERENCES users(id),
    kind          TEXT    NOT NULL,            -- system | boot | user-data | temporal | base
    disk          TEXT    NOT NULL,            -- target device on the machine, e.g. /dev/sda
    disk_uuid     TEXT,                        -- the seed's DiskUUID, kept as given
    size          BIGINT  NOT NULL,            -- bytes of the empty first version
    description   TEXT    NOT NULL DEFAULT '',
    expires_at    BIGINT,                      -- temporal images: versions forgotten after
    repository_id BIGINT  NOT NULL REFERENCES repositories(id),
    next_version  BIGINT  NOT NULL DEFAULT 1,  -- numbers are never reused
    created_at    BIGINT  NOT NULL,
    UNIQUE (owner_id, name)
);

CREATE TABLE image_versions (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    image_id    BIGINT  NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    number      BIGINT  NOT NULL,
    snapshot_id TEXT    NOT NULL,
    size        BIGINT  NOT NULL,
    bytes_added BIGINT  NOT NULL,              -- plaintext bytes this version added
    bytes_sent  BIGINT  NOT NULL,              -- bytes that crossed the network to make it
    source      TEXT    NOT NULL,              -- empty | upload | sync
    created_by  TEXT    NOT NULL,
    created_at  BIGINT  NOT NULL,
    UNIQUE (image_id, number)
);

CREATE TABLE image_sets (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT    NOT NULL UNIQUE,
    owner_id    BIGINT  NOT NULL REFERENCES users(id),
    entries     TEXT    NOT NULL,              -- JSON [{image, version, update}]
    description TEXT    NOT NULL DEFAULT '',
    created_at  BIGINT  NOT NULL
);

CREATE TABLE machines (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    name         TEXT    NOT NULL UNIQUE,
    arch         TEXT    NOT NULL DEFAULT 'x86_64',
    managed      BIGINT  NOT NULL DEFAULT 0,
    state        TEXT    NOT NULL,             -- registered | flashing | booted | syncing | neutral | failed
    error        TEXT,
    current_set  TEXT,                         -- JSON boot plan the disks hold now
    next_set     TEXT,                         -- JSON boot plan queued for the next boot
    after_flash  TEXT    NOT NULL DEFAULT 'reboot',
    token_hash   TEXT,                         -- one-time boot token (hash) of the boot under way
    token_expires BIGINT,
    last_seen    BIGINT,
    created_at   BIGINT  NOT NULL
);

CREATE TABLE machine_macs (
    mac        TEXT   NOT NULL PRIMARY KEY,
    machine_id BIGINT NOT NULL REFERENCES machines(id) ON DELETE CASCADE
);

CREATE TABLE machine_events (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    machine_id BIGINT  NOT NULL REFERENCES machines(id) ON DELETE CASCADE,
    time       BIGINT  NOT NULL,
    state      TEXT    NOT NULL,
    message    TEXT    NOT NULL,
    details    TEXT                             -- JSON (flash reports)
);
CREATE INDEX machine_events_machine ON machine_events(machine_id, time);
