-- Cairn schema, version 20: retention and archival (cairn namespace update --retention,
-- cairn purge, client.get_namespace_handle()).
--
-- Every history used to be kept forever. A namespace may now have a retention period:
-- closed runs whose closed_at is older are removed by the workers' maintenance loops, in
-- chunks (store/retention.py), optionally archived first to files (store/archive.py). An
-- operator may also purge closed runs by filter (cairn purge --where). Open runs are never
-- purged. No row here, or a NULL retention, means "keep forever", as before.

CREATE TABLE cairn.namespaces (
    namespace   text        PRIMARY KEY,
    retention   interval,                -- NULL: closed runs are kept forever
    archive_uri text,                    -- NULL: no archival; file:///an/absolute/directory
    updated_at  timestamptz NOT NULL,
    -- A floor against a slip of the finger ("0" would purge every closed run at once).
    CONSTRAINT namespaces_retention_floor CHECK (retention IS NULL OR retention >= interval '1 hour'),
    CONSTRAINT namespaces_archive_uri_file CHECK (archive_uri IS NULL OR archive_uri LIKE 'file:///%')
);

-- The purge's scan: a namespace's closed runs, oldest close first. Partial: open runs are
-- not in it, and a run enters it once, when it closes (that UPDATE is not HOT anyway: it
-- changes status, which runs_by_status indexes).
CREATE INDEX runs_closed ON cairn.runs (namespace, closed_at, run_id) WHERE closed_at IS NOT NULL;

-- History stays append-only to every statement but the purge's: a DELETE is refused unless
-- the transaction set cairn.purging, which only cairn.purge_closed_runs does (and the
-- roles cannot DELETE from history themselves; the function runs as the schema's owner).
CREATE OR REPLACE FUNCTION cairn.history_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND current_setting('cairn.purging', true) = 'on' THEN
        RETURN NULL;
    END IF;
    RAISE EXCEPTION 'cairn.history is append-only (% refused)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END $$;

-- Removes closed runs whole: their history, every queue row left (none, normally), their
-- updates, query requests and streamed text (llm_stream cascades), then the runs rows. Runs
-- of the array that are open, or gone, are left alone: a run is purged only closed, and
-- only all of it. SECURITY DEFINER so that the worker and client roles, which may neither
-- DELETE from runs nor from history (cairn db roles), can purge through it and through
-- nothing else; EXECUTE is theirs only (cairn db roles grants it).
CREATE FUNCTION cairn.purge_closed_runs(p_run_ids uuid[])
RETURNS TABLE (runs bigint, events bigint)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ids uuid[];
    n_events bigint;
BEGIN
    SELECT coalesce(array_agg(r.run_id), '{}') INTO ids
    FROM cairn.runs r WHERE r.run_id = ANY(p_run_ids) AND r.status <> 'running';
    PERFORM set_config('cairn.purging', 'on', true);
    DELETE FROM cairn.history h WHERE h.run_id = ANY(ids);
    GET DIAGNOSTICS n_events = ROW_COUNT;
    PERFORM set_config('cairn.purging', 'off', true);
    DELETE FROM cairn.inbox i WHERE i.run_id = ANY(ids);
    DELETE FROM cairn.workflow_tasks t WHERE t.run_id = ANY(ids);
    DELETE FROM cairn.activity_tasks a WHERE a.run_id = ANY(ids);
    DELETE FROM cairn.timers t WHERE t.run_id = ANY(ids);
    DELETE FROM cairn.query_requests q WHERE q.run_id = ANY(ids);
    DELETE FROM cairn.updates u WHERE u.run_id = ANY(ids);
    DELETE FROM cairn.runs r WHERE r.run_id = ANY(ids);
    RETURN QUERY SELECT cardinality(ids)::bigint, n_events;
END
$$;
REVOKE ALL ON FUNCTION cairn.purge_closed_runs(uuid[]) FROM PUBLIC;
