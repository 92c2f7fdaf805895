-- An approval is spent when its change is applied (issue 9, attack 4). Until
-- now a change request was unique per (object, digest), so returning to a
-- configuration approved once before found the old approved request and went
-- live again with nobody approving it. Now only one *open* request may exist
-- per (object, digest); a return to the same digest records a new request.
ALTER TABLE change_requests DROP CONSTRAINT change_requests_kind_object_uid_digest_key;
CREATE UNIQUE INDEX change_requests_open_digest
    ON change_requests (kind, object_uid, digest) WHERE state = 'pending';
-- The newest request of an object is the one that counts.
CREATE INDEX change_requests_latest ON change_requests (kind, object_uid, created_at DESC);

-- The approver whose approval annotation for this digest was already on the
-- object when the request was recorded. Such an approval was given for an
-- earlier request (approvals are only ever given for a digest shown as
-- pending), so it never counts for this one; the operator clears the mark once
-- it has seen the annotation removed, so a fresh approval by the same person
-- counts.
ALTER TABLE change_requests ADD COLUMN predating_approval text;
