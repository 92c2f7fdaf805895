-- Two database roles: `countersign migrate` runs as the owner of the schema
-- (it creates and alters tables, and only an owner can disable the audit
-- log's triggers); `countersign run` runs as a login role in the group
-- `countersign_runtime`, which owns nothing and may only do what reconciles
-- do. In particular it may append to the audit log and read it, never
-- update, delete or truncate it.
--
-- Roles belong to the whole server, not to one database, so the group is
-- created only if no other database on the server has created it already
-- (two databases may be migrated at the same moment, hence the exception
-- handler as well). Privileges belong to each database: they are granted here.
-- A later migration that adds a table the operator uses grants on it there.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'countersign_runtime') THEN
        CREATE ROLE countersign_runtime NOLOGIN;
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;
END
$$;

DO $$
BEGIN
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO countersign_runtime', current_schema());
    -- The identity of audit_log.seq, for INSERT.
    EXECUTE format('GRANT USAGE ON SEQUENCE %s TO countersign_runtime', pg_get_serial_sequence('audit_log', 'seq'));
END
$$;

-- The start-up schema check.
GRANT SELECT ON _sqlx_migrations TO countersign_runtime;

-- The rows the kinds manage, their secrets and the two-person rule's change
-- requests. Rows are soft-deleted (UPDATE), never deleted; FOR SHARE/FOR
-- UPDATE locks need UPDATE too.
GRANT SELECT, INSERT, UPDATE ON
    tenants, identity_providers, group_mappings, webhook_subscriptions,
    fronting_links, license_grants, encrypted_secrets, change_requests
    TO countersign_runtime;

-- Ownership records are released by deleting them.
GRANT SELECT, INSERT, UPDATE, DELETE ON managed_objects TO countersign_runtime;

-- Read only: platform resources are registered by the platform, the views
-- are derived. (Webhook deliveries are the platform's alone.)
GRANT SELECT ON platform_resources, public_identity_providers, license_quotas TO countersign_runtime;

-- The audit log: append and read, nothing else.
GRANT SELECT, INSERT ON audit_log TO countersign_runtime;
