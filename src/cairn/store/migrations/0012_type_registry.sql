-- Cairn schema, version 13: the type registry per queue, and claims of only what a worker runs.
--
-- The registry kept one input schema per type name, written by whichever worker started
-- last whatever its queue; it is now keyed by (namespace, queue, name), and activity types
-- are registered too. The claims took every ready task of a queue, whatever its type: a
-- worker then failed the tasks of types it does not run (UnknownWorkflowType,
-- ActivityNotRegistered), burning attempts and backing tasks off. Workflow tasks now carry
-- their run's workflow type (copied at insert time by every insert path, as the namespace
-- is since 0008) and both claim indexes have the type after the queue: a claim is one
-- ordered index scan per (queue, type) the worker serves, and a type nobody serves waits.

-- 1. Workflow types: one row per (namespace, queue, name). Rows registered before this
--    migration become one row per queue they listed.
ALTER TABLE cairn.workflow_types DROP CONSTRAINT workflow_types_pkey;
ALTER TABLE cairn.workflow_types ADD COLUMN queue text;
INSERT INTO cairn.workflow_types (namespace, name, queues, queue, input_schema, module, updated_at)
SELECT w.namespace, w.name, w.queues, qn.queue, w.input_schema, w.module, w.updated_at
FROM cairn.workflow_types w, unnest(w.queues) AS qn(queue)
WHERE w.queue IS NULL;
DELETE FROM cairn.workflow_types WHERE queue IS NULL;
ALTER TABLE cairn.workflow_types DROP COLUMN queues;
ALTER TABLE cairn.workflow_types ALTER COLUMN queue SET NOT NULL;
ALTER TABLE cairn.workflow_types ADD PRIMARY KEY (namespace, queue, name);

-- 2. Activity types, registered by the workers that run them (describe says when a pending
--    activity's type has none on its queue).
CREATE TABLE cairn.activity_types (
    namespace  text        NOT NULL,
    queue      text        NOT NULL,
    name       text        NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),   -- the last registration
    PRIMARY KEY (namespace, queue, name)
);

-- 3. Workflow tasks carry their run's type. A task whose run is gone could never run (the
--    claim joins runs): it goes.
ALTER TABLE cairn.workflow_tasks ADD COLUMN workflow_type text;
UPDATE cairn.workflow_tasks t SET workflow_type = r.workflow_type FROM cairn.runs r WHERE r.run_id = t.run_id;
DELETE FROM cairn.workflow_tasks WHERE workflow_type IS NULL;
ALTER TABLE cairn.workflow_tasks ALTER COLUMN workflow_type SET NOT NULL;

-- 4. Match claim_workflow_task, claim_activity_tasks and next_due exactly.
DROP INDEX cairn.workflow_tasks_ready;
CREATE INDEX workflow_tasks_ready ON cairn.workflow_tasks (namespace, queue, workflow_type, available_at);
DROP INDEX cairn.activity_tasks_ready;
CREATE INDEX activity_tasks_ready ON cairn.activity_tasks (namespace, queue, activity_type, available_at)
    WHERE lease_owner IS NULL;

-- 5. The fast path's functions (0009, 0010) upsert workflow tasks: they now copy the type
--    from the attempts' rows. Otherwise unchanged.
CREATE OR REPLACE FUNCTION cairn.complete_activities_locked(p_outcomes jsonb, p_replay uuid[], p_now timestamptz)
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
           CASE WHEN t.run_id = ANY(p_replay)
                THEN (SELECT jsonb_agg(jsonb_build_array(h.seq, h.type, h.data) ORDER BY h.seq)
                      FROM cairn.history h WHERE h.run_id = t.run_id) END
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
