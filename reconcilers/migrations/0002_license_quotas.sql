-- License quotas (reference 000 "License grant import and quota rules"):
-- what each tenant may use now, per license type, after revocations.
--
-- A GRANT counts while it is valid (valid_from <= now() < valid_until) and
-- not revoked. An ADDENDUM adds its quantity under the same rule, and only
-- while the grant it amends also counts: revoking a grant, or its expiry,
-- takes its addenda with it. REVOCATION rows grant nothing; they set
-- revoked_at on the grant they revoke, in the same transaction.
CREATE VIEW license_quotas AS
    SELECT g.tenant_id, g.license_type, sum(g.quantity)::bigint AS quantity
      FROM license_grants g
      LEFT JOIN license_grants base ON base.grant_id = g.addendum_of
     WHERE g.grant_type IN ('GRANT', 'ADDENDUM')
       AND g.revoked_at IS NULL
       AND g.valid_from <= now() AND now() < g.valid_until
       AND (g.grant_type = 'GRANT'
            OR (base.grant_type = 'GRANT' AND base.revoked_at IS NULL
                AND base.valid_from <= now() AND now() < base.valid_until))
     GROUP BY g.tenant_id, g.license_type;

-- The view and each reconcile's quota message look grants up by tenant and type.
CREATE INDEX license_grants_tenant_type ON license_grants (tenant_id, license_type);
