-- Webhook subscriptions (issue 5): a tenant subscribes one endpoint once.
-- Two live subscriptions of one tenant to the same URL would deliver every
-- event twice and leave no way to tell which object manages which row, so a
-- URL is unique per tenant among live rows (compared exactly as written); a
-- soft-deleted subscription's URL may be subscribed again.
CREATE UNIQUE INDEX webhook_subscriptions_live_url
    ON webhook_subscriptions (tenant_id, url) WHERE deleted_at IS NULL;

-- Soft delete names who deleted, as for the other kinds' tables.
ALTER TABLE webhook_subscriptions
    ADD CONSTRAINT webhook_subscriptions_deleted_by CHECK ((deleted_at IS NULL) = (deleted_by IS NULL));
