-- Audit links become keyed: HMAC-SHA256 under a key derived from the
-- operator's encryption key, which this database never holds, so a database
-- writer who edits a row cannot recompute the chain after it. Each row names
-- how its hash was computed; rows written before this migration keep plain
-- SHA-256 ('sha256') and verify as a legacy prefix of the chain.
ALTER TABLE audit_log
    ADD COLUMN scheme text NOT NULL DEFAULT 'sha256' CHECK (scheme IN ('sha256', 'hmac-sha256-v1'));
-- From now on every writer must say which scheme it used.
ALTER TABLE audit_log ALTER COLUMN scheme DROP DEFAULT;

-- TRUNCATE fires no row triggers, so the append-only guard of 0001 never saw
-- it: refuse it with a statement trigger as well.
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();
