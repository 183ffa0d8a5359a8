-- Optional TOTP second factor: the shared secret (base32) once confirmed, one being set up, and
-- the last time step used (a code is accepted once).
ALTER TABLE users ADD COLUMN totp_secret TEXT;
ALTER TABLE users ADD COLUMN totp_pending TEXT;
ALTER TABLE users ADD COLUMN totp_last_step BIGINT;
