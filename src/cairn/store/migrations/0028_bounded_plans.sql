-- Cairn schema, version 28: the fast path's joins are bounded by the runs they are about.
--
-- Worker sessions plan each statement once (plan_cache_mode=force_generic_plan, and
-- PL/pgSQL caches its statements' plans per session), with the statistics of that moment.
-- A worker that started while the tables were young kept, for its session's life, plans
-- that hash-joined a scan of a whole table: complete_activities_locked's state read scanned
-- runs (557 scans of ~3,000 rows in a 3,000-run W2 on a fresh database, 2026-12-07; a worker
-- started on a young database would go on scanning runs as it grows to millions), the
-- speculated and locked paths' fenced DELETE scanned activity_tasks, the speculated check's
-- anti-join scanned inbox. Each join now also says which runs it is about (= ANY of the
-- group's run ids, an InitPlan of the same statement: an index condition), so every plan
-- the planner can pick reads only their rows (worker sessions also plan without
-- sequential scans: a bounded index scan is then the way in). record_workflow_tasks and locked_task_state (store/queries.sql) say it the
-- same way. Behaviour is unchanged.

CREATE OR REPLACE FUNCTION cairn.complete_activities_locked(p_outcomes jsonb, p_replay uuid[], p_now timestamptz)
RETURNS TABLE (run_id uuid, recorded integer[], failures integer, available_at timestamptz, workflow_id text,
               workflow_type text, queue text, status text, created_at timestamptz, last_seq integer,
               now timestamptz, inbox jsonb, history jsonb, paused boolean)
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
DECLARE
    done_runs uuid[];
    done_seqs integer[];
BEGIN
    -- 1. As complete_activities_and_lock: fenced by the attempts' tokens; the DO UPDATE
    --    takes the task rows' locks in run-id order (the caller sorts the outcomes). A
    --    paused run's task row is there (0019) and stays paused.
    WITH o AS (
        SELECT * FROM jsonb_to_recordset(p_outcomes) AS o(run_id uuid, seq integer, token bigint, type text, data jsonb)
    ), done AS (
        DELETE FROM cairn.activity_tasks a USING o
        WHERE a.run_id = ANY(ARRAY(SELECT o.run_id FROM o)) AND a.run_id = o.run_id AND a.seq = o.seq AND a.token = o.token
        RETURNING a.run_id, a.namespace, a.seq, a.workflow_queue, a.workflow_type, o.type, o.data
    ), ev AS (
        INSERT INTO cairn.inbox (run_id, type, data)
        SELECT d.run_id, d.type, d.data FROM done d ORDER BY d.run_id, d.seq
    ), task AS (
        INSERT INTO cairn.workflow_tasks (run_id, namespace, queue, workflow_type)
        SELECT DISTINCT ON (d.run_id) d.run_id, d.namespace, d.workflow_queue, d.workflow_type FROM done d
        ORDER BY d.run_id
        ON CONFLICT (run_id) DO UPDATE SET queue = excluded.queue
    )
    SELECT coalesce(array_agg(d.run_id ORDER BY d.run_id, d.seq), '{}'),
           coalesce(array_agg(d.seq ORDER BY d.run_id, d.seq), '{}')
    INTO done_runs, done_seqs FROM done d;
    -- 2. A new statement, a new snapshot: as locked_task_state, for the runs recorded.
    RETURN QUERY
    SELECT t.run_id,
           (SELECT array_agg(u.s ORDER BY u.s) FROM unnest(done_runs, done_seqs) AS u(r, s) WHERE u.r = t.run_id),
           t.failures, t.available_at, r.workflow_id, r.workflow_type, r.queue, r.status, r.created_at,
           (SELECT max(h.seq) FROM cairn.history h WHERE h.run_id = t.run_id),
           coalesce(p_now, now()),
           (SELECT coalesce(jsonb_agg(jsonb_build_array(i.id, i.type, i.data) ORDER BY i.id), '[]')
            FROM cairn.inbox i WHERE i.run_id = t.run_id),
           CASE WHEN t.run_id = ANY(p_replay) AND t.pause IS NULL
                THEN (SELECT jsonb_agg(jsonb_build_array(h.seq, h.type, h.data) ORDER BY h.seq)
                      FROM cairn.history h WHERE h.run_id = t.run_id) END,
           t.pause IS NOT NULL
    FROM cairn.workflow_tasks t JOIN cairn.runs r ON r.run_id = t.run_id
    WHERE t.run_id = ANY(done_runs) AND r.run_id = ANY(done_runs)
    ORDER BY t.run_id;
END
$$;

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
        WHERE a.run_id = ANY(ARRAY(SELECT o.run_id FROM o)) AND a.run_id = o.run_id AND a.seq = o.seq AND a.token = o.token
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
    WITH e AS (
        SELECT * FROM jsonb_to_recordset(p_expected) AS e(run_id uuid, last_seq integer)
    )
    SELECT count(*) INTO n_as_expected FROM e
    WHERE (SELECT t.failures = 0 AND t.pause IS NULL FROM cairn.workflow_tasks t WHERE t.run_id = e.run_id)
      AND (SELECT r.status = 'running' FROM cairn.runs r WHERE r.run_id = e.run_id)
      AND (SELECT max(h.seq) FROM cairn.history h WHERE h.run_id = e.run_id) = e.last_seq
      AND NOT EXISTS (SELECT 1 FROM cairn.inbox i WHERE i.run_id = ANY(ARRAY(SELECT e.run_id FROM e)) AND i.run_id = e.run_id);
    IF n_as_expected <> jsonb_array_length(p_expected) THEN
        RAISE EXCEPTION 'cairn: a run of the group changed since its cached state' USING ERRCODE = 'CR001';
    END IF;
    RETURN n_done;
END
$$;
