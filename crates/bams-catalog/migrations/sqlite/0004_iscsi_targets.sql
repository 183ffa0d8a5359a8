-- iSCSI targets (appliance): the desired state the server applies to the target backend
-- (tgt, SCST or LIO). The id doubles as tgt's target id. spec is JSON owned by
-- bams-appliance (LUNs, initiator ACLs, CHAP); applied_chap is a digest of the CHAP
-- secret last applied, so a changed secret is re-applied (the backend cannot be asked).
CREATE TABLE iscsi_targets (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    iqn          TEXT   NOT NULL UNIQUE,
    spec         TEXT   NOT NULL,
    applied_chap TEXT,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL
);
