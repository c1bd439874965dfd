-- Cairn schema, version 29: work let go by a concurrency slot waits out its own ready time
-- and takes its fairness place (issue 18).
--
-- cairn.concurrency_release (0023) gave a freed slot to the next waiter and set its task's
-- available_at to now() less its priority's credit:
--   * a run started with start_delay that waited for a slot became claimable as soon as the
--     slot came free, its delay not yet over: the waiting row did not keep its ready time;
--   * a keyed waiter was placed at now(), behind every task of its level queued meanwhile,
--     instead of at its key's turn (cairn.fair_available_at, 0025).
-- Now the waiting row keeps the available_at the work would have had with a free slot
-- (ready_at: its ready time, or its place, which is never later than its ready time), and the
-- release gives the task:
--   * if that time is still ahead (a delayed start): that time, and for a keyed or
--     prioritised one a booking (cairn.retry_places, seq 0 for the run's workflow task, as
--     start_available_at books a delayed start that got a slot at once, 0027), placed when
--     due by place_due_retries;
--   * else: its place now, as a new task (fair_available_at: its key's turn; without a key,
--     now less its priority's credit, as before).
-- Only work of a concurrency key goes through here: a default start or activity pays
-- nothing. Rows waiting before this migration cannot tell their delay: ready_at
-- '-infinity', placed at once as before.

ALTER TABLE cairn.concurrency_waiting ADD COLUMN ready_at timestamptz NOT NULL DEFAULT '-infinity';
ALTER TABLE cairn.concurrency_waiting ALTER COLUMN ready_at DROP DEFAULT;  -- admit always gives it

-- As 0023's, keeping p_available in the waiting row.
CREATE OR REPLACE FUNCTION cairn.concurrency_admit(p_kind text, p_namespace text, p_key text, p_run_id uuid,
                                                   p_seq integer, p_priority smallint, p_queue text,
                                                   p_available timestamptz)
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
    INSERT INTO cairn.concurrency_waiting (run_id, seq, namespace, kind, key, priority, queue, since, ready_at)
    VALUES (p_run_id, p_seq, p_namespace, p_kind, p_key, p_priority, p_queue, now(), p_available);
    RETURN 'infinity';
END
$$;

-- Gives waiting work the key's free slots (p_freed: slots just given back by the caller),
-- oldest of the best priority first; returns how many it let go. Under the key's row lock.
-- A waiter not yet ready keeps its ready time (booked if keyed or prioritised); a ready one
-- is placed as a new task. The NOTIFY goes either way: a poller sleeping until the next due
-- task learns of one that is due later.
CREATE OR REPLACE FUNCTION cairn.concurrency_release(p_kind text, p_namespace text, p_key text, p_freed integer)
RETURNS integer
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    lim cairn.concurrency_limits;
    w cairn.concurrency_waiting;
    free integer;
    promoted integer := 0;
    ready boolean;
    let_go boolean;
    prio smallint;
    fkey text;
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
        ready := w.ready_at <= now();
        IF p_kind = 'workflow' THEN
            UPDATE cairn.workflow_tasks t
            SET available_at = CASE WHEN NOT ready THEN w.ready_at
                                    ELSE cairn.fair_available_at('workflow', t.namespace, t.queue, t.workflow_type,
                                                                 t.priority, t.fairness_key,
                                                                 (SELECT r.fairness_weight FROM cairn.runs r
                                                                  WHERE r.run_id = w.run_id), now()) END
            WHERE t.run_id = w.run_id AND t.available_at = 'infinity'
            RETURNING t.priority, t.fairness_key INTO prio, fkey;
            let_go := FOUND;
            PERFORM pg_notify('cairn_workflow', w.queue);
        ELSE
            UPDATE cairn.activity_tasks a
            SET available_at = CASE WHEN NOT ready THEN w.ready_at
                                    ELSE cairn.fair_available_at('activity', a.namespace, a.queue, a.activity_type,
                                                                 a.priority, a.fairness_key,
                                                                 (a.options -> 'priority' ->> 'fairness_weight')::float8,
                                                                 now()) END
            WHERE a.run_id = w.run_id AND a.seq = w.seq AND a.available_at = 'infinity'
            RETURNING a.priority, a.fairness_key INTO prio, fkey;
            let_go := FOUND;
            PERFORM pg_notify('cairn_activity', w.queue);
        END IF;
        IF let_go AND NOT ready AND (prio <> 3 OR fkey IS NOT NULL) THEN
            INSERT INTO cairn.retry_places (run_id, seq, ready_at) VALUES (w.run_id, w.seq, w.ready_at)
            ON CONFLICT (run_id, seq) DO UPDATE SET ready_at = excluded.ready_at;
        END IF;
        promoted := promoted + 1;
    END LOOP;
    UPDATE cairn.concurrency_limits SET in_use = in_use - p_freed + promoted, updated_at = now()
    WHERE namespace = p_namespace AND kind = p_kind AND key = p_key;
    RETURN promoted;
END
$$;
