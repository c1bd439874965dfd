-- Cairn schema, version 9: the fast path's lock and read in one round trip.
--
-- The fast path (ARCHITECTURE.md, "The fast path") records a group of activity outcomes
-- and locks their runs' workflow tasks (complete_activities_and_lock: the upsert's DO
-- UPDATE may wait for a lock), then reads the runs' state. A statement that waited for a
-- lock keeps the snapshot it started with, so the read needs a statement of its own; it
-- was a second round trip (locked_task_state). In a VOLATILE plpgsql function every
-- statement takes a new snapshot (READ COMMITTED), so one call does both, with the same
-- guarantee: the read sees everything that committed before the locks were granted.

CREATE FUNCTION cairn.complete_activities_locked(p_outcomes jsonb, p_replay uuid[], p_now timestamptz)
RETURNS TABLE (run_id uuid, recorded integer[], failures integer, available_at timestamptz, workflow_id text,
               workflow_type text, queue text, status text, created_at timestamptz, last_seq integer,
               now timestamptz, inbox jsonb, history jsonb)
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
DECLARE
    done_runs uuid[];
    done_seqs integer[];
BEGIN
    -- 1. As complete_activities_and_lock: fenced by the attempts' tokens; the DO UPDATE
    --    takes the task rows' locks in run-id order (the caller sorts the outcomes).
    WITH o AS (
        SELECT * FROM jsonb_to_recordset(p_outcomes) AS o(run_id uuid, seq integer, token bigint, type text, data jsonb)
    ), done AS (
        DELETE FROM cairn.activity_tasks a USING o
        WHERE a.run_id = o.run_id AND a.seq = o.seq AND a.token = o.token
        RETURNING a.run_id, a.namespace, a.seq, a.workflow_queue, o.type, o.data
    ), ev AS (
        INSERT INTO cairn.inbox (run_id, type, data)
        SELECT d.run_id, d.type, d.data FROM done d ORDER BY d.run_id, d.seq
    ), task AS (
        INSERT INTO cairn.workflow_tasks (run_id, namespace, queue)
        SELECT DISTINCT ON (d.run_id) d.run_id, d.namespace, d.workflow_queue FROM done d ORDER BY d.run_id
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
           CASE WHEN t.run_id = ANY(p_replay)
                THEN (SELECT jsonb_agg(jsonb_build_array(h.seq, h.type, h.data) ORDER BY h.seq)
                      FROM cairn.history h WHERE h.run_id = t.run_id) END
    FROM cairn.workflow_tasks t JOIN cairn.runs r ON r.run_id = t.run_id
    WHERE t.run_id = ANY(done_runs)
    ORDER BY t.run_id;
END
$$;
