-- Cairn schema, version 27: a keyed or prioritised run's workflow task keeps its place after
-- a failure and after a start delay (issue 18); the purge locks, then rechecks, the payloads
-- it removes.
--
-- 1. A workflow task that failed (fail_workflow_task: a bug, a non-determinism, backed off 1,
--    2, 4 ... 60 s) and the first task of a delayed start (start_delay) wait with available_at
--    at their ready time, so once ready they queued behind every task placed before it: a
--    keyed or prioritised run lost its fairness turn and its priority's lane position, as an
--    activity's retry did before 0025. They are now booked in cairn.retry_places like those
--    retries and placed when due by the same statement (place_due_retries, the workers'
--    maintenance pass): their run's fairness turn, their priority's position, as a new task
--    of the run. A default run (no key, priority 3) books nothing: fail_workflow_task's
--    booking is a CTE that inserts no row, a default start never calls start_available_at.
--
--    The run's workflow task is booked as seq 0 of retry_places, not under a kind column nor
--    in a table of its own: a run has one workflow task (workflow_tasks' primary key is
--    run_id), activity seqs start at 2, and seq 0 already stands for the run itself in the
--    other per-run tables (timers: the execution timeout; concurrency_waiting: the run's
--    first task). One table keeps the maintenance pass at one statement and one probe of
--    retry_places_due for both kinds of bookings, and needs no change of its primary key.
--
-- 2. purge_closed_runs locks the payloads it may remove, then deletes those still unlinked in
--    a new snapshot, as sweep_payloads (0026) does. It deleted them in one statement whose
--    NOT EXISTS used the statement's snapshot: a link committed after that snapshot but
--    before the statement's FOR UPDATE reached the payload was not seen, the payload was
--    deleted, and the foreign key check failed the whole chunk (retried by the next pass, no
--    data lost, but the chunk's archive file was written for nothing). It also removes the
--    purged runs' bookings, so that the purge takes a run whole.

-- A start with a delay of 0 is placed at once, as a start without one (it queued by its ready
-- time). A delayed start of a keyed or prioritised run not held for a concurrency slot is
-- booked (seq 0) and placed when due; held, it is let go by cairn.concurrency_release.
CREATE OR REPLACE FUNCTION cairn.start_available_at(p_namespace text, p_queue text, p_type text, p_run_id uuid,
                                                    p_created timestamptz, p_delay float8, p_priority smallint,
                                                    p_key text, p_weight float8, p_concurrency_key text)
RETURNS timestamptz
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    prio smallint := coalesce(p_priority, 3);
    delayed boolean := coalesce(p_delay, 0) > 0;
    at timestamptz;
BEGIN
    IF delayed OR (p_priority IS NULL AND p_key IS NULL) THEN
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
    IF delayed AND (prio <> 3 OR p_key IS NOT NULL) AND at < 'infinity' THEN
        INSERT INTO cairn.retry_places (run_id, seq, ready_at) VALUES (p_run_id, 0, at);
    END IF;
    RETURN at;
END
$$;

-- purge_closed_runs as in 0022, but the payloads are removed in two statements (a VOLATILE
-- function takes a new snapshot per statement), as in sweep_payloads:
--   1. lock those no remaining run links, FOR UPDATE SKIP LOCKED: a payload a writer is
--      linking right now holds its link's KEY SHARE lock and is passed over;
--   2. delete the locked ones that still have no link, in a new snapshot: a link committed
--      after statement 1's snapshot but before its lock is seen (the payload stays), and no
--      link can commit after the lock (its key check waits for this transaction, then finds
--      the payload gone and fails: the writer's task runs again and stores it again).
-- And the purged runs' bookings in retry_places go with them.
CREATE OR REPLACE FUNCTION cairn.purge_closed_runs(p_run_ids uuid[])
RETURNS TABLE (runs bigint, events bigint)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ids uuid[];
    n_events bigint;
    refs bytea[];
    locked bytea[];
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
    DELETE FROM cairn.retry_places p WHERE p.run_id = ANY(ids);
    WITH gone AS (DELETE FROM cairn.run_payloads l WHERE l.run_id = ANY(ids) RETURNING l.hash)
    SELECT coalesce(array_agg(DISTINCT g.hash), '{}') INTO refs FROM gone g;
    IF cardinality(refs) > 0 THEN
        SELECT coalesce(array_agg(c.hash), '{}') INTO locked FROM (
            SELECT p.hash FROM cairn.payloads p
            WHERE p.hash = ANY(refs) AND NOT EXISTS (SELECT 1 FROM cairn.run_payloads o WHERE o.hash = p.hash)
            -- a payload a writer is linking holds its KEY SHARE lock: not ours to delete
            FOR UPDATE SKIP LOCKED) c;
        DELETE FROM cairn.payloads p
        WHERE p.hash = ANY(locked) AND NOT EXISTS (SELECT 1 FROM cairn.run_payloads o WHERE o.hash = p.hash);
    END IF;
    DELETE FROM cairn.runs r WHERE r.run_id = ANY(ids);
    RETURN QUERY SELECT cardinality(ids)::bigint, n_events;
END
$$;
REVOKE ALL ON FUNCTION cairn.purge_closed_runs(uuid[]) FROM PUBLIC;
