-- Issue 9, attacks 5, 8 and 9.

-- One normalisation of identities, the same as the admission policies' and
-- the operator's (countersign_reconcilers::identity::normalise): surrounding
-- whitespace and any username prefix up to the last ':' or '#' (an OIDC
-- username prefix such as "oidc:" or "https://issuer#") are dropped and ASCII
-- letters lowered, so one person under two spellings is one person.
-- system: identities (service accounts, nodes) are kept as they are.
CREATE FUNCTION countersign_identity(name text) RETURNS text
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT CASE
        WHEN btrim(name) LIKE 'system:%' THEN btrim(name)
        ELSE translate(regexp_replace(btrim(name), '^.*[:#]', ''),
                       'ABCDEFGHIJKLMNOPQRSTUVWXYZ', 'abcdefghijklmnopqrstuvwxyz')
    END
$$;

-- The second person is another person under any spelling.
ALTER TABLE change_requests DROP CONSTRAINT change_requests_check;
ALTER TABLE change_requests ADD CONSTRAINT change_requests_second_person
    CHECK (decided_by IS NULL OR countersign_identity(decided_by) <> countersign_identity(requester));

-- Who declared the requester: the account whose write set the spec or
-- requested-by, stamped by the admission policy countersign-stamp-declarer.
-- A person declares themselves; only a GitOps account may declare another.
ALTER TABLE change_requests ADD COLUMN declared_by text;

-- Each distinct approval a request has collected, when a policy asks for
-- more than one (ApprovalPolicy spec.requiredApprovals).
CREATE TABLE change_request_approvals (
    request_id   uuid        NOT NULL REFERENCES change_requests (id),
    approver     text        NOT NULL,
    approved_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (request_id, approver)
);

GRANT SELECT, INSERT ON change_request_approvals TO countersign_runtime;
