-- Disk repositories (appliance): storage the server created or adopted to hold backup
-- repositories. What BAMS created is recorded so deleting never removes anything else.
CREATE TABLE disk_repositories (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    name           TEXT   NOT NULL UNIQUE,
    kind           TEXT   NOT NULL,            -- directory | filesystem | btrfs-subvolume
    path           TEXT   NOT NULL UNIQUE,     -- directory or mount point holding repositories
    fs_type        TEXT,                       -- ext4 | xfs | btrfs (filesystem)
    source         TEXT,                       -- loop image or block device (filesystem)
    created_path   BIGINT NOT NULL DEFAULT 0,  -- BAMS created path (may remove it)
    created_source BIGINT NOT NULL DEFAULT 0,  -- BAMS created source (may remove it)
    created_at     BIGINT NOT NULL
);
