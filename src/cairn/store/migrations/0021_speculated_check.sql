-- Cairn schema, version 21: the speculated fast path's check probes each run by its keys.
--
-- complete_activities_speculated's check (0010, 0012, 0019) joined the expected runs to
-- workflow_tasks and runs. Its generic plan trusts a young table's statistics: in W2 on a
-- fresh database it scanned runs by status ("2 running", in truth hundreds) once per
-- expected run, 5,835 rows filtered for 32 runs, and the function took half as long again
-- per group (pg_stat_statements, 2026-12-07). Scalar subqueries are never flattened into
-- joins: each condition is now one probe of its table's primary key per run, whatever the
-- statistics say. Behaviour is unchanged.
CREATE OR REPLACE FUNCTION cairn.complete_activities_speculated(p_outcomes jsonb, p_expected jsonb)
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
        RETURNING a.run_id, a.namespace, a.workflow_queue, a.workflow_type
    ), task AS (
        INSERT INTO cairn.workflow_tasks (run_id, namespace, queue, workflow_type)
        SELECT DISTINCT ON (d.run_id) d.run_id, d.namespace, d.workflow_queue, d.workflow_type FROM done d
        ORDER BY d.run_id
        ON CONFLICT (run_id) DO UPDATE SET queue = excluded.queue
    )
    SELECT count(*) INTO n_done FROM done;
    IF n_done <> jsonb_array_length(p_outcomes) THEN
        RAISE EXCEPTION 'cairn: an outcome of the group was superseded' USING ERRCODE = 'CR001';
    END IF;
    -- 2. A new statement, a new snapshot: everything committed before the locks was granted.
    --    A paused run (0019) is not as cached: its task must not run. A missing row makes
    --    its condition NULL: not as expected.
    SELECT count(*) INTO n_as_expected
    FROM jsonb_to_recordset(p_expected) AS e(run_id uuid, last_seq integer)
    WHERE (SELECT t.failures = 0 AND t.pause IS NULL FROM cairn.workflow_tasks t WHERE t.run_id = e.run_id)
      AND (SELECT r.status = 'running' FROM cairn.runs r WHERE r.run_id = e.run_id)
      AND (SELECT max(h.seq) FROM cairn.history h WHERE h.run_id = e.run_id) = e.last_seq
      AND NOT EXISTS (SELECT 1 FROM cairn.inbox i WHERE i.run_id = e.run_id);
    IF n_as_expected <> jsonb_array_length(p_expected) THEN
        RAISE EXCEPTION 'cairn: a run of the group changed since its cached state' USING ERRCODE = 'CR001';
    END IF;
    RETURN n_done;
END
$$;
