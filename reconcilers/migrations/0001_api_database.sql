-- The platform API database contract (DESIGN.md §3). Field names and states
-- follow the reference documents: tenants (003 Tenant, 000 branding),
-- identity providers (002 OIDCProvider, 000 IdP federation), group mappings
-- (002), webhook subscriptions and deliveries (000, 001), platform resources
-- and fronting links (004), license grants (000), approvals (002).

-- Secret material, encrypted with an AEAD under the operator's key.
-- Plaintext never reaches this table; rows are referenced by opaque id.
CREATE TABLE encrypted_secrets (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    key_id       text        NOT NULL,
    nonce        bytea       NOT NULL,
    ciphertext   bytea       NOT NULL,
    fingerprint  text        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    revoked_at   timestamptz
);

CREATE TABLE tenants (
    id                   uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_type          text        NOT NULL DEFAULT 'organization',
    slug                 text        NOT NULL CHECK (slug ~ '^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$'),
    name                 text        NOT NULL CHECK (length(btrim(name)) > 0),
    description          text,
    parent_tenant_id     uuid REFERENCES tenants (id),
    status               text        NOT NULL DEFAULT 'ACTIVE'
                         CHECK (status IN ('ACTIVE', 'SUSPENDED', 'PENDING_VERIFICATION')),
    system               boolean     NOT NULL DEFAULT false,
    owner_email          text,
    owner_display_name   text,
    instance_fingerprint text,
    -- Organization branding payload: app_name, logo_url, email_templates.*
    branding             jsonb,
    -- Namespaces whose namespaced objects may attach to this tenant.
    allowed_namespaces   text[]      NOT NULL DEFAULT '{}',
    created_at           timestamptz NOT NULL DEFAULT now(),
    created_by           text,
    updated_at           timestamptz NOT NULL DEFAULT now(),
    updated_by           text,
    deleted_at           timestamptz,
    deleted_by           text,
    CHECK ((deleted_at IS NULL) = (deleted_by IS NULL))
);
-- Slugs are globally unique among live tenants; a soft-deleted slug may be reused.
CREATE UNIQUE INDEX tenants_live_slug ON tenants (slug) WHERE deleted_at IS NULL;

CREATE TABLE identity_providers (
    id                      uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id               uuid        NOT NULL REFERENCES tenants (id),
    name                    text        NOT NULL,
    protocol                text        NOT NULL CHECK (protocol IN ('OIDC', 'SAML')),
    status                  text        NOT NULL CHECK (status IN ('PENDING_APPROVAL', 'ACTIVE')),
    enabled                 boolean     NOT NULL DEFAULT true,
    issuer_url              text,
    client_id               text,
    client_secret_ref       uuid REFERENCES encrypted_secrets (id),
    scopes                  text[]      NOT NULL DEFAULT '{openid,email,profile}',
    subject_claim           text        NOT NULL DEFAULT 'sub',
    email_claim             text        NOT NULL DEFAULT 'email',
    display_name_claim      text        NOT NULL DEFAULT 'name',
    groups_claim_path       text        NOT NULL DEFAULT 'groups',
    groups_claim_format     text        NOT NULL DEFAULT 'string_array',
    fetch_userinfo          boolean     NOT NULL DEFAULT false,
    allowed_email_domains   text[]      NOT NULL DEFAULT '{}',
    iat_window_seconds      integer     NOT NULL DEFAULT 300 CHECK (iat_window_seconds > 0),
    jwks_cache_ttl_seconds  integer     NOT NULL DEFAULT 3600 CHECK (jwks_cache_ttl_seconds > 0),
    metadata_url            text,
    entity_id               text,
    sso_url                 text,
    requested_by            text,
    requested_at            timestamptz,
    approved_by             text,
    approved_at             timestamptz,
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now(),
    deleted_at              timestamptz,
    deleted_by              text,
    CHECK (protocol <> 'OIDC' OR (issuer_url IS NOT NULL AND client_id IS NOT NULL)),
    CHECK (protocol <> 'SAML' OR (metadata_url IS NOT NULL AND entity_id IS NOT NULL AND sso_url IS NOT NULL)),
    CHECK (status <> 'ACTIVE' OR requested_by IS NULL OR approved_by IS NULL OR approved_by <> requested_by)
);
CREATE UNIQUE INDEX identity_providers_live_name ON identity_providers (tenant_id, name) WHERE deleted_at IS NULL;

-- What home realm discovery and sign-in may see: approved, enabled, live.
CREATE VIEW public_identity_providers AS
    SELECT id, tenant_id, name, protocol, issuer_url, client_id, scopes, subject_claim, email_claim,
           display_name_claim, groups_claim_path, groups_claim_format, fetch_userinfo,
           allowed_email_domains, iat_window_seconds, jwks_cache_ttl_seconds,
           metadata_url, entity_id, sso_url
      FROM identity_providers
     WHERE status = 'ACTIVE' AND enabled AND deleted_at IS NULL;

CREATE TABLE group_mappings (
    id                    uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    identity_provider_id  uuid        NOT NULL REFERENCES identity_providers (id),
    group_name            text        NOT NULL,
    role                  text        NOT NULL
                          CHECK (role IN ('PLATFORM_ADMIN', 'BILLING_OPERATOR', 'CLIENT_ADMIN', 'CLIENT_TECH', 'AUDITOR')),
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now(),
    deleted_at            timestamptz,
    deleted_by            text
);
CREATE UNIQUE INDEX group_mappings_live_group ON group_mappings (identity_provider_id, group_name) WHERE deleted_at IS NULL;

CREATE TABLE webhook_subscriptions (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id     uuid        NOT NULL REFERENCES tenants (id),
    url           text        NOT NULL CHECK (url LIKE 'https://%'),
    events        text[]      NOT NULL CHECK (cardinality(events) > 0),
    secret_ref    uuid        NOT NULL REFERENCES encrypted_secrets (id),
    active        boolean     NOT NULL DEFAULT true,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    deleted_at    timestamptz,
    deleted_by    text
);

CREATE TABLE webhook_deliveries (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    subscription_id  uuid        NOT NULL REFERENCES webhook_subscriptions (id),
    event_type       text        NOT NULL,
    payload          jsonb       NOT NULL,
    status           text        NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'delivered', 'failed', 'dead_letter')),
    attempts         integer     NOT NULL DEFAULT 0,
    last_status_code integer,
    last_error       text,
    next_attempt_at  timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    delivered_at     timestamptz
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';

-- Platform resources that fronting links point at (004 Resource).
CREATE TABLE platform_resources (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    slug        text        NOT NULL UNIQUE,
    name        text        NOT NULL,
    scopes      text[]      NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE fronting_links (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    source_resource_id  uuid        NOT NULL REFERENCES platform_resources (id),
    target_resource_id  uuid        NOT NULL REFERENCES platform_resources (id),
    scope_map           jsonb       NOT NULL CHECK (jsonb_typeof(scope_map) = 'object' AND scope_map <> '{}'::jsonb),
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    deleted_at          timestamptz,
    deleted_by          text,
    CHECK (source_resource_id <> target_resource_id)
);
CREATE UNIQUE INDEX fronting_links_live_pair ON fronting_links (source_resource_id, target_resource_id) WHERE deleted_at IS NULL;

CREATE TABLE license_grants (
    id                    uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    grant_id              uuid        NOT NULL UNIQUE,
    tenant_id             uuid        NOT NULL REFERENCES tenants (id),
    grant_type            text        NOT NULL CHECK (grant_type IN ('GRANT', 'ADDENDUM', 'REVOCATION')),
    instance_fingerprint  text        NOT NULL,
    license_type          text        NOT NULL,
    quantity              bigint      NOT NULL CHECK (quantity > 0),
    valid_from            timestamptz NOT NULL,
    valid_until           timestamptz NOT NULL,
    commercial_chain      text[]      NOT NULL,
    addendum_of           uuid REFERENCES license_grants (grant_id),
    revokes               uuid REFERENCES license_grants (grant_id),
    revoked_at            timestamptz,
    key_id                text        NOT NULL,
    signature             text        NOT NULL,
    created_at            timestamptz NOT NULL DEFAULT now(),
    CHECK (valid_from < valid_until)
);

-- Which Kubernetes object manages a row, and the digest it last wrote.
-- Rows without an entry here were made by people through the admin API.
CREATE TABLE managed_objects (
    kind           text        NOT NULL,
    row_id         uuid        NOT NULL,
    object_uid     text        NOT NULL,
    object_ns      text        NOT NULL DEFAULT '',
    object_name    text        NOT NULL,
    digest         text        NOT NULL,
    adopted        boolean     NOT NULL DEFAULT false,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, row_id),
    UNIQUE (kind, object_uid)
);

-- Change requests of the two-person rule, listable by the platform's own UI.
CREATE TABLE change_requests (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    kind           text        NOT NULL,
    object_key     text        NOT NULL,
    object_uid     text        NOT NULL,
    operation      text        NOT NULL CHECK (operation IN ('create', 'update', 'delete')),
    digest         text        NOT NULL,
    spec_snapshot  jsonb       NOT NULL,
    requester      text        NOT NULL,
    state          text        NOT NULL DEFAULT 'pending'
                   CHECK (state IN ('pending', 'approved', 'rejected', 'expired', 'superseded')),
    decided_by     text,
    note           text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    expires_at     timestamptz NOT NULL,
    decided_at     timestamptz,
    UNIQUE (kind, object_uid, digest),
    CHECK (decided_by IS NULL OR decided_by <> requester)
);
CREATE INDEX change_requests_pending ON change_requests (kind, state) WHERE state = 'pending';

-- Append-only, hash-chained audit log. Each row's hash covers the previous
-- row's hash and this row's canonical content; `verify-audit` recomputes it.
CREATE TABLE audit_log (
    seq          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at           timestamptz NOT NULL,
    kind         text        NOT NULL,
    object_key   text        NOT NULL,
    row_id       uuid,
    action       text        NOT NULL,
    actor        text        NOT NULL,
    requester    text,
    approver     text,
    digest       text,
    detail       jsonb       NOT NULL DEFAULT '{}'::jsonb,
    prev_hash    text        NOT NULL,
    hash         text        NOT NULL UNIQUE
);

CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only';
END;
$$;
CREATE TRIGGER audit_log_no_update BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
