-- Audit entries name the object a request changed and, for updates, which fields (never
-- their values); expired sessions and old audit rows are purged by the server.
ALTER TABLE audit ADD COLUMN object_type TEXT;
ALTER TABLE audit ADD COLUMN object_id TEXT;
ALTER TABLE audit ADD COLUMN object_name TEXT;
ALTER TABLE audit ADD COLUMN changes TEXT;
