-- Issue 9, attack 1: nobody switches the two-person rule off alone. The
-- configuration of each ApprovalPolicy the operator enforces is kept here,
-- not read from the cluster: a change that tightens the rule is written at
-- once, one that loosens it only once a second person approves, so deleting
-- or editing the object alone changes nothing that is enforced.
CREATE TABLE approval_policies (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name        text        NOT NULL UNIQUE,
    object_uid  text        NOT NULL,
    spec        jsonb       NOT NULL,
    digest      text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

GRANT SELECT, INSERT, UPDATE, DELETE ON approval_policies TO countersign_runtime;
