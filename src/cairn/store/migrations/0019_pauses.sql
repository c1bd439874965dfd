-- Cairn schema, version 19: pause and resume (cairn pause|unpause, cairn activity
-- pause|unpause, RetryPolicy(on_exhausted="pause")).
--
-- Paused work is out of the claim indexes: both are partial, without the paused rows, so a
-- claim's plan and cost are what they were, paused rows or not. A run's pause is its
-- workflow task row's (a paused run always has one, see 1); an activity's is its row's;
-- activity types and queues are paused namespace-wide by a row of activity_pauses, which
-- the activity claim reads once per (queue, type) pair it scans.

-- 1. A run's pause: {note, by, at} on its task row, and "placeholder" when the pause made the
--    row (the run had no task then). So a paused run always has its task row: the inbox
--    writers' upserts (DO UPDATE SET queue) find it and leave it paused, and events wait in
--    the inbox. The row goes when the run closes (terminate), and the pause with it.
ALTER TABLE cairn.workflow_tasks ADD COLUMN pause jsonb;
DROP INDEX cairn.workflow_tasks_ready;
CREATE INDEX workflow_tasks_ready ON cairn.workflow_tasks (namespace, queue, workflow_type, available_at)
    WHERE pause IS NULL;
-- `cairn pauses`: the paused runs of a namespace.
CREATE INDEX workflow_tasks_paused ON cairn.workflow_tasks (namespace) WHERE pause IS NOT NULL;

-- 2. An activity is held (paused) by its run's pause or by its own: pause is its own, an
--    operator's or its retry policy's (on_exhausted="pause": {reason: "exhausted",
--    retry_state, ...}, its last failure in last_failure). A running attempt goes on; its
--    retry, reschedule or release keeps the row held.
ALTER TABLE cairn.activity_tasks ADD COLUMN paused boolean NOT NULL DEFAULT false;
ALTER TABLE cairn.activity_tasks ADD COLUMN pause jsonb;
ALTER TABLE cairn.activity_tasks ADD CONSTRAINT activity_tasks_pause_holds CHECK (pause IS NULL OR paused);
DROP INDEX cairn.activity_tasks_ready;
CREATE INDEX activity_tasks_ready ON cairn.activity_tasks (namespace, queue, activity_type, available_at)
    WHERE lease_owner IS NULL AND NOT paused;
CREATE INDEX activity_tasks_paused ON cairn.activity_tasks (namespace) WHERE pause IS NOT NULL;

-- 3. Activity types and queues paused namespace-wide: no new attempt of a matching (queue,
--    type) starts. '' matches every type (a queue's pause) or every queue.
CREATE TABLE cairn.activity_pauses (
    namespace     text        NOT NULL,
    activity_type text        NOT NULL,
    queue         text        NOT NULL,
    note          text        NOT NULL DEFAULT '',
    paused_by     text        NOT NULL,
    paused_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (namespace, activity_type, queue),
    CONSTRAINT activity_pauses_target CHECK (activity_type <> '' OR queue <> '')
);

-- 4. The fast path's functions (0012) leave paused runs alone: the locked way returns
--    whether each run is paused (its worker then records the outcome and runs nothing), the
--    speculated way's check fails for one (CR001: the group takes the locked way).
DROP FUNCTION cairn.complete_activities_locked(jsonb, uuid[], timestamptz);
CREATE FUNCTION cairn.complete_activities_locked(p_outcomes jsonb, p_replay uuid[], p_now timestamptz)
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
        WHERE a.run_id = o.run_id AND a.seq = o.seq AND a.token = o.token
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
    WHERE t.run_id = ANY(done_runs)
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
    --    A paused run (0019) is not as cached: its task must not run.
    SELECT count(*) INTO n_as_expected
    FROM jsonb_to_recordset(p_expected) AS e(run_id uuid, last_seq integer)
    JOIN cairn.workflow_tasks t ON t.run_id = e.run_id AND t.failures = 0 AND t.pause IS NULL
    JOIN cairn.runs r ON r.run_id = e.run_id AND r.status = 'running'
    WHERE (SELECT max(h.seq) FROM cairn.history h WHERE h.run_id = e.run_id) = e.last_seq
      AND NOT EXISTS (SELECT 1 FROM cairn.inbox i WHERE i.run_id = e.run_id);
    IF n_as_expected <> jsonb_array_length(p_expected) THEN
        RAISE EXCEPTION 'cairn: a run of the group changed since its cached state' USING ERRCODE = 'CR001';
    END IF;
    RETURN n_done;
END
$$;

-- 5. record_workflow_tasks leases no attempt eagerly of an activity type or queue paused
--    namespace-wide: its activities (one task's) with "eager" false for those. A function,
--    so that the hot statement stays short enough for psycopg's parse cache; one probe of
--    activity_pauses' primary key per task, and nothing else while nothing is paused.
CREATE FUNCTION cairn.unpaused_eager(p_namespace text, p_activities jsonb) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT CASE
        WHEN NOT EXISTS (SELECT 1 FROM cairn.activity_pauses WHERE namespace = p_namespace) THEN p_activities
        ELSE (SELECT coalesce(jsonb_agg(CASE WHEN EXISTS (
                  SELECT 1 FROM cairn.activity_pauses p
                  WHERE p.namespace = p_namespace AND p.activity_type IN ('', x ->> 'activity_type')
                    AND p.queue IN ('', x ->> 'queue')) THEN x || '{"eager": false}' ELSE x END ORDER BY o), '[]')
              FROM jsonb_array_elements(p_activities) WITH ORDINALITY AS e(x, o))
    END
$$;
