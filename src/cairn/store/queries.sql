-- Every statement Cairn runs, each under a `-- name:` header and a one-line description.
-- Parameters use psycopg's %(name)s style. %(now)s is NULL in production (the database's
-- clock) and a fixed time in tests.

-- ---------------------------------------------------------------- migrations

-- name: migrate_lock
-- Serialises concurrent `cairn db migrate` runs; a session lock, released by migrate_unlock.
SELECT pg_advisory_lock(7243591038)

-- name: migrate_unlock
-- Releases migrate_lock.
SELECT pg_advisory_unlock(7243591038)

-- name: create_versions_table
-- The table that records which migrations have been applied.
CREATE SCHEMA IF NOT EXISTS cairn;
CREATE TABLE IF NOT EXISTS cairn.schema_versions (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)

-- name: applied_versions
-- Migrations applied so far, if the versions table exists.
SELECT version, name, checksum, applied_at FROM cairn.schema_versions ORDER BY version

-- name: versions_table_exists
-- Whether the schema has ever been migrated.
SELECT to_regclass('cairn.schema_versions') IS NOT NULL AS present

-- name: record_version
-- Marks one migration as applied (inside the migration's own transaction).
INSERT INTO cairn.schema_versions (version, name, checksum) VALUES (%(version)s, %(name)s, %(checksum)s)

-- ---------------------------------------------------------------- starting runs

-- name: lock_open_run
-- Before a start whose id reuse policy reads the id's closed runs: waits for a close of
-- the open run that is in flight (the row lock), so that the start's next statement sees
-- it closed and the policy applies; and holds a close off until the start commits. Without
-- it, the start's snapshot saw the run open, its INSERT waited on the closing run's index
-- entry and, once the close committed, found no conflict: a second run despite
-- reject_duplicate.
SELECT 1 FROM cairn.runs
WHERE namespace = %(namespace)s AND workflow_id = %(workflow_id)s AND status = 'running'
FOR UPDATE

-- name: start_workflow
-- Creates a run, its WorkflowStarted event and its first workflow task in one statement,
-- unless the workflow id already has an open run, or the id reuse policy refuses it because
-- of the id's closed runs (then returns no row; open_run_by_workflow_id says why). The
-- reuse check and the insert are one statement: no check-then-insert window (a concurrent
-- start of the same id meets the open-run unique index). Also used by workers for child
-- runs and continue-as-new (parent links, continued_from, an inherited execution deadline).
WITH c AS (
    SELECT coalesce(%(now)s::timestamptz, now()) AS now
), refused AS (
    -- One-time filter: the default policy reads nothing here.
    SELECT 1 FROM (SELECT status FROM cairn.runs
                   WHERE %(id_reuse_policy)s::text <> 'allow_duplicate'
                     AND namespace = %(namespace)s AND workflow_id = %(workflow_id)s AND status <> 'running'
                   ORDER BY run_id DESC LIMIT 1) prev
    WHERE %(id_reuse_policy)s::text = 'reject_duplicate' OR prev.status IN ('completed', 'continued_as_new')
), new_run AS (
    INSERT INTO cairn.runs (run_id, namespace, workflow_id, workflow_type, queue, created_at,
                            parent_run_id, parent_seq, parent_close_policy, continued_from, execution_deadline,
                            search_attributes, memo, priority, fairness_key, fairness_weight, concurrency_key)
    SELECT %(run_id)s::uuid, %(namespace)s::text, %(workflow_id)s::text, %(workflow_type)s::text, %(queue)s::text,
           c.now, %(parent_run_id)s::uuid, %(parent_seq)s::integer, %(parent_close_policy)s::text,
           %(continued_from)s::uuid,
           coalesce(%(execution_deadline)s::timestamptz,
                    c.now + %(execution_timeout)s::float8 * interval '1 second'),
           coalesce(%(search_attributes)s::jsonb, '{}'), %(memo)s::jsonb,
           %(priority)s::smallint, %(fairness_key)s::text, %(fairness_weight)s::real, %(concurrency_key)s::text
    FROM c WHERE NOT EXISTS (SELECT 1 FROM refused)
    ON CONFLICT (namespace, workflow_id) WHERE status = 'running' DO NOTHING
    RETURNING run_id, namespace, queue, workflow_type, created_at, execution_deadline
), started AS (
    INSERT INTO cairn.history (run_id, seq, type, data, at)
    SELECT run_id, 1, 'WorkflowStarted', %(data)s, created_at FROM new_run
), task AS (
    -- A start delay (client.start(start_delay=...)) holds the first task back; a signal
    -- during it does not bring the task forward (signal_run keeps available_at). A priority
    -- or a fairness key places a task ready now in the claim order, a concurrency key takes
    -- a slot or holds the task ('infinity') until one comes free (0023,
    -- cairn.start_available_at). Without any of them: as before, after three null tests.
    INSERT INTO cairn.workflow_tasks (run_id, namespace, queue, workflow_type, available_at, created_at,
                                      priority, fairness_key)
    SELECT run_id, namespace, queue, workflow_type,
           CASE WHEN %(priority)s::smallint IS NULL AND %(fairness_key)s::text IS NULL
                     AND %(concurrency_key)s::text IS NULL
                THEN created_at + coalesce(%(start_delay)s::float8, 0) * interval '1 second'
                ELSE cairn.start_available_at(namespace, queue, workflow_type, run_id, created_at,
                                              %(start_delay)s::float8, %(priority)s::smallint, %(fairness_key)s::text,
                                              %(fairness_weight)s::float8, %(concurrency_key)s::text) END,
           created_at, coalesce(%(priority)s::smallint, 3), %(fairness_key)s::text
    FROM new_run
), deadline AS (
    -- The execution timeout: a timer with the reserved seq 0 (commands start at seq 2).
    INSERT INTO cairn.timers (run_id, seq, workflow_queue, fire_at)
    SELECT run_id, 0, queue, execution_deadline FROM new_run WHERE execution_deadline IS NOT NULL
    RETURNING pg_notify('cairn_timer', '')
)
SELECT run_id, pg_notify('cairn_workflow', queue) AS notified, (SELECT count(*) FROM deadline) AS timers
FROM new_run

-- name: open_run_by_workflow_id
-- Why start_workflow wrote nothing: the open run of the workflow id, else the newest closed
-- run if the id reuse policy refuses because of it (status tells which), else no row.
SELECT run_id, workflow_type, status FROM (
    SELECT run_id, workflow_type, status, 0 AS k FROM cairn.runs
    WHERE namespace = %(namespace)s AND workflow_id = %(workflow_id)s AND status = 'running'
    UNION ALL
    (SELECT run_id, workflow_type, status, 1 FROM cairn.runs
     WHERE %(id_reuse_policy)s::text <> 'allow_duplicate'
       AND namespace = %(namespace)s AND workflow_id = %(workflow_id)s AND status <> 'running'
     ORDER BY run_id DESC LIMIT 1)
) x
WHERE k = 0 OR %(id_reuse_policy)s::text = 'reject_duplicate' OR status IN ('completed', 'continued_as_new')
ORDER BY k LIMIT 1

-- ---------------------------------------------------------------- workflow tasks

-- name: claim_workflow_task
-- Locks up to %(limit)s ready workflow tasks (one per run) for the rest of this transaction. SKIP LOCKED: concurrent
-- workers take different runs instead of queueing on one row lock and coming away empty.
-- The lock is the claim: it ends with the transaction or with a dead worker's connection.
-- Also returns the run's inbox and, for a new run, its WorkflowStarted data, saving round
-- trips. The inbox is read with this statement's snapshot, which may predate an event
-- committed just before the lock was taken: record_workflow_tasks keeps the task in that
-- case, so nothing is stranded.
WITH claimed AS (
    -- Only workflow_tasks here, so the claim is an index scan of workflow_tasks_ready
    -- that stops at the limit, however many runs have finished. (Joining runs here let
    -- the planner hash all of them: 322 ms with 1,000,000 finished runs.) The task row
    -- carries its run's namespace (0008), which leads the index: tenants never share work.
    -- Only the workflow types this worker runs (0012): %(queues)s and %(types)s are its
    -- (queue, type) pairs, two arrays of the same length; a type nobody runs waits, never
    -- claimed and failed by a worker without its code. One ordered index scan per pair
    -- (with `= ANY(...)` the planner sorts every ready row instead). The outer LIMIT stops
    -- the scans once %(limit)s rows are locked (rows are locked as they are pulled: none
    -- is held without being run); the worker rotates the pairs at each claim, so a
    -- backlog of one type does not starve the others. The inner LIMIT is a constant, the
    -- most a claim takes (cairn.worker.claims.CLAIM_MAX), for the generic plan's estimate: with
    -- %(limit)s there it guessed a tenth of the ready rows and, past ~10,000 of them, joined
    -- runs by a merge join over the whole table (140 ms per claim with 200,000 runs).
    -- A paused run's task (pause set, 0019) is not in the index (partial: pause IS NULL):
    -- the scan never meets it, so pauses cost the claim nothing.
    -- Priorities (0023, 0025): the index's lane `(priority > 3) = %(low)s` -- false holds 1
    -- to 3, 1 and 2 placed before 3 by their available_at; true holds 4 and 5, claimed by a
    -- second call only when the first came back short in a namespace that ever queued them
    -- (cairn.store.tasks.claim). Not a second branch here: the set-up of its plan nodes cost
    -- every claim a third more (callgrind, bench/README.md). A task held for a concurrency
    -- slot has available_at 'infinity': past the range, never met.
    SELECT c.run_id, c.failures
    FROM unnest(%(queues)s::text[], %(types)s::text[]) AS k(queue, workflow_type),
         LATERAL (SELECT t.run_id, t.failures
                  FROM cairn.workflow_tasks t
                  WHERE t.namespace = %(namespace)s AND t.queue = k.queue AND t.workflow_type = k.workflow_type
                    AND t.available_at <= coalesce(%(now)s::timestamptz, now()) AND t.pause IS NULL
                    AND (t.priority > 3) = %(low)s::boolean
                  ORDER BY t.available_at
                  LIMIT 64
                  FOR UPDATE SKIP LOCKED) c
    LIMIT %(limit)s
)
SELECT c.*, r.workflow_id, r.workflow_type, r.queue, r.status, r.created_at, s.last_seq,
       coalesce(%(now)s::timestamptz, now()) AS now,
       (SELECT coalesce(jsonb_agg(jsonb_build_array(i.id, i.type, i.data) ORDER BY i.id), '[]')
        FROM cairn.inbox i WHERE i.run_id = c.run_id) AS inbox,
       CASE WHEN s.last_seq = 1
            THEN (SELECT h.data FROM cairn.history h WHERE h.run_id = c.run_id AND h.seq = 1) END AS started
FROM claimed c
JOIN cairn.runs r ON r.run_id = c.run_id,
     LATERAL (SELECT max(h.seq) AS last_seq FROM cairn.history h WHERE h.run_id = c.run_id) s

-- name: read_history
-- A run's whole history, in order.
SELECT seq, type, data, at FROM cairn.history WHERE run_id = %(run_id)s ORDER BY seq

-- name: read_history_after
-- A run's history after a seq (for following it live).
SELECT seq, type, data, at FROM cairn.history
WHERE run_id = %(run_id)s AND seq > %(after)s ORDER BY seq

-- name: append_history
-- Appends a batch of events; the primary key rejects a writer whose view was stale.
INSERT INTO cairn.history (run_id, seq, type, data, at)
SELECT %(run_id)s, e.seq, e.type, e.data, coalesce(%(now)s::timestamptz, now())
FROM jsonb_to_recordset(%(events)s::jsonb) AS e(seq integer, type text, data jsonb)

-- name: record_workflow_tasks
-- Writes the outcomes of a batch of workflow tasks (%(tasks)s: one object per run, see
-- TaskRunner.record_batch) in one statement: consumes the inbox events they moved (by exact
-- ids, %(inbox_ids)s: rows committed meanwhile stay for the next task), appends their
-- events (the history primary key rejects a writer whose view was stale), deletes their
-- task rows, closes the runs whose code finished, and inserts the activity tasks they
-- scheduled. Activities marked eager are leased to this worker at once (eager dispatch: it
-- runs them after commit, with no claim round trip) and returned; the others wait for a
-- claim, their queues woken by a NOTIFY. One statement per batch,
-- not per task: a statement costs both sides more CPU than the rows it writes.
WITH c AS (
    SELECT coalesce(%(now)s::timestamptz, now()) AS now
), t AS (
    SELECT * FROM jsonb_to_recordset(%(tasks)s::jsonb)
        AS t(run_id uuid, events jsonb, workflow_id text, workflow_type text, workflow_queue text,
             activities jsonb, close_status text, failure jsonb)
), consumed AS (
    DELETE FROM cairn.inbox WHERE id = ANY(%(inbox_ids)s::bigint[])
), appended AS (
    INSERT INTO cairn.history (run_id, seq, type, data, at)
    SELECT t.run_id, e.seq, e.type, e.data, c.now
    FROM t, jsonb_to_recordset(t.events) AS e(seq integer, type text, data jsonb), c
), finished AS (
    -- Keep a task if an event arrived that it did not see (see claim_workflow_task). Every
    -- join here is bounded by the batch's run ids as well (%(run_ids)s, %(closing)s: the
    -- tasks' and the closing ones', an index condition): a worker's generic plan is made
    -- once per session, and one made while a table was young hash-joined a scan of the
    -- whole table (runs, inbox, workflow_tasks) on every call for the session's life
    -- (schema 0028, bench/README.md).
    DELETE FROM cairn.workflow_tasks w USING t
    WHERE w.run_id = ANY(%(run_ids)s::uuid[]) AND w.run_id = t.run_id
      AND (t.close_status IS NOT NULL OR NOT EXISTS (
          SELECT 1 FROM cairn.inbox i WHERE i.run_id = ANY(%(run_ids)s::uuid[]) AND i.run_id = t.run_id
                                        AND i.id <> ALL(%(inbox_ids)s::bigint[])))
    RETURNING w.run_id
), closed AS (
    -- A closing task closes the run and drops what is still queued for it. The RETURNING,
    -- run for every updated row, announces it (NOTIFY cairn_closed: the run id, then its
    -- outcome when small, since payloads stop at 8,000 bytes: the status and last event,
    -- what result() would read) and gives a concurrency key's slot back (0023; a trigger
    -- would make every close fetch the old row). Not aggregates over the rows
    -- (count(pg_notify(...)) in CTEs of their own): a plan node's set-up is paid at every
    -- call, closing or not; with them and RETURNING * below, this statement cost 904,000
    -- instructions with nothing to write, 731,000 without (callgrind, bench/README.md).
    UPDATE cairn.runs r SET status = t.close_status, closed_at = c.now, failure = t.failure
    -- (IS TRUE: "status = 'running'" let a young plan read every open run through the partial
    -- index of open runs, the ids a filter; this way the primary key is the only way in.)
    FROM t, c, LATERAL (SELECT jsonb_build_object('status', t.close_status, 'workflow_type', t.workflow_type,
        'last_type', t.events -> -1 -> 'type', 'last_data', t.events -> -1 -> 'data')::text AS outcome) o
    WHERE r.run_id = ANY(%(closing)s::uuid[]) AND r.run_id = t.run_id AND (r.status = 'running') IS TRUE
      AND t.close_status IS NOT NULL
    RETURNING r.run_id,
        pg_notify('cairn_closed', CASE WHEN octet_length(o.outcome) <= 7000
            THEN r.run_id::text || ' ' || o.outcome ELSE r.run_id::text END) AS notified,
        CASE WHEN r.concurrency_key IS NOT NULL
            THEN cairn.concurrency_run_closed(r.run_id, r.namespace, r.concurrency_key) END AS freed
), dropped_activities AS (
    DELETE FROM cairn.activity_tasks WHERE run_id = ANY(%(closing)s::uuid[]) AND run_id IN (SELECT run_id FROM closed)
), dropped_timers AS (
    DELETE FROM cairn.timers WHERE run_id = ANY(%(closing)s::uuid[]) AND run_id IN (SELECT run_id FROM closed)
), dropped_inbox AS (
    DELETE FROM cairn.inbox WHERE run_id = ANY(%(closing)s::uuid[]) AND run_id IN (SELECT run_id FROM closed) AND id <> ALL(%(inbox_ids)s::bigint[])
), scheduled AS (
    -- A priority, fairness key or concurrency key (0023, in the options; a concurrency key
    -- is never eager, see TaskRunner._entry) places a row not leased eagerly in the claim order,
    -- or holds it for a slot (as start_workflow): cairn.activity_at, an SQL function the
    -- planner inlines, is c.now after a null test of the options' two keys without them.
    INSERT INTO cairn.activity_tasks (run_id, namespace, seq, workflow_id, workflow_type, workflow_queue,
        activity_type, queue, input, options, scheduled_at, available_at, schedule_deadline,
        attempt, token, lease_owner, started_at, lease_expires_at, attempt_deadline, heartbeat_deadline,
        priority, fairness_key, concurrency_key)
    SELECT t.run_id, %(namespace)s, a.seq, t.workflow_id, t.workflow_type, t.workflow_queue,
           a.activity_type, a.queue, a.input, a.options, c.now,
           cairn.activity_at(%(namespace)s, t.run_id, a.seq, a.activity_type, a.queue, a.options, c.now, e.eager),
           c.now + ((a.options ->> 'schedule_to_close_timeout')::float8 * interval '1 second'),
           CASE WHEN e.eager THEN 1 ELSE 0 END,
           CASE WHEN e.eager THEN 1 ELSE 0 END,
           CASE WHEN e.eager THEN %(worker)s END,
           CASE WHEN e.eager THEN c.now END,
           CASE WHEN e.eager THEN c.now + %(lease)s * interval '1 second' END,
           CASE WHEN e.eager
                THEN c.now + ((a.options ->> 'start_to_close_timeout')::float8 * interval '1 second') END,
           CASE WHEN e.eager
                THEN c.now + ((a.options ->> 'heartbeat_timeout')::float8 * interval '1 second') END,
           cairn.option_priority(a.options), a.options -> 'priority' ->> 'fairness_key',
           a.options ->> 'concurrency_key'
    FROM t, jsonb_to_recordset(t.activities)
         AS a(seq integer, activity_type text, queue text, input jsonb, options jsonb, eager boolean), c,
         -- An activity type or queue paused namespace-wide (0019) is not leased eagerly (nor
         -- claimed). Whether the namespace has any pause is read at most once per statement
         -- (an InitPlan: only when an activity is eager), a matching pause probed per
         -- activity only then: 0019's per-task SQL function (cairn.unpaused_eager,
         -- dropped by 0024) was planned on every call, a third more time for this statement in W1
         -- (bench/statements.py, 2026-12-07). OFFSET 0 keeps the planner from copying the
         -- expression into each CASE below.
         LATERAL (SELECT a.eager AND (NOT (SELECT EXISTS (SELECT 1 FROM cairn.activity_pauses
                                                          WHERE namespace = %(namespace)s)) OR NOT EXISTS (
                      SELECT 1 FROM cairn.activity_pauses p
                      WHERE p.namespace = %(namespace)s AND p.activity_type IN ('', a.activity_type)
                        AND p.queue IN ('', a.queue))) AS eager OFFSET 0) e
    WHERE t.close_status IS NULL
    -- The columns the worker reads, not *: every column a plan node passes on costs its set-up.
    -- A row not leased eagerly wakes its queue's workers (PostgreSQL sends one NOTIFY per
    -- channel and payload per transaction).
    RETURNING run_id, seq, token, attempt, workflow_id, workflow_type, activity_type, queue, input, options,
              scheduled_at, started_at, heartbeat_details, attempt_deadline, schedule_deadline, workflow_queue,
              lease_owner, CASE WHEN lease_owner IS NULL THEN pg_notify('cairn_activity', queue) END AS woken
)
SELECT s.run_id, s.seq, s.token, s.attempt, s.workflow_id, s.workflow_type, s.activity_type, s.queue, s.input,
       s.options, s.scheduled_at, s.started_at, s.heartbeat_details, s.attempt_deadline, s.schedule_deadline,
       s.workflow_queue, false AS kept
FROM scheduled s
WHERE s.lease_owner IS NOT NULL
UNION ALL
-- One marker row (kept = true) per task kept for an event it did not see: the worker
-- claims again after commit instead of waiting for the fallback poll.
SELECT t.run_id, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, true
FROM t WHERE NOT EXISTS (SELECT 1 FROM finished f WHERE f.run_id = t.run_id)

-- name: start_timers
-- Inserts durable timers for TimerStarted commands and wakes the timer pumps.
WITH ins AS (
    INSERT INTO cairn.timers (run_id, seq, workflow_queue, fire_at)
    SELECT %(run_id)s, t.seq, %(workflow_queue)s, t.fire_at
    FROM jsonb_to_recordset(%(timers)s::jsonb) AS t(seq integer, fire_at timestamptz)
    RETURNING 1
)
SELECT pg_notify('cairn_timer', '') AS notified WHERE EXISTS (SELECT 1 FROM ins)

-- name: cancel_timers
-- Drops timers that the workflow cancelled before they fired.
DELETE FROM cairn.timers WHERE run_id = %(run_id)s AND seq = ANY(%(seqs)s::integer[])

-- name: cancel_activities
-- Drops activity tasks the workflow cancelled; a running attempt learns it at its next
-- lease renewal, and its late result is rejected because the row is gone.
DELETE FROM cairn.activity_tasks WHERE run_id = %(run_id)s AND seq = ANY(%(seqs)s::integer[])

-- name: close_run
-- Marks a run closed and drops everything still queued for it.
WITH closed AS (
    UPDATE cairn.runs SET status = %(status)s, closed_at = coalesce(%(now)s::timestamptz, now()),
                          failure = %(failure)s
    WHERE run_id = %(run_id)s AND status = 'running'
    RETURNING run_id, namespace, concurrency_key
), a AS (
    DELETE FROM cairn.activity_tasks WHERE run_id IN (SELECT run_id FROM closed)
), t AS (
    DELETE FROM cairn.timers WHERE run_id IN (SELECT run_id FROM closed)
), i AS (
    DELETE FROM cairn.inbox WHERE run_id IN (SELECT run_id FROM closed)
), freed AS (
    -- a run of a concurrency key gives its slot back, or its place in the wait (0023)
    SELECT count(cairn.concurrency_run_closed(run_id, namespace, concurrency_key)) AS n
    FROM closed WHERE concurrency_key IS NOT NULL
)
SELECT pg_notify('cairn_closed', %(run_id)s::text) AS notified FROM closed WHERE (SELECT n FROM freed) >= 0

-- name: finish_workflow_task
-- The task is done: delete it (queue rows do not linger). For a closed run, also its inbox:
-- a writer that saw the run open (signal_run's snapshot), then waited on the task row's lock
-- while the run closed, re-created the task and left an event nobody will read.
WITH done AS (
    DELETE FROM cairn.workflow_tasks WHERE run_id = %(run_id)s
)
DELETE FROM cairn.inbox
WHERE run_id = %(run_id)s
  AND EXISTS (SELECT 1 FROM cairn.runs WHERE run_id = %(run_id)s AND status <> 'running')

-- name: fail_workflow_task
-- The workflow code failed (a bug, or non-determinism): keep the task, back it off and
-- record why. History is not touched. A keyed or prioritised run's task is booked to be
-- placed when due, as a new task of its run (0027, place_due_retries: seq 0 is the run's
-- workflow task); a default run's writes nothing more.
WITH back AS (
    UPDATE cairn.workflow_tasks
    SET failures = failures + 1, last_error = %(error)s,
        available_at = coalesce(%(now)s::timestamptz, now()) + %(delay)s * interval '1 second'
    WHERE run_id = %(run_id)s
    RETURNING run_id, available_at, priority, fairness_key
)
INSERT INTO cairn.retry_places (run_id, seq, ready_at)
SELECT run_id, 0, available_at FROM back WHERE fairness_key IS NOT NULL OR priority <> 3
ON CONFLICT (run_id, seq) DO UPDATE SET ready_at = excluded.ready_at

-- name: ensure_workflow_task
-- For operator actions (terminate) that append to history: makes sure the run has a task
-- row to lock (one that no worker will claim), so the single-writer rule holds.
INSERT INTO cairn.workflow_tasks (run_id, namespace, queue, workflow_type, available_at)
SELECT run_id, namespace, queue, workflow_type, '9999-12-31' FROM cairn.runs WHERE run_id = %(run_id)s AND status = 'running'
ON CONFLICT (run_id) DO NOTHING

-- name: lock_workflow_task
-- Waits for and holds the lock of a run's workflow task row (see ensure_workflow_task):
-- no SKIP LOCKED here, the operator's write must wait for a worker mid-task. Read the
-- run's state afterwards with locked_task_state (this statement's snapshot may be older).
SELECT run_id FROM cairn.workflow_tasks WHERE run_id = %(run_id)s FOR UPDATE

-- ---------------------------------------------------------------- inbox writers

-- name: signal_run
-- Puts an external event into a running run's inbox and makes sure a workflow task is
-- pending. ON CONFLICT DO UPDATE (not DO NOTHING) takes the task row's lock, so this
-- waits for a worker mid-task and then re-creates the task it deletes: no lost wake-up.
WITH run AS (
    SELECT run_id, namespace, queue, workflow_type, priority, fairness_key, fairness_weight
    FROM cairn.runs WHERE run_id = %(run_id)s AND status = 'running'
), ev AS (
    INSERT INTO cairn.inbox (run_id, type, data) SELECT run_id, %(type)s, %(data)s FROM run
), task AS (
    -- placed by the run's priority and fairness key, as its first task (0025, cairn.run_task_at)
    INSERT INTO cairn.workflow_tasks (run_id, namespace, queue, workflow_type, available_at, priority, fairness_key)
    SELECT run_id, namespace, queue, workflow_type, cairn.run_task_at(namespace, queue, workflow_type, priority, fairness_key, fairness_weight), coalesce(priority, 3), fairness_key FROM run
    ON CONFLICT (run_id) DO UPDATE SET queue = excluded.queue
    RETURNING queue
)
SELECT pg_notify('cairn_workflow', queue) AS notified FROM task

-- ---------------------------------------------------------------- timers

-- name: fire_due_timers
-- Turns due timers into TimerFired inbox events and pending workflow tasks. SKIP LOCKED:
-- several pumps split the due timers instead of waiting on each other.
WITH due AS (
    DELETE FROM cairn.timers t
    USING (SELECT run_id, seq FROM cairn.timers
           WHERE fire_at <= coalesce(%(now)s::timestamptz, now())
           ORDER BY fire_at LIMIT %(limit)s FOR UPDATE SKIP LOCKED) d
    WHERE t.run_id = d.run_id AND t.seq = d.seq
    RETURNING t.run_id, t.seq, t.workflow_queue, t.fire_at
), ev AS (
    INSERT INTO cairn.inbox (run_id, type, data)
    SELECT run_id, 'TimerFired', jsonb_build_object('timer_seq', seq)
    FROM (SELECT * FROM due ORDER BY fire_at, seq) ordered
), task AS (
    -- DO UPDATE takes the row lock: see signal_run. The namespace comes from the run.
    INSERT INTO cairn.workflow_tasks (run_id, namespace, queue, workflow_type, available_at, priority, fairness_key)
    SELECT d.run_id, r.namespace, d.workflow_queue, r.workflow_type,
           cairn.run_task_at(r.namespace, d.workflow_queue, r.workflow_type, r.priority, r.fairness_key,
                             r.fairness_weight), coalesce(r.priority, 3), r.fairness_key
    FROM (SELECT DISTINCT run_id, workflow_queue FROM due) d JOIN cairn.runs r ON r.run_id = d.run_id
    ON CONFLICT (run_id) DO UPDATE SET queue = excluded.queue
    RETURNING queue
)
SELECT q.queue, pg_notify('cairn_workflow', q.queue) AS notified, (SELECT count(*) FROM due) AS fired
FROM (SELECT DISTINCT queue FROM task) q

-- ---------------------------------------------------------------- activity tasks

-- name: claim_activity_tasks
-- Leases ready activity attempts: bumps the attempt and the fencing token, and sets the
-- deadlines of this attempt. SKIP LOCKED: concurrent claimers take different rows.
WITH k AS (
    SELECT k.queue, k.activity_type FROM unnest(%(queues)s::text[], %(types)s::text[]) AS k(queue, activity_type)
    -- not a pair paused namespace-wide (0019: a row of the small activity_pauses per
    -- type or queue, '' matching any): one probe of its primary key per pair
    WHERE NOT EXISTS (SELECT 1 FROM cairn.activity_pauses p
                      WHERE p.namespace = %(namespace)s AND p.activity_type IN ('', k.activity_type)
                        AND p.queue IN ('', k.queue))
)
UPDATE cairn.activity_tasks a
SET attempt = a.attempt + 1,
    token = a.token + 1,
    lease_owner = %(worker)s,
    started_at = c.now,
    lease_expires_at = c.now + %(lease)s * interval '1 second',
    attempt_deadline = c.now + ((a.options ->> 'start_to_close_timeout')::float8 * interval '1 second'),
    heartbeat_deadline = c.now + ((a.options ->> 'heartbeat_timeout')::float8 * interval '1 second')
FROM (SELECT r.run_id, r.seq, coalesce(%(now)s::timestamptz, now()) AS now
      FROM k,
           -- one ordered index scan per (queue, activity type) pair of the worker, stopped at
           -- %(limit)s rows in all, as in claim_workflow_task: only what it can run (the
           -- constant inner LIMIT: as there; with %(limit)s the generic plan hashed the whole
           -- table to find the rows to update once ~10,000 were ready), in the priority lane
           -- %(low)s (4 and 5, or the others: as there)
           LATERAL (SELECT a2.run_id, a2.seq FROM cairn.activity_tasks a2
                    WHERE a2.namespace = %(namespace)s AND a2.queue = k.queue
                      AND a2.activity_type = k.activity_type AND a2.lease_owner IS NULL AND NOT a2.paused
                      AND a2.available_at <= coalesce(%(now)s::timestamptz, now())
                      AND (a2.priority > 3) = %(low)s::boolean
                    ORDER BY a2.available_at
                    LIMIT 64
                    FOR UPDATE SKIP LOCKED) r
      LIMIT %(limit)s) c
WHERE a.run_id = c.run_id AND a.seq = c.seq
RETURNING a.run_id, a.seq, a.token, a.attempt, a.workflow_id, a.workflow_type, a.activity_type,
          a.queue, a.input, a.options, a.scheduled_at, a.started_at, a.heartbeat_details,
          a.attempt_deadline, a.schedule_deadline, a.workflow_queue

-- name: complete_activity
-- Records an activity's final outcome (completed, or failed for good) as an inbox event,
-- fenced by the attempt token: a late result from a superseded attempt changes nothing.
WITH done AS (
    DELETE FROM cairn.activity_tasks
    WHERE run_id = %(run_id)s AND seq = %(seq)s AND token = %(token)s
    RETURNING run_id, namespace, workflow_queue, workflow_type
), ev AS (
    INSERT INTO cairn.inbox (run_id, type, data) SELECT run_id, %(type)s, %(data)s FROM done
), task AS (
    -- DO UPDATE takes the row lock: see signal_run. Placed by the run's priority and
    -- fairness key (0025; an activity's own may differ).
    INSERT INTO cairn.workflow_tasks (run_id, namespace, queue, workflow_type, available_at, priority, fairness_key)
    SELECT d.run_id, d.namespace, d.workflow_queue, d.workflow_type,
           cairn.run_task_at(d.namespace, d.workflow_queue, d.workflow_type, r.priority, r.fairness_key,
                             r.fairness_weight), coalesce(r.priority, 3), r.fairness_key
    FROM done d JOIN cairn.runs r ON r.run_id = d.run_id
    ON CONFLICT (run_id) DO UPDATE SET queue = excluded.queue
    RETURNING queue
)
SELECT pg_notify('cairn_workflow', queue) AS notified FROM task

-- name: complete_activities_and_lock
-- The fast path, for a group of outcomes (migration 0009's function): records each like
-- complete_activity (fenced by its token), keeps the runs' workflow tasks locked for this
-- transaction (the DO UPDATE takes the row locks, in run-id order), and returns, per run
-- recorded, the seqs recorded and the run's state read in a new snapshot after the locks
-- (as locked_task_state, with the history of the runs in %(replay)s). One round trip.
-- No NOTIFY: nobody else needs waking.
SELECT * FROM cairn.complete_activities_locked(%(outcomes)s::jsonb, %(replay)s::uuid[], %(now)s::timestamptz)

-- name: complete_activities_speculated
-- The speculated fast path's first statement (migration 0010's function): records a group
-- of outcomes fenced by their tokens, locks their runs' tasks, and raises CR001 unless each
-- run is as %(expected)s says (the worker's cache). The record of the tasks the worker ran
-- ahead from its cache follows in the same query.
SELECT cairn.complete_activities_speculated(%(outcomes)s::jsonb, %(expected)s::jsonb) AS recorded

-- name: locked_task_state
-- Runs' tasks, history lengths and inboxes, read in a statement of its own *after* their
-- task rows are locked: a statement that waited for a lock still sees its older snapshot.
SELECT t.run_id, t.failures, nullif(t.available_at, 'infinity') AS available_at, r.workflow_id, r.workflow_type,
       r.queue, r.status, r.created_at,
       (SELECT max(h.seq) FROM cairn.history h WHERE h.run_id = t.run_id) AS last_seq,
       coalesce(%(now)s::timestamptz, now()) AS now,
       (SELECT coalesce(jsonb_agg(jsonb_build_array(i.id, i.type, i.data) ORDER BY i.id), '[]')
        FROM cairn.inbox i WHERE i.run_id = t.run_id) AS inbox,
       -- The whole history of the runs the caller must replay (not in its cache), saving a
       -- read_history round trip each; NULL for the others.
       CASE WHEN t.run_id = ANY(%(replay)s::uuid[])
            THEN (SELECT jsonb_agg(jsonb_build_array(h.seq, h.type, h.data) ORDER BY h.seq)
                  FROM cairn.history h WHERE h.run_id = t.run_id) END AS history
FROM cairn.workflow_tasks t JOIN cairn.runs r ON r.run_id = t.run_id
WHERE t.run_id = ANY(%(run_ids)s::uuid[]) AND r.run_id = ANY(%(run_ids)s::uuid[])  -- both bounded: see record_workflow_tasks
ORDER BY t.run_id

-- name: retry_activity
-- Puts a failed attempt back with a delay (a new available_at), fenced by its token, and
-- bumps the token so that the failed attempt, if it still runs somewhere, cannot complete.
-- No row when the retry would start at or past the schedule-to-close deadline: the
-- database's clock decides (a worker's may be off), and the caller records the failure.
WITH back AS (
    UPDATE cairn.activity_tasks
    SET lease_owner = NULL, token = token + 1, lease_expires_at = NULL, attempt_deadline = NULL,
        heartbeat_deadline = NULL,
        available_at = coalesce(%(now)s::timestamptz, now()) + %(delay)s * interval '1 second',
        last_failure = %(failure)s,
        -- the attempt's last heartbeat, if the batched flush had not written it yet
        heartbeat_details = CASE WHEN %(beat)s::boolean THEN %(details)s::jsonb ELSE heartbeat_details END
    WHERE run_id = %(run_id)s AND seq = %(seq)s AND token = %(token)s
      AND (schedule_deadline IS NULL
           OR coalesce(%(now)s::timestamptz, now()) + %(delay)s * interval '1 second' < schedule_deadline)
    RETURNING run_id, seq, queue, available_at, priority, fairness_key
), placed AS (
    -- a keyed or prioritised activity's retry is placed when due (0025, place_due_retries)
    INSERT INTO cairn.retry_places (run_id, seq, ready_at)
    SELECT run_id, seq, available_at FROM back WHERE fairness_key IS NOT NULL OR priority <> 3
    ON CONFLICT (run_id, seq) DO UPDATE SET ready_at = excluded.ready_at
)
SELECT queue FROM back

-- name: release_activity
-- Gives back an attempt that a draining worker did not finish, without counting it; a
-- keyed or prioritised one at its place (0025), as a new activity.
UPDATE cairn.activity_tasks
SET lease_owner = NULL, lease_expires_at = NULL, attempt_deadline = NULL,
    heartbeat_deadline = NULL, attempt = attempt - 1,
    available_at = CASE WHEN fairness_key IS NULL AND priority = 3 THEN coalesce(%(now)s::timestamptz, now())
                        ELSE cairn.fair_available_at('activity', namespace, queue, activity_type, priority, fairness_key,
                                                     (options -> 'priority' ->> 'fairness_weight')::float8,
                                                     coalesce(%(now)s::timestamptz, now())) END
WHERE run_id = %(run_id)s AND seq = %(seq)s AND token = %(token)s

-- name: renew_activity_leases
-- One batched statement per worker process and flush: extends the leases of the attempts
-- it runs and records their heartbeats. Attempts not returned were cancelled or superseded;
-- cancel_requested says the workflow waits for a returned one to stop (0005). Bounded by the
-- attempts' run ids (= ANY, an index condition): planned on a young table, the join read the
-- whole of activity_tasks by its primary key on every renewal (see record_workflow_tasks).
UPDATE cairn.activity_tasks a
SET lease_expires_at = coalesce(%(now)s::timestamptz, now()) + %(lease)s * interval '1 second',
    heartbeat_details = CASE WHEN h.beat THEN h.details ELSE a.heartbeat_details END,
    heartbeat_at = CASE WHEN h.beat THEN coalesce(%(now)s::timestamptz, now()) ELSE a.heartbeat_at END,
    heartbeat_deadline = CASE WHEN h.beat
        THEN coalesce(%(now)s::timestamptz, now())
             + ((a.options ->> 'heartbeat_timeout')::float8 * interval '1 second')
        ELSE a.heartbeat_deadline END
FROM jsonb_to_recordset(%(beats)s::jsonb)
     AS h(run_id uuid, seq integer, token bigint, beat boolean, details jsonb)
WHERE a.run_id = ANY(ARRAY(SELECT (b ->> 'run_id')::uuid FROM jsonb_array_elements(%(beats)s::jsonb) b))
  AND a.run_id = h.run_id AND a.seq = h.seq AND a.token = h.token AND a.lease_owner = %(worker)s
RETURNING a.run_id, a.seq, a.cancel_requested

-- name: expired_activity_tasks
-- Attempts past a deadline (lease, start-to-close, heartbeat, schedule-to-close), locked
-- for this transaction. SKIP LOCKED: reapers on several workers split the work.
SELECT run_id, seq, token, attempt, activity_type, options, lease_owner, last_failure, workflow_id,
       lease_expires_at, attempt_deadline, heartbeat_deadline, schedule_deadline, cancel_requested,
       coalesce(%(now)s::timestamptz, now()) AS now
FROM cairn.activity_tasks
WHERE timeout_at <= coalesce(%(now)s::timestamptz, now())
ORDER BY timeout_at
LIMIT %(limit)s
FOR UPDATE SKIP LOCKED

-- name: place_due_retries
-- The bookings of retry_places that are due get their place in the claim order as a new task
-- would now: their fairness turn, their priority's lane position. Booked are the retries and
-- throttle reschedules of keyed or prioritised activities (retry_activity,
-- retry_activity_by_token, reschedule_activity, 0025) and, as seq 0, a keyed or prioritised
-- run's workflow task after a failure or a start delay (fail_workflow_task,
-- cairn.start_available_at, 0027). Only a task still waiting with the available_at it was
-- booked with is placed: a booking whose task was leased, booked again or is gone meanwhile
-- is dropped. SKIP LOCKED on the bookings: the workers' maintenance passes split them. SKIP
-- LOCKED on the tasks too: a task held by another transaction (a workflow task a worker
-- claimed at its ready time and is running, an inbox writer's upsert) is not waited for, and
-- its booking is kept for a later pass: the holder deletes the task, books it again, keeps it
-- for an event, or dies and leaves it as it was, to be placed then. Returns the bookings due,
-- and those dropped or placed (the rest were kept).
WITH due AS (
    SELECT run_id, seq, ready_at FROM cairn.retry_places WHERE ready_at <= coalesce(%(now)s::timestamptz, now())
    ORDER BY ready_at LIMIT %(limit)s FOR UPDATE SKIP LOCKED
), waiting AS (
    -- the booked tasks waiting as booked, in this statement's snapshot
    SELECT d.run_id, d.seq FROM due d JOIN cairn.workflow_tasks t ON t.run_id = d.run_id
    WHERE d.seq = 0 AND t.available_at = d.ready_at AND t.run_id = ANY(ARRAY(SELECT run_id FROM due))
    UNION ALL
    SELECT d.run_id, d.seq FROM due d JOIN cairn.activity_tasks a ON a.run_id = d.run_id AND a.seq = d.seq
    WHERE a.lease_owner IS NULL AND a.available_at = d.ready_at
      AND a.run_id = ANY(ARRAY(SELECT run_id FROM due))  -- bounded: see record_workflow_tasks
), free AS (
    -- those of them no other transaction holds, locked
    SELECT t.run_id, 0 AS seq FROM cairn.workflow_tasks t JOIN due d ON d.run_id = t.run_id AND d.seq = 0
    WHERE t.available_at = d.ready_at AND t.run_id = ANY(ARRAY(SELECT run_id FROM due))
    FOR UPDATE OF t SKIP LOCKED
), free_activities AS (
    SELECT a.run_id, a.seq FROM cairn.activity_tasks a JOIN due d ON d.run_id = a.run_id AND d.seq = a.seq
    WHERE a.lease_owner IS NULL AND a.available_at = d.ready_at AND a.run_id = ANY(ARRAY(SELECT run_id FROM due))
    FOR UPDATE OF a SKIP LOCKED
), placed AS (
    UPDATE cairn.workflow_tasks t
    SET available_at = cairn.fair_available_at('workflow', t.namespace, t.queue, t.workflow_type, t.priority,
                                               t.fairness_key, r.fairness_weight, coalesce(%(now)s::timestamptz, now()))
    FROM free f, cairn.runs r WHERE t.run_id = f.run_id AND r.run_id = t.run_id
    RETURNING t.run_id
), placed_activities AS (
    UPDATE cairn.activity_tasks a
    SET available_at = cairn.fair_available_at('activity', a.namespace, a.queue, a.activity_type, a.priority,
                                               a.fairness_key, (a.options -> 'priority' ->> 'fairness_weight')::float8,
                                               coalesce(%(now)s::timestamptz, now()))
    FROM free_activities f WHERE a.run_id = f.run_id AND a.seq = f.seq
    RETURNING a.run_id
), done AS (
    DELETE FROM cairn.retry_places p USING due d
    WHERE p.run_id = d.run_id AND p.seq = d.seq
      AND (NOT EXISTS (SELECT 1 FROM waiting w WHERE w.run_id = d.run_id AND w.seq = d.seq)
           OR EXISTS (SELECT 1 FROM free f WHERE f.run_id = d.run_id AND f.seq = d.seq)
           OR EXISTS (SELECT 1 FROM free_activities f WHERE f.run_id = d.run_id AND f.seq = d.seq))
    RETURNING 1
)
SELECT (SELECT count(*) FROM due) AS due, (SELECT count(*) FROM done) AS done,
       (SELECT count(*) FROM placed) + (SELECT count(*) FROM placed_activities) AS placed

-- name: next_due
-- The earliest moment any work this worker runs becomes ready, for the pollers' sleep:
-- workflow tasks and activities of its (queue, type) pairs (as in the claims: paused work
-- is never due), timers and activity deadlines of any. Both priority lanes of the claim
-- indexes (0023); work held for a concurrency slot ('infinity') is never due by itself.
-- Also the priority lanes the namespace has (cairn.low_lanes), for the claims.
SELECT least(
    (SELECT min(n.available_at)
     FROM unnest(%(workflow_queues)s::text[], %(workflow_types)s::text[]) AS k(queue, workflow_type),
          LATERAL (SELECT t.available_at FROM cairn.workflow_tasks t
                   WHERE t.namespace = %(namespace)s AND t.queue = k.queue AND t.workflow_type = k.workflow_type
                     AND t.pause IS NULL AND (t.priority > 3) IS FALSE AND t.available_at < 'infinity'
                   ORDER BY t.available_at LIMIT 1) n),
    (SELECT min(n.available_at)
     FROM unnest(%(workflow_queues)s::text[], %(workflow_types)s::text[]) AS k(queue, workflow_type),
          LATERAL (SELECT t.available_at FROM cairn.workflow_tasks t
                   WHERE t.namespace = %(namespace)s AND t.queue = k.queue AND t.workflow_type = k.workflow_type
                     AND t.pause IS NULL AND t.priority > 3 AND t.available_at < 'infinity'
                   ORDER BY t.available_at LIMIT 1) n
     WHERE (SELECT EXISTS (SELECT 1 FROM cairn.low_lanes l
                           WHERE l.namespace = %(namespace)s AND l.kind = 'workflow'))),
    (SELECT min(n.available_at)
     FROM unnest(%(activity_queues)s::text[], %(activity_types)s::text[]) AS k(queue, activity_type),
          LATERAL (SELECT a.available_at FROM cairn.activity_tasks a
                   WHERE a.namespace = %(namespace)s AND a.queue = k.queue AND a.activity_type = k.activity_type
                     AND a.lease_owner IS NULL AND NOT a.paused AND (a.priority > 3) IS FALSE AND a.available_at < 'infinity'
                   ORDER BY a.available_at LIMIT 1) n
     WHERE NOT EXISTS (SELECT 1 FROM cairn.activity_pauses p
                       WHERE p.namespace = %(namespace)s AND p.activity_type IN ('', k.activity_type)
                         AND p.queue IN ('', k.queue))),
    (SELECT min(n.available_at)
     FROM unnest(%(activity_queues)s::text[], %(activity_types)s::text[]) AS k(queue, activity_type),
          LATERAL (SELECT a.available_at FROM cairn.activity_tasks a
                   WHERE a.namespace = %(namespace)s AND a.queue = k.queue AND a.activity_type = k.activity_type
                     AND a.lease_owner IS NULL AND NOT a.paused AND a.priority > 3 AND a.available_at < 'infinity'
                   ORDER BY a.available_at LIMIT 1) n
     WHERE (SELECT EXISTS (SELECT 1 FROM cairn.low_lanes l
                           WHERE l.namespace = %(namespace)s AND l.kind = 'activity'))
       AND NOT EXISTS (SELECT 1 FROM cairn.activity_pauses p
                       WHERE p.namespace = %(namespace)s AND p.activity_type IN ('', k.activity_type)
                         AND p.queue IN ('', k.queue))),
    (SELECT min(timeout_at) FROM cairn.activity_tasks WHERE timeout_at IS NOT NULL),
    (SELECT min(fire_at) FROM cairn.timers)
) - coalesce(%(now)s::timestamptz, now()) AS wait,
    -- the kinds of work the namespace ever queued at priority 4 or 5: the claims' second lane
    ARRAY(SELECT l.kind FROM cairn.low_lanes l WHERE l.namespace = %(namespace)s) AS low_lanes

-- ---------------------------------------------------------------- registry

-- name: register_workflow_type
-- Records a workflow type a worker serves on a queue, with its input schema (the last
-- worker to register it on that queue wins; other queues keep their own).
INSERT INTO cairn.workflow_types (namespace, queue, name, input_schema, module, updated_at)
SELECT %(namespace)s, qn.queue, %(name)s, %(input_schema)s, %(module)s, now()
FROM unnest(%(queues)s::text[]) AS qn(queue)
ON CONFLICT (namespace, queue, name) DO UPDATE
SET input_schema = excluded.input_schema, module = excluded.module, updated_at = now()

-- name: register_activity_types
-- Records the activity types a worker runs on each of its queues.
INSERT INTO cairn.activity_types (namespace, queue, name, updated_at)
SELECT %(namespace)s, qn.queue, a.name, now()
FROM unnest(%(queues)s::text[]) AS qn(queue), unnest(%(names)s::text[]) AS a(name)
ON CONFLICT (namespace, queue, name) DO UPDATE SET updated_at = now()

-- name: get_workflow_type
-- A workflow type's registrations, one per queue (its input schema there), by queue name.
SELECT name, queue, input_schema, module, updated_at FROM cairn.workflow_types
WHERE namespace = %(namespace)s AND name = %(name)s
ORDER BY queue

-- name: list_workflow_types
-- Every registered workflow type name.
SELECT DISTINCT name FROM cairn.workflow_types WHERE namespace = %(namespace)s ORDER BY name

-- ---------------------------------------------------------------- workers (cairn workers)

-- name: worker_heartbeat
-- A worker says it lives: its row (cairn.workers, primary key (namespace, identity)) with
-- what it serves, its slots in use and its counters, live until %(live_seconds)s from now.
-- One statement on the worker's own connection (never the hot path's); an upsert, so a row
-- that maintenance removed (or another process of the same identity replaced) comes back.
-- The clock is the database's real one, not a test's virtual clock: liveness is that of a
-- process, which a skipped day of workflow time does not end.
INSERT INTO cairn.workers AS w (namespace, identity, host, pid, queues, workflow_types, activity_types,
                                workflow_slots, workflow_slots_used, activity_slots, activity_slots_used,
                                workflow_tasks, activities_completed, activities_failed, version,
                                started_at, heartbeat_at, live_until, stopped_at)
VALUES (%(namespace)s, %(identity)s, %(host)s, %(pid)s, %(queues)s, %(workflow_types)s, %(activity_types)s,
        %(workflow_slots)s, %(workflow_slots_used)s, %(activity_slots)s, %(activity_slots_used)s,
        %(workflow_tasks)s, %(activities_completed)s, %(activities_failed)s, %(version)s,
        coalesce(%(started_at)s::timestamptz, now()), now(), now() + make_interval(secs => %(live_seconds)s), NULL)
ON CONFLICT (namespace, identity) DO UPDATE
SET host = excluded.host, pid = excluded.pid, queues = excluded.queues, workflow_types = excluded.workflow_types,
    activity_types = excluded.activity_types, workflow_slots = excluded.workflow_slots,
    workflow_slots_used = excluded.workflow_slots_used, activity_slots = excluded.activity_slots,
    activity_slots_used = excluded.activity_slots_used, workflow_tasks = excluded.workflow_tasks,
    activities_completed = excluded.activities_completed, activities_failed = excluded.activities_failed,
    version = excluded.version, started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at,
    live_until = excluded.live_until, stopped_at = NULL
RETURNING started_at

-- name: worker_stopped
-- A graceful stop, after the drain: the row stays (stopped) until maintenance removes it.
-- Only the process that started at %(started_at)s: a newer worker of the same identity keeps its row.
UPDATE cairn.workers
SET stopped_at = now(), heartbeat_at = now(), live_until = now(), workflow_slots_used = 0, activity_slots_used = 0,
    workflow_tasks = %(workflow_tasks)s, activities_completed = %(activities_completed)s,
    activities_failed = %(activities_failed)s
WHERE namespace = %(namespace)s AND identity = %(identity)s AND started_at = %(started_at)s

-- name: forget_workers
-- Removes the rows of workers stopped or silent for longer than %(retention_seconds)s, in
-- every namespace (any worker's maintenance does it, rarely; the table is small). Also the
-- fairness keys' places not written for an hour (0025): such a key enters at its level's
-- head again, as a key with no waiting task does.
WITH places AS (
    DELETE FROM cairn.fairness_places WHERE placed_at < now() - interval '1 hour'
)
DELETE FROM cairn.workers
WHERE coalesce(stopped_at, live_until) < now() - make_interval(secs => %(retention_seconds)s)

-- name: list_workers
-- A namespace's workers, live ones first, then by identity; with %(include_all)s also the stale and
-- stopped ones maintenance has not removed yet; with %(queue)s only that queue's. Status and
-- heartbeat age are read with the database's clock, as the heartbeats were written.
SELECT namespace, identity, host, pid, queues, workflow_types, activity_types,
       workflow_slots, workflow_slots_used, activity_slots, activity_slots_used,
       workflow_tasks, activities_completed, activities_failed, version,
       started_at, heartbeat_at, live_until, stopped_at,
       CASE WHEN stopped_at IS NOT NULL THEN 'stopped' WHEN live_until > now() THEN 'live' ELSE 'stale' END AS status,
       extract(epoch FROM now() - heartbeat_at)::float8 AS heartbeat_age
FROM cairn.workers
WHERE namespace = %(namespace)s
  AND (%(include_all)s OR (stopped_at IS NULL AND live_until > now()))
  AND (%(queue)s::text IS NULL OR %(queue)s::text = ANY(queues))
ORDER BY (stopped_at IS NULL AND live_until > now()) DESC, identity

-- name: unserved_work
-- Of a run's work (its workflow type while it is open, its pending activities) and of the
-- (kind, type, queue) triples given, those no live worker serves: they wait for one (claims
-- take only the types a worker runs). For each, the worker that served it last (live ones
-- first, else the latest heartbeat; none if every such row is gone) and when the type
-- registry last saw it registered on that queue (NULL: never).
WITH work AS (
    SELECT 'workflow' AS kind, r.workflow_type AS type, r.queue, r.namespace FROM cairn.runs r
    WHERE r.run_id = %(run_id)s::uuid AND r.status = 'running'
    UNION
    SELECT 'activity', a.activity_type, a.queue, a.namespace FROM cairn.activity_tasks a
    WHERE a.run_id = %(run_id)s::uuid
    UNION
    SELECT g.kind, g.type, g.queue, %(namespace)s::text
    FROM unnest(%(kinds)s::text[], %(types)s::text[], %(queues)s::text[]) AS g(kind, type, queue)
)
SELECT w.kind, w.type, w.queue, last.identity AS last_worker, last.host AS last_host, last.pid AS last_pid,
       last.heartbeat_at AS last_heartbeat, last.stopped_at AS last_stopped,
       extract(epoch FROM now() - last.heartbeat_at)::float8 AS last_heartbeat_age,
       CASE w.kind
           WHEN 'workflow' THEN (SELECT t.updated_at FROM cairn.workflow_types t
                                 WHERE t.namespace = w.namespace AND t.queue = w.queue AND t.name = w.type)
           ELSE (SELECT t.updated_at FROM cairn.activity_types t
                 WHERE t.namespace = w.namespace AND t.queue = w.queue AND t.name = w.type)
       END AS registered_at
FROM work w
LEFT JOIN LATERAL (
    SELECT k.identity, k.host, k.pid, k.heartbeat_at, k.stopped_at,
           k.stopped_at IS NULL AND k.live_until > now() AS live
    FROM cairn.workers k
    WHERE k.namespace = w.namespace AND w.queue = ANY(k.queues)
      AND w.type = ANY(CASE w.kind WHEN 'workflow' THEN k.workflow_types ELSE k.activity_types END)
    ORDER BY (k.stopped_at IS NULL AND k.live_until > now()) DESC, k.heartbeat_at DESC
    LIMIT 1
) last ON true
WHERE last.live IS NOT TRUE
ORDER BY 1 DESC, 2, 3

-- ---------------------------------------------------------------- reading runs

-- name: get_run
-- A run by run id, only if it is a run of this namespace's workflow id: a run id from
-- another namespace (or of another workflow) is not found, like an unknown one.
SELECT run_id, namespace, workflow_id, workflow_type, queue, status, created_at, closed_at, failure
FROM cairn.runs WHERE run_id = %(run_id)s AND namespace = %(namespace)s AND workflow_id = %(workflow_id)s

-- name: latest_run_by_workflow_id
-- The newest run of a workflow id.
SELECT run_id, namespace, workflow_id, workflow_type, queue, status, created_at, closed_at, failure
FROM cairn.runs WHERE namespace = %(namespace)s AND workflow_id = %(workflow_id)s
ORDER BY run_id DESC LIMIT 1

-- name: list_runs
-- Runs, newest first, optionally filtered by status and type; with %(before)s (a page
-- token: the last run id of the previous page) only older runs. Run ids grow with time, so
-- the pages are a keyset: runs started meanwhile never shift a later page. The same
-- columns as list_runs_where, so a listing has one shape with or without a filter.
SELECT run_id, namespace, workflow_id, workflow_type, queue, status, created_at, closed_at, failure,
       search_attributes, memo
FROM cairn.runs
WHERE namespace = %(namespace)s
  AND (%(status)s::text IS NULL OR status = %(status)s::text)
  AND (%(workflow_type)s::text IS NULL OR workflow_type = %(workflow_type)s::text)
  AND (%(before)s::uuid IS NULL OR run_id < %(before)s::uuid)
ORDER BY run_id DESC
LIMIT %(limit)s

-- name: count_runs
-- How many runs match a listing's filters ({where}: a cairn.visibility fragment, or true),
-- and how many of them are newer than the page token %(before)s (the pages before it).
SELECT count(*) AS total,
       count(*) FILTER (WHERE run_id >= %(before)s::uuid) AS before
FROM cairn.runs
WHERE namespace = %(namespace)s
  AND (%(status)s::text IS NULL OR status = %(status)s::text)
  AND (%(workflow_type)s::text IS NULL OR workflow_type = %(workflow_type)s::text)
  AND ({where})

-- name: pending_activities
-- A run's activities that have no recorded outcome yet, for describe. `attempt` is the
-- attempt running, or (none running: waiting for its first try, a retry or the end of a
-- throttle) the attempt that runs next, as Temporal counts them: never 0.
SELECT seq, activity_type, queue,
       CASE WHEN lease_owner IS NULL THEN attempt + 1 ELSE attempt END AS attempt, scheduled_at,
       -- its ready time: a priority's or a fairness key's place is before it (0023); held for
       -- a concurrency slot, none
       CASE WHEN available_at = 'infinity' THEN NULL ELSE greatest(available_at, scheduled_at) END AS available_at,
       started_at, lease_owner,
       lease_expires_at, heartbeat_at, heartbeat_details, last_failure, paused, pause,
       priority, fairness_key, concurrency_key, available_at = 'infinity' AS waiting_for_slot
FROM cairn.activity_tasks WHERE run_id = %(run_id)s ORDER BY seq

-- name: pending_timers
-- A run's timers that have not fired, for describe.
SELECT seq, fire_at FROM cairn.timers WHERE run_id = %(run_id)s ORDER BY seq

-- name: pending_workflow_task
-- A run's pending workflow task, with the last failure if its code failed, and its pause.
-- A run waiting for a concurrency slot (0023) has its task held ('infinity': NULL here).
SELECT nullif(available_at, 'infinity') AS available_at, failures, last_error, pause, priority,
       available_at = 'infinity' AS waiting_for_slot
FROM cairn.workflow_tasks WHERE run_id = %(run_id)s

-- name: run_outcome
-- A run's status, and its last event once it is closed (its outcome), for result(); like
-- get_run, only a run of this namespace's workflow id.
SELECT r.status, r.workflow_type, l.type AS last_type, l.data AS last_data
FROM cairn.runs r
LEFT JOIN LATERAL (SELECT h.type, h.data FROM cairn.history h WHERE h.run_id = r.run_id AND r.status <> 'running'
                   ORDER BY h.seq DESC LIMIT 1) l ON true
WHERE r.run_id = %(run_id)s AND r.namespace = %(namespace)s AND r.workflow_id = %(workflow_id)s

-- name: last_history_event
-- The last event of a run (its outcome, once closed).
SELECT seq, type, data, at FROM cairn.history WHERE run_id = %(run_id)s ORDER BY seq DESC LIMIT 1

-- name: saga_events
-- The events a run's sagas are rebuilt from, for describe: saga markers, the activities
-- scheduled inside a saga, and those activities' outcomes.
WITH tagged AS (
    SELECT seq, type, data, at FROM cairn.history
    WHERE run_id = %(run_id)s
      AND ((type = 'MarkerRecorded' AND data ->> 'kind' = 'saga') OR (type = 'ActivityScheduled' AND data ? 'saga'))
)
SELECT seq, type, data, at FROM tagged
UNION ALL
SELECT o.seq, o.type, o.data, o.at FROM cairn.history o
WHERE o.run_id = %(run_id)s
  AND o.type IN ('ActivityCompleted', 'ActivityFailed', 'ActivityCancelRequested')
  AND (o.data ->> 'activity_seq')::int IN (SELECT seq FROM tagged WHERE type = 'ActivityScheduled')
ORDER BY seq

-- ---------------------------------------------------------------- messages: queries
-- Signals need no statement of their own: they are SignalReceived events put in the
-- inbox by signal_run (signal-with-start runs start_workflow and signal_run in one
-- transaction).

-- name: insert_query_request
-- Asks the workers of the run's queue to answer a query, and wakes them.
WITH req AS (
    INSERT INTO cairn.query_requests (id, run_id, namespace, queue, workflow_type, name, args, created_at)
    VALUES (%(id)s, %(run_id)s, %(namespace)s, %(queue)s, %(workflow_type)s, %(name)s, %(args)s,
            coalesce(%(now)s::timestamptz, now()))
    RETURNING queue
)
SELECT pg_notify('cairn_query', queue) AS notified FROM req

-- name: query_request_answer
-- A query's answer or error, once a worker has written it.
SELECT answer, error FROM cairn.query_requests WHERE id = %(id)s AND answered_at IS NOT NULL

-- name: delete_query_request
-- The client has its answer, or gave up: the request goes (queue rows do not linger).
DELETE FROM cairn.query_requests WHERE id = %(id)s

-- name: claim_query_request
-- Locks the oldest unanswered query of these queues and workflow types until the answer
-- is written. SKIP LOCKED: several workers split the requests instead of queueing on one
-- row lock and then answering the same query twice. Returns the run and the seq of its
-- history's last event, so the worker can tell whether its cached instance is current.
-- A query to an open run waits, as in Temporal, until the run has taken in everything sent
-- to it before the query: its first workflow task must be recorded (before it, the history
-- is WorkflowStarted alone and no handler is registered), and the inbox events that came
-- before the query (a signal, an update, an activity outcome) consumed, so a query right
-- after a signal sees it. Unless the run's task is failing (bad code, backing off), or the
-- run is paused (0019; even before its first task): then the query reads the state as it is
-- rather than wait for a fix or a resume. Always one row: with no
-- request claimed (id NULL), `waiting` says whether such a query waits; the worker then
-- claims again after it commits a workflow task. One statement, one snapshot: a task
-- committed after it was seen waiting, never missed in between (see QueryAnswerer).
WITH claimed AS (
    SELECT id, run_id, name, args FROM cairn.query_requests w
    WHERE namespace = %(namespace)s AND queue = ANY(%(queues)s::text[]) AND answered_at IS NULL
      AND workflow_type = ANY(%(workflow_types)s::text[])
      AND NOT EXISTS (
          SELECT 1 FROM cairn.runs f WHERE f.run_id = w.run_id AND f.status = 'running'
          AND NOT EXISTS (SELECT 1 FROM cairn.workflow_tasks p WHERE p.run_id = f.run_id AND p.pause IS NOT NULL)
          AND (NOT EXISTS (SELECT 1 FROM cairn.history h WHERE h.run_id = f.run_id AND h.seq > 1)
               OR (EXISTS (SELECT 1 FROM cairn.inbox i WHERE i.run_id = f.run_id AND i.at <= w.created_at)
                   AND NOT EXISTS (SELECT 1 FROM cairn.workflow_tasks t WHERE t.run_id = f.run_id AND t.failures > 0))))
    ORDER BY created_at
    LIMIT 1
    FOR UPDATE SKIP LOCKED
)
SELECT q.id, q.run_id, q.name, q.args, r.workflow_id, r.workflow_type, r.queue, r.status, r.created_at,
       (SELECT max(h.seq) FROM cairn.history h WHERE h.run_id = q.run_id) AS last_seq,
       q.id IS NULL AND EXISTS (
           SELECT 1 FROM cairn.query_requests w JOIN cairn.runs f ON f.run_id = w.run_id
           WHERE w.namespace = %(namespace)s AND w.queue = ANY(%(queues)s::text[]) AND w.answered_at IS NULL
             AND w.workflow_type = ANY(%(workflow_types)s::text[]) AND f.status = 'running'
             AND NOT EXISTS (SELECT 1 FROM cairn.workflow_tasks p WHERE p.run_id = f.run_id AND p.pause IS NOT NULL)
             AND (NOT EXISTS (SELECT 1 FROM cairn.history h WHERE h.run_id = f.run_id AND h.seq > 1)
                  OR (EXISTS (SELECT 1 FROM cairn.inbox i WHERE i.run_id = f.run_id AND i.at <= w.created_at)
                      AND NOT EXISTS (SELECT 1 FROM cairn.workflow_tasks t
                                      WHERE t.run_id = f.run_id AND t.failures > 0)))
       ) AS waiting
FROM (SELECT 1) one
LEFT JOIN (claimed q JOIN cairn.runs r ON r.run_id = q.run_id) ON true

-- name: answer_query_request
-- Writes a query's answer (or error) and wakes the client that waits for it.
WITH answered AS (
    UPDATE cairn.query_requests
    SET answer = %(answer)s, error = %(error)s, answered_at = coalesce(%(now)s::timestamptz, now())
    WHERE id = %(id)s
    RETURNING id
)
SELECT pg_notify('cairn_query_answered', id::text) AS notified FROM answered

-- ---------------------------------------------------------------- activity cancellation types

-- name: request_activity_cancels
-- Cancellation type wait_cancellation_completed, run by the workflow task that recorded the
-- ActivityCancelRequested commands (after record_workflow_tasks, so an activity scheduled
-- in the same task is there). An attempt not started (no lease: never claimed, or waiting
-- out a retry backoff) is cancelled at once: its row goes and an ActivityCancelled event
-- lands in the run's own inbox, with the run's task re-created (record_workflow_tasks
-- deleted it in this transaction; DO UPDATE as in signal_run). A running attempt's row is
-- flagged; the attempt learns it at its next lease renewal and records ActivityCancelled
-- (or its outcome) itself.
WITH waiting AS (
    DELETE FROM cairn.activity_tasks
    WHERE run_id = %(run_id)s AND seq = ANY(%(seqs)s::integer[]) AND lease_owner IS NULL
    RETURNING run_id, namespace, seq, attempt, workflow_queue, workflow_type
), ev AS (
    INSERT INTO cairn.inbox (run_id, type, data)
    SELECT run_id, 'ActivityCancelled',
           jsonb_build_object('activity_seq', seq, 'attempt', attempt, 'started', false)
    FROM waiting ORDER BY seq
), flagged AS (
    UPDATE cairn.activity_tasks SET cancel_requested = true
    WHERE run_id = %(run_id)s AND seq = ANY(%(seqs)s::integer[]) AND lease_owner IS NOT NULL
), task AS (
    INSERT INTO cairn.workflow_tasks (run_id, namespace, queue, workflow_type, available_at, priority, fairness_key)
    SELECT w.run_id, w.namespace, w.workflow_queue, w.workflow_type,
           cairn.run_task_at(w.namespace, w.workflow_queue, w.workflow_type, r.priority, r.fairness_key,
                             r.fairness_weight), coalesce(r.priority, 3), r.fairness_key
    FROM (SELECT DISTINCT run_id, namespace, workflow_queue, workflow_type FROM waiting) w
    JOIN cairn.runs r ON r.run_id = w.run_id
    ON CONFLICT (run_id) DO UPDATE SET queue = excluded.queue
    RETURNING queue
)
SELECT pg_notify('cairn_workflow', queue) AS notified FROM task

-- ---------------------------------------------------------------- visibility and operators (reset, retry)

-- name: upsert_search_attributes
-- Applies a workflow task's UpsertSearchAttributes commands to the run's row, in the
-- task's transaction: removes the keys set to null, then sets the others.
UPDATE cairn.runs SET search_attributes = (search_attributes - %(remove)s::text[]) || %(set)s::jsonb
WHERE run_id = %(run_id)s

-- name: run_visibility
-- A run's search attributes, memo and reset/retry lineage, for describe.
SELECT search_attributes, memo, reset_from FROM cairn.runs WHERE run_id = %(run_id)s

-- name: list_runs_where
-- Runs, newest first, filtered like list_runs and by a `--where` filter: {where} is a
-- fragment built by cairn.visibility from fixed text and %(wN)s parameters, never user SQL.
SELECT run_id, namespace, workflow_id, workflow_type, queue, status, created_at, closed_at, failure,
       search_attributes, memo
FROM cairn.runs
WHERE namespace = %(namespace)s
  AND (%(status)s::text IS NULL OR status = %(status)s::text)
  AND (%(workflow_type)s::text IS NULL OR workflow_type = %(workflow_type)s::text)
  AND ({where})
  AND (%(before)s::uuid IS NULL OR run_id < %(before)s::uuid)
ORDER BY run_id DESC
LIMIT %(limit)s

-- name: insert_reset_run
-- Creates the new run of a reset in one statement: the run (with its lineage, and the old
-- run's priority, fairness key and weight, and concurrency key), the copied history
-- (original seqs, types, data and times), the reset task's input events and re-applied
-- signals in its inbox, in order, and a pending workflow task, placed as a start's (0023,
-- cairn.start_available_at: its priority's place, a slot of its key or the hold).
WITH c AS (
    SELECT coalesce(%(now)s::timestamptz, now()) AS now
), new_run AS (
    INSERT INTO cairn.runs (run_id, namespace, workflow_id, workflow_type, queue, created_at,
                            search_attributes, memo, reset_from, priority, fairness_key, fairness_weight,
                            concurrency_key)
    SELECT %(run_id)s, %(namespace)s, %(workflow_id)s, %(workflow_type)s, %(queue)s, c.now,
           %(search_attributes)s::jsonb, %(memo)s::jsonb, %(reset_from)s::jsonb,
           %(priority)s::smallint, %(fairness_key)s::text, %(fairness_weight)s::real, %(concurrency_key)s::text
    FROM c
    RETURNING run_id, namespace, queue, workflow_type, created_at, priority, fairness_key, fairness_weight,
              concurrency_key
), copied AS (
    INSERT INTO cairn.history (run_id, seq, type, data, at)
    SELECT n.run_id, e.seq, e.type, e.data, coalesce(e.at, n.created_at)
    FROM new_run n, jsonb_to_recordset(%(events)s::jsonb) AS e(seq integer, type text, data jsonb, at timestamptz)
), inbox AS (
    INSERT INTO cairn.inbox (run_id, type, data)
    SELECT n.run_id, i.type, i.data
    FROM new_run n,
         ROWS FROM (jsonb_to_recordset(%(inbox)s::jsonb) AS (type text, data jsonb)) WITH ORDINALITY AS i(type, data, ord)
    ORDER BY i.ord
), task AS (
    INSERT INTO cairn.workflow_tasks (run_id, namespace, queue, workflow_type, available_at, created_at,
                                      priority, fairness_key)
    SELECT run_id, namespace, queue, workflow_type,
           cairn.start_available_at(namespace, queue, workflow_type, run_id, created_at, NULL, priority,
                                    fairness_key, fairness_weight, concurrency_key),
           created_at, coalesce(priority, 3), fairness_key
    FROM new_run
)
SELECT run_id, pg_notify('cairn_workflow', queue) AS notified FROM new_run

-- name: insert_reset_activities
-- Re-creates, for the new run of a reset, the activities pending at the reset point:
-- fresh attempts (attempt 0, unleased, ready now) with their recorded options.
WITH c AS (
    SELECT coalesce(%(now)s::timestamptz, now()) AS now
), ins AS (
    INSERT INTO cairn.activity_tasks (run_id, namespace, seq, workflow_id, workflow_type, workflow_queue,
        activity_type, queue, input, options, scheduled_at, available_at, schedule_deadline,
        priority, fairness_key, concurrency_key)
    SELECT %(run_id)s, %(namespace)s, a.seq, %(workflow_id)s, %(workflow_type)s, %(workflow_queue)s,
           a.activity_type, a.queue, a.input, a.options, c.now,
           -- placed, or held for a slot, as record_workflow_tasks does (0023)
           cairn.activity_at(%(namespace)s, %(run_id)s::uuid, a.seq, a.activity_type, a.queue, a.options, c.now,
                             false),
           c.now + ((a.options ->> 'schedule_to_close_timeout')::float8 * interval '1 second'),
           cairn.option_priority(a.options), a.options -> 'priority' ->> 'fairness_key',
           a.options ->> 'concurrency_key'
    FROM jsonb_to_recordset(%(activities)s::jsonb)
         AS a(seq integer, activity_type text, queue text, input jsonb, options jsonb), c
    RETURNING queue
)
SELECT pg_notify('cairn_activity', queue) AS notified FROM (SELECT DISTINCT queue FROM ins) x

-- name: set_reset_from
-- Records where a retried run came from.
UPDATE cairn.runs SET reset_from = %(reset_from)s WHERE run_id = %(run_id)s

-- ---------------------------------------------------------------- run lifecycle
-- Child workflows, continue-as-new, execution timeouts (store/lifecycle.py).

-- name: close_family
-- After a run closed (any way), in the closer's transaction: tells its parent (a
-- ChildWorkflowCompleted/Failed inbox event, unless the run continued as new: the chain's
-- last run tells) and applies the parent close policy to its open children (a
-- TerminateRequested or CancelRequested inbox event). Inbox + task upsert with DO UPDATE,
-- as in signal_run; task rows are upserted in run-id order. The closer holds its own task
-- lock while it waits for theirs: a parent and a child closing at once can deadlock, which
-- Postgres detects; the worker retries the aborted task (see Worker.run_workflow_task).
WITH me AS (
    SELECT run_id, workflow_id, parent_run_id, parent_seq, status FROM cairn.runs
    WHERE run_id = %(run_id)s::uuid AND status <> 'running'
), parent AS (
    SELECT p.run_id, p.namespace, p.queue, p.workflow_type, p.priority, p.fairness_key, p.fairness_weight,
           jsonb_build_object('child_seq', me.parent_seq, 'workflow_id', me.workflow_id,
                              'run_id', me.run_id, 'status', me.status) || %(child_event)s::jsonb AS data
    FROM me JOIN cairn.runs p ON p.run_id = me.parent_run_id
    WHERE p.status = 'running' AND me.status <> 'continued_as_new'
), to_parent AS (
    INSERT INTO cairn.inbox (run_id, type, data) SELECT run_id, %(child_event_type)s::text, data FROM parent
), children AS (
    SELECT c.run_id, c.namespace, c.queue, c.workflow_type, c.priority, c.fairness_key, c.fairness_weight,
           c.parent_close_policy FROM cairn.runs c
    WHERE c.parent_run_id = %(run_id)s::uuid AND c.status = 'running' AND c.parent_close_policy <> 'abandon'
), to_children AS (
    INSERT INTO cairn.inbox (run_id, type, data)
    SELECT run_id, CASE parent_close_policy WHEN 'terminate' THEN 'TerminateRequested' ELSE 'CancelRequested' END,
           jsonb_build_object('reason', 'parent run ' || %(run_id)s::text || ' closed (parent close policy '
                                        || parent_close_policy || ')')
    FROM children ORDER BY run_id
), tasks AS (
    -- each placed by its run's priority and fairness key (0025)
    INSERT INTO cairn.workflow_tasks (run_id, namespace, queue, workflow_type, available_at, priority, fairness_key)
    SELECT run_id, namespace, queue, workflow_type,
           cairn.run_task_at(namespace, queue, workflow_type, priority, fairness_key, fairness_weight),
           coalesce(priority, 3), fairness_key
    FROM (SELECT run_id, namespace, queue, workflow_type, priority, fairness_key, fairness_weight FROM parent
          UNION ALL
          SELECT run_id, namespace, queue, workflow_type, priority, fairness_key, fairness_weight FROM children) x
    ORDER BY run_id
    ON CONFLICT (run_id) DO UPDATE SET queue = excluded.queue
    RETURNING queue
)
SELECT count(pg_notify('cairn_workflow', queue)) AS notified FROM tasks

-- name: request_child_cancel
-- A parent's ChildWorkflowCancelRequested commands: a CancelRequested in each child's
-- current (open) run's inbox, found by the command's seq; inbox protocol as in signal_run.
WITH child AS (
    SELECT run_id, namespace, queue, workflow_type, priority, fairness_key, fairness_weight FROM cairn.runs
    WHERE parent_run_id = %(run_id)s::uuid AND parent_seq = ANY(%(seqs)s::integer[]) AND status = 'running'
), ev AS (
    INSERT INTO cairn.inbox (run_id, type, data)
    SELECT run_id, 'CancelRequested', jsonb_build_object('reason', 'cancelled by parent run ' || %(run_id)s::text)
    FROM child ORDER BY run_id
), task AS (
    INSERT INTO cairn.workflow_tasks (run_id, namespace, queue, workflow_type, available_at, priority, fairness_key)
    SELECT run_id, namespace, queue, workflow_type,
           cairn.run_task_at(namespace, queue, workflow_type, priority, fairness_key, fairness_weight),
           coalesce(priority, 3), fairness_key
    FROM child ORDER BY run_id
    ON CONFLICT (run_id) DO UPDATE SET queue = excluded.queue
    RETURNING queue
)
SELECT count(pg_notify('cairn_workflow', queue)) AS notified FROM task

-- name: run_lifecycle
-- A run's parent link, execution deadline, search attributes and memo, inherited by the
-- run it continues as (as in Temporal); its priority and keys, which a continued, reset or
-- retried run keeps.
SELECT r.parent_run_id, r.parent_seq, r.parent_close_policy, r.execution_deadline,
       r.search_attributes, r.memo, p.workflow_id AS parent_workflow_id,
       r.priority, r.fairness_key, r.fairness_weight, r.concurrency_key
FROM cairn.runs r LEFT JOIN cairn.runs p ON p.run_id = r.parent_run_id
WHERE r.run_id = %(run_id)s::uuid

-- name: run_successor
-- The run that a run continued as, if any (result() follows the chain).
SELECT run_id FROM cairn.runs WHERE continued_from = %(run_id)s::uuid

-- name: run_in_chain
-- Whether run %(run_id)s is run %(first)s or comes from it: continue-as-new
-- (continued_from), reset or retry (reset_from) links, walked back from it by primary key
-- (a run has at most one of each), within this namespace's workflow id. A started handle
-- cancels and terminates only such runs.
WITH RECURSIVE back(run_id, continued_from, reset_of) AS (
    SELECT run_id, continued_from, (reset_from ->> 'run_id')::uuid FROM cairn.runs
    WHERE run_id = %(run_id)s::uuid AND namespace = %(namespace)s AND workflow_id = %(workflow_id)s
    UNION
    SELECT r.run_id, r.continued_from, (r.reset_from ->> 'run_id')::uuid
    FROM back b JOIN cairn.runs r ON r.run_id IN (b.continued_from, b.reset_of)
    WHERE r.namespace = %(namespace)s AND r.workflow_id = %(workflow_id)s
)
SELECT EXISTS (SELECT 1 FROM back WHERE run_id = %(first)s::uuid) AS in_chain

-- name: run_links
-- A run's parent, chain neighbours, execution deadline and children, for describe.
SELECT r.parent_run_id, p.workflow_id AS parent_workflow_id, r.parent_seq, r.parent_close_policy,
       r.continued_from, r.execution_deadline,
       r.priority, r.fairness_key, r.fairness_weight, r.concurrency_key,
       (SELECT n.run_id FROM cairn.runs n WHERE n.continued_from = r.run_id LIMIT 1) AS continued_to,
       (SELECT coalesce(jsonb_agg(jsonb_build_object(
                   'workflow_id', c.workflow_id, 'run_id', c.run_id, 'workflow_type', c.workflow_type,
                   'status', c.status, 'seq', c.parent_seq, 'parent_close_policy', c.parent_close_policy)
               ORDER BY c.run_id), '[]')
        FROM cairn.runs c WHERE c.parent_run_id = r.run_id) AS children
FROM cairn.runs r LEFT JOIN cairn.runs p ON p.run_id = r.parent_run_id
WHERE r.run_id = %(run_id)s::uuid

-- ---------------------------------------------------------------- resilience: reschedule, breakers, rate limits

-- name: reschedule_state
-- What a Reschedule needs to know about its attempt (fenced by its token): how long the
-- activity has already spent rescheduled, its schedule-to-close deadline, the time.
SELECT throttled_seconds, schedule_deadline, attempt, coalesce(%(now)s::timestamptz, now()) AS now
FROM cairn.activity_tasks
WHERE run_id = %(run_id)s AND seq = %(seq)s AND token = %(token)s
-- Held until the reschedule (or the final failure) is written: the reaper cannot fail the
-- attempt in between.
FOR UPDATE

-- name: reschedule_activity
-- activity.Reschedule: puts the attempt back at now + delay WITHOUT counting it (attempt
-- - 1, as release_activity), bumps the token (fencing the attempt that raised it), adds
-- the counted part of the delay to the throttle time and says why in last_failure
-- (describe shows it).
WITH back AS (
    UPDATE cairn.activity_tasks
    SET lease_owner = NULL, token = token + 1, lease_expires_at = NULL, attempt_deadline = NULL,
        heartbeat_deadline = NULL, attempt = attempt - 1,
        available_at = coalesce(%(now)s::timestamptz, now()) + %(delay)s * interval '1 second',
        throttled_seconds = throttled_seconds + %(counted)s,
        last_failure = %(failure)s
    WHERE run_id = %(run_id)s AND seq = %(seq)s AND token = %(token)s
    RETURNING run_id, seq, queue, available_at, priority, fairness_key
), placed AS (
    -- a keyed or prioritised activity's retry is placed when due (0025, place_due_retries)
    INSERT INTO cairn.retry_places (run_id, seq, ready_at)
    SELECT run_id, seq, available_at FROM back WHERE fairness_key IS NOT NULL OR priority <> 3
    ON CONFLICT (run_id, seq) DO UPDATE SET ready_at = excluded.ready_at
)
SELECT queue, available_at FROM back

-- name: breaker_read
-- A breaker's row, created on first use with the caller's config (first writer wins: an
-- existing row keeps its config, so every worker does the same window math). No lock:
-- the closed/disabled/open-not-yet paths only read. May return no row when a concurrent
-- first insert commits meanwhile (the caller reads again).
WITH c AS (
    SELECT coalesce(%(now)s::timestamptz, now()) AS now
), ins AS (
    INSERT INTO cairn.breakers (name, config, updated_at)
    SELECT %(name)s, %(config)s, c.now FROM c
    ON CONFLICT (name) DO NOTHING
    RETURNING *
)
SELECT b.*, c.now FROM (SELECT * FROM ins UNION ALL SELECT * FROM cairn.breakers WHERE name = %(name)s) b, c
LIMIT 1

-- name: breaker_lock
-- Locks a breaker's row for the rest of the transaction: every transition and every
-- windowed outcome is read-modify-write of this row, so workers take turns on the lock
-- instead of racing (two failures recorded at once must both count; two admissions into
-- half-open must see each other's probe). Waits (no SKIP LOCKED): the caller needs it.
SELECT b.*, coalesce(%(now)s::timestamptz, now()) AS now
FROM cairn.breakers b WHERE b.name = %(name)s FOR UPDATE

-- name: breaker_write
-- Writes a locked breaker's new state and window, and adds to its call counters.
UPDATE cairn.breakers
SET state = %(state)s, generation = %(generation)s, window_data = %(window_data)s,
    opened_at = %(opened_at)s, open_until = %(open_until)s, consecutive_opens = %(consecutive_opens)s,
    half_open_successes = %(half_open_successes)s, resume_to = %(resume_to)s,
    successful = successful + %(successful)s, failed = failed + %(failed)s, slow = slow + %(slow)s,
    not_permitted = not_permitted + %(not_permitted)s,
    updated_at = coalesce(%(now)s::timestamptz, now())
WHERE name = %(name)s

-- name: breaker_not_permitted
-- Counts a call refused by an open breaker (no lock needed: an increment is atomic).
UPDATE cairn.breakers SET not_permitted = not_permitted + 1 WHERE name = %(name)s

-- name: breaker_event
-- Records a breaker transition.
INSERT INTO cairn.breaker_events (name, from_state, to_state, generation, reason, at)
VALUES (%(name)s, %(from_state)s, %(to_state)s, %(generation)s, %(reason)s, coalesce(%(now)s::timestamptz, now()))

-- name: breaker_live_probes
-- Half-open: drops the breaker's expired probe leases (a crashed prober frees its slot)
-- and those of older generations, then counts the live ones. Run under breaker_lock.
WITH gone AS (
    DELETE FROM cairn.breaker_probes
    WHERE name = %(name)s
      AND (expires_at <= coalesce(%(now)s::timestamptz, now()) OR generation <> %(generation)s)
    RETURNING probe_id
)
SELECT count(*) AS live, min(expires_at) AS first_expiry
FROM cairn.breaker_probes
WHERE name = %(name)s AND generation = %(generation)s
  AND expires_at > coalesce(%(now)s::timestamptz, now())
  AND probe_id NOT IN (SELECT probe_id FROM gone)

-- name: breaker_take_probe
-- Half-open: a probe lease for one admitted call. Run under breaker_lock.
INSERT INTO cairn.breaker_probes (name, probe_id, generation, expires_at)
VALUES (%(name)s, %(probe_id)s, %(generation)s,
        coalesce(%(now)s::timestamptz, now()) + %(lease)s * interval '1 second')

-- name: breaker_renew_probe
-- A probe still running: its lease moves on (it holds its slot for the life of its call).
UPDATE cairn.breaker_probes SET expires_at = coalesce(%(now)s::timestamptz, now()) + %(lease)s * interval '1 second'
WHERE name = %(name)s AND probe_id = %(probe_id)s

-- name: breaker_release_probe
-- A probe's outcome is in (or the call never happened): its lease goes.
DELETE FROM cairn.breaker_probes WHERE name = %(name)s AND probe_id = %(probe_id)s

-- name: breaker_clear_probes
-- A transition out of half-open: every probe lease of the breaker goes.
DELETE FROM cairn.breaker_probes WHERE name = %(name)s

-- name: breaker_delete
-- Operator reset: forgets a breaker (its probes go with it, ON DELETE CASCADE).
DELETE FROM cairn.breakers WHERE name = %(name)s

-- name: list_breakers
-- Every breaker with its live probe count, for `cairn breakers`.
SELECT b.*, coalesce(%(now)s::timestamptz, now()) AS now,
       (SELECT count(*) FROM cairn.breaker_probes p
        WHERE p.name = b.name AND p.expires_at > coalesce(%(now)s::timestamptz, now())) AS live_probes
FROM cairn.breakers b ORDER BY b.name

-- name: breaker_recent_events
-- The last transitions of a breaker, newest first.
SELECT from_state, to_state, generation, reason, at FROM cairn.breaker_events
WHERE name = %(name)s ORDER BY id DESC LIMIT %(limit)s

-- name: rate_limit_lock
-- Creates (first use) and locks a deployment's rate-limit row for the rest of the
-- transaction: reservations of one deployment take turns, so two workers cannot both
-- take the last request of a window. DO UPDATE (not DO NOTHING) takes the lock either way.
-- The time is read AFTER the lock (clock_timestamp, not the transaction's start): requests
-- are then counted in the order they were admitted, whatever each waited for the lock.
INSERT INTO cairn.rate_limits (deployment, updated_at)
VALUES (%(deployment)s, coalesce(%(now)s::timestamptz, now()))
ON CONFLICT (deployment) DO UPDATE SET updated_at = excluded.updated_at
RETURNING coalesce(%(now)s::timestamptz, clock_timestamp()) AS now, queue_tail

-- name: rate_limit_usage
-- Under rate_limit_lock: drops buckets wholly before the window, the tickets counted in
-- them (their holders never came back) and expired leases, then returns every bucket from
-- the window on, future ones (tickets) included, as [start epoch, requests, tokens] oldest
-- first, the live concurrency leases, and the caller's ticket if it holds one.
WITH old AS (
    DELETE FROM cairn.rate_limit_windows
    WHERE deployment = %(deployment)s AND window_start <= %(oldest)s::timestamptz
), stale AS (
    DELETE FROM cairn.rate_limit_tickets
    WHERE deployment = %(deployment)s AND window_start <= %(oldest)s::timestamptz
), expired AS (
    DELETE FROM cairn.rate_limit_leases
    WHERE deployment = %(deployment)s AND expires_at <= %(now)s::timestamptz
    RETURNING id
)
SELECT
    (SELECT coalesce(jsonb_agg(jsonb_build_array(extract(epoch FROM window_start), requests, tokens)
                               ORDER BY window_start), '[]')
     FROM cairn.rate_limit_windows
     WHERE deployment = %(deployment)s AND window_start > %(oldest)s::timestamptz) AS buckets,
    (SELECT count(*) FROM cairn.rate_limit_leases
     WHERE deployment = %(deployment)s AND expires_at > %(now)s::timestamptz
       AND id NOT IN (SELECT id FROM expired)) AS leases,
    (SELECT min(expires_at) FROM cairn.rate_limit_leases
     WHERE deployment = %(deployment)s AND expires_at > %(now)s::timestamptz) AS first_expiry,
    (SELECT jsonb_build_array(extract(epoch FROM window_start), tokens) FROM cairn.rate_limit_tickets
     WHERE deployment = %(deployment)s AND holder = %(holder)s
       AND window_start > %(oldest)s::timestamptz) AS ticket

-- name: rate_limit_queue
-- Under rate_limit_lock: the last retry time handed to a refused caller.
UPDATE cairn.rate_limits SET queue_tail = %(queue_tail)s WHERE deployment = %(deployment)s

-- name: rate_limit_take
-- Under rate_limit_lock: adds a request and its token estimate to a bucket (the current
-- one, or a ticket's).
INSERT INTO cairn.rate_limit_windows (deployment, window_start, requests, tokens)
VALUES (%(deployment)s, %(current)s, 1, %(tokens)s)
ON CONFLICT (deployment, window_start) DO UPDATE
SET requests = cairn.rate_limit_windows.requests + 1, tokens = cairn.rate_limit_windows.tokens + excluded.tokens

-- name: rate_limit_book
-- Under rate_limit_lock: a refused caller's ticket for a future bucket (`current`), and a
-- request added to `slot` (the same bucket, or the slot a displaced holder moved to), in
-- one round trip.
WITH ticket AS (
    INSERT INTO cairn.rate_limit_tickets (deployment, holder, window_start, tokens, priority)
    VALUES (%(deployment)s, %(holder)s, %(current)s, %(tokens)s, %(priority)s)
)
INSERT INTO cairn.rate_limit_windows (deployment, window_start, requests, tokens)
VALUES (%(deployment)s, %(slot)s, 1, %(tokens)s)
ON CONFLICT (deployment, window_start) DO UPDATE
SET requests = cairn.rate_limit_windows.requests + 1, tokens = cairn.rate_limit_windows.tokens + excluded.tokens

-- name: rate_limit_displace
-- Under rate_limit_lock: the soonest ticket of lower priority booked after the current
-- bucket and before `slot` (with the same tokens when tpm counts them) moves to `slot`;
-- returns the bucket it leaves, which the caller takes. Its holder, back at its old time, is
-- early and told the new one.
UPDATE cairn.rate_limit_tickets t SET window_start = %(slot)s
FROM (SELECT holder, window_start FROM cairn.rate_limit_tickets
      WHERE deployment = %(deployment)s AND priority < %(priority)s
        AND window_start > %(after)s AND window_start < %(slot)s
        AND (%(tokens)s::bigint IS NULL OR tokens = %(tokens)s)
      ORDER BY window_start LIMIT 1) AS d
WHERE t.deployment = %(deployment)s AND t.holder = d.holder
RETURNING d.window_start AS taken

-- name: rate_limit_ticket_used
-- Under rate_limit_lock: the holder came back in its ticket's bucket; its request is
-- already counted there.
DELETE FROM cairn.rate_limit_tickets WHERE deployment = %(deployment)s AND holder = %(holder)s

-- name: rate_limit_ticket_dropped
-- Under rate_limit_lock: the holder came back after its ticket's bucket (late); the
-- request leaves that bucket and the holder asks afresh.
WITH fixed AS (
    UPDATE cairn.rate_limit_windows SET requests = greatest(requests - 1, 0),
                                        tokens = greatest(tokens - %(tokens)s, 0)
    WHERE deployment = %(deployment)s AND window_start = %(window_start)s
)
DELETE FROM cairn.rate_limit_tickets WHERE deployment = %(deployment)s AND holder = %(holder)s

-- name: rate_limit_lease
-- A concurrency slot for one call; it frees itself at expires_at if settle never comes.
INSERT INTO cairn.rate_limit_leases (id, deployment, expires_at)
VALUES (%(id)s, %(deployment)s, %(now)s::timestamptz + %(lease)s * interval '1 second')

-- name: rate_limit_cancel
-- A reservation given back unused (the call was not made): its request and tokens leave
-- its bucket and its slot is freed. Increments, so no lock.
WITH fixed AS (
    UPDATE cairn.rate_limit_windows SET requests = greatest(requests - 1, 0),
                                        tokens = greatest(tokens - %(tokens)s, 0)
    WHERE deployment = %(deployment)s AND window_start = %(window_start)s
)
DELETE FROM cairn.rate_limit_leases WHERE id = %(id)s

-- name: breaker_refusing
-- Whether a breaker refuses calls right now (open before its open_until, or forced open):
-- the last look before a request goes out, after the wait for a rate-limit reservation.
SELECT state, open_until, (config->>'recovery_timeout')::float8 AS recovery_timeout,
       coalesce(%(now)s::timestamptz, now()) AS now FROM cairn.breakers
WHERE name = %(name)s
  AND (state = 'forced_open' OR (state = 'open' AND open_until > coalesce(%(now)s::timestamptz, now())))

-- name: rate_limit_settle
-- Corrects a reservation's bucket by (actual - estimate) tokens and frees its slot. An
-- increment, so it needs no lock (the bucket may have left the window by now).
WITH fixed AS (
    UPDATE cairn.rate_limit_windows SET tokens = greatest(tokens + %(delta)s, 0)
    WHERE deployment = %(deployment)s AND window_start = %(window_start)s
)
DELETE FROM cairn.rate_limit_leases WHERE id = %(id)s

-- ============================================================== LLM activities (issue #5)

-- name: llm_stream_append
-- One batch of streamed text of an LLM attempt, and a NOTIFY (payload: the run id) that
-- wakes followers (`cairn history --follow`, WorkflowHandle.stream).
WITH added AS (
    INSERT INTO cairn.llm_stream (run_id, activity_seq, attempt, chunk, text)
    VALUES (%(run_id)s, %(seq)s, %(attempt)s, %(chunk)s, %(text)s)
    ON CONFLICT (run_id, activity_seq, attempt, chunk) DO NOTHING
    RETURNING run_id
)
SELECT pg_notify('cairn_llm_stream', run_id::text) FROM added

-- name: llm_stream_after
-- A run's streamed batches after id `after`, oldest first (optionally of one activity).
SELECT id, activity_seq, attempt, chunk, text, at FROM cairn.llm_stream
WHERE run_id = %(run_id)s AND id > %(after)s
  AND (%(seq)s::int IS NULL OR activity_seq = %(seq)s::int)
ORDER BY id

-- name: llm_follow_status
-- A followed run's status (`history --follow`): read before its events, so a closed run's are all there are.
SELECT status FROM cairn.runs WHERE run_id = %(run_id)s

-- name: llm_completions
-- The recorded results of a run's LLM calls (the built-in chat activity's completions), and
-- the stored results (0022), which the reader keeps if they resolve to completions.
SELECT h.seq, h.data, h.at FROM cairn.history h
WHERE h.run_id = %(run_id)s AND h.type = 'ActivityCompleted'
  AND (h.data -> 'result' ->> 'type' = 'cairn.llm.completion' OR h.data -> 'result' ? '$cairn.payload')
ORDER BY h.seq

-- name: db_now
SELECT now()

-- ---------------------------------------------------------------- invariant checker (cairn verify)
-- Read-only statements of cairn.verify. Each checks one invariant over every run at once
-- (a scan of the table it reads), so the checker's cost is a few sequential scans, not a
-- round trip per run.

-- name: verify_run_counts
-- Runs by status, and the database clock.
SELECT status, count(*) AS n FROM cairn.runs GROUP BY status ORDER BY status

-- name: verify_open_runs
-- Runs not yet in a terminal state (after the settle deadline: stuck).
SELECT run_id::text, workflow_id, workflow_type, created_at FROM cairn.runs
WHERE status = 'running' ORDER BY run_id

-- name: verify_expired_leases
-- Activity attempts whose worker lease ran out and that nobody reclaimed.
SELECT a.run_id::text, r.workflow_id, a.seq, a.activity_type, a.lease_owner, a.lease_expires_at
FROM cairn.activity_tasks a LEFT JOIN cairn.runs r ON r.run_id = a.run_id
WHERE a.lease_expires_at < now() ORDER BY a.run_id, a.seq

-- name: verify_lingering_tasks
-- Queue rows of closed (or unknown) runs: every table that must drain when a run closes.
SELECT x.tbl, x.run_id::text, r.workflow_id, coalesce(r.status, 'missing') AS status, x.n
FROM (
    SELECT 'workflow_tasks' AS tbl, run_id, count(*) AS n FROM cairn.workflow_tasks GROUP BY run_id
    UNION ALL SELECT 'activity_tasks', run_id, count(*) FROM cairn.activity_tasks GROUP BY run_id
    UNION ALL SELECT 'timers', run_id, count(*) FROM cairn.timers GROUP BY run_id
    UNION ALL SELECT 'inbox', run_id, count(*) FROM cairn.inbox GROUP BY run_id
    UNION ALL SELECT 'query_requests', run_id, count(*) FROM cairn.query_requests GROUP BY run_id
) x LEFT JOIN cairn.runs r ON r.run_id = x.run_id
WHERE r.status IS DISTINCT FROM 'running'
ORDER BY x.tbl, x.run_id

-- name: verify_history_gaps
-- Seqs that do not follow their predecessor by one, or a first seq other than 1 (a window
-- over the history primary key, in index order).
SELECT g.run_id::text, r.workflow_id, g.seq, g.prev FROM (
    SELECT run_id, seq, lag(seq) OVER (PARTITION BY run_id ORDER BY seq) AS prev FROM cairn.history
) g LEFT JOIN cairn.runs r ON r.run_id = g.run_id
WHERE (g.prev IS NULL AND g.seq <> 1) OR g.seq - g.prev > 1
ORDER BY g.run_id, g.seq

-- name: verify_history_start
-- Runs whose history does not begin with WorkflowStarted at seq 1 (or has no history).
SELECT r.run_id::text, r.workflow_id, h.type FROM cairn.runs r
LEFT JOIN cairn.history h ON h.run_id = r.run_id AND h.seq = 1
WHERE h.type IS DISTINCT FROM 'WorkflowStarted'
ORDER BY r.run_id

-- name: verify_history_orphans
-- History of runs that do not exist.
SELECT h.run_id::text, count(*) AS n FROM cairn.history h
WHERE NOT EXISTS (SELECT 1 FROM cairn.runs r WHERE r.run_id = h.run_id)
GROUP BY h.run_id ORDER BY h.run_id

-- name: verify_after_terminal
-- Events after a run's first terminal event (a second terminal event included).
WITH term AS (
    SELECT run_id, min(seq) AS seq FROM cairn.history WHERE type = ANY(%(terminal)s::text[]) GROUP BY run_id
)
SELECT h.run_id::text, r.workflow_id, h.seq, h.type, t.seq AS terminal_seq
FROM cairn.history h JOIN term t ON t.run_id = h.run_id AND h.seq > t.seq
LEFT JOIN cairn.runs r ON r.run_id = h.run_id
ORDER BY h.run_id, h.seq

-- name: verify_status_vs_terminal
-- Runs whose status disagrees with their first terminal event (%(terminal)s and
-- %(statuses)s are parallel arrays: event type -> status).
WITH term AS (
    SELECT DISTINCT ON (run_id) run_id, type FROM cairn.history
    WHERE type = ANY(%(terminal)s::text[]) ORDER BY run_id, seq
), expected AS (
    SELECT * FROM unnest(%(terminal)s::text[], %(statuses)s::text[]) AS m(type, status)
)
SELECT r.run_id::text, r.workflow_id, r.status, t.type AS terminal_type, m.status AS expected
FROM cairn.runs r LEFT JOIN term t ON t.run_id = r.run_id LEFT JOIN expected m ON m.type = t.type
WHERE r.status IS DISTINCT FROM coalesce(m.status, 'running')
ORDER BY r.run_id

-- name: verify_double_outcomes
-- Activities with more than one outcome event (completed, failed, cancelled): a GROUP BY
-- over the outcome events.
SELECT h.run_id::text, r.workflow_id, (h.data ->> 'activity_seq')::int AS activity_seq,
       array_agg(h.type || '@' || h.seq ORDER BY h.seq) AS events
FROM cairn.history h LEFT JOIN cairn.runs r ON r.run_id = h.run_id
WHERE h.type IN ('ActivityCompleted', 'ActivityFailed', 'ActivityCancelled')
GROUP BY h.run_id, r.workflow_id, h.data ->> 'activity_seq'
HAVING count(*) > 1
ORDER BY h.run_id, 3

-- name: verify_unmatched_events
-- Events that refer to a command (by a seq key in their data) that history does not hold
-- before them: %(kinds)s rows are (event type, data key, command type).
WITH k AS (
    SELECT * FROM jsonb_to_recordset(%(kinds)s::jsonb) AS k(type text, key text, command text)
)
SELECT e.run_id::text, r.workflow_id, e.seq, e.type, e.data ->> k.key AS ref, k.command
FROM cairn.history e JOIN k ON k.type = e.type
LEFT JOIN cairn.runs r ON r.run_id = e.run_id
WHERE NOT EXISTS (
    SELECT 1 FROM cairn.history s
    WHERE s.run_id = e.run_id AND s.seq = (e.data ->> k.key)::int AND s.type = k.command AND s.seq < e.seq
)
ORDER BY e.run_id, e.seq

-- name: verify_payload_references
-- References to stored payloads (0022) not linked to the run whose row holds them (a
-- payload that is not stored has no link either): in history, and in the live rows that
-- carry payloads (the inbox, an activity's input, updates, query requests). `@?` skips the
-- rows with none (one walk of each value, about as dear as the scan); a row with some is
-- compared with its run's links (run_payloads, grouped by run) as jsonb arrays of
-- references: scalar functions and joins all, since a set-returning one (jsonb_path_query)
-- is estimated at 1,000 rows a row, and a subquery per row costs as much in estimates:
-- either made the plan, and JIT, many times dearer than the work. Per row at fault: its
-- place and its unlinked references.
WITH refs AS (
    SELECT 1 AS ord, h.seq::bigint AS num, 'history seq ' || h.seq AS place, h.run_id,
           jsonb_path_query_array(h.data, 'strict $.**."$cairn.payload"') AS found
    FROM cairn.history h WHERE h.data @? 'strict $.**."$cairn.payload"'
    UNION ALL SELECT 2, i.id, 'inbox id ' || i.id, i.run_id, jsonb_path_query_array(i.data, 'strict $.**."$cairn.payload"')
    FROM cairn.inbox i WHERE i.data @? 'strict $.**."$cairn.payload"'
    UNION ALL SELECT 3, a.seq, 'activity_tasks seq ' || a.seq, a.run_id,
                     jsonb_path_query_array(a.input, 'strict $.**."$cairn.payload"')
    FROM cairn.activity_tasks a WHERE a.input @? 'strict $.**."$cairn.payload"'
    UNION ALL SELECT 4, 0, 'updates ' || u.update_id, u.run_id,
                     jsonb_path_query_array(jsonb_build_array(u.args, u.result), 'strict $.**."$cairn.payload"')
    FROM cairn.updates u WHERE jsonb_build_array(u.args, u.result) @? 'strict $.**."$cairn.payload"'
    UNION ALL SELECT 5, 0, 'query_requests ' || q.id, q.run_id,
                     jsonb_path_query_array(jsonb_build_array(q.args, q.answer), 'strict $.**."$cairn.payload"')
    FROM cairn.query_requests q WHERE jsonb_build_array(q.args, q.answer) @? 'strict $.**."$cairn.payload"'
), linked AS (
    SELECT l.run_id, jsonb_agg(rtrim(translate(encode(l.hash, 'base64'), '+/', '-_'), '=')) AS refs
    FROM cairn.run_payloads l WHERE l.run_id IN (SELECT x.run_id FROM refs x) GROUP BY l.run_id
)
SELECT x.run_id::text, (SELECT r.workflow_id FROM cairn.runs r WHERE r.run_id = x.run_id) AS workflow_id, x.place,
       jsonb_path_query_array(x.found, 'strict $[*] ? (!(@ == $linked[*]))',
                              jsonb_build_object('linked', coalesce(k.refs, '[]'))) AS unlinked
FROM refs x LEFT JOIN linked k ON k.run_id = x.run_id
WHERE NOT x.found <@ coalesce(k.refs, '[]')
ORDER BY x.run_id, x.ord, x.num, x.place

-- name: verify_payloads_stored
-- Which of these hashes are stored (for the references verify_payload_references found).
SELECT hash FROM cairn.payloads WHERE hash = ANY(%(hashes)s::bytea[])

-- name: verify_payload_links
-- Links (run_payloads) of runs that do not exist; the foreign key keeps the payload side.
SELECT l.run_id::text, count(*) AS n FROM cairn.run_payloads l
WHERE NOT EXISTS (SELECT 1 FROM cairn.runs r WHERE r.run_id = l.run_id)
GROUP BY l.run_id ORDER BY l.run_id

-- name: verify_payload_stats
-- The payload store: payloads, links, and payloads no run links (a sweep's, once old enough).
SELECT (SELECT count(*) FROM cairn.payloads) AS payloads, (SELECT count(*) FROM cairn.run_payloads) AS links,
       (SELECT count(*) FROM cairn.payloads p
        WHERE NOT EXISTS (SELECT 1 FROM cairn.run_payloads l WHERE l.hash = p.hash)) AS unlinked

-- name: verify_runs_page
-- A page of runs (keyset on run_id) of the given types, for streaming replays.
SELECT run_id::text, workflow_id, workflow_type, queue, namespace, status FROM cairn.runs
WHERE workflow_type = ANY(%(types)s::text[]) AND run_id > %(after)s::uuid
ORDER BY run_id LIMIT %(limit)s

-- name: verify_histories
-- The histories of a page of runs, in order.
SELECT run_id::text, seq, type, data, at FROM cairn.history
WHERE run_id = ANY(%(run_ids)s::uuid[]) ORDER BY run_id, seq

-- name: verify_skipped_types
-- Runs per workflow type with no code given (not replayed).
SELECT workflow_type, count(*) AS n FROM cairn.runs
WHERE NOT (workflow_type = ANY(%(types)s::text[])) GROUP BY workflow_type ORDER BY workflow_type

-- name: verify_saga_runs_page
-- A page of runs (keyset on run_id) that started a saga compensating, or whose saga may
-- not have finished: runs with a saga marker, closed by their code.
SELECT DISTINCT h.run_id::text, r.workflow_id, r.status FROM cairn.history h
JOIN cairn.runs r ON r.run_id = h.run_id
WHERE h.type = 'MarkerRecorded' AND h.data ->> 'kind' = 'saga' AND h.run_id > %(after)s::uuid
  AND (h.data ->> 'event' = 'compensation_started'
       OR r.status IN ('completed', 'failed', 'cancelled'))
ORDER BY 1 LIMIT %(limit)s

-- name: verify_runs_of_workflow_ids
-- The runs each acknowledged workflow id has, first runs only (not the next runs of a
-- continue-as-new chain, nor runs made by reset/retry).
SELECT r.workflow_id, r.namespace, r.run_id::text,
       (r.continued_from IS NULL AND r.reset_from IS NULL) AS first
FROM cairn.runs r
JOIN unnest(%(workflow_ids)s::text[], %(namespaces)s::text[]) AS a(workflow_id, namespace)
  ON r.workflow_id = a.workflow_id AND r.namespace = a.namespace

-- name: verify_runs_exist
-- Which of these run ids exist.
SELECT run_id::text FROM cairn.runs WHERE run_id = ANY(%(run_ids)s::uuid[])

-- name: verify_reexecutions
-- Activities that needed more than one attempt, as history saw them.
SELECT count(*) AS n FROM cairn.history
WHERE type IN ('ActivityCompleted', 'ActivityFailed') AND coalesce((data ->> 'attempt')::int, (data ->> 'attempts')::int, 1) > 1

-- name: verify_cairn_columns
-- Every column of every table in the cairn schema, with the table's primary key columns
-- (to say which row holds a canary without printing it).
SELECT c.table_name, array_agg(c.column_name::text ORDER BY c.ordinal_position) AS columns,
       coalesce((SELECT array_agg(a.attname::text ORDER BY array_position(i.indkey::int2[], a.attnum))
                 FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
                 WHERE i.indrelid = (quote_ident(c.table_schema) || '.' || quote_ident(c.table_name))::regclass AND i.indisprimary),
                '{}') AS pkey
FROM information_schema.columns c JOIN information_schema.tables t
  ON t.table_schema = c.table_schema AND t.table_name = c.table_name AND t.table_type = 'BASE TABLE'
WHERE c.table_schema = 'cairn'
GROUP BY c.table_schema, c.table_name ORDER BY c.table_name

-- name: verify_table_exists
-- Whether a (schema-qualified) table exists.
SELECT to_regclass(%(name)s) IS NOT NULL AS present

-- The effects sink's statements name its tables as {effects} and {attempts} (filled in
-- with psycopg.sql identifiers: the test picks the table).

-- name: verify_effects_missing
-- Completed activities of the effect-writing types that left no effect.
SELECT c.run_id::text, r.workflow_id, s.seq, s.data ->> 'activity_type' AS activity_type
FROM cairn.history c
JOIN cairn.history s ON s.run_id = c.run_id AND s.seq = (c.data ->> 'activity_seq')::int
                    AND s.type = 'ActivityScheduled'
LEFT JOIN cairn.runs r ON r.run_id = c.run_id
WHERE c.type = 'ActivityCompleted' AND s.data ->> 'activity_type' = ANY(%(kinds)s::text[])
  AND NOT EXISTS (SELECT 1 FROM {effects} e WHERE e.run_id = c.run_id AND e.seq = s.seq)
ORDER BY c.run_id, s.seq

-- name: verify_effects_duplicated
-- Steps with more than one effect (under different idempotency keys).
SELECT e.run_id::text, r.workflow_id, e.seq, count(*) AS n, array_agg(e.attempt ORDER BY e.attempt) AS attempts
FROM {effects} e LEFT JOIN cairn.runs r ON r.run_id = e.run_id
GROUP BY e.run_id, r.workflow_id, e.seq HAVING count(*) > 1
ORDER BY e.run_id, e.seq

-- name: verify_effects_stats
-- The sink's size, its kinds, and how many effects came from a re-execution.
SELECT count(*) AS effects, coalesce(array_agg(DISTINCT kind) FILTER (WHERE kind IS NOT NULL), ARRAY[]::text[]) AS kinds,
       count(*) FILTER (WHERE attempt > 1) AS reexecuted
FROM {effects}

-- name: verify_attempts_stats
-- Attempts logged, and how many were re-executions.
SELECT count(*) AS attempts, count(*) FILTER (WHERE attempt > 1) AS reexecuted FROM {attempts}

-- ---------------------------------------------------------------- web view (cairn ui)

-- name: ui_status_counts
-- How many runs per status match the list page's type and `--where` filters (the status
-- filter is left out: the counts are the page's status links). {where} is a fragment built
-- by cairn.visibility from fixed text and %(wN)s parameters, or `true`; never user SQL.
SELECT status, count(*) AS runs
FROM cairn.runs
WHERE namespace = %(namespace)s
  AND (%(workflow_type)s::text IS NULL OR workflow_type = %(workflow_type)s::text)
  AND ({where})
GROUP BY status

-- ---------------------------------------------------------------- observability

-- name: queue_depth
-- Ready work per queue of the worker's namespace for the cairn.queue.depth gauge: workflow tasks due, and activity
-- attempts due and not leased. Each count stops at %(cap)s rows (an index range scan of
-- the claim indexes), so a huge backlog costs no more than the cap; taken at most every
-- few seconds and only while the gauge is read (cairn._telemetry.QueueDepth).
SELECT qn.queue, k.kind, k.n
FROM unnest(%(queues)s::text[]) AS qn(queue),
     LATERAL (
         -- the claim indexes' two priority lanes (0023), each capped
         SELECT 'workflow' AS kind, (SELECT count(*) FROM (
             SELECT 1 FROM cairn.workflow_tasks t
             WHERE t.namespace = %(namespace)s AND t.queue = qn.queue AND t.pause IS NULL AND (t.priority > 3) IS FALSE
               AND t.available_at <= coalesce(%(now)s::timestamptz, now())
             LIMIT %(cap)s) x) + (SELECT count(*) FROM (
             SELECT 1 FROM cairn.workflow_tasks t
             WHERE t.namespace = %(namespace)s AND t.queue = qn.queue AND t.pause IS NULL AND t.priority > 3
               AND t.available_at <= coalesce(%(now)s::timestamptz, now())
             LIMIT %(cap)s) x) AS n
         UNION ALL
         SELECT 'activity', (SELECT count(*) FROM (
             SELECT 1 FROM cairn.activity_tasks a
             WHERE a.namespace = %(namespace)s AND a.queue = qn.queue AND a.lease_owner IS NULL AND NOT a.paused
               AND (a.priority > 3) IS FALSE AND a.available_at <= coalesce(%(now)s::timestamptz, now())
             LIMIT %(cap)s) y) + (SELECT count(*) FROM (
             SELECT 1 FROM cairn.activity_tasks a
             WHERE a.namespace = %(namespace)s AND a.queue = qn.queue AND a.lease_owner IS NULL AND NOT a.paused
               AND a.priority > 3 AND a.available_at <= coalesce(%(now)s::timestamptz, now())
             LIMIT %(cap)s) y)
     ) k

-- name: run_progress
-- The live line of `cairn start --wait`: the newest run of the workflow id (it follows a
-- continue-as-new chain), its status, last event and activities completed.
SELECT r.status, l.seq AS last_seq, l.type AS last_type,
       (SELECT count(*) FROM cairn.history h WHERE h.run_id = r.run_id AND h.type = 'ActivityCompleted')
           AS activities_done
FROM cairn.runs r
LEFT JOIN LATERAL (SELECT seq, type FROM cairn.history h WHERE h.run_id = r.run_id ORDER BY seq DESC LIMIT 1) l
       ON true
WHERE r.run_id = (SELECT run_id FROM cairn.runs WHERE namespace = %(namespace)s AND workflow_id = %(workflow_id)s
                  ORDER BY run_id DESC LIMIT 1)

-- ==== local activities ====

-- name: verify_double_local_outcomes
-- Local activities with more than one final marker (a result or a failure, not a backoff):
-- a GROUP BY over the local_activity markers of each run.
SELECT h.run_id::text, r.workflow_id, (h.data ->> 'local_seq')::int AS local_seq,
       array_agg(h.type || '@' || h.seq ORDER BY h.seq) AS events
FROM cairn.history h LEFT JOIN cairn.runs r ON r.run_id = h.run_id
WHERE h.type = 'MarkerRecorded' AND h.data ->> 'kind' = 'local_activity' AND NOT h.data ? 'backoff'
GROUP BY h.run_id, r.workflow_id, h.data ->> 'local_seq'
HAVING count(*) > 1
ORDER BY h.run_id, 3

-- ==== asynchronous activity completion ====

-- name: activity_token_key
-- The key that signs task tokens (HMAC-SHA256), made by migration 0014.
SELECT key FROM cairn.activity_token_keys

-- name: detach_activity
-- activity.raise_complete_async(): the attempt (fenced by its token, still leased to this
-- worker) stops depending on its worker. The owner becomes 'async:<worker>', which no
-- worker's renewal matches, and the lease runs to the attempt's own deadline (start-to-close,
-- else schedule-to-close: one is always set), so it never lapses first; the deadlines stay,
-- so timeout_at and the reaper still end the attempt if its outside system never answers.
UPDATE cairn.activity_tasks
SET lease_owner = 'async:' || lease_owner,
    lease_expires_at = coalesce(attempt_deadline, schedule_deadline, lease_expires_at)
WHERE run_id = %(run_id)s AND seq = %(seq)s AND token = %(token)s AND lease_owner = %(worker)s

-- name: lock_activity_attempt
-- The client's completion by task token: the activity's open row, locked until the
-- outcome (or heartbeat) is written, so neither the reaper nor a worker changes it in
-- between; no row when the activity has no open attempt.
SELECT token, attempt, activity_type, options, cancel_requested, lease_owner, workflow_id,
       coalesce(%(now)s::timestamptz, now()) AS now
FROM cairn.activity_tasks
WHERE run_id = %(run_id)s AND seq = %(seq)s
FOR UPDATE

-- name: activity_run_status
-- The status of the run a task token names (for the error of a token with no open attempt).
SELECT status FROM cairn.runs WHERE run_id = %(run_id)s

-- name: heartbeat_activity_by_token
-- An outside system's heartbeat of an attempt (fenced by its token): records the details
-- and pushes the heartbeat deadline on by the activity's heartbeat timeout; returns
-- whether the workflow asked the activity to stop.
UPDATE cairn.activity_tasks
SET heartbeat_details = %(details)s, heartbeat_at = coalesce(%(now)s::timestamptz, now()),
    heartbeat_deadline = coalesce(%(now)s::timestamptz, now())
        + ((options ->> 'heartbeat_timeout')::float8 * interval '1 second')
WHERE run_id = %(run_id)s AND seq = %(seq)s AND token = %(token)s
RETURNING cancel_requested

-- name: retry_activity_by_token
-- An outside system's failure by task token, to be retried: as retry_activity (fenced by
-- the token, which it bumps; no row when the retry would start at or past the
-- schedule-to-close deadline), written as a delete and a re-insert of the row, so that the
-- client role needs no UPDATE of the lease columns (it cannot lease an attempt).
WITH c AS (
    SELECT coalesce(%(now)s::timestamptz, now()) AS now
), old AS (
    DELETE FROM cairn.activity_tasks a USING c
    WHERE a.run_id = %(run_id)s AND a.seq = %(seq)s AND a.token = %(token)s
      AND (a.schedule_deadline IS NULL OR c.now + %(delay)s * interval '1 second' < a.schedule_deadline)
    RETURNING a.*
), ins AS (
    INSERT INTO cairn.activity_tasks (run_id, namespace, seq, workflow_id, workflow_type, workflow_queue,
        activity_type, queue, input, options, attempt, token, scheduled_at, available_at, schedule_deadline,
        heartbeat_details, heartbeat_at, last_failure, cancel_requested, throttled_seconds, paused, pause,
        priority, fairness_key, concurrency_key)
    SELECT o.run_id, o.namespace, o.seq, o.workflow_id, o.workflow_type, o.workflow_queue, o.activity_type,
           o.queue, o.input, o.options, o.attempt, o.token + 1, o.scheduled_at,
           c.now + %(delay)s * interval '1 second', o.schedule_deadline, o.heartbeat_details, o.heartbeat_at,
           %(failure)s, o.cancel_requested, o.throttled_seconds, o.paused, o.pause,
           -- its concurrency slot goes on with it (cairn.concurrency_activity_gone, 0023)
           o.priority, o.fairness_key, o.concurrency_key
    FROM old o, c
    RETURNING run_id, seq, queue, available_at, priority, fairness_key
), placed AS (
    -- a keyed or prioritised activity's retry is placed when due (0025, place_due_retries)
    INSERT INTO cairn.retry_places (run_id, seq, ready_at)
    SELECT run_id, seq, available_at FROM ins WHERE fairness_key IS NOT NULL OR priority <> 3
    ON CONFLICT (run_id, seq) DO UPDATE SET ready_at = excluded.ready_at
)
SELECT queue FROM ins

-- ==== workflow updates ====

-- name: request_update
-- Asks a running run for an update: the update's row and its UpdateRequested inbox event,
-- and a pending workflow task (as signal_run). An update id already there is an earlier
-- try of the same update: nothing is written again (the caller waits for its outcome).
WITH run AS (
    SELECT run_id, namespace, queue, workflow_type, priority, fairness_key, fairness_weight
    FROM cairn.runs WHERE run_id = %(run_id)s AND status = 'running'
), req AS (
    INSERT INTO cairn.updates (run_id, update_id, name, args, created_at)
    SELECT run_id, %(update_id)s, %(name)s, %(args)s, coalesce(%(now)s::timestamptz, now()) FROM run
    ON CONFLICT (run_id, update_id) DO NOTHING
    RETURNING run_id
), ev AS (
    INSERT INTO cairn.inbox (run_id, type, data) SELECT run_id, 'UpdateRequested', %(data)s FROM req
), task AS (
    INSERT INTO cairn.workflow_tasks (run_id, namespace, queue, workflow_type, available_at, priority, fairness_key)
    SELECT run.run_id, run.namespace, run.queue, run.workflow_type, cairn.run_task_at(run.namespace, run.queue, run.workflow_type, run.priority, run.fairness_key, run.fairness_weight), coalesce(run.priority, 3), run.fairness_key
    FROM run JOIN req USING (run_id)
    ON CONFLICT (run_id) DO UPDATE SET queue = excluded.queue
    RETURNING queue
)
SELECT EXISTS (SELECT 1 FROM run) AS open, EXISTS (SELECT 1 FROM req) AS inserted, n.notified
FROM (SELECT 1) one LEFT JOIN (SELECT pg_notify('cairn_workflow', queue)::text AS notified FROM task) n ON true

-- name: update_outcome
-- An update's status and outcome, with its run's status (an update still open when its
-- run has closed never gets a result).
SELECT u.status, u.result, u.failure, r.status AS run_status
FROM cairn.updates u JOIN cairn.runs r ON r.run_id = u.run_id
WHERE u.run_id = %(run_id)s AND u.update_id = %(update_id)s

-- name: record_updates
-- A workflow task's update outcomes (accepted, rejected by the validator, completed), in
-- its transaction, and a NOTIFY per update for the callers waiting on them. An outcome
-- already written is never overwritten.
WITH o AS (
    SELECT * FROM jsonb_to_recordset(%(updates)s) AS x(update_id text, status text, result jsonb, failure jsonb)
), u AS (
    UPDATE cairn.updates u
    SET status = o.status, result = o.result, failure = o.failure,
        completed_at = CASE WHEN o.status = 'accepted' THEN NULL ELSE coalesce(%(now)s::timestamptz, now()) END
    FROM o
    WHERE u.run_id = %(run_id)s AND u.update_id = o.update_id AND u.status IN ('requested', 'accepted')
    RETURNING u.update_id
)
SELECT pg_notify('cairn_update', 'update:' || %(run_id)s::text || ':' || update_id)::text AS notified FROM u

-- ==== schedules ====

-- name: schedule_now
-- The database's clock, which every schedule decision uses (a worker's own clock may be off).
SELECT coalesce(%(now)s::timestamptz, now())

-- name: insert_schedule
-- Creates a schedule unless the id is taken (no row then).
INSERT INTO cairn.schedules (namespace, schedule_id, spec, action, policy, paused, note, processed_until,
                             next_check_at, created_at, updated_at)
VALUES (%(namespace)s::text, %(schedule_id)s::text, %(spec)s::jsonb, %(action)s::jsonb, %(policy)s::jsonb,
        %(paused)s::boolean, %(note)s::text, %(now)s::timestamptz, %(next_check_at)s::timestamptz,
        %(now)s::timestamptz, %(now)s::timestamptz)
ON CONFLICT (namespace, schedule_id) DO NOTHING
RETURNING schedule_id, pg_notify('cairn_timer', '') AS notified  -- wakes the maintenance loops

-- name: claim_due_schedule
-- One due, unpaused schedule, locked for this transaction. SKIP LOCKED: the workers'
-- maintenance loops split the due schedules instead of waiting; the lock, held while the
-- slots are acted on and processed_until moves, is what makes a slot fire once.
SELECT namespace, schedule_id, spec, action, policy, paused, note, processed_until, next_check_at, missed_slots,
       created_at, updated_at
FROM cairn.schedules
WHERE NOT paused AND next_check_at <= %(now)s::timestamptz
ORDER BY next_check_at
LIMIT 1
FOR UPDATE SKIP LOCKED

-- name: lock_schedule
-- A schedule locked for a client's change (pause, trigger, backfill, update): waits for a
-- worker firing it, so the two never act on the same slot.
SELECT namespace, schedule_id, spec, action, policy, paused, note, processed_until, next_check_at, missed_slots,
       created_at, updated_at
FROM cairn.schedules
WHERE namespace = %(namespace)s::text AND schedule_id = %(schedule_id)s::text
FOR UPDATE

-- name: get_schedule
-- A schedule's row, unlocked (describe).
SELECT namespace, schedule_id, spec, action, policy, paused, note, processed_until, next_check_at, missed_slots,
       created_at, updated_at
FROM cairn.schedules
WHERE namespace = %(namespace)s::text AND schedule_id = %(schedule_id)s::text

-- name: list_schedules
-- The namespace's schedules, by id.
SELECT namespace, schedule_id, spec, action, policy, paused, note, processed_until, next_check_at, missed_slots,
       created_at, updated_at
FROM cairn.schedules
WHERE namespace = %(namespace)s::text
ORDER BY schedule_id
LIMIT %(limit)s::integer

-- name: schedule_running_runs
-- The schedule's runs still open (its started actions whose run is running).
SELECT a.run_id, a.workflow_id
FROM cairn.schedule_actions a JOIN cairn.runs r ON r.run_id = a.run_id
WHERE a.namespace = %(namespace)s::text AND a.schedule_id = %(schedule_id)s::text AND a.status = 'started'
  AND r.status = 'running'
ORDER BY a.slot

-- name: schedule_buffered_actions
-- The schedule's actions waiting for its open runs to close, oldest slot first.
SELECT slot, kind, overlap, workflow_id
FROM cairn.schedule_actions
WHERE namespace = %(namespace)s::text AND schedule_id = %(schedule_id)s::text AND status = 'buffered'
ORDER BY slot

-- name: insert_schedule_action
-- Takes a slot: the primary key (namespace, schedule_id, slot) admits one action per slot;
-- no row back means the slot was already acted on.
INSERT INTO cairn.schedule_actions (namespace, schedule_id, slot, kind, status, overlap, workflow_id, taken_at)
VALUES (%(namespace)s::text, %(schedule_id)s::text, %(slot)s::timestamptz, %(kind)s::text, %(status)s::text,
        %(overlap)s::text, %(workflow_id)s::text, %(now)s::timestamptz)
ON CONFLICT (namespace, schedule_id, slot) DO NOTHING
RETURNING slot

-- name: mark_schedule_action
-- An action's outcome: started (with its run) or skipped.
UPDATE cairn.schedule_actions
SET status = %(status)s::text, run_id = %(run_id)s::uuid,
    started_at = CASE WHEN %(status)s::text = 'started' THEN %(now)s::timestamptz END
WHERE namespace = %(namespace)s::text AND schedule_id = %(schedule_id)s::text AND slot = %(slot)s::timestamptz

-- name: update_schedule_progress
-- After a pass: the slots acted on, when to look next, the slots missed.
UPDATE cairn.schedules
SET processed_until = %(processed_until)s::timestamptz, next_check_at = %(next_check_at)s::timestamptz,
    missed_slots = missed_slots + %(missed)s::bigint
WHERE namespace = %(namespace)s::text AND schedule_id = %(schedule_id)s::text

-- name: update_schedule
-- A client's change of a schedule (update, pause, unpause), with the row locked.
UPDATE cairn.schedules
SET spec = %(spec)s::jsonb, action = %(action)s::jsonb, policy = %(policy)s::jsonb, paused = %(paused)s::boolean,
    note = %(note)s::text, processed_until = %(processed_until)s::timestamptz,
    next_check_at = %(next_check_at)s::timestamptz, updated_at = %(now)s::timestamptz
WHERE namespace = %(namespace)s::text AND schedule_id = %(schedule_id)s::text
RETURNING pg_notify('cairn_timer', '') AS notified  -- wakes the maintenance loops

-- name: delete_schedule
-- Deletes a schedule and its actions (the runs it started stay).
WITH actions AS (
    DELETE FROM cairn.schedule_actions WHERE namespace = %(namespace)s::text AND schedule_id = %(schedule_id)s::text
)
DELETE FROM cairn.schedules WHERE namespace = %(namespace)s::text AND schedule_id = %(schedule_id)s::text
RETURNING schedule_id

-- name: recent_schedule_actions
-- A schedule's latest actions, newest slot first, with their runs' status.
SELECT a.slot, a.kind, a.status, a.overlap, a.workflow_id, a.run_id, a.taken_at, a.started_at, r.status
FROM cairn.schedule_actions a LEFT JOIN cairn.runs r ON r.run_id = a.run_id
WHERE a.namespace = %(namespace)s::text AND a.schedule_id = %(schedule_id)s::text
ORDER BY a.slot DESC
LIMIT %(limit)s::integer

-- name: schedule_action_counts
-- How many of a schedule's slots were started, buffered and skipped.
SELECT count(*) FILTER (WHERE status = 'started'), count(*) FILTER (WHERE status = 'buffered'),
       count(*) FILTER (WHERE status = 'skipped')
FROM cairn.schedule_actions
WHERE namespace = %(namespace)s::text AND schedule_id = %(schedule_id)s::text

-- name: next_schedule_check
-- How long until the earliest unpaused schedule is due (negative: overdue), for the
-- maintenance loop's wait.
SELECT min(next_check_at) - coalesce(%(now)s::timestamptz, now()) FROM cairn.schedules WHERE NOT paused

-- name: defer_schedule
-- A schedule whose pass failed (and rolled back) is looked at again later, so that it does
-- not hold up the schedules due after it.
UPDATE cairn.schedules
SET next_check_at = %(now)s::timestamptz + %(delay)s::float8 * interval '1 second'
WHERE namespace = %(namespace)s::text AND schedule_id = %(schedule_id)s::text

-- ==== time-skipping test environment (cairn.testing) ====

-- name: time_skip_state
-- Whether anything can run at %(now)s (the environment's virtual time): a workflow task
-- ready or held by a worker (its row stays until the worker commits, so a task in flight,
-- with its local activities, counts), an activity attempt leased (running, or completing
-- asynchronously: time never skips under a running attempt's deadline) or ready or past a
-- deadline, a timer or schedule due, an unanswered query; and, when nothing can, the
-- earliest moment something falls due: a timer (execution timeouts and local-activity
-- backoffs included), a retry's or a start delay's available_at, a workflow task's
-- back-off, an attempt's schedule-to-close deadline, a schedule's next check. Every step of
-- a run's progress commits its next step's row in the same transaction, so one snapshot
-- sees no gap. Terminate's placeholder tasks (9999-12-31) are no moment to skip to, and
-- paused work (0019) can run at no moment: only its deadlines count.
WITH c AS (SELECT %(now)s::timestamptz AS now), held AS (
    SELECT a.run_id, a.seq FROM cairn.activity_tasks a
    WHERE a.lease_owner IS NULL AND (a.paused OR EXISTS (
        SELECT 1 FROM cairn.activity_pauses p
        WHERE p.namespace = a.namespace AND p.activity_type IN ('', a.activity_type) AND p.queue IN ('', a.queue)))
)
SELECT EXISTS (SELECT 1 FROM cairn.workflow_tasks t, c WHERE t.available_at <= c.now AND t.pause IS NULL)
       OR EXISTS (SELECT 1 FROM cairn.activity_tasks a, c
                  WHERE a.lease_owner IS NOT NULL OR a.timeout_at <= c.now
                     OR (a.available_at <= c.now AND (a.run_id, a.seq) NOT IN (SELECT run_id, seq FROM held)))
       OR EXISTS (SELECT 1 FROM cairn.timers t, c WHERE t.fire_at <= c.now)
       OR EXISTS (SELECT 1 FROM cairn.schedules s, c WHERE NOT s.paused AND s.next_check_at <= c.now)
       OR EXISTS (SELECT 1 FROM cairn.query_requests r WHERE r.answered_at IS NULL) AS busy,
       least((SELECT min(available_at) FROM cairn.workflow_tasks WHERE available_at < '9999-01-01' AND pause IS NULL),
             (SELECT min(available_at) FROM cairn.activity_tasks
              WHERE lease_owner IS NULL AND available_at < 'infinity'
                AND (run_id, seq) NOT IN (SELECT run_id, seq FROM held)),
             (SELECT min(timeout_at) FROM cairn.activity_tasks),
             (SELECT min(fire_at) FROM cairn.timers),
             (SELECT min(next_check_at) FROM cairn.schedules WHERE NOT paused)) AS next_due,
       c.now
FROM c

-- name: time_skip_wake
-- After the virtual clock moved: wakes every worker's maintenance loop (the timer pump,
-- the schedule firer, the reaper, the next-due wait), which wakes its pollers.
SELECT pg_notify('cairn_timer', '')

-- ---------------------------------------------------------------- batches (store/batches.py)

-- name: batch_preview
-- A batch's dry run: how many runs of the namespace its filter matches, per status
-- ({where}: a cairn.visibility fragment of fixed text and %(wN)s parameters). Writes nothing.
SELECT status, count(*) FROM cairn.runs
WHERE namespace = %(namespace)s AND ({where})
GROUP BY status ORDER BY status

-- name: batch_preview_sample
-- A few of the runs a batch's filter matches, in run-id order (the order a batch acts in).
SELECT workflow_id, run_id, status FROM cairn.runs
WHERE namespace = %(namespace)s AND ({where})
ORDER BY run_id LIMIT %(limit)s

-- name: insert_batch
-- Creates a batch and freezes its targets in one statement: every run of the namespace its
-- filter matches now ({where}, as batch_preview), so whoever resumes it acts on this set.
WITH c AS (
    SELECT coalesce(%(now)s::timestamptz, now()) AS now
), targets AS (
    INSERT INTO cairn.batch_targets (batch_id, run_id, workflow_id)
    SELECT %(batch_id)s, run_id, workflow_id FROM cairn.runs
    WHERE namespace = %(namespace)s AND ({where})
    RETURNING 1
)
INSERT INTO cairn.batches (batch_id, namespace, kind, filter, params, matched, created_by, created_at, updated_at)
SELECT %(batch_id)s, %(namespace)s, %(kind)s, %(filter)s, %(params)s, (SELECT count(*) FROM targets),
       %(created_by)s, c.now, c.now
FROM c
RETURNING matched

-- name: batch_try_lock
-- Takes a batch's executor lock if nobody holds it: a session advisory lock (class
-- %(lock_class)s, key the hash of the batch id), held across the executor's chunks and
-- released by batch_unlock or with its connection, so a killed executor frees it at once.
SELECT pg_try_advisory_lock(%(lock_class)s::int, hashtext(%(batch_id)s::text))

-- name: batch_unlock
-- Releases batch_try_lock.
SELECT pg_advisory_unlock(%(lock_class)s::int, hashtext(%(batch_id)s::text))

-- name: batch_take_up
-- The executor (lock held) says who it is; nothing if the batch is no longer running.
UPDATE cairn.batches SET executor = %(executor)s, updated_at = coalesce(%(now)s::timestamptz, now())
WHERE batch_id = %(batch_id)s AND status = 'running'
RETURNING namespace, kind, params

-- name: claim_batch_targets
-- The next chunk: up to %(limit)s pending targets of a running batch, in run-id order (the
-- order runs' task locks are taken in elsewhere). FOR UPDATE: held until the chunk commits
-- with their outcomes; SKIP LOCKED: a second executor, should the advisory lock ever be
-- lost, takes other targets instead of acting twice.
SELECT t.run_id, t.workflow_id FROM cairn.batch_targets t
WHERE t.batch_id = %(batch_id)s AND t.outcome IS NULL
  AND EXISTS (SELECT 1 FROM cairn.batches b WHERE b.batch_id = %(batch_id)s AND b.status = 'running')
ORDER BY t.run_id LIMIT %(limit)s
FOR UPDATE OF t SKIP LOCKED

-- name: record_batch_targets
-- A chunk's outcomes (a jsonb array of {run_id, outcome, detail, new_run_id}) and the
-- batch's counts, in the chunk's transaction: the counts are the outcomes recorded.
WITH c AS (
    SELECT coalesce(%(now)s::timestamptz, now()) AS now
), o AS (
    SELECT * FROM jsonb_to_recordset(%(outcomes)s::jsonb) AS x(run_id uuid, outcome text, detail text, new_run_id uuid)
), u AS (
    UPDATE cairn.batch_targets t
    SET outcome = o.outcome, detail = o.detail, new_run_id = o.new_run_id, acted_at = c.now
    FROM o, c
    WHERE t.batch_id = %(batch_id)s AND t.run_id = o.run_id AND t.outcome IS NULL
    RETURNING t.outcome
)
UPDATE cairn.batches b
SET done = b.done + (SELECT count(*) FROM u WHERE outcome = 'done'),
    skipped = b.skipped + (SELECT count(*) FROM u WHERE outcome = 'skipped'),
    failed = b.failed + (SELECT count(*) FROM u WHERE outcome = 'failed'),
    updated_at = c.now
FROM c
WHERE b.batch_id = %(batch_id)s
RETURNING b.matched, b.done, b.skipped, b.failed

-- name: finish_batch
-- A running batch with no pending target left is completed.
UPDATE cairn.batches SET status = 'completed', finished_at = coalesce(%(now)s::timestamptz, now()),
                         updated_at = coalesce(%(now)s::timestamptz, now())
WHERE batch_id = %(batch_id)s AND status = 'running'
  AND NOT EXISTS (SELECT 1 FROM cairn.batch_targets WHERE batch_id = %(batch_id)s AND outcome IS NULL)

-- name: fail_batch
-- A running batch whose execution cannot go on (an error that is not the database's
-- absence) is failed, with the error; its pending targets stay unacted.
UPDATE cairn.batches SET status = 'failed', error = %(error)s, finished_at = coalesce(%(now)s::timestamptz, now()),
                         updated_at = coalesce(%(now)s::timestamptz, now())
WHERE batch_id = %(batch_id)s AND status = 'running'

-- name: cancel_batch
-- Stops a running batch: executors stop after the chunk they are in (claim_batch_targets
-- takes no more). Returns the status it has now (nothing: no such batch).
WITH cancelled AS (
    UPDATE cairn.batches SET status = 'cancelled', finished_at = coalesce(%(now)s::timestamptz, now()),
                             updated_at = coalesce(%(now)s::timestamptz, now())
    WHERE batch_id = %(batch_id)s AND namespace = %(namespace)s AND status = 'running'
    RETURNING status
)
SELECT status FROM cancelled
UNION ALL
SELECT status FROM cairn.batches WHERE batch_id = %(batch_id)s AND namespace = %(namespace)s
  AND NOT EXISTS (SELECT 1 FROM cancelled)

-- name: get_batch
-- A batch's row, and whether an executor holds its lock now (pg_locks: the two-key form of
-- batch_try_lock has objsubid 2, its keys in classid and objid).
SELECT batch_id, namespace, kind, filter, params, status, matched, done, skipped, failed, error, executor,
       created_by, created_at, updated_at, finished_at,
       EXISTS (SELECT 1 FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
               AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
               AND l.classid = %(lock_class)s::int::oid AND l.objid = hashtext(batch_id::text)::oid) AS executing
FROM cairn.batches WHERE batch_id = %(batch_id)s AND namespace = %(namespace)s

-- name: list_batches
-- The namespace's batches, newest first (batch ids are UUIDv7: they grow with time).
SELECT batch_id, namespace, kind, filter, params, status, matched, done, skipped, failed, error, executor,
       created_by, created_at, updated_at, finished_at, false AS executing
FROM cairn.batches WHERE namespace = %(namespace)s
ORDER BY batch_id DESC LIMIT %(limit)s

-- name: batch_outcome_summary
-- What a batch did, grouped: per outcome and detail (the reason a run was skipped or
-- failed), how many runs, and the first few workflow ids.
SELECT outcome, coalesce(detail, ''), count(*), (array_agg(workflow_id ORDER BY run_id))[1:3]
FROM cairn.batch_targets WHERE batch_id = %(batch_id)s AND outcome IS NOT NULL
GROUP BY outcome, detail ORDER BY count(*) DESC, outcome LIMIT %(limit)s

-- name: list_batch_targets
-- A batch's targets in run-id order, optionally of one outcome ('pending': not acted on yet).
SELECT workflow_id, run_id, coalesce(outcome, 'pending'), detail, new_run_id, acted_at
FROM cairn.batch_targets
WHERE batch_id = %(batch_id)s AND (%(outcome)s::text IS NULL OR coalesce(outcome, 'pending') = %(outcome)s::text)
  AND (%(after)s::uuid IS NULL OR run_id > %(after)s::uuid)
ORDER BY run_id LIMIT %(limit)s

-- name: running_batches
-- Batches to resume (a worker's maintenance loop): running ones, oldest first.
SELECT batch_id FROM cairn.batches WHERE status = 'running' ORDER BY created_at LIMIT %(limit)s

-- ---------------------------------------------------------------- pause and resume (store/pauses.py; 0019)
-- A paused run's task row carries its pause and is out of the claim index; a paused
-- activity's row is held (paused) by its run's pause or its own; activity types and queues
-- are paused by a row of activity_pauses, which the activity claim reads per pair.

-- name: pause_run_task
-- Pauses a running run's workflow task, waiting for a worker mid-task (DO UPDATE takes the
-- row lock, as signal_run): the task row is paused, or, when the run has none (the worker's
-- commit deleted it), made paused, as a placeholder that resume removes if nothing arrived.
-- A run paused already keeps its pause. Read the run's state after it with pause_run: this
-- statement's snapshot may predate the worker's commit.
INSERT INTO cairn.workflow_tasks (run_id, namespace, queue, workflow_type, pause)
SELECT run_id, namespace, queue, workflow_type,
       %(pause)s::jsonb || jsonb_build_object('at', coalesce(%(now)s::timestamptz, now()), 'placeholder', true)
FROM cairn.runs WHERE run_id = %(run_id)s AND namespace = %(namespace)s AND status = 'running'
ON CONFLICT (run_id) DO UPDATE SET pause = coalesce(cairn.workflow_tasks.pause, excluded.pause - 'placeholder')
RETURNING run_id

-- name: pause_run
-- After pause_run_task, in a new snapshot: holds the run's activities (a running attempt goes
-- on, its retry stays held) and returns the run's status (not running: the caller rolls
-- back) and its pause.
WITH run AS (
    SELECT r.run_id, r.status, t.pause FROM cairn.runs r LEFT JOIN cairn.workflow_tasks t ON t.run_id = r.run_id
    WHERE r.run_id = %(run_id)s
), held AS (
    UPDATE cairn.activity_tasks a SET paused = true
    FROM run WHERE a.run_id = run.run_id AND run.status = 'running' AND NOT a.paused
    RETURNING a.seq
)
SELECT run.status, run.pause, (SELECT count(*) FROM held) AS activities FROM run

-- name: unpause_run
-- Resumes a paused run, its task row locked first (lock_workflow_task: this statement's
-- snapshot then sees every event that came meanwhile): a placeholder task with nothing in
-- the inbox goes, any other becomes claimable; the activities held only by the run's pause
-- become claimable; their queues and the run's are woken. No row changes for a run that is
-- not paused.
WITH task AS (
    SELECT t.run_id, t.queue, t.pause ? 'placeholder'
           AND NOT EXISTS (SELECT 1 FROM cairn.inbox i WHERE i.run_id = t.run_id) AS idle
    FROM cairn.workflow_tasks t WHERE t.run_id = %(run_id)s AND t.pause IS NOT NULL
), dropped AS (
    DELETE FROM cairn.workflow_tasks w USING task WHERE w.run_id = task.run_id AND task.idle
    RETURNING w.run_id
), resumed AS (
    UPDATE cairn.workflow_tasks w SET pause = NULL FROM task WHERE w.run_id = task.run_id AND NOT task.idle
    RETURNING w.queue
), freed AS (
    UPDATE cairn.activity_tasks a SET paused = false
    FROM task WHERE a.run_id = task.run_id AND a.paused AND a.pause IS NULL
    RETURNING a.queue
)
SELECT (SELECT count(*) FROM task) AS was_paused,
       (SELECT count(pg_notify('cairn_workflow', queue)) FROM resumed) AS tasks,
       (SELECT count(*) FROM dropped) AS dropped,
       (SELECT count(*) FROM freed) AS activities,
       (SELECT count(pg_notify('cairn_activity', queue)) FROM (SELECT DISTINCT queue FROM freed) x) AS woken

-- name: pause_activity
-- An operator pauses one activity (as `temporal activity pause`): its row is held with its
-- own pause; a running attempt goes on, and its retry stays held. A paused activity keeps
-- its pause. No row: the activity has its outcome (or the run is closed).
UPDATE cairn.activity_tasks
SET paused = true,
    pause = coalesce(pause, %(pause)s::jsonb || jsonb_build_object('at', coalesce(%(now)s::timestamptz, now())))
WHERE run_id = %(run_id)s AND seq = %(seq)s
RETURNING activity_type, queue, lease_owner IS NOT NULL AS running, pause

-- name: unpause_activity
-- Lifts an activity's own pause (it stays held while its run is paused). An attempt running
-- goes on (its retry will be due as usual); otherwise its next attempt is due at once (a
-- backoff left is dropped, as Temporal's unpause), and with %(reset)s, or when its retry
-- policy paused it (attempts or throttle budget used up), it gets a fresh set of attempts, a
-- new throttle budget and, if it had one, a new schedule-to-close deadline
-- (pause_exhausted_activity cleared it): a delete and a re-insert of the row, as
-- retry_activity_by_token, so that the client role updates only the pause columns. No row:
-- the activity has its outcome; one not paused is left as it is (was_paused false).
WITH old AS (
    SELECT run_id, seq, pause FROM cairn.activity_tasks WHERE run_id = %(run_id)s AND seq = %(seq)s FOR UPDATE
), c AS (
    SELECT coalesce(%(now)s::timestamptz, now()) AS now,
           EXISTS (SELECT 1 FROM cairn.workflow_tasks t WHERE t.run_id = %(run_id)s AND t.pause IS NOT NULL) AS held
), running AS (
    UPDATE cairn.activity_tasks a SET pause = NULL, paused = c.held
    FROM old, c WHERE a.run_id = old.run_id AND a.seq = old.seq AND old.pause IS NOT NULL AND a.lease_owner IS NOT NULL
    RETURNING a.paused
), gone AS (
    DELETE FROM cairn.activity_tasks a USING old
    WHERE a.run_id = old.run_id AND a.seq = old.seq AND old.pause IS NOT NULL AND a.lease_owner IS NULL
    RETURNING a.*
), back AS (
    INSERT INTO cairn.activity_tasks (run_id, namespace, seq, workflow_id, workflow_type, workflow_queue,
        activity_type, queue, input, options, attempt, token, scheduled_at, available_at, schedule_deadline,
        heartbeat_details, heartbeat_at, last_failure, cancel_requested, throttled_seconds, paused, pause,
        priority, fairness_key, concurrency_key)
    SELECT g.run_id, g.namespace, g.seq, g.workflow_id, g.workflow_type, g.workflow_queue, g.activity_type, g.queue,
           g.input, g.options, CASE WHEN f.fresh THEN 0 ELSE g.attempt END, g.token, g.scheduled_at,
           -- still waiting for a concurrency slot (0023): it stays held, with its slot columns
           CASE WHEN g.available_at = 'infinity' THEN g.available_at ELSE c.now END,
           coalesce(g.schedule_deadline,
                    c.now + ((g.options ->> 'schedule_to_close_timeout')::float8 * interval '1 second')),
           g.heartbeat_details, g.heartbeat_at, g.last_failure, g.cancel_requested,
           CASE WHEN f.fresh THEN 0 ELSE g.throttled_seconds END, c.held, NULL,
           g.priority, g.fairness_key, g.concurrency_key
    FROM gone g, c, LATERAL (SELECT %(reset)s::boolean OR g.pause ->> 'reason' = 'exhausted' AS fresh) f
    RETURNING queue, paused
)
SELECT old.pause IS NOT NULL AS was_paused,
       coalesce((SELECT paused FROM running), (SELECT paused FROM back), false) AS held,
       (SELECT count(pg_notify('cairn_activity', queue)) FROM back WHERE NOT paused) AS woken
FROM old

-- name: lock_pending_activity
-- An operator's failure of one activity: its row, locked until the outcome is written (the
-- reaper and a worker's retry wait); no row when it has its outcome.
SELECT a.token, a.attempt, a.activity_type, a.last_failure, a.lease_owner, r.status
FROM cairn.activity_tasks a JOIN cairn.runs r ON r.run_id = a.run_id
WHERE a.run_id = %(run_id)s AND a.seq = %(seq)s
FOR UPDATE OF a

-- name: pause_activity_type
-- Pauses activity attempts namespace-wide: of a type ('' : any) on a queue ('' : any). A
-- pause already there keeps its note, author and time.
INSERT INTO cairn.activity_pauses (namespace, activity_type, queue, note, paused_by, paused_at)
VALUES (%(namespace)s, %(activity_type)s, %(queue)s, %(note)s, %(by)s, coalesce(%(now)s::timestamptz, now()))
ON CONFLICT (namespace, activity_type, queue) DO NOTHING
RETURNING paused_at

-- name: unpause_activity_type
-- Lifts a pause_activity_type pause and wakes the queues whose work it held (the queue
-- itself, or every queue with a ready attempt of the type).
WITH gone AS (
    DELETE FROM cairn.activity_pauses
    WHERE namespace = %(namespace)s AND activity_type = %(activity_type)s AND queue = %(queue)s
    RETURNING activity_type, queue
), queues AS (
    SELECT queue FROM gone WHERE queue <> ''
    UNION
    SELECT DISTINCT a.queue FROM gone g JOIN cairn.activity_tasks a
        ON a.namespace = %(namespace)s AND a.activity_type = g.activity_type AND a.lease_owner IS NULL
    WHERE g.queue = ''
)
SELECT (SELECT count(*) FROM gone) AS lifted, (SELECT count(pg_notify('cairn_activity', queue)) FROM queues) AS woken

-- name: list_pauses
-- Everything paused in a namespace, for `cairn pauses`: runs (their task rows' pauses),
-- activities with a pause of their own (an operator's, or their retry policy's, with the
-- last failure), and activity types and queues; oldest first.
SELECT x.* FROM (
    SELECT 'run' AS kind, r.workflow_id, t.run_id::text AS run_id, NULL::integer AS seq,
           r.workflow_type AS type, t.queue, t.pause - 'placeholder' AS pause, NULL::jsonb AS last_failure,
           NULL::integer AS attempt, (t.pause ->> 'at')::timestamptz AS at
    FROM cairn.workflow_tasks t JOIN cairn.runs r ON r.run_id = t.run_id
    WHERE t.namespace = %(namespace)s AND t.pause IS NOT NULL
    UNION ALL
    SELECT 'activity', a.workflow_id, a.run_id::text, a.seq, a.activity_type, a.queue, a.pause, a.last_failure,
           a.attempt, (a.pause ->> 'at')::timestamptz
    FROM cairn.activity_tasks a
    WHERE a.namespace = %(namespace)s AND a.pause IS NOT NULL
    UNION ALL
    SELECT CASE WHEN p.activity_type = '' THEN 'queue' ELSE 'activity_type' END, NULL, NULL, NULL,
           nullif(p.activity_type, ''), nullif(p.queue, ''),
           jsonb_build_object('note', p.note, 'by', p.paused_by, 'at', p.paused_at), NULL, NULL, p.paused_at
    FROM cairn.activity_pauses p WHERE p.namespace = %(namespace)s
) x
ORDER BY x.at, x.kind, x.run_id, x.seq

-- name: pause_exhausted_activity
-- RetryPolicy(on_exhausted="pause"): the attempts (or the throttle budget) are used up, so
-- the activity is held instead of failed, fenced by the attempt's token (bumped: a late
-- write of the attempt changes nothing): unleased, due at once when resumed, its failure in
-- last_failure, its pause saying why, its schedule-to-close deadline cleared (the reaper
-- would fail it while an operator fixes the cause; unpause_activity sets a new one).
-- %(give_back)s: 1 when the last try was a reschedule, which is not an attempt.
UPDATE cairn.activity_tasks
SET lease_owner = NULL, token = token + 1, lease_expires_at = NULL, attempt_deadline = NULL,
    heartbeat_deadline = NULL, schedule_deadline = NULL, attempt = attempt - %(give_back)s,
    available_at = coalesce(%(now)s::timestamptz, now()), last_failure = %(failure)s, paused = true,
    pause = jsonb_build_object('reason', 'exhausted', 'retry_state', %(retry_state)s::text,
                               'note', %(note)s::text, 'by', %(by)s::text,
                               'at', coalesce(%(now)s::timestamptz, now())),
    heartbeat_details = CASE WHEN %(beat)s::boolean THEN %(details)s::jsonb ELSE heartbeat_details END
WHERE run_id = %(run_id)s AND seq = %(seq)s AND token = %(token)s
RETURNING attempt

-- ---------------------------------------------------------------- retention and purge (store/retention.py)

-- name: namespace_settings
-- A namespace's settings row (none: keep forever, no archive).
SELECT namespace, retention, archive_uri, updated_at FROM cairn.namespaces WHERE namespace = %(namespace)s::text

-- name: list_namespace_settings
-- Every namespace with a settings row, and the namespaces that have runs but no row.
SELECT n.namespace, n.retention, n.archive_uri, n.updated_at FROM cairn.namespaces n
UNION ALL
SELECT d.namespace, NULL::interval, NULL::text, NULL::timestamptz
FROM (SELECT DISTINCT namespace FROM cairn.runs) d
WHERE NOT EXISTS (SELECT 1 FROM cairn.namespaces n WHERE n.namespace = d.namespace)
ORDER BY 1

-- name: set_namespace_settings
-- Sets a namespace's retention and/or archive (a %(set_...)s flag false keeps the value it had).
INSERT INTO cairn.namespaces (namespace, retention, archive_uri, updated_at)
VALUES (%(namespace)s::text, %(retention)s::interval, %(archive_uri)s::text, coalesce(%(now)s::timestamptz, now()))
ON CONFLICT (namespace) DO UPDATE SET
    retention = CASE WHEN %(set_retention)s::boolean THEN excluded.retention ELSE cairn.namespaces.retention END,
    archive_uri = CASE WHEN %(set_archive)s::boolean THEN excluded.archive_uri ELSE cairn.namespaces.archive_uri END,
    updated_at = excluded.updated_at
RETURNING namespace, retention, archive_uri, updated_at

-- name: retention_due
-- The namespaces with a retention, each with its cutoff (runs closed before it are past it).
SELECT namespace, archive_uri, coalesce(%(now)s::timestamptz, now()) - retention AS cutoff
FROM cairn.namespaces WHERE retention IS NOT NULL ORDER BY namespace

-- name: purge_clock
-- The database's time (or the test's): a purge's "now", read once.
SELECT coalesce(%(now)s::timestamptz, now())

-- name: purge_preview
-- A purge's dry run: the runs of the namespace its filter ({where}) matches, counted by what
-- a purge would do with each (open: never purged; young: closed after the cutoff; held: its
-- parent is open, or a running batch has yet to act on it; purge) and status. Writes nothing.
WITH m AS (
    SELECT r.status, r.closed_at < %(cutoff)s::timestamptz AS old,
           (EXISTS (SELECT 1 FROM cairn.runs p WHERE p.run_id = r.parent_run_id AND p.status = 'running')
            OR EXISTS (SELECT 1 FROM cairn.batches b JOIN cairn.batch_targets t ON t.batch_id = b.batch_id
                       WHERE b.status = 'running' AND t.run_id = r.run_id AND t.outcome IS NULL)) AS held
    FROM cairn.runs r WHERE r.namespace = %(namespace)s::text AND {where}
)
SELECT CASE WHEN status = 'running' THEN 'open' WHEN NOT old THEN 'young' WHEN held THEN 'held' ELSE 'purge' END,
       status, count(*)
FROM m GROUP BY 1, 2 ORDER BY 1, 2

-- name: purge_sample
-- The first few runs a purge would remove, in its order (closed_at, run_id).
SELECT r.workflow_id, r.run_id, r.status, r.closed_at FROM cairn.runs r
WHERE r.namespace = %(namespace)s::text AND r.closed_at IS NOT NULL AND r.closed_at < %(cutoff)s::timestamptz
  AND {where}
  AND NOT EXISTS (SELECT 1 FROM cairn.runs p WHERE p.run_id = r.parent_run_id AND p.status = 'running')
  AND NOT EXISTS (SELECT 1 FROM cairn.batches b JOIN cairn.batch_targets t ON t.batch_id = b.batch_id
                  WHERE b.status = 'running' AND t.run_id = r.run_id AND t.outcome IS NULL)
ORDER BY r.closed_at, r.run_id
LIMIT %(limit)s::integer

-- name: purge_lock_chunk
-- A purge's next chunk: up to %(limit)s closed runs of the namespace, closed before the
-- cutoff, matching {where}, after the keyset (%(after_at)s, %(after_id)s), oldest close
-- first (the runs_closed index). Held back: a run whose parent is open (the parent's
-- describe lists its children, and a child's outcome is in the parent's history anyway, so
-- the child goes once the parent closed), and a pending target of a running batch (a retry
-- or reset needs its history). FOR UPDATE SKIP LOCKED: a run an operator (reset, retry)
-- holds is passed over, and another purge's chunk never overlaps this one.
SELECT r.run_id, r.closed_at FROM cairn.runs r
WHERE r.namespace = %(namespace)s::text AND r.closed_at IS NOT NULL AND r.closed_at < %(cutoff)s::timestamptz
  AND (r.closed_at, r.run_id) > (%(after_at)s::timestamptz, %(after_id)s::uuid)
  AND {where}
  AND NOT EXISTS (SELECT 1 FROM cairn.runs p WHERE p.run_id = r.parent_run_id AND p.status = 'running')
  AND NOT EXISTS (SELECT 1 FROM cairn.batches b JOIN cairn.batch_targets t ON t.batch_id = b.batch_id
                  WHERE b.status = 'running' AND t.run_id = r.run_id AND t.outcome IS NULL)
ORDER BY r.closed_at, r.run_id
LIMIT %(limit)s::integer
FOR UPDATE OF r SKIP LOCKED

-- name: purge_documents
-- The locked chunk's runs as archive lines: one JSON object per run, its row and its
-- events in the shape of `cairn history --json` (what `cairn replay` reads), in the chunk's
-- order. json_build_object keeps the keys' order (workflow_id first, for a reader that
-- greps); the events are jsonb, whose text has no line break.
SELECT r.run_id, r.closed_at, json_build_object(
    'workflow_id', r.workflow_id, 'run_id', r.run_id, 'workflow_type', r.workflow_type, 'queue', r.queue,
    'status', r.status, 'namespace', r.namespace, 'created_at', r.created_at, 'closed_at', r.closed_at,
    'parent_run_id', r.parent_run_id, 'continued_from', r.continued_from, 'reset_from', r.reset_from,
    'failure', r.failure, 'search_attributes', r.search_attributes, 'memo', r.memo,
    'events', (SELECT coalesce(jsonb_agg(jsonb_build_object('seq', h.seq, 'type', h.type, 'data', h.data, 'at', h.at)
                                         ORDER BY h.seq), '[]'::jsonb)
               FROM cairn.history h WHERE h.run_id = r.run_id))::text
FROM cairn.runs r WHERE r.run_id = ANY(%(run_ids)s::uuid[])
ORDER BY r.closed_at, r.run_id

-- name: purge_runs
-- Removes the locked chunk's runs whole (cairn.purge_closed_runs: closed runs only).
SELECT runs, events FROM cairn.purge_closed_runs(%(run_ids)s::uuid[])

-- name: retention_try_lock
-- One retention pass at a time across the workers: a session advisory lock, released by
-- retention_unlock or with its connection (a killed worker frees it at once).
SELECT pg_try_advisory_lock(%(lock_class)s::int, 0)

-- name: retention_unlock
-- Releases retention_try_lock.
SELECT pg_advisory_unlock(%(lock_class)s::int, 0)

-- ---------------------------------------------------------------- the payload store (0022)

-- name: save_payloads
-- Stores large payloads once (content-addressed: a stored one is left as it is) and links
-- them to the runs whose events refer to them, in the transaction of those events; the
-- link's foreign key locks the payload against a concurrent purge (migration 0022).
WITH stored AS (
    INSERT INTO cairn.payloads (hash, compressed, size)
    SELECT p.hash, p.compressed, p.size
    FROM unnest(%(hashes)s::bytea[], %(blobs)s::bytea[], %(sizes)s::integer[]) AS p (hash, compressed, size)
    ON CONFLICT (hash) DO NOTHING
    RETURNING hash
)
INSERT INTO cairn.run_payloads (run_id, hash)
SELECT l.run_id, l.hash FROM unnest(%(run_ids)s::uuid[], %(link_hashes)s::bytea[]) AS l (run_id, hash)
ON CONFLICT (run_id, hash) DO NOTHING

-- name: read_payloads
-- The stored payloads of these hashes (one statement per history read, however many refer).
SELECT hash, compressed, encoding FROM cairn.payloads WHERE hash = ANY(%(hashes)s::bytea[])

-- name: copy_run_payloads
-- A reset or retried run refers to its origin's stored payloads: link them to it too, so
-- that purging the origin keeps them while the new run lives.
INSERT INTO cairn.run_payloads (run_id, hash)
SELECT %(new_run_id)s::uuid, l.hash FROM cairn.run_payloads l WHERE l.run_id = %(run_id)s::uuid
ON CONFLICT (run_id, hash) DO NOTHING

-- name: link_parent_payloads
-- A child's stored result goes to its parent's inbox, then history: link it to the parent too,
-- so that purging the child keeps it while the parent lives.
INSERT INTO cairn.run_payloads (run_id, hash)
SELECT r.parent_run_id, h.hash FROM cairn.runs r, unnest(%(hashes)s::bytea[]) AS h (hash)
WHERE r.run_id = %(run_id)s::uuid AND r.parent_run_id IS NOT NULL
ON CONFLICT (run_id, hash) DO NOTHING

-- name: payload_stats
-- The payload store's size: payloads, their bytes as JSON and as stored, the runs linked
-- (cairn db payloads). A full scan of both tables: an operator's question, not a hot one.
SELECT (SELECT count(*) FROM cairn.payloads) AS payloads,
       (SELECT coalesce(sum(size), 0) FROM cairn.payloads)::bigint AS json_bytes,
       (SELECT coalesce(sum(octet_length(compressed)), 0) FROM cairn.payloads)::bigint AS stored_bytes,
       (SELECT count(DISTINCT run_id) FROM cairn.run_payloads) AS runs

-- name: run_payload_stats
-- The payloads one run refers to (cairn db payloads ID).
SELECT count(*) AS payloads, coalesce(sum(p.size), 0)::bigint AS json_bytes,
       coalesce(sum(octet_length(p.compressed)), 0)::bigint AS stored_bytes, 1 AS runs
FROM cairn.run_payloads l JOIN cairn.payloads p ON p.hash = l.hash
WHERE l.run_id = %(run_id)s::uuid

-- name: sweep_payloads
-- Removes the stored payloads no run links, stored before %(cutoff)s, among the next
-- %(scan)s after hash %(after)s (migration 0026: a payload being linked is passed over);
-- returns the slice's last hash (NULL: the table's end) and what went.
SELECT last_hash, swept, swept_bytes FROM cairn.sweep_payloads(%(after)s::bytea, %(scan)s::int, %(cutoff)s::timestamptz)

-- name: unlinked_payloads
-- What a sweep would remove: the payloads no run links, stored before %(cutoff)s (a full
-- scan of cairn.payloads, with a probe of run_payloads_hash each: an operator's question).
SELECT count(*) AS payloads, coalesce(sum(octet_length(p.compressed)), 0)::bigint AS stored_bytes
FROM cairn.payloads p
WHERE p.created_at < %(cutoff)s::timestamptz
  AND NOT EXISTS (SELECT 1 FROM cairn.run_payloads l WHERE l.hash = p.hash)

-- ---------------------------------------------------------------- concurrency limits (0023)

-- name: set_concurrency_limit
-- Sets a key's limit (NULL: none) and lets waiting work take the slots it frees, under the
-- key's row lock (cairn.concurrency_set); returns how many waiting runs or activities went.
SELECT cairn.concurrency_set(%(kind)s, %(namespace)s, %(key)s, %(max_running)s) AS released

-- name: list_concurrency_limits
-- The keys of a namespace with a limit or work in use or waiting (one key with %(key)s).
SELECT l.kind, l.key, l.max_running, l.in_use,
       (SELECT count(*) FROM cairn.concurrency_waiting w
        WHERE w.namespace = l.namespace AND w.kind = l.kind AND w.key = l.key) AS waiting,
       l.updated_at
FROM cairn.concurrency_limits l
WHERE l.namespace = %(namespace)s AND (%(key)s::text IS NULL OR l.key = %(key)s)
ORDER BY l.key, l.kind

-- name: delete_concurrency_limit
-- After set_concurrency_limit to NULL (in the same transaction: waiting work went): the
-- key's row goes when nothing holds a slot of it (else it stays, counting, with no limit).
DELETE FROM cairn.concurrency_limits
WHERE namespace = %(namespace)s AND kind = %(kind)s AND key = %(key)s AND in_use = 0
