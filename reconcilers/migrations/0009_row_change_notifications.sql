-- Tell the operator when a row it manages changes behind its back, so drift is
-- corrected when it happens instead of on the next periodic resync.
--
-- Every insert, real update and delete of a managed table sends a NOTIFY on
-- the channel `countersign_row_changes` with the table, the operation and the
-- row id (for `managed_objects`, the owning object's kind, namespace and name,
-- which its row holds). The payload names rows, never values. The operator
-- maps a row to its object through `managed_objects` and reconciles that
-- object alone.
--
-- The operator's own connections set `countersign.origin = operator` when
-- they connect, and their writes notify nobody: an operator write is not
-- drift, and echoing it back would cost a read per write. Anyone else who can
-- set that parameter can make an edit the operator does not hear of at once;
-- the periodic resync still finds it.
CREATE FUNCTION countersign_notify_row_change() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    changed record;
BEGIN
    IF current_setting('countersign.origin', true) IS NOT DISTINCT FROM 'operator' THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'DELETE' THEN
        changed := OLD;
    ELSE
        changed := NEW;
    END IF;
    IF TG_TABLE_NAME = 'managed_objects' THEN
        PERFORM pg_notify('countersign_row_changes', json_build_object(
            'table', TG_TABLE_NAME, 'op', TG_OP,
            'kind', changed.kind, 'namespace', changed.object_ns, 'name', changed.object_name)::text);
    ELSE
        PERFORM pg_notify('countersign_row_changes', json_build_object(
            'table', TG_TABLE_NAME, 'op', TG_OP, 'id', changed.id)::text);
    END IF;
    RETURN NULL;
END
$$;

DO $$
DECLARE
    managed text;
BEGIN
    FOREACH managed IN ARRAY ARRAY[
        'tenants', 'identity_providers', 'group_mappings', 'webhook_subscriptions',
        'fronting_links', 'license_grants', 'platform_resources', 'managed_objects'
    ] LOOP
        EXECUTE format(
            'CREATE TRIGGER %I AFTER INSERT OR DELETE ON %I FOR EACH ROW EXECUTE FUNCTION countersign_notify_row_change()',
            managed || '_notify_insert_delete', managed);
        -- An UPDATE that changes nothing (a touch) is not news.
        EXECUTE format(
            'CREATE TRIGGER %I AFTER UPDATE ON %I FOR EACH ROW WHEN (OLD.* IS DISTINCT FROM NEW.*) '
            'EXECUTE FUNCTION countersign_notify_row_change()',
            managed || '_notify_update', managed);
    END LOOP;
END
$$;
