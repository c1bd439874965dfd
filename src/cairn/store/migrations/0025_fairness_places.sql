-- Cairn schema, version 25: a default task enters one claim index again, as before 0023.
--
-- 0023 gave each task table three more partial indexes: _ready_low (priorities 4 and 5),
-- _fair_key and _fair_head (a keyed task's place, WHERE fairness_key IS NOT NULL). No
-- default task enters the last two, but every INSERT into a task table opens and locks each
-- index and tests its predicate: ~1.3 us per index per statement, paid by every start, every
-- workflow task and every activity (bench/README.md, "Fairness"). Now:
--   * one claim index per table holds both priority lanes, the lane a key column after the
--     namespace: (namespace, (priority > 3), queue, type, available_at). The claims scan
--     the lane `(priority > 3) IS FALSE` (an index condition, which `priority <= 3` would
--     not be) per pair, then the low lane; "any low-priority task in this namespace" is one
--     descent into the index's second lane;
--   * a fairness key's last place is a row of cairn.fairness_places, written by the enqueue
--     that places it (an upsert: the row lock also orders concurrent enqueues of one key,
--     which 0023 could give the same place);
--   * the level's head is the oldest task waiting at that priority, keyed or not, read from
--     the claim index (one descent, only for a keyed task). A new key still enters at the
--     head, tied with the oldest waiting task, and is claimed next.
-- A key's row outlives its tasks: its last place is then in the past of the head, and
-- greatest(last + stride, head) is the head, as "no waiting task" was. Maintenance removes
-- rows not written for an hour (forget_workers); a key still waiting after that re-enters
-- at the head once.

DROP INDEX cairn.workflow_tasks_fair_key;
DROP INDEX cairn.workflow_tasks_fair_head;
DROP INDEX cairn.workflow_tasks_ready_low;
DROP INDEX cairn.workflow_tasks_ready;
CREATE INDEX workflow_tasks_ready ON cairn.workflow_tasks
    (namespace, (priority > 3), queue, workflow_type, available_at) WHERE pause IS NULL;
DROP INDEX cairn.activity_tasks_fair_key;
DROP INDEX cairn.activity_tasks_fair_head;
DROP INDEX cairn.activity_tasks_ready_low;
DROP INDEX cairn.activity_tasks_ready;
CREATE INDEX activity_tasks_ready ON cairn.activity_tasks
    (namespace, (priority > 3), queue, activity_type, available_at) WHERE lease_owner IS NULL AND NOT paused;

-- The namespaces (per kind) that ever queued priority 4 or 5: a claim scans its second lane
-- only there (a primary-key probe of this small table, once per claim that comes back
-- short). Probing the lane itself let the planner, on statistics that saw no such task,
-- scan the whole task table. A row is never removed: removing it while a priority 5 task
-- is being queued could strand the task, and a namespace that used the lane pays one
-- descent per (queue, type) pair per short claim.
CREATE TABLE cairn.low_lanes (
    namespace text NOT NULL,
    kind      text NOT NULL,
    PRIMARY KEY (namespace, kind),
    CONSTRAINT low_lanes_kind CHECK (kind IN ('workflow', 'activity'))
);
INSERT INTO cairn.low_lanes
SELECT DISTINCT namespace, 'workflow' FROM cairn.workflow_tasks WHERE priority > 3
UNION SELECT DISTINCT namespace, 'activity' FROM cairn.activity_tasks WHERE priority > 3;

CREATE FUNCTION cairn.note_low_lane(p_kind text, p_namespace text, p_priority smallint) RETURNS void
LANGUAGE sql VOLATILE AS $$
    INSERT INTO cairn.low_lanes (namespace, kind) SELECT p_namespace, p_kind WHERE p_priority > 3
    ON CONFLICT DO NOTHING
$$;

CREATE TABLE cairn.fairness_places (
    namespace text        NOT NULL,
    kind      text        NOT NULL,
    queue     text        NOT NULL,
    type      text        NOT NULL,
    priority  smallint    NOT NULL,
    key       text        NOT NULL,
    last_at   timestamptz NOT NULL,  -- the available_at given to the key's last task
    placed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (namespace, kind, queue, type, priority, key),
    CONSTRAINT fairness_places_kind CHECK (kind IN ('workflow', 'activity'))
);

-- Tasks of the keys waiting now keep their order: each key's last waiting task seeds its row.
INSERT INTO cairn.fairness_places (namespace, kind, queue, type, priority, key, last_at)
SELECT namespace, 'workflow', queue, workflow_type, priority, fairness_key, max(available_at)
FROM cairn.workflow_tasks WHERE fairness_key IS NOT NULL AND available_at < 'infinity'
GROUP BY 1, 2, 3, 4, 5, 6;
INSERT INTO cairn.fairness_places (namespace, kind, queue, type, priority, key, last_at)
SELECT namespace, 'activity', queue, activity_type, priority, fairness_key, max(available_at)
FROM cairn.activity_tasks WHERE fairness_key IS NOT NULL AND lease_owner IS NULL AND available_at < 'infinity'
GROUP BY 1, 2, 3, 4, 5, 6;

-- The place of a task ready now (p_now) at a priority, with maybe a fairness key. Unchanged
-- for a task without a key (its credited ready time). For a keyed one: the key's next turn,
-- greatest(last + stride, head), where stride is 100 us / weight and head the level's oldest
-- waiting task, never later than its credited ready time. The level's tasks are those of its
-- lane of the claim index within 500 years of the credited time (credits are 1000 years
-- apart, and the oldest waiting task of a level is far younger than that).
CREATE OR REPLACE FUNCTION cairn.fair_available_at(p_kind text, p_namespace text, p_queue text, p_type text,
                                                   p_priority smallint, p_key text, p_weight float8,
                                                   p_now timestamptz)
RETURNS timestamptz
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    base timestamptz := p_now - cairn.priority_credit(p_priority);
    oldest timestamptz := base - interval '500 years';
    head timestamptz;
    stride interval := greatest(100.0 / coalesce(p_weight, 1.0), 1.0) * interval '1 microsecond';
    at timestamptz;
BEGIN
    IF p_priority > 3 THEN  -- not a statement per keyed placement of the first lane
        PERFORM cairn.note_low_lane(p_kind, p_namespace, p_priority);
    END IF;
    IF p_key IS NULL THEN
        RETURN base;
    END IF;
    -- The partial index predicates are repeated for the planner to use the claim indexes.
    IF p_kind = 'workflow' AND p_priority <= 3 THEN
        SELECT t.available_at INTO head FROM cairn.workflow_tasks t
        WHERE t.namespace = p_namespace AND t.queue = p_queue AND t.workflow_type = p_type
          AND t.pause IS NULL AND (t.priority > 3) IS FALSE AND t.available_at > oldest AND t.available_at <= base
        ORDER BY t.available_at LIMIT 1;
    ELSIF p_kind = 'workflow' THEN
        SELECT t.available_at INTO head FROM cairn.workflow_tasks t
        WHERE t.namespace = p_namespace AND t.queue = p_queue AND t.workflow_type = p_type
          AND t.pause IS NULL AND t.priority > 3 AND t.available_at > oldest AND t.available_at <= base
        ORDER BY t.available_at LIMIT 1;
    ELSIF p_priority <= 3 THEN
        SELECT a.available_at INTO head FROM cairn.activity_tasks a
        WHERE a.namespace = p_namespace AND a.queue = p_queue AND a.activity_type = p_type
          AND a.lease_owner IS NULL AND NOT a.paused AND (a.priority > 3) IS FALSE
          AND a.available_at > oldest AND a.available_at <= base
        ORDER BY a.available_at LIMIT 1;
    ELSE
        SELECT a.available_at INTO head FROM cairn.activity_tasks a
        WHERE a.namespace = p_namespace AND a.queue = p_queue AND a.activity_type = p_type
          AND a.lease_owner IS NULL AND NOT a.paused AND a.priority > 3
          AND a.available_at > oldest AND a.available_at <= base
        ORDER BY a.available_at LIMIT 1;
    END IF;
    head := coalesce(head, base);
    INSERT INTO cairn.fairness_places AS f (namespace, kind, queue, type, priority, key, last_at, placed_at)
    VALUES (p_namespace, p_kind, p_queue, p_type, p_priority, p_key, head, now())
    ON CONFLICT (namespace, kind, queue, type, priority, key) DO UPDATE
        SET last_at = least(greatest(f.last_at + stride, head), base), placed_at = now()
    RETURNING f.last_at INTO at;
    RETURN at;
END
$$;

-- A run's later workflow tasks (an inbox writer's upsert: a signal, a timer, an activity's
-- outcome on the slow path, a child's close, an update, a cancel) are placed as its first
-- was, by the run's priority and fairness key: under a backlog a keyed or prioritised run
-- otherwise waited behind every task queued before its activity returned. A SQL function
-- the planner inlines: for a run without either (runs.priority NULL), two null tests and
-- now(), what the column's default gave before. The fast path's functions do not call it:
-- the worker that records the outcome runs the task in the same transaction.
CREATE FUNCTION cairn.run_task_at(p_namespace text, p_queue text, p_type text, p_priority smallint,
                                  p_key text, p_weight real)
RETURNS timestamptz
LANGUAGE sql VOLATILE AS $$
    SELECT CASE WHEN p_priority IS NULL AND p_key IS NULL THEN now()
                ELSE cairn.fair_available_at('workflow', p_namespace, p_queue, p_type, coalesce(p_priority, 3::smallint),
                                             p_key, p_weight, now()) END
$$;

-- An activity's retry keeps its place. A retry (or a throttle's reschedule) waits out its
-- delay with available_at at its ready time, so once ready it queued behind every task
-- placed before that time: a keyed or prioritised activity lost its fairness turn and its
-- priority at each failure, which with a flaky provider is most of them. Its place can only
-- be known when it is ready (where the level's head is then), so the retry books it here
-- (only for an activity with a fairness key or a priority other than 3: default retries
-- write nothing more) and the workers' maintenance pass places it when due
-- (place_due_retries): ready at its ready time either way, the place only moves it forward.
CREATE TABLE cairn.retry_places (
    run_id   uuid        NOT NULL,
    seq      integer     NOT NULL,
    ready_at timestamptz NOT NULL,  -- the available_at the retry was given: placed only if unchanged
    PRIMARY KEY (run_id, seq)
);
CREATE INDEX retry_places_due ON cairn.retry_places (ready_at);

-- A delayed start at priority 4 or 5 does not go through fair_available_at: 0023's
-- start_available_at, noting the low lane.
CREATE OR REPLACE FUNCTION cairn.start_available_at(p_namespace text, p_queue text, p_type text, p_run_id uuid,
                                                    p_created timestamptz, p_delay float8, p_priority smallint,
                                                    p_key text, p_weight float8, p_concurrency_key text)
RETURNS timestamptz
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    prio smallint := coalesce(p_priority, 3);
    at timestamptz;
BEGIN
    IF p_delay IS NOT NULL OR (p_priority IS NULL AND p_key IS NULL) THEN
        IF prio > 3 THEN
            PERFORM cairn.note_low_lane('workflow', p_namespace, prio);
        END IF;
        at := p_created + coalesce(p_delay, 0) * interval '1 second';
    ELSE
        at := cairn.fair_available_at('workflow', p_namespace, p_queue, p_type, prio, p_key, p_weight, p_created);
    END IF;
    IF p_concurrency_key IS NOT NULL THEN
        at := cairn.concurrency_admit('workflow', p_namespace, p_concurrency_key, p_run_id, 0, prio, p_queue, at);
    END IF;
    RETURN at;
END
$$;

-- An activity of priority 4 or 5 leased eagerly is in no lane, but its retry, release or
-- pause comes back to the second one: note the namespace's low lane for it too. The default
-- activity still costs two null tests (the planner inlines activity_at).
CREATE FUNCTION cairn.eager_at(p_namespace text, p_options jsonb, p_now timestamptz) RETURNS timestamptz
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM cairn.note_low_lane('activity', p_namespace, cairn.option_priority(p_options));
    RETURN p_now;
END
$$;
CREATE OR REPLACE FUNCTION cairn.activity_at(p_namespace text, p_run_id uuid, p_seq integer, p_type text,
                                             p_queue text, p_options jsonb, p_now timestamptz, p_eager boolean)
RETURNS timestamptz
LANGUAGE sql VOLATILE AS $$
    SELECT CASE WHEN p_options -> 'priority' IS NULL AND p_options -> 'concurrency_key' IS NULL THEN p_now
                WHEN p_eager THEN cairn.eager_at(p_namespace, p_options, p_now)
                ELSE cairn.activity_available_at(p_namespace, p_run_id, p_seq, p_type, p_queue, p_options, p_now)
           END
$$;
