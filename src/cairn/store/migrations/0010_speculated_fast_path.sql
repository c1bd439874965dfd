-- Cairn schema, version 10: the speculated fast path, one round trip per group.
--
-- A worker that caches every run of a group of activity outcomes runs the workflow tasks
-- they trigger *before* its transaction, from the cached instances, and sends the outcomes
-- and the record in one simple query (ARCHITECTURE.md, "The fast path"). This function is
-- the first statement of that query: it records the outcomes fenced by their attempts'
-- tokens, takes the runs' task-row locks (as complete_activities_locked), and then checks,
-- in a new snapshot, that every run is as the worker's cache had it: still running, no
-- failing task, history ending at the expected seq, nothing in its inbox. The outcomes'
-- events are not put in the inbox: the record that follows appends them. Any miss raises
-- SQLSTATE CR001; the query's later statements are skipped, the worker rolls back and
-- takes the two-round-trip path (complete_activities_locked).

CREATE FUNCTION cairn.complete_activities_speculated(p_outcomes jsonb, p_expected jsonb)
RETURNS integer
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    n_done integer;
    n_as_expected integer;
BEGIN
    -- 1. Fenced by the attempts' tokens; the DO UPDATE takes the task rows' locks in
    --    run-id order (the caller sorts the outcomes), waiting for a worker running one.
    WITH o AS (
        SELECT * FROM jsonb_to_recordset(p_outcomes) AS o(run_id uuid, seq integer, token bigint)
    ), done AS (
        DELETE FROM cairn.activity_tasks a USING o
        WHERE a.run_id = o.run_id AND a.seq = o.seq AND a.token = o.token
        RETURNING a.run_id, a.namespace, a.workflow_queue
    ), task AS (
        INSERT INTO cairn.workflow_tasks (run_id, namespace, queue)
        SELECT DISTINCT ON (d.run_id) d.run_id, d.namespace, d.workflow_queue FROM done d ORDER BY d.run_id
        ON CONFLICT (run_id) DO UPDATE SET queue = excluded.queue
    )
    SELECT count(*) INTO n_done FROM done;
    IF n_done <> jsonb_array_length(p_outcomes) THEN
        RAISE EXCEPTION 'cairn: an outcome of the group was superseded' USING ERRCODE = 'CR001';
    END IF;
    -- 2. A new statement, a new snapshot: everything committed before the locks was granted.
    SELECT count(*) INTO n_as_expected
    FROM jsonb_to_recordset(p_expected) AS e(run_id uuid, last_seq integer)
    JOIN cairn.workflow_tasks t ON t.run_id = e.run_id AND t.failures = 0
    JOIN cairn.runs r ON r.run_id = e.run_id AND r.status = 'running'
    WHERE (SELECT max(h.seq) FROM cairn.history h WHERE h.run_id = e.run_id) = e.last_seq
      AND NOT EXISTS (SELECT 1 FROM cairn.inbox i WHERE i.run_id = e.run_id);
    IF n_as_expected <> jsonb_array_length(p_expected) THEN
        RAISE EXCEPTION 'cairn: a run of the group changed since its cached state' USING ERRCODE = 'CR001';
    END IF;
    RETURN n_done;
END
$$;
