-- Cairn schema, version 23: priority, fairness and per-key concurrency limits (issue 18,
-- item 3). A task with no priority, no fairness key and no concurrency key is written, and
-- claimed, as before: its priority is the default 3, its available_at is its ready time.
--
-- How the claims stay one ordered index scan per (queue, type) pair: a task's place in the
-- claim order is its available_at, and priority and fairness only ever move it *back*, never
-- later than the task is ready, so "ready" is still the index range available_at <= now:
--   * priority 1 and 2 (higher) are credited 2000 and 1000 years, so they sort before every
--     priority 3 task of the pair (the claim scan of workflow_tasks_ready is unchanged);
--   * priority 4 and 5 (lower) cannot be placed after the ready priority 3 tasks without
--     delaying them (a later available_at would be a later ready time), so they have an
--     index of their own, workflow_tasks_ready_low (priority 4 credited 1000 years), which
--     the claim scans only when the main one is exhausted: its cost to a default claim is
--     one descent into an empty index, and only when the claim does not fill up;
--   * a fairness key places its task by virtual time within its level (queue, type,
--     priority): a key's tasks are spaced 100 us / weight apart after its last waiting
--     task, a key without waiting tasks enters at the level's head (its oldest waiting keyed
--     task), never later than now. So a key flooding the level gets one turn per stride,
--     and a newcomer is claimed next (stride scheduling). See cairn.fair_available_at.
-- A retry, a reschedule, a release or a start delay waits its real ready time and then
-- queues by it, in its own priority's index but without credit.

-- 1. The columns. The task rows' priority (smallint, 3 by default: a metadata-only ALTER)
--    selects the index; fairness_key is kept on the row for the level's head and the key's
--    last task (partial indexes over keyed rows only). A run keeps what it was started with,
--    for describe and for what its activities, children and continued runs inherit.
ALTER TABLE cairn.workflow_tasks ADD COLUMN priority smallint NOT NULL DEFAULT 3,
    ADD COLUMN fairness_key text,
    ADD CONSTRAINT workflow_tasks_priority CHECK (priority BETWEEN 1 AND 5);
ALTER TABLE cairn.activity_tasks ADD COLUMN priority smallint NOT NULL DEFAULT 3,
    ADD COLUMN fairness_key text,
    ADD COLUMN concurrency_key text,
    ADD CONSTRAINT activity_tasks_priority CHECK (priority BETWEEN 1 AND 5);
ALTER TABLE cairn.runs ADD COLUMN priority smallint,
    ADD COLUMN fairness_key text,
    ADD COLUMN fairness_weight real,
    ADD COLUMN concurrency_key text;

DROP INDEX cairn.workflow_tasks_ready;
CREATE INDEX workflow_tasks_ready ON cairn.workflow_tasks (namespace, queue, workflow_type, available_at)
    WHERE pause IS NULL AND priority <= 3;
CREATE INDEX workflow_tasks_ready_low ON cairn.workflow_tasks (namespace, queue, workflow_type, available_at)
    WHERE pause IS NULL AND priority > 3;
CREATE INDEX workflow_tasks_fair_key ON cairn.workflow_tasks
    (namespace, queue, workflow_type, priority, fairness_key, available_at) WHERE fairness_key IS NOT NULL;
CREATE INDEX workflow_tasks_fair_head ON cairn.workflow_tasks
    (namespace, queue, workflow_type, priority, available_at) WHERE fairness_key IS NOT NULL;

DROP INDEX cairn.activity_tasks_ready;
CREATE INDEX activity_tasks_ready ON cairn.activity_tasks (namespace, queue, activity_type, available_at)
    WHERE lease_owner IS NULL AND NOT paused AND priority <= 3;
CREATE INDEX activity_tasks_ready_low ON cairn.activity_tasks (namespace, queue, activity_type, available_at)
    WHERE lease_owner IS NULL AND NOT paused AND priority > 3;
CREATE INDEX activity_tasks_fair_key ON cairn.activity_tasks
    (namespace, queue, activity_type, priority, fairness_key, available_at)
    WHERE fairness_key IS NOT NULL AND lease_owner IS NULL;
CREATE INDEX activity_tasks_fair_head ON cairn.activity_tasks
    (namespace, queue, activity_type, priority, available_at)
    WHERE fairness_key IS NOT NULL AND lease_owner IS NULL;

-- 2. The credit of a priority (see above): what its tasks' available_at is moved back by.
CREATE FUNCTION cairn.priority_credit(p smallint) RETURNS interval
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE p WHEN 1 THEN interval '2000 years' WHEN 2 THEN interval '1000 years'
                  WHEN 4 THEN interval '1000 years' ELSE interval '0' END
$$;

-- 3. The available_at of a task ready now (p_now) with a priority and maybe a fairness key
--    (p_kind 'workflow' or 'activity'; p_type its workflow or activity type). Two probes of
--    the keyed rows' partial indexes, only for a keyed task: the level's head (its oldest
--    waiting keyed task) and the key's last waiting task. Tasks held for a concurrency slot
--    ('infinity') are not waiting in the order. Concurrent enqueues of one key may get the
--    same place: ties are claimed in either order, which fairness does not mind.
CREATE FUNCTION cairn.fair_available_at(p_kind text, p_namespace text, p_queue text, p_type text,
                                        p_priority smallint, p_key text, p_weight float8, p_now timestamptz)
RETURNS timestamptz
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    base timestamptz := p_now - cairn.priority_credit(p_priority);
    head timestamptz;
    last timestamptz;
    stride interval := greatest(100.0 / coalesce(p_weight, 1.0), 1.0) * interval '1 microsecond';
BEGIN
    IF p_key IS NULL THEN
        RETURN base;
    END IF;
    IF p_kind = 'workflow' THEN
        SELECT min(t.available_at) INTO head FROM cairn.workflow_tasks t
        WHERE t.namespace = p_namespace AND t.queue = p_queue AND t.workflow_type = p_type
          AND t.priority = p_priority AND t.fairness_key IS NOT NULL AND t.available_at < 'infinity';
        SELECT max(t.available_at) INTO last FROM cairn.workflow_tasks t
        WHERE t.namespace = p_namespace AND t.queue = p_queue AND t.workflow_type = p_type
          AND t.priority = p_priority AND t.fairness_key = p_key AND t.available_at < 'infinity';
    ELSE
        SELECT min(a.available_at) INTO head FROM cairn.activity_tasks a
        WHERE a.namespace = p_namespace AND a.queue = p_queue AND a.activity_type = p_type
          AND a.priority = p_priority AND a.fairness_key IS NOT NULL AND a.lease_owner IS NULL
          AND a.available_at < 'infinity';
        SELECT max(a.available_at) INTO last FROM cairn.activity_tasks a
        WHERE a.namespace = p_namespace AND a.queue = p_queue AND a.activity_type = p_type
          AND a.priority = p_priority AND a.fairness_key = p_key AND a.lease_owner IS NULL
          AND a.available_at < 'infinity';
    END IF;
    head := least(coalesce(head, base), base);
    RETURN least(greatest(coalesce(last + stride, head), head), base);
END
$$;

-- 4. Per-key concurrency limits. One row per (namespace, kind, key) in use or configured:
--    max_running (NULL: no limit) and in_use, the slots taken. A slot is taken by a run
--    (kind 'workflow') from its start until it closes, and by an activity (kind 'activity')
--    from its scheduling until its row goes (completed, failed, cancelled, its run closed):
--    so "at most max_running attempts of the key leased at once" holds, and a killed
--    worker's slot stays with its attempt, which the reaper retries elsewhere. The row
--    lock makes take and give back one step across workers (cairn.concurrency_admit,
--    cairn.concurrency_release, cairn.concurrency_set).
CREATE TABLE cairn.concurrency_limits (
    namespace   text        NOT NULL,
    kind        text        NOT NULL,
    key         text        NOT NULL,
    max_running integer,
    in_use      integer     NOT NULL DEFAULT 0,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (namespace, kind, key),
    CONSTRAINT concurrency_limits_kind CHECK (kind IN ('workflow', 'activity')),
    CONSTRAINT concurrency_limits_max CHECK (max_running IS NULL OR max_running >= 0),
    CONSTRAINT concurrency_limits_in_use CHECK (in_use >= 0)
);

-- What waits for a slot: a run (seq 0) whose first workflow task, or an activity whose row,
-- is held with available_at 'infinity' (past every claim's range: held work costs no claim
-- anything), taken in (priority, since) order when a slot comes free.
CREATE TABLE cairn.concurrency_waiting (
    run_id    uuid        NOT NULL,
    seq       integer     NOT NULL,
    namespace text        NOT NULL,
    kind      text        NOT NULL,
    key       text        NOT NULL,
    priority  smallint    NOT NULL,
    queue     text        NOT NULL,
    since     timestamptz NOT NULL,
    PRIMARY KEY (run_id, seq)
);
CREATE INDEX concurrency_waiting_next ON cairn.concurrency_waiting (namespace, kind, key, priority, since);

-- Takes a slot of the key for a new run or activity and returns p_available (its place in
-- the claim order), or holds it: a waiting row, and 'infinity'.
CREATE FUNCTION cairn.concurrency_admit(p_kind text, p_namespace text, p_key text, p_run_id uuid, p_seq integer,
                                        p_priority smallint, p_queue text, p_available timestamptz)
RETURNS timestamptz
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    lim cairn.concurrency_limits;
BEGIN
    INSERT INTO cairn.concurrency_limits (namespace, kind, key) VALUES (p_namespace, p_kind, p_key)
    ON CONFLICT DO NOTHING;
    SELECT * INTO lim FROM cairn.concurrency_limits
    WHERE namespace = p_namespace AND kind = p_kind AND key = p_key FOR UPDATE;
    IF lim.max_running IS NULL OR lim.in_use < lim.max_running THEN
        UPDATE cairn.concurrency_limits SET in_use = in_use + 1
        WHERE namespace = p_namespace AND kind = p_kind AND key = p_key;
        RETURN p_available;
    END IF;
    INSERT INTO cairn.concurrency_waiting (run_id, seq, namespace, kind, key, priority, queue, since)
    VALUES (p_run_id, p_seq, p_namespace, p_kind, p_key, p_priority, p_queue, now());
    RETURN 'infinity';
END
$$;

-- Gives waiting work the key's free slots (p_freed: slots just given back by the caller),
-- oldest of the best priority first; returns how many it let go. Under the key's row lock.
CREATE FUNCTION cairn.concurrency_release(p_kind text, p_namespace text, p_key text, p_freed integer)
RETURNS integer
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    lim cairn.concurrency_limits;
    w cairn.concurrency_waiting;
    free integer;
    promoted integer := 0;
BEGIN
    SELECT * INTO lim FROM cairn.concurrency_limits
    WHERE namespace = p_namespace AND kind = p_kind AND key = p_key FOR UPDATE;
    IF NOT FOUND THEN
        RETURN 0;
    END IF;
    free := CASE WHEN lim.max_running IS NULL THEN 2147483647
                 ELSE lim.max_running - (lim.in_use - p_freed) END;
    WHILE promoted < free LOOP
        DELETE FROM cairn.concurrency_waiting x
        WHERE (x.run_id, x.seq) = (SELECT y.run_id, y.seq FROM cairn.concurrency_waiting y
                                   WHERE y.namespace = p_namespace AND y.kind = p_kind AND y.key = p_key
                                   ORDER BY y.priority, y.since LIMIT 1)
        RETURNING * INTO w;
        EXIT WHEN NOT FOUND;
        IF p_kind = 'workflow' THEN
            UPDATE cairn.workflow_tasks SET available_at = now() - cairn.priority_credit(priority)
            WHERE run_id = w.run_id AND available_at = 'infinity';
            PERFORM pg_notify('cairn_workflow', w.queue);
        ELSE
            UPDATE cairn.activity_tasks SET available_at = now() - cairn.priority_credit(priority)
            WHERE run_id = w.run_id AND seq = w.seq AND available_at = 'infinity';
            PERFORM pg_notify('cairn_activity', w.queue);
        END IF;
        promoted := promoted + 1;
    END LOOP;
    UPDATE cairn.concurrency_limits SET in_use = in_use - p_freed + promoted, updated_at = now()
    WHERE namespace = p_namespace AND kind = p_kind AND key = p_key;
    RETURN promoted;
END
$$;

-- A key's limit set (p_max NULL: no limit); slots it frees go to waiting work at once.
CREATE FUNCTION cairn.concurrency_set(p_kind text, p_namespace text, p_key text, p_max integer)
RETURNS integer
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    INSERT INTO cairn.concurrency_limits (namespace, kind, key, max_running) VALUES (p_namespace, p_kind, p_key, p_max)
    ON CONFLICT (namespace, kind, key) DO UPDATE SET max_running = excluded.max_running, updated_at = now();
    RETURN cairn.concurrency_release(p_kind, p_namespace, p_key, 0);
END
$$;

-- 5. Slots come back when their holder ends. A run closes in two statements only
--    (record_workflow_tasks, close_run): each calls cairn.concurrency_run_closed for its
--    closed runs that have a key (an AFTER UPDATE trigger on runs would make every close
--    fetch the old row, key or not). An activity row goes in many (the record, the fast
--    path's functions, cancels, terminate, the reaper, a close that drops its run's
--    activities): a trigger, with a WHEN on the key (Postgres still fetches the old row per
--    deleted activity: ~1 us).
CREATE FUNCTION cairn.concurrency_run_closed(p_run_id uuid, p_namespace text, p_key text) RETURNS integer
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    DELETE FROM cairn.concurrency_waiting WHERE run_id = p_run_id AND seq = 0;
    IF FOUND THEN  -- it was waiting for a slot, not holding one
        RETURN 0;
    END IF;
    RETURN cairn.concurrency_release('workflow', p_namespace, p_key, 1);
END
$$;

CREATE FUNCTION cairn.concurrency_activity_gone() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- retry_activity_by_token deletes and re-inserts the row in one statement: it goes on.
    IF EXISTS (SELECT 1 FROM cairn.activity_tasks WHERE run_id = OLD.run_id AND seq = OLD.seq) THEN
        RETURN NULL;
    END IF;
    DELETE FROM cairn.concurrency_waiting WHERE run_id = OLD.run_id AND seq = OLD.seq;
    IF NOT FOUND THEN
        PERFORM cairn.concurrency_release('activity', OLD.namespace, OLD.concurrency_key, 1);
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER activity_tasks_concurrency_gone AFTER DELETE ON cairn.activity_tasks
    FOR EACH ROW WHEN (OLD.concurrency_key IS NOT NULL)
    EXECUTE FUNCTION cairn.concurrency_activity_gone();

-- 6. An activity's place in the claim order, from its options (priority {priority_key,
--    fairness_key, fairness_weight}, concurrency_key), for record_workflow_tasks: a function,
--    so that the hot statement stays short (as cairn.unpaused_eager), called only for an
--    activity that has one of them.
CREATE FUNCTION cairn.activity_available_at(p_namespace text, p_run_id uuid, p_seq integer, p_type text,
                                            p_queue text, p_options jsonb, p_now timestamptz)
RETURNS timestamptz
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    prio smallint := coalesce((p_options -> 'priority' ->> 'priority_key')::smallint, 3);
    at timestamptz := cairn.fair_available_at('activity', p_namespace, p_queue, p_type, prio,
                                              p_options -> 'priority' ->> 'fairness_key',
                                              (p_options -> 'priority' ->> 'fairness_weight')::float8, p_now);
BEGIN
    IF p_options ->> 'concurrency_key' IS NULL THEN
        RETURN at;
    END IF;
    RETURN cairn.concurrency_admit('activity', p_namespace, p_options ->> 'concurrency_key', p_run_id, p_seq,
                                   prio, p_queue, at);
END
$$;

-- 7. record_workflow_tasks' (and a reset's) two expressions for an activity, as SQL
--    functions the planner inlines: its available_at (now when it is leased eagerly or has
--    no priority and no key: a null test of two keys of its options) and its priority. (A
--    BEFORE INSERT trigger doing this cost every activity ~4 us more, WHEN false or not.)
CREATE FUNCTION cairn.activity_at(p_namespace text, p_run_id uuid, p_seq integer, p_type text,
                                  p_queue text, p_options jsonb, p_now timestamptz, p_eager boolean)
RETURNS timestamptz
LANGUAGE sql VOLATILE AS $$
    SELECT CASE WHEN p_eager OR (p_options -> 'priority' IS NULL AND p_options -> 'concurrency_key' IS NULL)
                THEN p_now
                ELSE cairn.activity_available_at(p_namespace, p_run_id, p_seq, p_type, p_queue, p_options, p_now)
           END
$$;
CREATE FUNCTION cairn.option_priority(p_options jsonb) RETURNS smallint
LANGUAGE sql IMMUTABLE AS $$
    SELECT coalesce((p_options -> 'priority' ->> 'priority_key')::smallint, 3::smallint)
$$;

-- 8. The first workflow task's available_at, for start_workflow when a start has a priority,
--    a fairness key or a concurrency key (without them the statement computes it itself):
--    its place (not for a delayed start: it waits its delay, then queues by its ready time),
--    then a slot of its key or the hold.
CREATE FUNCTION cairn.start_available_at(p_namespace text, p_queue text, p_type text, p_run_id uuid,
                                         p_created timestamptz, p_delay float8, p_priority smallint, p_key text,
                                         p_weight float8, p_concurrency_key text)
RETURNS timestamptz
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    prio smallint := coalesce(p_priority, 3);
    at timestamptz;
BEGIN
    IF p_delay IS NOT NULL OR (p_priority IS NULL AND p_key IS NULL) THEN
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
